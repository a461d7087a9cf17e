"""The flash image's binary layout: defined here once, packed by Python, rendered into C.

All integers are little-endian. An image is a sequence of 4 KiB-aligned sections:

  offset 0        header        one sector: magic, format version, model config, plan id,
                                section offsets, CRC32s; ends with the header's own CRC32
  tables_offset   stage table   stage_count x StageEntry, then tensor table,
                                tensor_count x TensorEntry, then the row CRC tables: one
                                u32 CRC32 per row of each tensor read a row at a time
                                (the embedding's wte and wpe); the section's CRC32 in the header
  tokens_offset   token table   (vocab_size + 1) u32 offsets, then the token bytes
                                (token i prints bytes[off[i]:off[i+1]]; CRC32 in header)
  weights_offset  weights       one blob per tensor, each starting on a sector boundary,
                                each with its CRC32 in its TensorEntry

CRC32 is the common one (zlib, IEEE 802.3, reflected polynomial 0xEDB88320).
Matrices are stored row-major [out, in], so a tile of output rows is contiguous.
A tensor shared by two stages (GPT-2's tied wte) is stored once, and both stages name it.
"""

import itertools
import math
import mmap
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from target.errors import McugptError
from target.stages import ROW, STAGE_KINDS, STAGE_MAX_TENSORS, stage_name, stage_sequence

MAGIC = 0x5450474D      # "MGPT" read as a little-endian u32
FORMAT_VERSION = 2      # 2: TensorEntry tile_rows and row_crcs, the row CRC tables
SECTOR = 4096           # erase sector of the SPI NOR flash; every section starts on one
NAME_LEN = 32           # tensor names, NUL-padded
ROW_CRC_BYTES = 4       # one row's CRC32 in a row CRC table

HEADER_RESERVED_WORDS = 16  # zero; room for later fields without moving the CRC


# Weight data types in the image. int8_tiled: a matrix quantized per row (compiler/quantize.py)
# and stored in the plan's tiles of rows, each tile = its rows' float32 scales, then their
# int8 values; a tile is one contiguous read that brings its own scales.
DTYPES = {"fp32": 0, "int8_tiled": 1}

_CTYPES = {"u32": ("I", "uint32_t"), "f32": ("f", "float")}


@dataclass(frozen=True)
class Field:
    name: str
    type: str       # u32, f32, or char (with count)
    count: int = 1  # > 1 for arrays
    doc: str = ""

    @property
    def fmt(self) -> str:
        if self.type == "char":
            return f"{self.count}s"
        code = _CTYPES[self.type][0]
        return code if self.count == 1 else f"{self.count}{code}"

    @property
    def c_decl(self) -> str:
        ctype = "char" if self.type == "char" else _CTYPES[self.type][1]
        return f"{ctype} {self.name}" + (f"[{self.count}]" if self.count > 1 or self.type == "char" else "")


@dataclass(frozen=True)
class Struct:
    name: str
    fields: tuple[Field, ...]
    doc: str

    @property
    def fmt(self) -> str:
        return "<" + "".join(f.fmt for f in self.fields)

    @property
    def size(self) -> int:
        return struct.calcsize(self.fmt)

    def offset_of(self, name: str) -> int:
        fmt = "<"
        for f in self.fields:
            if f.name == name:
                return struct.calcsize(fmt)
            fmt += f.fmt
        raise KeyError(name)

    def pack(self, **values) -> bytes:
        flat = []
        for f in self.fields:
            v = values.get(f.name, b"" if f.type == "char" else (0 if f.count == 1 else [0] * f.count))
            if f.type == "char":
                v = v.encode() if isinstance(v, str) else v
                if len(v) >= f.count:
                    raise ValueError(f"{self.name}.{f.name}: '{v.decode()}' is longer than {f.count - 1} bytes")
                flat.append(v)
            elif f.count == 1:
                flat.append(v)
            else:
                flat.extend(list(v) + [0] * (f.count - len(v)))
        return struct.pack(self.fmt, *flat)

    def unpack(self, buf: bytes) -> dict:
        vals = list(struct.unpack(self.fmt, buf[: self.size]))
        out = {}
        for f in self.fields:
            if f.type == "char":
                out[f.name] = printable(vals.pop(0).rstrip(b"\0"))
            elif f.count == 1:
                out[f.name] = vals.pop(0)
            else:
                out[f.name], vals = vals[: f.count], vals[f.count:]
        return out


