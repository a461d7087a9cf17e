"""Boards you can buy, made of real parts: the flash and PSRAM have their parts' capacity, the
image must fit, addressing follows the part, memory the board lacks cannot be touched, and
`mcugpt fit` says what compile and run do (target/boards.py, docs/boards.md)."""

import json

import pytest
from conftest import mcugpt
from test_board import image, program  # noqa: F401  (fixtures: the board's test programs)

from compiler.pipeline import compile_model
from emulator.board import Board, FirmwareError
from emulator.spi_flash import SpiNorFlash
from target.boards import BOARDS, get_board
from target.errors import McugptError
from target.flash_timing import frame_clocks, get_preset

MiB = 1 << 20


# ----------------------------------------------------------------------------
# the boards are their parts


def test_every_board_is_made_of_named_parts_with_sources():
    for b in BOARDS.values():
        assert b.cpu.part and b.cpu.source and b.cpu.max_hz > 0, b.name
        assert sum(r.arena for r in b.sram) == 1 and all(r.source for r in b.sram), b.name
        for m in (*b.flash, *([b.psram] if b.psram else [])):
            assert m.source and m.clock_hz > 0 and m.chips >= 1, (b.name, m.part)
        assert b.buyable == (b.name != "sim64")
    h7s = get_board("stm32h7s78-dk")
    assert (h7s.cpu_hz, h7s.sram_bytes, h7s.flash_bytes, h7s.psram_bytes) == (600e6, 456 << 10, 128 * MiB, 32 * MiB)
    h735 = get_board("stm32h735g-dk")
    assert (h735.cpu_hz, h735.sram_bytes, h735.flash_bytes, h735.psram_bytes) == (550e6, 320 << 10, 64 * MiB, 16 * MiB)
    assert get_board("sim64").flash_bytes == 4 * 128 * MiB


def test_a_part_runs_no_faster_than_its_board_clocks_it(tiny_h735):
    """The H735G-DK's MX25LM51245G allows 133 MHz; ST's board runs its OCTOSPI at 100 MHz. A
    4 KiB read: 1 command + 2 address + 20 dummy + 2048 data clocks (8D-8D-8D), at 100 MHz."""
    out = tiny_h735.out_dir
    with Board.for_profile(out / "firmware.elf", out / "flash.img", get_board("stm32h735g-dk")) as b:
        assert b.flash.timing.read_modes["octal"].clock_hz == 100_000_000
        assert frame_clocks(b.flash.timing.read_modes["octal"], 4, 4096) == 1 + 2 + 20 + 2048
        assert b.psram.timing.read_frame.clock_hz == 100_000_000 and b.psram.size == 16 * MiB


@pytest.fixture(scope="module")
def tiny_h735(tmp_path_factory):
    return compile_model("tiny", tmp_path_factory.mktemp("tiny_h735"), board="stm32h735g-dk", dtype="int8",
                         quiet=True)


# ----------------------------------------------------------------------------
# capacity


def test_sim64s_quad_alternative_is_four_w25q01jv_read_in_1_4_4_at_133_mhz(tiny_build, tok):
    """`run --flash w25q01jv`: the same tokens as sim64's octal flash, from four 1 Gbit quad
    parts (JEDEC EF 40 21), each 4 KiB read one Fast Read Quad I/O command: 8 command clocks,
    a 4-byte address on 4 lines (8), 2 mode and 4 dummy clocks, 8192 data clocks, at 133 MHz."""
    sim64 = get_board("sim64")
    quad = sim64.flash_option("w25q01jv")
    assert (quad.chips, get_preset(quad.part).capacity, get_preset(quad.part).jedec_id) == (4, 128 * MiB,
                                                                                            bytes([0xEF, 0x40, 0x21]))
    out = tiny_build.out_dir
    prompt = tok.encode("Hello")
    runs = {}
    for part in ("mx66uw1g45g", "w25q01jv"):
        with Board.for_profile(out / "firmware.elf", out / "flash.img", sim64, flash_preset=part) as b:
            assert b.flash.timing.name == part and b.flash.chips == 4
            runs[part] = b.run(prompt, 3)
    assert frame_clocks(get_preset("w25q01jv").read_modes["quad"], 4, 4096) == 8 + 8 + 2 + 4 + 8192
    assert runs["w25q01jv"].tokens == runs["mx66uw1g45g"].tokens
    assert runs["w25q01jv"].flash_bytes == runs["mx66uw1g45g"].flash_bytes
    # the same bytes at a quarter of the lanes, a third slower clock, single data rate
    assert runs["w25q01jv"].flash_ns > 5 * runs["mx66uw1g45g"].flash_ns


