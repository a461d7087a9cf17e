"""Specification of the KV cache in external PSRAM: the PSRAM controller of the emulated board
(emulator/peripherals.py PsramController, emulator/board.py), the firmware's PSRAM path
(runtime_c/runtime.c stage_attn_core with KV_IN_SRAM 0, hal psram_read/psram_write), and
the figures a run reports.

On a board with 456 KiB of SRAM (stm32h7s78-dk) the planner puts the KV cache in PSRAM when SRAM
cannot hold it: [layer][keys, values][head][position][head_dim] floats from PSRAM address
0. Per position and layer the firmware writes each head's key and value row (one transfer
of head_dim floats each), then per head reads the keys of positions 0..pos in blocks of
block_positions rows (pass 1: scores), and the values likewise (pass 2). The tokens and
logits must be the reference's, the logits bit for bit those of the same model with the
cache in SRAM, and the bytes and simulated time the board reports must be this layout's
arithmetic on target/psram_timing.py.
"""

import dataclasses
import shutil
import subprocess

import numpy as np
import pytest
from test_board import image, program  # noqa: F401  (fixtures: the board's test programs)
from test_runtime_host import run_host

from compiler.firmware import RUNTIME_C, _command, build, render_linker_script
from compiler.pipeline import compile_model
from compiler.reference import KVCache, Reference, generate
from compiler.sampler import Sampling
from emulator.board import Board, FirmwareError
from emulator.mmio import native_library
from target import memory_map as mm
from target import toolchain
from target.boards import flash_timing_of, get_board, psram_timing_of
from target.errors import McugptError
from target.psram_timing import transfer_time_ns

KiB = 1024
STM32H7 = get_board("stm32h7s78-dk")
# tiny's whole 128-position cache (128 KiB) fits the board's 456 KiB next to a weight tile,
# so the planner would keep it in SRAM; with 160 KiB of the board's SRAM for the model it
# cannot, and the cache goes to PSRAM. The board still maps all 456 KiB.
TINY_RAM = 160 * KiB
PROMPT = "The staged method runs a language model on a microcontroller by"
LONG_PROMPT = PROMPT + " streaming every weight from flash and keeping the cache in PSRAM, one block at a time"
ERROR_DONE = mm.FLASH_STATUS["ERROR"] | mm.FLASH_STATUS["DONE"]
DONE = mm.FLASH_STATUS["DONE"]


# ----------------------------------------------------------------------------
# builds and helpers


@pytest.fixture(scope="module")
def psram_tiny(tmp_path_factory):
    # the PSRAM holds the KV cache alone here (tiers flash-only): tests/test_tiers.py adds weights
    return compile_model("tiny", tmp_path_factory.mktemp("psram_tiny"), board="stm32h7s78-dk", ram=TINY_RAM,
                         tiers="flash-only",
                         quiet=True)


@pytest.fixture(scope="module")
def sram_tiny(tmp_path_factory):
    """The same model for the same board with the whole cache in SRAM."""
    return compile_model("tiny", tmp_path_factory.mktemp("sram_tiny"), board="stm32h7s78-dk", tiers="flash-only",
                         quiet=True)


@pytest.fixture(scope="module")
def tiny_ref(tiny):
    cfg, w = tiny
    return Reference(cfg, w)


def board_run(build_dir, prompt, n_new, sampling=Sampling(), profile=STM32H7, chunk=0, **board_kw):
    """Run a build on the board the profile describes (or with board_kw overriding it);
    `chunk`: prompt positions per chunk (0: the plan's; 1: one at a time, a trace entry each)."""
    kw = dict(ram_bytes=profile.sram_bytes, flash_preset=flash_timing_of(profile.flash[0]),
              psram_preset=psram_timing_of(profile.psram), psram_bytes=profile.psram_bytes,
              dtcm_bytes=profile.dtcm.bytes, dcache=profile.dcache)
    kw.update(board_kw)
    with Board(build_dir / "firmware.elf", build_dir / "flash.img", **kw) as board:
        result = board.run(prompt, n_new, temperature=sampling.temperature, top_k=sampling.top_k,
                           seed=sampling.seed, dump_logits=True, chunk=chunk)
        kv = board.psram.read(0, board.psram.size) if board.psram is not None else None
    return result, kv


