"""The atomic stage kinds: the one definition of what each stage is.

A stage kind says everything the rest of mcugpt needs to know about it:
  roles       its weight tensors, in the order the image's stage table lists them and the
              firmware reads them; per role, how the firmware reads it, its shape as stored in
              flash, whether int8 builds quantize it, and its Hugging Face checkpoint name
  reads       the activation buffers it reads, and those it writes and uses as scratch
  cost        multiply-accumulates per token (flash bytes follow from the roles and the plan)

Who reads it: the partitioner (the roles a stage's tensors fill), the weight loader
(every checkpoint tensor and its shape), the numpy reference (each stage's tensors by role),
the memory plan (buffers, tiles, bytes, MACs), the image writer (int8 or not) and
compiler/codegen.py, which renders it into the firmware's headers: `STAGE_*` kind ids,
`ROLE_*` indices and each role's shape, so runtime_c/ names every tensor it opens.

Matrices are stored row-major as [out, in] (one output row contiguous), so the firmware
streams them a tile of rows at a time. Dimensions are written as expressions over the
model's configuration ("3*n_embd"), evaluated by `dims`.
"""

from dataclasses import dataclass

# How the firmware reads a role's tensor.
VECTOR = "vector"   # whole, into the params buffer (layer-norm gain and bias, a projection's bias)
MATRIX = "matrix"   # streamed through the weight tile buffers, a tile of rows at a time
ROW = "row"         # single rows, by index (the embedding tables: one row per token)
ACCESS = (VECTOR, MATRIX, ROW)


@dataclass(frozen=True)
class Role:
    name: str
    access: str
    shape: tuple[str, ...]      # as stored in flash: matrices [out, in]
    checkpoint: str             # Hugging Face GPT-2 name; "{layer}" is the block index
    int8: bool = False          # quantized per row in int8 builds (matrices, and what they share)
    transposed: bool = False    # the checkpoint stores it [in, out] (GPT-2's Conv1D)

    def flash_shape(self, cfg) -> tuple[int, ...]:
        return tuple(dim(d, cfg) for d in self.shape)

    def checkpoint_shape(self, cfg) -> tuple[int, ...]:
        shape = self.flash_shape(cfg)
        return shape[::-1] if self.transposed else shape


@dataclass(frozen=True)
class StageKind:
    id: int                     # in the image's stage table
    name: str
    roles: tuple[Role, ...]
    reads: tuple[str, ...]      # activation buffers read (ACTIVATIONS, or "kv")
    writes: tuple[str, ...]     # activation buffers written
    scratch: tuple[str, ...]    # buffers used as working space within the stage
    in_block: bool              # one per transformer block (else once per token)
    doc: str
    attention: bool = False     # MACs grow with the position: q.k and weights x values over the cache

    def role(self, name: str) -> int:
        """The index of role `name` (its place in the stage table entry's tensor list)."""
        return next(i for i, r in enumerate(self.roles) if r.name == name)

    @property
    def matrices(self) -> tuple[Role, ...]:
        return tuple(r for r in self.roles if r.access == MATRIX)

    def macs(self, cfg, n_pos: int) -> int:
        """Multiply-accumulates for one token at a context of `n_pos` cached positions."""
        if self.attention:
            return 2 * cfg.n_embd * n_pos
        total = 0
        for r in self.matrices:
            rows, cols = r.flash_shape(cfg)
            total += rows * cols
        return total


def _matrix(name, rows, cols, checkpoint):
    # GPT-2's Conv1D projections are [in, out] in the checkpoint
    return Role(name, MATRIX, (rows, cols), checkpoint, int8=True, transposed=True)


def _vector(name, n, checkpoint):
    return Role(name, VECTOR, (n,), checkpoint)


