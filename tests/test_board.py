"""Specification of the emulated board (emulator/board.py, emulator/peripherals.py).

Each test runs a tiny C program from tests/board_firmware/ (compiled by zig for the
Cortex-M7 against the generated include/memory_map.h) and compares what the board reports
with a computation in Python: the DMA and CRC unit against zlib, the flash counters against
the timing model, the trace unit's attribution against the reads the program made, the
RAM scan against a known stack depth and arena write, and every kind of fault against a
one-line message that names the address, the PC, the function and the stage.
"""

import importlib.util
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from compiler.codegen import render_memory_map
from emulator.board import PAINT, Board, BoardFault, FirmwareError
from target import memory_map as mm
from target import toolchain
from target.errors import McugptError
from target.flash_layout import read_image
from target.flash_timing import read_time_ns

FIRMWARE_DIR = Path(__file__).resolve().parent / "board_firmware"
M7_FLAGS = ["-target", "thumb-freestanding-eabihf", "-mcpu=cortex_m7+fp_armv8d16sp",
            "-O2", "-ffp-contract=off", "-std=c99", "-Wall", "-Wextra", "-Werror"]
KiB = 1024
RAM = 256 * KiB   # the test programs need ~83 KB: .data, .bss, a 16 KiB stack, a 64 KiB arena
EXIT = {name: code for name, (code, _doc) in mm.EXIT_CODES.items()}


@pytest.fixture(scope="session")
def program(tmp_path_factory):
    """program("dma_crc") -> path of tests/board_firmware/dma_crc.c built for the board."""
    if importlib.util.find_spec("ziglang") is None:
        pytest.skip("ziglang is not installed in this Python")
    out = tmp_path_factory.mktemp("board_firmware")
    (out / "include").mkdir()
    (out / "include" / "memory_map.h").write_text(render_memory_map())
    built = {}

    def build(name):
        if name not in built:
            elf = out / f"{name}.elf"
            cmd = [*toolchain.compiler("zig"), *M7_FLAGS, f"-I{out / 'include'}", f"-I{FIRMWARE_DIR}",
                   "-T", str(FIRMWARE_DIR / "board_test.ld"), "-Wl,--entry=Reset_Handler",
                   str(FIRMWARE_DIR / "crt0.c"), str(FIRMWARE_DIR / f"{name}.c"), "-o", str(elf)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"
            built[name] = elf
        return built[name]

    return build


@pytest.fixture(scope="session")
def image(tmp_path_factory):
    """A 256 KiB flash image of seeded random bytes (not an mcugpt image: no tables)."""
    path = tmp_path_factory.mktemp("flash") / "random.img"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 256 * KiB, dtype=np.uint8).tobytes())
    return path


def reads(*triples):
    """dma_crc's prompt: (stage, flash address, length[, RAM destination]) per read."""
    words = [len(triples)]
    for t in triples:
        words += [*t, 0] if len(t) == 3 else list(t)
    return words


def expected_lines(data, ranges):
    return "".join(f"crc={zlib.crc32(data[a:a + n]):08x} sum={sum(data[a:a + n])}\n" for a, n in ranges)


# ----------------------------------------------------------------------------
# flash controller: DMA, CRC unit, timing


def test_dma_reads_land_in_ram_and_the_crc_unit_is_zlibs(program, image):
    data = image.read_bytes()
    ranges = [(0, 1), (100, 4000), (5000, 65536), (len(data) - 3, 3)]
    board = Board(program("dma_crc"), image, ram_bytes=RAM)
    result = board.run(reads(*((1, a, n) for a, n in ranges)), n_new=0)
    # crc: the CRC unit on the DMA path; sum: computed by the CPU from the bytes in RAM
    assert result.text == expected_lines(data, ranges)
    assert result.exit_code == EXIT["OK"]


def test_flash_bytes_and_time_are_the_timing_models(program, image):
    size = image.stat().st_size
    lengths = [1, 256, 4096, 65536]
    for preset, mode in (("w25q-quad", "quad"), ("octal-dtr", "octal")):
        board = Board(program("dma_crc"), image, ram_bytes=RAM, flash_preset=preset)
        result = board.run(reads(*((0, 4096 * i, n) for i, n in enumerate(lengths))), n_new=0)
        expected_ns = sum(read_time_ns(preset, n, mode, device_size=size) for n in lengths)
        assert result.flash_commands == {f"read_{mode}": {
            "count": 4, "bytes": sum(lengths), "ns": pytest.approx(expected_ns), "busy_ns": 0.0}}
        assert result.flash_bytes == sum(lengths)
        assert result.flash_ns == pytest.approx(expected_ns)


