"""A flash image is valid only if every header and table field agrees with the file and with
the others (target/flash_layout.py read_image, used by `inspect` and `run`). Each image here is
CRC-valid: a field is edited and the CRC32s are sealed again, as a buggy writer or a crafted
file would make it. Each is refused in one line naming the field and its value; random
edits never end in anything but that line; and where the host check is bypassed, the
firmware's own boot checks catch what it relies on."""

import random
import re
import shutil
import struct
import zlib

import pytest
from conftest import mcugpt

from emulator.board import Board, FirmwareError
from mcugpt import cli
from target import memory_map as mm
from target.boards import get_board
from target.errors import McugptError
from target.flash_layout import HEADER, HEADER_CRC_SPAN, STAGE_ENTRY, TENSOR_ENTRY, read_image

EXIT = {name: code for name, (code, _doc) in mm.EXIT_CODES.items()}

# the tiny model's image (tests/conftest.py tiny_build): 2 layers, 14 stages, 28 tensors;
# tensor 0 wte, 1 wpe, 2 h.0.ln_1.weight, 4 h.0.attn.c_attn.weight, 14 h.1.ln_1.weight
STAGES, TENSORS, VOCAB = 14, 28, 50257


# ----------------------------------------------------------------------------
# editing an image's fields, its CRCs sealed again


class Image:
    """The header, tables and token table of an image (everything before the weights), to
    edit field by field; `save` seals the CRC32s and writes them back over the file."""

    def __init__(self, path):
        self.path = path
        h = HEADER.unpack(path.read_bytes()[:HEADER.size])
        self.h = h
        with open(path, "rb") as f:
            self.buf = bytearray(f.read(h["weights_offset"]))

    def _set(self, offset: int, value, fmt="<I"):
        struct.pack_into(fmt, self.buf, offset, value)

    def header(self, field: str, value, fmt="<I"):
        self._set(HEADER.offset_of(field), value, fmt)

    def stage(self, i: int, field: str, value, word: int = 0):
        self._set(self.h["tables_offset"] + i * STAGE_ENTRY.size + STAGE_ENTRY.offset_of(field) + 4 * word, value)

    def tensor_at(self, i: int, field: str) -> int:
        return self.h["tables_offset"] + STAGES * STAGE_ENTRY.size + i * TENSOR_ENTRY.size + TENSOR_ENTRY.offset_of(field)

    def tensor(self, i: int, field: str, value):
        self._set(self.tensor_at(i, field), value)

    def tensor_field(self, i: int, field: str) -> int:
        return struct.unpack_from("<I", self.buf, self.tensor_at(i, field))[0]

    def token_offset(self, i: int, value):
        self._set(self.h["tokens_offset"] + 4 * i, value)

    def token_offsets(self, i: int, n: int = 2) -> tuple:
        return struct.unpack_from(f"<{n}I", self.buf, self.h["tokens_offset"] + 4 * i)

    def save(self, seal: bool = True):
        if seal:
            seal_crcs(self.buf)
        with open(self.path, "r+b") as f:
            f.write(self.buf)


def seal_crcs(buf: bytearray) -> None:
    """The tables', token table's and header's CRC32s recomputed from what is there now."""
    h = HEADER.unpack(bytes(buf[:HEADER.size]))
    for what in ("tables", "tokens"):
        off, n = h[f"{what}_offset"], h[f"{what}_size"]
        struct.pack_into("<I", buf, HEADER.offset_of(f"{what}_crc"), zlib.crc32(buf[off:off + n]))
    struct.pack_into("<I", buf, HEADER_CRC_SPAN, zlib.crc32(buf[:HEADER_CRC_SPAN]))


@pytest.fixture
def image(tiny_build, tmp_path):
    path = tmp_path / "flash.img"
    shutil.copy(tiny_build.out_dir / "flash.img", path)
    return Image(path)


def refused(path) -> str:
    with pytest.raises(McugptError) as e:
        read_image(path, verify_weights=False)
    return str(e.value)


# ----------------------------------------------------------------------------
# every field, against the file and the other fields

