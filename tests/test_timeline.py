"""`mcugpt run --trace FILE`: the run's timeline on the board's simulated clock, as Chrome /
Perfetto trace events (mcugpt/timeline.py, docs/timeline.md).

The trace must be one Perfetto and chrome://tracing open (the Trace Event Format's required
keys and types, slices that nest on a track), and it must agree with what the run's summary
measured by other means: the flash and PSRAM bytes the devices counted, the per-token device
time and CPU stall time the trace unit charged, each stage's time and bytes.
"""

import json
import math
import shutil
import sys
from collections import defaultdict

import pytest
from conftest import REPO, mcugpt

from compiler.pipeline import compile_model
from target.flash_layout import read_image

PROMPT = "Hello, my name is"     # 5 tokens
N_PROMPT = 5
TOKENS = 3
KiB = 1024


@pytest.fixture(scope="module")
def dk_build(tmp_path_factory):
    # 160 KiB of the board's SRAM for the model: the KV cache goes to PSRAM, and the PSRAM tier
    # holds the matrices (tests/test_psram_board.py, test_tiers.py), so the PSRAM track has
    # tier copies at boot, tier reads and KV rows
    return compile_model("tiny", tmp_path_factory.mktemp("dk"), board="stm32h7s78-dk", ram=160 * KiB, quiet=True)


def traced_run(build, path, *args):
    report = json.loads(mcugpt("run", "--build", build.out_dir, "--prompt", PROMPT, "--tokens", TOKENS,
                               "--trace", path, "--json", *args, check=True).stdout)
    return report, json.loads(path.read_text())


@pytest.fixture(scope="module")
def sim64(tiny_build, tmp_path_factory):
    # one position per prefill pass: the prompt's passes skip the head but the last
    return (tiny_build, *traced_run(tiny_build, tmp_path_factory.mktemp("sim64") / "trace.json",
                                    "--prefill-chunk", "1"))


@pytest.fixture(scope="module")
def dk(dk_build, tmp_path_factory):
    return (dk_build, *traced_run(dk_build, tmp_path_factory.mktemp("dk_run") / "trace.json"))


@pytest.fixture(scope="module")
def xip(tmp_path_factory):
    # the XIP runtime reads weights in place: its line fills are on the flash track
    build = compile_model("tiny", tmp_path_factory.mktemp("xip"), board="stm32h7s78-dk", dtype="int8",
                          runtime="xip", quiet=True)
    return (build, *traced_run(build, tmp_path_factory.mktemp("xip_run") / "trace.json"))


@pytest.fixture(params=["sim64", "dk", "xip"])
def traced(request):
    return request.getfixturevalue(request.param)


def slices(trace, cat=None, track=None):
    names = track_names(trace)
    return [e for e in trace["traceEvents"] if e["ph"] == "X" and (cat is None or e["cat"] == cat)
            and (track is None or names[e["tid"]] == track)]


def track_names(trace):
    return {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}


def ns(t_us):
    return round(t_us * 1000)


def inside(child, parent):
    return ns(parent["ts"]) <= ns(child["ts"]) and ns(child["ts"] + child["dur"]) <= ns(parent["ts"] + parent["dur"])


# ----------------------------------------------------------------------------
# a trace Perfetto opens


def test_every_event_has_the_formats_required_keys_and_types(traced):
    _build, _report, trace = traced
    assert isinstance(trace["traceEvents"], list) and trace["displayTimeUnit"] in ("ms", "ns")
    for e in trace["traceEvents"]:
        assert isinstance(e["name"], str) and e["name"], e
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int), e
        assert e["ph"] in ("X", "M", "i"), e
        if e["ph"] == "M":
            assert e["name"] in ("process_name", "thread_name", "thread_sort_index") and isinstance(e["args"], dict)
            continue
        assert isinstance(e["ts"], (int, float)) and math.isfinite(e["ts"]) and e["ts"] >= 0, e
        assert isinstance(e["cat"], str) and isinstance(e["args"], dict), e
        if e["ph"] == "X":
            assert isinstance(e["dur"], (int, float)) and math.isfinite(e["dur"]) and e["dur"] >= 0, e
        else:
            assert e["s"] in ("t", "p", "g"), e
    named = track_names(trace)
    assert {e["tid"] for e in trace["traceEvents"] if e["ph"] != "M"} <= set(named)
    json.dumps(trace, allow_nan=False)   # strict JSON: no NaN or Infinity