HEADER = Struct("ImageHeader", (
    Field("magic", "u32", doc="MAGIC"),
    Field("version", "u32", doc="FORMAT_VERSION; a reader refuses any other"),
    Field("header_size", "u32", doc="bytes of this struct"),
    Field("image_size", "u32", doc="bytes of the whole image"),
    Field("n_layer", "u32"),
    Field("n_head", "u32"),
    Field("n_embd", "u32"),
    Field("n_ctx_model", "u32", doc="the model's context (wpe rows)"),
    Field("n_ctx", "u32", doc="the planned context: KV cache positions"),
    Field("vocab_size", "u32"),
    Field("eot_token", "u32", doc="<|endoftext|>"),
    Field("ln_eps", "f32", doc="layer norm epsilon"),
    Field("dtype", "u32", doc="weight data type, DTYPES"),
    Field("plan_id", "u32", doc="CRC32 of the memory plan the firmware was generated from"),
    Field("stage_count", "u32"),
    Field("tensor_count", "u32"),
    Field("tables_offset", "u32", doc="stage table, then tensor table"),
    Field("tables_size", "u32"),
    Field("tables_crc", "u32"),
    Field("tokens_offset", "u32", doc="token-bytes table"),
    Field("tokens_size", "u32"),
    Field("tokens_crc", "u32"),
    Field("weights_offset", "u32", doc="first weight blob"),
    Field("weights_size", "u32"),
    Field("reserved", "u32", HEADER_RESERVED_WORDS, doc="zero"),
    Field("header_crc", "u32", doc="CRC32 of every header byte before this field"),
), "Sector 0 of the image.")

STAGE_ENTRY = Struct("StageEntry", (
    Field("kind", "u32", doc="StageKind id"),
    Field("layer", "u32", doc="block index; NO_LAYER for embed and head"),
    Field("n_tensors", "u32"),
    Field("tensors", "u32", STAGE_MAX_TENSORS, doc="indices into the tensor table, in the kind's role order"),
    Field("flash_bytes_per_token", "u32", doc="bytes this stage reads from flash for one token"),
    Field("macs", "u32", doc="multiply-accumulates per token (attn_core: at the planned context)"),
), "One atomic stage, in execution order.")

TENSOR_ENTRY = Struct("TensorEntry", (
    Field("name", "char", NAME_LEN, doc="the checkpoint's tensor name, NUL-padded"),
    Field("offset", "u32", doc="byte offset in the image, a multiple of SECTOR"),
    Field("size", "u32", doc="bytes"),
    Field("crc", "u32", doc="CRC32 of the bytes"),
    Field("dtype", "u32"),
    Field("rows", "u32", doc="rows (1 for a vector)"),
    Field("cols", "u32", doc="elements per row"),
    Field("tile_rows", "u32", doc="int8_tiled: rows per tile, the blob's layout; fp32: 0"),
    Field("row_crcs", "u32", doc="image offset of its row CRC table (rows x u32) if read a row at a time, else 0"),
), "One weight blob.")

NO_LAYER = 0xFFFFFFFF
STRUCTS = (HEADER, STAGE_ENTRY, TENSOR_ENTRY)
HEADER_CRC_SPAN = HEADER.offset_of("header_crc")


def align(n: int, to: int = SECTOR) -> int:
    return (n + to - 1) // to * to


