"""`mcugpt bench` writes its figures (JSON, Markdown, plots) from real runs."""

import json

from conftest import mcugpt
from PIL import Image


def test_bench_on_tiny_writes_json_markdown_and_plots(tmp_path):
    out = tmp_path / "bench"
    proc = mcugpt("bench", "--model", "tiny", "--tokens", "1", "--out", out, check=True)
    result = json.loads((out / "bench.json").read_text())
    configs = {(r["board"], r["dtype"], r["flash"]) for r in result["configs"]}
    assert ("stm32h7s78-dk", "int8", "mx66uw1g45g") in configs and ("sim64", "fp32", "mx66uw1g45g") in configs
    assert ("stm32h735g-dk", "int8", "mx25lm51245g") in configs
    assert all(r["tokens_equal_reference"] for r in result["configs"])
    assert all(r["peak_sram_measured"] <= 456 << 10 for r in result["configs"] if r["board"] != "sim64")
    small = {r["dtype"]: r for r in result["configs"] if r["board"] == "stm32h7s78-dk" and r["tcm"] == "auto"}
    streamed = lambda r: r["flash_bytes_per_token"] + r["psram_bytes_per_token"]   # (weights in the PSRAM tier too)
    assert streamed(small["int8"]) < 0.3 * streamed(small["fp32"])
    paper = result["paper"]["dtypes"]["fp32"]
    assert paper["classic_ram"] > paper["staged_ram_whole_stage"] > paper["staged_ram_streamed_min"]
    assert all(v > 0 for v in paper["staged_grouped_tokens_per_s"].values())
    front = [p for p in result["frontier"] if p["dtype"] == "int8" and "error" not in p]
    assert front[-1]["resident_bytes"] > front[0]["resident_bytes"]
    assert len(result["frontier"]) == 16
    q = result["int8_vs_fp32"]
    assert 0 < q["logit_rms_error_relative"] < 0.1 and q["top1_agreement"] > 0.8
    for f in ("bench.md", "time_split.png", "frontier.png"):
        assert (out / f).stat().st_size > 1000, f
    assert "The paper's case" in proc.stdout
    # every plot is titled with the model it measured
    for f in ("time_split.png", "frontier.png"):
        assert Image.open(out / f).text["Title"].startswith("tiny"), f
    # on a pipe, a progress line per step, from the first
    assert proc.stderr.startswith("boards x dtypes 1/8: sim64 fp32 auto\n")
    assert "frontier int8 8/8" in proc.stderr and "counter overhead 3/3" in proc.stderr
    # no build is left behind (--keep-builds keeps them)
    assert not (out / "builds").exists() and result["info"]["builds_kept"] is False
