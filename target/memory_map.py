"""The emulated board's memory map and peripheral registers: defined once, here.

The emulator (emulator/) maps exactly this, and compiler/codegen.py renders it into
`include/memory_map.h` for the firmware, so neither side writes an address by hand.

Peripherals are polled (the emulated M7 has no usable NVIC), 32-bit registers only.
"""

from dataclasses import dataclass

CODE_BASE = 0x08000000     # internal flash: the firmware's code and read-only data
CODE_SIZE = 2 << 20
DTCM_BASE = 0x20000000     # the data TCM, on boards that have one (target/boards.py): zero-wait, uncached
SRAM_BASE = 0x24000000     # the model's RAM (the STM32H7's AXI SRAM): firmware statics, the arena, the stack
SRAM_SIZE_DEFAULT = 64 << 20
XIP_BASE = 0x70000000      # the flash, memory-mapped for the XIP runtime (STM32H7RS XSPI2_BASE: docs/boards.md)
XIP_LINE = 32              # a D-cache line: what each miss on the mapped flash reads
MAILBOX_BASE = 0x30000000  # host -> firmware: prompt and settings (not counted as model RAM)
MAILBOX_SIZE = 64 << 10
PERIPH_BASE = 0x40000000   # execute-never in the M-profile default map: fine for registers

# The Cortex-M7's cache control: ARMv7-M System Control Block registers, the same on every M7
# (Arm's ARMv7-M ARM, B3.2), not board addresses. The firmware turns the D-cache on at reset
# and keeps it coherent with the DMA by address: invalidate after a DMA wrote cacheable RAM,
# clean before a DMA reads it. The emulator's D-cache model (emulator/dcache.py) watches these.
SCB_CCR = 0xE000ED14       # bit 16 DC: D-cache enable
SCB_CCR_DC = 1 << 16
SCB_CLIDR = 0xE000ED78     # which caches the core has: bits 2:0 = 0b010 or 0b011 with a level-1 D-cache
SCB_CCSIDR = 0xE000ED80    # the selected cache's geometry: sets, ways, line size
SCB_CSSELR = 0xE000ED84    # select a cache for CCSIDR (0: level-1 data)
SCB_DCISW = 0xE000EF60     # write set | way: invalidate that line (CMSIS SCB_InvalidateDCache)
SCB_DCIMVAC = 0xE000EF5C   # write an address: invalidate its line
SCB_DCCMVAC = 0xE000EF68   # write an address: clean its line (write it back if dirty)
SCB_DCCIMVAC = 0xE000EF70  # write an address: clean and invalidate its line
DCACHE_LINE = 32           # bytes: the Cortex-M7's line, and the arena's buffer alignment


@dataclass(frozen=True)
class Register:
    name: str
    offset: int
    doc: str


@dataclass(frozen=True)
class Peripheral:
    name: str
    base: int
    size: int
    registers: tuple[Register, ...]
    doc: str

    def reg(self, name: str) -> int:
        return next(r.offset for r in self.registers if r.name == name)


# The flash controller: a quad/octal SPI NOR controller with a DMA engine and a CRC unit
# on its data path, as MCUs have (STM32 OCTOSPI + MDMA + CRC). Writing CMD starts a command;
# STATUS.DONE is set when it finishes. A DMA read moves LEN bytes from flash ADDR to RAM DST
# and, when CRC_CTRL.ENABLE is set, feeds them through the CRC unit.
FLASHCTL = Peripheral("FLASHCTL", PERIPH_BASE + 0x1000, 0x1000, (
    Register("CMD", 0x00, "write a FLASH_CMD_* to start it"),
    Register("ADDR", 0x04, "flash byte address"),
    Register("DST", 0x08, "RAM address of a DMA read / source of a page program"),
    Register("LEN", 0x0C, "bytes"),
    Register("STATUS", 0x10, "FLASH_STATUS_* bits"),
    Register("CRC_CTRL", 0x14, "write CRC_RESET to start a new CRC32; CRC_ENABLE feeds DMA reads through it"),
    Register("CRC_VALUE", 0x18, "the CRC32 of the bytes fed since the last reset"),
    Register("JEDEC_ID", 0x1C, "the device's JEDEC id (after FLASH_CMD_READ_ID)"),
    Register("DEV_STATUS", 0x20, "the device's status register (after FLASH_CMD_READ_STATUS)"),
), "SPI NOR flash controller + DMA + CRC unit")

