"""Batched prompt processing: the prompt runs in chunks of positions, each stage over every
position of a chunk before the next stage, so each weight tile streams once per chunk
(compiler/plan.py PREFILL_MAX, runtime_c/runtime.c forward). The logits are those of one
position at a time, bit for bit, and attention inside a chunk stays causal."""

import numpy as np
import pytest

from compiler.config import load_preset
from compiler.pipeline import compile_model, stages_of
from compiler.plan import PREFILL_MAX, make_plan
from compiler.reference import Reference, generate
from compiler.sampler import Sampling
from emulator.board import Board, FirmwareError
from mcugpt.run import Build, run
from target.boards import get_board
from target.errors import McugptError

PROMPT = ("The staged method runs a language model on a microcontroller by streaming every weight "
          "from flash, one stage at a time")


def board_run(built, prompt, chunk, n_new=2):
    with Board.for_profile(built.out_dir / "firmware.elf", built.out_dir / "flash.img",
                           get_board(built.plan.board), record_dma=True) as board:
        return board, board.run(prompt, n_new, dump_logits=True, chunk=chunk)


def assert_reference(result, built, weights, prompt, n_new=2):
    ref = generate(Reference(built.cfg, weights, dtype=built.plan.dtype, kv_dtype=built.plan.kv.dtype), prompt,
                   n_new, Sampling(), keep_logits=True, n_ctx=built.plan.ctx)
    assert result.tokens == ref.tokens
    assert all(np.array_equal(a, b) for a, b in zip(result.logits, ref.logits))


@pytest.fixture(scope="module")
def tiny_chunked(tmp_path_factory):
    return compile_model("tiny", tmp_path_factory.mktemp("prefill"), quiet=True)


def test_the_plan_takes_the_largest_chunk_that_fits_beside_the_context():
    cfg = load_preset("gpt2")
    plan = make_plan(cfg, stages_of(cfg), dtype="int8", board="stm32h7s78-dk")
    assert plan.ctx == 1024 and 1 < plan.prefill_chunk <= PREFILL_MAX
    x = plan.buffer("x")
    assert x.bytes == plan.prefill_chunk * cfg.n_embd * 4 and plan.peak_ram_bytes <= get_board("stm32h7s78-dk").sram_bytes
    # one more position's activations would not fit
    with pytest.raises(McugptError, match="too small for a prefill chunk"):
        make_plan(cfg, stages_of(cfg), dtype="int8", board="stm32h7s78-dk", prefill=plan.prefill_chunk + 1)
    assert make_plan(cfg, stages_of(cfg), dtype="int8", board="stm32h7s78-dk", prefill=1).prefill_chunk == 1


@pytest.mark.parametrize("chunk", [1, 3, None], ids=["one-at-a-time", "3", "largest"])
def test_chunks_give_the_logits_of_one_position_at_a_time(tiny_chunked, tiny, tok, chunk):
    prompt = tok.encode(PROMPT)
    assert tiny_chunked.plan.prefill_chunk == PREFILL_MAX < len(prompt)   # several chunks, one short
    board, result = board_run(tiny_chunked, prompt, chunk or 0)
    assert_reference(result, tiny_chunked, tiny[1], prompt)
    n = chunk or PREFILL_MAX
    assert result.positions[:-(2 - 1)] == list(range(0, len(prompt), n))   # a trace entry per chunk


def test_each_weight_streams_once_per_chunk(tmp_path, tok):
    streamed = compile_model("tiny", tmp_path / "s", group="none", quiet=True)   # nothing resident
    prompt = tok.encode(PROMPT)
    reads = {}
    for chunk in (1, 4):
        board, result = board_run(streamed, prompt, chunk, n_new=1)
        reads[chunk] = result.flash_bytes
    # the prompt's positions read the block weights once per chunk instead of once per position
    block = sum(t.bytes for t in streamed.plan.tensors if t.name.startswith("h."))
    chunks = lambda n: -(-len(prompt) // n)
    assert reads[1] - reads[4] == pytest.approx((chunks(1) - chunks(4)) * block, rel=0.02)


def test_distilgpt2_int8_chunked_on_the_stm32h7s78_dk_is_exact(tmp_path, distil, tok):
    built = compile_model("distilgpt2", tmp_path / "d", board="stm32h7s78-dk", dtype="int8", quiet=True)
    assert built.plan.prefill_chunk > 1
    prompt = tok.encode(PROMPT)
    _board, result = board_run(built, prompt, 0)
    assert_reference(result, built, distil[1], prompt)
    _board, one = board_run(built, prompt, 3)
    assert_reference(one, built, distil[1], prompt)


def test_a_chunk_larger_than_the_plan_is_refused(tiny_chunked, tok):
    with pytest.raises(McugptError, match=r"--prefill-chunk 17 is outside 1\.\.16"):
        run(Build.open(tiny_chunked.out_dir), "Hello", 1, Sampling(), chunk=17)
    with pytest.raises(FirmwareError) as e:   # and the firmware checks it too
        board_run(tiny_chunked, tok.encode("Hello"), PREFILL_MAX + 1)
    assert e.value.name == "BAD_MAILBOX"


def test_the_summary_reports_the_time_to_first_token(tiny_chunked):
    r = run(Build.open(tiny_chunked.out_dir), PROMPT, 2, Sampling())
    d = r["device"]
    assert d["prefill_s"] > 0 and d["prefill_wall_s"] > 0 and r["prefill_chunk"] == PREFILL_MAX
    one = run(Build.open(tiny_chunked.out_dir), PROMPT, 2, Sampling(), chunk=1)
    assert one["device"]["prefill_s"] > d["prefill_s"]   # the same build, one position at a time
