"""Board profiles: boards you can buy, each built from named parts, defined once here.

A board is its CPU (part, core, the datasheet's maximum clock), its SRAM regions (the model's
arena lives in one contiguous region), its flash (one or more packages of a part in
target/flash_timing.py, on a controller at a clock no faster than part or controller allow)
and its PSRAM (a part in target/psram_timing.py). Compute is timed by the Cortex-M7 pipeline
model (target/m7_pipeline.py) at the CPU's clock. The planner reads the arena region's size, the flash capacity and the
PSRAM capacity; the emulated board maps exactly these memories and runs the parts at these
clocks. `sim64` is the method's abstract 64 MB device, made of real flash parts, and is
labelled as not buyable.

Every figure's source is in docs/boards.md; what no source we could reach gives is listed in
`assumptions` (and reported by `mcugpt fit --json` and `mcugpt run --json`).
"""

from dataclasses import dataclass

from target import flash_timing, psram_timing
from target.errors import McugptError

KiB, MiB = 1 << 10, 1 << 20


@dataclass(frozen=True)
class Cpu:
    part: str
    core: str
    max_hz: float          # the datasheet's (or the vendor's stated) maximum core clock
    emulated: bool         # the emulator runs this core's instruction set: only then a speed figure
    source: str


@dataclass(frozen=True)
class SramRegion:
    name: str
    bytes: int
    arena: bool            # the model's arena (and stack, statics) lives here: the one the plan fills
    source: str
    tcm: bool = False      # a tightly coupled memory: zero-wait, beside the D-cache, never cached
    dma: bool = True       # the board's DMA can write it


@dataclass(frozen=True)
class DCache:
    """The Cortex-M7's L1 data cache in front of the arena's SRAM (the TCMs bypass it)."""
    bytes: int
    ways: int
    line: int
    fill_cycles: int       # CPU cycles a read or write miss stalls for its line fill
    writeback_cycles: int  # CPU cycles to write a dirty line back (an eviction or a clean)
    source: str

    @property
    def sets(self) -> int:
        return self.bytes // (self.ways * self.line)


@dataclass(frozen=True)
class ExternalMemory:
    """`chips` packages of `part` on `controller`, run at `clock_hz`."""
    part: str              # a preset of target/flash_timing.py or target/psram_timing.py
    chips: int
    controller: str
    clock_hz: int          # min(the part's maximum, the controller's), or what the board runs
    source: str


@dataclass(frozen=True)
class CrcUnit:
    """How the board checks the CRC32 of what it reads from flash."""
    bytes_per_s: float | None   # None: on the DMA's data path, free; else a second DMA pass at this rate
    source: str

    @property
    def ns_per_byte(self) -> float:
        return 0.0 if self.bytes_per_s is None else 1e9 / self.bytes_per_s


