"""Model shapes: the presets in models/*.json and Hugging Face config.json files."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from target.errors import McugptError

from .files import json_kind, read_json, regular_file

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
EOT_TOKEN = 50256  # <|endoftext|> in GPT-2's vocabulary

# The range of each integer setting. n_layer: the image's stage table counts blocks in a
# byte; vocab_size: the image format's limit; widths and context: far beyond any GPT-2
# (GPT-2 XL is 1600 wide, 1024 positions), so a typo is caught before it allocates.
LIMITS = {"n_layer": (1, 255), "n_head": (1, 1 << 16), "n_embd": (1, 1 << 16), "n_ctx": (1, 1 << 16),
          "vocab_size": (1, 65535 * 16)}


@dataclass(frozen=True)
class GPTConfig:
    name: str
    n_layer: int
    n_head: int
    n_embd: int
    n_ctx: int
    vocab_size: int
    layer_norm_epsilon: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_bytes_per_token(self) -> int:
        # keys and values, every layer, float32
        return 2 * self.n_layer * self.n_embd * 4

    def n_params(self) -> int:
        d, L = self.n_embd, self.n_layer
        per_block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
        return self.vocab_size * d + self.n_ctx * d + L * per_block + 2 * d

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> "GPTConfig":
        for field, (lo, hi) in LIMITS.items():
            value = getattr(self, field)
            if type(value) is not int or not lo <= value <= hi:
                raise McugptError(f"model {self.name}: {field} must be an integer in {lo}..{hi}, got {value!r}")
        if self.n_embd % self.n_head:
            raise McugptError(
                f"model {self.name}: n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        eps = self.layer_norm_epsilon
        if type(eps) is not float or not _normal_float32(eps):
            raise McugptError(f"model {self.name}: layer_norm_epsilon must be a positive number that float32 "
                              f"holds ({np.finfo(np.float32).tiny:.3g} to {np.finfo(np.float32).max:.3g}), "
                              f"got {json.dumps(eps)}")
        return self


def _normal_float32(x) -> bool:
    # the firmware adds epsilon as a float32 literal: 1e-50 would round to 0 (a division by
    # zero on a constant row), NaN or infinity would not even compile (nanf undeclared)
    with np.errstate(over="ignore"):
        x32 = np.float32(x)
    return bool(np.isfinite(x32)) and x32 >= np.finfo(np.float32).tiny


def preset_names() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.json"))


def load_preset(name: str) -> GPTConfig:
    # a name from the list, never a path: '../x' or 'my.json' is not a preset
    if name not in preset_names():
        hint = ("; --model takes a preset's name, not a file (a Hugging Face checkpoint folder goes in "
                "--weights DIR)" if "/" in name or name.endswith(".json") else "")
        raise McugptError(f"unknown model preset '{name}' (known: {', '.join(preset_names())}){hint}")
    return GPTConfig(**json.loads((MODELS_DIR / f"{name}.json").read_text())).validate()


# config.json's names for each integer setting: GPT-2's own key first, then the aliases
# Hugging Face maps onto it (attribute_map; n_ctx is what old configs call n_positions).
# A key given under two names must say the same under both.
HF_KEYS = {"n_layer": ("n_layer", "num_hidden_layers"), "n_head": ("n_head", "num_attention_heads"),
           "n_embd": ("n_embd", "hidden_size"), "n_ctx": ("n_positions", "max_position_embeddings", "n_ctx"),
           "vocab_size": ("vocab_size",)}

# The names Hugging Face gives GPT-2's GELU, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))),
# the one activation the reference and the firmware compute (numerics.gelu_tanh); "gelu"
# is the erf GELU, a different function, and "gelu_fast" the same one factored.
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate")

# The config.json settings that change GPT-2's arithmetic: the values mcugpt computes (the
# first is Hugging Face's default, taken when the key is absent), and what that means. Any
# other value is refused rather than ignored: it would give other tokens without a word.
# Keys not listed here (dropout rates, initializer_range, generation and task settings,
# architectures, ...) do not change inference and are accepted as they are.
# reorder_and_upcast_attn is accepted either way: it only moves the attention's float16 ->
# float32 upcast and multiplies by the 1/sqrt(head_dim) scale instead of dividing, the same
# arithmetic as mcugpt's float32 attention (numerics.attention_scale is a product too).
SETTINGS = {
    "model_type": (("gpt2",), "GPT-2 only"),
    "activation_function": (GELU_TANH, "GPT-2's tanh GELU (" + ", ".join(GELU_TANH) + ")"),
    "scale_attn_weights": ((True,), "attention scores scaled by 1/sqrt(head_dim)"),
    "scale_attn_by_inverse_layer_idx": ((False,), "no extra 1/(layer+1) scale of the attention scores"),
    "reorder_and_upcast_attn": ((False, True), "float32 attention"),
    "add_cross_attention": ((False,), "no cross-attention: GPT-2 is a decoder only"),
    "tie_word_embeddings": ((True,), "the LM head tied to wte, as GPT-2 does (logits = h wte^T)"),
    "pruned_heads": (({},), "every attention head; no pruned heads"),
    "quantization_config": ((None,), "float weights (F32, F16 or BF16); quantize with --dtype int8"),
}


def _same(a, b) -> bool:
    # JSON's true is not 1 and 1.0 is not 1 here: a setting must have the type it is read as
    return type(a) is type(b) and a == b


def config_from_hf(path: Path, name: str) -> GPTConfig:
    """Read a Hugging Face GPT-2 config.json (its keys: n_layer, n_head, n_embd, n_positions...),
    refusing any setting mcugpt does not compute and any value of the wrong type or range."""
    if not regular_file(path):
        raise McugptError(f"checkpoint folder has no config.json: {path}")
    raw = read_json(path)
    for key, (accepted, meaning) in SETTINGS.items():
        value = raw.get(key, accepted[0])
        if not any(_same(value, a) for a in accepted):
            raise McugptError(f"{path}: {key} {json.dumps(value)} is not supported: mcugpt implements {meaning}")

    def integer(field):
        keys = [k for k in HF_KEYS[field] if k in raw]
        if not keys:
            if field == "n_ctx":
                return 1024   # Hugging Face's default n_positions
            raise McugptError(f"{path}: missing key {HF_KEYS[field][0]!r}")
        lo, hi = LIMITS[field]
        for k in keys:
            v = raw[k]
            if type(v) is not int:
                raise McugptError(f"{path}: {k} must be an integer, got {json.dumps(v)} ({json_kind(v)})")
            if not lo <= v <= hi:
                raise McugptError(f"{path}: {k} {v} is outside {lo}..{hi}")
            if v != raw[keys[0]]:
                raise McugptError(f"{path}: {keys[0]} {raw[keys[0]]} and {k} {v} disagree")
        return raw[keys[0]]

    n_embd = integer("n_embd")
    n_inner = raw.get("n_inner")
    if n_inner is not None and not _same(n_inner, 4 * n_embd):
        raise McugptError(f"{path}: n_inner {json.dumps(n_inner)} is not supported: mcugpt implements "
                          f"GPT-2's MLP of 4 x n_embd = {4 * n_embd} (n_inner null or {4 * n_embd})")
    eps = raw.get("layer_norm_epsilon", 1e-5)
    try:
        return GPTConfig(name=name, n_layer=integer("n_layer"), n_head=integer("n_head"), n_embd=n_embd,
                         n_ctx=integer("n_ctx"), vocab_size=integer("vocab_size"),
                         layer_norm_epsilon=float(eps) if type(eps) is int else eps).validate()
    except McugptError as e:
        raise McugptError(f"{path}: {e}") from None
