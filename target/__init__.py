"""What the target looks like, defined once: the stage kinds, the flash image format, the
board's memory map and registers, the board profiles, and the C toolchain.

Both sides read it: compiler/ (which also renders it into the firmware's C headers) and
emulator/ (which maps and models exactly this board). It imports nothing else of mcugpt's.
"""
