"""Cut the ONNX decode graph into atomic stages, by its structure.

The evidence is the graph's operators and data flow, not node names:
- the residual stream starts where the first LayerNormalization reads it; everything before
  is `embed`;
- each residual Add that reads the stream closes a branch; the branch is every node between
  the stream and the Add's other input. A branch with a Softmax and two weighted MatMuls is
  attention, one without a Softmax and with two weighted MatMuls is the MLP;
- attention splits further: its LayerNormalization (`ln_1`), the first weighted MatMul with
  its bias Add and Split (`attn_qkv`), the last weighted MatMul with its bias Add and the
  residual Add (`attn_proj`), and what is between, which has no weights (`attn_core`);
- the stream's last LayerNormalization and everything after it is the `head`.
A graph that does not have this shape is refused with a message naming the node.
"""

from collections import defaultdict
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto, helper

from target.errors import McugptError
from target.stages import KIND_BY_NAME, MATRIX, stage_name


@dataclass(frozen=True)
class StageTensor:
    role: str          # the kind's role it fills (target/stages.py)
    initializer: str   # name of the ONNX initializer holding it
    transpose: bool    # stored transposed in flash: ONNX MatMul weights are [in, out]
    shape: tuple       # as stored in flash


@dataclass
class Stage:
    index: int
    kind: str
    layer: int | None
    nodes: list = field(default_factory=list)     # onnx NodeProto, in graph order
    inputs: list = field(default_factory=list)    # activation tensors read from other stages
    outputs: list = field(default_factory=list)   # tensors later stages or the graph read
    tensors: list = field(default_factory=list)   # StageTensor, in the kind's role order

    @property
    def name(self) -> str:
        return stage_name(self.kind, self.layer)


class _Graph:
    def __init__(self, graph: onnx.GraphProto):
        self.nodes = list(graph.node)
        self.inits = {t.name: t for t in graph.initializer}
        self.weights = {n for n, t in self.inits.items()
                        if t.data_type == TensorProto.FLOAT and len(t.dims) >= 1}
        self.producer = {out: i for i, n in enumerate(self.nodes) for out in n.output}
        self.consumers = defaultdict(list)
        for i, n in enumerate(self.nodes):
            for name in n.input:
                self.consumers[name].append(i)
        self.graph_outputs = {o.name for o in graph.output}

    def ancestors(self, tensor: str, stop: str) -> set[int]:
        """Nodes that `tensor` depends on, not looking past the tensor `stop`."""
        seen, todo = set(), [tensor]
        while todo:
            t = todo.pop()
            if t == stop or t not in self.producer:
                continue
            i = self.producer[t]
            if i not in seen:
                seen.add(i)
                todo.extend(self.nodes[i].input)
        return seen

    def weight_input(self, i: int) -> str | None:
        found = [t for t in self.nodes[i].input if t in self.weights]
        return found[0] if found else None

    def describe(self, i: int) -> str:
        n = self.nodes[i]
        return f"node #{i} {n.op_type} '{n.name}'"

    def only_consumer(self, i: int) -> int | None:
        users = {c for out in self.nodes[i].output for c in self.consumers[out]}
        return users.pop() if len(users) == 1 else None


def _refuse(msg: str):
    raise McugptError(f"ONNX graph does not have GPT-2's structure: {msg}")


