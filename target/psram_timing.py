"""Timing presets for the simulated external PSRAM: the single source of truth.

Every number the PSRAM model (``emulator/psram.py``) or an I/O planner uses
lives in ``PRESETS`` below, each with the datasheet line or driver source it
came from. docs/psram_timing.md has the same table in prose and says which
figures were checked against public sources and which are recalled.

Units: sizes in bytes, clocks in Hz, times in nanoseconds (float; the tCEM
limit is an int so the clock budget is exact integer arithmetic).

How a transfer is costed
------------------------
PSRAM is DRAM: chip select (CE#) may stay low for at most tCEM, or the part's
self-refresh is starved and data is lost. So the controller cuts a transfer
into bursts, and every burst is a complete command:

    command + address + latency + data          (CE# low, must be <= tCEM)
    then CE# high for tCPH before the next burst

Phases are costed exactly as for the SPI flash (``flash_timing.Frame``): a
phase of N bytes on L lanes takes ceil(8 * N / (L * (2 if DTR else 1)))
clocks; the latency is a number of clocks (``Frame.dummy_clocks``).

Where a burst may end:

* tCEM: the whole burst (all its clocks) must fit in ``max_ce_low_ns``;
* pages: ``page_crossings_per_burst`` says how many page (row) boundaries one
  burst may run across: 0 means every burst stops at the end of its page and
  the next one starts with a new command; 1 means a linear burst may cross
  one boundary (APS6404L datasheet: "it can cross page boundary one time only
  in a burst") at no extra cost.

The split is greedy from the start address: each burst takes as many bytes as
the remaining length, tCEM and the page rule allow. The time of a transfer is
the sum of its bursts' clocks over the clock frequency plus one tCPH per burst
(charged to the burst that precedes it, as the flash model charges tSHSL).

Reads have two latencies: the typical one (variable-latency mode, no refresh
collision) and ``read_latency_max_clocks`` (a refresh collision, or the part
set to fixed latency, which always waits that long). The model charges the
typical one unless asked for the worst case. Writes have one fixed latency.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from target.flash_timing import Frame, frame_clocks

KiB = 1024
MiB = 1024 * KiB

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class PsramTiming:
    """One PSRAM part as wired: geometry, command frames, latencies, CE# limits.

    ``read_frame.dummy_clocks`` is the typical read latency,
    ``write_frame.dummy_clocks`` the write latency, both in clocks.
    """

    name: str
    part: str
    capacity: int  # bytes in one package of the part
    address_bytes: int  # bytes of address every array command carries
    page_size: int  # row (page) size: the unit of the page rule
    page_crossings_per_burst: int  # page boundaries one burst may cross (0: split at each one)
    read_frame: Frame  # read command, latency = typical read latency
    write_frame: Frame  # write command, latency = write latency
    read_latency_max_clocks: int  # worst-case read latency (refresh collision / fixed latency)
    max_ce_low_ns: int  # tCEM: longest CE# low time of one burst
    ce_high_ns: float  # tCPH: CE# high time between bursts
    # Figures the material we could reach does not give, and what we assumed instead.
    assumptions: tuple[str, ...] = ()

    def __post_init__(self):
        r, w = self.read_frame, self.write_frame
        if (r.clock_hz, r.data_lanes, r.data_dtr) != (w.clock_hz, w.data_lanes, w.data_dtr):
            raise ValueError(f"preset {self.name!r}: read and write frames must share clock and data width")

    @property
    def clock_hz(self) -> int:
        return self.read_frame.clock_hz

    @property
    def data_bits_per_clock(self) -> int:
        f = self.read_frame
        return f.data_lanes * (2 if f.data_dtr else 1)

    @property
    def peak_bytes_per_s(self) -> float:
        """Data-phase rate: what a transfer would reach with no command, latency or tCPH."""
        return self.clock_hz * self.data_bits_per_clock / 8


# --- octal-psram-200: APMemory APS6408L-class octal DDR PSRAM -------------------------

_APS6408L_CLOCK_HZ = 200_000_000  # APS6408L-OBMx: octal DDR, 200 MHz max (TI SDAA565)

# Read "Linear Burst Read" 20h / write "Linear Burst Write" A0h, as ST's BSP
# (aps6408.c) and Zephyr's NXP FlexSPI driver issue them:
#   command: 8 bits on 8 lines, SDR -> 1 clock (ST: INSTRUCTION_8_LINES,
#            8_BITS, DTR disabled; Zephyr: kFLEXSPI_Command_SDR, 8PAD; the
#            ESP32-S3 driver sends the opcode twice as 16 bits DTR: also 1 clock)
#   address: 32 bits on 8 lines, DDR -> 2 clocks (ST: ADDRESS_32_BITS, DTR
#            enabled; Zephyr: RADDR_DDR 0x20)
#   latency: read latency code / write latency code clocks (below)
#   data:    8 lines DDR -> 2 bytes per clock -> 400 MB/s at 200 MHz
_APS6408L_FRAME = Frame(
    clock_hz=_APS6408L_CLOCK_HZ,
    cmd_bytes=1,
    cmd_lanes=8,
    cmd_dtr=False,
    addr_lanes=8,
    addr_dtr=True,
    data_lanes=8,
    data_dtr=True,
)

OCTAL_PSRAM_200 = PsramTiming(
    name="octal-psram-200",
    part="APMemory APS6408L-class 64 Mbit octal DDR PSRAM (OPI, STM32 OCTOSPI), 200 MHz",
    capacity=8 * MiB,  # 64 Mbit (ST BSP APS6408_RAM_SIZE 0x800000)
    address_bytes=4,
    # 1 KiB rows (TI SDAA565: "supports 1KB linear burst wraps"). MODEL CHOICE:
    # the controller ends every burst at a row boundary and re-issues the
    # command (STM32 OCTOSPI CSBOUND = 1 KiB; AN5050: "the chip select must go
    # high when crossing the page boundary"). The part's alternative, MR8 RBX
    # (row-boundary-crossing reads), stalls mid-burst instead (tRBXwait, not
    # verified); at 200 MHz the two cost about the same (see the doc).
    page_size=1 * KiB,
    page_crossings_per_burst=0,
    # Read latency code for 200 MHz: MR0[4:2] = 100b = 7 clocks (Zephyr
    # APS_6408L_RLC_200 0x10; ST BSP APS6408_MR0_RLC_7 0x10 and
    # APS6408_READ_LATENCY(): code + 3). Variable latency mode (Zephyr
    # APS_6408L_RLT_VARIABLE): 7 clocks unless a refresh collides.
    read_frame=replace(_APS6408L_FRAME, dummy_clocks=7),
    # Write latency code for 200 MHz: MR4[7:5] = WLC 7 clocks (Zephyr
    # APS_6408L_WLC_200 0x20 = ST APS6408_MR4_WLC_7). Writes do not double
    # (ST's APS6408_WRITE_LATENCY() has no latency-type term).
    write_frame=replace(_APS6408L_FRAME, dummy_clocks=7),
    # Refresh collision in variable mode, or fixed latency mode: 2 x 7 clocks
    # (ST BSP APS6408_READ_LATENCY(): fixed type -> (code + 3) * 2).
    read_latency_max_clocks=14,
    # tCEM 4 us (standard temperature grade). NOT verified: recalled from the
    # APS6408L datasheet AC table (and given in the brief).
    max_ce_low_ns=4_000,
    # tCPH: NOT verified for APS6408L. 15 ns is the figure a third-party note
    # quotes for the sibling APS512XXN-OBR octal part; 3 clocks at 200 MHz.
    ce_high_ns=15.0,
)

# --- quad-psram-80: ESP-PSRAM64H / APS6404L-class quad SPI PSRAM ---------------------

_APS6404L_CLOCK_HZ = 80_000_000  # ESP32-S3 PSRAM clock; APS6404L linear burst max is 84 MHz

# QPI mode (4-4-4), as ESP-IDF runs it on the ESP32-S3 (psram_enable_qio_mode
# 35h, then cache commands in QIO). APS6404L datasheet Figures 14 and 15:
#   command: 8 bits on 4 lines -> 2 clocks; address: 24 bits on 4 lines -> 6
#   clocks; data: 4 lines SDR -> 2 clocks per byte (40 MB/s at 80 MHz).
_APS6404L_QPI_FRAME = Frame(
    clock_hz=_APS6404L_CLOCK_HZ,
    cmd_bytes=1,
    cmd_lanes=4,
    addr_lanes=4,
    data_lanes=4,
)

QUAD_PSRAM_80 = PsramTiming(
    name="quad-psram-80",
    part="ESP-PSRAM64H / APMemory APS6404L-class 64 Mbit quad SPI PSRAM (QPI), 80 MHz",
    capacity=8 * MiB,  # 64 Mbit, A[22:0] (datasheet "Addressable Bit Range")
    address_bytes=3,  # 24-bit address (datasheet Figures 14/15; ESP-IDF ADDR_BITLEN 23 = 24 bits)
    # "Page size is 1K (CA[9:0]). Default burst setting is Linear Bursting that
    # crosses page boundary [...] can cross page boundary one time only in a
    # burst" (datasheet 8.2), invisibly to the controller, at <= 84 MHz.
    page_size=1 * KiB,
    page_crossings_per_burst=1,
    # Fast Quad Read EBh in QPI: 6 wait cycles (datasheet 8.5 table and Figure
    # 14; ESP-IDF PSRAM_FAST_READ_QUAD_DUMMY 6).
    read_frame=replace(_APS6404L_QPI_FRAME, dummy_clocks=6),
    # Quad Write 38h in QPI (same as 02h): no wait cycles (8.5 table, Figure 15).
    write_frame=_APS6404L_QPI_FRAME,
    # No variable latency: refresh is self-managed and hidden (datasheet 2).
    read_latency_max_clocks=6,
    # Table 10: tCEM CE# low pulse width max 8 us standard grade (4 us extended).
    max_ce_low_ns=8_000,
    # Table 10: tCPH CE# high between subsequent burst operations min 18 ns.
    ce_high_ns=18.0,
)

# --- aps256xxn-obr: the STM32H7S78-DK's PSRAM (XSPI1), x16 -------------------------------

# AP Memory APS256XXN-OBR, 256 Mbit, x16 DDR at 200 MHz: 4 bytes per clock (datasheet p.1:
# "two words per clock"). Commands as ST's aps256xx driver issues them: 20h linear burst
# read / A0h write, the command 8 bits on 8 lines SDR (1 clock), the address 32 bits on 8
# lines DDR (2 clocks), data on 16 lines DDR.
_APS256_FRAME = Frame(
    clock_hz=200_000_000,
    cmd_bytes=1,
    cmd_lanes=8,
    cmd_dtr=False,
    addr_lanes=8,
    addr_dtr=True,
    data_lanes=16,
    data_dtr=True,
)

APS256XXN_OBR = PsramTiming(
    name="aps256xxn-obr",
    part="AP Memory APS256XXN-OBR 256 Mbit x16 DDR PSRAM (XSPI, 200 MHz, fixed latency)",
    capacity=32 * MiB,   # ST's aps256xx.h APS256XX_RAM_SIZE 0x2000000
    address_bytes=4,
    # x16: 1024 words = 2 KiB per row; bursts end at the row (Zephyr's DK config: st,csbound 11)
    page_size=2 * KiB,
    page_crossings_per_burst=0,
    # Read latency code 7 for 200 MHz (ST's DK BSP table), run in FIXED latency mode as
    # Zephyr and ST configure the kit: 2 x 7 = 14 clocks on every read.
    read_frame=replace(_APS256_FRAME, dummy_clocks=14),
    write_frame=replace(_APS256_FRAME, dummy_clocks=7),   # write latency code 7 (never doubled)
    read_latency_max_clocks=14,
    # tCEM: "tCEM = 2 us max" (ST's DK BSP comment); at 200 MHz it ends a burst at ~1.5 KiB,
    # before the 2 KiB row.
    max_ce_low_ns=2_000,
    ce_high_ns=24.0,   # tCPH 24 ns min (ST's DK BSP comment; it programs 5 clocks)
    assumptions=(
        "APS256XXN-OBR tCEM 2 us and tCPH 24 ns: from ST's kit BSP comments; the datasheet's "
        "AC table was not reached",
    ),
)

# --- s70kl1281: the STM32H735G-DK's HyperRAM (OCTOSPI2) -----------------------------------

# Infineon (Cypress) S70KL1281, 128 Mbit HyperRAM (two 64 Mbit dies), 3 V: HyperBus x8 DDR,
# at most 100 MHz at 3.0 V (datasheet 001-97964 p.1). A command is a 48-bit command/address
# on 8 lines DDR (3 clocks) with no separate opcode, then the initial latency: 6 clocks,
# doubled in FIXED latency mode as ST's H735G-DK BSP runs it (12 clocks, reads and writes).
_S70KL_FRAME = Frame(
    clock_hz=100_000_000,
    cmd_bytes=0,
    addr_lanes=8,
    addr_dtr=True,
    data_lanes=8,
    data_dtr=True,
)

S70KL1281 = PsramTiming(
    name="s70kl1281",
    part="Infineon S70KL1281 128 Mbit HyperRAM (x8 DDR, 100 MHz, fixed latency 2 x 6)",
    capacity=16 * MiB,
    address_bytes=6,   # the 48-bit command/address word
    # Linear bursts may not cross the 8 MiB die boundary (ST's BSP ChipSelectBoundary 23)
    page_size=8 * MiB,
    page_crossings_per_burst=0,
    read_frame=replace(_S70KL_FRAME, dummy_clocks=12),
    write_frame=replace(_S70KL_FRAME, dummy_clocks=12),
    read_latency_max_clocks=12,
    max_ce_low_ns=4_000,   # tCSM 4 us (ST's BSP: Refresh = 400 clocks "4us @100MHz")
    ce_high_ns=40.0,       # tRWR read-write recovery (ST's config comment: "40ns")
    assumptions=(
        "S70KL1281 command/address phase 3 clocks (the HyperBus 48-bit CA word): not read in "
        "the datasheet",
        "S70KL1281 tRWR 40 ns and tCSM 4 us: from ST's BSP comments",
    ),
)

PRESETS: dict[str, PsramTiming] = {t.name: t for t in (OCTAL_PSRAM_200, QUAD_PSRAM_80, APS256XXN_OBR, S70KL1281)}
DEFAULT_PRESET = "octal-psram-200"


def get_preset(preset: str | PsramTiming) -> PsramTiming:
    """Resolve a preset name (or pass a PsramTiming through)."""
    if isinstance(preset, PsramTiming):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise KeyError(f"unknown PSRAM preset {preset!r}; known: {sorted(PRESETS)}") from None


def command_frame(timing: PsramTiming, write: bool, worst_case: bool = False) -> Frame:
    """The frame of one burst in this direction; ``worst_case`` takes the longest read latency."""
    if write:
        return timing.write_frame
    if worst_case:
        return replace(timing.read_frame, dummy_clocks=timing.read_latency_max_clocks)
    return timing.read_frame


def overhead_clocks(timing: PsramTiming, write: bool, worst_case: bool = False) -> int:
    """Clocks of one burst before its first data byte: command + address + latency."""
    return frame_clocks(command_frame(timing, write, worst_case), timing.address_bytes, 0)


def max_burst_bytes(timing: PsramTiming, write: bool, worst_case: bool = False) -> int:
    """Most data bytes one burst can carry within tCEM (the page rule aside)."""
    budget = timing.max_ce_low_ns * timing.clock_hz // NS_PER_S  # whole clocks in tCEM
    data_clocks = budget - overhead_clocks(timing, write, worst_case)
    nbytes = data_clocks * timing.data_bits_per_clock // 8
    if nbytes <= 0:
        raise ValueError(f"preset {timing.name!r}: tCEM leaves no room for data in a burst")
    return nbytes


def split_bursts(
    preset: str | PsramTiming,
    length: int,
    write: bool,
    addr: int = 0,
    *,
    worst_case: bool = False,
) -> list[tuple[int, int]]:
    """The (address, length) of each burst a transfer is cut into (see the module doc)."""
    timing = get_preset(preset)
    if length < 0 or addr < 0:
        raise ValueError(f"negative address or length (address {addr}, length {length})")
    cap = max_burst_bytes(timing, write, worst_case)
    reach = (timing.page_crossings_per_burst + 1) * timing.page_size
    bursts = []
    end = addr + length
    while addr < end:
        n = min(end - addr, cap, reach - addr % timing.page_size)
        bursts.append((addr, n))
        addr += n
    return bursts


def transfer_time_ns(
    preset: str | PsramTiming,
    length: int,
    write: bool,
    addr: int = 0,
    *,
    worst_case: bool = False,
) -> float:
    """Time in ns of a transfer of ``length`` bytes at ``addr``, tCPH after each burst included.

    This is what ``Psram.read``/``Psram.write`` charge and what a planner
    should use to predict KV-cache traffic. ``addr`` matters only through the
    page rule. A zero-length transfer issues no command and takes 0 ns.
    """
    timing = get_preset(preset)
    bursts = split_bursts(timing, length, write, addr, worst_case=worst_case)
    frame = command_frame(timing, write, worst_case)
    clocks = sum(frame_clocks(frame, timing.address_bytes, n) for _, n in bursts)
    return clocks * 1e9 / timing.clock_hz + len(bursts) * timing.ce_high_ns


def at_clock(timing: PsramTiming, clock_hz: float) -> PsramTiming:
    """The part as a board runs it: its frames no faster than `clock_hz`. The latency clocks
    stay the part's setting for its full speed (an upper bound on the time)."""
    cap = lambda f: replace(f, clock_hz=min(f.clock_hz, int(clock_hz)))
    return replace(timing, read_frame=cap(timing.read_frame), write_frame=cap(timing.write_frame))