def assert_matches_reference(result, ref):
    assert result.tokens == ref.tokens
    assert len(result.logits) == len(ref.logits)
    for step, (got, want) in enumerate(zip(result.logits, ref.logits)):
        np.testing.assert_array_equal(got, want, err_msg=f"logits of step {step}")


def layout(plan):
    m = plan["model"]
    n_layer, n_head, n_embd = m["n_layer"], m["n_head"], m["n_embd"]
    head_dim = n_embd // n_head
    return n_layer, n_head, n_embd, head_dim, plan["ctx"], plan["kv"]["block_positions"]


def kv_transfers(plan, positions):
    """Every PSRAM transfer the firmware makes for these positions: (address, bytes, write),
    from the documented layout alone."""
    n_layer, n_head, _, head_dim, ctx, block = layout(plan)
    row = head_dim * 4 + 4   # the floats, then the row's check word

    def addr(layer, values, head, t):
        return (((layer * 2 + values) * n_head + head) * ctx + t) * row

    out = []
    for pos in positions:
        for layer in range(n_layer):
            for head in range(n_head):
                out += [(addr(layer, 0, head, pos), row, True), (addr(layer, 1, head, pos), row, True)]
            for head in range(n_head):
                for values in (0, 1):
                    for t in range(0, pos + 1, block):
                        out.append((addr(layer, values, head, t), min(block, pos + 1 - t) * row, False))
    return out


def n_forward(prompt, n_new):
    """Positions the firmware computes: the prompt, and every new token but the last."""
    return len(prompt) + max(n_new - 1, 0)


# ----------------------------------------------------------------------------
# the plan


def test_the_plan_puts_the_kv_cache_in_psram_and_one_block_in_the_arena(psram_tiny):
    plan = psram_tiny.plan.to_dict()
    n_layer, n_head, n_embd, head_dim, ctx, block = layout(plan)
    assert plan["kv"]["placement"] == "psram"
    assert plan["kv"]["layout"] == ("[layer][keys, values][head][position][head_dim], then a check word "
                                    "from PSRAM address 0")
    assert plan["kv"]["bytes"] == 2 * n_layer * ctx * n_head * (head_dim * 4 + 4) <= STM32H7.psram_bytes
    buffers = {b["name"]: b["bytes"] for b in plan["buffers"]}
    assert buffers["kv"] == 0 and buffers["kv_block"] == block * (head_dim * 4 + 4)
    header = (psram_tiny.out_dir / "include" / "model_plan.h").read_text()
    assert "#define KV_IN_SRAM     0" in header and f"#define KV_BLOCK_POSITIONS {block}" in header


def test_the_psram_path_compiles_without_warnings(psram_tiny, tmp_path):
    """As test_firmware_build's strict check, on a plan with KV_IN_SRAM 0."""
    strict = ["-Werror", "-Wpedantic", "-Wconversion", "-Wshadow"]
    ld = tmp_path / "firmware.ld"
    ld.write_text(render_linker_script(psram_tiny.plan))
    for cc in (c for c in toolchain.NAMES if toolchain.available(c)):
        cmd = _command(cc, psram_tiny.out_dir / "include", tmp_path / f"fw_{cc}", ld, False,
                       RUNTIME_C)
        res = subprocess.run([*cmd, *strict], capture_output=True, text=True)
        assert res.returncode == 0, f"{cc}: {res.stderr}"


# ----------------------------------------------------------------------------
# tokens and logits


