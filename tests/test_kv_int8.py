"""The int8 KV cache: each head's key and value quantized per position with a float32 scale
(compiler/quantize.py quantize_vector), in SRAM or PSRAM, and attended over in int8 by the
firmware exactly as the numpy reference does (compiler/plan.py KV_DTYPES, runtime_c/runtime.c
kv_store and attention_head_i8, compiler/quantize.py attention_int8)."""

import shutil

import numpy as np
import pytest

from compiler.config import load_preset
from compiler.firmware import RUNTIME_C, build
from compiler.pipeline import compile_model, stages_of
from compiler.plan import kv_token_bytes, make_plan
from compiler.reference import Reference, generate
from compiler.sampler import Sampling
from emulator.board import Board
from target.boards import get_board

H7 = "stm32h7s78-dk"
PROMPT = "In 1969, the first"


# -- the plan -------------------------------------------------------------------------------


def test_gpt2_reaches_its_full_context_on_the_stm32h7s78_dk_only_with_the_int8_cache():
    cfg = load_preset("gpt2")
    auto = make_plan(cfg, stages_of(cfg), dtype="int8", board=H7)
    fp32 = make_plan(cfg, stages_of(cfg), dtype="int8", board=H7, kv_dtype="fp32")
    psram = get_board(H7).psram_bytes
    # float32: 2 x 12 layers x 12 heads x (64 x 4 B + a 4-byte check word) = 74,880 B per
    # position in the PSRAM; its 32 MiB hold 448
    assert (fp32.ctx, fp32.kv.dtype, fp32.ctx_limited_by) == (448, "fp32", "psram") == (psram // 74_880, "fp32", "psram")
    # int8: per layer, head and position a 4-byte scale + 64 values: 2 x 12 x 12 x 68 = 19,584 B
    # (in the PSRAM each row's check word too: 2 x 12 x 12 x 72 = 20,736 B)
    assert kv_token_bytes(cfg, "int8") == 19_584 and kv_token_bytes(cfg, "int8", psram=True) == 20_736
    assert (auto.ctx, auto.kv.dtype, auto.kv.placement, auto.ctx_limited_by) == (1024, "int8", "psram", None)
    assert "448" in auto.kv.why and "1024" in auto.kv.why
    assert auto.kv.bytes == 1024 * 20_736 <= psram


def test_the_float32_cache_stays_when_it_reaches_the_context():
    cfg = load_preset("tiny")
    plan = make_plan(cfg, stages_of(cfg), board=H7)
    assert plan.kv.dtype == "fp32" and plan.ctx == cfg.n_ctx and "model's context" in plan.kv.why


# -- the reference ----------------------------------------------------------------------------


def test_the_round_trip_is_within_half_a_step_of_each_heads_scale(tiny):
    cfg, w = tiny
    x = np.random.default_rng(3).normal(0, 2, cfg.n_embd).astype(np.float32)
    y = Reference(cfg, w, kv_dtype="int8").kv_round_trip(x)
    hd = cfg.head_dim
    for h in range(cfg.n_head):
        step = np.abs(x[h * hd:(h + 1) * hd]).max() / 127
        assert np.abs(y[h * hd:(h + 1) * hd] - x[h * hd:(h + 1) * hd]).max() <= step / 2 * (1 + 1e-5)
    assert not np.array_equal(x, y)


# -- the board --------------------------------------------------------------------------------


def board_tokens(built, prompt, n_new=3, elf=None):
    with Board.for_profile(elf or built.out_dir / "firmware.elf", built.out_dir / "flash.img",
                           get_board(built.plan.board)) as board:
        return board.run(prompt, n_new, dump_logits=True)


def assert_bit_identical(result, ref):
    assert result.tokens == ref.tokens
    assert all(np.array_equal(a, b) for a, b in zip(result.logits, ref.logits))


def reference(built, weights, prompt, kv_dtype, n_new=3):
    return generate(Reference(built.cfg, weights, dtype=built.plan.dtype, kv_dtype=kv_dtype), prompt, n_new,
                    Sampling(), keep_logits=True, n_ctx=built.plan.ctx)


@pytest.fixture(scope="module")
def tiny_int8_kv(tmp_path_factory):
    """tiny with --kv int8: the cache in SRAM, as int8 rows."""
    return compile_model("tiny", tmp_path_factory.mktemp("kv8"), kv_dtype="int8", quiet=True)


def test_the_board_with_an_int8_cache_in_sram_is_the_references_bit_for_bit(tiny_int8_kv, tiny, tok):
    _cfg, w = tiny
    assert not tiny_int8_kv.plan.kv.values_transposed   # in SRAM the rows stay rows
    prompt = tok.encode(PROMPT)
    result = board_tokens(tiny_int8_kv, prompt)
    assert_bit_identical(result, reference(tiny_int8_kv, w, prompt, "int8"))
    # and it is the int8 cache that ran: the float32 cache's logits are not these
    f32 = reference(tiny_int8_kv, w, prompt, "fp32")
    assert not all(np.array_equal(a, b) for a, b in zip(result.logits, f32.logits))


def test_distilgpt2_with_an_int8_cache_in_psram_is_the_references_bit_for_bit(tmp_path_factory, distil, tok):
    built = compile_model("distilgpt2", tmp_path_factory.mktemp("distil_kv8"), board=H7, dtype="int8",
                          tiers="flash-only", quiet=True)   # the PSRAM holds the cache alone
    assert (built.plan.kv.dtype, built.plan.kv.placement, built.plan.ctx) == ("int8", "psram", 1024)
    assert built.plan.kv.values_transposed   # head_dim 64: two columns of a 32-position block per row
    _cfg, w = distil
    # 34 positions: the first block of 32 completes, is rewritten transposed (runtime.c
    # kv_transpose_values) and read that way from position 32 on; the second is read as rows
    prompt = tok.encode(PROMPT * 8)[:34]
    result = board_tokens(built, prompt)
    assert_bit_identical(result, reference(built, w, prompt, "int8"))
    # each position writes one row per layer, head, key and value; attention reads rows 0..pos
    # back; a completed block of value rows is read once more and written transposed
    heads = built.cfg.n_layer * built.cfg.n_head
    rows = lambda p: 2 * heads * (1 + (p + 1)) + (heads * 2 * 32 if (p + 1) % 32 == 0 else 0)
    n = len(prompt) + 3 - 1
    assert result.psram_bytes == sum(rows(p) for p in range(n)) * built.plan.kv.row_bytes


def test_a_wrong_kv_scale_fails_the_comparison(tiny_int8_kv, tiny, tok, tmp_path):
    runtime = tmp_path / "runtime_c"
    shutil.copytree(RUNTIME_C, runtime)
    src = runtime / "runtime.c"
    old = "*(float*)(void*)row = scale;"
    assert old in src.read_text()
    src.write_text(src.read_text().replace(old, "*(float*)(void*)row = scale * 1.0009765625f;"))
    out = tmp_path / "build"
    shutil.copytree(tiny_int8_kv.out_dir / "include", out / "include")
    elf = build(out, tiny_int8_kv.plan, runtime=runtime)
    prompt = tok.encode(PROMPT)
    result = board_tokens(tiny_int8_kv, prompt, elf=elf)
    ref = reference(tiny_int8_kv, tiny[1], prompt, "int8")
    assert not all(np.array_equal(a, b) for a, b in zip(result.logits, ref.logits))


def test_the_plan_names_the_bound_each_bus_sets():
    """GPT-2 int8 on the STM32H7S78-DK at context 1024: the flash carries every weight (the tied
    wte twice: embedding row and head), the PSRAM the int8 cache: at the last position each
    layer writes one row per head for keys and values and reads all 1024 back."""
    cfg = load_preset("gpt2")
    plan = make_plan(cfg, stages_of(cfg), dtype="int8", board=H7, tiers="flash-only")   # the cache alone
    b = plan.buses
    assert b["flash"]["bytes_per_token"] == plan.totals.flash_bytes_per_token
    assert 390e6 < b["flash"]["bytes_per_s"] < 400e6        # 8 lanes DTR at 200 MHz, less the command
    assert b["psram"]["bytes_per_token"] == cfg.n_layer * 2 * cfg.n_head * 72 * (1024 + 1)   # rows + check words
    assert b["bound_s_per_token"] == b["flash"]["s_per_token"] > b["psram"]["s_per_token"]
