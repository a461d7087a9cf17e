"""Counting the instructions the firmware executes, and their cycles, exactly, on every run,
for next to nothing.

The device's compute time is counted, not guessed (docs/board.md, "Time"): the board's CPU
clock advances by the cycles of the instructions executed, each instruction carrying its
basic block's cycles by the Cortex-M7 pipeline model (target/m7_pipeline.py) over the
block's instructions. The count comes from a `UC_HOOK_BLOCK` hook, called once per
translation block (TB) executed, whose callback is **native code**: a 30-line C function
compiled once per machine (below) and handed to Unicorn by address, so no Python runs per
block. It adds the block's instruction count, and its cycles (a prefix sum over the code's
per-instruction cycles: two reads), to 64-bit counters the board reads (through ctypes, no
call) at every peripheral access. Measured cost: within noise of an uninstrumented run on GPT-2 124M
(docs/board.md has the figures); a Python callback per block would cost ~10x the run.

A block's instruction count is decoded from the code bytes on its first execution and
cached per start address: Thumb-2 instructions are 2 or 4 bytes, and a halfword whose top
five bits are 0b11101, 0b11110 or 0b11111 starts a 4-byte one. The callback gets the TB's
start and size, so the count covers every instruction the TB issues, including those an
IT block skips (the Cortex-M7 issues those too: they take pipeline slots). Checked against
a `UC_HOOK_CODE` count (one Python call per instruction) in tests/test_compute_time.py:
equal, except for the IT-skipped instructions, which UC_HOOK_CODE does not report.

When no host C compiler is found ($CC, cc, or the pip package ziglang's `zig cc`), the same
count is taken by a Python callback: exact, but slow (`kind == "python"`); the summary
says which one ran. MCUGPT_COUNTER=python forces it (tests), =off disables counting.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np
from unicorn import UC_HOOK_BLOCK

from emulator import native
from target.m7_pipeline import FIXED

__all__ = ["InstructionCounter", "thumb_instructions", "native_library", "counter_mode"]

C_SOURCE = r"""
#include <stdint.h>

/* Shared with Python (emulator/instruction_count.py _Counter): keep the field order. */
typedef struct {
    uint64_t instructions;    /* running total */
    uint64_t blocks;          /* translation blocks executed */
    const uint16_t* code;     /* the code region's halfwords */
    uint64_t base;            /* its address */
    uint64_t halfwords;       /* its size in halfwords */
    uint32_t* cache;          /* per halfword: size << 16 | instructions of the TB starting there */
    uint64_t outside;         /* blocks executed outside the code region (counted size / 2) */
    uint64_t cycles;          /* running total, in 1/1024 cycles (target/m7_pipeline.py FIXED) */
    const uint64_t* prefix;   /* prefix[i]: cycles of the instructions starting before halfword i */
    uint64_t* by_block;       /* NULL, or per halfword: the cycles of the blocks starting there */
} Counter;

