"""The specification of mcugpt: the firmware on the emulated board produces exactly the numpy
reference's tokens, greedy and sampled, and its logits step by step, bit for bit.

And the check has teeth: a firmware or image with a classic bug (a transposed matrix, a
skipped residual, a wrong softmax scale) fails it."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from compiler.codegen import write_headers
from compiler.firmware import RUNTIME_C, build
from compiler.flash_image import write_image
from compiler.onnx_export import initializer_array
from compiler.pipeline import compile_model
from compiler.plan import Plan
from compiler.reference import Reference, generate
from compiler.sampler import Sampling
from compiler.tokenizer import token_bytes_table
from emulator.board import Board

PROMPTS = ["Hello, my name is", "The quick brown fox jumps over", "In 1969, the first"]


def board_generate(build_dir, prompt_tokens, n_new, sampling, elf=None, image=None):
    """On the board the build was planned for (its SRAM, flash parts, PSRAM, clocks)."""
    profile = Plan.load(build_dir / "plan.json").profile
    with Board.for_profile(elf or build_dir / "firmware.elf", image or build_dir / "flash.img", profile) as board:
        return board.run(prompt_tokens, n_new, temperature=sampling.temperature, top_k=sampling.top_k,
                         seed=sampling.seed, dump_logits=True)


def assert_matches_reference(result, ref):
    assert result.tokens == ref.tokens
    assert len(result.logits) == len(ref.logits)
    for step, (got, want) in enumerate(zip(result.logits, ref.logits)):
        np.testing.assert_array_equal(got, want, err_msg=f"logits of step {step}")


def matches_reference(result, ref) -> bool:
    try:
        assert_matches_reference(result, ref)
        return True
    except AssertionError:
        return False


@pytest.fixture(scope="module")
def distil_build(tmp_path_factory, distil):
    return compile_model("distilgpt2", tmp_path_factory.mktemp("distil"), quiet=True)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_tiny_greedy_tokens_and_logits_equal_the_reference(prompt, tiny, tiny_build, tok):
    cfg, w = tiny
    prompt_tokens = tok.encode(prompt)
    ref = generate(Reference(cfg, w), prompt_tokens, 10, Sampling(), keep_logits=True)
    assert_matches_reference(board_generate(tiny_build.out_dir, prompt_tokens, 10, Sampling()), ref)


@pytest.mark.parametrize("seed", [1, 7, 2026])
def test_tiny_seeded_sampling_equals_the_reference(seed, tiny, tiny_build, tok):
    cfg, w = tiny
    sampling = Sampling(temperature=0.9, top_k=40, seed=seed)
    prompt_tokens = tok.encode(PROMPTS[1])
    ref = generate(Reference(cfg, w), prompt_tokens, 12, sampling, keep_logits=True)
    result = board_generate(tiny_build.out_dir, prompt_tokens, 12, sampling)
    assert_matches_reference(result, ref)
    assert result.text.encode() == b"".join(token_bytes_table(tok, 50257)[t] for t in ref.tokens)


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=0.8, top_k=20, seed=3)],
                         ids=["greedy", "sampled"])
def test_distilgpt2_equals_the_reference(sampling, distil, distil_build, tok):
    cfg, w = distil
    prompt_tokens = tok.encode(PROMPTS[2])
    ref = generate(Reference(cfg, w), prompt_tokens, 4, sampling, keep_logits=True)
    assert_matches_reference(board_generate(distil_build.out_dir, prompt_tokens, 4, sampling), ref)


def test_arm_none_eabi_gcc_firmware_equals_the_reference(tiny, tiny_build, tok, tmp_path):
    if shutil.which("arm-none-eabi-gcc") is None:
        if __import__("os").environ.get("CI"):
            pytest.fail("CI must build with arm-none-eabi-gcc too (make test installs it as root)")
        pytest.skip("arm-none-eabi-gcc is not installed")
    out = _copy_build(tiny_build.out_dir, tmp_path)
    elf = build(out, tiny_build.plan, cc="arm-none-eabi-gcc")
    cfg, w = tiny
    prompt_tokens = tok.encode(PROMPTS[0])
    for sampling in (Sampling(), Sampling(0.9, 40, 5)):
        ref = generate(Reference(cfg, w), prompt_tokens, 8, sampling, keep_logits=True)
        assert_matches_reference(board_generate(out, prompt_tokens, 8, sampling, elf=elf), ref)


def test_a_small_ram_budget_gives_the_same_tokens(tiny, tok, tmp_path):
    """With 96 KiB the weights stream in many small tiles and the context shrinks; the
    board maps exactly that much SRAM, so the firmware provably fits it."""
    cfg, w = tiny
    small = compile_model("tiny", tmp_path, ram=96 << 10, quiet=True)
    assert small.plan.to_dict()["tile_bytes"] < 64 << 10
    prompt_tokens = tok.encode(PROMPTS[0])
    ref = generate(Reference(cfg, w), prompt_tokens, 6, Sampling(), keep_logits=True,
                   n_ctx=small.plan.ctx)
    with Board(tmp_path / "firmware.elf", tmp_path / "flash.img", ram_bytes=96 << 10) as board:
        result = board.run(prompt_tokens, 6, dump_logits=True)
    assert_matches_reference(result, ref)
    assert result.peak_ram.peak_bytes <= 96 << 10


# -- the check has teeth ---------------------------------------------------------


def _copy_build(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / "include", dst / "include", dirs_exist_ok=True)
    for f in ("plan.json", "build.json"):
        shutil.copy(src / f, dst / f)
    (dst / "flash.img").unlink(missing_ok=True)
    (dst / "flash.img").symlink_to(src / "flash.img")
    return dst


def _broken_firmware(build_dir: Path, plan, tmp_path: Path, file: str, old: str, new: str) -> Path:
    runtime = tmp_path / "runtime_c"
    shutil.copytree(RUNTIME_C, runtime)
    text = (runtime / file).read_text()
    assert old in text, f"{file} no longer contains {old!r}: update this mutation"
    (runtime / file).write_text(text.replace(old, new))
    return build(_copy_build(build_dir, tmp_path / "build"), plan, runtime=runtime)


@pytest.mark.parametrize("file, old, new", [
    ("runtime.c", "add_inplace(X_(p) + m->row, H_(p) + m->row", "(void)(X_(p) + m->row, H_(p) + m->row"),  # skipped residual
    ("kernels.c", "1.0f / mcu_sqrtf((float)head_dim)", "1.0f / (float)head_dim"),  # softmax scale
    ("kernels.c", "0.044715f", "0.04715f"),                                    # a GELU constant
], ids=["skipped-residual", "softmax-scale", "gelu-constant"])
def test_a_broken_kernel_fails_the_check(file, old, new, tiny, tiny_build, tok, tmp_path):
    cfg, w = tiny
    prompt_tokens = tok.encode(PROMPTS[1])
    ref = generate(Reference(cfg, w), prompt_tokens, 6, Sampling(), keep_logits=True)
    elf = _broken_firmware(tiny_build.out_dir, tiny_build.plan, tmp_path, file, old, new)
    assert not matches_reference(board_generate(tiny_build.out_dir, prompt_tokens, 6, Sampling(), elf=elf), ref)


def test_a_transposed_matrix_in_the_image_fails_the_check(tiny, tiny_build, tok, tmp_path):
    """The image writer stores attn_proj's weight as ONNX has it ([in, out]), not [out, in]."""
    import onnx
    cfg, w = tiny
    out = tiny_build.out_dir
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False)
    inits = {t.name: t for t in graph.graph.initializer}

    def arrays(name):
        a = initializer_array(inits[name], out)
        return a.T if name.endswith("attn.c_proj.weight") else a  # cancels the writer's transpose

    # the writer's bug in a whole build: its image, and the firmware compiled with that image's
    # CRCs (as compile_model would), so only the comparison with the reference can tell
    buggy = _copy_build(out, tmp_path / "buggy")
    (buggy / "flash.img").unlink()   # a file of its own, not the link to the shared build's image
    header = write_image(buggy / "flash.img", cfg, tiny_build.plan, tiny_build.stages, arrays,
                         token_bytes_table(tok, cfg.vocab_size))
    write_headers(buggy / "include", tiny_build.plan, header["tensor_crcs"])
    build(buggy, tiny_build.plan)
    prompt_tokens = tok.encode(PROMPTS[1])
    ref = generate(Reference(cfg, w), prompt_tokens, 6, Sampling(), keep_logits=True)
    assert not matches_reference(board_generate(buggy, prompt_tokens, 6, Sampling()), ref)


def test_resident_weights_give_the_same_tokens_and_read_less_flash(tiny, tok, tmp_path):
    """--group auto keeps weights in the SRAM left over; the stages that use them read no
    flash, and the tokens and logits do not change."""
    cfg, w = tiny
    prompt_tokens = tok.encode(PROMPTS[0])
    ref = generate(Reference(cfg, w), prompt_tokens, 5, Sampling(), keep_logits=True, n_ctx=32)
    flash = {}
    for group in ("none", "auto"):
        built = compile_model("tiny", tmp_path / group, ram=2 << 20, ctx=32, group=group, quiet=True)
        result = board_generate(built.out_dir, prompt_tokens, 5, Sampling())
        assert_matches_reference(result, ref)
        flash[group] = result.flash_bytes
        resident = built.plan.to_dict()["resident"]
        if group == "auto":
            assert resident["stages_fully_resident"] >= 8
            mlp = next(s for s in result.stages if s.name == "h1.mlp")
            assert mlp.flash_bytes < 1024 * mlp.calls  # table entries only, no weights
    assert flash["auto"] < flash["none"]
