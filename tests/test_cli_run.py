"""`mcugpt run`, as a user meets it: streamed text, a summary, JSON, one-line errors."""

import json
import shutil
import struct

import pytest
from conftest import mcugpt

from target.flash_layout import FORMAT_VERSION, read_image


def run_json(build_dir, *args):
    return json.loads(mcugpt("run", "--build", build_dir, "--json", *args, check=True).stdout)


def test_run_streams_text_then_a_summary(tiny_build):
    out = mcugpt("run", "--build", tiny_build.out_dir, "--prompt", "Hello, my name is", "--tokens", "6",
                 "--check", check=True).stdout
    assert out.startswith("Hello, my name is")
    for line in ("emulator", "device time", "flash read", "peak RAM", "reference    tokens equal; logits bit-identical",
                 "slowest stage kinds"):
        assert line in out, line


def test_run_json_has_tokens_text_and_figures(tiny_build, tok):
    r = run_json(tiny_build.out_dir, "--prompt", "Hello, my name is", "--tokens", "5", "--check")
    assert r["prompt_tokens"] == tok.encode("Hello, my name is")
    assert len(r["tokens"]) == 5 and r["text"] == tok.decode(r["tokens"])
    assert r["check"]["tokens_equal"] and r["check"]["reference_tokens"] == r["tokens"]
    assert r["check"]["logits_identical"] and r["check"]["logits_max_abs_error"] == 0.0
    d = r["device"]
    # I/O and compute overlap where the firmware double-buffers (tests/test_double_buffer.py
    # checks the timeline against a replay of the DMA log): overlapping only hides time
    assert max(d["io_s_per_token"], d["compute_s_per_token"]) <= d["s_per_token"] * (1 + 1e-9)
    assert d["s_per_token"] <= (d["io_s_per_token"] + d["compute_s_per_token"]) * (1 + 1e-9)
    assert r["flash_bytes_per_token"] >= tiny_build.plan.totals.flash_bytes_per_token
    ram = r["peak_ram"]
    assert 0 < ram["measured"] <= ram["plan"] and ram["stack_used"] > 0
    assert {k["kind"] for k in r["stage_kinds"]} == {"embed", "ln_1", "attn_qkv", "attn_core", "attn_proj",
                                                     "ln_2", "mlp", "head"}


def test_sampling_options_reach_the_board(tiny_build):
    args = ("--prompt", "Once upon a time", "--tokens", "8", "--temperature", "0.9", "--top-k", "30")
    a = run_json(tiny_build.out_dir, *args, "--seed", "4", "--check")
    b = run_json(tiny_build.out_dir, *args, "--seed", "5", "--check")
    assert a["check"]["tokens_equal"] and b["check"]["tokens_equal"] and a["tokens"] != b["tokens"]


def test_the_summary_names_the_boards_parts_and_its_assumptions(tiny_build):
    r = run_json(tiny_build.out_dir, "--prompt", "Hi", "--tokens", "2")
    board = r["board_profile"]
    assert r["flash"] == "mx66uw1g45g" and board["flash"] == {
        "part": "mx66uw1g45g", "chips": 4, "bytes": 512 << 20, "controller": "octal SPI, four chip selects",
        "clock_hz": 200_000_000}
    assert board["buyable"] is False and any("not a real board" in a for a in board["assumptions"])


