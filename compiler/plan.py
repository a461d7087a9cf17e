"""The memory plan: where every byte of RAM goes, and how weights stream through it.

The firmware has no allocator. Everything it needs lives in one static arena whose layout is
fixed here, at compile time, and rendered into C:
  activation buffers   x (residual), h (normed), qkv, att, hidden (MLP), scores (attention)
  params               the stage's vectors: layer-norm gain+bias, or the bias of the matrix
                       being streamed (loaded whole before its matrix's tiles)
  weights              one tile of matrix rows streamed from flash; the plan sizes it
  logits / topk        one vocabulary tile of logits and the running top-k of the head
  kv                   the KV cache, ctx positions x layers x (keys, values) x n_embd floats
The budget is what the board gives the model (`--ram`); it must also hold the stack and the
firmware's own variables, reserved below. The context is the plan's first priority (default:
the model's, or the largest the budget allows); the weight tile gets what is left, up to a
whole matrix, so with a large budget each stage's matrices arrive in one transfer, as in the
paper, and with a small one they arrive in many.
"""

import json
import zlib
from dataclasses import dataclass

from target.boards import DEFAULT_BOARD, get_board
from .config import GPTConfig
from target.errors import McugptError
from .partition import Stage
from .sampler import TOPK_MAX
from target.stages import MATRIX_ROLES

F32 = 4
ALIGN = 32                 # Cortex-M7 cache line: buffers never share one
STACK_RESERVE = 16 << 10   # measured stack use is compared against this at run time
FIRMWARE_RESERVE = 16 << 10  # .data/.bss of the firmware outside the arena
DEFAULT_RAM = 64 << 20     # the sim64 board's SRAM map
DTYPES = ("fp32", "int8")
KV_BLOCK_POSITIONS = 32    # with the KV cache in PSRAM: positions of one head read per DMA
# Weight tiles are double-buffered: the DMA fills one buffer while the CPU computes on the
# other, so a stage's time approaches max(I/O, compute) instead of their sum.
WEIGHT_BUFFERS = 2
GROUPING = ("auto", "none")
# With grouping, a weight tile needs no more than this: past it a bigger tile saves nothing
# measurable (the per-command overhead of a 256 KiB read is ~0.01%), and the RAM is worth
# more holding weights resident.
TILE_TARGET = 256 << 10

# Which arena buffers each stage kind touches (for its working-set figure).
STAGE_BUFFERS = {
    "embed": ("x", "h"),
    "ln_1": ("x", "h", "params"),
    "attn_qkv": ("h", "qkv", "params", "weights"),
    "attn_core": ("qkv", "att", "scores", "kv"),  # kv_block instead when the cache is in PSRAM
    "attn_proj": ("att", "x", "params", "weights"),
    "ln_2": ("x", "h", "params"),
    "mlp": ("h", "hidden", "x", "params", "weights"),
    "head": ("x", "h", "params", "weights", "logits", "topk"),
}


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class Plan:
    data: dict

    def to_json(self) -> str:
        return json.dumps(self.data, indent=1)

    @property
    def plan_id(self) -> int:
        return self.data["plan_id"]

    def buffer(self, name: str) -> dict:
        return next(b for b in self.data["buffers"] if b["name"] == name)

    @classmethod
    def load(cls, path) -> "Plan":
        return cls(json.loads(open(path).read()))


def _fixed_buffers(cfg: GPTConfig, stages: list[Stage], dtype: str) -> dict[str, int]:
    d = cfg.n_embd
    vectors = [t.shape[0] for s in stages for t in s.tensors if len(t.shape) == 1]
    by_kind = {}
    for s in stages:  # layer norms load gain and bias together
        if s.kind in ("ln_1", "ln_2", "head"):
            by_kind[s.kind] = sum(t.shape[0] for t in s.tensors if len(t.shape) == 1)
    params = max(vectors + list(by_kind.values()))
    sizes = {"x": d * F32, "h": d * F32, "qkv": 3 * d * F32, "att": d * F32,
             "hidden": 4 * d * F32, "params": params * F32,
             "topk": 8 + TOPK_MAX * 8}  # runtime_c TopK: k, n, then values and ids
    # int8: the input vector of a matrix-vector product, quantized (the widest is 4 n_embd)
    sizes["xq"] = 4 * d if dtype == "int8" else 0
    return sizes


def _matrices(stage: Stage):
    return [t for t in stage.tensors if len(t.shape) == 2 and stage.kind != "embed"]