UART = Peripheral("UART", PERIPH_BASE + 0x2000, 0x1000, (
    Register("DATA", 0x00, "write a byte to send it"),
    Register("STATUS", 0x04, "bit 0: ready to send (always, in emulation)"),
), "text out")

# The trace unit lets the board attribute time and I/O to stages and collect results
# without hooks on the run path: the firmware writes a register at each event.
TRACE = Peripheral("TRACE", PERIPH_BASE + 0x3000, 0x1000, (
    Register("STAGE", 0x00, "write the stage index when a stage starts; TRACE_IDLE between tokens"),
    Register("TOKEN", 0x04, "write each generated token id"),
    Register("LOGITS_ADDR", 0x08, "debug channel: RAM address of a tile of logits"),
    Register("LOGITS_FIRST", 0x0C, "debug channel: vocabulary id of the tile's first logit"),
    Register("LOGITS_COUNT", 0x10, "debug channel: write the count last; the board reads the tile"),
    Register("POSITION", 0x14, "write the position of the token being computed"),
    Register("XIP_ADDR", 0x18, "XIP runtime: flash address of bytes the CPU is about to read in place"),
    Register("XIP_LEN", 0x1C, "XIP runtime: write their length last; the board charges the D-cache line fills"),
    Register("CRC_RETRY", 0x20, "a checked read failed once and is read again: the tensor index, CRC_RETRY_SECTION, CRC_RETRY_KV or CRC_RETRY_TIER"),
), "stage/token trace and the logits debug channel")

SYSCTL = Peripheral("SYSCTL", PERIPH_BASE + 0x4000, 0x1000, (
    Register("ARG0", 0x00, "detail of an error"),
    Register("ARG1", 0x04, "detail of an error"),
    Register("ARG2", 0x08, "detail of an error"),
    Register("EXIT", 0x0C, "write an EXIT_* code (args first) to stop the board"),
), "run control")

# External PSRAM behind a memory controller with DMA (STM32 OCTOSPI/FMC + MDMA): the KV cache
# lives there when SRAM cannot hold it. Writing CMD starts a transfer of LEN bytes between
# PSRAM address ADDR and SRAM address RAM; STATUS.DONE is set when it finishes. Boards
# without PSRAM answer STATUS = ERROR | DONE.
PSRAMCTL = Peripheral("PSRAMCTL", PERIPH_BASE + 0x5000, 0x1000, (
    Register("CMD", 0x00, "write a PSRAM_CMD_* to start it"),
    Register("ADDR", 0x04, "PSRAM byte address"),
    Register("RAM", 0x08, "SRAM address: destination of a read, source of a write"),
    Register("LEN", 0x0C, "bytes"),
    Register("STATUS", 0x10, "FLASH_STATUS_* bits (the same DONE/BUSY/ERROR meaning)"),
), "PSRAM controller + DMA")

PERIPHERALS = (FLASHCTL, UART, TRACE, SYSCTL, PSRAMCTL)

FLASH_CMD = {"READ": 1, "READ_ID": 2, "READ_STATUS": 3, "WRITE_ENABLE": 4, "PAGE_PROGRAM": 5,
             "SECTOR_ERASE": 6}
PSRAM_CMD = {"READ": 1, "WRITE": 2}
FLASH_STATUS = {"DONE": 1 << 0, "BUSY": 1 << 1, "ERROR": 1 << 2}
CRC_CTRL = {"RESET": 1 << 0, "ENABLE": 1 << 1}
TRACE_IDLE = 0xFFFFFFFF
CRC_RETRY_SECTION = 0xFFFFFFFF   # TRACE.CRC_RETRY: the header, the tables or the token table
CRC_RETRY_KV = 0xFFFFFFFE        # TRACE.CRC_RETRY: a block of KV cache rows read from PSRAM
CRC_RETRY_TIER = 0xFFFFFFFD      # TRACE.CRC_RETRY: a tile's tail read from the PSRAM tier