@pytest.mark.parametrize("text", [PROMPT, LONG_PROMPT], ids=["one-block", "three-blocks"])
def test_greedy_tokens_and_logits_equal_the_reference(text, psram_tiny, tiny_ref, tok):
    prompt = tok.encode(text)
    n_new = 8
    ref = generate(tiny_ref, prompt, n_new, Sampling(), keep_logits=True, n_ctx=psram_tiny.plan.ctx)
    result, _ = board_run(psram_tiny.out_dir, prompt, n_new)
    assert_matches_reference(result, ref)
    assert result.peak_ram.peak_bytes <= TINY_RAM <= STM32H7.sram_bytes


@pytest.mark.parametrize("seed", [3, 2026])
def test_seeded_sampling_equals_the_reference(seed, psram_tiny, tiny_ref, tok):
    prompt = tok.encode(PROMPT)
    sampling = Sampling(temperature=0.9, top_k=40, seed=seed)
    ref = generate(tiny_ref, prompt, 10, sampling, keep_logits=True, n_ctx=psram_tiny.plan.ctx)
    result, _ = board_run(psram_tiny.out_dir, prompt, 10, sampling)
    assert_matches_reference(result, ref)


def test_the_psram_path_gives_the_bits_of_the_sram_path(psram_tiny, sram_tiny, tok):
    """The same kernels in the same order over blocks read back by DMA: identical floats."""
    assert sram_tiny.plan.kv.placement == "sram"
    prompt = tok.encode(LONG_PROMPT)
    in_psram, _ = board_run(psram_tiny.out_dir, prompt, 6)
    in_sram, _ = board_run(sram_tiny.out_dir, prompt, 6)
    assert in_psram.tokens == in_sram.tokens
    for a, b in zip(in_psram.logits, in_sram.logits):
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
    assert in_sram.psram_bytes == 0 and in_psram.psram_bytes > 0


