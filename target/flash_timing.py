"""Timing presets for the simulated SPI NOR flash: the single source of truth.

Every number the flash model (``emulator/spi_flash.py``) or the I/O planner uses
lives in ``PRESETS`` below, each with the datasheet line it came from.
docs/flash_timing.md has the same table in prose and says which figures were
checked against public sources and which are recalled from the datasheet.

Units: sizes in bytes, clocks in Hz, times in nanoseconds (float).

How a command is costed
-----------------------
A command is clocked out as phases: command, address, mode ("alternate")
clocks, dummy clocks, data. Each phase has its own lane count and rate (SDR:
one bit per lane per clock; DTR: two). A phase of N bytes on L lanes takes
ceil(8 * N / (L * (2 if DTR else 1))) clocks. The command's bus time is the
sum of its phases' clocks divided by the frame's clock frequency. After every
command chip select must stay high for the deselect time (tSHSL) before the
next command may start; the model charges it to the command that came first.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

KiB = 1024
MiB = 1024 * KiB

# A 24-bit address reaches 16 MiB. Bigger parts use 4-byte address opcodes
# (W25Q256JV and up: 13h/0Ch/ECh/12h/21h/DCh), one more address byte per
# command and otherwise the same frame shape.
THREE_BYTE_ADDRESS_LIMIT = 16 * MiB


@dataclass(frozen=True)
class Frame:
    """The wire shape of one kind of command: lanes and rate of each phase.

    ``mode_clocks`` and ``dummy_clocks`` are counted in clocks, as datasheets
    give them, not in bytes.
    """

    clock_hz: int
    cmd_bytes: int = 1
    cmd_lanes: int = 1
    cmd_dtr: bool = False
    addr_lanes: int = 1
    addr_dtr: bool = False
    mode_clocks: int = 0
    dummy_clocks: int = 0
    data_lanes: int = 1
    data_dtr: bool = False


def phase_clocks(nbytes: int, lanes: int, dtr: bool) -> int:
    """Clocks to move ``nbytes`` over ``lanes`` lines; a partial clock costs a whole one."""
    bits_per_clock = lanes * (2 if dtr else 1)
    return -(-8 * nbytes // bits_per_clock)


def frame_clocks(frame: Frame, addr_bytes: int, data_bytes: int) -> int:
    """Clocks for one command of this frame: command + address + mode + dummy + data."""
    return (
        phase_clocks(frame.cmd_bytes, frame.cmd_lanes, frame.cmd_dtr)
        + phase_clocks(addr_bytes, frame.addr_lanes, frame.addr_dtr)
        + frame.mode_clocks
        + frame.dummy_clocks
        + phase_clocks(data_bytes, frame.data_lanes, frame.data_dtr)
    )


def frame_ns(frame: Frame, addr_bytes: int, data_bytes: int) -> float:
    """Bus time of one command in ns, without the deselect time that follows it."""
    return frame_clocks(frame, addr_bytes, data_bytes) * 1e9 / frame.clock_hz


@dataclass(frozen=True)
class FlashTiming:
    """One flash part: geometry, identity, command frames and program/erase times."""

    name: str
    part: str
    jedec_id: bytes  # manufacturer, memory type, capacity code (9Fh)
    capacity: int  # bytes in one package of the part (a board may wire several: target/boards.py)
    min_address_bytes: int  # 3, or 4 for parts that only speak 4-byte addresses
    page_size: int
    sector_size: int  # smallest erase unit
    block_size: int  # large erase unit
    # Read commands by mode name ("quad", "fast", ...). hash=False: a dict
    # cannot be hashed, and nothing needs to hash a preset.
    read_modes: dict[str, Frame] = field(hash=False)
    default_read_mode: str
    command_frame: Frame  # write enable/disable, page program, erases
    status_frame: Frame  # read status (05h) and read JEDEC id (9Fh)
    status_addr_bytes: int  # address bytes those register reads carry (0 in SPI)
    page_program_ns: float  # typical tPP; what the model waits
    page_program_max_ns: float
    sector_erase_ns: float  # typical tSE
    sector_erase_max_ns: float
    block_erase_ns: float  # typical tBE (64 KiB)
    block_erase_max_ns: float
    deselect_ns: float  # tSHSL after a read or register read
    deselect_after_write_ns: float  # tSHSL after a command that writes
    # Figures the datasheet (or the material we could reach) does not give: what we assumed
    # instead. Reported with the board (mcugpt fit/run --json) and in docs/flash_timing.md.
    assumptions: tuple[str, ...] = ()


def address_bytes(timing: FlashTiming, device_size: int) -> int:
    """Address width in bytes for a device of ``device_size`` bytes."""
    if device_size > THREE_BYTE_ADDRESS_LIMIT:
        return 4
    return timing.min_address_bytes


_W25Q_CLOCK_HZ = 133_000_000  # W25Q128JV: fR, all instructions except 03h
_W25Q_READ_03H_CLOCK_HZ = 50_000_000  # W25Q128JV: fR for Read Data 03h
_MX_OCTAL_CLOCK_HZ = 200_000_000  # MX25UM51245G: 8D-8D-8D max clock

W25Q_QUAD = FlashTiming(
    name="w25q-quad",
    part="Winbond W25Q128JV-class quad SPI NOR (4-byte addressing above 16 MiB)",
    # Datasheet "Manufacturer and Device Identification": EFh, 40h, 18h for
    # W25Q128JV-IQ/JQ (the -IM/JM variants report 70h 18h). Also Linux
    # spi-nor and many drivers use 0xEF4018 for W25Q128JV.
    jedec_id=bytes([0xEF, 0x40, 0x18]),
    capacity=16 * MiB,  # 128 Mbit
    min_address_bytes=3,
    page_size=256,  # datasheet: 65,536 pages of 256 bytes
    sector_size=4 * KiB,  # Sector Erase 20h
    block_size=64 * KiB,  # 64 KB Block Erase D8h
    read_modes={
        # Fast Read Quad I/O EBh (1-4-4): 8 command clocks on IO0, address on
        # 4 lines, M7-0 mode byte (2 clocks on 4 lines), 4 dummy clocks, data
        # on 4 lines: 2 clocks per byte.
        "quad": Frame(
            clock_hz=_W25Q_CLOCK_HZ,
            addr_lanes=4,
            mode_clocks=2,
            dummy_clocks=4,
            data_lanes=4,
        ),
        # Fast Read 0Bh (1-1-1): 8 dummy clocks after the address.
        "fast": Frame(clock_hz=_W25Q_CLOCK_HZ, dummy_clocks=8),
        # Read Data 03h (1-1-1): no dummy clocks, but limited to 50 MHz.
        "single": Frame(clock_hz=_W25Q_READ_03H_CLOCK_HZ),
    },
    default_read_mode="quad",
    # Write Enable 06h, Write Disable 04h, Page Program 02h, Sector Erase 20h,
    # Block Erase D8h: all plain 1-1-1 SPI. (Quad Page Program 32h exists; the
    # 0.4 ms tPP dwarfs the ~15 us of 1-1-1 data transfer, so we keep 02h.)
    command_frame=Frame(clock_hz=_W25Q_CLOCK_HZ),
    # Read Status Register-1 05h, JEDEC ID 9Fh: command then data, 1-1-1.
    status_frame=Frame(clock_hz=_W25Q_CLOCK_HZ),
    status_addr_bytes=0,
    # AC Electrical Characteristics: tPP 0.4 ms typ / 3 ms max; tSE (4 KB)
    # 45 ms typ / 400 ms max; tBE2 (64 KB) 150 ms typ / 2000 ms max.
    page_program_ns=0.4e6,
    page_program_max_ns=3e6,
    sector_erase_ns=45e6,
    sector_erase_max_ns=400e6,
    block_erase_ns=150e6,
    block_erase_max_ns=2000e6,
    # tSHSL1 /CS deselect time (array read -> array read) 10 ns min;
    # tSHSL2 (erase/program/write status -> read status) 50 ns min.
    deselect_ns=10.0,
    deselect_after_write_ns=50.0,
)

_OCTAL_DTR = Frame(
    # 8D-8D-8D: every phase on 8 lines, both clock edges. Macronix OPI opcodes
    # are 2 bytes (the opcode then its complement, e.g. 8DTRD EEh 11h), so the
    # command phase is 1 clock; a 4-byte address is 2 clocks.
    clock_hz=_MX_OCTAL_CLOCK_HZ,
    cmd_bytes=2,
    cmd_lanes=8,
    cmd_dtr=True,
    addr_lanes=8,
    addr_dtr=True,
    data_lanes=8,
    data_dtr=True,
)

MX_OCTAL_DTR = FlashTiming(
    name="octal-dtr",
    part="Macronix MX25UM51245G-class octal DTR NOR (8D-8D-8D, 200 MHz)",
    # C2h 80h 3Ah: Macronix's own Linux patch and its nor_ops driver list
    # mx25um51245g as 0xC2803A (some BSPs say 0xC2813A, which Linux assigns
    # to the MX25UW51245G).
    jedec_id=bytes([0xC2, 0x80, 0x3A]),
    capacity=64 * MiB,  # 512 Mbit
    min_address_bytes=4,  # OPI commands always carry a 4-byte address
    page_size=256,
    sector_size=4 * KiB,
    block_size=64 * KiB,
    read_modes={
        # 8DTRD (EEh/11h): dummy cycles set by CR2 0x300 DC[2:0]; the default
        # DC=000 is 20 cycles, the setting for the full 200 MHz (ST BSP
        # MX25UM51245G_CR2_DC_20_CYCLES; Linux/U-Boot octal DTR enablement uses
        # 20 dummy cycles at 200 MHz). Data: 2 bytes per clock -> 400 MB/s.
        "octal": replace(_OCTAL_DTR, dummy_clocks=20),
    },
    default_read_mode="octal",
    # WREN 06F9h, WRDI 04FBh, PP 12EDh, SE 21DEh, BE DC23h, all 8D-8D-8D.
    command_frame=_OCTAL_DTR,
    # In OPI, RDSR (05FAh) and RDID (9F60h) carry a 4-byte address and 4
    # dummy cycles (unlike SPI mode, where they take neither).
    status_frame=replace(_OCTAL_DTR, dummy_clocks=4),
    status_addr_bytes=4,
    # Max values: Macronix nor_ops driver table for mx25um51245g (tPP 1500 us,
    # tSE 120 ms, tBE 650 ms); ST's BSP uses looser 400 ms / 1000 ms erase
    # timeouts. Typical values are recalled from the datasheet's "Erase and
    # Programming Performance" table and were NOT verified (see the doc).
    page_program_ns=0.15e6,
    page_program_max_ns=1.5e6,
    sector_erase_ns=25e6,
    sector_erase_max_ns=120e6,
    block_erase_ns=220e6,
    block_erase_max_ns=650e6,
    # Not verified for this part: assumed equal to the Winbond tSHSL1/tSHSL2.
    deselect_ns=10.0,
    deselect_after_write_ns=50.0,
)

# The same quad part clocked at 80 MHz, as ESP32-S3 modules run their QIO flash (ESP-IDF
# CONFIG_ESPTOOLPY_FLASHFREQ_80M; the MCU's SPI0/1 tops out at 80 MHz in SDR): ~40 MB/s.
_W25Q_80_HZ = 80_000_000
W25Q_QUAD_80 = replace(
    W25Q_QUAD,
    name="w25q-quad-80",
    part="Winbond W25Q128JV-class quad SPI NOR at 80 MHz (ESP32-S3 QIO flash clock)",
    read_modes={mode: replace(frame, clock_hz=min(frame.clock_hz, _W25Q_80_HZ))
                for mode, frame in W25Q_QUAD.read_modes.items()},
    command_frame=replace(W25Q_QUAD.command_frame, clock_hz=_W25Q_80_HZ),
    status_frame=replace(W25Q_QUAD.status_frame, clock_hz=_W25Q_80_HZ),
)

# --- the parts on the real boards (target/boards.py; sources in docs/boards.md) ----------

# Macronix MX66UW1G45G, 1 Gbit 1.8 V octal NOR: the STM32H7S78-DK's flash (XSPI2). Read in
# 8D-8D-8D (8DTRD EE11h) with 20 dummy clocks, the reset default of CR2 DC and the setting
# for 200 MHz (ST's DK BSP table: 20 -> 200 MHz ... 6 -> 66 MHz). JEDEC ID C2 81 3B
# (Macronix's ID table; Linux spi-nor). Always 4-byte addresses in OPI.
MX66UW1G45G = replace(
    MX_OCTAL_DTR,
    name="mx66uw1g45g",
    part="Macronix MX66UW1G45G 1 Gbit octal NOR (8D-8D-8D, 200 MHz, 20 dummy clocks)",
    jedec_id=bytes([0xC2, 0x81, 0x3B]),
    capacity=128 * MiB,
    # ST's driver timeouts (mx66uw1g45g.h): 4 KB erase 400 ms, 64 KB erase 1 s
    sector_erase_max_ns=400e6,
    block_erase_max_ns=1000e6,
    assumptions=(
        "MX66UW1G45G page-program and typical erase times: the datasheet's table was not "
        "reached; 0.15 ms / 25 ms / 220 ms typical (maxima: ST's driver timeouts)",
        "MX66UW1G45G deselect time tSHSL: not found; 10 ns (2 XSPI clocks at 200 MHz, ST's BSP)",
    ),
)

# Macronix MX25LM51245G, 512 Mbit 3 V octal NOR: the STM32H735G-DK's flash (OCTOSPI1). The
# 3 V "LM" part runs at most 133 MHz (datasheet v1.1 key features, quoted in Zephyr issue
# #63770), not the 200 MHz of the 1.8 V UM/UW parts. 8DTRD EE11h with 20 dummy clocks (the
# CR2 default; ST's m2_mx25lm51245g.h). JEDEC ID C2 85 3A (ST's driver).
MX25LM51245G = replace(
    MX_OCTAL_DTR,
    name="mx25lm51245g",
    part="Macronix MX25LM51245G 512 Mbit 3 V octal NOR (8D-8D-8D, 133 MHz, 20 dummy clocks)",
    jedec_id=bytes([0xC2, 0x85, 0x3A]),
    capacity=64 * MiB,
    read_modes={"octal": replace(_OCTAL_DTR, clock_hz=133_000_000, dummy_clocks=20)},
    command_frame=replace(_OCTAL_DTR, clock_hz=133_000_000),
    status_frame=replace(_OCTAL_DTR, clock_hz=133_000_000, dummy_clocks=4),
    sector_erase_max_ns=400e6,   # "Max 400ms in spec" (ST's m2_mx25lm51245g.h)
    block_erase_max_ns=1000e6,
    assumptions=(
        "MX25LM51245G dummy clocks below 133 MHz: the part's table was not reached; the "
        "reset default (20) is used at any clock",
        "MX25LM51245G page-program and typical erase times, tSHSL: not reached; as the MX66UW1G45G",
    ),
)

# Winbond W25Q01JV: 1 Gbit quad SPI NOR, two 512 Mbit dies behind one chip select with
# linear addressing (datasheet W25Q01JV-DTR rev. B1/D, "General Descriptions"). JEDEC ID
# EF 40 21 (Linux spi-nor's w25q01jv). Read with Fast Read Quad I/O (EBh) at 133 MHz, the
# W25Q family's frame; sim64's quad alternative is four of them on one quad bus.
W25Q01JV = replace(
    W25Q_QUAD,
    name="w25q01jv",
    part="Winbond W25Q01JV 1 Gbit quad SPI NOR (two 512 Mbit dies; Fast Read Quad I/O EBh, 133 MHz)",
    jedec_id=bytes([0xEF, 0x40, 0x21]),
    capacity=128 * MiB,
    min_address_bytes=4,   # 128 MiB: past the 3-byte address range
    assumptions=(
        "W25Q01JV read frame (EBh: 2 mode clocks, 4 dummy clocks at 133 MHz), program and erase times "
        "and tSHSL: the W25Q128JV's (the W25Q01JV datasheet's AC table was not reached)",
    ),
)

PRESETS: dict[str, FlashTiming] = {t.name: t for t in (W25Q_QUAD, MX_OCTAL_DTR, W25Q_QUAD_80, MX66UW1G45G,
                                                      MX25LM51245G, W25Q01JV)}
DEFAULT_PRESET = "w25q-quad"


def get_preset(preset: str | FlashTiming) -> FlashTiming:
    """Resolve a preset name (or pass a FlashTiming through)."""
    if isinstance(preset, FlashTiming):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise KeyError(f"unknown flash preset {preset!r}; known: {sorted(PRESETS)}") from None


def read_mode_frame(timing: FlashTiming, mode: str | None) -> tuple[str, Frame]:
    """The (name, frame) of a read mode; ``None`` means the preset's fastest."""
    name = timing.default_read_mode if mode is None else mode
    try:
        return name, timing.read_modes[name]
    except KeyError:
        raise ValueError(
            f"read mode {name!r} is not supported by preset {timing.name!r}; "
            f"supported: {sorted(timing.read_modes)}"
        ) from None


def read_time_ns(
    preset: str | FlashTiming,
    length: int,
    mode: str | None = None,
    *,
    device_size: int | None = None,
) -> float:
    """Time in ns of one read command of ``length`` bytes, deselect time included.

    This is what the flash model charges for ``SpiNorFlash.read`` and what the
    planner uses to predict I/O time. ``device_size`` picks the address width
    (3 bytes up to 16 MiB, else 4); it defaults to the reference part's size.
    """
    timing = get_preset(preset)
    _, frame = read_mode_frame(timing, mode)
    size = timing.capacity if device_size is None else device_size
    return frame_ns(frame, address_bytes(timing, size), length) + timing.deselect_ns


def at_clock(timing: FlashTiming, clock_hz: float) -> FlashTiming:
    """The part as a board runs it: no frame faster than `clock_hz` (the controller's or the
    board's limit). The dummy clocks stay the part's setting for its full speed, which a
    slower clock could shorten: an upper bound on the time, never an optimistic one."""
    cap = lambda f: replace(f, clock_hz=min(f.clock_hz, int(clock_hz)))
    return replace(timing, read_modes={m: cap(f) for m, f in timing.read_modes.items()},
                   command_frame=cap(timing.command_frame), status_frame=cap(timing.status_frame))