def _swap_offsets(img):
    img.tensor(3, "offset", img.tensor_field(2, "offset"))


CASES = {
    # the header against the file
    "header_size": (lambda img: img.header("header_size", 100), r"header header_size = 100: this format's header is 164 bytes"),
    "image_size": (lambda img: img.header("image_size", img.h["image_size"] - 4096),
                   r"header image_size = \d+: the file has [\d,]+ bytes"),
    "reserved": (lambda img: img.header("reserved", 7), r"header reserved\[0\] = 0x00000007: reserved words must be zero"),
    # the model config
    "n_head": (lambda img: img.header("n_head", 0), r"header n_head = 0: must be at least 1"),
    "n_embd": (lambda img: img.header("n_embd", 66), r"header n_embd = 66: not a multiple of n_head 4"),
    "n_ctx": (lambda img: img.header("n_ctx", 129), r"header n_ctx = 129: past the model's context, n_ctx_model 128"),
    "eot_token": (lambda img: img.header("eot_token", VOCAB), r"header eot_token = 50257: not a token of the 50,257-token vocabulary"),
    "ln_eps nan": (lambda img: img.header("ln_eps", float("nan"), "<f"), r"header ln_eps = nan: must be finite and > 0"),
    "ln_eps 0": (lambda img: img.header("ln_eps", 0.0, "<f"), r"header ln_eps = 0.0: must be finite and > 0"),
    "dtype": (lambda img: img.header("dtype", 7), r"header dtype = 7: no weight dtype \(known: 0 fp32, 1 int8_tiled\)"),
    # counts
    "stage_count": (lambda img: img.header("stage_count", 15), r"header stage_count = 15: 2 layers make 14 stages"),
    "n_layer": (lambda img: img.header("n_layer", 3), r"header stage_count = 14: 3 layers make 20 stages"),
    "tensor_count": (lambda img: img.header("tensor_count", 912), r"header tensor_count = 912: the stages of 2 layers name 1\.\.29 tensors"),
    "tensor_count 0": (lambda img: img.header("tensor_count", 0), r"header tensor_count = 0"),
    # the sections: aligned, in order, inside the file, sized for what they hold
    "tables_offset": (lambda img: img.header("tables_offset", 4100), r"header tables_offset = 4100: not a multiple of the 4096-byte sector"),
    "tables_offset 0": (lambda img: img.header("tables_offset", 0), r"header tables_offset = 0: overlaps the header, which ends at 0xa4"),
    "tables_size": (lambda img: img.header("tables_size", 0x7FFFFFFF), r"header tables_size = 2147483647: at 0x1000 it ends at 0x80000fff, past the file's"),
    "tables_size small": (lambda img: img.header("tables_size", 1000), r"header tables_size = 1000: 14 stages and 28 tensors take 2,296 bytes"),
    "tables_size row crcs": (lambda img: img.header("tables_size", img.h["tables_size"] - 4),
                             r"header tables_size = \d+: the row CRC tables take 201,540 bytes after the tensor table, not 201,536"),
    "tokens_offset": (lambda img: img.header("tokens_offset", 0x10000000), r"header tokens_offset = 268435456: past the file's"),
    "tokens_offset overlap": (lambda img: img.header("tokens_offset", 0x2000), r"header tokens_offset = 8192: overlaps the tables section"),
    "tokens_size": (lambda img: img.header("tokens_size", 100), r"header tokens_size = 100: the offsets of 50,257 tokens take 201,032 bytes"),
    "vocab_size": (lambda img: img.header("vocab_size", 0x40000000), r"header tokens_size = \d+: the offsets of 1,073,741,824 tokens take"),
    "weights_offset": (lambda img: img.header("weights_offset", img.h["weights_offset"] + 8), r"header weights_offset = \d+: not a multiple of the 4096-byte sector"),
    "weights_size": (lambda img: img.header("weights_size", img.h["weights_size"] - 4096), r"header weights_size = \d+: the weights run from 0x[0-9a-f]+ to the end of the image"),
    # the stage table: kinds in order, layers, tensors in range and of their roles' shapes
    "stage tensor past the table": (lambda img: img.stage(4, "tensors", 912),
                                    r"stage 4 \(h0\.attn_proj\) names tensor 912, past the tensor table's 28 entries"),
    "stage kind unknown": (lambda img: img.stage(3, "kind", 99), r"stage 3 \(h0\.attn_core\): kind 99 \(no stage kind\), the stage sequence has attn_core \(kind 3\) here"),
    "stage kind order": (lambda img: img.stage(2, "kind", 4), r"stage 2 \(h0\.attn_qkv\): kind 4 \(attn_proj\), the stage sequence has attn_qkv \(kind 2\) here"),
    "stage layer": (lambda img: img.stage(8, "layer", 0), r"stage 8 \(h1\.attn_qkv\): layer 0, expected 1"),
    "stage n_tensors": (lambda img: img.stage(1, "n_tensors", 3), r"stage 1 \(h0\.ln_1\): n_tensors 3, a ln_1 stage has 2"),
    "stage unused slot": (lambda img: img.stage(1, "tensors", 5, word=3), r"stage 1 \(h0\.ln_1\): tensors\[3\] = 5, past its 2 roles \(must be 0\)"),
    "stage role shape": (lambda img: img.stage(1, "tensors", 4), r"stage 1 \(h0\.ln_1\) role gain: tensor 4 is 192 x 64, the role is 1 x 64"),
    "orphan tensor": (lambda img: img.stage(7, "tensors", 2), r"tensor 14 'h\.1\.ln_1\.weight': no stage names it"),
    # the tensor table: dtypes, sizes, blobs inside the weights on their own sectors
    "tensor dtype": (lambda img: img.tensor(2, "dtype", 1), r"stage 1 \(h0\.ln_1\) role gain: tensor 2 dtype 1, the role is 0"),
    "tensor rows": (lambda img: img.tensor(1, "rows", 129), r"stage 0 \(embed\) role wpe: tensor 1 is 129 x 64, the role is 128 x 64"),
    "tensor size": (lambda img: img.tensor(2, "size", 300), r"tensor 2 'h\.0\.ln_1\.weight': size 300, 1 x 64 of its dtype take 256 bytes"),
    "tensor offset aligned": (lambda img: img.tensor(2, "offset", img.tensor_field(2, "offset") + 4),
                              r"tensor 2 'h\.0\.ln_1\.weight': offset 0x[0-9a-f]+ is not on a 4096-byte sector"),
    "tensor offset outside": (lambda img: img.tensor(2, "offset", 0x1000),
                              r"tensor 2 'h\.0\.ln_1\.weight': offset 0x1000 \+ size 256 is outside the weights section 0x[0-9a-f]+\.\.0x[0-9a-f]+"),
    "tensor overlap": (_swap_offsets, r"tensor \d+ 'h\.0\.ln_1\.\w+': offset 0x[0-9a-f]+ overlaps the blob of tensor \d+ 'h\.0\.ln_1\.\w+'"),
    "tile_rows": (lambda img: img.tensor(2, "tile_rows", 5), r"tensor 2 'h\.0\.ln_1\.weight': tile_rows 5, must be 0 for fp32"),
    "row_crcs missing": (lambda img: img.tensor(1, "row_crcs", 0), r"tensor 1 'wpe\.weight': row_crcs 0x0 \(128 rows\) is outside the row CRC tables"),
    "row_crcs extra": (lambda img: img.tensor(2, "row_crcs", 0x1000), r"tensor 2 'h\.0\.ln_1\.weight': row_crcs 0x1000, but no stage reads it a row at a time \(must be 0\)"),
    "row_crcs overlap": (lambda img: img.tensor(1, "row_crcs", img.tensor_field(0, "row_crcs") + 8),
                         r"tensor 1 'wpe\.weight': row_crcs 0x[0-9a-f]+ overlaps the row CRC table of tensor 0 'wte\.weight'"),
    # the token table: offsets from 0, in order, ending at the end of the bytes
    "token offset 0": (lambda img: img.token_offset(0, 1), r"token table offset\[0\] = 1, must be 0"),
    "token order": (lambda img: img.token_offset(101, img.token_offsets(100)[0] - 1), r"token table offset\[101\] = [\d,]+ is before offset\[100\] = [\d,]+"),
    "token end": (lambda img: img.token_offset(VOCAB, 20_000_000), r"token table offset\[50257\] = 20,000,000, the token bytes are [\d,]+"),
}