def without_wall_times(value):
    """A RunResult's fields as plain data, less the host's wall times (which differ per run)."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: without_wall_times(v) for k, v in value.items() if "wall" not in k}
    if isinstance(value, (list, tuple)):
        return [without_wall_times(v) for v in value]
    return value


@pytest.mark.parametrize("record", [False, True], ids=["plain", "timeline"])
def test_the_native_register_stores_change_nothing_the_board_reports(psram_tiny, tok, monkeypatch, record):
    """emulator/mmio.py: the native callback stores the DMA controllers' ADDR, DST/RAM and LEN;
    with MCUGPT_MMIO=python (as without a C compiler) the Python handlers do. The same run
    either way: tokens, every time, byte count and counter, the timeline and the DMA log."""
    if native_library() is None:
        pytest.skip("no host C compiler: the register stores are Python's anyway")
    runs = {}
    for mode in ("native", "python"):
        monkeypatch.setenv("MCUGPT_MMIO", mode)
        with Board.for_profile(psram_tiny.out_dir / "firmware.elf", psram_tiny.out_dir / "flash.img", STM32H7,
                               ram_bytes=TINY_RAM, timeline=record, record_dma=record) as board:
            result = board.run(tok.encode(PROMPT), 4)
            assert board.flashctl.mmio == board.psramctl.mmio == mode
            stored = board.flashctl.plain_regs.stored + board.psramctl.plain_regs.stored
            assert (stored > 0) == (mode == "native"), stored
            runs[mode] = without_wall_times(result), board.flashctl.log, board.psramctl.log
    assert runs["native"][0]["psram_bytes"] > 0 and runs["native"][0]["dcache"]["line_fills"] > 0
    assert runs["native"] == runs["python"]


def test_the_cache_in_psram_is_the_references_at_the_documented_layout(psram_tiny, tiny, tiny_ref, tok):
    cfg, _ = tiny
    plan = psram_tiny.plan.to_dict()
    n_layer, n_head, n_embd, head_dim, ctx, _ = layout(plan)
    prompt = tok.encode(PROMPT)
    result, psram = board_run(psram_tiny.out_dir, prompt, 5)
    fed = prompt + result.tokens[:-1]
    cache = KVCache.empty(cfg, ctx)
    for pos, t in enumerate(fed):
        tiny_ref.forward(t, pos, cache)
    rows = np.frombuffer(psram[:plan["kv"]["bytes"]], "<u4").reshape(n_layer, 2, n_head, ctx, head_dim + 1)
    got = rows[..., :head_dim].view("<f4")
    for values, want in ((0, cache.keys), (1, cache.values)):
        want = want.reshape(n_layer, ctx, n_head, head_dim).transpose(0, 2, 1, 3)
        np.testing.assert_allclose(got[:, values], want, atol=1e-5, rtol=1e-5)
    # each row's check word: the multiply-add hash of its words, seeded with the row's PSRAM address
    row_bytes = (head_dim + 1) * 4
    for index in np.ndindex(n_layer, 2, n_head, len(fed)):
        address = (((index[0] * 2 + index[1]) * n_head + index[2]) * ctx + index[3]) * row_bytes
        assert rows[index][head_dim] == check_word(rows[index][:head_dim], address), index
    assert not np.any(rows[:, :, :, len(fed):])   # nothing written past the positions computed
    assert not any(psram[plan["kv"]["bytes"]:])  # nor past the cache


def check_word(words, seed: int) -> int:
    """The check word docs/runtime.md specifies: a multiply-add hash over 32-bit words in four
    lanes, lane j starting at (2166136261 xor the seed) + j and taking words j, j + 4, ...,
    each step h = h * 16777619 + w; a last partial group goes to lane 0; then the lanes
    folded: ((h0 * P + h1) * P + h2) * P + h3, all modulo 2^32."""
    P, M = 16777619, 0xFFFFFFFF
    basis = 2166136261 ^ seed
    h = [(basis + j) & M for j in range(4)]
    whole = len(words) // 4 * 4
    for k in range(whole):
        h[k % 4] = (h[k % 4] * P + int(words[k])) & M
    for k in range(whole, len(words)):
        h[0] = (h[0] * P + int(words[k])) & M
    return (((h[0] * P + h[1]) * P + h[2]) * P + h[3]) & M


# ----------------------------------------------------------------------------
# what a run reports: bytes and time


def test_psram_bytes_per_position_are_the_layouts(psram_tiny, tok):
    plan = psram_tiny.plan.to_dict()
    n_layer, n_head, n_embd, _, _, _ = layout(plan)
    prompt = tok.encode(LONG_PROMPT)
    n_new = 4
    result, _ = board_run(psram_tiny.out_dir, prompt, n_new, chunk=1)
    positions = [p.position for p in result.per_position]
    assert positions == list(range(n_forward(prompt, n_new)))
    per_position = 2 * n_layer * (n_embd * 4 + n_head * 4)   # keys and values, each row's check word
    for p in result.per_position:
        reads = (p.position + 1) * per_position
        assert p.psram_bytes == reads + per_position, f"position {p.position}"
    assert result.psram_bytes == sum(p.psram_bytes for p in result.per_position)
    assert result.psram_transfers["write"]["bytes"] == len(positions) * per_position
    assert result.psram_transfers["read"]["bytes"] == sum((p + 1) * per_position for p in positions)
    # attributed to the attn_core stages, and to nothing else
    for s in result.stages:
        if s.name.endswith("attn_core"):
            assert s.psram_bytes == result.psram_bytes // n_layer
        else:
            assert s.psram_bytes == 0 and s.psram_ns == 0.0


@pytest.mark.parametrize("preset", ["aps256xxn-obr", "s70kl1281", "octal-psram-200", "quad-psram-80"])
def test_psram_time_is_the_timing_models_over_the_transfers(preset, psram_tiny, tok):
    plan = psram_tiny.plan.to_dict()
    prompt = tok.encode(LONG_PROMPT)
    n_new = 3
    result, _ = board_run(psram_tiny.out_dir, prompt, n_new, psram_preset=preset, psram_bytes=8 << 20, chunk=1)
    transfers = kv_transfers(plan, range(n_forward(prompt, n_new)))
    expected = sum(transfer_time_ns(preset, n, write, addr) for addr, n, write in transfers)
    assert result.psram_ns == pytest.approx(expected, rel=1e-12)
    assert result.psram_transfers["read"]["count"] == sum(1 for *_, w in transfers if not w)
    assert result.psram_transfers["write"]["count"] == sum(1 for *_, w in transfers if w)
    assert sum(s.psram_ns for s in result.stages) == pytest.approx(expected, rel=1e-12)
    for p in result.per_position:
        want = sum(transfer_time_ns(preset, n, w, a) for a, n, w in kv_transfers(plan, [p.position]))
        assert p.psram_ns == pytest.approx(want, rel=1e-12)


# ----------------------------------------------------------------------------
# boards without (enough) PSRAM


def test_a_board_without_psram_stops_with_one_psram_error_line(psram_tiny, tok):
    with pytest.raises(McugptError) as e:
        board_run(psram_tiny.out_dir, tok.encode(PROMPT), 2, psram_preset=None, psram_bytes=0)
    err = e.value
    assert isinstance(err, FirmwareError) and err.name == "PSRAM_ERROR"
    head_row = layout(psram_tiny.plan.to_dict())[3] * 4 + 4   # with its check word
    assert err.exit_args == (ERROR_DONE, 0, head_row)  # the first write: layer 0, head 0, position 0
    msg = str(err)
    assert "\n" not in msg
    assert msg.startswith("firmware exit PSRAM_ERROR: PSRAM controller error (STATUS DONE|ERROR): ")
    assert "no PSRAM" in msg
    assert err.result.psram_bytes == 0 and err.result.tokens == []


def test_a_psram_smaller_than_the_cache_stops_at_the_first_transfer_past_its_end(psram_tiny, tok):
    plan = psram_tiny.plan.to_dict()
    n_layer, n_head, _, head_dim, ctx, _ = layout(plan)
    size = plan["kv"]["bytes"] // n_layer   # layer 0's keys and values only
    with pytest.raises(FirmwareError) as e:
        board_run(psram_tiny.out_dir, tok.encode(PROMPT), 2, psram_bytes=size)
    assert e.value.name == "PSRAM_ERROR"
    assert e.value.exit_args == (ERROR_DONE, size, head_dim * 4 + 4)   # layer 1, head 0, position 0
    assert f"PSRAM 0x{size:x}" in str(e.value) and "past the end" in str(e.value)


def test_board_psram_arguments_are_checked(psram_tiny):
    elf, img = psram_tiny.out_dir / "firmware.elf", psram_tiny.out_dir / "flash.img"
    with pytest.raises(McugptError, match="without a PSRAM preset"):
        Board(elf, img, ram_bytes=STM32H7.sram_bytes, psram_bytes=1 << 20)
    with pytest.raises(McugptError, match="unknown PSRAM preset"):
        Board(elf, img, ram_bytes=STM32H7.sram_bytes, psram_preset="nope")
    with Board.for_profile(elf, img, STM32H7) as board:
        assert board.psram.size == STM32H7.psram_bytes and board.psram.timing.name == STM32H7.psram.part
        assert board.ram_bytes == STM32H7.sram_bytes
    with pytest.raises(McugptError, match=r"needs [\d,]+ bytes of data TCM at 0x20000000, the board maps 0"):
        Board.for_profile(elf, img, get_board("sim64"))   # built for a board with a data TCM


# ----------------------------------------------------------------------------
# the controller itself, driven by tests/board_firmware/psram_dma.c

RAM = 256 * KiB
READ, WRITE = mm.PSRAM_CMD["READ"], mm.PSRAM_CMD["WRITE"]


def pattern(n):
    return bytes((i * 7 + 3) & 0xFF for i in range(n))


def transfers(*items):
    """psram_dma's prompt: (stage, command, PSRAM address, arena offset, length) per transfer."""
    words = [len(items)]
    for t in items:
        words += list(t)
    return words