def test_a_read_past_the_end_of_flash_sets_error_and_the_exit_says_why(program, image):
    """The flash ends at its part's capacity (the default W25Q128JV: 16 MiB), not at the
    image's end: past the image it reads as erased, past the part it is an error."""
    board = Board(program("dma_crc"), image, ram_bytes=RAM)
    size = board.flash.size
    assert size == 16 << 20 > image.stat().st_size
    with pytest.raises(FirmwareError) as e:
        board.run(reads((0, size - 8, 16)), n_new=0)
    assert e.value.name == "FLASH_ERROR"
    assert e.value.exit_args[0] == mm.FLASH_STATUS["ERROR"] | mm.FLASH_STATUS["DONE"]
    msg = str(e.value)
    assert "\n" not in msg and "FLASH_ERROR" in msg and f"0x{size - 8:x}" in msg and "outside the device" in msg


def test_a_dma_destination_outside_sram_sets_error(program, image):
    board = Board(program("dma_crc"), image, ram_bytes=RAM)
    dst = mm.SRAM_BASE + RAM - 4   # 8 bytes: the last 4 would land past the end of SRAM
    with pytest.raises(FirmwareError) as e:
        board.run(reads((0, 0, 8, dst)), n_new=0)
    assert e.value.name == "FLASH_ERROR"
    assert f"0x{dst:08x}" in str(e.value) and "not inside SRAM" in str(e.value)
    assert e.value.result.flash_bytes == 0   # refused before the flash was read


def test_program_erase_and_id_commands_drive_the_flash_model(program, image):
    before = image.read_bytes()
    sector = 8 * 4096
    board = Board(program("flash_cmds"), image, ram_bytes=RAM)
    result = board.run([sector], n_new=0)
    # JEDEC id of the W25Q128JV; status 0 (idle), then WEL (bit 1) after WRITE_ENABLE
    assert result.text == "id=00ef4018 st=0 wel=2 ok\n"
    cmds = result.flash_commands
    assert cmds["sector_erase"]["count"] == 1 and cmds["page_program"]["count"] == 1
    assert cmds["write_enable"]["count"] == 2
    # the controller waits out the erase (45 ms) and program (0.4 ms) times on the flash clock
    assert result.flash_ns > 45e6 + 0.4e6
    # the board's flash device holds the new page (for later runs too); the file on disk is untouched
    page = bytes((i * 3 + 1) & 0xFF for i in range(256))
    assert board.flash.read(sector, 256 + 16) == page + b"\xff" * 16
    assert image.read_bytes() == before


# ----------------------------------------------------------------------------
# mailbox and UART


def test_the_mailbox_holds_the_request_in_the_documented_layout(program, image):
    board = Board(program("mailbox_echo"), image, ram_bytes=RAM)
    seed = 0x0123456789ABCDEF
    result = board.run([50256, 7, 1], n_new=9, temperature=0.75, top_k=40, seed=seed, dump_logits=True)
    words = [int(w, 16) for w in result.text.split()]
    temperature_bits = struct.unpack("<I", struct.pack("<f", 0.75))[0]
    assert words == [mm.MAILBOX_MAGIC, 3, 9, temperature_bits, 40, seed & 0xFFFFFFFF, seed >> 32,
                     mm.MAILBOX_FLAGS["DUMP_LOGITS"], 50256, 7, 1]


def test_a_prompt_longer_than_the_mailbox_is_refused_before_running(program, image):
    board = Board(program("mailbox_echo"), image, ram_bytes=RAM)
    with pytest.raises(McugptError, match=f"at most {mm.MAILBOX_MAX_PROMPT:,}"):
        board.run([1] * (mm.MAILBOX_MAX_PROMPT + 1), n_new=1)
    with pytest.raises(McugptError, match="seed"):
        board.run([1], n_new=1, seed=-1)


