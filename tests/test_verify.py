"""When the weights' CRCs are checked (compiler/plan.py VERIFY_MODES): as every blob streams,
or every blob once at boot and then streamed unchecked, where the board's CRC unit is a
second DMA pass that would otherwise bound every token."""

import shutil

import pytest

from compiler.config import load_preset
from compiler.pipeline import compile_model, stages_of
from compiler.plan import make_plan
from emulator.board import Board, FirmwareError
from target.boards import get_board
from target.flash_layout import HEADER_CRC_SPAN, read_image

H7 = "stm32h7s78-dk"


def test_auto_checks_at_boot_only_where_the_check_is_a_second_pass():
    cfg = load_preset("tiny")
    h7 = make_plan(cfg, stages_of(cfg), board=H7)
    sim = make_plan(cfg, stages_of(cfg), board="sim64")
    assert h7.verify == "boot" and "second DMA pass" in h7.verify_why
    assert sim.verify == "stream" and "no cost" in sim.verify_why
    assert make_plan(cfg, stages_of(cfg), board=H7, verify="stream").verify == "stream"


@pytest.fixture(scope="module")
def boot_checked(tmp_path_factory):
    return compile_model("tiny", tmp_path_factory.mktemp("boot"), board=H7, dtype="int8", group="none", quiet=True)


def run(out, tok, n_new=2):
    with Board.for_profile(out / "firmware.elf", out / "flash.img", get_board(H7)) as board:
        return board.run(tok.encode("Hello"), n_new=n_new)


def test_checked_at_boot_the_tokens_stream_without_the_crc_pass(boot_checked, tok):
    assert boot_checked.plan.verify == "boot"
    r = run(boot_checked.out_dir, tok)
    h = read_image(boot_checked.out_dir / "flash.img", verify_weights=False).header
    # at boot: the header, the tables, the token table, and every weight blob (group none:
    # nothing resident), each once through the CRC unit's second pass at 300 MB/s
    checked = HEADER_CRC_SPAN + h["tables_size"] + h["tokens_size"] + sum(t.bytes for t in boot_checked.plan.tensors)
    # and each token only its two embedding rows, checked against their row CRCs as they are
    # read: wte's int8 row (its scale and values) and wpe's float32 row
    n_embd = boot_checked.plan.model.n_embd
    rows = (4 + n_embd) + 4 * n_embd
    assert all(p.crc_ns == pytest.approx(rows / 300e6 * 1e9, rel=1e-9) for p in r.per_position)
    assert r.crc_ns == pytest.approx((checked + rows * len(r.per_position)) / 300e6 * 1e9, rel=1e-9)
    assert r.boot_ns >= checked / 300e6 * 1e9 and r.tokens


@pytest.mark.parametrize("name", ["h.1.mlp.c_fc.weight", "wpe.weight"])
def test_a_corrupt_blob_stops_the_board_at_boot(boot_checked, tok, tmp_path, name):
    """Every blob, the position embedding's rows too (which a streamed check never covers:
    the firmware reads single rows of it)."""
    out = tmp_path / "b"
    shutil.copytree(boot_checked.out_dir, out)
    img = read_image(out / "flash.img", verify_weights=False)
    index, t = next((i, t) for i, t in enumerate(img.tensors) if t["name"] == name)
    with open(out / "flash.img", "r+b") as f:
        f.seek(t["offset"] + 5)
        b = f.read(1)
        f.seek(t["offset"] + 5)
        f.write(bytes([b[0] ^ 0x10]))
    with pytest.raises(FirmwareError) as e:
        run(out, tok)
    assert e.value.name == "BAD_TENSOR_CRC" and e.value.exit_args[0] == index
    assert e.value.result.tokens == [] and e.value.result.positions == []