STAGE_KINDS = (
    StageKind(0, "embed", (
        # tied to the head's wte, which streams it as a matrix: so it is stored once, as the
        # head's int8 tiles in int8 builds, and the embedding reads its row from those tiles
        Role("wte", ROW, ("vocab_size", "n_embd"), "wte.weight", int8=True),
        Role("wpe", ROW, ("n_ctx", "n_embd"), "wpe.weight"),
    ), reads=(), writes=("x",), scratch=("h",), in_block=False,
        doc="token embedding row + position embedding row"),
    StageKind(1, "ln_1", (
        _vector("gain", "n_embd", "h.{layer}.ln_1.weight"),
        _vector("bias", "n_embd", "h.{layer}.ln_1.bias"),
    ), reads=("x",), writes=("h",), scratch=(), in_block=True, doc="layer norm before attention"),
    StageKind(2, "attn_qkv", (
        _matrix("w", "3*n_embd", "n_embd", "h.{layer}.attn.c_attn.weight"),
        _vector("b", "3*n_embd", "h.{layer}.attn.c_attn.bias"),
    ), reads=("h",), writes=("qkv",), scratch=(), in_block=True,
        doc="query/key/value projection [3 n_embd, n_embd]"),
    StageKind(3, "attn_core", (), reads=("qkv", "kv"), writes=("att", "kv"), scratch=("scores",),
              in_block=True, attention=True,
              doc="scores, softmax and weighted sum over the KV cache, per head"),
    StageKind(4, "attn_proj", (
        _matrix("w", "n_embd", "n_embd", "h.{layer}.attn.c_proj.weight"),
        _vector("b", "n_embd", "h.{layer}.attn.c_proj.bias"),
    ), reads=("att", "x"), writes=("x",), scratch=("h",), in_block=True,
        doc="output projection [n_embd, n_embd] + residual"),
    StageKind(5, "ln_2", (
        _vector("gain", "n_embd", "h.{layer}.ln_2.weight"),
        _vector("bias", "n_embd", "h.{layer}.ln_2.bias"),
    ), reads=("x",), writes=("h",), scratch=(), in_block=True, doc="layer norm before the MLP"),
    StageKind(6, "mlp", (
        _matrix("w_fc", "4*n_embd", "n_embd", "h.{layer}.mlp.c_fc.weight"),
        _vector("b_fc", "4*n_embd", "h.{layer}.mlp.c_fc.bias"),
        _matrix("w_proj", "n_embd", "4*n_embd", "h.{layer}.mlp.c_proj.weight"),
        _vector("b_proj", "n_embd", "h.{layer}.mlp.c_proj.bias"),
    ), reads=("h", "x"), writes=("x",), scratch=("hidden",), in_block=True,
        doc="fc [4 n_embd, n_embd], GELU, proj [n_embd, 4 n_embd] + residual"),
    StageKind(7, "head", (
        _vector("gain", "n_embd", "ln_f.weight"),
        _vector("bias", "n_embd", "ln_f.bias"),
        Role("wte", MATRIX, ("vocab_size", "n_embd"), "wte.weight", int8=True),
    ), reads=("x",), writes=(), scratch=("h", "logits", "topk"), in_block=False,
        doc="final layer norm + LM head tied to wte [vocab, n_embd]"),
)
KIND_BY_NAME = {k.name: k for k in STAGE_KINDS}
BLOCK_STAGES = tuple(k.name for k in STAGE_KINDS if k.in_block)
STAGE_MAX_TENSORS = max(len(k.roles) for k in STAGE_KINDS)

# The activation buffers stages pass to one another (float32 vectors), and their lengths.
ACTIVATIONS = {
    "x": "n_embd",          # the residual stream
    "h": "n_embd",          # layer-norm output: the input of the next matrix
    "qkv": "3*n_embd",      # query, key, value of this position
    "att": "n_embd",        # attention output, heads side by side
    "hidden": "4*n_embd",   # the MLP's hidden layer
}


def dim(expr: str, cfg) -> int:
    """'3*n_embd' -> 3 x cfg.n_embd; 'vocab_size' -> cfg.vocab_size."""
    factor, _, name = expr.rpartition("*")
    return (int(factor) if factor else 1) * int(getattr(cfg, name))


def stage_name(kind: str, layer: int | None) -> str:
    return kind if layer is None else f"h{layer}.{kind}"


def stage_sequence(n_layer: int) -> list[tuple[StageKind, int | None]]:
    """The stages of one token, in order: (kind, layer). The kinds before the first block kind
    in STAGE_KINDS run once before the blocks, those after it once after them."""
    first = next(i for i, k in enumerate(STAGE_KINDS) if k.in_block)
    before = [(k, None) for k in STAGE_KINDS[:first] if not k.in_block]
    after = [(k, None) for k in STAGE_KINDS[first:] if not k.in_block]
    blocks = [(k, layer) for layer in range(n_layer) for k in STAGE_KINDS if k.in_block]
    return before + blocks + after


def checkpoint_tensors(cfg) -> dict[str, tuple[Role, tuple[int, ...]]]:
    """Every tensor a GPT-2 checkpoint holds, in the order the stages first read them:
    name -> (the role that first reads it, its shape in the checkpoint)."""
    out = {}
    for kind, layer in stage_sequence(cfg.n_layer):
        for r in kind.roles:
            out.setdefault(r.checkpoint.format(layer=layer), (r, r.checkpoint_shape(cfg)))
    return out


# The firmware runs ln_1 and ln_2 with one function (and the head starts with the same
# layer norm), so they must read the same roles at the same indices.
assert [r.name for r in KIND_BY_NAME["ln_1"].roles] == [r.name for r in KIND_BY_NAME["ln_2"].roles] \
    == [r.name for r in KIND_BY_NAME["head"].roles[:2]]
