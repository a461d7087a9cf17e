"""The emulated board: a Cortex-M7 (Unicorn) with SRAM, a flash controller and a SPI NOR flash,
and optionally a PSRAM controller with an external PSRAM (the KV cache's home on small boards).

    board = Board("build/firmware.elf", "build/gpt2/flash.img")
    result = board.run(prompt_tokens, n_new=8, on_text=print)

Memory map (target/memory_map.py, rendered for the firmware as include/memory_map.h):
code flash at CODE_BASE, SRAM at SRAM_BASE (exactly `ram_bytes`, rounded up to 4 KiB:
touching anything beyond is a fault), the mailbox, and the peripherals of
emulator/peripherals.py. The core's System Control Space (0xE000E000, 4 KiB: CPACR, CCR,
cache maintenance...) is plain memory so startup code can enable the FPU; writes there have
no effect.

The run path has no per-instruction or per-access Python hook: peripherals are `mmio_map`ped,
the fault hooks (unmapped or protected access, CPU exceptions) cost nothing until they fire,
and the one hook that runs all the time, the instruction counter's block hook, is native
code (emulator/instruction_count.py). The counted blocks' cycles (the Cortex-M7 pipeline
model, target/m7_pipeline.py) drive the board's clock (peripherals.CpuClock), on which the
flash and PSRAM DMA transfers run concurrently with the CPU. See docs/board.md.
"""

from __future__ import annotations

import contextlib
import gc
import mmap
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from elftools.elf.elffile import ELFFile
from unicorn import (
    UC_ARCH_ARM,
    UC_ERR_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_MEM_PROT,
    UC_HOOK_MEM_UNMAPPED,
    UC_MEM_FETCH_PROT,
    UC_MEM_FETCH_UNMAPPED,
    UC_MEM_READ_PROT,
    UC_MEM_READ_UNMAPPED,
    UC_MEM_WRITE_PROT,
    UC_MEM_WRITE_UNMAPPED,
    UC_MODE_THUMB,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_READ,
    Uc,
    UcError,
)
from unicorn.arm_const import UC_ARM_REG_LR, UC_ARM_REG_PC, UC_ARM_REG_SP, UC_CPU_ARM_CORTEX_M7

from emulator import dcache as dcache_model
from emulator import gdb, inject
from emulator.instruction_count import InstructionCounter, counter_mode
from emulator.peripherals import (
    CpuClock,
    CycleCounter,
    Faults,
    FlashController,
    PositionStats,
    PsramController,
    StageCall,
    StageStats,
    SysCtl,
    SystemControl,
    Trace,
    Uart,
)
from emulator.psram import Psram
from emulator.spi_flash import SpiNorFlash
from target import memory_map as mm
from target.boards import DEFAULT_BOARD, DMA_TIMEOUT_MARGIN, DCache, flash_timing_of, get_board, psram_timing_of
from target.errors import McugptError
from target.flash_layout import NO_LAYER, STAGE_ENTRY, TENSOR_ENTRY, read_image
from target.flash_timing import get_preset as get_flash_preset
from target.m7_pipeline import FIXED, halfword_costs
from target.stages import STAGE_KINDS, stage_name

__all__ = ["Board", "RunResult", "PeakRam", "StageStats", "PositionStats", "StageCall", "BoardFault",
           "FirmwareError", "PAINT"]

PAINT = 0x5AFEC0DE          # every SRAM word before reset; a word still holding it was never written
PAGE = 4096                 # Unicorn maps whole 4 KiB pages
SRAM_WINDOW = mm.MAILBOX_BASE - mm.SRAM_BASE  # the most SRAM the address map has room for
CODE_WINDOW = 0x10000000                      # 0x08000000 .. 0x18000000: code flash addresses
DTCM_WINDOW = mm.SRAM_BASE - mm.DTCM_BASE     # the most data TCM the address map has room for

# QEMU's exception numbers, as Unicorn passes them to a UC_HOOK_INTR callback.
EXCEPTIONS = {
    1: "undefined instruction", 2: "SVC", 3: "prefetch abort", 4: "data abort", 5: "IRQ",
    6: "FIQ", 7: "breakpoint", 8: "exception return", 9: "kernel trap", 16: "semihosting call",
    17: "coprocessor access (FPU disabled?)", 18: "invalid state (branch without the Thumb bit?)",
    19: "stack limit", 20: "lazy FP stacking fault", 22: "unaligned access",
}
_ACCESS = {UC_MEM_READ_UNMAPPED: "read", UC_MEM_WRITE_UNMAPPED: "write", UC_MEM_FETCH_UNMAPPED: "fetch",
           UC_MEM_READ_PROT: "read", UC_MEM_WRITE_PROT: "write", UC_MEM_FETCH_PROT: "fetch"}
EXIT_NAMES = {code: name for name, (code, _doc) in mm.EXIT_CODES.items()}
EXIT_OK = mm.EXIT_CODES["OK"][0]


# ----------------------------------------------------------------------------
# errors


class BoardFault(McugptError):
    """The firmware crashed or did not finish: one line naming what, where and when.

    kind: "unmapped", "protection", "exception", "invalid_instruction", "bus_error",
    "instruction_limit", "timeout", "fault_handler" or "stopped".
    `result` holds what the run produced up to the fault (tokens, text, stages, RAM).
    """

    def __init__(self, message: str, *, kind: str, pc: int | None = None, function: str | None = None,
                 address: int | None = None, stage: str | None = None, result: RunResult | None = None):
        super().__init__(message)
        self.kind, self.pc, self.function, self.address = kind, pc, function, address
        self.stage, self.result = stage, result


class FirmwareError(McugptError):
    """The firmware stopped with an EXIT_* code other than OK (memory_map.EXIT_CODES)."""

    def __init__(self, message: str, *, code: int, name: str, args: tuple[int, int, int],
                 result: RunResult | None = None):
        super().__init__(message)
        self.code, self.name, self.exit_args, self.result = code, name, args, result


# ----------------------------------------------------------------------------
# results


@dataclass
class PeakRam:
    """SRAM use measured after the run by scanning for words that lost the paint.

    peak_bytes = static_bytes + arena_high_water + stack_used. Sizes a firmware does not
    declare (no `arena` symbol, no `_stack_bottom`/`_estack`) are 0.
    """

    static_bytes: int        # .data + .bss (and any other SRAM section), arena and stack excluded
    arena_bytes: int         # the arena's size
    arena_high_water: int    # bytes from the arena's start to the end of its highest written word
    stack_bytes: int         # the stack reserve, _stack_bottom .. _estack
    stack_used: int          # bytes from _estack down to the lowest written word
    ram_mapped: int          # the board's SRAM

    @property
    def peak_bytes(self) -> int:
        return self.static_bytes + self.arena_high_water + self.stack_used

    @property
    def stack_overflowed(self) -> bool:
        """The lowest stack word was written: the stack may have run past its reserve."""
        return self.stack_bytes > 0 and self.stack_used >= self.stack_bytes


