"""The firmware's runtime (runtime_c/runtime.c), built as a host program with hal_host.c, run
on real flash images: the same tokens and logits as the numpy reference, and every check at
boot ends the run with the right EXIT_* code and numbers.

The host build runs the board's C unchanged except for the HAL (flash = the image file, CRC
in software, mailbox from argv), so this tests the stage loop, the streaming, the CRCs and
the sampler without the emulator, in well under a second per run.
"""

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from compiler.config import load_preset
from compiler.firmware import build
from compiler.pipeline import compile_model
from compiler.reference import Reference, generate
from compiler.sampler import Sampling
from compiler.tokenizer import encode, token_bytes_table
from compiler.weights import synthetic_weights
from target import memory_map
from target.flash_layout import FORMAT_VERSION, HEADER, STAGE_ENTRY, read_image

EXIT = {name: code for name, (code, _doc) in memory_map.EXIT_CODES.items()}
PROMPT = "The staged method runs a language model on a microcontroller by"


@dataclass
class Run:
    code: int
    args: tuple[int, int, int]
    tokens: list[int]
    text: bytes
    logits: np.ndarray | None = None   # (tokens, vocab) when dumped
    stderr: str = field(default="", repr=False)


def run_host(binary: Path, image: Path, prompt: list[int], n_new: int, sampling: Sampling | None = None,
             dump_dir: Path | None = None, vocab: int = 50257, extra=()) -> Run:
    cmd = [str(binary), str(image), "--prompt", ",".join(map(str, prompt)), "--n-new", str(n_new), *extra]
    if sampling is not None:
        cmd += ["--temperature", repr(sampling.temperature), "--top-k", str(sampling.top_k),
                "--seed", str(sampling.seed)]
    if dump_dir is not None:
        cmd += ["--dump-logits", str(dump_dir / "logits.f32")]
    proc = subprocess.run(cmd, capture_output=True, timeout=300)
    err = proc.stderr.decode(errors="replace")
    m = re.search(r"^exit (\d+) arg0=(\d+) arg1=(\d+) arg2=(\d+)$", err, re.MULTILINE)
    assert m, f"no exit line from {' '.join(cmd)}:\n{err[-2000:]}"
    code, *args = map(int, m.groups())
    assert proc.returncode == code, err[-2000:]
    tokens = [int(t) for t in re.findall(r"^token (\d+)$", err, re.MULTILINE)]
    logits = None
    if dump_dir is not None:
        logits = np.fromfile(dump_dir / "logits.f32", dtype="<f4").reshape(-1, vocab)
    return Run(code, tuple(args), tokens, proc.stdout, logits, err)


@pytest.fixture(scope="module")
def host(tiny_build):
    """(binary, image, compile result) for the tiny model."""
    binary = build(tiny_build.out_dir, tiny_build.plan, cc="host")
    return binary, tiny_build.out_dir / "flash.img", tiny_build


@pytest.fixture(scope="module")
def tiny_reference(tiny):
    cfg, w = tiny
    return Reference(cfg, w)


@pytest.fixture(scope="module")
def prompt(tok):
    return encode(tok, PROMPT)


# ----------------------------------------------------------------------------
# the same tokens and logits as compiler/reference.py


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=0.9, top_k=40, seed=7)],
                         ids=["greedy", "top40-t0.9-seed7"])
def test_tokens_and_logits_match_the_reference(sampling, host, tiny_reference, prompt, tok, tmp_path):
    binary, image, compiled = host
    n_new = 16
    ref = generate(tiny_reference, prompt, n_new, sampling, n_ctx=compiled.plan.ctx, keep_logits=True)
    run = run_host(binary, image, prompt, n_new, None if sampling.greedy else sampling, dump_dir=tmp_path)
    assert run.code == EXIT["OK"] and run.args[0] == n_new, run.stderr
    assert run.tokens == ref.tokens
    assert len(set(ref.tokens)) > 1   # the comparison exercises more than one token
    # the text on the UART is the tokens' bytes, from the image's token table
    table = token_bytes_table(tok, compiled.cfg.vocab_size)
    assert run.text == b"".join(table[t] for t in ref.tokens)
    # one logits vector per generated token, as the reference's keep_logits
    np.testing.assert_allclose(run.logits, np.array(ref.logits), atol=1e-4, rtol=1e-4)


