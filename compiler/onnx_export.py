"""Export GPT-2's decode step to ONNX, built node by node from the weights with `onnx.helper`.

One call of the graph computes one token, as the firmware does:
    inputs   token (int64 [1]), position (int64 [1]),
             past_key_i, past_value_i (float [n_head, past, head_dim]) for every layer i
    outputs  logits (float [1, vocab]),
             present_key_i, present_value_i (float [n_head, past + 1, head_dim])
Standard operators only, opset 20 (LayerNormalization, Gelu with approximate="tanh").
The residual stream is a [1, n_embd] row. Projections are MatMul(x, W[in, out]) + bias, the
LM head is Gemm(x, wte, transB=1) sharing the embedding's initializer, as GPT-2 ties them.
Large models keep their weights in `model.onnx.data` (external data, 4 KiB aligned).
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .config import GPTConfig

OPSET = 20
EXTERNAL_DATA_THRESHOLD = 64 << 20  # models above this many weight bytes use external data
DATA_ALIGN = 4096


class _GraphBuilder:
    def __init__(self):
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []

    def node(self, op, inputs, n_out=1, name=None, **attrs):
        name = name or f"{op}_{len(self.nodes)}"
        outs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs if n_out > 1 else outs[0]

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name


def build_decode_graph(cfg: GPTConfig, weights: dict[str, np.ndarray]) -> tuple[onnx.GraphProto, dict]:
    """The decode-step graph with weight initializers left empty; returns (graph, name->array)."""
    d, nh, hd, eps = cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.layer_norm_epsilon
    g = _GraphBuilder()
    arrays = {}

    def weight(name):
        arrays[name] = weights[name]
        return name

    g.inputs += [helper.make_tensor_value_info("token", TensorProto.INT64, [1]),
                 helper.make_tensor_value_info("position", TensorProto.INT64, [1])]
    heads_shape = g.const("shape_heads", np.array([1, nh, hd], np.int64))
    row_shape = g.const("shape_row", np.array([1, d], np.int64))
    scale = g.const("attn_scale", np.array(1.0 / np.sqrt(hd), np.float32))

    def linear(x, w, b, name):
        return g.node("Add", [g.node("MatMul", [x, weight(w)], name=f"{name}_matmul"), weight(b)],
                      name=f"{name}_bias")

    # embed
    x = g.node("Add", [g.node("Gather", [weight("wte.weight"), "token"], name="wte_gather"),
                       g.node("Gather", [weight("wpe.weight"), "position"], name="wpe_gather")],
               name="embed_add")
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        past_k, past_v = f"past_key_{i}", f"past_value_{i}"
        for nm in (past_k, past_v):
            g.inputs.append(helper.make_tensor_value_info(nm, TensorProto.FLOAT, [nh, f"past_{i}", hd]))
        h = g.node("LayerNormalization", [x, weight(p + "ln_1.weight"), weight(p + "ln_1.bias")],
                   name=f"h{i}_ln_1", epsilon=eps, axis=-1)
        qkv = linear(h, p + "attn.c_attn.weight", p + "attn.c_attn.bias", f"h{i}_c_attn")
        q, k, v = g.node("Split", [qkv], n_out=3, name=f"h{i}_split_qkv", axis=1, num_outputs=3)

        def to_heads(t, what):  # [1, d] -> [nh, 1, hd]
            r = g.node("Reshape", [t, heads_shape], name=f"h{i}_{what}_reshape")
            return g.node("Transpose", [r], name=f"h{i}_{what}_heads", perm=[1, 0, 2])

        present_k = g.node("Concat", [past_k, to_heads(k, "k")], name=f"h{i}_present_key", axis=1)
        present_v = g.node("Concat", [past_v, to_heads(v, "v")], name=f"h{i}_present_value", axis=1)
        k_t = g.node("Transpose", [present_k], name=f"h{i}_k_t", perm=[0, 2, 1])
        scores = g.node("Mul", [g.node("MatMul", [to_heads(q, "q"), k_t], name=f"h{i}_qk"), scale],
                        name=f"h{i}_scale")
        probs = g.node("Softmax", [scores], name=f"h{i}_softmax", axis=-1)
        att = g.node("MatMul", [probs, present_v], name=f"h{i}_av")  # [nh, 1, hd]
        att = g.node("Transpose", [att], name=f"h{i}_merge_heads", perm=[1, 0, 2])
        att = g.node("Reshape", [att, row_shape], name=f"h{i}_att_row")
        x = g.node("Add", [x, linear(att, p + "attn.c_proj.weight", p + "attn.c_proj.bias", f"h{i}_attn_proj")],
                   name=f"h{i}_attn_residual")
        h = g.node("LayerNormalization", [x, weight(p + "ln_2.weight"), weight(p + "ln_2.bias")],
                   name=f"h{i}_ln_2", epsilon=eps, axis=-1)
        hidden = g.node("Gelu", [linear(h, p + "mlp.c_fc.weight", p + "mlp.c_fc.bias", f"h{i}_c_fc")],
                        name=f"h{i}_gelu", approximate="tanh")
        x = g.node("Add", [x, linear(hidden, p + "mlp.c_proj.weight", p + "mlp.c_proj.bias", f"h{i}_mlp_proj")],
                   name=f"h{i}_mlp_residual")
        for nm, t in ((f"present_key_{i}", present_k), (f"present_value_{i}", present_v)):
            g.nodes.append(helper.make_node("Identity", [t], [nm], name=f"h{i}_{nm}"))
            g.outputs.append(helper.make_tensor_value_info(nm, TensorProto.FLOAT, [nh, f"past_{i}+1", hd]))
    # head
    x = g.node("LayerNormalization", [x, weight("ln_f.weight"), weight("ln_f.bias")],
               name="ln_f", epsilon=eps, axis=-1)
    g.nodes.append(helper.make_node("Gemm", [x, "wte.weight"], ["logits"], name="lm_head", transB=1))
    g.outputs.insert(0, helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, cfg.vocab_size]))
    graph = helper.make_graph(g.nodes, f"{cfg.name}_decode_step", g.inputs, g.outputs, g.inits)
    return graph, arrays


def export_onnx(cfg: GPTConfig, weights: dict[str, np.ndarray], path: Path | None = None,
                external: bool | None = None, progress=None) -> onnx.ModelProto:
    """Build the decode-step model; with `path`, also save it (weights in `<name>.data` when
    `external`, by default when the weights exceed EXTERNAL_DATA_THRESHOLD)."""
    graph, arrays = build_decode_graph(cfg, weights)
    total = sum(a.nbytes for a in arrays.values())
    if external is None:
        external = total > EXTERNAL_DATA_THRESHOLD
    if external and path is None:
        raise ValueError("external data needs a path")
    if external:
        data_name = Path(path).name + ".data"
        offset = 0
        with open(Path(path).parent / data_name, "wb") as f:
            bar = progress(total=total, unit="B", unit_scale=True, desc="onnx weights") if progress else None
            for name, a in arrays.items():
                pad = -offset % DATA_ALIGN
                f.write(b"\0" * pad)
                offset += pad
                t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=a.shape)
                for key, value in (("location", data_name), ("offset", offset), ("length", a.nbytes)):
                    t.external_data.add(key=key, value=str(value))
                t.data_location = TensorProto.EXTERNAL
                f.write(np.ascontiguousarray(a, dtype="<f4").data)
                offset += a.nbytes
                graph.initializer.append(t)
                if bar:
                    bar.update(a.nbytes)
            if bar:
                bar.close()
    else:
        graph.initializer.extend(numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in arrays.items())
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="mcugpt", producer_version="0.1")
    model.ir_version = 9  # onnxruntime releases of 2024 and later read IR 9
    if path is not None:
        onnx.save_model(model, str(path))
        onnx.checker.check_model(str(path))
    else:
        onnx.checker.check_model(model)
    return model


def initializer_array(tensor: onnx.TensorProto, base_dir: Path | None) -> np.ndarray:
    """An initializer's values; external data is memory-mapped, not read into memory."""
    if tensor.data_location == TensorProto.EXTERNAL:
        info = {e.key: e.value for e in tensor.external_data}
        shape = tuple(tensor.dims)
        count = int(np.prod(shape)) if shape else 1
        return np.memmap(Path(base_dir) / info["location"], dtype="<f4", mode="r",
                         offset=int(info.get("offset", 0)), shape=shape or (count,))
    return numpy_helper.to_array(tensor)