@dataclass
class RunResult:
    tokens: list[int]                        # generated token ids (TRACE.TOKEN writes)
    text: str                                # the UART output, UTF-8 decoded
    exit_code: int
    exit_args: tuple[int, int, int]
    logits: list[np.ndarray] | None          # with dump_logits: one float32 array per token (NaN where not dumped)
    stages: list[StageStats]                 # per stage index that ran, in index order
    positions: list[int]                     # TRACE.POSITION writes
    per_position: list                       # PositionStats per position computed, in order
    flash_bytes: int                         # over the whole run
    flash_ns: float                          # simulated flash time, program/erase waits included
    flash_commands: dict                     # SpiNorFlash.stats()["commands"]: per command kind
    crc_ns: float                            # the CRC unit's passes (0 when it is on the DMA path)
    wall_s: float                            # host seconds in emu_start
    token_wall_s: list[float]                # host seconds up to each token (from the previous one)
    peak_ram: PeakRam
    uart_bytes: bytes = b""
    flash_errors: list[str] = field(default_factory=list)  # flash controller errors, in order
    psram_bytes: int = 0                     # PSRAM reads + writes over the whole run (0 without PSRAM)
    psram_ns: float = 0.0                    # simulated PSRAM bus time of those transfers
    psram_transfers: dict = field(default_factory=dict)  # Psram.stats(): "read"/"write" count, bursts, bytes, ns
    psram_errors: list[str] = field(default_factory=list)  # PSRAM controller errors, in order
    instructions: int = 0                    # executed by the CPU over the whole run (counted)
    cycles: float = 0.0                      # of those instructions, by the pipeline model (per basic block)
    compute_ns: float = 0.0                  # cycles / cpu_hz
    stall_ns: float = 0.0                    # the CPU waiting for DMA transfers
    device_ns: float = 0.0                   # the board's clock at the end: compute_ns + stall_ns
    cpu_hz: float = 0.0
    cpi: float = 0.0                         # cycles / instructions: the model's average over the run
    counter: str = "off"                     # "native", "python" (slow fallback) or "off"
    dma_overlapped_instructions: int = 0     # executed while a flash/PSRAM transfer was in flight
    stage_calls: list = field(default_factory=list)  # peripherals.StageCall per stage call, in order
    dcache: dict | None = None               # DCacheModel.stats(): line fills, write-backs, stall cycles (None: no cache)
    bus_cycles: float = 0.0                  # CPU cycles lost to DMA bus sharing (counted in `cycles`)
    boot_ns: float = 0.0                     # the board's clock when the first position started
    ttft_ns: float = 0.0                     # from the first position to the first token, on the board's clock
    ttft_wall_s: float = 0.0                 # the same in host seconds
    tcm_bytes: int = 0                       # the board's data TCM (0: none mapped)
    tcm_high_water: int = 0                  # bytes of the TCM arena the firmware wrote
    timeline: list | None = None             # with Board(timeline=True): peripherals.CpuClock.events
    crc_retries: list[str] = field(default_factory=list)  # each read that failed its CRC once and was read again
    cycles_by_function: dict | None = None   # with Board(by_function=True): Board._cycles_by_function

    @property
    def tokens_per_s(self) -> float:
        """Emulated speed: generated tokens per host second."""
        return len(self.tokens) / self.wall_s if self.wall_s > 0 else 0.0


# ----------------------------------------------------------------------------
# the firmware ELF


@dataclass
class _Firmware:
    path: Path
    # PT_LOAD segments: (load address, run address, memory size, file bytes). They differ
    # for .data, loaded into code flash and copied to SRAM by the startup code.
    segments: list[tuple[int, int, int, bytes]]
    funcs: list[tuple[int, int, str]]        # sorted (start, end, name), Thumb bit cleared
    symbols: dict[str, tuple[int, int]]      # name -> (address, size)
    sram_sections: list[tuple[int, int, str]]  # allocated sections in SRAM: (start, end, name)

    @classmethod
    def load(cls, path) -> _Firmware:
        path = Path(path)
        if not path.is_file():
            raise McugptError(f"{path}: no such firmware ELF")
        with open(path, "rb") as f:
            try:
                elf = ELFFile(f)
            except Exception as e:  # pyelftools raises its own ELFError, or struct errors
                raise McugptError(f"{path}: not an ELF file ({e})") from None
            if elf["e_machine"] != "EM_ARM" or elf.elfclass != 32:
                raise McugptError(f"{path}: not a 32-bit ARM ELF ({elf['e_machine']}, {elf.elfclass}-bit)")
            segments = []
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_LOAD" and seg["p_memsz"]:
                    segments.append((seg["p_paddr"], seg["p_vaddr"], seg["p_memsz"], seg.data()))
            funcs, symbols = [], {}
            symtab = elf.get_section_by_name(".symtab")
            for sym in symtab.iter_symbols() if symtab else ():
                if not sym.name or sym["st_shndx"] == "SHN_UNDEF":
                    continue
                symbols[sym.name] = (sym["st_value"], sym["st_size"])
                if sym["st_info"]["type"] == "STT_FUNC":
                    start = sym["st_value"] & ~1
                    funcs.append((start, start + max(sym["st_size"], 1), sym.name))
            sram = []
            for sec in elf.iter_sections():
                if sec["sh_flags"] & 0x2 and sec["sh_size"] and mm.SRAM_BASE <= sec["sh_addr"] < mm.MAILBOX_BASE:
                    sram.append((sec["sh_addr"], sec["sh_addr"] + sec["sh_size"], sec.name))
        if not segments:
            raise McugptError(f"{path}: the ELF has nothing to load")
        return cls(path, segments, sorted(funcs), symbols, sorted(sram))

    def function_at(self, pc: int) -> str | None:
        """The STT_FUNC symbol whose [address, address + size) holds pc (the innermost)."""
        pc &= ~1
        hits = [(end - start, name) for start, end, name in self.funcs if start <= pc < end]
        return min(hits)[1] if hits else None


def _need(what: str, base: int, end: int, have: int) -> McugptError:
    return McugptError(f"firmware needs {end - base:,} bytes of {what} at 0x{base:08x}, the board maps {have:,}")


# ----------------------------------------------------------------------------
# the board


