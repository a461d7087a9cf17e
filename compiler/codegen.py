"""Render the C headers the firmware is built from (jinja2 templates in templates/)."""

from pathlib import Path

import jinja2

from target import flash_layout as fl
from target import memory_map
from .plan import Plan
from target.stages import STAGE_KINDS

_env = jinja2.Environment(loader=jinja2.PackageLoader("compiler", "templates"),
                          undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                          trim_blocks=True, lstrip_blocks=True)


def render_flash_layout() -> str:
    return _env.get_template("flash_layout.h.j2").render(
        version=fl.FORMAT_VERSION, magic=fl.MAGIC, sector=fl.SECTOR, name_len=fl.NAME_LEN,
        stage_max_tensors=fl.STAGE_MAX_TENSORS, no_layer=fl.NO_LAYER,
        header_crc_span=fl.HEADER_CRC_SPAN, dtypes=fl.DTYPES, kinds=STAGE_KINDS, structs=fl.STRUCTS)


def render_model_plan(plan: Plan) -> str:
    d = plan.data
    tile_rows = {}
    for s in d["stages"]:
        for m in s["matrices"]:
            tile_rows[f"{s['kind']}_{m['role']}"] = m["rows_per_tile"]
    return _env.get_template("model_plan.h.j2").render(
        plan=d, model=d["model"], tile_rows=tile_rows)


def render_memory_map() -> str:
    return _env.get_template("memory_map.h.j2").render(m=memory_map)


def write_headers(out_dir: Path, plan: Plan) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in (("flash_layout.h", render_flash_layout()), ("model_plan.h", render_model_plan(plan)),
                       ("memory_map.h", render_memory_map())):
        p = out_dir / name
        p.write_text(text)
        paths.append(p)
    return paths