def test_uart_text_streams_whole_characters_even_when_split_across_writes(program, image):
    text = "héllo €, 🙂!"
    raw = text.encode()
    board = Board(program("uart_text"), image, ram_bytes=RAM)
    pieces = []
    result = board.run(list(raw), n_new=0, on_text=pieces.append)
    # one DATA write per byte: 'é' (2 bytes), '€' (3) and '🙂' (4) each span several writes,
    # yet every piece handed to on_text is whole characters, in order
    assert pieces == list(text)
    assert result.text == text and result.uart_bytes == raw


def test_invalid_utf8_becomes_replacement_characters(program, image):
    board = Board(program("uart_text"), image, ram_bytes=RAM)
    assert board.run([0x61, 0xFF, 0x62, 0xE2, 0x82], n_new=0).text == "a\ufffdb\ufffd"


# ----------------------------------------------------------------------------
# trace unit: stages, tokens, logits


def test_trace_attributes_reads_to_the_stage_that_made_them(program, tiny_build):
    image_path = tiny_build.out_dir / "flash.img"
    img = read_image(image_path, verify_weights=False)
    qkv_w = img.tensors[img.stages[2]["tensors"][0]]   # stage 2 = h0.attn_qkv, its weight matrix
    mlp_b = img.tensors[img.stages[6]["tensors"][1]]   # stage 6 = h0.mlp, its fc bias
    board = Board(program("dma_crc"), image_path, ram_bytes=RAM)
    result = board.run(reads((2, qkv_w["offset"], qkv_w["size"]), (6, mlp_b["offset"], mlp_b["size"]),
                             (2, 0, 100)), n_new=0)
    # the CRC unit reproduces the CRC32 the image's tensor table stores
    assert result.text.splitlines()[:2] == [
        f"crc={qkv_w['crc']:08x} sum={sum(image_path.read_bytes()[qkv_w['offset']:qkv_w['offset'] + qkv_w['size']])}",
        f"crc={mlp_b['crc']:08x} sum={sum(image_path.read_bytes()[mlp_b['offset']:mlp_b['offset'] + mlp_b['size']])}"]
    size = image_path.stat().st_size
    by_index = {s.index: s for s in result.stages}
    assert sorted(by_index) == [2, 6]
    qkv, mlp = by_index[2], by_index[6]
    assert (qkv.name, qkv.calls, qkv.flash_bytes) == ("h0.attn_qkv", 2, qkv_w["size"] + 100)
    assert (mlp.name, mlp.calls, mlp.flash_bytes) == ("h0.mlp", 1, mlp_b["size"])
    assert qkv.flash_ns == pytest.approx(read_time_ns("w25q-quad", qkv_w["size"], device_size=size)
                                         + read_time_ns("w25q-quad", 100, device_size=size))
    assert mlp.flash_ns == pytest.approx(read_time_ns("w25q-quad", mlp_b["size"], device_size=size))
    assert qkv.wall_s > 0 and mlp.wall_s > 0
    assert sum(s.flash_bytes for s in result.stages) == result.flash_bytes


def test_logits_channel_collects_each_steps_floats_and_tokens(program, image):
    vocab, tile, n_new = 1000, 300, 6   # tiles of 300, 300, 300, 100
    board = Board(program("logits"), image, ram_bytes=RAM)
    result = board.run([vocab, tile], n_new=n_new, dump_logits=True)
    targets = [(37 * k + 5) % vocab for k in range(n_new)]
    assert result.tokens == targets
    assert result.positions == list(range(n_new))
    assert len(result.logits) == n_new and len(result.token_wall_s) == n_new
    i = np.arange(vocab, dtype=np.float32)
    for k, t in enumerate(targets):
        # the logits dumped before token k are the ones that chose it
        assert result.logits[k].dtype == np.float32
        np.testing.assert_array_equal(result.logits[k], np.float32(-0.5) * (i - t) * (i - t))
        assert int(np.argmax(result.logits[k])) == result.tokens[k]
    assert result.tokens_per_s > 0


def test_without_dump_logits_there_are_no_logits(program, image):
    result = Board(program("logits"), image, ram_bytes=RAM).run([100, 100], n_new=3)
    assert result.logits is None and len(result.tokens) == 3


# ----------------------------------------------------------------------------
# RAM: the map, the load check, the scan


