"""The memory-tier planner (compiler/plan.py TIERS): whole streamed matrices in the PSRAM the KV
cache leaves, copied and CRC-checked once at boot, then streamed by the PSRAM's own DMA."""

import numpy as np
import pytest

from compiler.config import load_preset
from compiler.pipeline import compile_model, stages_of
from compiler.plan import make_plan
from compiler.reference import Reference, generate
from compiler.sampler import Sampling
from emulator.board import Board
from target.boards import get_board

H7 = "stm32h7s78-dk"


@pytest.mark.parametrize("model", ["tiny", "gpt2"])
def test_the_psram_tier_never_exceeds_the_psram_nor_touches_the_kv_cache(model):
    cfg = load_preset(model)
    plan = make_plan(cfg, stages_of(cfg), dtype="int8", board=H7)
    tier = sorted((t.psram_offset, t.psram_offset + t.bytes, t.name) for t in plan.tensors if t.psram_offset is not None)
    assert tier and plan.psram_weight_bytes == sum(b - a for a, b, _ in tier)
    kv_end = plan.kv.bytes if plan.kv.placement == "psram" else 0
    assert tier[0][0] >= kv_end and tier[-1][1] <= get_board(H7).psram_bytes
    assert all(b <= c for (_, b, _), (c, _, _) in zip(tier, tier[1:]))   # no two overlap
    assert all(t.access == "matrix" and not t.resident for t in plan.tensors if t.psram_offset is not None)
    # what leaves the flash goes to the PSRAM bus
    flash_only = make_plan(cfg, stages_of(cfg), dtype="int8", board=H7, tiers="flash-only")
    moved = flash_only.buses["flash"]["bytes_per_token"] - plan.buses["flash"]["bytes_per_token"]
    assert moved == plan.psram_weight_bytes == plan.buses["psram"]["weight_bytes_per_token"]
    assert plan.buses["bound_s_per_token"] < flash_only.buses["bound_s_per_token"]


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
