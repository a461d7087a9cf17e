"""Write the flash image (its layout, and the reader: target/flash_layout.py; format: docs/flash_image.md)."""

import zlib
from pathlib import Path

import numpy as np

from target.errors import McugptError
from target.flash_layout import (
    DTYPES,
    FORMAT_VERSION,
    HEADER,
    HEADER_CRC_SPAN,
    MAGIC,
    NO_LAYER,
    ROW_CRC_BYTES,
    SECTOR,
    STAGE_ENTRY,
    TENSOR_ENTRY,
    align,
    int8_row_span,
    row_crc,
)
from target.stages import KIND_BY_NAME, ROW

from .config import EOT_TOKEN, GPTConfig
from .partition import Stage
from .plan import Plan
from .quantize import quantize_rows

ERASED = 0xFF  # NOR flash reads 0xFF where nothing was programmed: padding looks like it


def _crc_chunks(data, bar=None, chunk=16 << 20) -> int:
    crc = 0
    for i in range(0, len(data), chunk):
        crc = zlib.crc32(data[i:i + chunk], crc)
        if bar:
            bar.update(min(chunk, len(data) - i))
    return crc


def int8_tiles(w_out_in: np.ndarray, tile_rows: int) -> np.ndarray:
    """A matrix [out, in] quantized per row and laid out tile by tile: each tile of
    `tile_rows` rows (the last may be short) is its rows' float32 scales, then their int8
    values row after row (flash_layout.DTYPES["int8_tiled"])."""
    q, scale = quantize_rows(w_out_in)
    parts = []
    for start in range(0, q.shape[0], tile_rows):
        parts.append(scale[start:start + tile_rows].astype("<f4").view(np.uint8))
        parts.append(q[start:start + tile_rows].reshape(-1).view(np.uint8))
    return np.concatenate(parts)


def _row_crcs(raw: memoryview, e: dict) -> bytes:
    """Its row CRC table: one u32 CRC32 per row (flash_layout.row_crc)."""
    rows, cols = e["rows"], e["cols"]
    if not e["tile_rows"]:
        crcs = [row_crc(raw[r * cols * 4:(r + 1) * cols * 4]) for r in range(rows)]
    else:
        crcs = []
        for r in range(rows):
            scale, values = int8_row_span(r, rows, cols, e["tile_rows"])
            crcs.append(row_crc(raw[values:values + cols], raw[scale:scale + 4]))
    return np.array(crcs, "<u4").tobytes()


def token_table_bytes(tokens: list[bytes]) -> bytes:
    offsets = np.zeros(len(tokens) + 1, "<u4")
    offsets[1:] = np.cumsum([len(t) for t in tokens])
    return offsets.tobytes() + b"".join(tokens)


def row_read_tensors(plan: Plan) -> list[int]:
    """The tensors some stage reads a row at a time (the embedding's wte and wpe), in table order:
    each gets a row CRC table."""
    return sorted({s.tensors[r.name] for s in plan.stages for r in KIND_BY_NAME[s.kind].roles if r.access == ROW})


def layout(plan: Plan, tokens_size: int) -> tuple[dict, list[dict]]:
    """Where every section and weight blob goes: ({tables_offset, tables_size, tokens_offset,
    weights_offset, image_size}, the tensor table's entries without their CRCs)."""
    row_crcs = SECTOR + len(plan.stages) * STAGE_ENTRY.size + len(plan.tensors) * TENSOR_ENTRY.size
    at = {}
    for i in row_read_tensors(plan):
        at[i] = row_crcs
        row_crcs += ROW_CRC_BYTES * plan.tensors[i].rows
    tables_size = row_crcs - SECTOR
    sections = {"tables_offset": SECTOR, "tables_size": tables_size,
                "tokens_offset": align(SECTOR + tables_size)}
    sections["weights_offset"] = align(sections["tokens_offset"] + tokens_size)
    offset, entries = sections["weights_offset"], []
    for t in plan.tensors:
        int8 = t.dtype == "int8"
        entries.append({"name": t.name, "offset": offset, "size": t.bytes,
                        "dtype": DTYPES["int8_tiled" if int8 else "fp32"], "rows": t.rows, "cols": t.cols,
                        "tile_rows": t.tile_rows if int8 else 0, "row_crcs": at.get(t.index, 0)})
        offset = align(offset + t.bytes)
    sections["image_size"] = offset
    return sections, entries