def test_slices_on_a_track_nest_or_follow_each_other_in_time_order(traced):
    _build, _report, trace = traced
    by_track = defaultdict(list)
    for e in trace["traceEvents"]:
        if e["ph"] == "X":
            by_track[e["tid"]].append(e)
    for tid, events in by_track.items():
        starts = [ns(e["ts"]) for e in events]
        assert starts == sorted(starts), f"track {tid}: timestamps go back"
        open_ = []   # the slices holding the current one, outermost first
        for e in events:
            while open_ and ns(e["ts"]) >= ns(open_[-1]["ts"] + open_[-1]["dur"]):
                open_.pop()
            assert not open_ or inside(e, open_[-1]), f"{e['name']} straddles the end of {open_[-1]['name']}"
            open_.append(e)


def test_the_cpu_track_is_boot_then_forward_passes_holding_stages_holding_waits(sim64):
    build, report, trace = sim64
    cpu = slices(trace, track="CPU")
    boot, passes = cpu[0], [e for e in cpu if e["cat"] == "pass"]
    assert boot["name"] == "boot" and boot["ts"] == 0
    # one position at a time (--prefill-chunk 1): 5 prompt passes, then a pass per generated
    # token that is fed back (the last one is not)
    assert [p["name"] for p in passes] == ["prefill 0", "prefill 1", "prefill 2", "prefill 3", "prefill 4",
                                           "decode 5", "decode 6"]
    # the passes tile the run after the boot, up to the end of the run
    ends = [ns(boot["ts"] + boot["dur"])] + [ns(p["ts"] + p["dur"]) for p in passes]
    assert [ns(p["ts"]) for p in passes] == ends[:-1]
    assert ends[-1] == round(report["device"]["run_s"] * 1e9)
    assert ns(boot["dur"]) == round(report["device"]["boot_s"] * 1e9)
    stages, n_stages = slices(trace, "stage"), len(build.plan.stages)
    # every pass runs the stage table in order; only the last prompt pass and the decode
    # passes run the head (nobody reads the other prompt positions' logits)
    assert len(stages) == (N_PROMPT + TOKENS - 1) * n_stages - (N_PROMPT - 1)
    for p in passes:
        held = [s["args"]["stage"] for s in stages if inside(s, p)]
        runs_head = p["name"] in ("prefill 4", "decode 5", "decode 6")
        assert held == list(range(n_stages if runs_head else n_stages - 1)), p["name"]
        assert all(s["args"]["position"] == p["args"]["position"] for s in stages if inside(s, p))
    s = next(s for s in stages if s["args"]["kind"] == "attn_qkv" and s["args"]["layer"] == 1)
    assert s["name"] == "h1.attn_qkv" and s["args"]["flash_bytes"] > 0 and s["args"]["instructions"] > 0
    # each wait of the CPU lies inside the boot or a pass (most inside a stage)
    waits = slices(trace, "wait")
    assert waits and all(any(inside(w, c) for c in [boot, *passes]) for w in waits)
    assert {w["name"] for w in waits} == {"wait flash"}
    # the tokens chosen, on the CPU track at the moment they were chosen
    tokens = [e for e in trace["traceEvents"] if e["ph"] == "i"]
    assert [t["args"]["token"] for t in tokens] == report["tokens"]


def test_prefill_chunks_are_one_pass_each(dk):
    build, _report, trace = dk
    passes = slices(trace, "pass")
    # the plan's chunk holds the whole 5-token prompt: one pass, then one per fed-back token
    assert [p["name"] for p in passes] == ["prefill 0-4", "decode 5", "decode 6"]
    assert [p["args"]["positions"] for p in passes] == [5, 1, 1]
    assert len(slices(trace, "stage")) == len(passes) * len(build.plan.stages)


# ----------------------------------------------------------------------------
# the trace agrees with the run's own accounting


