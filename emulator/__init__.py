"""The emulated board and its devices: a Unicorn Cortex-M7, SPI NOR flash and PSRAM models
timed from datasheets, DMA controllers, UART, trace and run control.

Imports target/ only: it knows the board and the image format, not the compiler.
"""
