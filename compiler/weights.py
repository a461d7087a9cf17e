"""GPT-2 weights: seeded synthetic ones of the exact shapes, or a Hugging Face checkpoint.

Both give a dict of float32 numpy arrays under Hugging Face's GPT-2 names and layout
(Conv1D: a projection's weight is [in, out], so y = x @ W + b). Everything downstream
(reference, ONNX export) starts from this dict.
"""

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from target.errors import McugptError
from target.stages import MATRIX, ROW, checkpoint_tensors

from .config import GPTConfig
from .files import parse_json, read_json, regular_file

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


# What mcugpt reads from a safetensors file: float tensors, each converted to float32
# exactly (every float16 and bfloat16 value is a float32 value): numpy dtype as stored.
FLOAT_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}

# No trained model has a weight anywhere near this. Beyond it, a weight times an
# activation of 1e8 already passes float32's 3.4e38: the dot products and layer norms
# overflow to inf, then NaN, and the board and the reference would "agree" on NaN logits.
# Such a value is a corrupt file, not a model.
MAX_ABS_WEIGHT = 1e30

# safetensors' own bound on the JSON header (safetensors/src/tensor.rs, MAX_HEADER_SIZE)
MAX_HEADER_BYTES = 100_000_000

INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class StoredTensor:
    """A tensor's place in a safetensors file, from its header."""
    path: Path
    key: str                    # its name in the file
    dtype: str
    shape: tuple[int, ...]
    begin: int                  # byte offsets in the file
    end: int


def safetensors_header(path: Path) -> dict[str, StoredTensor]:
    """The tensors a safetensors file holds: 8 bytes of header length (little-endian), the
    JSON header, then the data, each tensor's [begin, end) relative to the data's start."""
    if not regular_file(path):
        raise McugptError(f"{path}: no such file")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else None
        if n is None or n > min(size - 8, MAX_HEADER_BYTES):
            raise McugptError(f"{path}: not a safetensors file ({size} bytes; the header length field says "
                              f"{'nothing' if n is None else n})")
        header = parse_json(f.read(n), f"{path} (header)")
    data_start, data_bytes = 8 + n, size - 8 - n
    header.pop("__metadata__", None)
    tensors = {}
    for key, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            ok = (type(dtype) is str and type(shape) is list and all(type(d) is int and d >= 0 for d in shape)
                  and type(begin) is int and type(end) is int and 0 <= begin <= end <= data_bytes)
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise McugptError(f"{path}: tensor '{key}' has a malformed header entry {json.dumps(entry)[:200]} "
                              f"(the data is {data_bytes} bytes)")
        tensors[key] = StoredTensor(Path(path), key, dtype, tuple(shape), data_start + begin, data_start + end)
    return tensors


def _read_float32(t: StoredTensor) -> np.ndarray:
    if t.dtype not in FLOAT_DTYPES:
        raise McugptError(f"{t.path}: tensor '{t.key}' is {t.dtype}; mcugpt reads only "
                          f"{', '.join(FLOAT_DTYPES)} weights")
    stored = np.dtype(FLOAT_DTYPES[t.dtype])
    count = math.prod(t.shape)
    if t.end - t.begin != count * stored.itemsize:
        raise McugptError(f"{t.path}: tensor '{t.key}' ({t.dtype} {list(t.shape)}) should be "
                          f"{count * stored.itemsize} bytes, its header gives {t.end - t.begin}")
    with open(t.path, "rb") as f:
        f.seek(t.begin)
        data = f.read(t.end - t.begin)
    raw = np.frombuffer(data, stored)
    if t.dtype == "BF16":   # bfloat16 is the top half of a float32
        w = (raw.astype(np.uint32) << 16).view(np.float32)
    else:
        w = raw.astype(np.float32)
    w = w.reshape(t.shape)
    bad = np.flatnonzero(~(np.abs(w) <= MAX_ABS_WEIGHT))   # NaN fails every comparison
    if bad.size:
        i = int(bad[0])
        v = float(w.flat[i])
        why = "not finite" if not math.isfinite(v) else f"beyond +-{MAX_ABS_WEIGHT:g}, too large to compute with"
        raise McugptError(f"{t.path}: tensor '{t.key}' holds {v:g} at flat index {i} ({why}; "
                          f"{bad.size} such value{'s' if bad.size > 1 else ''} of {w.size})")
    return w