@pytest.mark.parametrize("case", CASES)
def test_each_inconsistent_field_is_refused_naming_it(case, image):
    edit, message = CASES[case]
    edit(image)
    image.save()
    msg = refused(image.path)
    assert msg.startswith(f"{image.path}: ")
    assert re.search(message, msg), msg
    assert "\n" not in msg


def test_a_tensor_name_is_printable_ascii_and_never_echoed_raw(image):
    name_at = image.tensor_at(2, "name")
    image.buf[name_at:name_at + 32] = b"h.0\x1b[31m\x07ln\xff\x00xyz".ljust(32, b"\x00")
    image.save()
    msg = refused(image.path)
    assert "tensor 2: name 'h.0\\x1b[31m\\x07ln\\xff\\x00xyz" in msg
    assert all(0x20 <= ord(c) < 0x7F for c in msg), msg


def test_the_reader_accepts_the_compiled_image_unchanged(image):
    image.save()    # sealing what is there changes nothing
    img = read_image(image.path)
    assert len(img.stages) == STAGES and len(img.tensors) == TENSORS and len(img.tokens) == VOCAB


def test_random_edits_never_end_in_a_traceback(image):
    """Bytes of the header, the tables and the token table changed at random, the CRCs
    sealed again (or not): the reader accepts the image or refuses it in one printable line."""
    original = bytes(image.buf)
    h = image.h
    regions = [(0, HEADER.size), (h["tables_offset"], h["tables_offset"] + STAGES * STAGE_ENTRY.size
                                  + TENSORS * TENSOR_ENTRY.size), (h["tokens_offset"], h["tokens_offset"] + 64)]
    rng = random.Random(1)
    outcomes = {"accepted": 0, "refused": 0}
    for trial in range(300):
        image.buf[:] = original
        for _ in range(rng.randint(1, 4)):
            lo, hi = rng.choice(regions)
            at = rng.randrange(lo, hi)
            image.buf[at] = rng.choice([0, 0xFF, rng.randrange(256), image.buf[at] ^ (1 << rng.randrange(8))])
        image.save(seal=rng.random() < 0.9)
        try:
            read_image(image.path, verify_weights=trial % 25 == 0)
            outcomes["accepted"] += 1
        except McugptError as e:
            msg = str(e)
            assert "\n" not in msg and all(0x20 <= ord(c) < 0x7F for c in msg), msg
            outcomes["refused"] += 1
    assert outcomes["refused"] > 200    # most edits break something, and say what


