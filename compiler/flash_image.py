"""Write and read the flash image (layout in flash_layout.py, format in docs/flash_image.md)."""

import mmap
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import EOT_TOKEN, GPTConfig
from .errors import McugptError
from .flash_layout import (DTYPES, FORMAT_VERSION, HEADER, HEADER_CRC_SPAN, MAGIC, NO_LAYER,
                           SECTOR, STAGE_ENTRY, TENSOR_ENTRY, align)
from .partition import Stage
from .plan import Plan, is_quantized, row_bytes, tensor_order
from .quantize import quantize_rows
from .stages import KIND_BY_NAME

ERASED = 0xFF  # NOR flash reads 0xFF where nothing was programmed: padding looks like it


@dataclass
class Image:
    header: dict
    stages: list[dict]
    tensors: list[dict]
    tokens: list[bytes]


def _crc_chunks(data, bar=None, chunk=16 << 20) -> int:
    crc = 0
    for i in range(0, len(data), chunk):
        crc = zlib.crc32(data[i:i + chunk], crc)
        if bar:
            bar.update(min(chunk, len(data) - i))
    return crc


def _tile_rows(plan: Plan) -> dict[str, int]:
    """Rows per tile of every streamed matrix, by initializer (wte: the head's tiles)."""
    out = {}
    for s in plan.data["stages"]:
        for m in s["matrices"]:
            name = next(t["initializer"] for t in s["tensors"] if t["role"] == m["role"])
            out[name] = m["rows_per_tile"]
    return out


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


def token_table_bytes(tokens: list[bytes]) -> bytes:
    offsets = np.zeros(len(tokens) + 1, "<u4")
    offsets[1:] = np.cumsum([len(t) for t in tokens])
    return offsets.tobytes() + b"".join(tokens)


