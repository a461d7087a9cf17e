"""Mapping a peripheral's registers into Unicorn, at the least cost per access.

GPT-2 124M int8 on the stm32h7s78-dk makes ~94,000 peripheral accesses per token: ~14,400
DMA transfers, each ADDR, DST or RAM, LEN, CMD, then STATUS once or twice, and a D-cache
line invalidation per line a DMA wrote into the SRAM. Two things keep them cheap:

- `map_peripheral` hands Unicorn ctypes callbacks directly (`uc_mmio_map`), not through the
  binding's `Uc.mmio_map`, whose two Python layers per access cost more than the ctypes
  call itself. The exception guard is the binding's: an exception inside a callback is
  kept for `emu_start` to raise, and stops the emulation.
- A DMA controller's plain registers (ADDR, DST or RAM, LEN: a write only stores the word)
  are stored by a native write callback (C_SOURCE, compiled like emulator/instruction_count.py's
  counter, emulator/native.py) into a `Registers` struct, which the Python side reads when
  CMD starts the transfer: 3 of a transfer's 5 or 6 accesses run no Python. It stores only
  aligned 32-bit writes to those registers while no transfer is in flight (`busy`, which
  the controller keeps); every other write (CMD, STATUS, a narrow or misplaced one,
  anything while a transfer is in flight) goes to the Python handler, which does every
  check. Without a C compiler (or with MCUGPT_MMIO=python) the Python handler stores those
  words itself, in the same struct: the same run, ~43,000 more Python calls per token.
"""

from __future__ import annotations

import ctypes
import os

from unicorn import UcError
from unicorn.unicorn_py3.unicorn import MMIO_READ_CFUNC, MMIO_WRITE_CFUNC, uclib

from emulator import native

__all__ = ["Registers", "map_peripheral", "mmio_mode", "native_library"]

WORDS = 16   # registers per peripheral the native store can hold: offsets 0x00..0x3c

C_SOURCE = r"""
#include <stdint.h>

typedef void (*mmio_write_cb)(void* uc, uint64_t offset, unsigned size, uint64_t value, void* user_data);

/* Shared with Python (emulator/mmio.py Registers): keep the field order. */
typedef struct {
    uint32_t words[16];     /* by offset / 4: the plain registers' values */
    uint32_t plain;         /* bit i: the register at offset 4 i is plain (a write only stores it) */
    uint32_t busy;          /* a transfer is in flight: every write goes to Python (a bus error) */
    uint64_t stored;        /* writes stored here */
    mmio_write_cb python;   /* the peripheral's Python write handler: every other write */
} Registers;

/* uc_mmio_map write callback */
void mcugpt_mmio_write(void* uc, uint64_t offset, unsigned size, uint64_t value, void* user_data) {
    Registers* r = (Registers*)user_data;
    if (size == 4 && !r->busy && offset < 64 && (offset & 3) == 0 && (r->plain >> (offset >> 2) & 1)) {
        r->words[offset >> 2] = (uint32_t)value;
        r->stored++;
        return;
    }
    r->python(uc, offset, size, value, user_data);
}
"""


class Registers(ctypes.Structure):
    """A controller's plain registers, where the native write callback stores them."""

    _fields_ = [("words", ctypes.c_uint32 * WORDS), ("plain", ctypes.c_uint32), ("busy", ctypes.c_uint32),
                ("stored", ctypes.c_uint64), ("python", ctypes.c_void_p)]


def mmio_mode() -> str:
    """"native" (default) or "python", from MCUGPT_MMIO."""
    mode = os.environ.get("MCUGPT_MMIO", "native").strip().lower() or "native"
    if mode not in ("native", "python"):
        raise ValueError(f"MCUGPT_MMIO={mode!r}: expected native or python")
    return mode


def native_library():
    """The compiled register store (a ctypes.CDLL), or None when no compiler could build it."""
    return native.library("mmio_store", C_SOURCE)


def map_peripheral(uc, base: int, size: int, read, write, registers: Registers | None = None) -> str:
    """Map [base, base + size) to `read(uc, offset, size, None) -> int` and `write(uc, offset,
    size, value, None)`, as `uc.mmio_map` does. With `registers`, the native store sits in
    front of `write` (unless there is no compiler, or MCUGPT_MMIO=python). Returns "native"
    when it does, else "python"."""

    def on_read(_handle, offset, size, _ud):
        try:
            return read(uc, offset, size, None)
        except BaseException as e:  # noqa: BLE001 (as the binding's wrapper: emu_start raises it)
            _failed(uc, e)
            return 0

    def on_write(_handle, offset, size, value, _ud):
        try:
            write(uc, offset, size, value, None)
        except BaseException as e:  # noqa: BLE001 (as the binding's wrapper: emu_start raises it)
            _failed(uc, e)

    read_cb, write_cb = MMIO_READ_CFUNC(on_read), MMIO_WRITE_CFUNC(on_write)
    front, user_data, kind = write_cb, None, "python"
    lib = native_library() if registers is not None and mmio_mode() == "native" else None
    if lib is not None:
        registers.python = ctypes.cast(write_cb, ctypes.c_void_p)
        front, user_data, kind = lib.mcugpt_mmio_write, ctypes.addressof(registers), "native"
    status = uclib.uc_mmio_map(uc._uch, base, size, read_cb, None, front, user_data)
    if status != 0:
        raise UcError(status)
    # Unicorn calls these for as long as `uc` lives: keep them (and the struct) alive as long
    uc.__dict__.setdefault("_mcugpt_mmio", []).append((read_cb, write_cb, registers))
    return kind


def _failed(uc, e: BaseException) -> None:
    """What the binding's callback wrapper does: emu_start raises the first one."""
    if uc._hook_exception is None:
        uc._hook_exception = e
    uc.emu_stop()
