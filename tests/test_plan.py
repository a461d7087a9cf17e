"""The memory plan: exact RAM figures up front, tiles under a budget, clear refusals."""

import pytest

from compiler.config import load_preset
from compiler.pipeline import stages_of
from compiler.plan import make_plan
from target.errors import McugptError


@pytest.fixture(scope="module")
def gpt2_stages():
    """GPT-2 124M's stages, from a graph whose initializers are shape-only placeholders."""
    cfg = load_preset("gpt2")
    return cfg, stages_of(cfg)


def test_gpt2_has_72_block_stages_and_its_kv_bytes(gpt2_stages):
    cfg, stages = gpt2_stages
    plan = make_plan(cfg, stages).to_dict()
    assert plan["totals"]["block_stages"] == 72 and plan["totals"]["stages"] == 74
    assert plan["kv"]["bytes_per_token"] == 73_728
    assert plan["kv"]["bytes"] == 73_728 * plan["ctx"]


def test_default_context_is_the_largest_the_budget_allows(gpt2_stages):
    cfg, stages = gpt2_stages
    plan = make_plan(cfg, stages, ram=64 << 20).to_dict()
    # 1024 positions of KV cache (72 MiB) cannot fit a 64 MiB board
    assert plan["ctx_limited_by"] == "sram" and plan["ctx"] < 1024
    assert plan["peak_ram_bytes"] <= 64 << 20
    with pytest.raises(McugptError):
        make_plan(cfg, stages, ram=64 << 20, ctx=plan["ctx"] + 1)
    with pytest.raises(McugptError, match=r"RAM budget of 134,217,728 bytes exceeds the sim64 board's 67,108,864 bytes of SRAM"):
        make_plan(cfg, stages, ram=128 << 20)


def test_buffers_are_aligned_and_do_not_overlap(gpt2_stages):
    cfg, stages = gpt2_stages
    plan = make_plan(cfg, stages, ram=8 << 20).to_dict()
    spans = sorted((b["offset"], b["offset"] + b["bytes"]) for b in plan["buffers"])
    assert all(start % 32 == 0 for start, _ in spans)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    assert spans[-1][1] <= plan["arena_bytes"]
    assert plan["peak_ram_bytes"] == plan["arena_bytes"] + sum(plan["reserved"].values()) <= 8 << 20


def test_weights_stream_in_tiles_that_fit_the_tile_buffer(gpt2_stages):
    cfg, stages = gpt2_stages
    for ram in (1 << 20, 8 << 20, 64 << 20):
        plan = make_plan(cfg, stages, ram=ram)
        for s in plan.stages:
            for _role, t in plan.matrices(s):
                assert t.tile_rows * t.cols * 4 <= plan.tile_bytes
                assert t.tiles * t.tile_rows >= t.rows
    roomy = make_plan(cfg, stages, ram=64 << 20, ctx=64, group="none")  # tiles take all the room
    assert all(t.tiles == 1 for s in roomy.stages if s.kind != "head" for _r, t in roomy.matrices(s))


def test_a_budget_too_small_gives_the_smallest_that_works(gpt2_stages):
    cfg, stages = gpt2_stages
    with pytest.raises(McugptError, match=r"too small for gpt2 with a context of 256 tokens: "
                                          r"the smallest budget that works is ([\d,]+) bytes") as e:
        make_plan(cfg, stages, ram=4 << 20, ctx=256)
    smallest = int(str(e.value).split("works is ")[1].split(" ")[0].replace(",", ""))
    assert make_plan(cfg, stages, ram=smallest, ctx=256).to_dict()["peak_ram_bytes"] <= smallest
    with pytest.raises(McugptError):
        make_plan(cfg, stages, ram=smallest - 1, ctx=256)


def test_stage_figures(gpt2_stages):
    cfg, stages = gpt2_stages
    plan = make_plan(cfg, stages, ram=64 << 20, ctx=512).to_dict()
    by = {s["name"]: s for s in plan["stages"]}
    d = 768
    assert by["h0.attn_qkv"]["weight_bytes"] == (3 * d * d + 3 * d) * 4
    assert by["h0.attn_qkv"]["macs"] == 3 * d * d
    assert by["h0.mlp"]["weight_bytes"] == (8 * d * d + 5 * d) * 4
    assert by["h5.attn_core"]["kv_read_bytes"] == 2 * d * 4 * 512
    assert by["h5.attn_core"]["kv_write_bytes"] == 2 * d * 4
    assert by["embed"]["flash_bytes_per_token"] == 2 * (d * 4 + 4)  # two rows and their row CRCs, not the whole table
    assert by["head"]["macs"] == 50257 * d
    assert plan["totals"]["weight_bytes"] == cfg.n_params() * 4  # wte stored once
    assert plan["largest_stage"]["name"].endswith("mlp") or plan["largest_stage"]["name"] == "head"


def test_grouping_keeps_the_smallest_weights_resident_in_the_ram_left(gpt2_stages):
    cfg, stages = gpt2_stages
    none = make_plan(cfg, stages, ram=64 << 20, ctx=64, dtype="int8", group="none")
    auto = make_plan(cfg, stages, ram=64 << 20, ctx=64, dtype="int8", group="auto")
    assert none.resident.bytes == 0 and none.resident_tensors == []
    kept = auto.resident_tensors
    assert auto.resident.bytes > 40 << 20 and auto.peak_ram_bytes <= 64 << 20
    # I/O saved: resident tensors are not read per token
    assert auto.totals.flash_bytes_per_token == none.totals.flash_bytes_per_token - sum(
        t.bytes for t in kept if t.name != "wte.weight")
    # smallest first: every vector is resident before any matrix
    names = [t.name for t in kept]
    assert all(n in names for n in (f"h.{i}.ln_1.weight" for i in range(12)))
    sizes = [t.bytes for t in kept]
    assert sizes == sorted(sizes)
    # the resident region is a buffer of the arena like any other, and each tensor lies in it
    buf = auto.buffer("resident")
    assert all(buf.offset <= t.resident_offset and t.resident_offset + t.bytes <= buf.offset + buf.bytes
               for t in kept)
    assert auto.resident.groups_without_flash_io, "some consecutive stages should run without flash I/O"


def test_more_ram_means_fewer_flash_bytes_per_token(gpt2_stages):
    cfg, stages = gpt2_stages
    flash = [make_plan(cfg, stages, ram=ram, ctx=64, dtype="int8").to_dict()["totals"]["flash_bytes_per_token"]
             for ram in (8 << 20, 16 << 20, 32 << 20, 64 << 20)]
    assert flash == sorted(flash, reverse=True) and flash[-1] < 0.6 * flash[0]