def test_transfer_bytes_sum_to_what_the_devices_counted(traced):
    _build, report, trace = traced
    assert sum(e["args"]["bytes"] for e in slices(trace, track="flash")) == report["flash_bytes_total"]
    assert sum(e["args"]["bytes"] for e in slices(trace, track="PSRAM")) == report["psram_bytes_total"]


def test_per_token_device_time_and_stalls_match_the_summary(traced):
    _build, report, trace = traced
    d = report["device"]
    decode = [p for p in slices(trace, "pass") if p["name"].startswith("decode")]
    assert decode
    mean = sum(ns(p["dur"]) for p in decode) / len(decode)
    assert mean == pytest.approx(d["s_per_token"] * 1e9, abs=2)
    waits = [w for w in slices(trace, "wait") if any(inside(w, p) for p in decode)]
    assert sum(ns(w["dur"]) for w in waits) / len(decode) == pytest.approx(d["stall_s_per_token"] * 1e9,
                                                                           abs=len(waits) + 1)


def test_each_stages_slices_add_up_to_its_time_and_flash_bytes_in_the_summary(traced):
    _build, report, trace = traced
    time, flash = defaultdict(int), defaultdict(int)
    for s in slices(trace, "stage"):
        time[s["args"]["stage"]] += ns(s["dur"])
        flash[s["args"]["stage"]] += s["args"]["flash_bytes"]
    for row in report["stages"]:
        assert time[row["index"]] == pytest.approx(row["device_s"] * 1e9, abs=2 * row["calls"]), row["name"]
        assert flash[row["index"]] == row["flash_bytes"], row["name"]


# ----------------------------------------------------------------------------
# the tracks of a board with PSRAM and a CRC unit that is a second DMA pass


def test_the_xip_runtimes_line_fills_are_flash_slices_the_cpu_waits_for(xip):
    _build, _report, trace = xip
    fills = [e for e in slices(trace, track="flash") if e["name"].startswith("XIP ")]
    assert fills and all(e["args"]["bytes"] % 32 == 0 for e in fills)   # whole 32-byte lines
    waits = [w for w in slices(trace, "wait") if w["name"] == "wait xip"]
    assert len(waits) == len(fills) and all(w["args"]["for"] == f["name"] for w, f in zip(waits, fills))


def test_a_board_without_psram_has_no_psram_track(sim64):
    _build, _report, trace = sim64
    assert set(track_names(trace).values()) == {"CPU", "flash"}


def test_the_psram_track_shows_tier_copies_at_boot_tier_reads_and_kv_rows(dk):
    build, _report, trace = dk
    assert set(track_names(trace).values()) == {"CPU", "flash", "PSRAM", "CRC unit"}
    boot = slices(trace, "boot")[0]
    psram = slices(trace, track="PSRAM")
    copies = [e for e in psram if e["name"].startswith("tier copy ")]
    tier = {t.name for t in build.plan.tensors if t.psram_offset is not None}
    assert copies and all(inside(e, boot) and e["args"]["command"] == "WRITE" for e in copies)
    assert {e["name"][len("tier copy "):] for e in copies} == tier
    # what the tier holds of each tensor (each full tile's tail and its check word) is copied once
    assert sum(e["args"]["bytes"] for e in copies) == sum(t.psram_span for t in build.plan.tensors
                                                          if t.psram_offset is not None)
    after = [e for e in psram if not inside(e, boot)]
    layers = build.plan.model.n_layer
    # per position and layer attention writes its key and value rows and reads them back
    assert {e["name"] for e in after if e["name"].startswith("KV")} == {
        f"KV {kv} h{layer} {op}" for kv in ("keys", "values") for layer in range(layers) for op in ("read", "write")}
    assert all(e["args"]["issued_in"].endswith("attn_core") for e in after if e["name"].startswith("KV"))
    assert {e["name"] for e in after if not e["name"].startswith("KV")} == {f"{name} read" for name in tier}
    assert "wait psram" in {w["name"] for w in slices(trace, "wait")}