def is_quantized(t, dtype: str) -> bool:
    """int8 builds quantize every matrix a matrix-vector product streams (and so wte, which
    the embedding shares with the LM head); wpe and all vectors stay float32."""
    return dtype == "int8" and t.role in MATRIX_ROLES


def row_bytes(cols: int, dtype: str) -> int:
    """Bytes one matrix row takes in flash and in the weight tile: float32 values, or int8
    values plus the row's float32 scale (flash_layout.py: DTYPE_INT8_TILED)."""
    return cols * F32 if dtype == "fp32" else cols + F32


def tensor_order(stages: list[Stage]) -> list:
    """The image's tensor table: every stage's tensors in stage order, each stored once (the
    tied wte is embed's and the head's). flash_image.py writes it; the plan indexes it."""
    order, seen = [], set()
    for s in stages:
        for t in s.tensors:
            if t.initializer not in seen:
                seen.add(t.initializer)
                order.append(t)
    return order


def choose_resident(stages: list[Stage], dtype: str, room: int) -> list:
    """The tensors to keep in SRAM across tokens, within `room` bytes: the paper's stage
    grouping, decided per tensor. Every streamed tensor costs its bytes plus one flash
    command (address, dummy clocks, deselect) per token, so I/O time saved per byte of RAM
    is highest for the smallest tensors: take them smallest first while they fit. wpe is
    never a candidate: the embedding reads one row of it per token."""
    candidates = [t for t in tensor_order(stages) if t.role != "wpe"]
    chosen, used = [], 0
    for t in sorted(candidates, key=lambda t: _nbytes(t, dtype)):
        size = _align(_nbytes(t, dtype))
        if used + size <= room:
            chosen.append(t)
            used += size
    return chosen


