"""Render the C headers the firmware is built from (jinja2 templates in templates/).

    include/flash_layout.h  the image format and the stage kinds: target/flash_layout.py and
                            target/stages.py (STAGE_* kind ids, ROLE_* role indices)
    include/model_plan.h    this model's plan: shapes, arena offsets, each role's shape and
                            each tensor's tile rows and residency (compiler/plan.py)
    include/memory_map.h    the board's addresses and registers: target/memory_map.py
"""

from pathlib import Path

import jinja2

from target import flash_layout as fl
from target import memory_map
from target.boards import DMA_TIMEOUT_MARGIN, dma_timeout_cycles
from target.stages import STAGE_KINDS, STAGE_MAX_TENSORS

from .flash_image import row_read_tensors
from .plan import PSRAM_CHECK_BYTES, Plan

_env = jinja2.Environment(loader=jinja2.PackageLoader("compiler", "templates"),
                          undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                          trim_blocks=True, lstrip_blocks=True)

NOT_RESIDENT = 0xFFFFFFFF


def render_flash_layout() -> str:
    return _env.get_template("flash_layout.h.j2").render(
        version=fl.FORMAT_VERSION, magic=fl.MAGIC, sector=fl.SECTOR, name_len=fl.NAME_LEN,
        stage_max_tensors=STAGE_MAX_TENSORS, no_layer=fl.NO_LAYER,
        header_crc_span=fl.HEADER_CRC_SPAN, dtypes=fl.DTYPES, kinds=STAGE_KINDS, structs=fl.STRUCTS)


def role_specs(plan: Plan) -> list[dict]:
    """Per stage kind, per role: the tensor the firmware must find there ([rows, cols] as
    stored, image dtype, bytes per row). Vectors are one row."""
    out = []
    for kind in STAGE_KINDS:
        stage = next((s for s in plan.stages if s.kind == kind.name), None)
        specs = []
        for r in kind.roles:
            if stage is None:
                continue
            t = plan.stage_tensor(stage, r.name)
            specs.append({"role": r.name, "rows": t.rows, "cols": t.cols, "row_bytes": t.row_bytes,
                          "dtype": "INT8_TILED" if t.dtype == "int8" else "FP32"})
        out.append({"kind": kind, "specs": specs})
    return out


def _check(plan: Plan) -> None:
    """What the firmware relies on and cannot check at compile time (its tables are data)."""
    weights, logits = plan.buffer("weights").bytes, plan.buffer("logits").bytes
    for t in plan.tensors:   # (the XIP runtime reads its tiles in place: no buffer)
        if t.access == "matrix" and t.tile_rows * t.row_bytes > weights and plan.runtime == "stream":
            raise AssertionError(f"{t.name}: a tile of {t.tile_rows} rows exceeds the {weights}-byte weight buffer")
    head = next(s for s in plan.stages if s.kind == "head")
    (_, wte), = plan.matrices(head)
    if wte.tile_rows * 4 > logits:
        raise AssertionError(f"the head's tile of {wte.tile_rows} logits exceeds the {logits}-byte buffer")
    for kind in role_specs(plan):   # every stage of a kind reads tensors of the same shapes
        for s in (s for s in plan.stages if s.kind == kind["kind"].name):
            for spec in kind["specs"]:
                t = plan.stage_tensor(s, spec["role"])
                if (t.rows, t.cols) != (spec["rows"], spec["cols"]):
                    raise AssertionError(f"{s.name}.{spec['role']}: {t.shape} differs from its kind's")


def render_model_plan(plan: Plan, tensor_crcs: list[int]) -> str:
    """`tensor_crcs`: the CRC32 of each weight blob of the image written with this plan, in
    the tensor table's order: the firmware refuses an image whose tensor table says otherwise
    (weights edited and their CRCs sealed again are another model, not this build's)."""
    _check(plan)
    if len(tensor_crcs) != len(plan.tensors):
        raise AssertionError(f"{len(tensor_crcs)} tensor CRCs for {len(plan.tensors)} tensors")
    row_crc_tables_bytes = fl.ROW_CRC_BYTES * sum(plan.tensors[i].rows for i in row_read_tensors(plan))
    return _env.get_template("model_plan.h.j2").render(
        plan=plan, model=plan.model, roles=role_specs(plan), not_resident=NOT_RESIDENT,
        row_crc_tables_bytes=row_crc_tables_bytes, tensor_crcs=tensor_crcs,
        dma_timeout=dma_timeout_cycles(plan.profile), dma_margin=DMA_TIMEOUT_MARGIN,
        psram_check_bytes=PSRAM_CHECK_BYTES)


def render_memory_map() -> str:
    return _env.get_template("memory_map.h.j2").render(m=memory_map)


def write_headers(out_dir: Path, plan: Plan, tensor_crcs: list[int]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in (("flash_layout.h", render_flash_layout()), ("model_plan.h", render_model_plan(plan, tensor_crcs)),
                       ("memory_map.h", render_memory_map())):
        p = out_dir / name
        p.write_text(text)
        paths.append(p)
    return paths
