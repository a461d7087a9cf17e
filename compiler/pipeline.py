"""`mcugpt compile`, step by step: weights -> ONNX -> stages -> plan -> flash image + C headers."""

import json
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import onnx
from tqdm import tqdm

from target.boards import DEFAULT_BOARD
from target.errors import McugptError

from .codegen import write_headers
from .config import GPTConfig, config_from_hf, load_preset
from .firmware import build as build_firmware
from .flash_image import write_image
from .onnx_export import export_onnx, initializer_array
from .partition import Stage, partition
from .plan import Plan, make_plan
from .tokenizer import load_tokenizer, token_bytes_table
from .weights import load_checkpoint, synthetic_weights


def progress_bar(quiet: bool = False):
    return partial(tqdm, disable=quiet or None, leave=False, file=sys.stderr, dynamic_ncols=True)


def load_model(model: str | None, weights_dir: str | None, weights_seed: int = 0, progress=None):
    """(config, weights, tokenizer) for a preset or a Hugging Face checkpoint folder; the
    folder's config.json wins over the preset."""
    if weights_dir:
        folder = Path(weights_dir)
        if not folder.is_dir():
            raise McugptError(f"--weights {weights_dir}: no such folder")
        cfg = config_from_hf(folder / "config.json", model or folder.name)
        weights = load_checkpoint(folder, cfg)
        tok = load_tokenizer(str(folder))
    else:
        cfg = load_preset(model or "gpt2")
        bar = partial(progress, desc="weights", unit="tensor") if progress else None
        weights = synthetic_weights(cfg, weights_seed, progress=bar)
        tok = load_tokenizer()
    return cfg, weights, tok


@dataclass
class Compiled:
    cfg: GPTConfig
    stages: list[Stage]
    plan: Plan
    out_dir: Path
    image_header: dict


def compile_model(model: str | None, out_dir: Path, weights_dir: str | None = None, weights_seed: int = 0,
                  ram: int | None = None, ctx: int | None = None, quiet: bool = False,
                  cc: str | None = "zig", dtype: str = "fp32", board: str = DEFAULT_BOARD,
                  group: str = "auto") -> Compiled:
    """Everything `mcugpt compile` writes; `cc=None` skips the firmware build."""
    progress = progress_bar(quiet)
    cfg, weights, tok = load_model(model, weights_dir, weights_seed, progress)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    export_onnx(cfg, weights, onnx_path, progress=progress)
    del weights  # from here on the weights come from the ONNX file, as a user's model would

    graph = onnx.load(str(onnx_path), load_external_data=False)
    stages = partition(graph)
    plan = make_plan(cfg, stages, ram=ram, ctx=ctx, dtype=dtype, board=board, group=group)
    (out_dir / "plan.json").write_text(plan.to_json())

    inits = {t.name: t for t in graph.graph.initializer}
    header = write_image(out_dir / "flash.img", cfg, plan, stages,
                         lambda name: initializer_array(inits[name], out_dir),
                         token_bytes_table(tok, cfg.vocab_size), progress=progress)
    write_headers(out_dir / "include", plan)
    # what `mcugpt run` needs to encode prompts and to rebuild the reference for --check
    source = {"model": cfg.name, "preset": None if weights_dir else cfg.name,
              "weights": str(Path(weights_dir).resolve()) if weights_dir else None,
              "weights_seed": weights_seed}
    (out_dir / "build.json").write_text(json.dumps(source, indent=1))
    if cc:
        build_firmware(out_dir, plan, cc=cc)
    return Compiled(cfg, stages, plan, out_dir, header)


def load_build_source(out_dir: Path) -> dict:
    path = Path(out_dir) / "build.json"
    if not path.is_file():
        raise McugptError(f"{out_dir}: not a build folder (no build.json); run `mcugpt compile --out {out_dir}`")
    source = json.loads(path.read_text())
    if "weights_seed" not in source:
        raise McugptError(f"{path}: written by an older mcugpt; rerun `mcugpt compile --out {out_dir}`")
    return source