@dataclass(frozen=True)
class BoardProfile:
    name: str
    doc: str
    buyable: bool
    cpu: Cpu
    sram: tuple[SramRegion, ...]
    flash: tuple[ExternalMemory, ...]     # the board's flash; alternatives after the first (sim64)
    psram: ExternalMemory | None
    crc: CrcUnit
    dcache: DCache | None = None          # None: the SRAM is zero-wait (sim64, an abstract device)
    # Bus sharing: CPU cycles lost per 32-bit word a DMA moves through the memory the CPU
    # computes from (the transfer itself, and the CRC pass that reads it back).
    dma_steal_cycles_per_word: float = 0.0
    assumptions: tuple[str, ...] = ()

    @property
    def cpu_hz(self) -> float:
        return self.cpu.max_hz

    @property
    def sram_bytes(self) -> int:
        """The arena region: what the model's RAM budget may be at most."""
        return next(r.bytes for r in self.sram if r.arena)

    @property
    def dtcm(self) -> SramRegion | None:
        """The data TCM, when the board has one its DMA can write: the plan's fast region."""
        return next((r for r in self.sram if r.tcm and r.dma and r.name == "DTCM"), None)

    @property
    def psram_bytes(self) -> int:
        return psram_bytes(self.psram) if self.psram else 0

    def flash_option(self, part: str | None = None) -> ExternalMemory:
        """The board's flash (`part` None), or the alternative made of `part`."""
        if part is None:
            return self.flash[0]
        for m in self.flash:
            if m.part == part:
                return m
        raise McugptError(f"the {self.name} board has no {part} flash (it has: "
                          f"{', '.join(m.part for m in self.flash)})")

    @property
    def flash_bytes(self) -> int:
        return flash_bytes(self.flash[0])

    def all_assumptions(self) -> list[str]:
        """The board's own assumptions and those of its parts."""
        out = list(self.assumptions)
        for m in self.flash[:1]:
            out += flash_timing.get_preset(m.part).assumptions
        if self.psram:
            out += psram_timing.get_preset(self.psram.part).assumptions
        return out

    def summary(self) -> dict:
        """What the board is made of, for --json and reports."""
        flash = self.flash[0]
        return {
            "name": self.name, "buyable": self.buyable, "doc": self.doc,
            "cpu": {"part": self.cpu.part, "core": self.cpu.core, "hz": self.cpu.max_hz,
                    "emulated": self.cpu.emulated},
            "sram": [{"name": r.name, "bytes": r.bytes, "arena": r.arena, "tcm": r.tcm} for r in self.sram],
            "dcache": None if not self.dcache else {
                "bytes": self.dcache.bytes, "ways": self.dcache.ways, "line": self.dcache.line,
                "fill_cycles": self.dcache.fill_cycles, "writeback_cycles": self.dcache.writeback_cycles},
            "flash": {"part": flash.part, "chips": flash.chips, "bytes": self.flash_bytes,
                      "controller": flash.controller, "clock_hz": flash.clock_hz},
            "dma_steal_cycles_per_word": self.dma_steal_cycles_per_word,
            "crc": {"bytes_per_s": self.crc.bytes_per_s, "path": "inline" if self.crc.bytes_per_s is None
                    else "second DMA pass", "source": self.crc.source},
            "psram": None if not self.psram else {
                "part": self.psram.part, "chips": self.psram.chips, "bytes": self.psram_bytes,
                "controller": self.psram.controller, "clock_hz": self.psram.clock_hz},
            "assumptions": self.all_assumptions(),
        }


def flash_bytes(m: ExternalMemory) -> int:
    return m.chips * flash_timing.get_preset(m.part).capacity


def psram_bytes(m: ExternalMemory) -> int:
    return m.chips * psram_timing.get_preset(m.part).capacity


def flash_timing_of(m: ExternalMemory) -> flash_timing.FlashTiming:
    """The part as the board runs it: at the board's clock."""
    return flash_timing.at_clock(flash_timing.get_preset(m.part), m.clock_hz)


def psram_timing_of(m: ExternalMemory) -> psram_timing.PsramTiming:
    return psram_timing.at_clock(psram_timing.get_preset(m.part), m.clock_hz)


# How long the firmware waits for one DMA transfer before it gives up (EXIT_DMA_TIMEOUT): the
# transfer's expected time on the slowest of the board's flash options and its PSRAM, times
# this margin. A healthy transfer never comes near it; a controller whose STATUS stays BUSY
# (a hung DMA, a dead part) ends the run in a bounded time instead of a hang.
DMA_TIMEOUT_MARGIN = 8


