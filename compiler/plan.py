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

from .config import GPTConfig
from .errors import McugptError
from .partition import Stage
from .sampler import TOPK_MAX

F32 = 4
ALIGN = 32                 # Cortex-M7 cache line: buffers never share one
STACK_RESERVE = 16 << 10   # measured stack use is compared against this at run time
FIRMWARE_RESERVE = 16 << 10  # .data/.bss of the firmware outside the arena
DEFAULT_RAM = 64 << 20     # the board's SRAM map

# Which arena buffers each stage kind touches (for its working-set figure).
STAGE_BUFFERS = {
    "embed": ("x", "h"),
    "ln_1": ("x", "h", "params"),
    "attn_qkv": ("h", "qkv", "params", "weights"),
    "attn_core": ("qkv", "att", "scores", "kv"),
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


def _fixed_buffers(cfg: GPTConfig, stages: list[Stage]) -> dict[str, int]:
    d = cfg.n_embd
    vectors = [t.shape[0] for s in stages for t in s.tensors if len(t.shape) == 1]
    by_kind = {}
    for s in stages:  # layer norms load gain and bias together
        if s.kind in ("ln_1", "ln_2", "head"):
            by_kind[s.kind] = sum(t.shape[0] for t in s.tensors if len(t.shape) == 1)
    params = max(vectors + list(by_kind.values()))
    return {"x": d * F32, "h": d * F32, "qkv": 3 * d * F32, "att": d * F32,
            "hidden": 4 * d * F32, "params": params * F32,
            "topk": 8 + TOPK_MAX * 8}  # runtime_c TopK: k, n, then values and ids


def _matrices(stage: Stage):
    return [t for t in stage.tensors if len(t.shape) == 2 and stage.kind != "embed"]


def make_plan(cfg: GPTConfig, stages: list[Stage], ram: int = DEFAULT_RAM, ctx: int | None = None,
              dtype: str = "fp32") -> Plan:
    fixed = _fixed_buffers(cfg, stages)
    mats = [t for s in stages for t in _matrices(s)]
    min_tile = max(t.shape[1] * F32 for t in mats)           # one row of the widest matrix
    max_tile = max(t.shape[0] * t.shape[1] * F32 for t in mats)  # the largest whole matrix
    head_cols = _matrices(stages[-1])[0].shape[1]
    reserved = STACK_RESERVE + FIRMWARE_RESERVE

    def total(c, tile):
        logits = (tile // (head_cols * F32)) * F32
        return (reserved + sum(_align(b) for b in fixed.values()) + _align(c * F32)
                + _align(tile) + _align(logits) + _align(c * cfg.kv_bytes_per_token))

    if ctx is not None:
        if not 1 <= ctx <= cfg.n_ctx:
            raise McugptError(f"--ctx {ctx} is outside 1..{cfg.n_ctx} (the model's context)")
        if total(ctx, min_tile) > ram:
            raise McugptError(
                f"RAM budget of {ram:,} bytes is too small for {cfg.name} with a context of {ctx} "
                f"tokens: the smallest budget that works is {total(ctx, min_tile):,} bytes")
    else:
        if total(1, min_tile) > ram:
            raise McugptError(
                f"RAM budget of {ram:,} bytes is too small for {cfg.name}: the smallest budget "
                f"that works (context of 1 token) is {total(1, min_tile):,} bytes")
        lo, hi = 1, cfg.n_ctx  # largest context that fits, by bisection
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if total(mid, min_tile) <= ram else (lo, mid - 1)
        ctx = lo
    tile = max_tile
    if total(ctx, tile) > ram:
        lo, hi = min_tile, max_tile  # largest tile that fits beside the context
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if total(ctx, mid) <= ram else (lo, mid - 1)
        tile = lo
    head_rows_per_tile = min(cfg.vocab_size, tile // (head_cols * F32))

    # arena: fixed offsets, in the order a reader meets them in a stage
    sizes = dict(fixed)
    sizes.update({"scores": ctx * F32, "weights": tile, "logits": head_rows_per_tile * F32,
                  "kv": ctx * cfg.kv_bytes_per_token})
    order = ["x", "h", "qkv", "att", "hidden", "scores", "params", "weights", "logits", "topk", "kv"]
    buffers, offset = [], 0
    for name in order:
        buffers.append({"name": name, "offset": offset, "bytes": sizes[name]})
        offset += _align(sizes[name])
    arena = offset

    stage_rows, unique_weights, seen = [], 0, set()
    for s in stages:
        weight_bytes = sum(_nbytes(t) for t in s.tensors)
        for t in s.tensors:
            if t.initializer not in seen:
                seen.add(t.initializer)
                unique_weights += _nbytes(t)
        matrices = []
        for t in _matrices(s):
            rows, cols = t.shape
            per_tile = min(rows, tile // (cols * F32))
            matrices.append({"role": t.role, "rows": rows, "cols": cols, "rows_per_tile": per_tile,
                             "tiles": -(-rows // per_tile)})
        macs = sum(m["rows"] * m["cols"] for m in matrices)
        kv_read = kv_write = 0
        if s.kind == "attn_core":  # at the last position of the planned context
            macs = 2 * cfg.n_embd * ctx
            kv_read, kv_write = 2 * cfg.n_embd * F32 * ctx, 2 * cfg.n_embd * F32
        flash = 2 * cfg.n_embd * F32 if s.kind == "embed" else weight_bytes
        bufs = STAGE_BUFFERS[s.kind]
        act = sum(sizes[b] for b in bufs if b not in ("params", "weights", "kv", "topk"))
        in_ram = sum(sizes[b] for b in bufs if b not in ("weights", "kv"))
        if "weights" in bufs:
            in_ram += max(min(m["rows_per_tile"] * m["cols"] * F32, tile) for m in matrices)
        stage_rows.append({
            "index": s.index, "name": s.name, "kind": s.kind, "layer": s.layer,
            "tensors": [{"role": t.role, "initializer": t.initializer, "shape": list(t.shape)} for t in s.tensors],
            "weight_bytes": weight_bytes, "flash_bytes_per_token": flash, "macs": macs,
            "act_bytes": act, "kv_read_bytes": kv_read, "kv_write_bytes": kv_write,
            "ram_bytes": in_ram, "matrices": matrices,
        })
    largest = max(stage_rows, key=lambda r: r["ram_bytes"])
    data = {
        "format": 1,
        "plan_id": 0,
        "model": cfg.to_dict(),
        "dtype": dtype,
        "ram_budget": ram,
        "ctx": ctx,
        "ctx_limited_by_ram": ctx < cfg.n_ctx,
        "reserved": {"stack": STACK_RESERVE, "firmware": FIRMWARE_RESERVE},
        "tile_bytes": tile,
        "topk_max": TOPK_MAX,
        "buffers": buffers,
        "arena_bytes": arena,
        "kv": {"placement": "sram", "offset": next(b["offset"] for b in buffers if b["name"] == "kv"),
               "bytes": sizes["kv"], "bytes_per_token": cfg.kv_bytes_per_token},
        "stages": stage_rows,
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


def _nbytes(t) -> int:
    n = F32
    for d in t.shape:
        n *= d
    return n