# ----------------------------------------------------------------------------
# the commands: `inspect` and `run` refuse it with the same line, before the board starts


@pytest.fixture
def build(tiny_build, tmp_path):
    out = tmp_path / "build"
    shutil.copytree(tiny_build.out_dir, out)
    return out


def test_run_refuses_an_inconsistent_image_before_the_board_starts(build, monkeypatch, capsys):
    img = Image(build / "flash.img")
    img.stage(4, "tensors", 912)
    img.save()
    line = f"mcugpt: error: {build / 'flash.img'}: stage 4 (h0.attn_proj) names tensor 912, past the tensor table's 28 entries"
    assert cli.main(["inspect", str(build / "flash.img")]) == 1
    assert capsys.readouterr().err.strip() == line

    def no_board(*_a, **_k):
        raise AssertionError("the board started")
    monkeypatch.setattr("mcugpt.run.Board.for_profile", no_board)
    assert cli.main(["run", "--build", str(build), "--prompt", "Hi", "--tokens", "2"]) == 1
    assert capsys.readouterr().err.strip() == line


def test_run_on_the_command_line_gives_one_line(build):
    img = Image(build / "flash.img")
    img.header("vocab_size", 0x40000000)
    img.save()
    proc = mcugpt("run", "--build", build, "--prompt", "Hi", "--tokens", "2")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("mcugpt: error: ") and "header tokens_size" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------
