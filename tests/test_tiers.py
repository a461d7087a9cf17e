"""The memory-tier planner (compiler/plan.py TIERS): the tail of every full weight tile in the
PSRAM the KV cache leaves, copied and CRC-checked once at boot, then read by the PSRAM's own
DMA while the flash's DMA reads the rest of the tile."""

import numpy as np
import pytest

from compiler.config import load_preset
from compiler.pipeline import compile_model, stages_of
from compiler.plan import CHECK_CYCLES_PER_BYTE, CYCLES_PER_MAC, make_plan
from compiler.reference import Reference, generate
from compiler.sampler import Sampling
from emulator.board import Board
from target.boards import flash_timing_of, get_board, psram_timing_of
from target.flash_timing import read_time_ns
from target.psram_timing import transfer_time_ns
from target.flash_layout import read_image

H7 = "stm32h7s78-dk"


@pytest.mark.parametrize("model", ["tiny", "gpt2"])
def test_the_psram_tier_never_exceeds_the_psram_nor_touches_the_kv_cache(model):
    cfg = load_preset(model)
    plan = make_plan(cfg, stages_of(cfg), dtype="int8", board=H7)
    tier = sorted((t.psram_offset, t.psram_offset + t.psram_span, t.name) for t in plan.tensors
                  if t.psram_offset is not None)
    # each full tile's tail and its 4-byte check word
    assert tier and plan.psram_weight_bytes == sum(t.psram_bytes for t in plan.tensors)
    assert all(t.psram_span == t.rows // t.tile_rows * (t.psram_tail + 4) for t in plan.tensors
               if t.psram_offset is not None)
    kv_end = plan.kv.bytes if plan.kv.placement == "psram" else 0
    assert tier[0][0] >= kv_end and tier[-1][1] <= get_board(H7).psram_bytes
    assert all(b <= c for (_, b, _), (c, _, _) in zip(tier, tier[1:]))   # no two overlap
    assert all(t.access == "matrix" and not t.resident for t in plan.tensors if t.psram_offset is not None)
    # what leaves the flash goes to the PSRAM bus
    flash_only = make_plan(cfg, stages_of(cfg), dtype="int8", board=H7, tiers="flash-only")
    moved = flash_only.buses["flash"]["bytes_per_token"] - plan.buses["flash"]["bytes_per_token"]
    assert moved == plan.psram_weight_bytes == plan.buses["psram"]["weight_bytes_per_token"]
    assert plan.buses["bound_s_per_token"] < flash_only.buses["bound_s_per_token"]
    # every streamed matrix gives the PSRAM the same share of each full tile: as much as fits
    tiered = [t for t in plan.tensors if t.psram_offset is not None]
    shares = [t.psram_tail / (t.tile_rows * t.row_bytes) for t in tiered]
    assert max(shares) - min(shares) < 0.01
    # as much as fits, or (a small model) up to where the PSRAM's part takes as long as the
    # flash's, or up to where the flash's part takes as long as the CPU's work on the tile
    # (CYCLES_PER_MAC, and the tail's check at CHECK_CYCLES_PER_BYTE)
    board = get_board(H7)
    t = tiered[0]
    tile = t.tile_rows * t.row_bytes
    flash_ns = read_time_ns(flash_timing_of(board.flash[0]), tile - t.psram_tail, device_size=board.flash_bytes)
    psram_ns = transfer_time_ns(psram_timing_of(board.psram), t.psram_tail, False)
    cpu_ns = (t.tile_rows * t.cols * CYCLES_PER_MAC["int8"] + t.psram_tail * CHECK_CYCLES_PER_BYTE) * 1e9 / board.cpu_hz
    assert (board.psram_bytes - tier[-1][1] < 64 * 4096 or abs(psram_ns / flash_ns - 1) < 0.05
            or abs(cpu_ns / flash_ns - 1) < 0.05)


def test_a_tiled_tile_arrives_over_both_buses_at_once(builds, tok):
    """While the PSRAM's DMA reads a tile's tail, the flash's reads the rest of the same tile:
    the two transfers overlap in time, and together they are exactly the tile."""
    built = builds["auto"]
    wte = next(t for t in built.plan.tensors if t.psram_offset is not None)
    offset = read_image(built.out_dir / "flash.img", verify_weights=False).tensors[wte.index]["offset"]
    with Board.for_profile(built.out_dir / "firmware.elf", built.out_dir / "flash.img", get_board(H7),
                           record_dma=True) as board:
        board.run(tok.encode("Hello"), 2)
        flash = [e for e in board.flashctl.log if e[0] == "start" and e[1] == "READ"]
        psram = [e for e in board.psramctl.log if e[0] == "start" and e[1] == "READ"
                 and wte.psram_offset <= e[2] < wte.psram_offset + wte.psram_span]
    tile = wte.tile_rows * wte.row_bytes
    assert psram and all(e[3] == wte.psram_tail + 4 for e in psram)   # the tail and its check word
    overlapping = 0
    for p in psram:
        k = (p[2] - wte.psram_offset) // (wte.psram_tail + 4)     # which tile
        # the rest of that tile, from flash (at boot the whole tile was read, to copy its tail)
        f = [e for e in flash if e[2] == offset + k * tile and e[3] == tile - wte.psram_tail]
        overlapping += any(e[5] < p[6] and p[5] < e[6] for e in f)   # one starts before the other ends
    assert overlapping == len(psram)



def test_no_psram_no_tier():
    cfg = load_preset("tiny")
    assert make_plan(cfg, stages_of(cfg), board="sim64").psram_weight_bytes == 0


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiers")
    return {t: compile_model("tiny", out / t, board=H7, dtype="int8", group="none", tiers=t, quiet=True)
            for t in ("auto", "flash-only")}


def test_the_psram_tier_gives_the_same_logits_and_is_never_slower(builds, tiny, tok):
    prompt = tok.encode("In 1969, the first")
    ref = generate(Reference(tiny[0], tiny[1], dtype="int8"), prompt, 3, Sampling(), keep_logits=True,
                   n_ctx=builds["auto"].plan.ctx)
    times = {}
    for tiers, built in builds.items():
        with Board.for_profile(built.out_dir / "firmware.elf", built.out_dir / "flash.img", get_board(H7)) as board:
            result = board.run(prompt, 3, dump_logits=True)
        assert result.tokens == ref.tokens
        assert all(np.array_equal(a, b) for a, b in zip(result.logits, ref.logits))
        times[tiers] = result.per_position[-1]
    assert times["auto"].psram_bytes > 0 and times["auto"].flash_bytes < times["flash-only"].flash_bytes
    assert times["auto"].device_ns <= times["flash-only"].device_ns