def test_peak_ram_scan_measures_a_known_stack_depth_and_arena_write(program, image):
    board = Board(program("ram_use"), image, ram_bytes=RAM)
    ram = board.run([4096, 1000], n_new=0).peak_ram
    assert ram.arena_bytes == 64 * KiB and ram.stack_bytes == 16 * KiB
    assert ram.arena_high_water == 1000                  # arena[0..999] written
    assert 4096 <= ram.stack_used <= 4096 + 64           # the 4 KiB VLA plus two small frames
    assert ram.static_bytes == 400 + 1024                # .data table[100] + .bss scratch[256]
    assert ram.peak_bytes == ram.static_bytes + ram.arena_high_water + ram.stack_used
    assert not ram.stack_overflowed
    # every run starts from freshly painted RAM
    small = board.run([0, 0], n_new=0).peak_ram
    assert small.arena_high_water == 0 and small.stack_used < 64


def test_sram_is_painted_before_reset(program, image):
    board = Board(program("ram_use"), image, ram_bytes=RAM)
    board.run([0, 0], n_new=0)
    top = bytes(board.uc.mem_read(mm.SRAM_BASE + RAM - 16, 16))
    assert top == struct.pack("<4I", *[PAINT] * 4)


def test_firmware_that_needs_more_sram_than_the_board_maps_is_refused(program, image):
    # ram_use: 0x590 bytes of .data/.bss, 16 KiB of stack, 64 KiB of arena = 83,344 bytes
    with pytest.raises(McugptError, match=r"^firmware needs 83,344 bytes of SRAM at 0x24000000, "
                                          r"the board maps 65,536$"):
        Board(program("ram_use"), image, ram_bytes=64 * KiB)


def test_sram_is_rounded_up_to_4_kib_and_not_more(program, image):
    board = Board(program("faults"), image, ram_bytes=100_000)
    assert board.ram_bytes == 102_400
    board.run([0, 0, mm.SRAM_BASE + 102_400 - 4], n_new=0)   # the last word: fine
    with pytest.raises(BoardFault) as e:
        board.run([0, 0, mm.SRAM_BASE + 102_400], n_new=0)   # the next one: unmapped
    assert e.value.address == mm.SRAM_BASE + 102_400


def test_the_data_tcm_is_mapped_exactly_when_the_board_has_one(program, image):
    tcm = 64 * KiB
    board = Board(program("faults"), image, ram_bytes=RAM, dtcm_bytes=tcm)
    board.run([0, 0, mm.DTCM_BASE + tcm - 4], n_new=0)   # the last word: fine
    with pytest.raises(BoardFault) as e:
        board.run([0, 0, mm.DTCM_BASE + tcm], n_new=0)
    assert e.value.address == mm.DTCM_BASE + tcm and "past the end of the data TCM" in str(e.value)
    with pytest.raises(BoardFault) as e:   # a board without one (sim64)
        Board(program("faults"), image, ram_bytes=RAM).run([0, 0, mm.DTCM_BASE], n_new=0)
    assert e.value.kind == "unmapped" and "which this board does not have" in str(e.value)


# ----------------------------------------------------------------------------
# faults: one line each, naming what, where and during which stage


def fault(program, image, prompt, **kw):
    board = Board(program("faults"), image, ram_bytes=RAM)
    with pytest.raises(BoardFault) as e:
        board.run(prompt, n_new=0, **kw)
    assert "\n" not in str(e.value)
    return e.value


def test_touching_ram_beyond_the_map_names_address_pc_function_and_stage(program, tiny_build):
    addr = mm.SRAM_BASE + RAM + 0x10
    board = Board(program("faults"), tiny_build.out_dir / "flash.img", ram_bytes=RAM)
    for mode, op in ((0, "write"), (1, "read")):
        with pytest.raises(BoardFault) as e:
            board.run([mode, 12, addr], n_new=0)   # stage 12 of the tiny model: h1.mlp
        f = e.value
        fn = "poke_beyond_ram" if op == "write" else "peek_beyond_ram"
        assert (f.kind, f.address, f.function, f.stage) == ("unmapped", addr, fn, "h1.mlp")
        start, end, _ = next(x for x in board.firmware.funcs if x[2] == fn)
        assert start <= f.pc < end
        msg = str(f)
        assert f"4-byte {op} at unmapped address 0x{addr:08x}" in msg
        assert f"the board maps {RAM:,} bytes" in msg
        assert f"PC 0x{f.pc:08x} in {fn}" in msg and "stage 12 (h1.mlp)" in msg