def image_size(plan: Plan, tokens: list[bytes]) -> int:
    """The bytes `write_image` will write, known before any weight is read."""
    return layout(plan, len(token_table_bytes(tokens)))[0]["image_size"]


def write_image(path: Path, cfg: GPTConfig, plan: Plan, stages: list[Stage], arrays,
                tokens: list[bytes], progress=None) -> dict:
    """Write `path`; `arrays(name)` returns an initializer's values in ONNX layout. The tensor
    table is the plan's, in its order; each tensor is stored as the plan says (fp32, or int8
    in the plan's tiles of rows)."""
    transpose = {t.initializer: t.transpose for s in stages for t in s.tensors}
    tokens_blob = token_table_bytes(tokens)
    sections, entries = layout(plan, len(tokens_blob))
    tables_offset, tables_size = sections["tables_offset"], sections["tables_size"]
    tokens_offset, weights_offset = sections["tokens_offset"], sections["weights_offset"]
    image_size = sections["image_size"]
    if image_size >= 1 << 32:
        raise McugptError(f"{cfg.name}: the image would be {image_size:,} bytes, over the format's 4 GiB")

    bar = progress(total=image_size, unit="B", unit_scale=True, desc="flash image") if progress else None
    row_crc_tables = []   # in tensor-table order, as layout() placed them
    with open(path, "wb") as f:
        f.truncate(image_size)  # sized up front so a short write cannot go unnoticed
        f.seek(tokens_offset)
        f.write(tokens_blob)
        for t, e in zip(plan.tensors, entries):
            a = np.ascontiguousarray(arrays(t.name).T if transpose[t.name] else arrays(t.name), dtype="<f4")
            if t.dtype == "int8":
                data = int8_tiles(a, t.tile_rows)
            else:
                data = a.reshape(-1)
            assert data.nbytes == e["size"], (t.name, data.nbytes, e["size"])
            f.seek(e["offset"])
            raw = memoryview(data).cast("B")
            f.write(raw)
            e["crc"] = _crc_chunks(raw, bar)
            if e["row_crcs"]:
                row_crc_tables.append(_row_crcs(raw, e))
            pad = align(e["size"]) - e["size"]
            f.write(bytes([ERASED]) * pad)
        tables = b""
        for s in stages:
            tables += STAGE_ENTRY.pack(
                kind=KIND_BY_NAME[s.kind].id,
                layer=NO_LAYER if s.layer is None else s.layer,
                n_tensors=len(s.tensors),
                tensors=list(plan.stages[s.index].tensors.values()),
                flash_bytes_per_token=plan.stages[s.index].flash_bytes_per_token,
                macs=plan.stages[s.index].macs)
        for e in entries:
            tables += TENSOR_ENTRY.pack(**e)
        tables += b"".join(row_crc_tables)
        assert len(tables) == tables_size
        f.seek(tables_offset)
        f.write(tables)
        header = dict(
            magic=MAGIC, version=FORMAT_VERSION, header_size=HEADER.size, image_size=image_size,
            n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, n_ctx_model=cfg.n_ctx,
            n_ctx=plan.ctx, vocab_size=cfg.vocab_size, eot_token=EOT_TOKEN,
            ln_eps=cfg.layer_norm_epsilon, dtype=DTYPES["int8_tiled" if plan.dtype == "int8" else "fp32"],
            plan_id=plan.plan_id,
            stage_count=len(stages), tensor_count=len(entries),
            tables_offset=tables_offset, tables_size=tables_size, tables_crc=zlib.crc32(tables),
            tokens_offset=tokens_offset, tokens_size=len(tokens_blob), tokens_crc=zlib.crc32(tokens_blob),
            weights_offset=weights_offset, weights_size=image_size - weights_offset)
        packed = HEADER.pack(**header)
        header["header_crc"] = zlib.crc32(packed[:HEADER_CRC_SPAN])
        packed = HEADER.pack(**header)
        f.seek(0)
        f.write(packed + bytes([ERASED]) * (tables_offset - len(packed)))
        # padding between the tables and the token table, and up to the weights
        for start, end in ((tables_offset + tables_size, tokens_offset),
                           (tokens_offset + len(tokens_blob), weights_offset)):
            f.seek(start)
            f.write(bytes([ERASED]) * (end - start))
    if bar:
        bar.update(image_size - bar.n)
        bar.close()
    return {**header, "tensor_crcs": [e["crc"] for e in entries]}
