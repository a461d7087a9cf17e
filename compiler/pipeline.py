"""`mcugpt compile`, step by step: weights -> ONNX -> stages -> plan -> flash image + C headers."""

import json
import os
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from target.boards import DEFAULT_BOARD
from target.errors import McugptError

from .codegen import write_headers
from .config import GPTConfig, config_from_hf, load_preset, preset_names
from .firmware import build as build_firmware
from .flash_image import image_size, write_image
from .onnx_export import build_decode_graph, export_onnx, initializer_array
from .partition import Stage, partition
from .plan import Plan, make_plan
from .sampler import SEED_MAX
from .tokenizer import load_tokenizer, token_bytes_table
from .weights import load_checkpoint, synthetic_weights, tensor_shapes

MiB = 1 << 20


def progress_bar(quiet: bool = False, lines: bool = False):
    """`progress(iterable, desc=...)`: tqdm bars on stderr when it is a terminal. With `lines`,
    when it is not (a pipe, a log file), one flushed line per step instead (about ten per long
    loop), so a long job shows it is alive; without, nothing."""
    if lines and not quiet and not sys.stderr.isatty():
        return progress_lines
    return partial(tqdm, disable=quiet or None, leave=False, file=sys.stderr, dynamic_ncols=True)


def progress_lines(items, desc: str = "", **_tqdm_options):
    """Each step as a line on stderr, `desc i/n: item`, before the step runs."""
    items = list(items)
    every = max(1, -(-len(items) // 10)) if len(items) > 20 else 1
    for i, item in enumerate(items, 1):
        if i % every == 0 or i == 1 or i == len(items):
            label = (" ".join(str(item[k]) for k in ("board", "dtype", "flash", "tcm") if item.get(k, "-") != "-")
                     if isinstance(item, dict) else " ".join(str(getattr(x, "name", x)) for x in item) if isinstance(item, tuple)
                     else item)
            print(f"{desc} {i}/{len(items)}: {label}", file=sys.stderr, flush=True)
        yield item


def not_utf8(text: str) -> str | None:
    """None when `text` is UTF-8; else `text` shown with its bytes escaped (\\xff): a command
    line's bytes that are not UTF-8 arrive as surrogates, which UTF-8 tools (ONNX, JSON) refuse."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return os.fsencode(text).decode("ascii", "backslashreplace")


def output_folder(path) -> Path:
    """`path` as a folder to write into, created if missing; anything else (an existing file,
    a name the file system refuses, no permission) is one line naming it."""
    if not str(path).strip():   # (before Path(''), which is '.')
        raise McugptError("output folder '': empty; give a folder name")
    path = Path(path)
    shown = not_utf8(str(path.absolute()))
    if shown:
        raise McugptError(f"output folder {shown}: its path is not UTF-8, and the build records its paths as "
                          f"UTF-8 (build.json, the firmware's build command, the ONNX checker); choose a UTF-8 "
                          f"name")
    try:
        if path.exists() and not path.is_dir():
            raise McugptError(f"output folder {path}: exists and is not a folder")
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".mcugpt-write-test"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise McugptError(f"output folder {path}: cannot write there ({e.strerror or e})") from None
    return path


def model_config(model: str | None, weights_dir: str | None, weights_seed: int = 0) -> GPTConfig:
    """The model's shapes, from a preset or a Hugging Face checkpoint folder's config.json
    (which wins over the preset: `model` then only names it); every option checked."""
    if model is not None and not model.strip():
        raise McugptError(f"--model '{model}': empty; give a preset's name ({', '.join(preset_names())})")
    shown = not_utf8(model) if model is not None else None   # it names the ONNX graph and the build
    if shown:
        raise McugptError(f"--model {shown}: not UTF-8 text; give a preset's name ({', '.join(preset_names())}) "
                          f"or, with --weights, a UTF-8 name")
    if not 0 <= weights_seed <= SEED_MAX:
        raise McugptError(f"--weights-seed {weights_seed}: must be between 0 and {SEED_MAX:,} (64 bits)")
    if weights_dir is None:
        return load_preset(model or "gpt2")
    folder = Path(weights_dir)
    if not weights_dir.strip():
        raise McugptError(f"--weights '{weights_dir}': empty; give a Hugging Face checkpoint folder")
    try:
        folder.stat()
    except OSError as e:   # ENOENT, or ELOOP for a symlink loop
        raise McugptError(f"--weights {weights_dir}: no such folder"
                          + ("" if isinstance(e, FileNotFoundError) else f" ({e.strerror})")) from None
    if not folder.is_dir():
        raise McugptError(f"--weights {weights_dir}: a file, not a folder (config.json + model.safetensors)")
    # the folder's name names the model (the ONNX graph, the build: UTF-8 text)
    return config_from_hf(folder / "config.json", model or os.fsencode(folder.name).decode("utf-8", "replace"))


def model_weights(cfg: GPTConfig, weights_dir: str | None, weights_seed: int = 0, progress=None) -> dict:
    if weights_dir is not None:
        return load_checkpoint(Path(weights_dir), cfg)
    bar = partial(progress, desc="weights", unit="tensor") if progress else None
    return synthetic_weights(cfg, weights_seed, progress=bar)


def load_model(model: str | None, weights_dir: str | None, weights_seed: int = 0, progress=None):
    """(config, weights, tokenizer) for a preset or a Hugging Face checkpoint folder; the
    folder's config.json wins over the preset."""
    cfg = model_config(model, weights_dir, weights_seed)
    weights = model_weights(cfg, weights_dir, weights_seed, progress)
    tok = load_tokenizer(weights_dir)
    if weights_dir is not None and cfg.vocab_size < tok.n_vocab:   # a prompt could encode to a token with no wte row
        raise McugptError(f"{Path(weights_dir) / 'config.json'}: vocab_size {cfg.vocab_size} is less than the "
                          f"tokenizer's {tok.n_vocab} tokens ({tok.name})")
    return cfg, weights, tok


class _Shape:
    """A stand-in for a weight array: the graph and the plan need only its shape."""

    def __init__(self, shape):
        self.shape = tuple(shape)
        self.nbytes = 4 * int(np.prod(shape))


def stages_of(cfg: GPTConfig) -> list[Stage]:
    """The model's stages, from its decode graph built with shape-only weights: what the
    planner needs, in milliseconds, before any weight is read or written."""
    graph, arrays = build_decode_graph(cfg, {n: _Shape(s) for n, s in tensor_shapes(cfg).items()})
    for name, a in arrays.items():
        graph.initializer.append(onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=a.shape))
    return partition(onnx.helper.make_model(graph))


def check_flash(cfg: GPTConfig, plan: Plan, tokens: list[bytes], stages: list[Stage]) -> int:
    """The image's size, or one line saying it does not fit the board's flash and what
    would (int8, a smaller model). `tokens`: the image's token table (token_bytes_table)."""
    size = image_size(plan, tokens)
    board = plan.profile
    capacity = board.flash_bytes
    if size <= capacity:
        return size
    flash = board.flash[0]
    hint = "a smaller model"
    if plan.dtype == "fp32":
        int8 = image_size(make_plan(cfg, stages, ram=plan.ram_budget, dtype="int8", board=board.name), tokens)
        hint = (f"--dtype int8 ({int8 / MiB:,.1f} MiB)" if int8 <= capacity
                else f"a smaller model: int8 would still be {int8 / MiB:,.1f} MiB")
    raise McugptError(f"{cfg.name} ({plan.dtype}): the flash image is {size / MiB:,.1f} MiB ({size:,} bytes), "
                      f"more than the {board.name} board's {capacity / MiB:,.0f} MiB of flash "
                      f"({flash.chips} x {flash.part}); what would fit: {hint}")


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
                  group: str = "auto", tcm: str = "auto", kv_dtype: str = "auto", verify: str = "auto",
                  prefill: int | None = None, runtime: str = "stream", tiers: str = "auto") -> Compiled:
    """Everything `mcugpt compile` writes; `cc=None` skips the firmware build."""
    progress = progress_bar(quiet)
    cfg = model_config(model, weights_dir, weights_seed)
    tokens = token_bytes_table(load_tokenizer(weights_dir), cfg.vocab_size)
    # plan first, on the graph's shapes alone: a model the board cannot hold is refused
    # before any weight is made or read and before anything is written
    shape_stages = stages_of(cfg)
    check_flash(cfg, make_plan(cfg, shape_stages, ram=ram, ctx=ctx, dtype=dtype, board=board, group=group,
                          tcm=tcm, kv_dtype=kv_dtype, verify=verify, prefill=prefill,
                          runtime=runtime, tiers=tiers),
                tokens, shape_stages)
    out_dir = output_folder(out_dir)
    weights = model_weights(cfg, weights_dir, weights_seed, progress)
    onnx_path = out_dir / "model.onnx"
    export_onnx(cfg, weights, onnx_path, progress=progress)
    del weights  # from here on the weights come from the ONNX file, as a user's model would

    graph = onnx.load(str(onnx_path), load_external_data=False)
    stages = partition(graph)
    plan = make_plan(cfg, stages, ram=ram, ctx=ctx, dtype=dtype, board=board, group=group, tcm=tcm,
                     kv_dtype=kv_dtype, verify=verify, prefill=prefill, runtime=runtime, tiers=tiers)
    (out_dir / "plan.json").write_text(plan.to_json())

    inits = {t.name: t for t in graph.graph.initializer}
    header = write_image(out_dir / "flash.img", cfg, plan, stages,
                         lambda name: initializer_array(inits[name], out_dir),
                         tokens, progress=progress)
    write_headers(out_dir / "include", plan, header["tensor_crcs"])
    # what `mcugpt run` needs to encode prompts and to rebuild the reference for --check, and
    # the image's identity: its header's CRC32, which covers the tables' and the token
    # table's CRCs, and through the tables every weight blob's
    source = {"model": cfg.name, "preset": None if weights_dir else cfg.name,
              "weights": str(Path(weights_dir).resolve()) if weights_dir else None,
              "weights_seed": weights_seed, "image_crc": header["header_crc"]}
    (out_dir / "build.json").write_text(json.dumps(source, indent=1))
    if cc:
        build_firmware(out_dir, plan, cc=cc)
    return Compiled(cfg, stages, plan, out_dir, header)


def load_build_source(out_dir: Path) -> dict:
    if not str(out_dir).strip():
        raise McugptError("--build '': empty; give a folder written by `mcugpt compile`")
    path = Path(out_dir) / "build.json"
    if not path.is_file():
        raise McugptError(f"{out_dir}: not a build folder (no build.json); run `mcugpt compile --out {out_dir}`")
    try:
        source = json.loads(path.read_text())
    except (OSError, ValueError) as e:   # unreadable, not UTF-8, not JSON
        raise McugptError(f"{path}: not a build.json mcugpt wrote ({type(e).__name__}); "
                          f"rerun `mcugpt compile --out {out_dir}`") from None
    keys = ("model", "preset", "weights", "weights_seed", "image_crc")
    if not isinstance(source, dict) or any(k not in source for k in keys):
        raise McugptError(f"{path}: not a build.json this mcugpt wrote (it has no {', '.join(keys)}); "
                          f"rerun `mcugpt compile --out {out_dir}`")
    return source
