"""`mcugpt run --check-stages`: which stage's output on the board is the first to differ.

When the board's tokens or logits differ from the reference, the stage to blame is the first
whose output differs. This captures the output of every stage of one position on the board
and compares it with
  (a) the numpy reference (compiler/reference.py), which does the firmware's arithmetic in
      the firmware's order, int8 included: every stage must agree bit for bit. The
      reference runs its own chain of activations, so every stage after a broken one
      differs too: the first that differs is the one to read;
  (b) onnxruntime running that stage's own ONNX subgraph (compiler/partition.py), fed the
      board's own input to the stage (its KV cache past included), so each stage is judged
      alone. Its float32 kernels round in another order, and the graph is float32 where an
      int8 build quantizes, so this comparison has a tolerance (ONNX_RTOL).

The position is the prompt's last: its head runs (its logits choose the first token, and the
firmware dumps them through the logits channel) and its attention reads the most cached
positions. The prompt runs one position per forward pass (prefill chunk 1), so every
activation buffer's first slot holds that position's values.

How the board's values are read: the firmware writes each stage's index to TRACE.STAGE as
the stage starts. At that moment the previous stage has ended, and the board calls
`StageCapture` (Board.run on_stage_end), which reads the buffer that stage wrote
(target/stages.py: the kind's first `writes`) at the arena address the plan gives it. The
head writes no buffer; its logits come through the logits channel (MAILBOX_FLAG_DUMP_LOGITS).
attn_qkv's output is kept at every earlier position too: its keys and values are what the KV
cache holds, and onnxruntime's attention reads them as its past.
"""

import numpy as np
import onnx

from compiler.onnx_export import initializer_array
from compiler.partition import partition, stage_model
from compiler.plan import Plan, is_quantized
from compiler.reference import KVCache, Reference
from target.errors import McugptError
from target.stages import ACTIVATIONS, KIND_BY_NAME, dim, stage_name, stage_sequence

# onnxruntime vs the board, per stage: the largest absolute difference may be this fraction of
# the largest |value| of onnxruntime's output (relative to the whole vector: an elementwise
# relative error means nothing where a layer norm's output crosses zero).
# - float32 stages: both sides round each float32 operation once, in different orders; on
#   the tiny model (every board, fp32 and int8 builds) they stay within about 5e-7 of the vector's
#   scale, a few ulps. 1e-4, the run's logits tolerance (mcugpt/run.py), leaves room for
#   wider models' longer sums and still catches a wrong constant (a GELU coefficient off by
#   5% moves the MLP's output by 1e-3 of its scale).
# - quantized stages (an int8 build's stages with an int8 matrix or the tied wte, and
#   attn_core with an int8 KV cache): the float32 graph rounds no weight, input or cached key
#   to int8. Per-row and per-vector int8 scales give each product an error of about 1/127 of
#   its operands' largest values, which partly cancels over the sum: on the tiny model these
#   stages differ from onnxruntime by up to 1.9% of their scale. 0.1 flags only what
#   quantization cannot explain; the reference comparison, exact, is the one that decides.
ONNX_RTOL = {"fp32": 1e-4, "quantized": 0.1}


def checked_position(n_prompt: int) -> int:
    return n_prompt - 1


def stage_is_quantized(plan: Plan, kind) -> bool:
    return (any(is_quantized(r, plan.dtype) for r in kind.roles)
            or (kind.attention and plan.kv.dtype == "int8"))


def output_buffer(kind) -> str:
    """The activation a stage kind hands on (target/stages.py); the head hands on its logits."""
    return kind.writes[0] if kind.writes else "logits"


class StageCapture:
    """Board.run's on_stage_end: keeps each stage's output at `position`, and attn_qkv's
    at every position before it (the keys and values the KV cache holds)."""

    def __init__(self, board, plan: Plan, position: int):
        self.board, self.plan, self.position = board, plan, position
        arenas = {"sram": board.symbol_address("arena")}
        if plan.tcm_bytes:
            arenas["dtcm"] = board.symbol_address("tcm_arena")
        self.where = {}   # activation -> (address of its first slot, floats)
        for name, expr in ACTIVATIONS.items():
            b = plan.buffer(name)
            self.where[name] = (arenas[b.region] + b.offset, dim(expr, plan.model))
        self.kinds = [KIND_BY_NAME[s.kind] for s in plan.stages]
        self.outputs: dict[int, np.ndarray] = {}            # stage index -> output at `position`
        self.qkv: dict[tuple[int, int], np.ndarray] = {}    # (layer, position) -> attn_qkv's output

    def __call__(self, stage: int, position: int | None) -> None:
        if position is None or position > self.position:
            return
        kind = self.kinds[stage]
        if kind.name == "attn_qkv":
            self.qkv[(self.plan.stages[stage].layer, position)] = self._read("qkv")
        if position == self.position and kind.writes:
            self.outputs[stage] = self._read(kind.writes[0])

    def _read(self, name: str) -> np.ndarray:
        address, count = self.where[name]
        return self.board.read_f32(address, count)