def test_the_boot_verification_runs_through_the_crc_unit(dk):
    _build, _report, trace = dk
    boot = slices(trace, "boot")[0]
    crc = slices(trace, track="CRC unit")
    # plan: CRC-checked once at boot (the board's CRC unit is a second DMA pass); after boot
    # only the embedding's rows, which every token reads anew, go through it
    rows = {"CRC wte.weight", "CRC wpe.weight"}   # the embed stage's two rows (their row CRCs)
    assert crc and all(inside(e, boot) or (e["name"] in rows and e["args"]["bytes"] < 1024) for e in crc)
    assert boot["args"]["flash_bytes"] > 0 and boot["args"]["psram_write_bytes"] > 0


# ----------------------------------------------------------------------------
# the command line


def test_the_summary_names_the_trace_file(traced):
    _build, report, _trace = traced
    assert report["trace"].endswith("trace.json")


def test_the_text_summary_says_where_the_trace_is(tiny_build, tmp_path):
    out = mcugpt("run", "--build", tiny_build.out_dir, "--prompt", "Hi", "--tokens", "1",
                 "--trace", tmp_path / "t.json", check=True).stdout
    assert f"trace        {tmp_path / 't.json'}" in out and (tmp_path / "t.json").is_file()


@pytest.mark.parametrize("where, says", [("folder", "is a folder"), ("missing/t.json", "no folder")])
def test_a_bad_trace_path_is_one_line_before_the_run(tiny_build, tmp_path, where, says):
    (tmp_path / "folder").mkdir()
    proc = mcugpt("run", "--build", tiny_build.out_dir, "--prompt", "Hi", "--tokens", "2",
                  "--trace", tmp_path / where)
    assert proc.returncode == 1 and proc.stdout == ""   # refused before the board ran (no text)
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"mcugpt: error: --trace {tmp_path / where}")
    assert says in proc.stderr


def test_a_run_that_fails_leaves_its_timeline_up_to_the_fault(tiny_build, tmp_path):
    damaged = tmp_path / "build"
    shutil.copytree(tiny_build.out_dir, damaged)
    blob = next(t for t in read_image(damaged / "flash.img", verify_weights=False).tensors
                if t["name"] == "h.1.mlp.c_fc.weight")
    with open(damaged / "flash.img", "r+b") as f:   # one bit of a streamed matrix
        f.seek(blob["offset"] + 123)
        byte = f.read(1)[0]
        f.seek(blob["offset"] + 123)
        f.write(bytes([byte ^ 1]))
    path = tmp_path / "fault.json"
    proc = mcugpt("run", "--build", damaged, "--prompt", "Hi", "--tokens", "2", "--trace", path)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "BAD_TENSOR_CRC" in proc.stderr and proc.stderr.rstrip().endswith(f"(timeline up to it: {path})")
    trace = json.loads(path.read_text())
    test_slices_on_a_track_nest_or_follow_each_other_in_time_order((None, None, trace))
    # the firmware checks the blob's CRC at the end of the stage that streams it
    assert slices(trace, "stage")[-1]["name"] == "h1.mlp"


def test_a_trace_draws_as_a_picture(sim64, tmp_path):
    import subprocess
    _build, report, _trace = sim64
    png = tmp_path / "timeline.png"
    subprocess.run([sys.executable, "-m", "mcugpt.timeline", report["trace"], png], check=True, cwd=REPO,
                   capture_output=True, timeout=120)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_runs_decode_passes_draw_against_their_position(sim64, tmp_path):
    """`python -m mcugpt.timeline` takes a `--json` report too: its decode passes against their
    position. Anything else is one line naming the file."""
    import subprocess
    _build, report, _trace = sim64
    assert [s["position"] for s in report["decode_by_position"]] == list(
        range(len(report["prompt_tokens"]), len(report["prompt_tokens"]) + len(report["tokens"]) - 1))
    run_json, png = tmp_path / "run.json", tmp_path / "positions.png"
    run_json.write_text(json.dumps(report))
    subprocess.run([sys.executable, "-m", "mcugpt.timeline", run_json, png], check=True, cwd=REPO,
                   capture_output=True, timeout=120)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = tmp_path / "other.json"
    other.write_text("{}")
    proc = subprocess.run([sys.executable, "-m", "mcugpt.timeline", other, png], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and str(other) in proc.stderr