# the firmware's own checks, with the host's bypassed (Board driven directly)


def board_run(build, tok, n_new=2):
    with Board.for_profile(build / "firmware.elf", build / "flash.img", get_board("sim64")) as board:
        return board.run(tok.encode("Hello"), n_new=n_new)


def test_the_firmware_checks_its_stage_table_against_its_plan(build, tok):
    img = Image(build / "flash.img")
    img.stage(4, "tensors", 10)      # a tensor in range, of another shape: h.0.mlp.c_fc.weight
    img.save()
    with pytest.raises(FirmwareError) as e:
        board_run(build, tok)
    assert e.value.name == "BAD_STAGE"
    assert e.value.exit_args == (4, STAGE_ENTRY.offset_of("tensors"), 10)
    assert "StageEntry tensors[0] = 10 (0xa) differs from the firmware's plan" in str(e.value)
    assert e.value.result.positions == []     # at boot, before the first position


@pytest.mark.parametrize("field, value", [("offset", None), ("rows", 255)])
def test_the_firmware_checks_a_tensor_entry_before_it_reads_the_blob(build, tok, field, value):
    """A blob past the weights, or a shape that is not its role's (which would overrun the
    buffer it is read into), named by the entry's field."""
    img = Image(build / "flash.img")
    value = img.h["image_size"] if value is None else value
    img.tensor(10, field, value)                     # h.0.mlp.c_fc.weight
    img.save()
    with pytest.raises(FirmwareError) as e:
        board_run(build, tok)
    assert e.value.name == "BAD_TENSOR_ENTRY"
    assert e.value.exit_args == (10, TENSOR_ENTRY.offset_of(field), value)
    assert f"TensorEntry {field} = {value:,}" in str(e.value)


def test_the_firmware_checks_a_token_s_bytes_before_it_prints_them(build, tok):
    token = board_run(build, tok, n_new=1).tokens[0]
    img = Image(build / "flash.img")
    start, _end = img.token_offsets(token)
    img.token_offset(token + 1, 20_000_000)        # its bytes would run 20 MB past the table
    img.save()
    with pytest.raises(FirmwareError) as e:
        board_run(build, tok, n_new=1)
    assert e.value.name == "BAD_TOKEN_ENTRY" and e.value.exit_args == (token, start, 20_000_000)
    assert e.value.result.text == ""                # nothing of the table printed as text


# ----------------------------------------------------------------------------
# an image consistent in every field and CRC, but not this build's


def _reseal_a_weight(build, tensor: int = 10) -> int:
    """One weight of `tensor` changed, its blob's CRC in the tensor table and every section
    CRC sealed again: an image with no inconsistency left, describing another model."""
    img = Image(build / "flash.img")
    offset, size = img.tensor_field(tensor, "offset"), img.tensor_field(tensor, "size")
    data = bytearray((build / "flash.img").read_bytes())
    data[offset] ^= 0x40
    (build / "flash.img").write_bytes(data)
    crc = zlib.crc32(data[offset:offset + size])
    img.tensor(tensor, "crc", crc)
    img.save()
    read_image(build / "flash.img", verify_weights=True)   # every CRC and field checks out
    return crc


def test_run_refuses_an_image_that_is_not_the_builds(build):
    _reseal_a_weight(build)
    proc = mcugpt("run", "--build", build, "--prompt", "Hi", "--tokens", "2")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "not the image this build wrote" in proc.stderr and "rerun `mcugpt compile" in proc.stderr


def test_the_firmware_refuses_weights_that_are_not_the_ones_it_was_built_with(build, tok):
    crc = _reseal_a_weight(build)
    with pytest.raises(FirmwareError) as e:
        board_run(build, tok)
    assert e.value.name == "BAD_TENSOR_ENTRY"
    assert e.value.exit_args == (10, TENSOR_ENTRY.offset_of("crc"), crc)
    assert "is not the one this firmware was compiled with" in str(e.value)