def test_the_controller_moves_bytes_both_ways_with_one_dma_each(program, image):
    pat = pattern(64 * KiB)
    board = Board(program("psram_dma"), image, ram_bytes=RAM, psram_preset="octal-psram-200")
    # write arena[0:4096] to PSRAM 0x1000, read it back into arena[8192:12288], then read
    # 100 bytes starting inside it into arena[20000:20100]
    result = board.run(transfers((1, WRITE, 0x1000, 0, 4096), (2, READ, 0x1000, 8192, 4096),
                                 (3, READ, 0x1010, 20000, 100)), n_new=0)
    assert result.text == (f"status={DONE} sum={sum(pat[:4096])}\n"
                           f"status={DONE} sum={sum(pat[:4096])}\n"
                           f"status={DONE} sum={sum(pat[16:116])}\n")
    assert board.psram.read(0x1000, 4096) == pat[:4096]
    assert board.psram.read(0, 0x1000) == bytes(0x1000)
    stages = {s.index: s for s in result.stages}
    t = [transfer_time_ns("octal-psram-200", 4096, True, 0x1000),
         transfer_time_ns("octal-psram-200", 4096, False, 0x1000),
         transfer_time_ns("octal-psram-200", 100, False, 0x1010)]
    assert [(stages[i].psram_bytes, stages[i].psram_ns) for i in (1, 2, 3)] == \
        [(4096, pytest.approx(t[0])), (4096, pytest.approx(t[1])), (100, pytest.approx(t[2]))]
    assert result.psram_bytes == 8292 and result.psram_ns == pytest.approx(sum(t))
    assert result.psram_transfers["read"]["count"] == 2 and result.psram_transfers["write"]["count"] == 1
    assert result.psram_errors == [] and result.flash_bytes == 0