def write_image(path: Path, cfg: GPTConfig, plan: Plan, stages: list[Stage], arrays,
                tokens: list[bytes], progress=None) -> dict:
    """Write `path`; `arrays(name)` returns an initializer's values in ONNX layout."""
    order = tensor_order(stages)
    index = {t.initializer: i for i, t in enumerate(order)}
    tables_size = len(stages) * STAGE_ENTRY.size + len(order) * TENSOR_ENTRY.size
    tokens_blob = token_table_bytes(tokens)
    tables_offset = SECTOR
    tokens_offset = align(tables_offset + tables_size)
    weights_offset = align(tokens_offset + len(tokens_blob))
    dtype = plan.data["dtype"]
    tile_rows = _tile_rows(plan)
    offset, entries = weights_offset, []
    for t in order:
        rows, cols = (t.shape[0], t.shape[1]) if len(t.shape) == 2 else (1, t.shape[0])
        quantized = is_quantized(t, dtype)
        nbytes = rows * row_bytes(cols, dtype) if quantized else rows * cols * 4
        entries.append({"name": t.initializer, "offset": offset, "size": nbytes,
                        "dtype": DTYPES["int8_tiled" if quantized else "fp32"], "rows": rows, "cols": cols})
        offset = align(offset + nbytes)
    image_size = offset
    if image_size >= 1 << 32:
        raise McugptError(f"{cfg.name}: the image would be {image_size:,} bytes, over the format's 4 GiB")

    bar = progress(total=image_size, unit="B", unit_scale=True, desc="flash image") if progress else None
    with open(path, "wb") as f:
        f.truncate(image_size)  # sized up front so a short write cannot go unnoticed
        f.seek(tokens_offset)
        f.write(tokens_blob)
        for t, e in zip(order, entries):
            a = np.ascontiguousarray(arrays(t.initializer).T if t.transpose else arrays(t.initializer),
                                     dtype="<f4")
            if is_quantized(t, dtype):
                data = int8_tiles(a, tile_rows[t.initializer])
            else:
                data = a.reshape(-1)
            assert data.nbytes == e["size"], (t.initializer, data.nbytes, e["size"])
            f.seek(e["offset"])
            raw = memoryview(data).cast("B")
            f.write(raw)
            e["crc"] = _crc_chunks(raw, bar)
            pad = align(e["size"]) - e["size"]
            f.write(bytes([ERASED]) * pad)
        tables = b""
        for s in stages:
            tables += STAGE_ENTRY.pack(
                kind=KIND_BY_NAME[s.kind].id,
                layer=NO_LAYER if s.layer is None else s.layer,
                n_tensors=len(s.tensors),
                tensors=[index[t.initializer] for t in s.tensors],
                flash_bytes_per_token=plan.data["stages"][s.index]["flash_bytes_per_token"],
                macs=plan.data["stages"][s.index]["macs"])
        for e in entries:
            tables += TENSOR_ENTRY.pack(**e)
        f.seek(tables_offset)
        f.write(tables)
        header = dict(
            magic=MAGIC, version=FORMAT_VERSION, header_size=HEADER.size, image_size=image_size,
            n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, n_ctx_model=cfg.n_ctx,
            n_ctx=plan.data["ctx"], vocab_size=cfg.vocab_size, eot_token=EOT_TOKEN,
            ln_eps=cfg.layer_norm_epsilon, dtype=DTYPES["int8_tiled" if dtype == "int8" else "fp32"],
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
    return header


def _bad(path, msg):
    raise McugptError(f"{path}: {msg}")


def read_image(path: Path, verify_weights: bool = True, progress=None) -> Image:
    """Parse and check an image; every inconsistency is an error saying where it is."""
    path = Path(path)
    if not path.is_file():
        _bad(path, "no such flash image")
    with open(path, "rb") as f:
        size = path.stat().st_size
        if size < HEADER.size:
            _bad(path, f"truncated: {size} bytes, smaller than the {HEADER.size}-byte header")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            return _parse(path, f, buf, size, verify_weights, progress)
        finally:
            buf.close()


def _crc_file(f, offset: int, size: int, bar=None, chunk=8 << 20) -> int:
    crc = 0
    f.seek(offset)
    while size > 0:
        data = f.read(min(chunk, size))
        crc = zlib.crc32(data, crc)
        size -= len(data)
        if bar:
            bar.update(len(data))
    return crc


def _parse(path, f, buf, size, verify_weights, progress) -> Image:
    h = HEADER.unpack(buf[:HEADER.size])
    if h["magic"] != MAGIC:
        _bad(path, f"not an mcugpt flash image (magic 0x{h['magic']:08x}, expected 0x{MAGIC:08x})")
    if h["version"] != FORMAT_VERSION:
        _bad(path, f"image format version {h['version']}, this mcugpt reads version {FORMAT_VERSION}")
    crc = zlib.crc32(buf[:HEADER_CRC_SPAN])
    if crc != h["header_crc"]:
        _bad(path, f"header CRC32 mismatch (stored 0x{h['header_crc']:08x}, computed 0x{crc:08x})")
    if size < h["image_size"]:
        _bad(path, f"truncated: {size:,} bytes, the header says {h['image_size']:,}")
    for what in ("tables", "tokens"):
        off, n = h[f"{what}_offset"], h[f"{what}_size"]
        crc = zlib.crc32(buf[off:off + n])
        if crc != h[f"{what}_crc"]:
            _bad(path, f"{what} section at 0x{off:x} ({n:,} bytes): CRC32 mismatch "
                       f"(stored 0x{h[what + '_crc']:08x}, computed 0x{crc:08x})")
    off = h["tables_offset"]
    stages = [STAGE_ENTRY.unpack(buf[off + i * STAGE_ENTRY.size:off + (i + 1) * STAGE_ENTRY.size]) for i in range(h["stage_count"])]
    off += h["stage_count"] * STAGE_ENTRY.size
    tensors = [TENSOR_ENTRY.unpack(buf[off + i * TENSOR_ENTRY.size:off + (i + 1) * TENSOR_ENTRY.size]) for i in range(h["tensor_count"])]
    off, v = h["tokens_offset"], h["vocab_size"]
    offs = np.frombuffer(buf[off:off + 4 * (v + 1)], "<u4")
    blob = buf[off + 4 * (v + 1): off + h["tokens_size"]]
    tokens = [blob[offs[i]:offs[i + 1]] for i in range(v)]
    if verify_weights:
        total = sum(t["size"] for t in tensors)
        bar = progress(total=total, unit="B", unit_scale=True, desc="verify") if progress else None
        for i, t in enumerate(tensors):
            if t["offset"] % SECTOR or t["offset"] + t["size"] > h["image_size"]:
                _bad(path, f"tensor {i} '{t['name']}' at 0x{t['offset']:x} is misaligned or past the end")
            crc = _crc_file(f, t["offset"], t["size"], bar)
            if crc != t["crc"]:
                _bad(path, f"tensor {i} '{t['name']}' at 0x{t['offset']:x} ({t['size']:,} bytes): "
                           f"CRC32 mismatch (stored 0x{t['crc']:08x}, computed 0x{crc:08x})")
        if bar:
            bar.close()
    return Image(h, stages, tensors, tokens)


def tensor_array(path: Path, image: Image, index: int) -> np.ndarray:
    """One tensor of an image, as stored ([rows, cols], row-major)."""
    t = image.tensors[index]
    return np.fromfile(path, "<f4", count=t["rows"] * t["cols"], offset=t["offset"]).reshape(t["rows"], t["cols"])