def make_plan(cfg: GPTConfig, stages: list[Stage], ram: int | None = None, ctx: int | None = None,
              dtype: str = "fp32", board: str = DEFAULT_BOARD, group: str = "auto") -> Plan:
    """group "auto": weight tiles stay moderate (TILE_TARGET) and the RAM left after the
    context and the buffers keeps weights resident; "none": every weight streams every
    token and the tiles take all the RAM left."""
    prof = get_board(board)
    if dtype not in DTYPES:
        raise McugptError(f"unknown --dtype '{dtype}' (known: {', '.join(DTYPES)})")
    if group not in GROUPING:
        raise McugptError(f"unknown --group '{group}' (known: {', '.join(GROUPING)})")
    if ram is None:
        ram = prof.sram_bytes
    if ram > prof.sram_bytes:
        raise McugptError(f"RAM budget of {ram:,} bytes exceeds the {prof.name} board's "
                          f"{prof.sram_bytes:,} bytes of SRAM")
    fixed = _fixed_buffers(cfg, stages, dtype)
    mats = [t for s in stages for t in _matrices(s)]
    min_tile = max(row_bytes(t.shape[1], dtype) for t in mats)        # one row of the widest matrix
    max_tile = max(t.shape[0] * row_bytes(t.shape[1], dtype) for t in mats)  # the largest whole matrix
    head_row = row_bytes(_matrices(stages[-1])[0].shape[1], dtype)
    reserved = STACK_RESERVE + FIRMWARE_RESERVE
    kv_token = cfg.kv_bytes_per_token
    block_bytes = lambda c: min(c, KV_BLOCK_POSITIONS) * cfg.head_dim * F32

    def total(c, tile, kv_in_sram):
        logits = (tile // head_row) * F32
        kv = c * kv_token if kv_in_sram else block_bytes(c)
        return (reserved + sum(_align(b) for b in fixed.values()) + _align(c * F32)
                + WEIGHT_BUFFERS * _align(tile) + _align(logits) + _align(kv))

    def largest_ctx(kv_in_sram, cap):
        if cap < 1 or total(1, min_tile, kv_in_sram) > ram:
            return 0
        lo, hi = 1, cap
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if total(mid, min_tile, kv_in_sram) <= ram else (lo, mid - 1)
        return lo

    psram_ctx_cap = prof.psram_bytes // kv_token
    if ctx is not None:
        if not 1 <= ctx <= cfg.n_ctx:
            raise McugptError(f"--ctx {ctx} is outside 1..{cfg.n_ctx} (the model's context)")
        kv_in_sram = total(ctx, min_tile, True) <= ram or ctx > psram_ctx_cap
        if total(ctx, min_tile, kv_in_sram) > ram:
            raise McugptError(
                f"RAM budget of {ram:,} bytes is too small for {cfg.name} with a context of {ctx} "
                f"tokens: the smallest budget that works is {total(ctx, min_tile, kv_in_sram):,} bytes")
    else:
        in_sram = largest_ctx(True, cfg.n_ctx)
        in_psram = largest_ctx(False, min(cfg.n_ctx, psram_ctx_cap)) if in_sram < cfg.n_ctx else 0
        kv_in_sram = in_sram >= in_psram
        ctx = max(in_sram, in_psram)
        if ctx < 1:
            smallest = min(total(1, min_tile, True), total(1, min_tile, False) if psram_ctx_cap else 1 << 62)
            raise McugptError(
                f"RAM budget of {ram:,} bytes is too small for {cfg.name}: the smallest budget "
                f"that works (context of 1 token) is {smallest:,} bytes")
    tile = max_tile if group == "none" else min(max_tile, max(min_tile, TILE_TARGET))
    if total(ctx, tile, kv_in_sram) > ram:
        lo, hi = min_tile, max_tile  # largest tile that fits beside the context
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if total(ctx, mid, kv_in_sram) <= ram else (lo, mid - 1)
        tile = lo
    head_rows_per_tile = min(cfg.vocab_size, tile // head_row)
    resident = []
    if group == "auto":
        resident = choose_resident(stages, dtype, ram - total(ctx, tile, kv_in_sram) - ALIGN)
    resident_names = {t.initializer for t in resident}

    # arena: fixed offsets, in the order a reader meets them in a stage
    sizes = dict(fixed)
    sizes.update({"scores": ctx * F32, "weights": tile, "weights_next": tile if WEIGHT_BUFFERS == 2 else 0,
                  "logits": head_rows_per_tile * F32,
                  "kv": ctx * kv_token if kv_in_sram else 0,
                  "kv_block": 0 if kv_in_sram else block_bytes(ctx),
                  "resident": sum(_align(_nbytes(t, dtype)) for t in resident)})
    order = ["x", "h", "qkv", "att", "hidden", "xq", "scores", "params", "weights", "weights_next", "logits", "topk",
             "kv_block", "resident", "kv"]
    buffers, offset = [], 0
    for name in order:
        buffers.append({"name": name, "offset": offset, "bytes": sizes[name]})
        offset += _align(sizes[name])
    arena = offset

    stage_rows, unique_weights, seen = [], 0, set()
    for s in stages:
        weight_bytes = sum(_nbytes(t, dtype) for t in s.tensors)
        for t in s.tensors:
            if t.initializer not in seen:
                seen.add(t.initializer)
                unique_weights += _nbytes(t, dtype)
        matrices = []
        for t in _matrices(s):
            rows, cols = t.shape
            per_tile = min(rows, tile // row_bytes(cols, dtype))
            matrices.append({"role": t.role, "rows": rows, "cols": cols, "rows_per_tile": per_tile,
                             "tiles": -(-rows // per_tile), "row_bytes": row_bytes(cols, dtype)})
        macs = sum(m["rows"] * m["cols"] for m in matrices)
        kv_read = kv_write = 0
        if s.kind == "attn_core":  # at the last position of the planned context
            macs = 2 * cfg.n_embd * ctx
            kv_read, kv_write = 2 * cfg.n_embd * F32 * ctx, 2 * cfg.n_embd * F32
        if s.kind == "embed":  # one row of wte (unless resident), one of wpe
            flash = cfg.n_embd * F32
            if s.tensors[0].initializer not in resident_names:
                flash += row_bytes(cfg.n_embd, dtype if is_quantized(s.tensors[0], dtype) else "fp32")
        else:
            flash = sum(_nbytes(t, dtype) for t in s.tensors if t.initializer not in resident_names)
        bufs = STAGE_BUFFERS[s.kind]
        if s.kind == "attn_core" and not kv_in_sram:
            bufs = tuple(b if b != "kv" else "kv_block" for b in bufs)
        if dtype == "int8" and "weights" in bufs:
            bufs = bufs + ("xq",)
        act = sum(sizes[b] for b in bufs if b not in ("params", "weights", "kv", "kv_block", "topk"))
        in_ram = sum(sizes[b] for b in bufs if b not in ("weights", "kv"))
        if "weights" in bufs:
            in_ram += WEIGHT_BUFFERS * max(min(m["rows_per_tile"] * m["row_bytes"], tile) for m in matrices)
        stage_rows.append({
            "index": s.index, "name": s.name, "kind": s.kind, "layer": s.layer,
            "tensors": [{"role": t.role, "initializer": t.initializer, "shape": list(t.shape),
                         "dtype": "int8" if is_quantized(t, dtype) else "fp32"} for t in s.tensors],
            "weight_bytes": weight_bytes, "flash_bytes_per_token": flash, "macs": macs,
            "act_bytes": act, "kv_read_bytes": kv_read, "kv_write_bytes": kv_write,
            "ram_bytes": in_ram, "matrices": matrices,
            "resident": [t.role for t in s.tensors if t.initializer in resident_names],
        })
    largest = max(stage_rows, key=lambda r: r["ram_bytes"])
    kv = {"placement": "sram" if kv_in_sram else "psram", "bytes": ctx * kv_token, "bytes_per_token": kv_token}
    if kv_in_sram:
        kv.update(offset=next(b["offset"] for b in buffers if b["name"] == "kv"),
                  layout="keys [layer][position][n_embd], then values [layer][position][n_embd]")
    else:
        kv.update(offset=0, block_positions=min(ctx, KV_BLOCK_POSITIONS), psram_bytes=prof.psram_bytes,
                  layout="[layer][keys, values][head][position][head_dim] from PSRAM address 0")
    data = {
        "format": 1,
        "plan_id": 0,
        "model": cfg.to_dict(),
        "dtype": dtype,
        "board": prof.to_dict(),
        "ram_budget": ram,
        "ctx": ctx,
        "ctx_limited_by": None if ctx >= cfg.n_ctx else (
            "psram" if not kv_in_sram and ctx == min(cfg.n_ctx, psram_ctx_cap) else "sram"),
        "reserved": {"stack": STACK_RESERVE, "firmware": FIRMWARE_RESERVE},
        "tile_bytes": tile,
        "weight_buffers": WEIGHT_BUFFERS,
        "topk_max": TOPK_MAX,
        "buffers": buffers,
        "arena_bytes": arena,
        "kv": kv,
        "stages": stage_rows,
        "resident": _resident_summary(stages, stage_rows, resident, dtype,
                                      next(b["offset"] for b in buffers if b["name"] == "resident"), group),
        "totals": {
            "stages": len(stages),
            "block_stages": sum(1 for s in stages if s.layer is not None),
            "weight_bytes": unique_weights,
            "flash_bytes_per_token": sum(r["flash_bytes_per_token"] for r in stage_rows),
            "macs_per_token_at_ctx": sum(r["macs"] for r in stage_rows),
        },
        "largest_stage": {"name": largest["name"], "ram_bytes": largest["ram_bytes"]},
        "peak_ram_bytes": arena + STACK_RESERVE + FIRMWARE_RESERVE,
    }
    data["plan_id"] = zlib.crc32(json.dumps(data, sort_keys=True).encode())
    return Plan(data)


def _resident_summary(stages, stage_rows, resident, dtype, base, group) -> dict:
    """Where each resident tensor sits in the arena, by image tensor index, and which runs of
    consecutive stages now run without any flash I/O (the groups the paper proposes)."""
    index = {t.initializer: i for i, t in enumerate(tensor_order(stages))}
    offset, tensors = base, []
    for t in resident:
        tensors.append({"tensor": index[t.initializer], "name": t.initializer, "offset": offset,
                        "bytes": _nbytes(t, dtype)})
        offset += _align(_nbytes(t, dtype))
    groups, run = [], []
    for r in stage_rows:
        if r["flash_bytes_per_token"] == 0 and r["weight_bytes"] > 0 or (run and r["kind"] == "attn_core"):
            run.append(r["name"])
        else:
            if len(run) > 1:
                groups.append(run)
            run = []
    if len(run) > 1:
        groups.append(run)
    return {"group": group, "bytes": offset - base, "tensors": tensors,
            "stages_fully_resident": sum(1 for r in stage_rows if r["weight_bytes"] and not r["flash_bytes_per_token"]),
            "groups_without_flash_io": groups}


def _nbytes(t, dtype: str = "fp32") -> int:
    if len(t.shape) == 2 and is_quantized(t, dtype):
        return t.shape[0] * row_bytes(t.shape[1], dtype)
    n = F32
    for d in t.shape:
        n *= d
    return n
