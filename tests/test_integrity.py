"""Every byte of the image the firmware uses is CRC-checked before the answer depends on it:
whole blobs as they stream (or once at boot), and the embedding's single rows of wte and wpe
against their row CRC tables on every read. A read that fails its check is read again once:
a transient error (emulator/spi_flash.py ReadFault: one read returns a flipped bit) costs a
retry and changes nothing, and the run says it retried; a persistent one (a bit flipped in
the image file) stops the run naming the tensor and the stage."""

import shutil
import zlib

import numpy as np
import pytest
from conftest import mcugpt

from compiler.pipeline import compile_model
from compiler.quantize import quantize_rows
from emulator.board import Board, FirmwareError
from emulator.spi_flash import ReadFault
from target.boards import get_board
from target.flash_layout import read_image

PROMPT = "Hello"        # one token, 15496: positions 0, 1, 2 for three new tokens
N_NEW = 3


def run(build, tok, faults=(), board="sim64"):
    with Board.for_profile(build / "firmware.elf", build / "flash.img", get_board(board)) as b:
        b.flash.faults = list(faults)
        return b.run(tok.encode(PROMPT), n_new=N_NEW, dump_logits=True)


def tensor(build, name) -> tuple[int, dict]:
    img = read_image(build / "flash.img", verify_weights=False)
    return next((i, t) for i, t in enumerate(img.tensors) if t["name"] == name)


def flip(path, offset, bit=6):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 1 << bit]))


@pytest.fixture(scope="module")
def clean(tiny_build, tok):
    return run(tiny_build.out_dir, tok)


@pytest.fixture
def build(tiny_build, tmp_path):
    out = tmp_path / "build"
    shutil.copytree(tiny_build.out_dir, out)
    return out


def same_run(result, clean):
    return (result.tokens == clean.tokens and result.positions == clean.positions
            and all((a == b).all() for a, b in zip(result.logits, clean.logits)))


# ----------------------------------------------------------------------------
# the row CRC tables


def row_crc_table(build, t) -> np.ndarray:
    return np.fromfile(build / "flash.img", "<u4", count=t["rows"], offset=t["row_crcs"])


def test_each_embedding_row_has_its_crc32_in_the_image(tiny_build, tiny):
    """fp32: the CRC32 of the row's float32 bytes, computed here from the weights."""
    _cfg, weights = tiny
    for name in ("wte.weight", "wpe.weight"):
        _, t = tensor(tiny_build.out_dir, name)
        table = row_crc_table(tiny_build.out_dir, t)
        for r in (0, 1, 1000 % t["rows"], t["rows"] - 1):
            assert table[r] == zlib.crc32(np.asarray(weights[name][r], "<f4").tobytes())


def test_an_int8_row_s_crc32_covers_its_scale_then_its_values(boot_checked, tiny):
    _cfg, weights = tiny
    q, scale = quantize_rows(np.asarray(weights["wte.weight"], np.float32))
    _, t = tensor(boot_checked.out_dir, "wte.weight")
    table = row_crc_table(boot_checked.out_dir, t)
    for r in (0, 7, 15496, t["rows"] - 1):
        assert table[r] == zlib.crc32(np.asarray(scale[r], "<f4").tobytes() + q[r].tobytes())


# ----------------------------------------------------------------------------
# persistent: a bit flipped in the image file


def test_a_flipped_bit_in_a_position_embedding_stops_the_run_naming_it(build, tok, clean):
    """wpe is read a row per position and never whole: its rows carry their own CRCs."""
    index, wpe = tensor(build, "wpe.weight")
    flip(build / "flash.img", wpe["offset"] + 64 * 4 * 1 + 11)    # row 1: position 1
    with pytest.raises(FirmwareError) as e:
        run(build, tok)
    assert e.value.name == "BAD_ROW_CRC" and e.value.exit_args[:2] == (index, 1)
    assert f"row 1 of tensor {index} 'wpe.weight' in stage 0 (embed) failed its row CRC32 twice" in str(e.value)
    assert e.value.result.tokens == clean.tokens[:1]       # position 0's token, then the stop
    assert len(e.value.result.crc_retries) == 1


def test_a_flipped_bit_in_a_token_embedding_row_stops_the_run(build, tok):
    index, wte = tensor(build, "wte.weight")
    token = tok.encode(PROMPT)[0]
    flip(build / "flash.img", wte["offset"] + token * 64 * 4 + 11)
    with pytest.raises(FirmwareError) as e:
        run(build, tok)
    assert e.value.name == "BAD_ROW_CRC" and e.value.exit_args[:2] == (index, token)
    assert e.value.result.tokens == []


def test_the_command_line_says_so_in_one_line(build):
    _, wpe = tensor(build, "wpe.weight")
    flip(build / "flash.img", wpe["offset"] + 11)
    proc = mcugpt("run", "--build", build, "--prompt", PROMPT, "--tokens", "2")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "firmware exit BAD_ROW_CRC: row 0 of tensor 1 'wpe.weight' in stage 0 (embed)" in proc.stderr


