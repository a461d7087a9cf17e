"""The flash image: written from the ONNX stages, read back and verified, refused when damaged."""

import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest

from target.errors import McugptError
from target.flash_layout import FORMAT_VERSION, HEADER, HEADER_CRC_SPAN, NO_LAYER, SECTOR, read_image, tensor_array
from target.stages import KIND_BY_NAME


@pytest.fixture
def image_copy(tiny_build, tmp_path):
    dst = tmp_path / "flash.img"
    shutil.copy(tiny_build.out_dir / "flash.img", dst)
    return dst


def test_header_describes_the_model_and_plan(tiny_build):
    img = read_image(tiny_build.out_dir / "flash.img")
    h, plan = img.header, tiny_build.plan.to_dict()
    assert (h["n_layer"], h["n_head"], h["n_embd"], h["vocab_size"]) == (2, 4, 64, 50257)
    assert h["n_ctx"] == plan["ctx"] and h["plan_id"] == plan["plan_id"]
    assert h["stage_count"] == 14 and h["eot_token"] == 50256
    assert h["image_size"] == (tiny_build.out_dir / "flash.img").stat().st_size


def test_stage_table_follows_execution_order(tiny_build):
    img = read_image(tiny_build.out_dir / "flash.img")
    kinds = [s["kind"] for s in img.stages]
    assert kinds[0] == KIND_BY_NAME["embed"].id and kinds[-1] == KIND_BY_NAME["head"].id
    assert img.stages[0]["layer"] == NO_LAYER and img.stages[3]["layer"] == 0
    # the tied embedding is stored once and named by both embed and head
    assert img.stages[0]["tensors"][0] == img.stages[-1]["tensors"][2]


def test_weights_are_stored_row_major_out_by_in_and_sector_aligned(tiny, tiny_build):
    cfg, w = tiny
    path = tiny_build.out_dir / "flash.img"
    img = read_image(path)
    names = [t["name"] for t in img.tensors]
    assert all(t["offset"] % SECTOR == 0 for t in img.tensors)
    qkv = tensor_array(path, img, names.index("h.1.attn.c_attn.weight"))
    np.testing.assert_array_equal(qkv, w["h.1.attn.c_attn.weight"].T)  # [3d, d]
    np.testing.assert_array_equal(tensor_array(path, img, names.index("wte.weight")), w["wte.weight"])
    np.testing.assert_array_equal(tensor_array(path, img, names.index("ln_f.bias"))[0], w["ln_f.bias"])


def test_token_table_prints_gpt2_text(tiny_build, tok):
    img = read_image(tiny_build.out_dir / "flash.img", verify_weights=False)
    ids = tok.encode("Hello, world!")
    assert b"".join(img.tokens[i] for i in ids) == b"Hello, world!"


def _patch_header(path, **fields):
    raw = bytearray(path.read_bytes()[:HEADER.size])
    h = HEADER.unpack(bytes(raw))
    h.update(fields)
    packed = bytearray(HEADER.pack(**h))
    struct.pack_into("<I", packed, HEADER_CRC_SPAN, zlib.crc32(packed[:HEADER_CRC_SPAN]))
    with open(path, "r+b") as f:
        f.write(packed)


def test_a_flipped_weight_bit_is_found_and_named(image_copy):
    img = read_image(image_copy, verify_weights=False)
    t = next(t for t in img.tensors if t["name"] == "h.0.mlp.c_fc.weight")
    with open(image_copy, "r+b") as f:
        f.seek(t["offset"] + 1000)
        b = f.read(1)
        f.seek(t["offset"] + 1000)
        f.write(bytes([b[0] ^ 0x10]))
    with pytest.raises(McugptError, match=rf"tensor \d+ 'h.0.mlp.c_fc.weight' at 0x{t['offset']:x} .*CRC32 mismatch"):
        read_image(image_copy)


def test_truncated_image_is_refused_with_sizes(image_copy):
    size = image_copy.stat().st_size
    with open(image_copy, "r+b") as f:
        f.truncate(size - 5000)
    with pytest.raises(McugptError, match=rf"truncated: {size - 5000:,} bytes, the header says {size:,}"):
        read_image(image_copy)
    with open(image_copy, "r+b") as f:
        f.truncate(100)
    with pytest.raises(McugptError, match="truncated: 100 bytes"):
        read_image(image_copy)


def test_wrong_version_magic_and_header_crc_are_refused(image_copy):
    _patch_header(image_copy, version=FORMAT_VERSION + 1)
    with pytest.raises(McugptError, match=rf"format version {FORMAT_VERSION + 1}, this mcugpt reads version {FORMAT_VERSION}"):
        read_image(image_copy)
    _patch_header(image_copy, version=FORMAT_VERSION, magic=0x12345678)
    with pytest.raises(McugptError, match="not an mcugpt flash image"):
        read_image(image_copy)
    _patch_header(image_copy, magic=HEADER.unpack(b"MGPT" + bytes(HEADER.size))["magic"])
    with open(image_copy, "r+b") as f:
        f.seek(24)  # n_embd, without fixing the CRC
        f.write(struct.pack("<I", 65))
    with pytest.raises(McugptError, match="header CRC32 mismatch"):
        read_image(image_copy)


C_READER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "flash_layout.h"
#include "model_plan.h"

static uint32_t crc32(const uint8_t* p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    while (n--) { c ^= *p++; for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & -(c & 1u)); }
    return ~c;
}

int main(int argc, char** argv) {
    FILE* f = fopen(argv[1], "rb");
    static uint8_t buf[1 << 16];
    fread(buf, 1, sizeof buf, f);
    const ImageHeader* h = (const ImageHeader*)buf;
    if (h->magic != IMAGE_MAGIC || h->version != IMAGE_FORMAT_VERSION) return 2;
    if (crc32(buf, HEADER_CRC_SPAN) != h->header_crc) return 3;
    if (h->plan_id != PLAN_ID || h->n_embd != N_EMBD || h->n_ctx != N_CTX) return 4;
    const StageEntry* st = (const StageEntry*)(buf + h->tables_offset);
    const TensorEntry* te = (const TensorEntry*)(buf + h->tables_offset + h->stage_count * sizeof(StageEntry));
    for (uint32_t i = 0; i < h->stage_count; i++)
        printf("%u %u %s\n", st[i].kind, st[i].layer, st[i].n_tensors ? te[st[i].tensors[0]].name : "-");
    return 0;
}
"""


def test_generated_c_headers_read_the_image(tiny_build, tmp_path):
    """One definition in Python; the C side sees the same layout (static asserts + a reader)."""
    src = tmp_path / "reader.c"
    src.write_text(C_READER)
    exe = tmp_path / "reader"
    subprocess.run(["cc", "-std=c11", "-Wall", "-Werror", "-I", str(tiny_build.out_dir / "include"),
                    str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe), str(tiny_build.out_dir / "flash.img")], capture_output=True, text=True)
    assert out.returncode == 0, out.returncode
    lines = out.stdout.splitlines()
    assert lines[0] == f"0 {NO_LAYER} wte.weight"
    assert lines[2] == f"{KIND_BY_NAME['attn_qkv'].id} 0 h.0.attn.c_attn.weight"
    assert lines[-1] == f"{KIND_BY_NAME['head'].id} {NO_LAYER} ln_f.weight"
