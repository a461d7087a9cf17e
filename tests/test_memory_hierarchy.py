"""The memory behind the loads: the data TCM the plan fills, the D-cache in front of the SRAM,
and the coherence the firmware keeps between the cache and the DMA (target/boards.py,
compiler/plan.py, emulator/dcache.py, runtime_c/hal_board.c)."""

import shutil

import pytest

from compiler.config import load_preset
from compiler.firmware import RUNTIME_C, build
from compiler.pipeline import compile_model, stages_of
from compiler.plan import TCM_BUFFERS, make_plan
from emulator.board import Board, BoardFault
from target import memory_map as mm
from target.boards import get_board

H7 = "stm32h7s78-dk"
PROMPT = [464, 5044, 318]   # "The cat is"
LINE = 32


@pytest.fixture(scope="module")
def tcm_build(tmp_path_factory):
    """tiny, int8, every weight streamed: the tiles in the STM32H7S78-DK's DTCM."""
    return compile_model("tiny", tmp_path_factory.mktemp("tcm"), board=H7, dtype="int8", group="none", quiet=True)


@pytest.fixture(scope="module")
def sram_build(tmp_path_factory):
    """The same with --tcm off: every buffer in the AXI SRAM, behind the D-cache."""
    return compile_model("tiny", tmp_path_factory.mktemp("sram"), board=H7, dtype="int8", group="none",
                         tcm="off", quiet=True)


def run(built, elf=None, n_new=3):
    board = Board.for_profile(elf or built.out_dir / "firmware.elf", built.out_dir / "flash.img",
                              get_board(built.plan.board), record_dma=True)
    return board, board.run(PROMPT, n_new=n_new)


# -- the plan ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["tiny", "gpt2"])
def test_the_dma_buffers_go_in_the_data_tcm_and_the_int8_input_too_without_a_prefill_chunk(model):
    cfg = load_preset(model)
    dtcm = get_board(H7).dtcm
    for prefill in (None, 1):
        plan = make_plan(cfg, stages_of(cfg), dtype="int8", board=H7, prefill=prefill)
        in_tcm = {b.name for b in plan.buffers if b.region == "dtcm"}
        used = {b.name for b in plan.buffers if b.bytes}   # (tiny keeps its KV cache in SRAM: no KV blocks)
        # one position's int8 input beside the tiles; a chunk's inputs would crowd them out
        assert in_tcm == (set(TCM_BUFFERS) & used) - ({"xq"} if plan.prefill_chunk > 1 else set())
        assert 0 < plan.tcm_bytes <= dtcm.bytes
        for b in plan.buffers:   # each inside its arena, on a cache line
            assert b.offset % LINE == 0
            assert b.offset + b.bytes <= (plan.tcm_bytes if b.region == "dtcm" else plan.arena_bytes)
        for t in plan.tensors:   # every tile still fits its (smaller) buffer
            if t.access == "matrix":
                assert 1 <= t.tile_rows and t.tile_rows * t.row_bytes <= plan.tile_bytes


def test_without_a_tcm_or_with_tcm_off_everything_stays_in_sram():
    cfg = load_preset("tiny")
    for board, tcm, why in (("sim64", "auto", "has no data TCM"), (H7, "off", "--tcm off")):
        plan = make_plan(cfg, stages_of(cfg), dtype="int8", board=board, tcm=tcm)
        assert plan.tcm_bytes == 0 and {b.region for b in plan.buffers} == {"sram"} and why in plan.tcm_why


def test_the_tcm_frees_sram_for_the_model():
    cfg = load_preset("gpt2")
    on, off = (make_plan(cfg, stages_of(cfg), dtype="int8", board=H7, tcm=t) for t in ("auto", "off"))
    assert on.ctx == off.ctx
    # what the tiles gave back to the SRAM keeps more weights resident
    assert on.resident.bytes > off.resident.bytes


# -- the emulated board -----------------------------------------------------------------


def streamed_lines(board, in_sram):
    """Cache lines the DMA wrote into the SRAM, from the DMA log alone: every destination is a
    buffer start or a resident tensor's offset, both on a line (the plan's ALIGN)."""
    n = 0
    for ctl in (board.flashctl, board.psramctl):
        for e in ctl.log:
            if e[0] == "start" and e[1] == "READ" and in_sram(e[8]):
                assert e[8] % LINE == 0
                n += -(-e[3] // LINE)
    return n


def test_with_tcm_off_each_streamed_line_costs_one_line_fill(sram_build):
    board, result = run(sram_build)
    sram = lambda a: mm.SRAM_BASE <= a < mm.SRAM_BASE + board.ram_bytes
    spec = get_board(H7).dcache
    assert result.dcache["line_fills"] == streamed_lines(board, sram) > 0
    assert result.dcache["stall_cycles"] == (result.dcache["line_fills"] * spec.fill_cycles
                                             + result.dcache["writebacks"] * spec.writeback_cycles)
    assert board.clock.memory_cycles == pytest.approx(result.dcache["stall_cycles"] + result.bus_cycles)


def test_bus_sharing_charges_every_word_the_dma_moves_and_the_crc_pass_reads_back(tcm_build):
    board, result = run(tcm_build)
    profile = get_board(H7)
    moved = sum(e[3] for e in board.flashctl.log if e[0] == "start" and e[1] == "READ")
    moved += sum(e[3] for e in board.psramctl.log if e[0] == "start")
    crc_pass = result.crc_ns * 1e-9 * profile.crc.bytes_per_s   # the bytes the CRC pass read back
    words = (moved + crc_pass) / 4
    assert words > 0 and result.bus_cycles == pytest.approx(words * profile.dma_steal_cycles_per_word)
    assert any("bus sharing" in a for a in profile.all_assumptions())   # labelled as what it is


def test_with_the_tiles_in_the_tcm_the_weights_cost_no_line_fills(tcm_build, sram_build):
    board, result = run(tcm_build)
    tcm = lambda a: mm.DTCM_BASE <= a < mm.DTCM_BASE + board.dtcm_bytes
    sram = lambda a: mm.SRAM_BASE <= a < mm.SRAM_BASE + board.ram_bytes
    assert streamed_lines(board, tcm) > 0                      # the weights land in the TCM
    assert result.dcache["line_fills"] == streamed_lines(board, sram)
    plan = tcm_build.plan   # the firmware wrote both tile buffers, and nothing past the plan's TCM
    assert plan.buffer("weights_next").offset < result.tcm_high_water <= plan.tcm_bytes
    _, off = run(sram_build)
    assert result.tokens == off.tokens
    assert result.cycles < off.cycles                          # the zero-wait TCM is faster


def test_a_firmware_that_skips_the_invalidation_is_stopped(sram_build, tmp_path):
    """On silicon it would read stale bytes from the cache; the board stops it, naming the line."""
    runtime = tmp_path / "runtime_c"
    shutil.copytree(RUNTIME_C, runtime)
    hal = runtime / "hal_board.c"
    text = hal.read_text()
    skipped = "    if (t->dst) dcache_invalidate(t->dst, t->len);\n"   # after every DMA transfer lands
    assert skipped in text
    hal.write_text(text.replace(skipped, ""))
    out = tmp_path / "build"
    shutil.copytree(sram_build.out_dir / "include", out / "include")
    with pytest.raises(BoardFault) as e:
        run(sram_build, elf=build(out, sram_build.plan, runtime=runtime))
    assert e.value.kind == "coherence" and "did not invalidate" in str(e.value) and "\n" not in str(e.value)
    assert mm.SRAM_BASE <= e.value.address < mm.SRAM_BASE + get_board(H7).sram_bytes
