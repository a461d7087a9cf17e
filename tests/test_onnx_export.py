"""The ONNX export is standard ONNX that onnxruntime runs to the reference's logits."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from compiler.config import load_preset
from compiler.onnx_export import OPSET, export_onnx
from compiler.partition import partition
from compiler.reference import KVCache, Reference
from compiler.weights import synthetic_weights

# onnxruntime and numpy sum in different orders; float32 logits of magnitude ~10 agree to this
LOGIT_ATOL, LOGIT_RTOL = 1e-4, 1e-4
PROMPT = [464, 2068, 7586, 21831, 18045, 625, 262]


def run_decode(session, cfg, tokens):
    """Feed `tokens` one at a time through the ONNX decode step; yield logits per step."""
    past = {f"past_{kind}_{i}": np.zeros((cfg.n_head, 0, cfg.head_dim), np.float32)
            for i in range(cfg.n_layer) for kind in ("key", "value")}
    names = [o.name for o in session.get_outputs()]
    for pos, t in enumerate(tokens):
        outs = session.run(None, {"token": np.array([t], np.int64), "position": np.array([pos], np.int64), **past})
        for name, value in zip(names[1:], outs[1:]):
            past[name.replace("present_", "past_")] = value
        yield outs[0][0]


@pytest.mark.parametrize("model", ["tiny", "distilgpt2"])
def test_onnxruntime_reproduces_the_reference(model, tiny, distil):
    cfg, w = {"tiny": tiny, "distilgpt2": distil}[model]
    m = export_onnx(cfg, w, external=False)
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version == OPSET >= 17
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    ref, kv = Reference(cfg, w), KVCache.empty(cfg, cfg.n_ctx)
    for pos, (t, got) in enumerate(zip(PROMPT, run_decode(session, cfg, PROMPT))):
        np.testing.assert_allclose(got, ref.forward(t, pos, kv), atol=LOGIT_ATOL, rtol=LOGIT_RTOL)


def test_graph_uses_standard_operators_only(tiny_onnx):
    ops = {n.op_type for n in tiny_onnx.graph.node}
    assert ops <= {"Gather", "Add", "LayerNormalization", "MatMul", "Split", "Reshape", "Transpose",
                   "Concat", "Mul", "Softmax", "Gelu", "Gemm", "Identity"}
    assert all(n.domain in ("", "ai.onnx") for n in tiny_onnx.graph.node)


def test_large_models_use_external_data_and_still_check(tmp_path):
    cfg = load_preset("gpt2-medium")
    path = tmp_path / "model.onnx"
    export_onnx(cfg, synthetic_weights(cfg), path)
    assert path.stat().st_size < 1 << 20  # the graph only; 1.4 GB of weights sit beside it
    assert (tmp_path / "model.onnx.data").stat().st_size >= cfg.n_params() * 4
    onnx.checker.check_model(str(path))
    stages = partition(onnx.load(str(path), load_external_data=False))
    assert sum(1 for s in stages if s.layer is not None) == 24 * 6
