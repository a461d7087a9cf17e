"""The command line, as a user meets it: help that explains, tables, JSON, one-line errors."""

import json

import pytest
from conftest import mcugpt


@pytest.mark.parametrize("command", [[], ["compile"], ["reference"], ["run"], ["bench"], ["inspect"]])
def test_help_explains_every_option(command):
    out = mcugpt(*command, "--help", check=True).stdout
    assert "usage: mcugpt" in out
    if command == ["compile"]:
        for opt in ("--model", "--weights", "--weights-seed", "--ram", "--ctx", "--out", "--json"):
            assert opt in out


def test_seed_is_the_sampling_seed_in_every_command(tok):
    """--seed seeds sampling in `reference` as in `run`; the synthetic weights have their own
    --weights-seed. So a greedy reference ignores --seed, and --weights-seed changes the model."""
    for command in ("reference", "run"):
        help_text = " ".join(mcugpt(command, "--help", check=True).stdout.split())
        assert "--seed N seed of the sampling PRNG" in help_text, command
    args = ("reference", "--model", "tiny", "--prompt", "Hello", "--tokens", "4", "--json")
    base = json.loads(mcugpt(*args, check=True).stdout)["tokens"]
    assert json.loads(mcugpt(*args, "--seed", "7", check=True).stdout)["tokens"] == base
    assert json.loads(mcugpt(*args, "--weights-seed", "7", check=True).stdout)["tokens"] != base


def test_compile_writes_onnx_plan_image_and_headers(tmp_path):
    out = mcugpt("compile", "--model", "tiny", "--ram", "2MiB", "--out", tmp_path, "--quiet", check=True).stdout
    for f in ("model.onnx", "plan.json", "flash.img", "include/flash_layout.h", "include/model_plan.h"):
        assert (tmp_path / f).is_file(), f
    assert "h1.mlp" in out and "peak RAM" in out
    # what a token reads: the weights and the image's tables the firmware reads with them
    assert " of weights + " in out and "of the image's stage and tensor entries and token offsets" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["peak_ram_bytes"] <= 2 << 20 and len(plan["stages"]) == 14


def test_compile_json_is_the_plan(tmp_path):
    out = mcugpt("compile", "--model", "tiny", "--out", tmp_path, "--json", check=True).stdout
    assert json.loads(out)["totals"]["block_stages"] == 12


def test_reference_json(tiny, tok):
    out = mcugpt("reference", "--model", "tiny", "--prompt", "Hello, world!", "--tokens", "5", "--json",
                 check=True).stdout
    obj = json.loads(out)
    assert obj["prompt_tokens"] == [15496, 11, 995, 0]
    assert len(obj["tokens"]) == 5 and obj["text"] == tok.decode(obj["tokens"])


def test_reference_sampling_is_seeded():
    args = ("reference", "--model", "tiny", "--prompt", "Once upon", "--tokens", "8", "--json",
            "--temperature", "0.9", "--top-k", "20")
    a = json.loads(mcugpt(*args, "--seed", "1", check=True).stdout)["tokens"]
    b = json.loads(mcugpt(*args, "--seed", "1", check=True).stdout)["tokens"]
    c = json.loads(mcugpt(*args, "--seed", "2", check=True).stdout)["tokens"]
    assert a == b != c


def test_inspect_verifies_every_crc(tiny_build):
    out = mcugpt("inspect", tiny_build.out_dir / "flash.img", check=True).stdout
    assert "CRC32 OK" in out and "h.1.mlp.c_proj.weight" in out
    obj = json.loads(mcugpt("inspect", tiny_build.out_dir / "flash.img", "--json", check=True).stdout)
    assert obj["header"]["stage_count"] == 14 and obj["verified"]


@pytest.mark.parametrize("args, message", [
    (["reference", "--model", "gpt5", "--prompt", "x"], "unknown model preset 'gpt5'"),
    (["compile", "--model", "gpt5", "--out", "{tmp}"], "unknown model preset 'gpt5'"),
    (["compile", "--model", "tiny", "--ram", "32KiB", "--out", "{tmp}"],
     "RAM budget of 32,768 bytes is too small for tiny: the smallest budget that works (context of 1 token) is"),
    (["compile", "--model", "tiny", "--ctx", "4096", "--out", "{tmp}"], "--ctx 4096 is outside 1..128"),
    (["reference", "--model", "tiny", "--prompt", "word " * 129 + "word", "--tokens", "4"],
     "prompt (130 tokens) + 4 new tokens = 134 exceeds the context of 128 tokens"),
    (["reference", "--model", "tiny", "--prompt", "", "--tokens", "4"], "the prompt is empty"),
    (["reference", "--model", "tiny", "--prompt", "x", "--top-k", "1000", "--temperature", "1"],
     "--top-k 1000: must be between 1 and 128"),
    (["inspect", "{tmp}/missing.img"], "no such flash image"),
    (["compile", "--weights", "{tmp}/nowhere", "--out", "{tmp}"], "no such folder"),
])
def test_bad_input_gives_one_line_error(args, message, tmp_path):
    proc = mcugpt(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert proc.returncode == 1
    assert proc.stderr.startswith("mcugpt: error: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_corrupt_image_gives_one_line_error(tiny_build, tmp_path):
    img = tmp_path / "flash.img"
    data = bytearray((tiny_build.out_dir / "flash.img").read_bytes())
    data[-100_000] ^= 0xFF
    img.write_bytes(bytes(data))
    proc = mcugpt("inspect", img)
    assert proc.returncode == 1 and "CRC32 mismatch" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_bad_size_argument_is_explained():
    proc = mcugpt("compile", "--model", "tiny", "--ram", "lots", "--out", "x")
    assert proc.returncode == 2 and "'lots' is not a size" in proc.stderr
