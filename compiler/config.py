"""Model shapes: the presets in models/*.json and Hugging Face config.json files."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from target.errors import McugptError

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
EOT_TOKEN = 50256  # <|endoftext|> in GPT-2's vocabulary


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
        for field in ("n_layer", "n_head", "n_embd", "n_ctx", "vocab_size"):
            if getattr(self, field) <= 0:
                raise McugptError(f"model {self.name}: {field} must be positive, got {getattr(self, field)}")
        if self.n_embd % self.n_head:
            raise McugptError(
                f"model {self.name}: n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.n_layer > 255 or self.vocab_size > 65535 * 16:
            raise McugptError(f"model {self.name}: too large for the flash image format")
        return self


def preset_names() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.json"))


def load_preset(name: str) -> GPTConfig:
    # a name from the list, never a path: '../x' or 'my.json' is not a preset
    if name not in preset_names():
        hint = ("; --model takes a preset's name, not a file (a Hugging Face checkpoint folder goes in "
                "--weights DIR)" if "/" in name or name.endswith(".json") else "")
        raise McugptError(f"unknown model preset '{name}' (known: {', '.join(preset_names())}){hint}")
    return GPTConfig(**json.loads((MODELS_DIR / f"{name}.json").read_text())).validate()


def config_from_hf(path: Path, name: str) -> GPTConfig:
    """Read a Hugging Face GPT-2 config.json (its keys: n_layer, n_head, n_embd, n_positions...)."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise McugptError(f"checkpoint folder has no config.json: {path}") from None
    except json.JSONDecodeError as e:
        raise McugptError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise McugptError(f"{path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(raw, dict):
        raise McugptError(f"{path}: not a Hugging Face config (a JSON {type(raw).__name__}, not an object)")
    try:
        return GPTConfig(
            name=name,
            n_layer=int(raw["n_layer"]),
            n_head=int(raw["n_head"]),
            n_embd=int(raw["n_embd"]),
            n_ctx=int(raw.get("n_positions", raw.get("n_ctx", 1024))),
            vocab_size=int(raw["vocab_size"]),
            layer_norm_epsilon=float(raw.get("layer_norm_epsilon", 1e-5)),
        ).validate()
    except KeyError as e:
        raise McugptError(f"{path}: missing key {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise McugptError(f"{path}: a value is not a number ({e})") from None