/* UC_HOOK_BLOCK callback: void (*)(uc_engine*, uint64_t address, uint32_t size, void* user_data) */
void mcugpt_count_block(void* uc, uint64_t addr, uint32_t size, void* user_data) {
    Counter* c = (Counter*)user_data;
    (void)uc;
    c->blocks++;
    uint64_t off = (addr - c->base) >> 1;
    if (addr < c->base || off >= c->halfwords) {
        c->outside++;
        c->instructions += size / 2;
        return;
    }
    uint32_t e = c->cache[off];
    if ((e >> 16) != size || e == 0) {
        uint64_t i = off, end = off + size / 2;
        uint32_t n = 0;
        if (end > c->halfwords) end = c->halfwords;
        while (i < end) {
            uint16_t h = c->code[i];
            i += (h >> 11) >= 0x1D ? 2 : 1;   /* 0b11101, 0b11110, 0b11111: a 32-bit encoding */
            n++;
        }
        e = (size << 16) | (n & 0xFFFF);
        c->cache[off] = e;
    }
    c->instructions += e & 0xFFFF;
    uint64_t end = off + size / 2;
    if (end > c->halfwords) end = c->halfwords;
    uint64_t cycles = c->prefix[end] - c->prefix[off];
    c->cycles += cycles;
    if (c->by_block) c->by_block[off] += cycles;
}
"""


class _Counter(ctypes.Structure):
    _fields_ = [("instructions", ctypes.c_uint64), ("blocks", ctypes.c_uint64), ("code", ctypes.c_void_p),
                ("base", ctypes.c_uint64), ("halfwords", ctypes.c_uint64), ("cache", ctypes.c_void_p),
                ("outside", ctypes.c_uint64), ("cycles", ctypes.c_uint64), ("prefix", ctypes.c_void_p),
                ("by_block", ctypes.c_void_p)]


def thumb_instructions(code: bytes, offset: int, size: int) -> int:
    """Instructions in code[offset:offset + size] (Thumb-2: 2- or 4-byte encodings)."""
    n, i, end = 0, offset, offset + size
    while i < end:
        h = code[i] | code[i + 1] << 8 if i + 1 < len(code) else 0
        i += 4 if (h >> 11) >= 0x1D else 2
        n += 1
    return n


def counter_mode() -> str:
    """"native" (default), "python" or "off", from MCUGPT_COUNTER."""
    mode = os.environ.get("MCUGPT_COUNTER", "native").strip().lower() or "native"
    if mode not in ("native", "python", "off"):
        raise ValueError(f"MCUGPT_COUNTER={mode!r}: expected native, python or off")
    return mode


# ----------------------------------------------------------------------------
# the native callback: compiled once per machine, cached (emulator/native.py)


def native_library():
    """The compiled counter (a ctypes.CDLL), or None when no compiler could build it."""
    return native.library("block_counter", C_SOURCE)


# ----------------------------------------------------------------------------
# the counter


class InstructionCounter:
    """Counts the instructions `uc` executes from now on.

    `code` is the code region's bytes (the firmware's code flash, as loaded) at `base`;
    `count` is the running total, cheap to read at any time (at every MMIO access).
    `kind`: "native" (a C callback) or "python" (the fallback, exact but slow).
    """

    def __init__(self, uc, base: int, code: bytes, mode: str | None = None, costs: list[int] | None = None):
        """`costs`: per halfword of `code`, the cycles (x m7_pipeline.FIXED) of the instruction
        starting there (target/m7_pipeline.halfword_costs); the counter sums them over every
        executed block, as it sums instructions."""
        mode = mode or counter_mode()
        if mode == "off":
            raise ValueError("InstructionCounter with counting off")
        self.base = base
        self._code = bytes(code) + b"\0\0"     # a 4-byte encoding may straddle the end
        costs = costs if costs is not None else [0] * (len(code) // 2)
        self._prefix = np.zeros(len(code) // 2 + 1, np.uint64)
        np.cumsum(np.asarray(costs[:len(code) // 2], np.uint64), out=self._prefix[1:])
        lib = native_library() if mode == "native" else None
        if lib is not None:
            self.kind = "native"
            n = len(code) // 2
            self._code_buf = ctypes.create_string_buffer(self._code, len(self._code))
            self._cache = (ctypes.c_uint32 * max(n, 1))()
            self._state = _Counter(0, 0, ctypes.cast(self._code_buf, ctypes.c_void_p), base, n,
                                   ctypes.cast(self._cache, ctypes.c_void_p), 0, 0,
                                   self._prefix.ctypes.data_as(ctypes.c_void_p), None)
            self._callback = ctypes.cast(lib.mcugpt_count_block, ctypes.c_void_p)
            self._hook = _native_hook_add(uc, UC_HOOK_BLOCK, self._callback, ctypes.addressof(self._state))
        else:
            self.kind = "python"
            self._py_count = 0
            self._py_cycles = 0
            self._py_blocks = 0
            self._py_outside = 0
            self._sizes: dict[int, tuple[int, int]] = {}
            self._hook = uc.hook_add(UC_HOOK_BLOCK, self._on_block)

    by_block: np.ndarray | None = None

    def count_by_block(self) -> None:
        """From now on also add each block's cycles (x m7_pipeline.FIXED) to `by_block`, per
        halfword of the code where the block starts: where the cycles go, for a profile."""
        self.by_block = np.zeros(len(self._prefix), np.uint64)
        if self.kind == "native":
            self._state.by_block = self.by_block.ctypes.data

    def _on_block(self, uc, address, size, _ud) -> None:
        self._py_blocks += 1
        cached = self._sizes.get(address)
        if cached is None or cached[0] != size:
            off = address - self.base
            if 0 <= off < len(self._code) - 2:
                n = thumb_instructions(self._code, off, size)
            else:
                self._py_outside += 1
                n = size // 2
            cached = self._sizes[address] = (size, n)
        self._py_count += cached[1]
        off = (address - self.base) // 2
        if 0 <= off < len(self._prefix) - 1:
            end = min(off + size // 2, len(self._prefix) - 1)
            cycles = int(self._prefix[end] - self._prefix[off])
            self._py_cycles += cycles
            if self.by_block is not None:
                self.by_block[off] += cycles

    @property
    def count(self) -> int:
        return self._state.instructions if self.kind == "native" else self._py_count

    @property
    def cycles(self) -> float:
        """Cycles of the instructions counted so far (the pipeline model's, per basic block)."""
        fixed = self._state.cycles if self.kind == "native" else self._py_cycles
        return fixed / FIXED

    @property
    def blocks(self) -> int:
        return self._state.blocks if self.kind == "native" else self._py_blocks

    @property
    def outside(self) -> int:
        """Blocks executed outside the code region (none for a sane firmware)."""
        return self._state.outside if self.kind == "native" else self._py_outside


def _native_hook_add(uc, htype: int, callback: ctypes.c_void_p, user_data: int) -> int:
    """uc_hook_add with a C function pointer: the Python binding only takes Python callables."""
    from unicorn.unicorn_py3.unicorn import uc_hook_h, uclib

    handle = uc_hook_h()
    status = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), htype, callback, ctypes.c_void_p(user_data),
                               ctypes.c_uint64(1), ctypes.c_uint64(0))
    if status != 0:
        from unicorn import UcError
        raise UcError(status)
    return handle.value
