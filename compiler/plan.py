"""The memory plan: where every byte of RAM goes, and how weights stream through it.

The firmware has no allocator. Everything it needs lives in one static arena whose layout is
fixed here, at compile time, and rendered into C:
  activation buffers   x, h, qkv, att, hidden (target/stages.py ACTIVATIONS), scores (attention)
  xq                   int8 builds: the quantized input vector of a matrix-vector product
  params               the stage's vectors: layer-norm gain+bias, or the bias of the matrix
                       being streamed (loaded whole before its matrix's tiles)
  weights              two tiles of matrix rows streamed from flash (double-buffered)
  logits / topk        one vocabulary tile of logits and the running top-k of the head
  resident             weights kept in SRAM across tokens (the paper's grouping)
  kv                   the KV cache, ctx positions x layers x (keys, values) x n_embd floats
                       (or kv_block, one block of it, when the cache is in PSRAM)
On a board with a data TCM (target/boards.py), the buffers that DMA refills and the int8
input vector (TCM_BUFFERS) go in a second, small arena there: the CPU reads every weight
byte once from them, and from the AXI SRAM each 32-byte line would be a D-cache line fill
plus cache maintenance after every DMA; the TCM is zero-wait and beside the cache. The weight
tiles then shrink to what the TCM holds (`--tcm off` keeps everything in the SRAM arena).
The budget is what the board gives the model (`--ram`); it must also hold the stack and the
firmware's own variables, reserved below. The context is the plan's first priority (default:
the model's, or the largest the budget allows); the weight tile gets what is left, up to a
whole matrix, so with a large budget each stage's matrices arrive in one transfer, as in the
paper, and with a small one they arrive in many.

The plan is typed (`Plan`, below); plan.json is its serialization (`Plan.to_json`,
`Plan.load`). A tensor's tile rows are `plan.tensors[i].tile_rows`, and only that.
"""

import json
import zlib
from dataclasses import asdict, dataclass

from target.boards import DEFAULT_BOARD, BoardProfile, get_board
from target.errors import McugptError
from target.flash_layout import ROW_CRC_BYTES, STAGE_ENTRY, TENSOR_ENTRY
from target.memory_map import TOPK_MAX
from target.stages import ACTIVATIONS, KIND_BY_NAME, MATRIX, ROW, VECTOR, dim

from .config import GPTConfig
from .partition import Stage
from .quantize import KV_BLOCK

F32 = 4
# where a token's bytes start and end in the token table: two u32, read twice and compared
# (runtime.c print_token: the table's CRC is checked at boot only)
TOKEN_OFFSETS_BYTES = 2 * 2 * 4
ALIGN = 32                 # Cortex-M7 cache line: buffers never share one
STACK_RESERVE = 16 << 10   # measured stack use is compared against this at run time
FIRMWARE_RESERVE = 16 << 10  # .data/.bss of the firmware outside the arena
DTYPES = ("fp32", "int8")
# With the KV cache in PSRAM: positions of one head read per DMA; the int8 cache's attention
# sums its values a block at a time (the block is part of its arithmetic: quantize.KV_BLOCK)
KV_BLOCK_POSITIONS = KV_BLOCK
# Every KV row and every tier tail in the PSRAM is followed by a check word the firmware
# computes when it writes them and verifies on every read (runtime.c psram_check): the PSRAM
# has no ECC, and nothing else would notice a flipped bit in it.
PSRAM_CHECK_BYTES = 4
# What the tier planner assumes a tile costs the CPU, from our measurements on the emulated
# boards: a decoded GPT-2 token's cycles over its MACs, everything included (int8 on the
# STM32H7S78-DK: docs/measurements.md, "The int8 kernel"; fp32: docs/board.md, "Per MAC"),
# and checking a tier tail's bytes against its check word (runtime.c psram_check: 1.74 cycles
# per word, docs/reliability.md).
CYCLES_PER_MAC = {"int8": 1.2, "fp32": 3.2}
CHECK_CYCLES_PER_BYTE = 0.44
# Weight tiles are double-buffered: the DMA fills one buffer while the CPU computes on the
# other, so a stage's time approaches max(I/O, compute) instead of their sum.
WEIGHT_BUFFERS = 2
GROUPING = ("auto", "none")
# With grouping, a weight tile needs no more than this: past it a bigger tile saves nothing
# measurable (the per-command overhead of a 256 KiB read is ~0.01%), and the RAM is worth
# more holding weights resident.
TILE_TARGET = 256 << 10
PLAN_FORMAT = 7   # 7: KV rows and tier tails in the PSRAM carry a check word
TCM_MODES = ("auto", "off")
# The KV cache's keys and values: float32, or int8 per position and head with a float32 scale
# (compiler/quantize.py quantize_vector; the reference dequantizes exactly as the firmware does).
# "auto" takes int8 only for int8 weights, and only when float32 would not reach the context:
# an fp32 build stays exact against Hugging Face unless asked otherwise.
KV_DTYPES = ("auto", "fp32", "int8")
# When the weights' CRCs are checked: "stream", every blob each time it streams (a second DMA
# pass on boards whose CRC unit is not on the flash DMA's path); "boot", every blob once at
# boot, then streamed unchecked; "auto": boot where the check is a second pass, else stream.
VERIFY_MODES = ("auto", "stream", "boot")
# The prompt is processed in chunks of positions (runtime_c/runtime.c forward): each stage runs
# over every position of a chunk before the next stage, so a weight tile streams once per chunk.
# Each position of a chunk needs its own activation buffers (and int8 input): the chunk is the
# largest up to PREFILL_MAX that fits beside the context, ahead of resident weights.
PREFILL_MAX = 16
# How the firmware reads weights: "stream", DMA into the tile buffers (the method); "xip", in
# place through the memory-mapped flash and the D-cache, as most MCU LLM ports do: the
# baseline mcugpt is measured against (no tile buffers, no resident weights, no DMA).
RUNTIMES = ("stream", "xip")
# Where streamed weights live for the run: "flash-only", or "auto": the PSRAM the KV cache
# leaves takes the tail of every full weight tile, copied there (and CRC-checked) once at
# boot, and read by the PSRAM's DMA while the flash's reads the rest of the tile
# (_psram_tier; compare plan.buses).
TIERS = ("auto", "flash-only")
PSRAM_ALIGN = 4096
# The int8 kernel takes rows four at a time (runtime_c/kernels_int8.c dot4_i8); a tile of a
# multiple of four rows leaves no remainder to the slower two- and one-row loops.
ROW_GROUP = 4
# Buffers the data TCM takes when the board has one: the DMA's destinations (the weight
# tiles, a block of the KV cache) and the int8 kernel's quantized input, read with every MAC.
TCM_BUFFERS = ("xq", "kv_block", "kv_rows", "weights", "weights_next")
TOPK_BYTES = 8 + TOPK_MAX * 8  # runtime_c TopK: k, n, then TOPK_MAX values and ids
# The arena's buffers, in the order a reader meets them in a stage.
ARENA_ORDER = ("x", "h", "qkv", "att", "hidden", "xq", "wu", "scores", "params", "weights", "weights_next",
               "logits", "topk", "kv_block", "kv_rows", "resident", "kv")


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def row_bytes(cols: int, dtype: str) -> int:
    """Bytes one matrix row takes in flash and in the weight tile: float32 values, or int8
    values plus the row's float32 scale (target/flash_layout.py: DTYPE_INT8_TILED)."""
    return cols * F32 if dtype == "fp32" else cols + F32


