"""`mcugpt run --check-stages`: every stage of the prompt's last position, read from the board,
equals the numpy reference's bit for bit and onnxruntime's (running that stage's subgraph on
the board's input) within the tolerance; a firmware with one broken kernel is named by its
first broken stage, and the stages before it stay exact (mcugpt/check_stages.py,
docs/check_stages.md)."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import mcugpt

from compiler.firmware import RUNTIME_C, build
from compiler.pipeline import compile_model
from compiler.sampler import Sampling
from mcugpt.run import Build, run

PROMPT = "Hello, my name is Bob and I"


@pytest.fixture(scope="module")
def h7_int8(tmp_path_factory):
    """The STM32H7S78-DK, int8 weights with an int8 KV cache, weight tiles in the data TCM."""
    return compile_model("tiny", tmp_path_factory.mktemp("h7_int8"), board="stm32h7s78-dk", dtype="int8",
                         kv_dtype="int8", quiet=True)


@pytest.fixture(scope="module")
def h7_psram(tmp_path_factory):
    """The same board with the KV cache in PSRAM (the SRAM budget cannot hold it), weights resident."""
    return compile_model("tiny", tmp_path_factory.mktemp("h7_psram"), board="stm32h7s78-dk", ram=160 << 10,
                         quiet=True)


@pytest.fixture(scope="module")
def h735_int8(tmp_path_factory):
    """The STM32H735G-DK, int8, every weight streamed every token."""
    return compile_model("tiny", tmp_path_factory.mktemp("h735_int8"), board="stm32h735g-dk", dtype="int8",
                         group="none", quiet=True)


@pytest.mark.parametrize("which", ["tiny_build", "h7_int8", "h7_psram", "h735_int8"],
                         ids=["sim64-fp32-streamed", "stm32h7s78-int8-kv8", "stm32h7s78-fp32-kv-psram",
                              "stm32h735-int8-streamed"])
def test_every_stage_of_a_correct_firmware_is_exact(which, request):
    built = request.getfixturevalue(which)
    report = run(Build.open(built.out_dir), PROMPT, 2, Sampling(), check_stages=True)
    check = report["check_stages"]
    plan = built.plan
    assert check["position"] == len(report["prompt_tokens"]) - 1
    assert [r["stage"] for r in check["rows"]] == [s.name for s in plan.stages]
    assert [r["values"] for r in check["rows"]][:4] == [64, 64, 192, 64]   # x, h, qkv, att of tiny (64 wide)
    assert check["rows"][-1]["values"] == plan.model.vocab_size            # the head's logits
    assert all(r["reference_identical"] and r["reference_max_abs_error"] == 0 for r in check["rows"])
    assert check["first_differing_stage"] is None
    assert all(r["onnx_within"] for r in check["rows"]), [r for r in check["rows"] if not r["onnx_within"]]
    assert check["first_onnx_exceeding_stage"] is None


def test_int8_stages_differ_from_the_float_graph_by_quantization_only(h7_int8):
    """int8 matrices, the int8 wte and the int8 cache make onnxruntime's float32 graph differ
    (more than float32 rounding could), the layer norms do not (fed the board's input)."""
    check = run(Build.open(h7_int8.out_dir), PROMPT, 1, Sampling(), check_stages=True)["check_stages"]
    rows = {r["stage"]: r for r in check["rows"]}
    for name in ("embed", "h0.attn_qkv", "h0.attn_proj", "h0.mlp", "head"):
        assert rows[name]["quantized"] and rows[name]["onnx_max_abs_error"] > 1e-3 * rows[name]["max_abs"]
    for name in ("h0.ln_1", "h0.ln_2", "h1.ln_1"):
        assert not rows[name]["quantized"] and rows[name]["onnx_max_abs_error"] < 1e-5 * rows[name]["max_abs"]


# -- a broken kernel is named -------------------------------------------------------------


def _broken_build(built, tmp_path: Path, file: str, old: str, new: str) -> Path:
    """A copy of the build whose firmware is compiled from runtime_c/ with `old` replaced by
    `new` in `file` (as tests/test_board_tokens.py breaks firmware)."""
    runtime = tmp_path / "runtime_c"
    shutil.copytree(RUNTIME_C, runtime)
    text = (runtime / file).read_text()
    assert text.count(old) == 1, f"{file} no longer contains {old!r} once: update this mutation"
    (runtime / file).write_text(text.replace(old, new))
    dst = tmp_path / "build"
    dst.mkdir()
    shutil.copytree(built.out_dir / "include", dst / "include")
    for f in ("plan.json", "build.json", "model.onnx"):
        shutil.copy(built.out_dir / f, dst / f)
    (dst / "flash.img").symlink_to(built.out_dir / "flash.img")
    build(dst, built.plan, runtime=runtime)
    return dst


LN_EPS = "layernorm(H_(p), X_(p), gain, bias, N_EMBD, LN_EPS)"
LN_2_EPS = "layernorm(H_(p), X_(p), gain, bias, N_EMBD, s->kind == STAGE_LN_2 ? 2.0f * LN_EPS : LN_EPS)"


@pytest.mark.parametrize("which, file, old, new, broken, onnx_flags", [
    # ln_2 alone (ln_1 and the head's ln_f share the kernel) with twice the epsilon: h moves by
    # 8e-5 of its scale, inside onnxruntime's float32 tolerance; only the exact comparison sees it
    ("tiny_build", "runtime.c", LN_EPS, LN_2_EPS, "h0.ln_2", []),
    # a GELU constant: onnxruntime, fed the board's input to each stage, flags the MLP of
    # every block and nothing else
    ("tiny_build", "kernels.c", "0.044715f", "0.04715f", "h0.mlp", ["h0.mlp", "h1.mlp"]),
    # the same in int8, where it hides in the quantization error onnxruntime's graph does not have
    ("h7_int8", "kernels.c", "0.044715f", "0.04715f", "h0.mlp", []),
], ids=["sim64-fp32-ln_2-epsilon", "sim64-fp32-gelu", "stm32h7s78-int8-gelu"])
def test_a_broken_kernel_is_named_as_the_first_differing_stage(which, file, old, new, broken, onnx_flags,
                                                               request, tmp_path):
    built = request.getfixturevalue(which)
    copy = _broken_build(built, tmp_path, file, old, new)
    proc = mcugpt("run", "--build", copy, "--prompt", PROMPT, "--tokens", "1", "--check-stages", "--json")
    assert proc.returncode == 1
    index = next(s.index for s in built.plan.stages if s.name == broken)
    assert proc.stderr.startswith(f"mcugpt: error: stage {index} ({broken}) is the first whose output differs "
                                  f"from the numpy reference")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    check = json.loads(proc.stdout)["check_stages"]
    assert check["first_differing_stage"] == broken
    rows = check["rows"]
    assert all(r["reference_identical"] for r in rows[:index])     # everything before it: exact
    assert rows[index]["reference_max_abs_error"] > 0
    assert [r["stage"] for r in rows if not r["onnx_within"]] == onnx_flags


def test_the_table_names_every_stage_and_the_verdict(tiny_build):
    proc = mcugpt("run", "--build", tiny_build.out_dir, "--prompt", PROMPT, "--tokens", "1", "--check-stages",
                  check=True)
    table = proc.stdout[proc.stdout.index("stage check"):]
    for s in tiny_build.plan.stages:
        assert f" {s.name} " in table
    assert "first stage differing from the reference: none (every stage bit-identical)" in table


def test_a_prefill_chunk_other_than_one_is_refused_in_one_line(tiny_build):
    assert tiny_build.plan.prefill_chunk >= 4
    proc = mcugpt("run", "--build", tiny_build.out_dir, "--prompt", PROMPT, "--check-stages", "--prefill-chunk", "4")
    assert proc.returncode == 1
    assert proc.stderr == ("mcugpt: error: --check-stages reads one position's activations per forward pass: "
                           "it runs the prompt with --prefill-chunk 1, not 4\n")


def test_a_model_whose_weights_are_external_data_is_checked_the_same(tiny_build, tmp_path):
    """GPT-2 124M's model.onnx keeps its weights in model.onnx.data: each stage's subgraph
    takes its weights from there."""
    import onnx
    dst = tmp_path / "build"
    shutil.copytree(tiny_build.out_dir, dst)
    model = onnx.load(str(dst / "model.onnx"))
    onnx.save_model(model, str(dst / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    assert (dst / "model.onnx.data").stat().st_size > 10 << 20
    check = run(Build.open(dst), PROMPT, 1, Sampling(), check_stages=True)["check_stages"]
    assert check["first_differing_stage"] is None and check["first_onnx_exceeding_stage"] is None


@pytest.mark.parametrize("damage", ["garbage", "no-external-data"])
def test_a_damaged_model_onnx_is_one_line(damage, tiny_build, tmp_path):
    import onnx
    dst = tmp_path / "build"
    shutil.copytree(tiny_build.out_dir, dst)
    if damage == "garbage":
        (dst / "model.onnx").write_bytes(b"\xff\x00 not a protobuf \xff" * 10)
        expected = f"mcugpt: error: {dst / 'model.onnx'}: not an ONNX model ("
    else:
        model = onnx.load(str(dst / "model.onnx"))
        onnx.save_model(model, str(dst / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
        (dst / "model.onnx.data").unlink()
        expected = f"mcugpt: error: {dst / 'model.onnx'}: onnxruntime cannot run stage 0 (embed): "
    proc = mcugpt("run", "--build", dst, "--prompt", PROMPT, "--tokens", "1", "--check-stages")
    assert proc.returncode == 1
    assert proc.stderr.startswith(expected) and proc.stderr.count("\n") == 1, proc.stderr
