"""Board profiles: the single table of what each target board has.

The planner reads a board's SRAM and PSRAM sizes; the emulated board maps exactly that SRAM,
attaches the named flash and PSRAM models, and times compute at the board's clock: counted
instructions x `cpi` cycles per instruction / `cpu_hz`. Sources for every figure:
docs/boards.md, and for the CPI docs/board.md ("Cycles per instruction").
"""

from dataclasses import asdict, dataclass

from .errors import McugptError

KiB, MiB = 1 << 10, 1 << 20


@dataclass(frozen=True)
class BoardProfile:
    name: str
    cpu: str
    cpu_hz: float              # core clock
    sram_bytes: int            # SRAM for the model: firmware statics, arena, stack
    flash: tuple[str, ...]     # flash presets (emulator/flash_timing.py) this board is built with; first = default
    psram: str | None          # PSRAM preset (emulator/psram_timing.py), or None
    psram_bytes: int           # 0 without PSRAM
    doc: str
    cpi: float = 1.0           # core cycles per executed instruction, for the firmware's hot loops
    cpi_source: str = ""       # where the CPI comes from (docs/board.md has the derivation)

    def to_dict(self) -> dict:
        return asdict(self)


# Cycles per instruction of a Cortex-M7 on this firmware, from the M7's issue rules measured on
# an STM32H743 (jnk0le/random, "pipeline cycle test/doc/cortex_m7.md") and ARM's M7 pipeline
# description in GCC (gcc/config/arm/cortex-m7.md), applied to the two loops that execute 96-98 %
# of the counted instructions. Derivation and validation: docs/board.md, "Cycles per instruction".
M7_CPI, M7_CPI_SOURCE = 0.85, (
    "Cortex-M7 issue rules (measured on STM32H743: jnk0le/random pipeline cycle test; ARM's GCC "
    "cortex-m7.md) applied to the hot loops: fp32 vec_dot 48 cycles / 55 instructions = 0.87, int8 "
    "dot2_i8 ~41 / 54 = 0.76; docs/board.md 'Cycles per instruction'")


BOARDS = {b.name: b for b in (
    BoardProfile(
        "sim64", "Cortex-M7", 480e6, 64 * MiB, ("w25q-quad", "octal-dtr"), None, 0,
        "the mission's board: a Cortex-M7 with a 64 MiB SRAM map and SPI NOR flash, no PSRAM",
        M7_CPI, M7_CPI_SOURCE),
    BoardProfile(
        "stm32h7", "Cortex-M7", 480e6, 512 * KiB, ("octal-dtr", "w25q-quad"), "octal-psram-200", 8 * MiB,
        "STM32H743/H7B3-class: 480 MHz Cortex-M7, 512 KiB AXI SRAM for the model, octal (or quad) "
        "SPI NOR flash and 8 MiB octal PSRAM on OCTOSPI",
        M7_CPI, M7_CPI_SOURCE),
    BoardProfile(
        "esp32s3-class", "Cortex-M7 (stand-in for Xtensa LX7)", 240e6, 512 * KiB, ("w25q-quad-80",),
        "quad-psram-80", 8 * MiB,
        "ESP32-S3-class: 240 MHz core, 512 KiB SRAM, quad SPI flash and 8 MiB quad PSRAM at 80 MHz; "
        "emulated as a Cortex-M7 at 240 MHz",
        1.0, "single-issue in-order core (Xtensa LX7): at least 1 cycle per instruction; the counted "
             "instructions are the Cortex-M7 build's, a stand-in for the LX7's; docs/board.md 'Cycles per "
             "instruction'"),
)}
DEFAULT_BOARD = "sim64"


def get_board(name: str) -> BoardProfile:
    try:
        return BOARDS[name]
    except KeyError:
        raise McugptError(f"unknown board '{name}' (known: {', '.join(BOARDS)})") from None
