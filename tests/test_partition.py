"""The partitioner cuts the ONNX graph into GPT-2's atomic stages by structure alone."""

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from compiler.onnx_export import export_onnx
from compiler.partition import partition, stage_model
from target.errors import McugptError
from target.stages import BLOCK_STAGES


def kinds(stages):
    return [s.kind for s in stages]


def test_tiny_gives_embed_six_stages_per_block_and_head(tiny_stages):
    assert kinds(tiny_stages) == ["embed"] + list(BLOCK_STAGES) * 2 + ["head"]
    assert [s.layer for s in tiny_stages[1:7]] == [0] * 6


def test_distilgpt2_gives_36_block_stages(distil):
    cfg, w = distil
    stages = partition(export_onnx(cfg, w, external=False))
    assert sum(1 for s in stages if s.layer is not None) == 36 and len(stages) == 38


def test_stage_weights_are_the_right_tensors(tiny_stages):
    by_name = {s.name: s for s in tiny_stages}
    qkv = by_name["h1.attn_qkv"].tensors
    assert [(t.role, t.initializer, t.shape, t.transpose) for t in qkv] == [
        ("w", "h.1.attn.c_attn.weight", (192, 64), True), ("b", "h.1.attn.c_attn.bias", (192,), False)]
    mlp = by_name["h0.mlp"].tensors
    assert [t.initializer for t in mlp] == ["h.0.mlp.c_fc.weight", "h.0.mlp.c_fc.bias",
                                            "h.0.mlp.c_proj.weight", "h.0.mlp.c_proj.bias"]
    head = by_name["head"].tensors
    assert head[2].initializer == "wte.weight" and head[2].transpose is False  # tied, already [vocab, d]
    assert by_name["h0.attn_core"].tensors == []
    assert {"past_key_0", "past_value_0"} <= set(by_name["h0.attn_core"].inputs)
    assert {"present_key_0", "present_value_0"} <= set(by_name["h0.attn_core"].outputs)


def test_stages_run_one_after_another_equal_the_whole_graph(tiny, tiny_onnx, tiny_stages):
    cfg, _ = tiny
    rng = np.random.default_rng(0)
    past_len = 5
    feeds = {"token": np.array([1234], np.int64), "position": np.array([past_len], np.int64)}
    for i in range(cfg.n_layer):
        for kind in ("key", "value"):
            feeds[f"past_{kind}_{i}"] = rng.standard_normal((cfg.n_head, past_len, cfg.head_dim)).astype(np.float32)
    whole = ort.InferenceSession(tiny_onnx.SerializeToString())
    expected = dict(zip([o.name for o in whole.get_outputs()], whole.run(None, feeds)))

    values = dict(feeds)
    for st in tiny_stages:
        sub = stage_model(tiny_onnx, st)
        onnx.checker.check_model(sub)
        sess = ort.InferenceSession(sub.SerializeToString())
        outs = sess.run(None, {i.name: values[i.name] for i in sess.get_inputs()})
        values.update(zip([o.name for o in sess.get_outputs()], outs))
    for name, want in expected.items():
        np.testing.assert_array_equal(values[name], want)


def test_partition_does_not_rely_on_names(tiny_onnx, tiny_stages):
    """Rename every node and every internal tensor: the same stages come out."""
    m = copy.deepcopy(tiny_onnx)
    keep = {i.name for i in m.graph.input} | {o.name for o in m.graph.output} | {t.name for t in m.graph.initializer}
    rename = {}
    for k, n in enumerate(m.graph.node):
        n.name = f"n{k}"
        for j, out in enumerate(n.output):
            if out not in keep:
                rename[out] = f"t{k}_{j}"
                n.output[j] = rename[out]
    for n in m.graph.node:
        for j, inp in enumerate(n.input):
            n.input[j] = rename.get(inp, inp)
    stages = partition(m)
    assert [(s.kind, s.layer, len(s.nodes)) for s in stages] == [(s.kind, s.layer, len(s.nodes)) for s in tiny_stages]


def _without(model, predicate):
    m = copy.deepcopy(model)
    victims = [n for n in m.graph.node if predicate(n)]
    n = victims[0]
    # bypass the node: its consumers read its first input instead
    for other in m.graph.node:
        for j, inp in enumerate(other.input):
            if inp == n.output[0]:
                other.input[j] = n.input[0]
    m.graph.node.remove(n)
    return m


def test_a_graph_without_gpt2s_structure_is_refused(tiny_onnx):
    no_softmax = _without(tiny_onnx, lambda n: n.op_type == "Softmax")
    with pytest.raises(McugptError, match="expected the attention branch of block 0"):
        partition(no_softmax)
    no_ln = onnx.ModelProto()
    no_ln.CopyFrom(tiny_onnx)
    for n in no_ln.graph.node:
        if n.op_type == "LayerNormalization":
            n.op_type = "LpNormalization"
    with pytest.raises(McugptError, match="no LayerNormalization"):
        partition(no_ln)