def test_compile_refuses_an_image_the_boards_flash_cannot_hold(tmp_path):
    proc = mcugpt("compile", "--model", "gpt2", "--board", "stm32h735g-dk", "--dtype", "int8", "--out", tmp_path / "b")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert ("gpt2 (int8): the flash image is 122.7 MiB (128,622,592 bytes), more than the stm32h735g-dk "
            "board's 64 MiB of flash (1 x mx25lm51245g); what would fit: a smaller model") in proc.stderr
    assert not (tmp_path / "b").exists()


def test_the_board_refuses_an_image_larger_than_its_flash(tiny_h735, tmp_path):
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(64 * MiB + 4096)
    with pytest.raises(McugptError, match=r"the flash image is 67,112,960 bytes, more than the board's "
                                          r"67,108,864 bytes of flash \(1 x mx25lm51245g\)"):
        Board.for_profile(tiny_h735.out_dir / "firmware.elf", big, get_board("stm32h735g-dk"))


# ----------------------------------------------------------------------------
# addressing


def test_parts_above_16_mib_take_4_byte_addresses_and_read_past_16_mib():
    part = get_preset("mx66uw1g45g")
    data = bytes(range(256)) * (4096 // 256)
    image = bytearray(17 * MiB)
    image[16 * MiB:16 * MiB + 4096] = data
    flash = SpiNorFlash(bytes(image), part, size=part.capacity)
    assert flash.address_bytes == 4
    assert flash.read(16 * MiB, 4096) == data
    w25q = SpiNorFlash(bytes(1024), "w25q-quad", size=16 * MiB)
    assert w25q.address_bytes == 3


def test_a_read_across_two_chips_is_two_commands():
    """sim64's flash is four packages on one bus: a read that spans the boundary between two
    of them is one command per package, each with its own address and dummy clocks."""
    part = get_preset("mx66uw1g45g")
    flash = SpiNorFlash(bytes(1024), part, size=4 * part.capacity, chips=4)
    one = flash.read(0, 8192)
    t_one = flash.stats()["total"]["ns"]
    flash.reset_stats()
    two = flash.read(part.capacity - 4096, 8192)
    stats = flash.stats()
    assert len(one) == len(two) == 8192 and stats["commands"]["read_octal"]["count"] == 2
    assert stats["total"]["ns"] > t_one   # one more command's address, dummy clocks and deselect


# ----------------------------------------------------------------------------
# memory the board does not have


def test_a_flash_read_past_the_boards_flash_is_an_error(program, image):  # noqa: F811
    """The board's flash ends at its parts' capacity (16 MiB for the default W25Q128JV):
    a DMA read there is refused by the controller (STATUS ERROR), and the run stops saying why."""
    with Board(program("dma_async"), image, ram_bytes=256 << 10) as board:
        with pytest.raises(FirmwareError) as e:
            board.run([0, 16 * MiB, 4096, 0], n_new=0)
    assert e.value.name == "FLASH_ERROR" and "\n" not in str(e.value)
    assert "read at address 0x1000000 (16777216) of length 4096 is outside the device of size 0x1000000" in str(e.value)


# ----------------------------------------------------------------------------
# mcugpt fit agrees with compile and run


def test_fit_lists_every_board_and_agrees_with_compile(tmp_path):
    rows = json.loads(mcugpt("fit", "--model", "gpt2", "--no-run", "--json", check=True).stdout)
    assert {(r["board"], r["dtype"]) for r in rows} == {(b, d) for b in BOARDS for d in ("fp32", "int8")}
    by = {(r["board"], r["dtype"]): r for r in rows}
    assert not by["stm32h7s78-dk", "fp32"]["fits"] and "128 MiB of flash" in by["stm32h7s78-dk", "fp32"]["why"]
    assert by["stm32h7s78-dk", "int8"]["fits"] and by["stm32h7s78-dk", "int8"]["kv"] == "psram"
    assert not by["stm32h735g-dk", "int8"]["fits"]
    for r in rows:
        assert set(r) >= {"board", "dtype", "fits", "why", "ctx", "tokens_per_s", "assumptions"}
        assert r["tokens_per_s"] is None and isinstance(r["assumptions"], list) and r["assumptions"]
    compile_fails = mcugpt("compile", "--model", "gpt2", "--board", "stm32h7s78-dk", "--out", tmp_path / "x")
    assert compile_fails.returncode == 1 and by["stm32h7s78-dk", "fp32"]["why"] in compile_fails.stderr


def test_fit_measures_what_run_measures(tmp_path):
    rows = json.loads(mcugpt("fit", "--model", "tiny", "--json", "--out", tmp_path, check=True).stdout)
    assert all(r["fits"] and r["tokens_per_s"] > 0 for r in rows)
    for board in ("sim64", "stm32h7s78-dk"):
        row = next(r for r in rows if (r["board"], r["dtype"]) == (board, "int8"))
        build = row["measured"]["build"]
        plan = json.loads(open(f"{build}/plan.json").read())
        assert plan["ctx"] == row["ctx"] and plan["peak_ram_bytes"] == row["peak_ram_plan"]
        r = json.loads(mcugpt("run", "--build", build, "--prompt", "Hello", "--tokens", "1", "--json",
                              check=True).stdout)
        assert r["device"]["tokens_per_s"] == pytest.approx(row["tokens_per_s"], rel=1e-9)


# ----------------------------------------------------------------------------
# the CRC check's cost on a chip whose CRC unit is not on the flash DMA's path


def test_the_crc_is_a_second_dma_pass_on_the_stm32h7s78_dk(tmp_path, tok):
    """The STM32H7's CRC unit has no DMA request: every blob the firmware streams takes a
    second DMA pass through it, at 4 HCLK per word = 300 MB/s at HCLK 300 MHz. Per token that
    is every streamed (not resident) vector and matrix, and the embedding's two rows (one of
    wte, one of wpe: each row has its own CRC), over 300 MB/s. sim64's controller checks
    inline, for free."""
    built = compile_model("tiny", tmp_path / "b", board="stm32h7s78-dk", dtype="int8", group="none",
                          verify="stream", tiers="flash-only", quiet=True)
    plan = built.plan
    streamed = sum(t.bytes for t in plan.tensors if t.access != "row" and not t.resident)
    streamed += sum(t.row_bytes for t in plan.tensors if t.name in ("wte.weight", "wpe.weight"))
    with Board.for_profile(built.out_dir / "firmware.elf", built.out_dir / "flash.img", plan.profile) as board:
        r = board.run(tok.encode("Hello"), n_new=2)
    last = r.per_position[-1]          # a position that ends in the head: every tensor once
    assert last.crc_ns == pytest.approx(streamed / 300e6 * 1e9, rel=1e-9)
    assert r.tokens and r.stall_ns > 0
    sim = compile_model("tiny", tmp_path / "s", dtype="int8", group="none", quiet=True, cc=None)
    assert sim.plan.profile.crc.bytes_per_s is None and sim.plan.profile.crc.ns_per_byte == 0.0