# Mailbox layout (u32 words at these byte offsets). The host fills it before reset.
MAILBOX = {
    "MAGIC": 0x00,          # MAILBOX_MAGIC when valid
    "N_PROMPT": 0x04,       # prompt tokens
    "N_NEW": 0x08,          # tokens to generate
    "TEMPERATURE": 0x0C,    # float32 bits; 0 = greedy
    "TOP_K": 0x10,
    "SEED_LO": 0x14,        # sampling seed, low and high words
    "SEED_HI": 0x18,
    "FLAGS": 0x1C,          # MAILBOX_FLAG_* bits
    "CHUNK": 0x20,          # prompt positions per chunk: 1..the plan's PREFILL_CHUNK; 0 = the plan's
    "PROMPT": 0x100,        # N_PROMPT u32 token ids
}
MAILBOX_MAGIC = 0x4D424F58  # "XOBM"
MAILBOX_FLAGS = {"DUMP_LOGITS": 1 << 0}
MAILBOX_MAX_PROMPT = (MAILBOX_SIZE - MAILBOX["PROMPT"]) // 4
# The largest TOP_K the firmware accepts: its running top-k (runtime_c/kernels.h TopK) holds
# this many candidates. The firmware build passes it to the C code as -DTOPK_MAX.
TOPK_MAX = 128

# The core's cycle counter (ARMv7-M Debug Watchpoint and Trace unit, the same on every M7):
# the firmware bounds its wait for a DMA transfer with it (runtime_c/hal_board.c). DEMCR.TRCENA
# powers the DWT, DWT_CTRL.CYCCNTENA starts the counter; CYCCNT counts CPU clock cycles, the
# time the CPU stalls included, and wraps at 2^32.
DEMCR = 0xE000EDFC
DEMCR_TRCENA = 1 << 24
DWT_CTRL = 0xE0001000
DWT_CTRL_CYCCNTENA = 1 << 0
DWT_CYCCNT = 0xE0001004
DMA_BUS = {"FLASH": 1, "PSRAM": 2}   # EXIT_DMA_TIMEOUT's ARG0: which controller's transfer

# Why the firmware stopped (SYSCTL.EXIT); ARG0..2 carry the numbers named here.
EXIT_CODES = {
    "OK": (0, "finished"),
    "BAD_MAILBOX": (1, "mailbox magic wrong or settings out of range (ARG0: field offset, ARG1: value)"),
    "BAD_MAGIC": (2, "flash image magic wrong (ARG0: found)"),
    "BAD_VERSION": (3, "flash image format version (ARG0: found, ARG1: expected)"),
    "BAD_HEADER_CRC": (4, "flash image header CRC, read twice (ARG0: stored, ARG1: computed)"),
    "PLAN_MISMATCH": (5, "image made for another plan or model (ARG0: image's value, ARG1: firmware's, ARG2: header field offset)"),
    "BAD_TENSOR_CRC": (6, "weight blob CRC, read twice (ARG0: tensor index, ARG1: stored, ARG2: computed)"),
    "CONTEXT_FULL": (7, "prompt + new tokens exceed the planned context (ARG0: needed, ARG1: N_CTX)"),
    "FLASH_ERROR": (8, "flash controller error (ARG0: status, ARG1: address, ARG2: length)"),
    "BAD_STAGE": (9, "stage table entry differs from the firmware's plan (ARG0: stage index, ARG1: StageEntry field offset, ARG2: value)"),
    "BAD_TABLES_CRC": (10, "flash image stage/tensor tables CRC, read twice (ARG0: stored, ARG1: computed)"),
    "FAULT": (11, "CPU exception taken by the firmware's handler (ARG0: exception number)"),
    "BAD_TOKENS_CRC": (12, "flash image token table CRC, read twice (ARG0: stored, ARG1: computed)"),
    "PSRAM_ERROR": (13, "PSRAM controller error (ARG0: status, ARG1: PSRAM address, ARG2: length)"),
    "BAD_ROW_CRC": (14, "a row read a row at a time failed its row CRC, read twice (ARG0: tensor index, ARG1: row, ARG2: computed)"),
    "BAD_TENSOR_ENTRY": (15, "tensor table entry differs from the firmware's plan or lies outside the image (ARG0: tensor index, ARG1: TensorEntry field offset, ARG2: value)"),
    "BAD_TOKEN_ENTRY": (16, "token table offsets out of order or past the table (ARG0: token, ARG1: start, ARG2: end)"),
    "DMA_TIMEOUT": (17, "a DMA transfer did not complete within its bound (ARG0: bus, DMA_BUS_*, ARG1: flash or PSRAM address, ARG2: length)"),
    "BAD_KV_ROW": (18, "a KV cache row read from PSRAM failed its check word, read twice (ARG0: (layer * 2 + values) * N_HEAD + head, ARG1: position, ARG2: computed)"),
    "BAD_TIER_TAIL": (19, "a tile's tail read from the PSRAM tier failed its check word, read twice (ARG0: tensor index, ARG1: tile, ARG2: computed)"),
}
