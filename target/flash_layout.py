"""The flash image's binary layout: defined here once, packed by Python, rendered into C.

All integers are little-endian. An image is a sequence of 4 KiB-aligned sections:

  offset 0        header        one sector: magic, format version, model config, plan id,
                                section offsets, CRC32s; ends with the header's own CRC32
  tables_offset   stage table   stage_count x StageEntry, then tensor table,
                                tensor_count x TensorEntry (CRC32 in the header)
  tokens_offset   token table   (vocab_size + 1) u32 offsets, then the token bytes
                                (token i prints bytes[off[i]:off[i+1]]; CRC32 in header)
  weights_offset  weights       one blob per tensor, each starting on a sector boundary,
                                each with its CRC32 in its TensorEntry

CRC32 is the common one (zlib, IEEE 802.3, reflected polynomial 0xEDB88320).
Matrices are stored row-major [out, in], so a tile of output rows is contiguous.
A tensor shared by two stages (GPT-2's tied wte) is stored once, and both stages name it.
"""

import mmap
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from target.errors import McugptError
from target.stages import STAGE_MAX_TENSORS

MAGIC = 0x5450474D      # "MGPT" read as a little-endian u32
FORMAT_VERSION = 1
SECTOR = 4096           # erase sector of the SPI NOR flash; every section starts on one
NAME_LEN = 32           # tensor names, NUL-padded

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
                out[f.name] = vals.pop(0).rstrip(b"\0").decode(errors="replace")
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
), "One weight blob.")

NO_LAYER = 0xFFFFFFFF
STRUCTS = (HEADER, STAGE_ENTRY, TENSOR_ENTRY)
HEADER_CRC_SPAN = HEADER.offset_of("header_crc")


def align(n: int, to: int = SECTOR) -> int:
    return (n + to - 1) // to * to


# ----------------------------------------------------------------------------
# reading an image: the host's view of what the firmware reads


@dataclass
class Image:
    header: dict
    stages: list[dict]
    tensors: list[dict]
    tokens: list[bytes]


def _bad(path, msg):
    raise McugptError(f"{path}: {msg}")


def read_image(path: Path, verify_weights: bool = True, progress=None) -> Image:
    """Parse and check an image; every inconsistency is an error saying where it is."""
    if not str(path).strip():   # (before Path(''), which is '.')
        raise McugptError("flash image '': empty; give a flash.img written by `mcugpt compile`")
    path = Path(path)
    if path.is_dir():
        _bad(path, "a folder, not a flash image" + (" (the image is its flash.img)"
                                                    if (path / "flash.img").is_file() else ""))
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