def printable(raw: bytes) -> str:
    """Bytes as text that can go in a message: printable ASCII as is, anything else \\xNN."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in raw)


def row_crc(row: bytes, scale: bytes = b"") -> int:
    """A row's CRC32 in its tensor's row CRC table: fp32, its values' bytes; int8_tiled, its
    float32 scale's 4 bytes then its int8 values (the firmware reads the two and feeds both
    through the CRC unit, in that order)."""
    return zlib.crc32(row, zlib.crc32(scale))


def int8_row_span(row: int, rows: int, cols: int, tile_rows: int) -> tuple[int, int]:
    """Where row `row` of an int8_tiled blob is: (offset of its scale, offset of its values)."""
    j = row % tile_rows
    first = row - j
    n = min(tile_rows, rows - first)
    tile = first * (cols + 4)
    return tile + 4 * j, tile + 4 * n + j * cols


# ----------------------------------------------------------------------------
# reading an image: the host's view of what the firmware reads
#
# The reader is the format's specification: it checks every header and table field against
# the file and against each other, so an image that passes is one the firmware can run
# (given the plan it was made for: the firmware compares the rest with its own plan). A
# CRC-valid but inconsistent image is refused in one line that names the field and its value.


@dataclass
class Image:
    header: dict
    stages: list[dict]
    tensors: list[dict]
    tokens: list[bytes]


def _bad(path, msg):
    raise McugptError(f"{path}: {msg}")


def read_image(path: Path, verify_weights: bool = True, progress=None) -> Image:
    """Parse and check an image; every inconsistency is an error naming the field and its
    value. `verify_weights`: also every weight blob's CRC32 and every row CRC."""
    if not str(path).strip():   # (before Path(''), which is '.')
        raise McugptError("flash image '': empty; give a flash.img written by `mcugpt compile`")
    path = Path(path)
    if path.is_dir():
        _bad(path, "a folder, not a flash image" + (" (the image is its flash.img)"
                                                    if (path / "flash.img").is_file() else ""))
    if not path.is_file():
        raise McugptError(f"{path}: no such flash image")
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


def _model(h: dict):
    """The header's model config, as target/stages.py's dims read it."""
    return SimpleNamespace(n_embd=h["n_embd"], n_ctx=h["n_ctx_model"], vocab_size=h["vocab_size"])


def row_crc_bytes(stages: list[dict], tensors: list[dict]) -> int:
    """Bytes of the row CRC tables: one CRC32 per row of each tensor some stage reads a row at a time."""
    return ROW_CRC_BYTES * sum(tensors[i]["rows"] for i in _row_read_tensors(stages))


def _row_read_tensors(stages: list[dict]) -> list[int]:
    """The tensors a stage's ROW role names (the embedding's wte and wpe), in table order.
    The stages' kinds must have been checked."""
    return sorted({index for s in stages for role, index in zip(STAGE_KINDS[s["kind"]].roles, s["tensors"])
                   if role.access == ROW})


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
    _check_header(path, h, size)
    for what in ("tables", "tokens"):
        off, n = h[f"{what}_offset"], h[f"{what}_size"]
        crc = zlib.crc32(buf[off:off + n])
        if crc != h[f"{what}_crc"]:
            _bad(path, f"{what} section at 0x{off:x} ({n:,} bytes): CRC32 mismatch "
                       f"(stored 0x{h[what + '_crc']:08x}, computed 0x{crc:08x})")
    off = h["tables_offset"]
    stages = [STAGE_ENTRY.unpack(buf[off + i * STAGE_ENTRY.size:off + (i + 1) * STAGE_ENTRY.size])
              for i in range(h["stage_count"])]
    off += h["stage_count"] * STAGE_ENTRY.size
    raw_names = [bytes(buf[off + i * TENSOR_ENTRY.size:off + i * TENSOR_ENTRY.size + NAME_LEN])
                 for i in range(h["tensor_count"])]
    tensors = [TENSOR_ENTRY.unpack(buf[off + i * TENSOR_ENTRY.size:off + (i + 1) * TENSOR_ENTRY.size])
               for i in range(h["tensor_count"])]
    _check_stages(path, h, stages, tensors)
    _check_tensors(path, h, stages, tensors, raw_names)
    tokens = _tokens(path, h, buf)
    if verify_weights:
        _verify_weights(path, f, buf, tensors, stages, progress)
    return Image(h, stages, tensors, tokens)