@pytest.fixture
def damaged(tiny_build, tmp_path):
    """A copy of the tiny build whose flash image a test may damage."""
    dst = tmp_path / "build"
    shutil.copytree(tiny_build.out_dir, dst)
    return dst


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def test_corrupt_weight_blob_is_caught_by_the_firmware(damaged):
    img = read_image(damaged / "flash.img", verify_weights=False)
    t = next(t for t in img.tensors if t["name"] == "h.1.mlp.c_fc.weight")
    _flip(damaged / "flash.img", t["offset"] + 123)
    proc = mcugpt("run", "--build", damaged, "--prompt", "Hi", "--tokens", "2")
    assert proc.returncode == 1
    assert "BAD_TENSOR_CRC" in proc.stderr and "'h.1.mlp.c_fc.weight'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("damage, message", [
    ("truncate", "truncated:"),
    ("version", f"format version 7, this mcugpt reads version {FORMAT_VERSION}"),
])
def test_truncated_or_foreign_image_is_refused(damage, message, damaged):
    path = damaged / "flash.img"
    if damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size - 10_000)
    else:
        import zlib

        from target.flash_layout import HEADER, HEADER_CRC_SPAN
        raw = bytearray(path.read_bytes()[:HEADER.size])
        struct.pack_into("<I", raw, 4, 7)
        struct.pack_into("<I", raw, HEADER_CRC_SPAN, zlib.crc32(raw[:HEADER_CRC_SPAN]))
        with open(path, "r+b") as f:
            f.write(raw)
    proc = mcugpt("run", "--build", damaged, "--prompt", "Hi", "--tokens", "2")
    assert proc.returncode == 1 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--ram", "1MiB"], "--ram 1,048,576 bytes: this build is linked for its RAM budget of 67,108,864 bytes"),
    (["--prompt", "word " * 127 + "word", "--tokens", "4"], "prompt (128 tokens) + 4 new tokens = 132 exceeds the context of 128"),
    (["--prompt", ""], "the prompt is empty"),
    (["--timeout", "0.05"], "board fault: firmware did not finish within the 0.05 s timeout; PC 0x"),
    (["--top-k", "500", "--temperature", "1"], "--top-k 500: must be between 1 and 128"),
])
def test_bad_run_input_gives_one_line_error(args, message, tiny_build):
    base = ["run", "--build", tiny_build.out_dir, "--prompt", "Hi", "--tokens", "3"]
    proc = mcugpt(*base, *args)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("mcugpt: error: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_run_needs_a_build_folder(tmp_path):
    proc = mcugpt("run", "--build", tmp_path, "--prompt", "Hi")
    assert proc.returncode == 1 and "not a build folder" in proc.stderr


def test_every_rate_says_whether_it_is_prompt_decode_or_overall(tiny_build):
    """On this machine and on the device: the prompt (prefill, boot excluded), one decoded
    token, and everything (boot and prompt included), each labelled, none mixed."""
    r = run_json(tiny_build.out_dir, "--prompt", "Hello, my name is", "--tokens", "4")
    emu, dev, n = r["rates"]["emulator"], r["rates"]["device"], len(r["tokens"])
    # the board's clock at exit covers boot, the prompt and the n - 1 decode steps (the last
    # token is not fed back): the parts, measured separately, add up to it
    assert dev["boot_s"] + dev["prefill_s"] + (n - 1) * dev["decode_s_per_token"] == pytest.approx(
        dev["overall_s"], rel=0.02)
    assert dev["overall_tokens_per_s"] < dev["decode_tokens_per_s"] and r["decode_steps"] == n - 1
    # each decode pass, in order, and its mean is the decode time
    steps = r["decode_by_position"]
    assert [s["position"] for s in steps] == list(range(len(r["prompt_tokens"]), len(r["prompt_tokens"]) + n - 1))
    assert sum(s["device_ms"] for s in steps) / len(steps) == pytest.approx(1e3 * dev["decode_s_per_token"])
    assert all(s["device_ms"] >= s["compute_ms"] * 0.999 for s in steps)   # I/O can hide under compute, not compute
    # the keys that were there keep their meaning
    assert (r["emulated_tokens_per_s"], r["decode_wall_s_per_token"], r["device"]["tokens_per_s"]) == (
        emu["overall_tokens_per_s"], emu["decode_s_per_token"], dev["decode_tokens_per_s"])

    out = mcugpt("run", "--build", tiny_build.out_dir, "--prompt", "Hello, my name is", "--tokens", "4",
                 check=True).stdout
    for line in (line for line in out.splitlines() if line.startswith(("emulator     ", "device       "))):
        assert "prompt (prefill) 5 positions in" in line and " per token = " in line, line
        assert "overall 4 tokens in" in line and "tokens/s (boot" in line, line
    one = mcugpt("run", "--build", tiny_build.out_dir, "--prompt", "Hi", "--tokens", "1", check=True).stdout
    assert "1 generated after a 1-token prompt (one token: no decode step" in one