def test_distilgpt2_greedy_matches_the_reference(tmp_path_factory, prompt):
    out = tmp_path_factory.mktemp("distilgpt2")
    compiled = compile_model("distilgpt2", out, quiet=True)
    binary = build(out, compiled.plan, cc="host")
    run = run_host(binary, out / "flash.img", prompt[:5], 3)
    (out / "flash.img").unlink()   # 313 MiB
    cfg = load_preset("distilgpt2")
    ref = generate(Reference(cfg, synthetic_weights(cfg, 0)), prompt[:5], 3, Sampling(),
                   n_ctx=compiled.plan.ctx)
    assert run.code == EXIT["OK"] and run.tokens == ref.tokens


def test_a_small_budget_streams_many_tiles_with_a_short_last_one(tmp_path, tiny_reference, prompt):
    # 60 KiB: tiles of 5 rows, so 192 qkv rows and 50,257 vocabulary rows end in a short tile
    compiled = compile_model("tiny", tmp_path, ram=60 << 10, quiet=True)
    matrices = [t for t in compiled.plan.tensors if t.access == "matrix"]
    assert any(t.rows % t.tile_rows for t in matrices)
    assert max(t.tiles for t in matrices) > 10_000
    binary = build(tmp_path, compiled.plan, cc="host")
    sampling = Sampling(temperature=0.9, top_k=40, seed=7)
    n_ctx = compiled.plan.ctx
    p = prompt[: n_ctx - 6]
    run = run_host(binary, tmp_path / "flash.img", p, 6, sampling, dump_dir=tmp_path)
    ref = generate(tiny_reference, p, 6, sampling, n_ctx=n_ctx, keep_logits=True)
    assert run.code == EXIT["OK"] and run.tokens == ref.tokens
    np.testing.assert_allclose(run.logits, np.array(ref.logits), atol=1e-4, rtol=1e-4)


def test_prompt_only_generates_nothing(host, prompt):
    binary, image, _ = host
    run = run_host(binary, image, prompt, 0)
    assert run.code == EXIT["OK"] and run.tokens == [] and run.text == b""


def test_under_address_and_undefined_behaviour_sanitizers(host, tiny_build, tiny_reference, prompt, tmp_path):
    shutil.copytree(tiny_build.out_dir / "include", tmp_path / "include")
    try:
        binary = build(tmp_path, tiny_build.plan, cc="host", sanitize=True)
    except Exception as e:   # noqa: BLE001 - a toolchain without the sanitizer runtimes
        if "sanitize" in str(e).lower() or "asan" in str(e).lower():
            pytest.skip(f"sanitizers unavailable: {e}")
        raise
    sampling = Sampling(temperature=1.0, top_k=128, seed=3)
    run = run_host(binary, host[1], prompt[:4], 4, sampling)
    ref = generate(tiny_reference, prompt[:4], 4, sampling)
    assert run.code == EXIT["OK"] and run.tokens == ref.tokens, run.stderr[-3000:]


# ----------------------------------------------------------------------------
# boot checks: a damaged or foreign image, a bad request


def tensor_index(image: Path, name: str) -> int:
    img = read_image(image, verify_weights=False)
    return next(i for i, t in enumerate(img.tensors) if t["name"] == name)


@pytest.mark.parametrize("name", ["h.1.attn.c_attn.weight", "h.0.mlp.c_proj.bias", "ln_f.weight",
                                  "wte.weight"])