def test_every_bad_transfer_sets_error_and_says_why(program, image):
    board = Board(program("psram_dma"), image, ram_bytes=RAM, psram_preset="quad-psram-80", psram_bytes=64 * KiB)
    outside = mm.SRAM_BASE + RAM - 4
    result = board.run(transfers((1, READ, 64 * KiB - 8, 0, 16),     # past the end of the PSRAM
                                 (1, WRITE, 0, 0, 0),                 # zero length
                                 (1, WRITE, 0, outside, 8),           # RAM range past the end of SRAM
                                 (1, 7, 0, 0, 4),                     # no such command
                                 (1, WRITE, 64 * KiB - 8, 0, 8)), n_new=0)   # the last 8 bytes: fine
    lines = result.text.splitlines()
    assert [line.split()[0] for line in lines] == [f"status={ERROR_DONE}"] * 4 + [f"status={DONE}"]
    assert all("clear=" not in line for line in lines)   # STATUS is write-1-to-clear
    errors = result.psram_errors
    assert len(errors) == 4
    assert "READ of 16 bytes at PSRAM 0xfff8" in errors[0] and "past the end of the 65,536-byte PSRAM" in errors[0]
    assert "zero length" in errors[1]
    assert f"0x{outside:08x}" in errors[2] and "not inside SRAM" in errors[2]
    assert "unknown PSRAM command 7" in errors[3]
    assert result.psram_bytes == 8   # only the good transfer reached the device


def test_without_psram_every_command_is_an_error(program, image):
    board = Board(program("psram_dma"), image, ram_bytes=RAM)
    result = board.run(transfers((1, WRITE, 0, 0, 64), (1, READ, 0, 0, 64)), n_new=0)
    assert result.text == f"status={ERROR_DONE} sum={sum(pattern(64))}\n" * 2
    assert result.psram_errors == ["WRITE of 64 bytes at PSRAM 0x0: this board has no PSRAM",
                                   "READ of 64 bytes at PSRAM 0x0: this board has no PSRAM"]
    assert result.psram_bytes == 0 and result.psram_transfers == {}


