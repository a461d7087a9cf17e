"""The atomic stage kinds: the single definition, rendered into the firmware's C headers.

Each kind lists the weight tensors it streams from flash, in the order they are stored in
the image and read by the runtime. Matrices are stored row-major as [out, in] (one output
row contiguous) so the firmware can stream them a tile of rows at a time.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class StageKind:
    id: int
    name: str
    tensors: tuple[str, ...]  # roles, in image order
    doc: str


STAGE_KINDS = (
    StageKind(0, "embed", ("wte", "wpe"), "token embedding row + position embedding row"),
    StageKind(1, "ln_1", ("gain", "bias"), "layer norm before attention"),
    StageKind(2, "attn_qkv", ("w", "b"), "query/key/value projection [3 n_embd, n_embd]"),
    StageKind(3, "attn_core", (), "scores, softmax and weighted sum over the KV cache, per head"),
    StageKind(4, "attn_proj", ("w", "b"), "output projection [n_embd, n_embd] + residual"),
    StageKind(5, "ln_2", ("gain", "bias"), "layer norm before the MLP"),
    StageKind(6, "mlp", ("w_fc", "b_fc", "w_proj", "b_proj"), "fc [4 n_embd, n_embd], GELU, proj [n_embd, 4 n_embd] + residual"),
    StageKind(7, "head", ("gain", "bias", "wte"), "final layer norm + LM head tied to wte [vocab, n_embd]"),
)
KIND_BY_NAME = {k.name: k for k in STAGE_KINDS}
BLOCK_STAGES = ("ln_1", "attn_qkv", "attn_core", "attn_proj", "ln_2", "mlp")
MAX_STAGE_TENSORS = max(len(k.tensors) for k in STAGE_KINDS)
MATRIX_ROLES = frozenset({"w", "w_fc", "w_proj", "wte"})  # streamed by matrix-vector products


def stage_name(kind: str, layer: int | None) -> str:
    return kind if layer is None else f"h{layer}.{kind}"