def test_a_corrupted_weight_byte_names_its_tensor(name, host, prompt, tmp_path):
    binary, image, _ = host
    bad = tmp_path / "flash.img"
    shutil.copy(image, bad)
    img = read_image(image, verify_weights=False)
    index = tensor_index(image, name)
    t = img.tensors[index]
    with open(bad, "r+b") as f:   # flip one bit in the middle of the blob
        f.seek(t["offset"] + t["size"] // 2)
        b = f.read(1)[0]
        f.seek(-1, 1)
        f.write(bytes([b ^ 0x10]))
    run = run_host(binary, bad, prompt[:3], 2)
    assert run.code == EXIT["BAD_TENSOR_CRC"], run.stderr
    assert run.args[0] == index and run.args[1] == t["crc"] and run.args[2] != t["crc"]
    assert run.tokens == []   # caught before any token was chosen from its results


def test_an_image_for_another_plan_is_refused(host, prompt, tmp_path):
    binary, _, compiled = host
    other = compile_model("tiny", tmp_path, ram=32 << 20, quiet=True)
    assert other.plan.plan_id != compiled.plan.plan_id
    run = run_host(binary, tmp_path / "flash.img", prompt[:3], 2)
    assert run.code == EXIT["PLAN_MISMATCH"]
    assert run.args == (other.plan.plan_id, compiled.plan.plan_id, HEADER.offset_of("plan_id"))


def _patch(path: Path, offset: int, data: bytes):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize("where, code", [
    ("magic", "BAD_MAGIC"), ("version", "BAD_VERSION"), ("n_ctx_model", "BAD_HEADER_CRC"),
    ("tables", "BAD_TABLES_CRC"), ("stage kind", "BAD_TABLES_CRC"), ("truncated", "FLASH_ERROR"),
])
def test_a_damaged_image_is_refused(where, code, host, prompt, tmp_path):
    binary, image, compiled = host
    bad = tmp_path / "flash.img"
    shutil.copy(image, bad)
    h = compiled.image_header
    if where in ("magic", "version", "n_ctx_model"):
        _patch(bad, HEADER.offset_of(where), (0x77).to_bytes(4, "little"))
    elif where == "tables":
        _patch(bad, h["tables_offset"] + h["tables_size"] - 1, b"\x5a")
    elif where == "stage kind":   # stage 3 claims an unknown kind; the tables CRC notices first
        _patch(bad, h["tables_offset"] + 3 * STAGE_ENTRY.size, (99).to_bytes(4, "little"))
    else:
        with open(bad, "r+b") as f:
            f.truncate(h["weights_offset"] + 4096)
    run = run_host(binary, bad, prompt[:3], 2)
    assert run.code == EXIT[code], run.stderr
    if code == "BAD_MAGIC":
        assert run.args[0] == 0x77
    if code == "BAD_VERSION":
        assert run.args[:2] == (0x77, FORMAT_VERSION)
    if code == "BAD_TABLES_CRC":
        assert run.args[0] == h["tables_crc"] and run.args[1] != h["tables_crc"]


@pytest.mark.parametrize("args, code, detail", [
    (["--top-k", "0"], "BAD_MAILBOX", (memory_map.MAILBOX["TOP_K"], 0)),
    (["--top-k", "129"], "BAD_MAILBOX", (memory_map.MAILBOX["TOP_K"], 129)),
    (["--temperature", "-1"], "BAD_MAILBOX", (memory_map.MAILBOX["TEMPERATURE"], 0xBF800000)),
    (["--prompt", ""], "BAD_MAILBOX", (memory_map.MAILBOX["N_PROMPT"], 0)),
    (["--prompt", "1,2,50257"], "BAD_MAILBOX", (memory_map.MAILBOX["PROMPT"] + 8, 50257)),
    (["--n-new", "124"], "CONTEXT_FULL", (5 + 124, 128)),
    (["--n-new", "4294967295"], "CONTEXT_FULL", (0xFFFFFFFF, 128)),
])
def test_a_bad_request_is_refused(args, code, detail, host):
    binary, image, _ = host
    # later options win: these override the prompt of 5 tokens and the 2 new tokens
    run = run_host(binary, image, [464, 1, 2, 3, 4], 2, extra=args)
    assert run.code == EXIT[code] and run.args[:2] == detail, run.stderr


def test_the_context_is_used_to_the_last_position(host, tiny_reference):
    binary, image, compiled = host
    ctx = compiled.plan.ctx
    prompt = [464] * (ctx - 3)
    run = run_host(binary, image, prompt, 3)
    assert run.code == EXIT["OK"]
    assert run.tokens == generate(tiny_reference, prompt, 3, Sampling(), n_ctx=ctx).tokens