def reference_outputs(model: Reference, prompt_tokens: list[int], n_ctx: int) -> list[np.ndarray]:
    """Every stage's output at the prompt's last position, in stage order."""
    kv = KVCache.empty(model.cfg, n_ctx)
    out = []
    last = checked_position(len(prompt_tokens))

    def keep(kind, layer, a):
        out.append(np.array(getattr(a, output_buffer(kind)), np.float32))

    for pos, tok in enumerate(prompt_tokens):
        model.forward(tok, pos, kv, on_stage=keep if pos == last else None)
    return out


def _inline_weights(sub: onnx.ModelProto, base_dir) -> None:
    """Replace the subgraph's external-data initializers (GPT-2 124M's model.onnx.data) by
    their values: onnxruntime loads a model from bytes with no folder to resolve them in."""
    for i, t in enumerate(sub.graph.initializer):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            sub.graph.initializer[i].CopyFrom(
                onnx.numpy_helper.from_array(np.asarray(initializer_array(t, base_dir), np.float32), t.name))


def onnx_outputs(build, board_outputs: list[np.ndarray], capture: StageCapture,
                 prompt_tokens: list[int], kv_round_trip) -> list[np.ndarray]:
    """onnxruntime's output of each stage's subgraph, fed the board's input to that stage: the
    board's outputs of the stages before it, and as attention's past the keys and values of
    the board's attn_qkv at the earlier positions, as the cache holds them (`kv_round_trip`)."""
    import onnxruntime as ort
    path = build.path / "model.onnx"
    if not path.is_file():
        raise McugptError(f"{build.path}: no model.onnx; rerun `mcugpt compile --out {build.path}`")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:   # protobuf's DecodeError, among others
        raise McugptError(f"{path}: not an ONNX model ({type(e).__name__}: {e})") from None
    stages = partition(model)
    names = [s.name for s in build.plan.stages]
    if [s.name for s in stages] != names:
        raise McugptError(f"{path}: its stages {[s.name for s in stages]} are not the plan's {names}")
    cfg = build.plan.model
    n, pos = cfg.n_embd, capture.position
    # graph inputs, as compiler/onnx_export.py names them
    values = {"token": np.array([prompt_tokens[pos]], np.int64), "position": np.array([pos], np.int64)}
    for layer in range(cfg.n_layer):
        for name, part in (("past_key", 1), ("past_value", 2)):
            rows = [kv_round_trip(capture.qkv[(layer, t)][part * n:(part + 1) * n]) for t in range(pos)]
            past = np.array(rows, np.float32).reshape(pos, cfg.n_head, cfg.head_dim)
            values[f"{name}_{layer}"] = np.ascontiguousarray(past.transpose(1, 0, 2))
    read_later = {t for s in stages for t in s.inputs} | {model.graph.output[0].name}   # + the logits
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1   # the machine is shared; these graphs are small
    out = []
    for st, board_out in zip(stages, board_outputs):
        wanted = [t for t in st.outputs if t in read_later]
        try:
            sub = stage_model(model, st)
            _inline_weights(sub, build.path)
            session = ort.InferenceSession(sub.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            got = session.run(wanted, {t: values[t] for t in st.inputs})
        except Exception as e:   # onnxruntime's errors are not RuntimeErrors; a missing model.onnx.data
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise McugptError(f"{path}: onnxruntime cannot run stage {st.index} ({st.name}): {why}") from None
        out.append(np.concatenate([g.reshape(-1) for g in got]).astype(np.float32))
        # what later stages read: the board's output, cut as the graph cuts it (q, k, v)
        pieces = np.split(board_out, np.cumsum([g.size for g in got])[:-1])
        for t, g, piece in zip(wanted, got, pieces):
            values[t] = piece.reshape(g.shape).astype(np.float32)
    return out


def check_stages(build, capture: StageCapture, board_logits: np.ndarray, prompt_tokens: list[int]) -> dict:
    """The per-stage comparison: a row per stage, and the first stage that differs."""
    plan = build.plan
    cfg, weights, _ = build.model()
    ref_model = Reference(cfg, weights, dtype=plan.dtype, kv_dtype=plan.kv.dtype)
    sequence = [stage_name(k.name, layer) for k, layer in stage_sequence(cfg.n_layer)]
    if sequence != [s.name for s in plan.stages]:
        raise McugptError(f"the plan's stages {[s.name for s in plan.stages]} are not the reference's {sequence}")
    board = []
    for s, kind in zip(plan.stages, capture.kinds):
        if kind.writes and s.index not in capture.outputs:
            raise McugptError(f"stage {s.index} ({s.name}) did not run at position {capture.position} on the board")
        board.append(capture.outputs[s.index] if kind.writes else np.asarray(board_logits, np.float32))
    ref = reference_outputs(ref_model, prompt_tokens, plan.ctx)
    kv_round_trip = ref_model.kv_round_trip if plan.kv.dtype == "int8" else (lambda x: x)
    ort_out = onnx_outputs(build, board, capture, prompt_tokens, kv_round_trip)

    rows = []
    for s, kind, b, r, o in zip(plan.stages, capture.kinds, board, ref, ort_out):
        quantized = stage_is_quantized(plan, kind)
        rtol = ONNX_RTOL["quantized" if quantized else "fp32"]
        scale = float(np.max(np.abs(o)))
        onnx_err = float(np.max(np.abs(b - o)))
        rows.append({
            "index": s.index, "stage": s.name, "kind": s.kind, "layer": s.layer,
            "buffer": output_buffer(kind), "values": int(b.size), "max_abs": float(np.max(np.abs(b))),
            # bit for bit: the same float32 bit patterns (NaN and -0.0 included)
            "reference_identical": b.shape == r.shape and bool(np.array_equal(b.view(np.uint32), r.view(np.uint32))),
            "reference_max_abs_error": float(np.max(np.abs(b - r))) if b.shape == r.shape else float("inf"),
            "onnx_max_abs_error": onnx_err, "onnx_tolerance": rtol * scale, "onnx_rtol": rtol,
            "onnx_within": bool(onnx_err <= rtol * scale), "quantized": quantized,
        })
    first = next((row["stage"] for row in rows if not row["reference_identical"]), None)
    first_onnx = next((row["stage"] for row in rows if not row["onnx_within"]), None)
    return {"position": capture.position, "token": prompt_tokens[capture.position], "prefill_chunk": 1,
            "rows": rows, "first_differing_stage": first, "first_onnx_exceeding_stage": first_onnx,
            "onnx_input": "the board's own input to each stage (and its KV cache past)",
            "onnx_rtol": ONNX_RTOL}


def stage_table(check: dict) -> str:
    """The per-stage comparison as text: a line per stage, then the verdicts."""
    title = (f"stage check  position {check['position']} (the prompt's last, token {check['token']}), "
             f"prefill chunk 1; onnxruntime fed the board's input to each stage")
    header = (f"{'#':>3}  {'stage':<14} {'output':<7} {'values':>6}  {'max |board|':>11}  "
              f"{'vs reference':>14}  {'vs onnxruntime':>14}  {'tolerance':>9}")
    lines = [title, header]
    for row in check["rows"]:
        ref = "identical" if row["reference_identical"] else f"{row['reference_max_abs_error']:.3g} DIFF"
        onnx_mark = "" if row["onnx_within"] else "  OVER"
        lines.append(f"{row['index']:>3}  {row['stage']:<14} {row['buffer']:<7} {row['values']:>6}  "
                     f"{row['max_abs']:>11.4g}  {ref:>14}  {row['onnx_max_abs_error']:>14.3g}  "
                     f"{row['onnx_tolerance']:>9.3g}{onnx_mark}")
    first = check["first_differing_stage"]
    lines.append("first stage differing from the reference: " +
                 (first if first else "none (every stage bit-identical)"))
    first_onnx = check["first_onnx_exceeding_stage"]
    lines.append("first stage outside the onnxruntime tolerance: " +
                 (first_onnx if first_onnx else "none") +
                 f" (tolerance: {ONNX_RTOL['fp32']:g} of the stage's largest |value| in float32, "
                 f"{ONNX_RTOL['quantized']:g} where int8 quantizes)")
    return "\n".join(lines)


def failure(check: dict) -> str | None:
    """The one-line error when a stage differs from the reference, else None."""
    first = check["first_differing_stage"]
    if first is None:
        return None
    row = next(r for r in check["rows"] if r["stage"] == first)
    before = "it is the first stage" if row["index"] == 0 else \
        f"the {row['index']} stages before it are bit-identical"
    return (f"stage {row['index']} ({first}) is the first whose output differs from the numpy reference at "
            f"position {check['position']}: {row['buffer']} differs by up to {row['reference_max_abs_error']:.3g} "
            f"(its largest |value| {row['max_abs']:.3g}); {before}")