def _shards(folder: Path) -> dict[str, StoredTensor]:
    """Every tensor of a sharded checkpoint: the index's weight_map, name -> file, checked
    against the files' own headers (every mapped file there, no tensor in two files)."""
    index = folder / INDEX
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(type(v) is str for v in weight_map.values()):
        raise McugptError(f"{index}: needs a \"weight_map\" object of tensor name -> file name")
    tensors = {}
    for file in sorted(set(weight_map.values())):
        # the shards are files of this folder; a path could read anything on the machine
        if Path(file).name != file or file in (".", ".."):
            raise McugptError(f"{index}: maps tensors to '{file}', which is not a file name in the folder")
        if not regular_file(folder / file):
            names = [k for k, v in weight_map.items() if v == file]
            raise McugptError(f"{index}: maps {len(names)} tensors (e.g. '{names[0]}') to {file}, "
                              f"which is not in {folder}")
        for key, t in safetensors_header(folder / file).items():
            if key in tensors:
                raise McugptError(f"{folder}: tensor '{key}' is in both {tensors[key].path.name} and {file}")
            if weight_map.get(key) != file:
                raise McugptError(f"{index}: tensor '{key}' is in {file}, but the index "
                                  + (f"maps it to {weight_map[key]}" if key in weight_map else "does not list it"))
            tensors[key] = t
    for key, file in weight_map.items():
        if key not in tensors:
            raise McugptError(f"{index}: maps tensor '{key}' to {file}, which does not hold it")
    return tensors


def _stored_tensors(folder: Path) -> dict[str, StoredTensor]:
    """The folder's tensors under GPT2Model's names: model.safetensors, or the shards an
    index lists; GPT2LMHeadModel's `transformer.` prefix removed."""
    if regular_file(folder / "model.safetensors"):
        stored = safetensors_header(folder / "model.safetensors")
    elif regular_file(folder / INDEX):
        stored = _shards(folder)
    else:
        for torch_file in ("pytorch_model.bin", "pytorch_model.bin.index.json"):
            if regular_file(folder / torch_file):
                raise McugptError(
                    f"{folder}: has {torch_file} (PyTorch pickle) but no model.safetensors; convert it once with "
                    f"transformers: GPT2LMHeadModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)")
        raise McugptError(f"checkpoint folder has no model.safetensors (nor {INDEX}): {folder}")
    tensors = {}
    for key, t in stored.items():
        name = key.removeprefix("transformer.")
        if name in tensors:
            raise McugptError(f"{t.path}: tensor '{name}' is there twice, as '{tensors[name].key}' and '{key}'")
        tensors[name] = t
    return tensors


def _expected_as(role, shape) -> str:
    # the shape, and the config.json keys it comes from, in the checkpoint's order
    names = [{"n_ctx": "n_positions"}.get(d, d) for d in role.shape]
    return f"{list(shape)} = [{', '.join(names[::-1] if role.transposed else names)}]"


def load_checkpoint(folder: Path, cfg: GPTConfig) -> dict[str, np.ndarray]:
    """Read a Hugging Face GPT-2 folder's model.safetensors (or its shards).

    Accepts both GPT2Model names (`h.0.attn...`) and GPT2LMHeadModel names
    (`transformer.h.0.attn...`); `lm_head.weight`, when stored, must equal `wte.weight`
    (GPT-2 ties them); the attention-mask buffers some old checkpoints carry are ignored.
    Any other tensor, a missing one, a shape other than the config's, a dtype other than
    F32/F16/BF16 or a non-finite value is refused.
    """
    folder = Path(folder)
    stored = _stored_tensors(folder)
    expected = checkpoint_tensors(cfg)
    for name, t in stored.items():
        if name in expected or name == "lm_head.weight":
            continue
        block = re.match(r"h\.(\d+)\.", name)
        if block and int(block[1]) >= cfg.n_layer:
            raise McugptError(f"{t.path}: tensor '{t.key}' is of block {block[1]}, but config.json says "
                              f"n_layer {cfg.n_layer}")
        if not re.fullmatch(r"h\.\d+\.attn\.(bias|masked_bias)", name):   # the causal mask buffers
            raise McugptError(f"{t.path}: unexpected tensor '{t.key}' ({t.dtype} {list(t.shape)}): "
                              f"not part of a GPT-2 language model")
    weights = {}
    for name, (role, shape) in expected.items():
        t = stored.get(name)
        if t is None:
            where = folder / "model.safetensors" if (folder / "model.safetensors").exists() else folder
            raise McugptError(f"{where}: missing tensor '{name}' (expected shape {list(shape)})")
        if t.shape != shape:
            raise McugptError(f"{t.path}: tensor '{name}' has shape {list(t.shape)}, expected "
                              f"{_expected_as(role, shape)} from config.json")
        weights[name] = _read_float32(t)
    if "lm_head.weight" in stored:
        head = stored["lm_head.weight"]
        if head.shape != weights["wte.weight"].shape or not np.array_equal(_read_float32(head), weights["wte.weight"]):
            raise McugptError(f"{head.path}: lm_head.weight differs from wte.weight: an untied LM head, "
                              f"which mcugpt does not implement (GPT-2 ties them)")
    return weights