def _check_header(path, h: dict, size: int) -> None:
    def bad(field, why):
        _bad(path, f"header {field} = {h[field]!r}: {why}")

    if h["header_size"] != HEADER.size:
        bad("header_size", f"this format's header is {HEADER.size} bytes")
    if h["image_size"] != size:
        bad("image_size", f"the file has {size:,} bytes")
    if any(h["reserved"]):
        word = next(i for i, w in enumerate(h["reserved"]) if w)
        _bad(path, f"header reserved[{word}] = 0x{h['reserved'][word]:08x}: reserved words must be zero")
    for field in ("n_layer", "n_head", "n_embd", "n_ctx_model", "n_ctx", "vocab_size"):
        if h[field] < 1:
            bad(field, "must be at least 1")
    if h["n_embd"] % h["n_head"]:
        bad("n_embd", f"not a multiple of n_head {h['n_head']}")
    if h["n_ctx"] > h["n_ctx_model"]:
        bad("n_ctx", f"past the model's context, n_ctx_model {h['n_ctx_model']:,}")
    if h["eot_token"] >= h["vocab_size"]:
        bad("eot_token", f"not a token of the {h['vocab_size']:,}-token vocabulary")
    if not (math.isfinite(h["ln_eps"]) and h["ln_eps"] > 0):
        bad("ln_eps", "must be finite and > 0")
    if h["dtype"] not in DTYPES.values():
        bad("dtype", f"no weight dtype (known: {', '.join(f'{v} {k}' for k, v in DTYPES.items())})")
    in_block = [k for k in STAGE_KINDS if k.in_block]
    stages = len(STAGE_KINDS) - len(in_block) + len(in_block) * h["n_layer"]
    if h["stage_count"] != stages:
        bad("stage_count", f"{h['n_layer']} layers make {stages} stages "
                           f"(embed, {len(in_block)} per block, head)")
    slots = sum(len(k.roles) for k in STAGE_KINDS if not k.in_block) \
        + h["n_layer"] * sum(len(k.roles) for k in in_block)   # every stage's roles: at most one tensor each
    if not 1 <= h["tensor_count"] <= slots:
        bad("tensor_count", f"the stages of {h['n_layer']} layers name 1..{slots} tensors")
    # the sections, in order, each on a sector, inside the file, none overlapping the next
    prev_end, prev = HEADER.size, "the header"
    for what in ("tables", "tokens", "weights"):
        off, n = h[f"{what}_offset"], h[f"{what}_size"]
        if off % SECTOR:
            bad(f"{what}_offset", f"not a multiple of the {SECTOR}-byte sector")
        if off < prev_end:
            bad(f"{what}_offset", f"overlaps {prev}, which ends at 0x{prev_end:x}")
        if off > size:
            bad(f"{what}_offset", f"past the file's {size:,} bytes")
        if off + n > size:
            bad(f"{what}_size", f"at 0x{off:x} it ends at 0x{off + n:x}, past the file's {size:,} bytes")
        prev_end, prev = off + n, f"the {what} section"
    if h["weights_offset"] + h["weights_size"] != h["image_size"]:
        bad("weights_size", f"the weights run from 0x{h['weights_offset']:x} to the end of the image, "
                            f"{h['image_size'] - h['weights_offset']:,} bytes")
    fixed = h["stage_count"] * STAGE_ENTRY.size + h["tensor_count"] * TENSOR_ENTRY.size
    if h["tables_size"] < fixed:
        bad("tables_size", f"{h['stage_count']} stages and {h['tensor_count']} tensors take {fixed:,} bytes")
    if h["tokens_size"] < 4 * (h["vocab_size"] + 1):
        bad("tokens_size", f"the offsets of {h['vocab_size']:,} tokens take {4 * (h['vocab_size'] + 1):,} bytes")