# ----------------------------------------------------------------------------
# the host build (hal_host.c: PSRAM is a static array)


@pytest.mark.parametrize("sanitize", [False, True], ids=["plain", "asan-ubsan"])
def test_the_host_build_with_the_cache_in_psram_equals_the_reference(sanitize, psram_tiny, tiny_ref, tok, tmp_path):
    shutil.copytree(psram_tiny.out_dir / "include", tmp_path / "include")
    try:
        binary = build(tmp_path, psram_tiny.plan, cc="host", sanitize=sanitize)
    except Exception as e:   # noqa: BLE001 - a toolchain without the sanitizer runtimes
        if sanitize and ("sanitize" in str(e).lower() or "asan" in str(e).lower()):
            pytest.skip(f"sanitizers unavailable: {e}")
        raise
    prompt = tok.encode(LONG_PROMPT)
    ref = generate(tiny_ref, prompt, 6, Sampling(), keep_logits=True, n_ctx=psram_tiny.plan.ctx)
    run = run_host(binary, psram_tiny.out_dir / "flash.img", prompt, 6, dump_dir=tmp_path)
    assert run.code == 0 and run.tokens == ref.tokens, run.stderr[-3000:]
    np.testing.assert_array_equal(run.logits, np.stack(ref.logits))


# ----------------------------------------------------------------------------
# larger models on the stm32h7s78-dk


@pytest.fixture(scope="module")
def distil_h7(tmp_path_factory):
    # int8: distilgpt2's fp32 image (313 MiB) does not fit the board's 128 MiB of flash; the
    # float32 KV cache (tests/test_kv_int8.py runs the int8 one)
    return compile_model("distilgpt2", tmp_path_factory.mktemp("distil_h7"), board="stm32h7s78-dk",
                         dtype="int8", kv_dtype="fp32", tiers="flash-only", quiet=True)


def test_distilgpt2_int8_on_the_stm32h7s78_dk_equals_the_reference(distil_h7, distil, tok):
    cfg, w = distil
    plan = distil_h7.plan.to_dict()
    assert plan["kv"]["placement"] == "psram"
    prompt = tok.encode("In 1969, the first")
    ref = generate(Reference(cfg, w, dtype="int8"), prompt, 3, Sampling(), keep_logits=True, n_ctx=plan["ctx"])
    result, _ = board_run(distil_h7.out_dir, prompt, 3)
    assert_matches_reference(result, ref)
    assert result.peak_ram.peak_bytes <= STM32H7.sram_bytes
    n_layer, n_embd, n_head = cfg.n_layer, cfg.n_embd, cfg.n_head
    per_position = 2 * n_layer * (n_embd * 4 + n_head * 4)   # each row with its check word
    assert result.psram_bytes == sum((p + 2) * per_position for p in range(n_forward(prompt, 3)))


def test_gpt2_124m_fp32_does_not_fit_the_stm32h7s78_dks_flash(tmp_path):
    """Its fp32 image is 475 MiB; the board has one 128 MiB flash part. compile says so in one
    line, with what would fit, and writes nothing."""
    with pytest.raises(McugptError) as e:
        compile_model("gpt2", tmp_path / "gpt2", board="stm32h7s78-dk", quiet=True)
    msg = str(e.value)
    assert msg.startswith("gpt2 (fp32): the flash image is 475.5 MiB (498,622,464 bytes), more than the "
                          "stm32h7s78-dk board's 128 MiB of flash (1 x mx66uw1g45g)")
    assert "--dtype int8 (122.7 MiB)" in msg and "\n" not in msg
    assert not (tmp_path / "gpt2" / "flash.img").exists()