def is_quantized(role, dtype: str) -> bool:
    """int8 builds quantize every tensor a role marks int8: the matrices a matrix-vector
    product streams, and so wte, which the embedding shares with the LM head. wpe and all
    vectors stay float32."""
    return dtype == "int8" and role.int8


# ----------------------------------------------------------------------------
# the plan's types (plan.json is their serialization)


@dataclass
class Buffer:
    name: str
    offset: int          # in its region's arena, a multiple of ALIGN
    bytes: int
    region: str = "sram"  # "sram": the arena in the board's SRAM; "dtcm": the arena in its data TCM


@dataclass
class TensorPlan:
    """One weight tensor: an entry of the image's tensor table, in its order."""
    index: int
    name: str                   # the ONNX initializer (the checkpoint's tensor name)
    shape: list[int]            # as stored in flash: [rows, cols], or [n] for a vector
    access: str                 # how stages read it: target/stages.py VECTOR, MATRIX or ROW
    dtype: str                  # "fp32" or "int8" (int8: tiles of rows, each its scales then values)
    bytes: int                  # in flash
    row_bytes: int
    tile_rows: int              # rows per weight tile (MATRIX); all its rows otherwise
    resident_offset: int | None = None  # arena offset when kept in SRAM; None: read from flash
    psram_offset: int | None = None     # PSRAM address of its part in the PSRAM tier, if any
    psram_tail: int = 0                 # bytes at the end of each full tile read from the PSRAM tier

    @property
    def psram_bytes(self) -> int:
        """The bytes of it the PSRAM tier holds: the tail of each full tile."""
        return self.rows // self.tile_rows * self.psram_tail if self.psram_offset is not None else 0

    @property
    def psram_span(self) -> int:
        """Its part of the PSRAM: each full tile's tail then that tail's check word."""
        return self.rows // self.tile_rows * (self.psram_tail + PSRAM_CHECK_BYTES) if self.psram_offset is not None else 0

    @property
    def rows(self) -> int:
        return self.shape[0] if len(self.shape) == 2 else 1

    @property
    def cols(self) -> int:
        return self.shape[-1]

    @property
    def tiles(self) -> int:
        return -(-self.rows // self.tile_rows)

    @property
    def resident(self) -> bool:
        return self.resident_offset is not None


@dataclass
class StagePlan:
    index: int
    name: str
    kind: str
    layer: int | None
    tensors: dict[str, int]     # role -> index in Plan.tensors, in the kind's role order
    weight_bytes: int           # its tensors' bytes (the tied wte counts for both stages)
    flash_bytes_per_token: int  # what it reads from flash per token (embed: one row of each table)
    macs: int                   # per token; attn_core: at the planned context
    act_bytes: int              # activation buffers it touches
    kv_read_bytes: int          # per token, at the planned context
    kv_write_bytes: int
    ram_bytes: int              # its working set: activations, params, weight tiles (not the KV cache)


def kv_row_bytes(cfg: GPTConfig, kv_dtype: str, psram: bool = False) -> int:
    """One head's key (or value) at one position, as stored: head_dim floats, or int8 a
    float32 scale then head_dim int8 values, padded to a word; in the PSRAM, then its check
    word."""
    data = cfg.head_dim * F32 if kv_dtype == "fp32" else (F32 + cfg.head_dim + 3) // 4 * 4
    return data + (PSRAM_CHECK_BYTES if psram else 0)


def kv_token_bytes(cfg: GPTConfig, kv_dtype: str, psram: bool = False) -> int:
    """Keys and values of one position, every layer and head."""
    return 2 * cfg.n_layer * cfg.n_head * kv_row_bytes(cfg, kv_dtype, psram)


@dataclass
class KvPlan:
    placement: str              # "sram" or "psram"
    bytes: int                  # the whole cache at the planned context
    bytes_per_token: int
    offset: int                 # in the arena (sram) or in PSRAM
    layout: str
    block_positions: int = 0    # psram, or int8: positions of one head per block read
    psram_bytes: int = 0
    dtype: str = "fp32"         # keys and values: "fp32" or "int8" (KV_DTYPES)
    row_bytes: int = 0          # one head's key or value at one position, as stored
    why: str = ""               # why this dtype
    # int8 in PSRAM with head_dim = 2 block_positions (the GPT-2 family): each complete block of
    # value rows is rewritten transposed, row r holding columns 2r and 2r + 1 (runtime.c
    # kv_transpose_values), so attention sums its values on the SMLAD loop
    values_transposed: bool = False


@dataclass
class ResidentPlan:
    group: str                  # --group: "auto" or "none"
    bytes: int
    stages_fully_resident: int
    groups_without_flash_io: list[list[str]]


@dataclass
class Totals:
    stages: int
    block_stages: int
    weight_bytes: int           # every tensor once
    flash_bytes_per_token: int  # weights only: the stages' flash_bytes_per_token
    # what else a decoded token reads from flash: every stage's entry and the entries of the
    # tensors it opens (runtime.c read_stage, open_tensor), and the token table's two offsets
    # of the token printed, twice (print_token; then the token's own bytes, a few, twice)
    table_bytes_per_token: int
    macs_per_token_at_ctx: int


@dataclass
class Plan:
    format: int
    plan_id: int                # CRC32 of the plan with plan_id 0: the image and firmware must agree
    model: GPTConfig
    dtype: str
    board: str                  # target/boards.py; `profile` is its BoardProfile
    ram_budget: int
    ctx: int
    ctx_limited_by: str | None  # None (the model's context), "sram" or "psram"
    reserved: dict[str, int]    # stack, firmware
    tile_bytes: int
    weight_buffers: int
    buffers: list[Buffer]
    arena_bytes: int
    tcm_bytes: int              # the arena in the data TCM (0: none)
    tcm_why: str                # why the TCM holds what it holds, or nothing
    runtime: str                # RUNTIMES: "stream" (DMA into tiles) or "xip" (in place: the baseline)
    tiers: str                  # TIERS; the PSRAM tier's tensors have a psram_offset
    psram_weight_bytes: int     # weights the PSRAM tier holds
    prefill_chunk: int          # prompt positions per chunk (activation slots in the arena)
    prefill_why: str
    verify: str                 # VERIFY_MODES: "stream" or "boot"
    verify_why: str
    kv: KvPlan
    tensors: list[TensorPlan]
    stages: list[StagePlan]
    resident: ResidentPlan
    totals: Totals
    largest_stage: dict         # name, ram_bytes
    peak_ram_bytes: int
    buses: dict                 # per bus: bytes per token, bytes/s, s per token; the bound they set

    # -- lookups ---------------------------------------------------------------

    def buffer(self, name: str) -> Buffer:
        return next(b for b in self.buffers if b.name == name)

    def tensor(self, name: str) -> TensorPlan:
        return next(t for t in self.tensors if t.name == name)

    def stage_tensor(self, stage: StagePlan, role: str) -> TensorPlan:
        return self.tensors[stage.tensors[role]]

    def matrices(self, stage: StagePlan) -> list[tuple[str, TensorPlan]]:
        """(role, tensor) of each matrix the stage streams through the weight tiles."""
        kind = KIND_BY_NAME[stage.kind]
        return [(r.name, self.tensors[stage.tensors[r.name]]) for r in kind.matrices]

    @property
    def profile(self) -> BoardProfile:
        return get_board(self.board)

    @property
    def resident_tensors(self) -> list[TensorPlan]:
        return sorted((t for t in self.tensors if t.resident), key=lambda t: t.resident_offset)

    @property
    def psram_used_bytes(self) -> int:
        """The PSRAM the firmware addresses: the KV cache from address 0 (when there), then
        the tier's parts."""
        kv = self.kv.bytes if self.kv.placement == "psram" else 0
        return max([kv] + [t.psram_offset + t.psram_span for t in self.tensors if t.psram_offset is not None])

    # -- serialization -----------------------------------------------------------

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        return cls(**{**d, "model": GPTConfig(**d["model"]),
                      "buffers": [Buffer(**b) for b in d["buffers"]], "kv": KvPlan(**d["kv"]),
                      "tensors": [TensorPlan(**t) for t in d["tensors"]],
                      "stages": [StagePlan(**s) for s in d["stages"]],
                      "resident": ResidentPlan(**d["resident"]), "totals": Totals(**d["totals"])})

    @classmethod
    def load(cls, path) -> "Plan":
        try:
            d = json.loads(open(path).read())
            if d.get("format") != PLAN_FORMAT:
                raise McugptError(f"{path}: plan format {d.get('format')}, this mcugpt reads format {PLAN_FORMAT}; "
                                  f"recompile with `mcugpt compile`")
            return cls.from_dict(d)
        except (KeyError, TypeError, ValueError) as e:
            raise McugptError(f"{path}: not a plan this mcugpt wrote ({type(e).__name__}: {e}); "
                              f"recompile with `mcugpt compile`") from None


# ----------------------------------------------------------------------------
# planning


def tensor_order(stages: list[Stage]) -> list:
    """The image's tensor table: every stage's tensors in stage order, each stored once (the
    tied wte is embed's and the head's)."""
    order, seen = [], set()
    for s in stages:
        for t in s.tensors:
            if t.initializer not in seen:
                seen.add(t.initializer)
                order.append(t)
    return order


def _roles_by_initializer(stages: list[Stage]) -> dict[str, list]:
    """Every role each tensor fills, across stages (wte: embed's ROW and the head's MATRIX)."""
    out = {}
    for s in stages:
        kind = KIND_BY_NAME[s.kind]
        if tuple(t.role for t in s.tensors) != tuple(r.name for r in kind.roles):
            raise McugptError(f"stage {s.name}: tensors {[t.role for t in s.tensors]} are not the "
                              f"{s.kind} kind's roles {[r.name for r in kind.roles]}")
        for t, r in zip(s.tensors, kind.roles):
            out.setdefault(t.initializer, []).append(r)
    return out


def _tensor_bytes(shape, quantized: bool, dtype: str) -> int:
    if len(shape) == 2 and quantized:
        return shape[0] * row_bytes(shape[1], dtype)
    n = F32
    for d in shape:
        n *= d
    return n


def _params_elements(kind, cfg) -> int:
    """Floats the params buffer holds at once for this kind: the vectors before its first
    matrix together (a layer norm's gain and bias), then each matrix's bias alone, loaded
    just before its tiles (runtime_c/runtime.c)."""
    most, together, seen_matrix = 0, 0, False
    for r in kind.roles:
        if r.access == MATRIX:
            seen_matrix = True
        elif r.access == VECTOR:
            n = dim(r.shape[0], cfg)
            together = n if seen_matrix else together + n
            most = max(most, together)
    return most


def choose_resident(tensors: list[TensorPlan], room: int) -> list[TensorPlan]:
    """The tensors to keep in SRAM across tokens, within `room` bytes: the paper's stage
    grouping, decided per tensor. Every streamed tensor costs its bytes plus one flash
    command (address, dummy clocks, deselect) per token, so I/O time saved per byte of RAM
    is highest for the smallest tensors: take them smallest first while they fit. Tables
    read a row at a time and never whole (wpe) are never candidates."""
    candidates = [t for t in tensors if t.access != ROW]
    chosen, used = [], 0
    for t in sorted(candidates, key=lambda t: t.bytes):
        size = _align(t.bytes)
        if used + size <= room:
            chosen.append(t)
            used += size
    return chosen


def make_plan(cfg: GPTConfig, stages: list[Stage], ram: int | None = None, ctx: int | None = None,
              dtype: str = "fp32", board: str = DEFAULT_BOARD, group: str = "auto", tcm: str = "auto",
              kv_dtype: str = "auto", verify: str = "auto", prefill: int | None = None,
              runtime: str = "stream", tiers: str = "auto") -> Plan:
    """group "auto": weight tiles stay moderate (TILE_TARGET) and the RAM left after the
    context and the buffers keeps weights resident; "none": every weight streams every
    token and the tiles take all the RAM left. tcm "auto": TCM_BUFFERS in the board's data
    TCM when it has one and they fit; "off": all in the SRAM arena."""
    prof = get_board(board)
    if tcm not in TCM_MODES:
        raise McugptError(f"unknown --tcm '{tcm}' (known: {', '.join(TCM_MODES)})")
    if kv_dtype not in KV_DTYPES:
        raise McugptError(f"unknown --kv '{kv_dtype}' (known: {', '.join(KV_DTYPES)})")
    if tiers not in TIERS:
        raise McugptError(f"unknown --tiers '{tiers}' (known: {', '.join(TIERS)})")
    if runtime not in RUNTIMES:
        raise McugptError(f"unknown --runtime '{runtime}' (known: {', '.join(RUNTIMES)})")
    if runtime == "xip":   # nothing is staged: the weights are read where they are
        group, verify = "none", "boot"
    if prefill is not None and not 1 <= prefill <= PREFILL_MAX:
        raise McugptError(f"--prefill {prefill} is outside 1..{PREFILL_MAX} (positions per prompt chunk)")
    if verify not in VERIFY_MODES:
        raise McugptError(f"unknown --verify '{verify}' (known: {', '.join(VERIFY_MODES)})")
    if verify == "auto":
        if prof.crc.bytes_per_s is None:
            verify, verify_why = "stream", "auto: the flash DMA feeds the CRC unit as it reads, at no cost"
        else:
            verify, verify_why = "boot", (
                f"auto: the {prof.name}'s CRC unit is a second DMA pass at {prof.crc.bytes_per_s / 1e6:g} MB/s, "
                f"which would bound every token; every blob is checked once at boot instead, and streamed "
                f"reads are not re-checked")
    else:
        verify_why = f"--verify {verify}"
    if dtype not in DTYPES:
        raise McugptError(f"unknown --dtype '{dtype}' (known: {', '.join(DTYPES)})")
    # the PSRAM tier exists only for streamed weights checked at boot; with it, a tile's tail
    # arrives with its check word: the tile buffers hold one word past the tile
    tiered = tiers == "auto" and runtime == "stream" and verify == "boot" and prof.psram is not None
    tier_slack = PSRAM_CHECK_BYTES if tiered else 0
    if group not in GROUPING:
        raise McugptError(f"unknown --group '{group}' (known: {', '.join(GROUPING)})")
    if ram is None:
        ram = prof.sram_bytes
    if ram > prof.sram_bytes:
        raise McugptError(f"RAM budget of {ram:,} bytes exceeds the {prof.name} board's "
                          f"{prof.sram_bytes:,} bytes of SRAM")

    # the tensor table: each tensor once, with how it is read and stored
    roles = _roles_by_initializer(stages)
    tensors = []
    for i, t in enumerate(tensor_order(stages)):
        rs = roles[t.initializer]
        access = MATRIX if any(r.access == MATRIX for r in rs) else rs[0].access
        quantized = is_quantized(rs[0], dtype)
        if any(is_quantized(r, dtype) != quantized for r in rs):
            raise McugptError(f"tensor {t.initializer}: its roles disagree on int8 (target/stages.py)")
        cols = t.shape[-1]
        tensors.append(TensorPlan(i, t.initializer, list(t.shape), access, "int8" if quantized else "fp32",
                                  _tensor_bytes(t.shape, quantized, dtype),
                                  row_bytes(cols, "int8" if quantized else "fp32"), t.shape[0] if len(t.shape) == 2 else 1))
    by_name = {t.name: t for t in tensors}
    kinds = [KIND_BY_NAME[s.kind] for s in stages]

    fixed = {name: dim(n, cfg) * F32 for name, n in ACTIVATIONS.items()}
    fixed["params"] = max(_params_elements(k, cfg) for k in kinds) * F32
    fixed["topk"] = TOPK_BYTES
    mats = [t for t in tensors if t.access == MATRIX]
    # int8: the input vector of a matrix-vector product, quantized (the widest input), then
    # unpacked for the 4-row kernel (2 bytes per element: runtime_c/kernels_int8.h unpack_i8)
    fixed["xq"] = 3 * max(t.cols for t in mats) + 8 if dtype == "int8" else 0
    # int8 with a prefill chunk: four rows unpacked once for every position of the chunk
    # (runtime_c/kernels_int8.h matvec_rows_i8_batch)
    fixed["wu"] = 8 * max(t.cols for t in mats) if dtype == "int8" else 0
    min_tile = max(t.row_bytes for t in mats)               # one row of the widest matrix
    max_tile = max(t.rows * t.row_bytes for t in mats)      # the largest whole matrix
    # the LM head's matrix: its tile of logits is a buffer of its own
    head_matrix = by_name[next(t.initializer for s in stages if s.kind == "head" for t in s.tensors
                               if t.role == KIND_BY_NAME["head"].matrices[0].name)]
    head_row = head_matrix.row_bytes
    reserved = STACK_RESERVE + FIRMWARE_RESERVE
    # one block of one head's rows as read from the PSRAM, check words included (fp32: read into
    # kv_block, checked, then packed to floats; int8: into kv_rows, which holds two blocks, one
    # read while the other is computed with, and used as they are)
    rows_bytes = lambda c, kvd: min(c, KV_BLOCK_POSITIONS) * kv_row_bytes(cfg, kvd, psram=True)
    int8_rows_bytes = lambda c: rows_bytes(c, "int8") * (2 if c > KV_BLOCK_POSITIONS else 1)

    # prefill chunk: positions whose activations (and int8 inputs) the arena holds at once;
    # the context is planned with one, then the chunk takes what the context leaves
    per_position = set(ACTIVATIONS) | {"xq"}
    chunk = 1

    # the data TCM: the tiles, the KV blocks and xq (one position's), when two of the widest
    # rows fit beside them
    dtcm = prof.dtcm if tcm == "auto" else None
    tcm_tile = 0
    if dtcm is not None:
        kv_blocks = max(_align(rows_bytes(cfg.n_ctx, "fp32")), _align(int8_rows_bytes(cfg.n_ctx)))   # either dtype's
        tcm_tile = (dtcm.bytes - _align(fixed["xq"]) - kv_blocks) // WEIGHT_BUFFERS // ALIGN * ALIGN - tier_slack
    in_tcm = set(TCM_BUFFERS) if tcm_tile >= min_tile else set()
    size_of = lambda name: 0 if name == "wu" and chunk == 1 else fixed[name] * (chunk if name in per_position else 1)
    if tcm == "off":
        tcm_why = "--tcm off: every buffer in the SRAM arena"
    elif dtcm is None:
        tcm_why = f"the {prof.name} board has no data TCM its DMA can write"
    elif not in_tcm:
        tcm_why = (f"two tiles of the widest row ({min_tile:,} bytes) do not fit the {dtcm.bytes // 1024} KiB DTCM "
                   f"beside the other TCM buffers")
    else:
        tcm_why = (f"the DMA's destinations and the int8 input read with every MAC: zero-wait, and no D-cache "
                   f"line fills or maintenance; tiles of at most {tcm_tile:,} bytes fit the {dtcm.bytes // 1024} KiB DTCM")

    def kv_sizes(c, kv_in_sram, kvd) -> dict:
        """The KV cache's buffers: the cache itself when in SRAM; from the PSRAM, fp32: a block
        of one head's rows (kv_block), int8: two blocks as stored (kv_rows)."""
        return {"kv": c * kv_token_bytes(cfg, kvd) if kv_in_sram else 0,
                "kv_block": rows_bytes(c, kvd) if not kv_in_sram and kvd == "fp32" else 0,
                "kv_rows": int8_rows_bytes(c) if not kv_in_sram and kvd == "int8" else 0}

    def total(c, tile, kv_in_sram, kvd):
        """The SRAM the plan needs (the TCM's buffers are not in it)."""
        logits = (tile // head_row) * F32
        kv = sum(_align(b) for n, b in kv_sizes(c, kv_in_sram, kvd).items() if n not in in_tcm)
        return (reserved + sum(_align(size_of(n)) for n in fixed if n not in in_tcm) + _align(c * F32)
                + (0 if in_tcm or runtime == "xip" else WEIGHT_BUFFERS * _align(tile + tier_slack)) + _align(logits) + kv)

    def largest_ctx(kv_in_sram, cap, kvd):
        if cap < 1 or total(1, min_tile, kv_in_sram, kvd) > ram:
            return 0
        lo, hi = 1, cap
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if total(mid, min_tile, kv_in_sram, kvd) <= ram else (lo, mid - 1)
        return lo

    def context(kvd):
        """(context, KV cache in SRAM?) with keys and values in `kvd`; context 0 if none fits."""
        psram_cap = prof.psram_bytes // kv_token_bytes(cfg, kvd, psram=True)
        if ctx is not None:
            in_sram = total(ctx, min_tile, True, kvd) <= ram or ctx > psram_cap
            return (ctx if total(ctx, min_tile, in_sram, kvd) <= ram else 0), in_sram
        in_sram = largest_ctx(True, cfg.n_ctx, kvd)
        in_psram = largest_ctx(False, min(cfg.n_ctx, psram_cap), kvd) if in_sram < cfg.n_ctx else 0
        return max(in_sram, in_psram), in_sram >= in_psram

    if ctx is not None and not 1 <= ctx <= cfg.n_ctx:
        raise McugptError(f"--ctx {ctx} is outside 1..{cfg.n_ctx} (the model's context)")
    wanted = ctx or cfg.n_ctx
    if kv_dtype == "auto":
        (c32, sram32), (c8, sram8) = context("fp32"), context("int8")
        if c32 >= wanted or c8 <= c32 or dtype == "fp32":
            kvd, got, kv_in_sram = "fp32", c32, sram32
            kv_why = ("auto: float32 keys and values reach the " + ("requested" if ctx else "model's") + " context"
                      if c32 >= wanted else "auto: int8 would not reach a longer context" if c8 <= c32 else
                      "auto: fp32 weights keep float32 keys and values (--kv int8 to trade exactness for context)")
        else:
            kvd, got, kv_in_sram = "int8", c8, sram8
            kv_why = (f"auto: float32 keys and values reach a context of {c32}, int8 (per position and head, "
                      f"float32 scales) {c8}")
    else:
        kvd = kv_dtype
        got, kv_in_sram = context(kvd)
        kv_why = f"--kv {kvd}"
    if got < 1:
        kvds = [kv_dtype] if kv_dtype != "auto" else ["fp32"] if dtype == "fp32" else ["fp32", "int8"]
        # where the cache could go: the SRAM, or the PSRAM when it holds this many positions
        psram_cap = {d: prof.psram_bytes // kv_token_bytes(cfg, d, psram=True) for d in kvds}
        options = [(s, d) for d in kvds for s in (True, False) if s or (ctx or 1) <= psram_cap[d]]
        if ctx and prof.psram_bytes and all(ctx > psram_cap[d] for d in kvds) and any(
                total(ctx, min_tile, False, d) <= ram for d in kvds):
            # the SRAM would hold the rest: the PSRAM is what is too small
            largest = max(max(largest_ctx(True, cfg.n_ctx, d), largest_ctx(False, min(cfg.n_ctx, psram_cap[d]), d))
                          for d in kvds)
            d = kvds[-1]
            raise McugptError(
                f"--ctx {ctx}: the KV cache would need {ctx * kv_token_bytes(cfg, d, psram=True):,} bytes ({d}, "
                f"{kv_token_bytes(cfg, d, psram=True):,} per position, check words included), more than the {prof.name} board's {prof.psram_bytes:,} "
                f"bytes of PSRAM hold (room for {psram_cap[d]} positions), and the SRAM budget of {ram:,} bytes "
                f"cannot hold it either; the largest context that fits is {largest}"
                + (" (--kv int8 holds more positions)" if d == "fp32" else ""))
        need = min(total(ctx or 1, min_tile, s, d) for s, d in options)
        raise McugptError(
            f"RAM budget of {ram:,} bytes is too small for {cfg.name}" + (
                f" with a context of {ctx} tokens" if ctx else "") + f": the smallest budget that works"
            + ("" if ctx else " (context of 1 token)") + f" is {need:,} bytes")
    ctx = got
    kv_token = kv_token_bytes(cfg, kvd, psram=not kv_in_sram)

    # the prefill chunk: the largest that fits beside the context (more than one position's
    # int8 inputs leave the TCM to the tiles and the KV blocks)
    fits = None
    for chunk in range(prefill or PREFILL_MAX, 0, -1):
        if chunk > 1:
            in_tcm.discard("xq")
        elif tcm_tile >= min_tile:
            in_tcm.add("xq")
        if total(ctx, min_tile, kv_in_sram, kvd) <= ram:
            fits = chunk
            break
        if prefill:
            break
    if fits is None:
        raise McugptError(f"RAM budget of {ram:,} bytes is too small for a prefill chunk of {prefill} positions "
                          f"with {cfg.name} at a context of {ctx}: --prefill 1 needs no more than the context")
    prefill_why = (f"--prefill {prefill}" if prefill else
                   f"auto: the largest chunk up to {PREFILL_MAX} whose activations fit beside the context")
    psram_ctx_cap = prof.psram_bytes // kv_token
    tile = max_tile if group == "none" else min(max_tile, max(min_tile, TILE_TARGET))
    if in_tcm:
        tile = min(tile, tcm_tile)
    elif total(ctx, tile, kv_in_sram, kvd) > ram:
        lo, hi = min_tile, max_tile  # largest tile that fits beside the context
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if total(ctx, mid, kv_in_sram, kvd) <= ram else (lo, mid - 1)
        tile = lo
    for t in mats:
        t.tile_rows = min(t.rows, tile // t.row_bytes)
        if dtype == "int8" and t.tile_rows < t.rows and t.tile_rows >= ROW_GROUP:
            t.tile_rows -= t.tile_rows % ROW_GROUP   # whole groups for the four-row int8 kernel
    resident = choose_resident(tensors, ram - total(ctx, tile, kv_in_sram, kvd) - ALIGN) if group == "auto" else []

    # the arena: fixed offsets, in ARENA_ORDER
    sizes = {name: size_of(name) for name in fixed}
    staged = tile + tier_slack if runtime == "stream" else 0
    sizes.update({"scores": ctx * F32, "weights": staged, "weights_next": staged if WEIGHT_BUFFERS == 2 else 0,
                  "logits": head_matrix.tile_rows * F32,
                  **kv_sizes(ctx, kv_in_sram, kvd),
                  "resident": sum(_align(t.bytes) for t in resident)})
    buffers, offset = [], {"sram": 0, "dtcm": 0}
    for name in ARENA_ORDER:
        region = "dtcm" if name in in_tcm and sizes[name] else "sram"   # (an empty buffer needs no TCM)
        buffers.append(Buffer(name, offset[region], sizes[name], region))
        offset[region] += _align(sizes[name])
    arena, tcm_bytes = offset["sram"], offset["dtcm"]
    if dtcm is not None and tcm_bytes > dtcm.bytes:
        raise AssertionError(f"the TCM arena of {tcm_bytes} bytes exceeds the {dtcm.bytes}-byte DTCM")
    offset = next(b.offset for b in buffers if b.name == "resident")
    for t in resident:
        t.resident_offset = offset
        offset += _align(t.bytes)

    # the PSRAM tier, in the PSRAM the KV cache leaves
    kv_end = 0 if kv_in_sram else -(-ctx * kv_token // PSRAM_ALIGN) * PSRAM_ALIGN
    psram_tier = _psram_tier(prof, tensors, kv_end, dtype) if tiered else 0

    stage_plans = [_stage_plan(s, k, cfg, dtype, ctx, kv_in_sram, kv_token, sizes, by_name)
                   for s, k in zip(stages, kinds)]
    largest = max(stage_plans, key=lambda r: r.ram_bytes)
    row = kv_row_bytes(cfg, kvd, psram=not kv_in_sram)
    check = ", then a check word" if not kv_in_sram else ""
    int8_row = f"rows of {row} bytes: a float32 scale, then head_dim int8{check}" if kvd == "int8" else ""
    if kv_in_sram and kvd == "fp32":
        kv = KvPlan("sram", ctx * kv_token, kv_token, next(b.offset for b in buffers if b.name == "kv"),
                    "keys [layer][position][n_embd], then values [layer][position][n_embd]", dtype=kvd,
                    row_bytes=row, why=kv_why)
    else:
        where = "sram" if kv_in_sram else "psram"
        block = min(ctx, KV_BLOCK_POSITIONS)
        transposed = kvd == "int8" and not kv_in_sram and cfg.head_dim == 2 * block
        kv = KvPlan(where, ctx * kv_token, kv_token,
                    next(b.offset for b in buffers if b.name == "kv") if kv_in_sram else 0,
                    "[layer][keys, values][head][position]" + (" " + int8_row if int8_row else f"[head_dim]{check}")
                    + (" from PSRAM address 0" if not kv_in_sram else "")
                    + (f"; each complete block of {block} value rows stored transposed, row r holding columns "
                       "2r and 2r + 1" if transposed else ""),
                    block_positions=block, psram_bytes=prof.psram_bytes if not kv_in_sram else 0,
                    dtype=kvd, row_bytes=row, why=kv_why, values_transposed=transposed)
    plan = Plan(
        format=PLAN_FORMAT, plan_id=0, model=cfg, dtype=dtype, board=prof.name, ram_budget=ram, ctx=ctx,
        ctx_limited_by=None if ctx >= cfg.n_ctx else (
            "psram" if not kv_in_sram and ctx == min(cfg.n_ctx, psram_ctx_cap) else "sram"),
        reserved={"stack": STACK_RESERVE, "firmware": FIRMWARE_RESERVE},
        tile_bytes=tile, weight_buffers=WEIGHT_BUFFERS, buffers=buffers, arena_bytes=arena,
        tcm_bytes=tcm_bytes, tcm_why=tcm_why, runtime=runtime, tiers=tiers, psram_weight_bytes=psram_tier, prefill_chunk=chunk, prefill_why=prefill_why, verify=verify, verify_why=verify_why, kv=kv,
        tensors=tensors, stages=stage_plans,
        resident=_resident_summary(stage_plans, resident, group),
        totals=Totals(stages=len(stages), block_stages=sum(1 for k in kinds if k.in_block),
                      weight_bytes=sum(t.bytes for t in tensors),
                      flash_bytes_per_token=sum(r.flash_bytes_per_token for r in stage_plans),
                      table_bytes_per_token=len(stages) * STAGE_ENTRY.size
                      + sum(len(k.roles) for k in kinds) * TENSOR_ENTRY.size + TOKEN_OFFSETS_BYTES,
                      macs_per_token_at_ctx=sum(r.macs for r in stage_plans)),
        largest_stage={"name": largest.name, "ram_bytes": largest.ram_bytes},
        peak_ram_bytes=arena + STACK_RESERVE + FIRMWARE_RESERVE,
        buses=_buses(prof, stage_plans, tile, runtime, kv, kv_in_sram, psram_tier, tensors))
    plan.plan_id = zlib.crc32(json.dumps(plan.to_dict(), sort_keys=True).encode())
    return plan


def _psram_tier(prof: BoardProfile, tensors: list[TensorPlan], at: int, dtype: str) -> int:
    """The same share of every full tile of every streamed matrix comes from the PSRAM: its
    last psram_tail bytes, read by the PSRAM's DMA while the flash's reads the rest of the tile
    (the two buses run at once), so a tile arrives in the longer of the two reads, not their
    sum. The share is what the PSRAM has room for, at most the buses' balance point (beyond
    it the PSRAM would take longer than the flash) and at most the point where the flash's
    part takes as long as the CPU's work on the tile, its tail's check included (beyond it
    the tile waits for the CPU, not the flash: a compute-bound plan gets no tier). Whole
    matrices in the PSRAM would leave the flash idle while they stream. Returns the bytes the
    tier holds."""
    from target.boards import flash_timing_of, psram_timing_of
    from target.flash_timing import read_time_ns
    from target.psram_timing import transfer_time_ns
    if prof.psram is None:
        return 0
    streamed = [t for t in tensors if t.access == MATRIX and not t.resident and t.rows >= t.tile_rows]
    full = lambda t: t.rows // t.tile_rows * t.tile_rows * t.row_bytes   # the bytes in full tiles
    total = sum(full(t) for t in streamed)
    if not total:
        return 0
    tile = max(t.tile_rows * t.row_bytes for t in streamed)
    flash_rate = tile / read_time_ns(flash_timing_of(prof.flash[0]), tile, device_size=prof.flash_bytes)
    psram_rate = tile / transfer_time_ns(psram_timing_of(prof.psram), tile, False)
    # each tensor's part starts on a page, and rounding each tile's split to a line may add 32
    # bytes, besides each tail's check word
    room = (prof.psram_bytes - at - len(streamed) * PSRAM_ALIGN
            - (32 + PSRAM_CHECK_BYTES) * sum(t.rows // t.tile_rows for t in streamed))
    share = min(psram_rate / (flash_rate + psram_rate), room / total)
    # flash(1 - s) = compute + check(s), per byte of tile, in ns
    flash_ns, check_ns = 1 / flash_rate, CHECK_CYCLES_PER_BYTE * 1e9 / prof.cpu_hz
    held = 0
    for t in streamed:
        tile_bytes = t.tile_rows * t.row_bytes
        compute_ns = t.tile_rows * t.cols * CYCLES_PER_MAC[dtype] * 1e9 / prof.cpu_hz / tile_bytes
        s = min(share, (flash_ns - compute_ns) / (flash_ns + check_ns))
        # the flash's part a whole number of 32-byte lines: the two DMAs never share a D-cache line
        tail = tile_bytes - int(tile_bytes * (1 - s)) // 32 * 32
        if s <= 0 or tail <= 0:
            continue
        t.psram_offset, t.psram_tail = at, tail
        at += -(-t.psram_span // PSRAM_ALIGN) * PSRAM_ALIGN
        held += t.psram_bytes
    assert at <= prof.psram_bytes, (at, prof.psram_bytes)
    return held


def _buses(prof: BoardProfile, stage_plans, tile: int, runtime: str, kv: KvPlan, kv_in_sram: bool,
           psram_weights: int, tensors: list[TensorPlan]) -> dict:
    """What a decoded token at the planned context moves on each external bus, at the rate of
    the transfers the firmware makes (a weight tile, or a 32-byte line for XIP; a block of KV
    rows), and the bound that sets: the buses run concurrently, so the busier one."""
    from target.boards import flash_timing_of, psram_timing_of
    from target.flash_timing import read_time_ns
    from target.psram_timing import transfer_time_ns
    part = flash_timing_of(prof.flash[0])
    unit = 32 if runtime == "xip" else max(tile, 32)
    flash_bps = unit / read_time_ns(part, unit, device_size=part.capacity) * 1e9
    flash_bytes = sum(s.flash_bytes_per_token for s in stage_plans)
    out = {"flash": {"bytes_per_token": flash_bytes, "bytes_per_s": flash_bps, "s_per_token": flash_bytes / flash_bps}}
    if prof.psram is not None and (not kv_in_sram or psram_weights):
        psram = psram_timing_of(prof.psram)
        kv_bytes = 0 if kv_in_sram else sum(s.kv_read_bytes + s.kv_write_bytes for s in stage_plans)
        block = max(kv.block_positions, 1) * kv.row_bytes
        tier = [t for t in tensors if t.psram_offset is not None]   # a tile's tail and its check word per read
        seconds = (kv_bytes / block * transfer_time_ns(psram, block, False) if kv_bytes else 0.0) + sum(
            t.rows // t.tile_rows * transfer_time_ns(psram, t.psram_tail + PSRAM_CHECK_BYTES, False) for t in tier)
        psram_bytes = kv_bytes + sum(t.psram_span for t in tier)
        out["psram"] = {"bytes_per_token": psram_bytes, "bytes_per_s": psram_bytes / seconds * 1e9,
                        "s_per_token": seconds * 1e-9, "weight_bytes_per_token": psram_weights}
    bound = max(b["s_per_token"] for b in out.values())
    out["bound_s_per_token"] = bound
    out["bound_tokens_per_s"] = 1 / bound if bound else 0.0
    return out


def _stage_plan(s: Stage, kind, cfg, dtype, ctx, kv_in_sram, kv_token, sizes, by_name) -> StagePlan:
    ts = [by_name[t.initializer] for t in s.tensors]
    flash = 0
    for r, t in zip(kind.roles, ts):
        if not t.resident:   # a matrix: all but its PSRAM part
            # ROW: one row per token, and its CRC32 in the tensor's row CRC table
            flash += t.row_bytes + ROW_CRC_BYTES if r.access == ROW else t.bytes - t.psram_bytes
    kv_read = kv_write = 0
    if "kv" in kind.reads:   # at the last position of the planned context
        kv_read, kv_write = kv_token // cfg.n_layer * ctx, kv_token // cfg.n_layer
    has_vectors = any(r.access == VECTOR for r in kind.roles)
    matrices = [t for r, t in zip(kind.roles, ts) if r.access == MATRIX]
    bufs = [b for b in dict.fromkeys(kind.reads + kind.writes + kind.scratch)]
    if "kv" in bufs:   # what of the cache's buffers the stage uses
        at = bufs.index("kv")
        bufs[at:at + 1] = [b for b in ("kv", "kv_block", "kv_rows") if sizes[b] and (b != "kv" or kv_in_sram)]
    if dtype == "int8" and any(r.int8 for r in kind.roles):
        bufs.append("xq")   # the quantized input (embed: the int8 row it dequantizes)
    act = sum(sizes[b] for b in bufs if b not in ("kv", "kv_block", "kv_rows", "topk"))
    in_ram = sum(sizes[b] for b in bufs if b != "kv") + (sizes["params"] if has_vectors else 0)
    if matrices:
        in_ram += WEIGHT_BUFFERS * max(min(t.tile_rows * t.row_bytes, sizes["weights"]) for t in matrices)
    return StagePlan(
        index=s.index, name=s.name, kind=s.kind, layer=s.layer,
        tensors={r.name: t.index for r, t in zip(kind.roles, ts)},
        weight_bytes=sum(t.bytes for t in ts), flash_bytes_per_token=flash, macs=kind.macs(cfg, ctx),
        act_bytes=act, kv_read_bytes=kv_read, kv_write_bytes=kv_write, ram_bytes=in_ram)


def _resident_summary(stage_plans, resident, group) -> ResidentPlan:
    """Which runs of consecutive stages run without any flash I/O (the groups the paper
    proposes)."""
    groups, run = [], []
    for r in stage_plans:
        if r.flash_bytes_per_token == 0 and r.weight_bytes > 0 or (run and r.kind == "attn_core"):
            run.append(r.name)
        else:
            if len(run) > 1:
                groups.append(run)
            run = []
    if len(run) > 1:
        groups.append(run)
    return ResidentPlan(group=group, bytes=sum(_align(t.bytes) for t in resident),
                        stages_fully_resident=sum(1 for r in stage_plans if r.weight_bytes and not r.flash_bytes_per_token),
                        groups_without_flash_io=groups)