def dma_timeout_cycles(profile: "BoardProfile") -> tuple[int, int]:
    """(base, per KiB): the CPU cycles transfer_wait (runtime_c/hal_board.c) allows a transfer
    of n bytes, base + n * per_kib / 1024, counted on the core's cycle counter (DWT CYCCNT).
    base: the margin times the longest one-byte transfer, twice (a read across two flash
    packages is two commands); per KiB: the margin times the slowest part's time per KiB."""
    times = []   # (ns of a 1-byte transfer, ns per KiB beyond it)
    for m in profile.flash:
        t = flash_timing_of(m)
        chip = t.capacity
        one = flash_timing.read_time_ns(t, 1, device_size=chip)
        times.append((one, flash_timing.read_time_ns(t, 1 + KiB, device_size=chip) - one))
    if profile.psram:
        t = psram_timing_of(profile.psram)
        for write in (False, True):
            one = psram_timing.transfer_time_ns(t, 1, write, worst_case=True)
            times.append((one, psram_timing.transfer_time_ns(t, 1 + KiB, write, worst_case=True) - one))
    cycles = lambda ns: int(-(-ns * profile.cpu_hz * DMA_TIMEOUT_MARGIN // 1e9))
    return cycles(2 * max(b for b, _ in times)), cycles(max(k for _, k in times))


def dma_timeout_ns(profile: "BoardProfile", length: int) -> float:
    """The bound of dma_timeout_cycles for a transfer of `length` bytes, in ns."""
    base, per_kib = dma_timeout_cycles(profile)
    return (base + length * per_kib // KiB) * 1e9 / profile.cpu_hz


# The STM32H7's CRC unit has no DMA request: the CPU, or a memory-to-memory DMA pass into
# CRC_DR (ST AN4187), feeds it. mcugpt's firmware checks every blob it streams, so on these
# boards each read's bytes take a second DMA pass through the unit after the read.
_CRC_PASS = ("CRC_DR fed by a memory-to-memory DMA (the unit has no DMA request: ST's HAL, AN4187), "
             "4 HCLK per 32-bit word at HCLK {hclk} MHz")
_CRC_ASSUMPTION = ("CRC unit throughput: 4 HCLK per 32-bit word (RM0090's STM32F4 figure; the H7's not found), "
                   "HCLK = CPU clock / 2 as ST's examples run it")
# The Cortex-M7's D-cache: 4-way set-associative, 32-byte lines (Arm's Cortex-M7 TRM; the same
# core configuration table in Microchip's SAM E70 datasheet); both STM32H7 parts here have 32 KB.
# No source we reached gives the cycles of a line fill from the AXI SRAM: the figures are
# assumptions, derived from the bus, and labelled as such.
_FILL_ASSUMPTION = ("D-cache line fill from AXI SRAM: 12 CPU cycles (4 beats of 64 bits at HCLK = CPU/2, plus an "
                    "assumed 4-cycle interconnect latency); a dirty line's write-back 8 cycles; LRU replacement. "
                    "No measured figure was found")
# Bus sharing: the DMA writes the tiles into the DTCM through the M7's AHBS port, and the CRC
# pass reads them back, while the CPU reads the other tile from the same TCM. The TCM is two
# interleaved 32-bit banks; the int8 kernel loads about once every two cycles, so a DMA word
# finds its bank busy about a quarter of the time and then costs the CPU at most one cycle.
_STEAL = 0.25
_STEAL_ASSUMPTION = ("bus sharing: each 32-bit word a DMA moves through the memory the CPU computes from "
                     "(and each word the CRC pass reads back) costs the CPU 0.25 cycles: two interleaved TCM banks, "
                     "the CPU loading about every other cycle, at most one cycle lost per collision. Not measured")
_XSPI_200 = "XSPI at 200 MHz: the clock ST's STM32H7S78-DK templates run both ports at (DS14359's XSPI maximum not reached)"

BOARDS = {b.name: b for b in (
    BoardProfile(
        "sim64",
        "the method's abstract device: a 480 MHz Cortex-M7 with a 64 MiB SRAM map and 512 MiB of "
        "octal NOR flash (four MX66UW1G45G); not a board you can buy",
        buyable=False,
        cpu=Cpu("(abstract)", "Cortex-M7", 480e6, True, "the Cortex-M7 clock of the STM32H743 (DS12110)"),
        sram=(SramRegion("SRAM", 64 * MiB, True, "the mission's 64 MB device (the paper's case study)"),),
        flash=(ExternalMemory("mx66uw1g45g", 4, "octal SPI, four chip selects", 200_000_000,
                              "four packages of the STM32H7S78-DK's part, at its 200 MHz"),
               # the alternative (`run --flash w25q01jv`): the quad SPI NOR most MCU boards carry,
               # where streaming I/O dominates
               ExternalMemory("w25q01jv", 4, "quad SPI, four chip selects", 133_000_000,
                              "four W25Q01JV at their 133 MHz (Fast Read Quad I/O)")),
        psram=None,
        crc=CrcUnit(None, "the abstract device's flash controller checksums what its DMA moves"),
        assumptions=("sim64 is not a real board: its SRAM size is the paper's device, its flash "
                     "four real 1 Gbit parts on one octal bus",
                     "sim64's SRAM is zero-wait and uncached: no D-cache, no TCM")),
    BoardProfile(
        "stm32h7s78-dk",
        "ST STM32H7S78-DK: STM32H7S7L8 Cortex-M7 at 600 MHz, 456 KiB AXI SRAM for the model, "
        "128 MiB MX66UW1G45G octal flash (XSPI2), 32 MiB APS256XXN-OBR x16 PSRAM (XSPI1)",
        buyable=True,
        cpu=Cpu("STM32H7S7L8H6H", "Cortex-M7", 600e6, True,
                "600 MHz: ST's STM32H7S78-DK examples and product page (DS14359 not reached)"),
        sram=(SramRegion("AXI SRAM", 456 * KiB, True, "CMSIS stm32h7s7xx.h: SRAM1-4 at 0x24000000, 128+128+128+72 KB"),
              SramRegion("DTCM", 64 * KiB, False, "CMSIS stm32h7s7xx.h (64 KB default option bytes); HPDMA/GPDMA "
                         "reach it through the M7's AHBS port (ST's example notes)", tcm=True),
              SramRegion("ITCM", 64 * KiB, False, "CMSIS stm32h7s7xx.h", tcm=True, dma=False),
              SramRegion("AHB SRAM", 32 * KiB, False, "CMSIS stm32h7s7xx.h: SRAM1-2, 16 KB each")),
        flash=(ExternalMemory("mx66uw1g45g", 1, "XSPI2", 200_000_000, _XSPI_200),),
        psram=ExternalMemory("aps256xxn-obr", 1, "XSPI1 (16 lines)", 200_000_000, _XSPI_200),
        crc=CrcUnit(300e6, _CRC_PASS.format(hclk=300)),
        dcache=DCache(32 * KiB, 4, 32, 12, 8, "32 KB (ST's STM32H7R/S product text); 4-way, 32-byte lines (Arm)"),
        dma_steal_cycles_per_word=_STEAL,
        assumptions=(_FILL_ASSUMPTION, _STEAL_ASSUMPTION,
                     "XSPI controller maximum clock: 200 MHz (ST's kit templates), DS14359 not reached",
                     _CRC_ASSUMPTION,
                     "the 72 KB SRAM4 counts in the 456 KiB (ECC option bytes at their factory value)")),
    BoardProfile(
        "stm32h735g-dk",
        "ST STM32H735G-DK: STM32H735IG Cortex-M7 at 550 MHz, 320 KiB AXI SRAM for the model, "
        "64 MiB MX25LM51245G octal flash (OCTOSPI1), 16 MiB S70KL1281 HyperRAM (OCTOSPI2)",
        buyable=True,
        cpu=Cpu("STM32H735IGK6", "Cortex-M7", 550e6, True,
                "550 MHz: Zephyr's stm32h735g_disco.dts and ST's H723/733 feature list (DS13315 not reached)"),
        sram=(SramRegion("AXI SRAM", 320 * KiB, True, "CMSIS stm32h735xx.h: SRAM1+2 at 0x24000000, 128+192 KB"),
              SramRegion("DTCM", 128 * KiB, False, "CMSIS stm32h735xx.h; the MDMA reaches it through the M7's "
                         "AHBS port", tcm=True),
              SramRegion("ITCM", 64 * KiB, False, "CMSIS stm32h735xx.h", tcm=True, dma=False),
              SramRegion("AHB SRAM", 48 * KiB, False, "CMSIS stm32h735xx.h: SRAM1, SRAM2, SRAM4")),
        flash=(ExternalMemory("mx25lm51245g", 1, "OCTOSPI1", 100_000_000,
                              "100 MHz: ST's STM32H735G-DK BSP (stm32h735g_discovery_ospi.c); the part allows 133"),),
        psram=ExternalMemory("s70kl1281", 1, "OCTOSPI2", 100_000_000,
                             "100 MHz: ST's BSP, and the part's maximum at 3.0 V"),
        crc=CrcUnit(275e6, _CRC_PASS.format(hclk=275)),
        dcache=DCache(32 * KiB, 4, 32, 12, 8, "32 KB (ST's STM32H723/733/735 product text); 4-way, 32-byte lines (Arm)"),
        dma_steal_cycles_per_word=_STEAL,
        assumptions=(_FILL_ASSUMPTION, _STEAL_ASSUMPTION,
                     "the MDMA writes the DTCM through the AHBS port (RM0468's bus matrix not reached)",
                     "OCTOSPI clocks: 100 MHz as ST's BSP runs them (DS13315's maximum not reached)",
                     _CRC_ASSUMPTION)),
)}
DEFAULT_BOARD = "sim64"


def get_board(name: str) -> BoardProfile:
    try:
        return BOARDS[name]
    except KeyError:
        raise McugptError(f"unknown board '{name}' (known: {', '.join(BOARDS)})") from None