def test_an_infinite_loop_hits_the_instruction_limit(program, image):
    f = fault(program, image, [2, 4], max_instructions=2_000_000)
    assert f.kind == "instruction_limit" and f.function == "spin_forever"
    assert "did not finish within 2,000,000 instructions" in str(f) and "in stage 4" in str(f)


def test_an_infinite_loop_hits_the_timeout(program, image):
    f = fault(program, image, [2, 4], timeout_s=0.2)
    assert f.kind == "timeout" and f.function == "spin_forever"
    assert "did not finish within the 0.2 s timeout" in str(f)


def test_a_breakpoint_is_a_fault(program, image):
    f = fault(program, image, [3, 0])
    assert f.kind == "exception" and f.function == "hit_breakpoint"
    assert "breakpoint (BKPT #0x42)" in str(f)


def test_an_undefined_instruction_is_a_fault(program, image):
    f = fault(program, image, [4, 0])
    assert f.kind == "invalid_instruction" and f.function == "run_undefined_instruction"
    assert "invalid instruction 0xde07" in str(f)   # UDF #7


def test_a_jump_into_unmapped_or_execute_never_memory_is_a_fault(program, image):
    f = fault(program, image, [5, 0, 0x10000000])
    assert (f.kind, f.address) == ("unmapped", 0x10000000) and "fetch" in str(f)
    f = fault(program, image, [5, 0, mm.FLASHCTL.base])
    assert (f.kind, f.address) == ("exception", mm.FLASHCTL.base) and "execute-never" in str(f)


def test_writing_code_flash_is_a_fault(program, image):
    f = fault(program, image, [0, 0, mm.CODE_BASE + 0x100])
    assert (f.kind, f.address, f.function) == ("protection", mm.CODE_BASE + 0x100, "poke_beyond_ram")
    assert "read-only code flash" in str(f)


def test_a_register_that_does_not_exist_is_a_bus_error(program, image):
    f = fault(program, image, [6, 0])
    assert (f.kind, f.function, f.address) == ("bus_error", "write_undefined_register", mm.FLASHCTL.base + 0x100)
    assert "FLASHCTL+0x100, which has no register" in str(f)


@pytest.mark.parametrize("mmio", ["native", "python"])
@pytest.mark.parametrize("ctl", [mm.FLASHCTL, mm.PSRAMCTL])
def test_a_narrow_write_to_a_plain_register_is_a_bus_error(program, image, ctl, mmio, monkeypatch):
    """ADDR is stored by the native callback (emulator/mmio.py) only when the write is 32-bit."""
    monkeypatch.setenv("MCUGPT_MMIO", mmio)
    f = fault(program, image, [8, 0, ctl.base])
    assert (f.kind, f.function, f.address) == ("bus_error", "write_half_register", ctl.base + 4)
    assert f"2-byte write of {ctl.name}.ADDR (registers are 32-bit)" in str(f)


def test_an_unknown_exit_code_from_a_fault_handler_is_a_fault(program, image):
    f = fault(program, image, [7, 0, 0xFA17, 3, 0, 0])   # crt0.c's Fault_Handler code, HardFault
    assert f.kind == "fault_handler" and "unknown exit code 64023 (0xfa17" in str(f) and "ARG0 3" in str(f)


# ----------------------------------------------------------------------------
# firmware exit codes: one line each, built from memory_map.EXIT_CODES and the arguments


def exit_error(program, image, code, a0=0, a1=0, a2=0):
    board = Board(program("faults"), image, ram_bytes=RAM)
    with pytest.raises(FirmwareError) as e:
        board.run([7, 0, code, a0, a1, a2], n_new=0)
    assert isinstance(e.value, McugptError) and "\n" not in str(e.value)
    assert (e.value.code, e.value.exit_args) == (code, (a0, a1, a2))
    return str(e.value)


def test_bad_tensor_crc_names_the_tensor_and_both_crcs(program, tiny_build):
    image_path = tiny_build.out_dir / "flash.img"
    name = read_image(image_path, verify_weights=False).tensors[3]["name"]
    msg = exit_error(program, image_path, EXIT["BAD_TENSOR_CRC"], 3, 0xDEADBEEF, 0x12345678)
    assert msg.startswith(f"firmware exit BAD_TENSOR_CRC: weight blob CRC32 mismatch in tensor 3 '{name}' ")
    assert msg.endswith("read twice: stored 0xdeadbeef, computed 0x12345678 (a persistent error: the flash image is corrupt)")