def test_a_flipped_bit_in_a_streamed_blob_is_read_twice_then_named(build, tok):
    index, w = tensor(build, "h.0.mlp.c_fc.weight")
    flip(build / "flash.img", w["offset"] + 1000)
    with pytest.raises(FirmwareError) as e:
        run(build, tok)
    assert e.value.name == "BAD_TENSOR_CRC" and e.value.exit_args[0] == index
    assert f"tensor {index} 'h.0.mlp.c_fc.weight' in stage 6 (h0.mlp), read twice" in str(e.value)
    assert e.value.result.crc_retries == [f"tensor {index} 'h.0.mlp.c_fc.weight' in stage 6 (h0.mlp)"]


# ----------------------------------------------------------------------------
# transient: one read returns a flipped bit, the flash itself is right


def test_a_transient_error_in_an_embedding_row_is_read_again(tiny_build, tok, clean):
    index, wpe = tensor(tiny_build.out_dir, "wpe.weight")
    r = run(tiny_build.out_dir, tok, [ReadFault(wpe["offset"] + 11, bit=6)])   # row 0, an exponent bit
    assert same_run(r, clean)
    assert r.crc_retries == [f"tensor {index} 'wpe.weight' in stage 0 (embed)"]


def test_a_transient_error_in_a_streamed_tile_runs_the_forward_pass_again(tiny_build, tok, clean):
    """The stage has computed with the tile before the blob's CRC is known: the whole pass
    runs again, and gives what one good pass gives."""
    index, w = tensor(tiny_build.out_dir, "h.1.mlp.c_proj.weight")
    r = run(tiny_build.out_dir, tok, [ReadFault(w["offset"] + 7, nth=2, bit=6)])   # position 1
    assert same_run(r, clean)
    assert r.crc_retries == [f"tensor {index} 'h.1.mlp.c_proj.weight' in stage 12 (h1.mlp)"]


def test_a_transient_error_in_a_vector_is_read_again(tiny_build, tok, clean):
    index, b = tensor(tiny_build.out_dir, "h.0.ln_2.bias")
    r = run(tiny_build.out_dir, tok, [ReadFault(b["offset"] + 3, bit=6)])
    assert same_run(r, clean)
    assert r.crc_retries == [f"tensor {index} 'h.0.ln_2.bias' in stage 5 (h0.ln_2)"]


def test_the_same_error_on_the_second_read_is_persistent(tiny_build, tok):
    index, w = tensor(tiny_build.out_dir, "h.0.attn.c_attn.weight")
    with pytest.raises(FirmwareError) as e:
        run(tiny_build.out_dir, tok, [ReadFault(w["offset"], bit=6, times=2)])
    assert e.value.name == "BAD_TENSOR_CRC" and e.value.exit_args[0] == index
    assert e.value.result.crc_retries == [f"tensor {index} 'h.0.attn.c_attn.weight' in stage 2 (h0.attn_qkv)"]


def test_a_transient_error_in_the_tables_at_boot_is_read_again(tiny_build, tok, clean):
    h = read_image(tiny_build.out_dir / "flash.img", verify_weights=False).header
    r = run(tiny_build.out_dir, tok, [ReadFault(h["tables_offset"] + 100)])
    assert same_run(r, clean)
    assert r.crc_retries[0] == "the header, tables or token table at boot"


# ----------------------------------------------------------------------------
# checked at boot (--verify boot): blobs once at boot, the embedding rows still at every read


@pytest.fixture(scope="module")
def boot_checked(tmp_path_factory):
    return compile_model("tiny", tmp_path_factory.mktemp("boot"), board="stm32h7s78-dk", dtype="int8",
                         group="none", quiet=True)


def test_checked_at_boot_a_transient_error_is_read_again_at_boot(boot_checked, tok):
    out = boot_checked.out_dir
    clean = run(out, tok, board="stm32h7s78-dk")
    index, w = tensor(out, "h.0.mlp.c_fc.weight")
    r = run(out, tok, [ReadFault(w["offset"] + 10)], board="stm32h7s78-dk")
    assert same_run(r, clean)
    assert r.crc_retries == [f"tensor {index} 'h.0.mlp.c_fc.weight' at boot"]


def test_checked_at_boot_the_embedding_rows_are_still_checked_as_they_are_read(boot_checked, tok):
    out = boot_checked.out_dir
    clean = run(out, tok, board="stm32h7s78-dk")
    index, wpe = tensor(out, "wpe.weight")
    # read 1 is the boot check of the whole blob; read 2 is position 0's row
    r = run(out, tok, [ReadFault(wpe["offset"] + 11, nth=2, bit=6)], board="stm32h7s78-dk")
    assert same_run(r, clean)
    assert r.crc_retries == [f"tensor {index} 'wpe.weight' in stage 0 (embed)"]
