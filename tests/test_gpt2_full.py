"""GPT-2 124M at full size: the compile a user runs with `make flash-image`."""

import json

import pytest

from compiler.flash_image import read_image
from conftest import mcugpt

pytestmark = pytest.mark.slow


def test_gpt2_124m_compiles_to_72_stages_and_a_verified_image(tmp_path):
    out = mcugpt("compile", "--model", "gpt2", "--out", tmp_path, "--quiet", check=True).stdout
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["totals"]["block_stages"] == 72
    assert plan["totals"]["weight_bytes"] == 124_439_808 * 4
    assert plan["peak_ram_bytes"] <= 64 << 20
    assert f"context      {plan['ctx']} tokens (the model's is 1024" in out
    img = read_image(tmp_path / "flash.img")  # every CRC
    assert img.header["stage_count"] == 74
    assert img.header["image_size"] > 124_439_808 * 4
