"""int8 weights: quantized per output row offline, activations per vector at run time, exact
int32 dot products. The board's int8 tokens and logits equal the int8 numpy reference's."""

import math
import struct

import numpy as np
import pytest
from test_board_tokens import PROMPTS, _broken_firmware, assert_matches_reference, board_generate, matches_reference

from compiler.pipeline import compile_model
from compiler.quantize import matvec_int8, quantize_rows, quantize_vector, round_half_away
from compiler.reference import Reference, generate
from compiler.sampler import Sampling
from target.flash_layout import read_image


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory):
    return compile_model("tiny", tmp_path_factory.mktemp("tiny_int8"), dtype="int8", quiet=True)


def test_rounding_is_half_away_from_zero():
    v = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 0.4999, -2.5000002], np.float32)
    assert round_half_away(v).tolist() == [1, 2, 3, -1, -2, 0, -3]
    # v + 0.5 is itself a float32 addition: the float just below 0.5 rounds up, in C too
    assert round_half_away(np.float32([0.49999997])).tolist() == [1]


def test_row_quantization_uses_the_full_range_per_row():
    w = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.5, -3.0]], np.float32)
    q, s = quantize_rows(w)
    assert q.tolist() == [[64, -127, 32], [0, 0, 0], [127, 64, -127]]
    np.testing.assert_array_equal(s, np.float32([1 / 127, 0, 3 / 127]))


def test_int8_product_is_close_to_float_and_exact_in_integers():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 768)).astype(np.float32) * 0.1
    x = rng.standard_normal(768).astype(np.float32)
    q, s = quantize_rows(w)
    qx, sx = quantize_vector(x)
    y = matvec_int8(q, s, x, None)
    acc = np.array([sum(int(a) * int(b) for a, b in zip(row, qx)) for row in q[:4]])  # Python ints
    np.testing.assert_array_equal(y[:4], acc.astype(np.float32) * (s[:4] * sx))
    assert np.abs(y - w @ x).max() < 0.03 * np.abs(w @ x).max()


def _expected_int8_tiles(w_out_in: np.ndarray, tile_rows: int) -> bytes:
    """The int8_tiled layout written out from its definition (docs/flash_image.md), one row at
    a time in plain Python arithmetic, not with compiler/quantize.py: each row's scale is
    max|row| / 127 (float32), its values round(w * (127 / max|row|)), halves away from zero;
    each tile is its rows' scales (little-endian float32), then their values, row by row."""
    scales, values = [], []
    for row in w_out_in.astype(np.float32):
        amax = np.float32(max(abs(float(v)) for v in row))
        inv = np.float32(np.float32(127.0) / amax)
        q = []
        for v in row:
            t = float(np.float32(v * inv))
            q.append(int(math.copysign(math.floor(abs(t) + 0.5), t)))
        scales.append(struct.pack("<f", np.float32(amax / np.float32(127.0))))
        values.append(struct.pack(f"<{len(q)}b", *q))
    out = b""
    for start in range(0, len(scales), tile_rows):
        out += b"".join(scales[start:start + tile_rows]) + b"".join(values[start:start + tile_rows])
    return out


def test_image_stores_int8_matrices_in_the_plans_tiles(tiny, tmp_path):
    cfg, w = tiny
    tiled = compile_model("tiny", tmp_path, dtype="int8", ram=160 << 10, kv_dtype="fp32", cc=None, quiet=True)
    img = read_image(tiled.out_dir / "flash.img")  # CRCs
    t = next(t for t in img.tensors if t["name"] == "h.0.mlp.c_fc.weight")
    rows, cols = 4 * cfg.n_embd, cfg.n_embd
    assert t["size"] == rows * (cols + 4)
    per_tile = tiled.plan.tensor("h.0.mlp.c_fc.weight").tile_rows
    assert per_tile < rows   # several tiles: the layout between tiles is checked too
    raw = np.fromfile(tiled.out_dir / "flash.img", np.uint8, count=t["size"], offset=t["offset"])
    assert raw.tobytes() == _expected_int8_tiles(w["h.0.mlp.c_fc.weight"].T, per_tile)
    # a quarter of fp32's bytes, plus a scale per row
    assert tiled.plan.totals.weight_bytes < 0.27 * sum(a.nbytes for a in w.values())


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(0.9, 40, 11)], ids=["greedy", "sampled"])
def test_board_int8_equals_the_int8_reference(sampling, tiny, tiny_int8, tok):
    cfg, w = tiny
    for prompt in PROMPTS[:2]:
        prompt_tokens = tok.encode(prompt)
        ref = generate(Reference(cfg, w, dtype="int8"), prompt_tokens, 8, sampling, keep_logits=True)
        assert_matches_reference(board_generate(tiny_int8.out_dir, prompt_tokens, 8, sampling), ref)


def test_distilgpt2_int8_on_the_board_equals_the_reference(distil, tok, tmp_path):
    cfg, w = distil
    build = compile_model("distilgpt2", tmp_path, dtype="int8", quiet=True)
    prompt_tokens = tok.encode(PROMPTS[2])
    ref = generate(Reference(cfg, w, dtype="int8"), prompt_tokens, 4, Sampling(), keep_logits=True)
    assert_matches_reference(board_generate(build.out_dir, prompt_tokens, 4, Sampling()), ref)


def test_int8_is_not_fp32_but_close(distil, tok):
    """The quantization error, stated: logits differ, the top token mostly does not."""
    cfg, w = distil
    prompt_tokens = tok.encode(PROMPTS[0])
    f = generate(Reference(cfg, w), prompt_tokens, 6, Sampling(), keep_logits=True)
    q = generate(Reference(cfg, w, dtype="int8"), prompt_tokens, 6, Sampling(), keep_logits=True)
    err = np.sqrt(np.mean((f.logits[0] - q.logits[0]) ** 2)) / np.std(f.logits[0])
    assert 0 < err < 0.1
    assert f.tokens[0] == q.tokens[0]


def test_a_wrong_int8_scale_fails_the_check(tiny, tiny_int8, tok, tmp_path):
    cfg, w = tiny
    prompt_tokens = tok.encode(PROMPTS[1])
    ref = generate(Reference(cfg, w, dtype="int8"), prompt_tokens, 6, Sampling(), keep_logits=True)
    elf = _broken_firmware(tiny_int8.out_dir, tiny_int8.plan, tmp_path, "kernels_int8.c",
                           "*scale = amax / QMAX;", "*scale = amax / 128.0f;")
    assert not matches_reference(board_generate(tiny_int8.out_dir, prompt_tokens, 6, Sampling(), elf=elf), ref)
