"""GPT-2 weights: seeded synthetic ones of the exact shapes, or a Hugging Face checkpoint.

Both give a dict of float32 numpy arrays under Hugging Face's GPT-2 names and layout
(Conv1D: a projection's weight is [in, out], so y = x @ W + b). Everything downstream
(reference, ONNX export) starts from this dict.
"""

from pathlib import Path

import numpy as np

from target.errors import McugptError
from target.stages import MATRIX, ROW, checkpoint_tensors

from .config import GPTConfig

# Standard deviations of the synthetic weights. GPT-2's own init (0.02) makes a random model
# repeat one token forever; these larger values, with layer-norm gains and biases that are
# not 1 and 0, give varied greedy output, so a token comparison exercises every stage.
SYNTHETIC_STD = {"embedding": 0.1, "matrix": 0.1, "bias": 0.05, "ln_gain": 0.2, "ln_bias": 0.2}


def tensor_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a GPT-2 checkpoint must hold, name -> shape, in the order the stages read
    them (target/stages.py names them)."""
    return {name: shape for name, (_role, shape) in checkpoint_tensors(cfg).items()}


def _std_kind(role) -> str:
    if role.access == ROW:
        return "embedding"
    if role.access == MATRIX:
        return "matrix"
    return {"gain": "ln_gain", "bias": "ln_bias"}.get(role.name, "bias")


def synthetic_weights(cfg: GPTConfig, seed: int = 0, progress=None) -> dict[str, np.ndarray]:
    """Deterministic weights: each tensor has its own generator seeded by (seed, index), so
    a tensor's values do not depend on which other tensors exist (tiny and gpt2 share none,
    but a 6-layer model's block 0 equals a 12-layer model's block 0 of the same width)."""
    weights = {}
    items = list(checkpoint_tensors(cfg).items())
    for index, (name, (role, shape)) in enumerate(progress(items) if progress else items):
        rng = np.random.default_rng([seed, index])
        kind = _std_kind(role)
        if kind == "ln_gain":
            w = 1.0 + SYNTHETIC_STD["ln_gain"] * rng.standard_normal(shape, dtype=np.float32)
        elif kind in ("embedding", "matrix"):
            w = rng.standard_normal(shape, dtype=np.float32)
            w *= np.float32(SYNTHETIC_STD[kind])
        else:
            w = SYNTHETIC_STD[kind] * rng.standard_normal(shape, dtype=np.float32)
        weights[name] = w.astype(np.float32, copy=False)
    return weights


def load_checkpoint(folder: Path, cfg: GPTConfig) -> dict[str, np.ndarray]:
    """Read a Hugging Face GPT-2 folder's model.safetensors.

    Accepts both GPT2Model names (`h.0.attn...`) and GPT2LMHeadModel names
    (`transformer.h.0.attn...`); `lm_head.weight` is tied to `wte.weight` in GPT-2 and
    ignored; the attention-mask buffers some old checkpoints carry are ignored too.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise McugptError(f"checkpoint folder has no model.safetensors: {folder}")
    try:
        raw = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise McugptError(f"{path}: cannot read safetensors file ({e})") from None
    found = {k.removeprefix("transformer."): v for k, v in raw.items()}
    weights = {}
    for name, shape in tensor_shapes(cfg).items():
        if name not in found:
            raise McugptError(f"{path}: missing tensor '{name}' (expected shape {list(shape)})")
        t = found[name]
        if tuple(t.shape) != shape:
            raise McugptError(
                f"{path}: tensor '{name}' has shape {list(t.shape)}, expected {list(shape)}")
        weights[name] = np.ascontiguousarray(t, dtype=np.float32)
    return weights
