"""GPT-2 124M at full size: `make flash-image`, then a few tokens on the emulated board."""

import json

import pytest
from conftest import mcugpt

from target.flash_layout import read_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gpt2_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpt2")
    stdout = mcugpt("compile", "--model", "gpt2", "--out", out, "--quiet", check=True).stdout
    return out, stdout


def test_gpt2_124m_compiles_to_72_stages_and_a_verified_image(gpt2_build):
    out, stdout = gpt2_build
    plan = json.loads((out / "plan.json").read_text())
    assert plan["totals"]["block_stages"] == 72
    assert plan["totals"]["weight_bytes"] == 124_439_808 * 4
    assert plan["peak_ram_bytes"] <= 64 << 20
    assert f"context      {plan['ctx']} tokens (the model's is 1024" in stdout
    img = read_image(out / "flash.img")  # every CRC
    assert img.header["stage_count"] == 74
    assert (out / "firmware.elf").is_file()


def test_gpt2_124m_on_the_board_equals_the_reference(gpt2_build):
    out, _ = gpt2_build
    r = json.loads(mcugpt("run", "--build", out, "--prompt", "Hello, my name is", "--tokens", "3",
                          "--json", "--check", check=True).stdout)
    assert r["check"]["tokens_equal"] and r["check"]["logits_identical"]
    assert r["peak_ram"]["measured"] <= r["peak_ram"]["plan"] <= 64 << 20
    assert r["flash_bytes_per_token"] >= 124_439_808 * 4 * 0.99


def test_gpt2_124m_int8_runs_on_the_stm32h7s78_dk_and_equals_the_reference(tmp_path):
    """GPT-2 124M, int8, on the STM32H7S78-DK: the image fits its 128 MiB flash, measured SRAM
    (stack paint + arena high-water mark) within its 456 KiB AXI SRAM, KV cache in its PSRAM,
    and tokens and logits exactly the int8 reference's."""
    mcugpt("compile", "--model", "gpt2", "--board", "stm32h7s78-dk", "--dtype", "int8", "--out", tmp_path,
           "--quiet", check=True)
    r = json.loads(mcugpt("run", "--build", tmp_path, "--prompt", "Hello, my name is", "--tokens", "3",
                          "--json", "--check", check=True).stdout)
    assert r["kv_placement"] == "psram" and r["board"] == "stm32h7s78-dk"
    assert r["peak_ram"]["measured"] <= 456 << 10
    assert r["check"]["tokens_equal"] and r["check"]["logits_max_abs_error"] == 0.0