def test_context_full_gives_the_numbers(program, image):
    msg = exit_error(program, image, EXIT["CONTEXT_FULL"], 1030, 1024)
    assert msg == "firmware exit CONTEXT_FULL: prompt + new tokens need 1,030 positions, the planned context is 1,024"


def test_bad_mailbox_names_the_field(program, image):
    msg = exit_error(program, image, EXIT["BAD_MAILBOX"], mm.MAILBOX["TOP_K"], 0)
    assert msg == "firmware exit BAD_MAILBOX: mailbox TOP_K = 0 (0x0) is wrong or out of range"
    msg = exit_error(program, image, EXIT["BAD_MAILBOX"], mm.MAILBOX["PROMPT"] + 8, 99999)
    assert "mailbox PROMPT[2] = 99999" in msg


def test_every_other_exit_code_gets_its_documented_meaning(program, image):
    msg = exit_error(program, image, EXIT["BAD_HEADER_CRC"], 0x1111, 0x2222)
    assert msg == "firmware exit BAD_HEADER_CRC: flash image header CRC, read twice: stored 0x00001111, computed 0x00002222"
    assert exit_error(program, image, EXIT["BAD_MAGIC"], 0xFFFFFFFF) == \
        "firmware exit BAD_MAGIC: flash image magic wrong: found 0xffffffff"


def test_the_partial_result_comes_with_the_error(program, image):
    board = Board(program("uart_text"), image, ram_bytes=RAM)
    assert board.run([0x6F, 0x6B], n_new=0).text == "ok"
    board = Board(program("faults"), image, ram_bytes=RAM)
    with pytest.raises(FirmwareError) as e:
        board.run([7, 0, EXIT["CONTEXT_FULL"], 10, 5, 0], n_new=0)
    assert e.value.result.exit_code == EXIT["CONTEXT_FULL"]
    assert e.value.result.peak_ram.stack_used > 0


# ----------------------------------------------------------------------------
# with the real firmware (runtime_c/, compiler/firmware.py) on the tiny model


@pytest.fixture(scope="module")
def tiny_firmware(tiny_build, tmp_path_factory):
    firmware = pytest.importorskip("compiler.firmware")
    if importlib.util.find_spec("ziglang") is None:
        pytest.skip("ziglang is not installed in this Python")
    out = tmp_path_factory.mktemp("tiny_firmware")
    (out / "include").mkdir()
    for header in (tiny_build.out_dir / "include").glob("*.h"):
        (out / "include" / header.name).write_bytes(header.read_bytes())
    return firmware.build(out, tiny_build.plan, cc="zig")


@pytest.mark.parametrize("temperature, top_k, seed", [(0.0, 40, 0), (0.9, 40, 7)])
def test_the_real_firmware_reproduces_the_reference(tiny_firmware, tiny_build, tiny, temperature, top_k, seed):
    from compiler.reference import Reference, generate
    from compiler.sampler import Sampling

    cfg, weights = tiny
    prompt = [15496, 11, 616, 1438, 318]   # "Hello, my name is"
    ref = generate(Reference(cfg, weights), prompt, 4, Sampling(temperature, top_k, seed), keep_logits=True)
    board = Board(tiny_firmware, tiny_build.out_dir / "flash.img")
    result = board.run(prompt, n_new=4, temperature=temperature, top_k=top_k, seed=seed, dump_logits=True)
    assert result.tokens == ref.tokens
    for mine, theirs in zip(result.logits, ref.logits):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-4)
    # every stage of the image ran once per forward pass (the prompt in chunks of up to the
    # plan's prefill chunk, then new - 1 single positions), the head once per token
    names = [board.stage_label(i) for i in range(len(board.image.stages))]
    assert [s.name for s in result.stages] == names
    chunks = -(-len(prompt) // tiny_build.plan.prefill_chunk)
    assert [s.calls for s in result.stages[:-1]] == [chunks + 4 - 1] * (len(names) - 1)
    assert result.stages[-1].calls == 4
    # the measured peak stays within the plan's
    assert 0 < result.peak_ram.peak_bytes <= tiny_build.plan.peak_ram_bytes