class Board:
    """A Cortex-M7 board running `elf_path` with `flash_image_path` on its SPI NOR flash.

    The image is memory-mapped copy-on-write (never read into memory, never modified on
    disk: a page program or erase changes the board's private copy of that page only).
    The flash device's clock and contents persist across runs, as on a real board; the
    CPU, SRAM, mailbox and peripherals start afresh at every `run`.

    `psram_preset` (a name from target/psram_timing.PRESETS) attaches an external PSRAM of
    `psram_bytes` (default: the preset's part, 8 MiB) behind the PSRAM controller; without
    one every PSRAMCTL command fails (STATUS = ERROR | DONE). Like the flash, the PSRAM's
    clock and contents persist across runs (a reset, not a power cycle).

    The board's clock (peripherals.CpuClock) runs at `cpu_hz` (default: the sim64 profile's;
    `for_profile` takes the profile's) and charges each executed basic block its cycles by the
    Cortex-M7 pipeline model (target/m7_pipeline.py).
    `count_instructions=False` (or MCUGPT_COUNTER=off) runs without the counter: compute then
    takes no simulated time. `record_dma` keeps every DMA start/completion in
    `flashctl.log` / `psramctl.log` (tests). `timeline` records the run's timeline on the
    board's clock (peripherals.CpuClock.events) into RunResult.timeline, for
    `mcugpt run --trace` (mcugpt/timeline.py).
    """

    def __init__(self, elf_path, flash_image_path, ram_bytes: int = mm.SRAM_SIZE_DEFAULT,
                 flash_preset: str = "w25q-quad", flash_chips: int = 1,
                 psram_preset: str | None = None, psram_bytes: int = 0,
                 cpu_hz: float | None = None, crc_ns_per_byte: float = 0.0,
                 count_instructions: bool | None = None,
                 record_dma: bool = False, dtcm_bytes: int = 0, dcache: DCache | None = None,
                 dma_steal_cycles_per_word: float = 0.0, xip: bool = False, timeline: bool = False,
                 by_function: bool = False):
        default = get_board(DEFAULT_BOARD)
        self.cpu_hz = float(cpu_hz or default.cpu_hz)
        self.crc_ns_per_byte = crc_ns_per_byte
        if count_instructions is None:
            count_instructions = counter_mode() != "off"
        self.count_instructions = count_instructions
        self.record_dma = record_dma
        self.timeline = timeline
        self.by_function = by_function   # RunResult.cycles_by_function: where the cycles go
        self._by_block_at_decode, self._n_prompt = None, 0
        if not 0 <= dtcm_bytes <= DTCM_WINDOW or dtcm_bytes % PAGE:
            raise McugptError(f"data TCM of {dtcm_bytes:,} bytes: must be whole 4 KiB pages, at most {DTCM_WINDOW:,}")
        self.dtcm_bytes = dtcm_bytes
        self.dcache_spec = dcache
        self.dcache = None
        self.dma_steal_cycles_per_word = dma_steal_cycles_per_word
        self.xip = xip   # map the flash read-only at XIP_BASE, for the XIP runtime
        if psram_preset is None and psram_bytes:
            raise McugptError(f"{psram_bytes:,} bytes of PSRAM without a PSRAM preset (psram_preset)")
        if psram_bytes < 0:
            raise McugptError(f"PSRAM size must not be negative, got {psram_bytes}")
        self.psram: Psram | None = None
        if psram_preset is not None:
            try:
                self.psram = Psram(psram_bytes or None, psram_preset)
            except KeyError as e:
                raise McugptError(str(e.args[0])) from None
            except ValueError as e:
                raise McugptError(f"PSRAM: {e}") from None
        if ram_bytes <= 0:
            raise McugptError(f"SRAM size must be positive, got {ram_bytes}")
        self.ram_bytes = -(-int(ram_bytes) // PAGE) * PAGE
        if self.ram_bytes > SRAM_WINDOW:
            raise McugptError(f"{ram_bytes:,} bytes of SRAM do not fit the memory map "
                              f"(at most {SRAM_WINDOW:,} between 0x{mm.SRAM_BASE:08x} and 0x{mm.MAILBOX_BASE:08x})")
        self.firmware = _Firmware.load(elf_path)
        self._check_fits()

        self.image_path = Path(flash_image_path)
        if not self.image_path.is_file():
            raise McugptError(f"{self.image_path}: no such flash image")
        if self.image_path.stat().st_size == 0:
            raise McugptError(f"{self.image_path}: the flash image is empty")
        # The image's stage and tensor tables name things in reports. An image the reader
        # rejects still goes on the flash: checking it is the firmware's job (BAD_MAGIC...).
        try:
            self.image = read_image(self.image_path, verify_weights=False)
        except McugptError:
            self.image = None
        with open(self.image_path, "rb") as f:
            try:
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            except OSError:  # no room to reserve a private copy: read-only, copied on first write
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            timing = get_flash_preset(flash_preset)
        except KeyError as e:
            raise McugptError(str(e.args[0])) from None
        # The flash is the board's parts: their capacity, not the image's size. An image the
        # parts cannot hold does not go on the board.
        capacity = flash_chips * timing.capacity
        size = self.image_path.stat().st_size
        if size > capacity:
            raise McugptError(f"{self.image_path}: the flash image is {size:,} bytes, more than the "
                              f"board's {capacity:,} bytes of flash ({flash_chips} x {timing.name})")
        self.flash = SpiNorFlash(self._mmap, timing, size=capacity, chips=flash_chips)
        self._paint = None
        self.injector = None   # emulator/inject.py Injector: faults to inject into the next run
        # what the PSRAM holds at an address, for reports (the plan knows: mcugpt/run.py sets it)
        self.psram_label: Callable[[int], str] = lambda addr: "PSRAM"
        self.uc: Uc | None = None
        self._stage_at_stop: int | None = None

    @classmethod
    def for_profile(cls, elf_path, flash_image_path, profile, ram_bytes: int | None = None,
                    flash_preset: str | None = None, **kw) -> Board:
        """The board a target.boards.BoardProfile describes: its SRAM (or `ram_bytes`, to map
        less), its flash parts (or the alternative made of `flash_preset`), its PSRAM part, at
        the clocks the board runs them, its CPU clock and its CRC path. `kw`: the
        other Board options."""
        flash = profile.flash_option(flash_preset)
        return cls(elf_path, flash_image_path, ram_bytes=ram_bytes or profile.sram_bytes,
                   flash_preset=flash_timing_of(flash), flash_chips=flash.chips,
                   psram_preset=psram_timing_of(profile.psram) if profile.psram else None,
                   psram_bytes=profile.psram_bytes, cpu_hz=profile.cpu_hz,
                   crc_ns_per_byte=profile.crc.ns_per_byte,
                   dtcm_bytes=profile.dtcm.bytes if profile.dtcm else 0, dcache=profile.dcache,
                   dma_steal_cycles_per_word=profile.dma_steal_cycles_per_word, **kw)

    # -- static checks ---------------------------------------------------------

    def _check_fits(self) -> None:
        fw = self.firmware
        vectors = self._code_word(0), self._code_word(4)
        if None in vectors:
            raise McugptError(f"{fw.path}: no vector table at 0x{mm.CODE_BASE:08x} (initial SP, reset handler)")
        sp, reset = vectors
        if not mm.SRAM_BASE < sp <= mm.SRAM_BASE + SRAM_WINDOW:
            raise McugptError(f"{fw.path}: initial stack pointer 0x{sp:08x} is not in SRAM")
        if not reset & 1:
            raise McugptError(f"{fw.path}: reset handler 0x{reset:08x} is not a Thumb address (odd)")
        # Where the file bytes are loaded, and where the segment lives when running.
        ranges = [(paddr, len(data)) for paddr, _v, _m, data in fw.segments if data]
        ranges += [(vaddr, memsz) for _p, vaddr, memsz, _d in fw.segments]
        code_end, sram_end = mm.CODE_BASE, sp
        for addr, size in ranges:
            if mm.CODE_BASE <= addr < mm.CODE_BASE + CODE_WINDOW:
                code_end = max(code_end, addr + size)
            elif mm.SRAM_BASE <= addr < mm.SRAM_BASE + SRAM_WINDOW:
                sram_end = max(sram_end, addr + size)
            elif mm.DTCM_BASE <= addr < mm.DTCM_BASE + DTCM_WINDOW:
                if addr + size > mm.DTCM_BASE + self.dtcm_bytes:
                    raise _need("data TCM", mm.DTCM_BASE, addr + size, self.dtcm_bytes)
            else:
                raise McugptError(f"{fw.path}: a segment at 0x{addr:08x} ({size:,} bytes) is outside "
                                  f"the board's code flash and SRAM")
        if code_end > mm.CODE_BASE + mm.CODE_SIZE:
            raise _need("code flash", mm.CODE_BASE, code_end, mm.CODE_SIZE)
        if sram_end > mm.SRAM_BASE + self.ram_bytes:
            raise _need("SRAM", mm.SRAM_BASE, sram_end, self.ram_bytes)

    def _code_word(self, offset: int) -> int | None:
        addr = mm.CODE_BASE + offset
        for start, _vaddr, _memsz, data in self.firmware.segments:
            if start <= addr and addr + 4 <= start + len(data):
                return struct.unpack_from("<I", data, addr - start)[0]
        return None

    # -- names for reports ------------------------------------------------------

    def stage_label(self, index: int) -> str:
        """'h3.mlp' from the image's stage table; 'stage 7' without one."""
        if self.image is not None and index < len(self.image.stages):
            s = self.image.stages[index]
            kinds = {k.id: k.name for k in STAGE_KINDS}
            kind = kinds.get(s["kind"], f"kind{s['kind']}")
            return stage_name(kind, None if s["layer"] == NO_LAYER else s["layer"])
        return f"stage {index}"

    def tensor_label(self, index: int) -> str:
        if self.image is not None and index < len(self.image.tensors):
            return f"tensor {index} '{self.image.tensors[index]['name']}'"
        return f"tensor {index}"

    def _retry_label(self, what: int, stage: int | None, at_boot: bool) -> str:
        """'tensor 1 'wpe.weight' in stage 0 (embed)' for a TRACE.CRC_RETRY write."""
        thing = {mm.CRC_RETRY_SECTION: "the header, tables or token table",
                 mm.CRC_RETRY_KV: "KV cache rows read from PSRAM",
                 mm.CRC_RETRY_TIER: "a tile's tail read from the PSRAM tier"}.get(what) or self.tensor_label(what)
        return f"{thing} {self._stage_text(stage, at_boot)}"

    def _stage_text(self, stage: int | None, at_boot: bool = False) -> str:
        if stage is None:
            return "at boot" if at_boot else "outside any stage"
        label = self.stage_label(stage)
        return f"in {label}" if label.startswith("stage ") else f"in stage {stage} ({label})"

    # -- power on ---------------------------------------------------------------

    def _power_on(self, mailbox: bytes, on_text) -> int:
        """A fresh CPU with everything mapped, loaded and painted; returns the entry point."""
        if self.uc is not None:  # free the last run's SRAM now, not whenever the GC gets to it
            self.uc = None
            gc.collect()
        uc = Uc(UC_ARCH_ARM, UC_MODE_THUMB)
        uc.ctl_set_cpu_model(UC_CPU_ARM_CORTEX_M7)  # before any mapping (see the notes)
        uc.mem_map(mm.CODE_BASE, mm.CODE_SIZE, UC_PROT_READ | UC_PROT_EXEC)
        uc.mem_map(mm.SRAM_BASE, self.ram_bytes, UC_PROT_ALL)
        uc.mem_map(mm.MAILBOX_BASE, mm.MAILBOX_SIZE, UC_PROT_ALL)
        if self.dtcm_bytes:
            uc.mem_map(mm.DTCM_BASE, self.dtcm_bytes, UC_PROT_ALL)
        if self.xip:   # the image, memory-mapped as the XSPI presents it (reads only)
            size = len(self._mmap)
            uc.mem_map(mm.XIP_BASE, -(-size // PAGE) * PAGE, UC_PROT_READ)
            uc.mem_write(mm.XIP_BASE, self._mmap[:size])

        if self._paint is None:
            self._paint = np.full(self.ram_bytes // 4, PAINT, "<u4").tobytes()
        uc.mem_write(mm.SRAM_BASE, self._paint)
        if self.dtcm_bytes:
            uc.mem_write(mm.DTCM_BASE, self._paint[:self.dtcm_bytes])
        for addr, _vaddr, _memsz, data in self.firmware.segments:
            if data:
                uc.mem_write(addr, data)  # file bytes only: .bss and NOLOAD sections keep the paint
        uc.mem_write(mm.MAILBOX_BASE, mailbox)

        self.counter = None
        if self.count_instructions:
            code_end = max((a + len(d) for a, _v, _m, d in self.firmware.segments
                            if mm.CODE_BASE <= a < mm.CODE_BASE + mm.CODE_SIZE), default=mm.CODE_BASE)
            code = bytes(uc.mem_read(mm.CODE_BASE, code_end - mm.CODE_BASE))
            self.counter = InstructionCounter(uc, mm.CODE_BASE, code, costs=halfword_costs(code, mm.CODE_BASE))
            if self.by_function:
                self.counter.count_by_block()
        self.clock = CpuClock(self.counter, self.cpu_hz)
        self.clock.events = [] if self.timeline else None
        # The D-cache in front of the SRAM, when the board has one: its line fills and
        # write-backs are charged to the CPU's clock.
        self.dcache = (dcache_model.DCacheModel(self.dcache_spec, mm.SRAM_BASE, self.ram_bytes, self.clock)
                       if self.dcache_spec is not None else None)
        self.scb = SystemControl(self.dcache)
        self.faults = Faults()
        self.flashctl = FlashController(self.faults, self.flash, mm.SRAM_BASE, self.ram_bytes, clock=self.clock,
                                        crc_ns_per_byte=self.crc_ns_per_byte)
        self.psramctl = PsramController(self.faults, self.psram, mm.SRAM_BASE, self.ram_bytes, clock=self.clock)
        for ctl in (self.flashctl, self.psramctl):
            ctl.tcm = (mm.DTCM_BASE, self.dtcm_bytes) if self.dtcm_bytes else None
            ctl.dcache = self.dcache
            ctl.steal_cycles_per_word = self.dma_steal_cycles_per_word
        if self.record_dma:
            self.flashctl.log, self.psramctl.log = [], []
        self.uart = Uart(self.faults, on_text)
        vocab = self.image.header["vocab_size"] if self.image is not None else 0
        self.trace = Trace(self.faults, self.flash, self.stage_label, vocab, psram=self.psram, clock=self.clock,
                           crc_ns=lambda: self.flashctl.crc_ns)
        self.sysctl = SysCtl(self.faults)
        self.dwt = CycleCounter(self.clock)
        if self.injector is not None:
            self.flashctl.injector = self.psramctl.injector = self.injector
            self.injector.attach(self)
        for p in (self.flashctl, self.psramctl, self.uart, self.trace, self.sysctl, self.scb, self.dwt):
            p.map(uc)
        uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_bad_access)
        uc.hook_add(UC_HOOK_MEM_PROT, self._on_bad_access)
        uc.hook_add(UC_HOOK_INTR, self._on_exception)

        sp, entry = struct.unpack("<II", uc.mem_read(mm.CODE_BASE, 8))
        uc.reg_write(UC_ARM_REG_SP, sp)
        uc.reg_write(UC_ARM_REG_LR, 0xFFFFFFFF)  # the reset value
        self.uc = uc
        return entry

    def _on_bad_access(self, uc, access, address, size, value, _ud) -> bool:
        kind = "unmapped" if access in (UC_MEM_READ_UNMAPPED, UC_MEM_WRITE_UNMAPPED, UC_MEM_FETCH_UNMAPPED) else "protection"
        op = _ACCESS.get(access, "access")
        if kind == "unmapped":
            what = f"{size}-byte {op} at unmapped address 0x{address:08x} ({self._region_note(address)})"
        else:
            what = f"{size}-byte {op} at 0x{address:08x}, which is {self._protection_note(address, op)}"
        self.faults.record(uc, kind, what, address)
        return False

    def _on_exception(self, uc, intno, _ud) -> None:
        pc = uc.reg_read(UC_ARM_REG_PC)
        name = EXCEPTIONS.get(intno, f"exception {intno}")
        if intno == 7:  # BKPT #imm8: 0xBEii
            try:
                name = f"breakpoint (BKPT #0x{uc.mem_read(pc & ~1, 2)[0]:02x})"
            except UcError:
                pass
        what, address = f"CPU exception: {name}", None
        if intno == 3:
            what, address = f"CPU exception: {name}: cannot execute at 0x{pc:08x} ({self._region_note(pc)})", pc
        self.faults.record(uc, "exception", what, address)

    def _region_note(self, addr: int) -> str:
        if mm.DTCM_BASE <= addr < mm.DTCM_BASE + DTCM_WINDOW:
            return (f"past the end of the data TCM: the board maps {self.dtcm_bytes:,} bytes at 0x{mm.DTCM_BASE:08x}"
                    if self.dtcm_bytes else "the data TCM, which this board does not have")
        if mm.SRAM_BASE <= addr < mm.SRAM_BASE + SRAM_WINDOW:
            return f"past the end of SRAM: the board maps {self.ram_bytes:,} bytes at 0x{mm.SRAM_BASE:08x}"
        if mm.CODE_BASE <= addr < mm.CODE_BASE + CODE_WINDOW:
            return f"past the end of code flash: {mm.CODE_SIZE:,} bytes at 0x{mm.CODE_BASE:08x}"
        if mm.MAILBOX_BASE <= addr < mm.PERIPH_BASE:
            return f"past the end of the mailbox: {mm.MAILBOX_SIZE:,} bytes at 0x{mm.MAILBOX_BASE:08x}"
        if mm.PERIPH_BASE <= addr < mm.PERIPH_BASE + 0x20000000:
            return "peripheral space: execute-never, and no register there unless listed in memory_map.py"
        if addr < 0x1000:
            return "a null pointer?"
        return "no memory there"

    def _protection_note(self, addr: int, op: str) -> str:
        if mm.CODE_BASE <= addr < mm.CODE_BASE + mm.CODE_SIZE:
            return "read-only code flash"
        return f"not {'executable' if op == 'fetch' else op + 'able'}"

    # -- run --------------------------------------------------------------------

    def run(self, prompt_tokens, n_new: int, temperature: float = 0.0, top_k: int = 40, seed: int = 0,
            dump_logits: bool = False, on_text: Callable[[str], None] | None = None,
            max_instructions: int | None = None, timeout_s: float | None = None, chunk: int = 0,
            on_position: Callable[[int], None] | None = None,
            on_stage_end: Callable[[int, int | None], None] | None = None, gdb_port: int | None = None,
            on_gdb_wait: Callable[[], None] | None = None) -> RunResult:
        """Reset the board with this request in the mailbox and run until SYSCTL.EXIT.

        Raises BoardFault if the firmware crashes, hits `max_instructions` or `timeout_s`,
        and FirmwareError if it exits with an error code. Both carry the partial result.
        `gdb_port`: start halted at the reset handler, with a GDB server on that port
        (emulator/gdb.py; `on_gdb_wait` is called just before it waits for GDB); the
        timeout then counts the board's CPU time, not the time it waits for the debugger.
        """
        mailbox = self._mailbox(prompt_tokens, n_new, temperature, top_k, seed, dump_logits, chunk)
        if gdb_port is not None:
            gdb.check_port(gdb_port)
        if self.psram is not None:  # before the trace unit (built at power-on) reads the counters
            self.psram.reset_stats()
        self.flash.reset_stats()
        entry = self._power_on(mailbox, on_text)
        self._by_block_at_decode, self._n_prompt = None, len(prompt_tokens)

        def position(pos):   # each forward pass's first position, as it starts
            if pos == self._n_prompt and self.counter is not None and self.counter.by_block is not None:
                self._by_block_at_decode = self.counter.by_block.copy()   # decoding starts
            if on_position is not None:
                on_position(pos)
        self.trace.on_position = position
        self.trace.on_stage_end = on_stage_end  # (stage, position) as each stage ends: read_f32 sees its output
        # Under GDB the board waits for the debugger inside emu_start: Unicorn's timeout (host
        # time) would end a run paused at a breakpoint, so the timeout counts CPU time instead.
        debugger = cpu_timer = None
        if gdb_port is not None:
            gdb.attach(self.uc, gdb_port, entry)
            debugger = gdb.session()
            cpu_timer = gdb.CpuTimeout(self.uc, timeout_s) if timeout_s else None
            if on_gdb_wait is not None:
                on_gdb_wait()
        uc_error = None
        t0 = time.perf_counter()
        try:
            with debugger or contextlib.nullcontext(), cpu_timer or contextlib.nullcontext():
                self.uc.emu_start(entry, 0, timeout=int(timeout_s * 1e6) if timeout_s and not cpu_timer else 0,
                                  count=int(max_instructions or 0))
        except UcError as e:
            uc_error = e
        wall_s = time.perf_counter() - t0
        timed_out = self.sysctl.exit_code is None and (
            cpu_timer.fired if cpu_timer else bool(timeout_s) and wall_s >= timeout_s * 0.999)
        stale = self.dcache.unmaintained() if self.dcache is not None else None
        if stale is not None and self.sysctl.exit_code == EXIT_OK:
            self.faults.record(self.uc, "coherence", dcache_model.coherence_message(stale), stale)
        self._stage_at_stop = self.trace.current  # before _result closes the stage
        result = self._result(wall_s, t0, dump_logits)

        fault = self._diagnose(uc_error, timed_out, max_instructions, timeout_s, result,
                               under_gdb=gdb_port is not None)
        if fault is not None:
            raise fault
        code, args = self.sysctl.exit_code, self.sysctl.exit_args
        if code != EXIT_OK:
            raise FirmwareError(self.exit_message(code, args, result.flash_errors, result.psram_errors),
                                code=code, name=EXIT_NAMES[code], args=args, result=result)
        return result

    def _mailbox(self, prompt, n_new, temperature, top_k, seed, dump_logits, chunk=0) -> bytes:
        prompt = [int(t) for t in prompt]
        if len(prompt) > mm.MAILBOX_MAX_PROMPT:
            raise McugptError(f"the prompt has {len(prompt):,} tokens, the mailbox holds at most {mm.MAILBOX_MAX_PROMPT:,}")
        for what, v, limit in (("n_new", n_new, 1 << 32), ("top_k", top_k, 1 << 32), ("seed", seed, 1 << 64),
                               *(("prompt token", t, 1 << 32) for t in prompt)):
            if not 0 <= int(v) < limit:
                raise McugptError(f"{what} {v} is out of range (0 .. {limit - 1})")
        words = {"MAGIC": mm.MAILBOX_MAGIC, "N_PROMPT": len(prompt), "N_NEW": int(n_new),
                 "TEMPERATURE": struct.unpack("<I", struct.pack("<f", float(temperature)))[0],
                 "TOP_K": int(top_k), "SEED_LO": int(seed) & 0xFFFFFFFF, "SEED_HI": int(seed) >> 32,
                 "FLAGS": mm.MAILBOX_FLAGS["DUMP_LOGITS"] if dump_logits else 0, "CHUNK": int(chunk)}
        buf = bytearray(mm.MAILBOX_SIZE)
        for name, value in words.items():
            struct.pack_into("<I", buf, mm.MAILBOX[name], value)
        struct.pack_into(f"<{len(prompt)}I", buf, mm.MAILBOX["PROMPT"], *prompt)
        return bytes(buf)

    def _result(self, wall_s: float, t0: float, dump_logits: bool) -> RunResult:
        self.trace.finish()
        clock = self.clock
        clock.sync()
        text = self.uart.finish()
        stats = self.flash.stats()
        psram = self.psram.stats() if self.psram is not None else None
        times = [t0, *self.trace.token_times]
        logits = None
        if dump_logits:
            vocab = self.trace.vocab_size
            logits = [np.full(vocab, np.nan, np.float32) if a is None else a for a in self.trace.logits]
        return RunResult(
            tokens=list(self.trace.tokens), text=text,
            exit_code=self.sysctl.exit_code, exit_args=self.sysctl.exit_args, logits=logits,
            stages=[self.trace.stages[i] for i in sorted(self.trace.stages)],
            positions=list(self.trace.positions), per_position=list(self.trace.per_position),
            flash_bytes=stats["total"]["bytes"], flash_ns=stats["elapsed_ns"], flash_commands=stats["commands"],
            crc_ns=self.flashctl.crc_ns,
            wall_s=wall_s, token_wall_s=[b - a for a, b in zip(times, times[1:])],
            peak_ram=self.measure_ram(), uart_bytes=bytes(self.uart.data),
            flash_errors=list(self.flashctl.errors),
            psram_bytes=psram["total"]["bytes"] if psram else 0, psram_ns=psram["total"]["ns"] if psram else 0.0,
            psram_transfers={d: psram[d] for d in ("read", "write")} if psram else {},
            psram_errors=list(self.psramctl.errors),
            instructions=clock.instructions, cycles=clock.cycles, compute_ns=clock.compute_ns,
            stall_ns=clock.stall_ns, device_ns=clock.now_ns, cpu_hz=clock.cpu_hz,
            cpi=clock.cycles / clock.instructions if clock.instructions else 0.0,
            counter=self.counter.kind if self.counter is not None else "off", stage_calls=list(self.trace.calls),
            dma_overlapped_instructions=(self.flashctl.dma.overlapped_instructions
                                         + self.psramctl.dma.overlapped_instructions),
            dcache=self.dcache.stats() if self.dcache is not None else None,
            bus_cycles=self.flashctl.bus_cycles + self.psramctl.bus_cycles,
            boot_ns=self.trace.boot_ns or 0.0,
            ttft_ns=(self.trace.token_ns[0] - self.trace.boot_ns) if self.trace.token_ns and self.trace.boot_ns else 0.0,
            ttft_wall_s=(self.trace.token_times[0] - self.trace.boot_wall)
            if self.trace.token_times and self.trace.boot_wall else 0.0,
            tcm_bytes=self.dtcm_bytes, tcm_high_water=self._tcm_high_water(), timeline=clock.events,
            crc_retries=[self._retry_label(*retry) for retry in self.trace.crc_retries],
            cycles_by_function=self._cycles_by_function())

    def _cycles_by_function(self) -> dict | None:
        """With by_function: the cycles of each firmware function, over the decode steps (the
        forward passes after the prompt's), or over the whole run when there were none."""
        if self.counter is None or self.counter.by_block is None:
            return None
        by_block = self.counter.by_block
        over = "run"
        if self._by_block_at_decode is not None:
            by_block, over = by_block - self._by_block_at_decode, "decode"
        passes = sum(1 for p in self.trace.positions if p >= self._n_prompt) if over == "decode" else 1
        functions, placed, done = {}, 0, 0
        for start, end, name in self.firmware.funcs:   # by address; an alias's range is counted once
            lo, hi = max((start - mm.CODE_BASE) // 2, done), (end - mm.CODE_BASE + 1) // 2
            if hi <= lo:
                continue
            cycles = int(by_block[lo:hi].sum())
            done = hi
            if cycles:
                functions[name] = functions.get(name, 0) + cycles / FIXED
                placed += cycles
        total = int(by_block.sum())
        if total > placed:   # blocks in no function symbol (none in a sane firmware)
            functions["(outside any function)"] = (total - placed) / FIXED
        return {"over": over, "passes": passes, "cycles": total / FIXED,
                "functions": sorted(functions.items(), key=lambda kv: -kv[1])}

    # -- memory, from the host -----------------------------------------------------

    def symbol_address(self, name: str) -> int:
        """The address of the firmware's symbol `name` (e.g. "arena", "tcm_arena")."""
        if name not in self.firmware.symbols:
            raise McugptError(f"{self.firmware.path}: no symbol '{name}'")
        return self.firmware.symbols[name][0]

    def read_f32(self, address: int, count: int) -> np.ndarray:
        """`count` float32 at `address` as the CPU would read them: Unicorn's memory is always
        current (the D-cache model only times line fills, it holds no data)."""
        return np.frombuffer(bytes(self.uc.mem_read(address, 4 * count)), "<f4").copy()

    # -- after the run ------------------------------------------------------------

    def _painted(self, start: int, end: int) -> np.ndarray:
        """Per word of [start, end) (clipped to SRAM, word-aligned): still the paint?"""
        start = max(start, mm.SRAM_BASE) + 3 & ~3
        end = min(end, mm.SRAM_BASE + self.ram_bytes) & ~3
        if end <= start:
            return np.zeros(0, bool)
        return np.frombuffer(bytes(self.uc.mem_read(start, end - start)), "<u4") == PAINT

    def _tcm_high_water(self) -> int:
        """Bytes of the TCM arena (`tcm_arena`) up to its highest written word."""
        start, size = self.firmware.symbols.get("tcm_arena", (0, 0))
        if not self.dtcm_bytes or not size:
            return 0
        words = np.frombuffer(bytes(self.uc.mem_read(start, size & ~3)), "<u4") != PAINT
        written = np.flatnonzero(words)
        return 0 if written.size == 0 else int(written[-1] + 1) * 4

    def measure_ram(self) -> PeakRam:
        """Scan SRAM for the words the firmware wrote (see PeakRam)."""
        sym = self.firmware.symbols
        arena_start, arena_size = sym.get("arena", (0, 0))
        if "arena" in sym and arena_size == 0:  # no st_size: to the end of its section
            arena_size = next((e - arena_start for s, e, _ in self.firmware.sram_sections if s <= arena_start < e), 0)
        high_water = 0
        if arena_size:
            written = np.flatnonzero(~self._painted(arena_start, arena_start + arena_size))
            high_water = 0 if written.size == 0 else int(written[-1] + 1) * 4 - (arena_start & 3)
            high_water = min(high_water, arena_size)
        stack_lo, stack_hi = sym.get("_stack_bottom", (0, 0))[0], sym.get("_estack", (0, 0))[0]
        stack_bytes = stack_used = 0
        if "_stack_bottom" in sym and "_estack" in sym and stack_hi > stack_lo:
            stack_bytes = stack_hi - stack_lo
            written = np.flatnonzero(~self._painted(stack_lo, stack_hi))
            stack_used = 0 if written.size == 0 else stack_hi - ((stack_lo + 3 & ~3) + 4 * int(written[0]))
        excluded = [(arena_start, arena_start + arena_size), (stack_lo, stack_hi)]
        static = 0
        for s, e, _name in self.firmware.sram_sections:
            static += e - s - sum(max(0, min(e, xe) - max(s, xs)) for xs, xe in excluded)
        return PeakRam(static, arena_size, high_water, stack_bytes, stack_used, self.ram_bytes)

    def _where(self, pc: int) -> tuple[str, str | None, str]:
        func = self.firmware.function_at(pc)
        stage = self._stage_at_stop
        stage_text = "outside any stage" if stage is None else self._stage_text(stage)
        return (f"PC 0x{pc:08x} in {func or 'unknown code'}, {stage_text}", func,
                None if stage is None else self.stage_label(stage))

    def _diagnose(self, uc_error, timed_out, max_instructions, timeout_s, result,
                  under_gdb: bool = False) -> BoardFault | None:
        uc = self.uc
        pc = uc.reg_read(UC_ARM_REG_PC)
        first = self.faults.first
        code = self.sysctl.exit_code
        address = None
        if first is not None:
            kind, what, address = first["kind"], first["what"], first["address"]
        elif uc_error is not None and uc_error.errno == UC_ERR_INSN_INVALID:
            kind, what = "invalid_instruction", f"invalid instruction {self._insn_hex(pc)}"
        elif uc_error is not None:
            kind, what = "exception", f"emulation error: {uc_error}"
        elif timed_out:
            kind, what = "timeout", (f"firmware did not finish within the {timeout_s:g} s timeout"
                                     + (" (the board's CPU time: waiting for the debugger is not counted)"
                                        if under_gdb else ""))
        elif code is None and max_instructions:
            kind, what = "instruction_limit", f"firmware did not finish within {max_instructions:,} instructions"
        elif code is None:
            kind, what = "stopped", "emulation stopped without SYSCTL.EXIT"
        elif code == mm.EXIT_CODES.get("FAULT", (None,))[0] or code not in EXIT_NAMES:
            # The firmware's own fault handler reported it (never happens with Unicorn's
            # exceptions, which stop the board first, but a firmware may call it itself).
            a0, a1, a2 = self.sysctl.exit_args
            label = "EXIT_FAULT" if code in EXIT_NAMES else f"unknown exit code {code} (0x{code:x}; a fault handler?)"
            kind, what = "fault_handler", f"firmware exited with {label}, ARG0 {a0} (0x{a0:x}), ARG1 0x{a1:08x}, ARG2 0x{a2:08x}"
        else:
            return None
        where, func, stage = self._where(pc)
        return BoardFault(f"board fault: {what}; {where}", kind=kind, pc=pc, function=func,
                          address=address, stage=stage, result=result)

    def _insn_hex(self, pc: int) -> str:
        try:
            raw = bytes(self.uc.mem_read(pc & ~1, 4))
        except UcError:
            return "(unreadable)"
        hw = struct.unpack("<HH", raw)
        return f"0x{hw[0]:04x}" if (hw[0] >> 11) < 0b11101 else f"0x{hw[0]:04x}{hw[1]:04x}"

    def exit_message(self, code: int, args: tuple[int, int, int], flash_errors=(), psram_errors=()) -> str:
        """One line for an EXIT_* code and its arguments (memory_map.EXIT_CODES)."""
        name = EXIT_NAMES[code]
        a0, a1, a2 = args
        where = self._stage_text(self._stage_at_stop, at_boot=getattr(self, "trace", None) is not None and not self.trace.positions)
        if name == "BAD_TENSOR_CRC":
            detail = (f"weight blob CRC32 mismatch in {self.tensor_label(a0)} {where}, read twice: stored "
                      f"0x{a1:08x}, computed 0x{a2:08x} (a persistent error: the flash image is corrupt)")
        elif name == "BAD_ROW_CRC":
            detail = (f"row {a1:,} of {self.tensor_label(a0)} {where} failed its row CRC32 twice, computed "
                      f"0x{a2:08x} (a persistent error: the flash image is corrupt)")
        elif name == "BAD_KV_ROW":
            n_head = max(self.image.header["n_head"], 1) if self.image is not None else 1
            layer, values = divmod(a0 // n_head, 2)
            detail = (f"the KV cache's layer {layer} {'values' if values else 'keys'}, head {a0 % n_head}, position "
                      f"{a1:,} {where} failed its PSRAM check word twice, computed 0x{a2:08x} (the PSRAM holds wrong bits, "
                      f"or its reads keep failing)")
        elif name == "BAD_TIER_TAIL":
            detail = (f"the tail of tile {a1:,} of {self.tensor_label(a0)} {where}, read from the PSRAM tier, failed "
                      f"its check word twice, computed 0x{a2:08x} (the PSRAM holds wrong bits, or its reads keep failing)")
        elif name == "BAD_TENSOR_ENTRY" and self._field_name(TENSOR_ENTRY, a1) == "crc":
            detail = (f"{self.tensor_label(a0)} {where}: its blob's CRC32 in the image, 0x{a2:08x}, is not the one "
                      f"this firmware was compiled with: the image is not this build's (its weights were "
                      f"changed); recompile")
        elif name == "BAD_TENSOR_ENTRY":
            field = self._field_name(TENSOR_ENTRY, a1)
            detail = (f"{self.tensor_label(a0)} {where}: TensorEntry {field} = {a2:,} (0x{a2:x}) differs from "
                      f"the firmware's plan or lies outside the image")
        elif name == "BAD_TOKEN_ENTRY":
            detail = f"token {a0:,}: its bytes {a1:,}..{a2:,} are out of order or past the token table"
        elif name == "CONTEXT_FULL":
            detail = f"prompt + new tokens need {a0:,} positions, the planned context is {a1:,}"
        elif name == "BAD_MAILBOX":
            if a0 >= mm.MAILBOX["PROMPT"]:
                where = f"PROMPT[{(a0 - mm.MAILBOX['PROMPT']) // 4}]"
            else:
                where = {off: n for n, off in mm.MAILBOX.items()}.get(a0, f"at offset 0x{a0:x}")
            detail = f"mailbox {where} = {a1} (0x{a1:x}) is wrong or out of range"
        elif name == "BAD_STAGE":
            field = self._field_name(STAGE_ENTRY, a1)
            label = self.stage_label(a0)
            stage = label if label.startswith("stage ") else f"stage {a0} ({label})"
            detail = f"{stage}: StageEntry {field} = {a2:,} (0x{a2:x}) differs from the firmware's plan"
        elif name == "FLASH_ERROR":
            bits = "|".join(n for n, b in mm.FLASH_STATUS.items() if a0 & b) or "0"
            why = flash_errors[-1] if flash_errors else f"ARG1 0x{a1:x}, ARG2 0x{a2:x}"
            detail = f"flash controller error (STATUS {bits}): {why}"
        elif name == "DMA_TIMEOUT":
            bus = {v: k for k, v in mm.DMA_BUS.items()}.get(a0)
            if bus == "FLASH":
                what = f"the flash DMA of {a2:,} bytes at 0x{a1:08x} ({inject.describe(inject.image_region(self.image, a1), field=False)}, {where})"
            else:
                what = f"the PSRAM DMA of {a2:,} bytes at PSRAM 0x{a1:08x} ({self.psram_label(a1)}, {where})"
            detail = (f"{what} never completed: STATUS stayed BUSY past the firmware's bound "
                      f"({DMA_TIMEOUT_MARGIN} times the transfer's expected time)")
        elif name == "PSRAM_ERROR":
            bits = "|".join(n for n, b in mm.FLASH_STATUS.items() if a0 & b) or "0"
            why = psram_errors[-1] if psram_errors else f"{a2:,} bytes at PSRAM 0x{a1:x}"
            detail = f"PSRAM controller error (STATUS {bits}): {why}"
        else:
            doc = mm.EXIT_CODES[name][1].split(" (")[0]
            numbers = ", ".join(f"{label} 0x{v:08x}" for label, v in zip(self._arg_labels(name), args))
            detail = f"{doc}: {numbers}" if numbers else doc
        return f"firmware exit {name}: {detail}"

    @staticmethod
    def _field_name(entry, offset: int) -> str:
        """'tensors[1]' for byte offset 16 of StageEntry."""
        for f in entry.fields:
            start = entry.offset_of(f.name)
            width = 4 * f.count if f.type != "char" else f.count
            if start <= offset < start + width:
                return f.name if f.count == 1 or f.type == "char" else f"{f.name}[{(offset - start) // 4}]"
        return f"at offset {offset}"

    @staticmethod
    def _arg_labels(name: str) -> list[str]:
        """'ARG0: stored, ARG1: computed' in the code's doc -> ['stored', 'computed']."""
        return re.findall(r"ARG\d: ([^,)]+)", mm.EXIT_CODES[name][1])

    # -- cleanup ----------------------------------------------------------------

    def close(self) -> None:
        """Unmap the flash image (the board is unusable afterwards)."""
        self.uc = self.flash = self.counter = self.clock = None
        self.flashctl = self.psramctl = self.trace = None  # they hold the flash device, which holds a view of the map
        gc.collect()  # Unicorn's callback wrappers form reference cycles with the Uc object
        try:
            self._mmap.close()
        except BufferError:  # a view of the image is still alive somewhere: the GC closes it later
            pass

    def __enter__(self) -> Board:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