def _check_stages(path, h: dict, stages: list[dict], tensors: list[dict]) -> None:
    """Kinds in order (embed, then per block ln_1 .. mlp with layer = block index, then head),
    each with its kind's tensors, in range and of its roles' shapes and dtypes."""
    cfg = _model(h)
    int8 = h["dtype"] == DTYPES["int8_tiled"]
    for i, (s, (kind, layer)) in enumerate(zip(stages, stage_sequence(h["n_layer"]))):
        name = f"stage {i} ({stage_name(kind.name, layer)})"
        if s["kind"] != kind.id:
            found = STAGE_KINDS[s["kind"]].name if s["kind"] < len(STAGE_KINDS) else "no stage kind"
            _bad(path, f"{name}: kind {s['kind']} ({found}), the stage sequence has {kind.name} "
                       f"(kind {kind.id}) here")
        if s["layer"] != (NO_LAYER if layer is None else layer):
            _bad(path, f"{name}: layer {s['layer']}, expected {'NO_LAYER' if layer is None else layer}")
        if s["n_tensors"] != len(kind.roles):
            _bad(path, f"{name}: n_tensors {s['n_tensors']}, a {kind.name} stage has {len(kind.roles)}")
        for r, index in enumerate(s["tensors"]):
            if r >= len(kind.roles):
                if index:
                    _bad(path, f"{name}: tensors[{r}] = {index}, past its {len(kind.roles)} roles (must be 0)")
                continue
            role = kind.roles[r]
            if index >= len(tensors):
                _bad(path, f"{name} names tensor {index}, past the tensor table's {len(tensors)} entries")
            t = tensors[index]
            shape = role.flash_shape(cfg)
            rows, cols = (1, shape[0]) if len(shape) == 1 else shape
            dtype = DTYPES["int8_tiled" if int8 and role.int8 else "fp32"]
            if (t["rows"], t["cols"]) != (rows, cols):
                _bad(path, f"{name} role {role.name}: tensor {index} is {t['rows']} x {t['cols']}, "
                           f"the role is {rows} x {cols}")
            if t["dtype"] != dtype:
                _bad(path, f"{name} role {role.name}: tensor {index} dtype {t['dtype']}, the role is {dtype}")


def _check_tensors(path, h: dict, stages: list[dict], tensors: list[dict], raw_names: list[bytes]) -> None:
    """Names, dtypes, sizes, blobs inside the weights section on their own sectors, and the
    row CRC tables inside the tables section; every tensor named by some stage."""
    named = {index for s in stages for index in s["tensors"][:s["n_tensors"]]}
    rows_read = set(_row_read_tensors(stages))
    w0, w1 = h["weights_offset"], h["weights_offset"] + h["weights_size"]
    crc0 = h["tables_offset"] + h["stage_count"] * STAGE_ENTRY.size + h["tensor_count"] * TENSOR_ENTRY.size
    crc1 = h["tables_offset"] + h["tables_size"]
    if crc1 - crc0 != row_crc_bytes(stages, tensors):
        _bad(path, f"header tables_size = {h['tables_size']}: the row CRC tables take "
                   f"{row_crc_bytes(stages, tensors):,} bytes after the tensor table, not {crc1 - crc0:,}")
    for i, (t, raw) in enumerate(zip(tensors, raw_names)):
        text = raw.rstrip(b"\0")
        if not text or b"\0" in text or not all(0x20 <= b < 0x7F for b in text):
            _bad(path, f"tensor {i}: name '{printable(raw)}' is not NUL-padded printable ASCII")
        name = f"tensor {i} '{t['name']}'"
        if i not in named:
            _bad(path, f"{name}: no stage names it")
        if t["dtype"] == DTYPES["fp32"]:
            size = t["rows"] * t["cols"] * 4
            if t["tile_rows"]:
                _bad(path, f"{name}: tile_rows {t['tile_rows']}, must be 0 for fp32")
        else:
            size = t["rows"] * (t["cols"] + 4)
            if not 1 <= t["tile_rows"] <= t["rows"]:
                _bad(path, f"{name}: tile_rows {t['tile_rows']}, outside 1..{t['rows']} rows")
        if t["size"] != size:
            _bad(path, f"{name}: size {t['size']:,}, {t['rows']} x {t['cols']} of its dtype take {size:,} bytes")
        if t["offset"] % SECTOR:
            _bad(path, f"{name}: offset 0x{t['offset']:x} is not on a {SECTOR}-byte sector")
        if not (w0 <= t["offset"] and t["offset"] + t["size"] <= w1):
            _bad(path, f"{name}: offset 0x{t['offset']:x} + size {t['size']:,} is outside the weights "
                       f"section 0x{w0:x}..0x{w1:x}")
        if i in rows_read:
            at = t["row_crcs"]
            if at % 4 or not (crc0 <= at and at + 4 * t["rows"] <= crc1):
                _bad(path, f"{name}: row_crcs 0x{at:x} ({t['rows']} rows) is outside the row CRC tables "
                           f"0x{crc0:x}..0x{crc1:x}")
        elif t["row_crcs"]:
            _bad(path, f"{name}: row_crcs 0x{t['row_crcs']:x}, but no stage reads it a row at a time (must be 0)")
    for what, key, span in (("blob", "offset", lambda t: t["size"]), ("row CRC table", "row_crcs", lambda t: 4 * t["rows"])):
        placed = sorted((t[key], i) for i, t in enumerate(tensors) if key == "offset" or i in rows_read)
        for (a, i), (b, k) in itertools.pairwise(placed):
            if a + span(tensors[i]) > b:
                _bad(path, f"tensor {k} '{tensors[k]['name']}': {key} 0x{b:x} overlaps the {what} of "
                           f"tensor {i} '{tensors[i]['name']}' (0x{a:x}, {span(tensors[i]):,} bytes)")


