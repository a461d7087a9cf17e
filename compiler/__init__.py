"""The compiler: GPT-2 weights -> ONNX -> atomic stages -> memory plan -> flash image -> C
headers -> firmware.elf, and the numpy reference the firmware must equal.

Imports target/ only; never the emulator.
"""
