"""The XIP baseline (compiler/plan.py RUNTIMES): weights read in place through the memory-mapped
flash, as most MCU LLM ports do, with no tile buffers, no DMA and no resident weights. Each
32-byte line the CPU reads is a D-cache miss, one read command of the flash part, while the
CPU waits (emulator/spi_flash.py xip_lines)."""

import numpy as np
import pytest

from compiler.pipeline import compile_model
from compiler.reference import Reference, generate
from compiler.sampler import Sampling
from emulator.board import Board
from target import memory_map as mm
from target.boards import flash_timing_of, get_board
from target.flash_timing import read_time_ns

H7 = "stm32h7s78-dk"
PROMPT = "In 1969, the first"


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    out = tmp_path_factory.mktemp("xip")
    return {rt: compile_model("tiny", out / rt, board=H7, dtype="int8", runtime=rt, group="none", quiet=True)
            for rt in ("stream", "xip")}


def board_run(built, prompt, n_new=3, chunk=0):
    with Board.for_profile(built.out_dir / "firmware.elf", built.out_dir / "flash.img", get_board(H7),
                           xip=built.plan.runtime == "xip", record_dma=True) as board:
        return board, board.run(prompt, n_new, dump_logits=True, chunk=chunk)


def test_the_xip_plan_stages_nothing(builds):
    plan = builds["xip"].plan
    assert plan.buffer("weights").bytes == plan.buffer("weights_next").bytes == 0
    assert plan.resident.bytes == 0 and plan.verify == "boot"
    stream = builds["stream"].plan   # (whose tiles sit in the data TCM)
    assert plan.peak_ram_bytes + plan.tcm_bytes < stream.peak_ram_bytes + stream.tcm_bytes


def test_the_xip_baseline_gives_the_references_tokens_and_logits(builds, tiny, tok):
    prompt = tok.encode(PROMPT)
    _board, result = board_run(builds["xip"], prompt)
    ref = generate(Reference(tiny[0], tiny[1], dtype="int8"), prompt, 3, Sampling(), keep_logits=True,
                   n_ctx=builds["xip"].plan.ctx)
    assert result.tokens == ref.tokens
    assert all(np.array_equal(a, b) for a, b in zip(result.logits, ref.logits))


def test_each_line_the_cpu_reads_in_place_is_a_flash_read_command(builds, tok):
    _board, result = board_run(builds["xip"], tok.encode(PROMPT))
    xip = result.flash_commands["xip_line"]
    part = flash_timing_of(get_board(H7).flash[0])
    line_ns = read_time_ns(part, mm.XIP_LINE, device_size=part.capacity)
    assert xip["bytes"] == xip["count"] * mm.XIP_LINE and xip["ns"] == pytest.approx(xip["count"] * line_ns)
    # every weight of a decode step is read once: the lines cover the streamed bytes
    last = result.per_position[-1]
    weights = sum(t.bytes for t in builds["xip"].plan.tensors if t.access != "row")
    assert weights <= last.flash_bytes <= weights * 1.05 + 64 * 1024
    # and the CPU waits for them: nothing overlaps
    assert last.stall_ns == pytest.approx(last.flash_ns, rel=1e-4)


def test_streaming_beats_the_xip_baseline(builds, tok):
    prompt = tok.encode(PROMPT)
    times = {rt: board_run(b, prompt)[1].per_position[-1].device_ns for rt, b in builds.items()}
    assert times["stream"] < times["xip"] / 2