def _tokens(path, h: dict, buf) -> list[bytes]:
    """The token table: offsets from 0, never decreasing, the last at the end of the bytes."""
    off, v = h["tokens_offset"], h["vocab_size"]
    offs = np.frombuffer(buf[off:off + 4 * (v + 1)], "<u4").astype(np.int64)
    n_bytes = h["tokens_size"] - 4 * (v + 1)
    steps = np.diff(offs)
    if offs[0] != 0:
        _bad(path, f"token table offset[0] = {offs[0]:,}, must be 0")
    if (steps < 0).any():
        t = int(np.argmax(steps < 0))
        _bad(path, f"token table offset[{t + 1}] = {offs[t + 1]:,} is before offset[{t}] = {offs[t]:,}")
    if offs[v] != n_bytes:
        _bad(path, f"token table offset[{v}] = {offs[v]:,}, the token bytes are {n_bytes:,}")
    blob = buf[off + 4 * (v + 1): off + h["tokens_size"]]
    return [blob[offs[i]:offs[i + 1]] for i in range(v)]


def _verify_weights(path, f, buf, tensors, stages, progress) -> None:
    total = sum(t["size"] for t in tensors)
    bar = progress(total=total, unit="B", unit_scale=True, desc="verify") if progress else None
    rows_read = set(_row_read_tensors(stages))
    for i, t in enumerate(tensors):
        crc = _crc_file(f, t["offset"], t["size"], bar)
        if crc != t["crc"]:
            _bad(path, f"tensor {i} '{t['name']}' at 0x{t['offset']:x} ({t['size']:,} bytes): "
                       f"CRC32 mismatch (stored 0x{t['crc']:08x}, computed 0x{crc:08x})")
        if i in rows_read:
            stored = np.frombuffer(buf[t["row_crcs"]:t["row_crcs"] + 4 * t["rows"]], "<u4")
            for r in range(t["rows"]):
                crc = row_crc_at(buf, t, r)
                if crc != stored[r]:
                    _bad(path, f"tensor {i} '{t['name']}' row {r}: CRC32 mismatch with its row CRC table "
                               f"(stored 0x{int(stored[r]):08x}, computed 0x{crc:08x})")
    if bar:
        bar.close()


def row_crc_at(buf, t: dict, r: int) -> int:
    """The CRC32 of row r of tensor entry t, in an image's bytes."""
    if t["dtype"] == DTYPES["fp32"]:
        start = t["offset"] + r * t["cols"] * 4
        return row_crc(buf[start:start + t["cols"] * 4])
    scale, values = int8_row_span(r, t["rows"], t["cols"], t["tile_rows"])
    return row_crc(buf[t["offset"] + values:t["offset"] + values + t["cols"]],
                   buf[t["offset"] + scale:t["offset"] + scale + 4])


def tensor_array(path: Path, image: Image, index: int) -> np.ndarray:
    """One tensor of an image, as stored ([rows, cols], row-major)."""
    t = image.tensors[index]
    return np.fromfile(path, "<f4", count=t["rows"] * t["cols"], offset=t["offset"]).reshape(t["rows"], t["cols"])