def partition(model: onnx.ModelProto) -> list[Stage]:
    g = _Graph(model.graph)
    lns = [i for i, n in enumerate(g.nodes) if n.op_type == "LayerNormalization"]
    if not lns:
        _refuse("no LayerNormalization node")
    assigned: dict[int, Stage] = {}
    stages: list[Stage] = []

    def add_stage(kind, layer, node_ids, sources):
        """sources: per role of the kind, in its order, the weighted MatMul/Gemm node of a
        MATRIX role or the initializer of any other role."""
        roles = KIND_BY_NAME[kind].roles
        assert len(sources) == len(roles), (kind, sources)
        tensors = [matrix(r.name, src) if r.access == MATRIX else vector(r.name, src)
                   for r, src in zip(roles, sources)]
        st = Stage(len(stages), kind, layer, tensors=tensors)
        for i in node_ids:
            if i in assigned:
                _refuse(f"{g.describe(i)} belongs to both {assigned[i].name} and {st.name}")
            assigned[i] = st
        stages.append(st)
        return st

    def matrix(role, i):
        w = g.weight_input(i)
        t = g.inits[w]
        n = g.nodes[i]
        transposed_b = n.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in n.attribute)
        rows, cols = (t.dims[0], t.dims[1]) if transposed_b else (t.dims[1], t.dims[0])
        return StageTensor(role, w, not transposed_b, (rows, cols))

    def vector(role, name):
        if name not in g.weights:
            _refuse(f"{role} '{name}' is not a weight initializer")
        return StageTensor(role, name, False, tuple(g.inits[name].dims))

    def bias_of(i) -> tuple[int, str] | None:
        """The bias Add right after a weighted MatMul: (node id, bias initializer)."""
        c = g.only_consumer(i)
        if c is not None and g.nodes[c].op_type == "Add":
            b = g.weight_input(c)
            if b is not None and len(g.inits[b].dims) == 1:
                return c, b
        return None

    # embed: everything that produces the residual stream's first value
    stream = g.nodes[lns[0]].input[0]
    embed_nodes = g.ancestors(stream, stop="")
    gathers = [i for i in sorted(embed_nodes) if g.nodes[i].op_type == "Gather" and g.nodes[i].input[0] in g.weights]
    if len(gathers) != 2:
        _refuse(f"the embedding should gather from 2 tables, found {len(gathers)}")
    # the token table is the one GPT-2 ties to the LM head (read twice in the graph)
    tables = sorted((g.nodes[i].input[0] for i in gathers), key=lambda t: -len(g.consumers[t]))
    add_stage("embed", None, embed_nodes, tables)

    layer, expect = 0, "attention"
    while True:
        users = g.consumers[stream]
        ln = [i for i in users if g.nodes[i].op_type == "LayerNormalization"]
        residual = [i for i in users if g.nodes[i].op_type == "Add"]
        if len(ln) != 1 or len(residual) > 1 or len(users) != len(ln) + len(residual):
            _refuse(f"the residual stream '{stream}' should feed one LayerNormalization and "
                    f"at most one residual Add, it feeds {[g.describe(i) for i in users]}")
        ln = ln[0]
        ln_t = [g.nodes[ln].input[1], g.nodes[ln].input[2]]   # gain, bias
        if not residual:
            break
        add = residual[0]
        branch_out = [t for t in g.nodes[add].input if t != stream][0]
        branch = g.ancestors(branch_out, stop=stream)
        if ln not in branch:
            _refuse(f"{g.describe(add)} adds a branch that does not start at {g.describe(ln)}")
        mms = sorted(i for i in branch if g.nodes[i].op_type in ("MatMul", "Gemm") and g.weight_input(i))
        softmax = any(g.nodes[i].op_type == "Softmax" for i in branch)
        kind = "attention" if softmax else "mlp"
        if kind != expect or len(mms) != 2:
            _refuse(f"expected the {expect} branch of block {layer} at {g.describe(add)}, found "
                    f"a branch with {len(mms)} weighted MatMuls and {'a' if softmax else 'no'} Softmax")
        biases = [bias_of(i) for i in mms]
        if None in biases:
            _refuse(f"{g.describe(mms[biases.index(None)])} has no bias Add after it")
        if kind == "attention":
            add_stage("ln_1", layer, {ln}, ln_t)
            qkv = {mms[0], biases[0][0]}
            split = g.only_consumer(biases[0][0])
            if split is None or g.nodes[split].op_type != "Split":
                _refuse(f"the query/key/value projection {g.describe(mms[0])} is not followed by a Split")
            add_stage("attn_qkv", layer, qkv | {split}, [mms[0], biases[0][1]])
            proj = {mms[1], biases[1][0], add}
            core = branch - {ln} - qkv - {split} - proj
            if any(g.weight_input(i) for i in core):
                _refuse(f"attention core of block {layer} reads weights")
            add_stage("attn_core", layer, core, [])
            add_stage("attn_proj", layer, proj, [mms[1], biases[1][1]])
            expect = "mlp"
        else:
            add_stage("ln_2", layer, {ln}, ln_t)
            add_stage("mlp", layer, (branch - {ln}) | {add}, [mms[0], biases[0][1], mms[1], biases[1][1]])
            layer, expect = layer + 1, "attention"
        stream = g.nodes[add].output[0]
    if expect != "attention":
        _refuse(f"block {layer} has attention but no MLP")

    head_nodes = {i for i in range(len(g.nodes)) if i not in assigned and i > ln} | {ln}
    lm = [i for i in sorted(head_nodes) if g.nodes[i].op_type in ("MatMul", "Gemm") and g.weight_input(i)]
    if len(lm) != 1:
        _refuse(f"the head should have one weighted MatMul/Gemm (the LM head), found {len(lm)}")
    if g.weight_input(lm[0]) != stages[0].tensors[0].initializer:
        _refuse("the LM head is not tied to the token embedding")
    add_stage("head", None, head_nodes, ln_t + [lm[0]])

    # Nodes off the residual path (the Identity nodes that publish present keys/values)
    # belong to the stage that produces their input.
    for i, n in enumerate(g.nodes):
        if i not in assigned:
            owners = {assigned[g.producer[t]].index for t in n.input if t in g.producer}
            if len(owners) != 1:
                _refuse(f"{g.describe(i)} cannot be placed in a stage")
            assigned[i] = stages[owners.pop()]

    for i, n in enumerate(g.nodes):
        assigned[i].nodes.append(n)
    for st in stages:
        inside = {out for n in st.nodes for out in n.output}
        for n in st.nodes:
            for t in n.input:
                if t and t not in inside and t not in g.inits and t not in st.inputs:
                    st.inputs.append(t)
            for t in n.output:
                if t in g.graph_outputs or any(assigned[c] is not st for c in g.consumers[t]):
                    st.outputs.append(t)
    return stages


def stage_model(model: onnx.ModelProto, stage: Stage) -> onnx.ModelProto:
    """A self-contained ONNX model of one stage: its nodes, its initializers, and typed
    inputs/outputs (shapes from ONNX shape inference on the whole graph)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input)
             + list(inferred.graph.output)}

    def info(name):
        if name in infos:
            return infos[name]
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)

    inits = {t.name: t for t in model.graph.initializer}
    used = [inits[t] for t in dict.fromkeys(t for n in stage.nodes for t in n.input) if t in inits]
    graph = helper.make_graph(stage.nodes, stage.name, [info(t) for t in stage.inputs],
                              [info(t) for t in stage.outputs], used)
    sub = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="mcugpt")
    sub.ir_version = model.ir_version
    return sub
