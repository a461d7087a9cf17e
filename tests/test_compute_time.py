"""Compute time is counted, not guessed (emulator/instruction_count.py, peripherals.CpuClock,
target/boards.py cpi; docs/board.md "Time", docs/boards.md "Cycles per instruction").

- the native block counter counts what the CPU executes: equal to a Python block hook's
  count, and to a UC_HOOK_CODE count plus the instructions IT blocks skip;
- on a matrix-vector kernel the count is the disassembly's: the int8 kernel's inline-asm
  loop is 54 instructions per 16 columns of a row pair, and the fp32 loop's body is read
  from llvm-objdump (when present);
- counts per stage are the same on two runs, the same at every position for the stages
  that do not depend on it (up to the data-dependent branches of tanh and top-k, a few
  per 10^3 at most), and affine in the position for attn_core;
- compute time is the executed blocks' cycles (the Cortex-M7 pipeline model,
  target/m7_pipeline.py) at the board's clock: the block counter's sum against a sum per
  executed instruction, and the scaling with the clock.
(What counting costs in wall time is a benchmark figure: `mcugpt bench`, "counter overhead".)
"""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import mcugpt
from test_board import image, program  # noqa: F401  (fixtures: the board's test programs)
from test_kernels_int8 import (
    BOARD_RAM,
    FLAG_BIAS,
    MODE_FP32,
    MODE_INT8,
    STAGE_MATVEC_F32,
    STAGE_MATVEC_I8,
    build_board_program,
)
from unicorn import UC_HOOK_CODE

from emulator import instruction_count as ic
from emulator.board import Board
from target import memory_map as mm
from target.m7_pipeline import FIXED, halfword_costs

RAM = 256 * 1024


def run_tiny(build, tok, text="Hello, my name is", n_new=4, **kw):
    with Board(build.out_dir / "firmware.elf", build.out_dir / "flash.img", **kw) as board:
        return board.run(tok.encode(text), n_new=n_new)


# ----------------------------------------------------------------------------
# the counter


def test_the_native_counter_is_built_and_used():
    assert ic.native_library() is not None, "no host C compiler: the counter falls back to Python"
    assert ic.native_library() is ic.native_library()       # compiled once, then cached


def test_the_native_count_equals_a_python_block_hooks(tiny_build, tok, monkeypatch):
    native = run_tiny(tiny_build, tok, "Hi", n_new=1)
    monkeypatch.setenv("MCUGPT_COUNTER", "python")
    python = run_tiny(tiny_build, tok, "Hi", n_new=1)
    assert native.counter == "native" and python.counter == "python"
    assert native.instructions == python.instructions > 1_000_000
    assert [c.instructions for c in native.stage_calls] == [c.instructions for c in python.stage_calls]


class _CodeHookBoard(Board):
    """A board that also counts instructions, and adds up their cycles, one UC_HOOK_CODE call
    at a time (slow)."""

    def _power_on(self, mailbox, on_text):
        entry = super()._power_on(mailbox, on_text)
        self.code_hook_count = 0
        self.hooked_cycles = 0
        code_end = max(a + len(d) for a, _v, _m, d in self.firmware.segments if a < mm.CODE_BASE + mm.CODE_SIZE)
        code = bytes(self.uc.mem_read(mm.CODE_BASE, code_end - mm.CODE_BASE))
        costs = halfword_costs(code, mm.CODE_BASE)

        def each(uc, address, size, _ud):
            self.code_hook_count += 1
            self.hooked_cycles += costs[(address - mm.CODE_BASE) // 2]

        self.uc.hook_add(UC_HOOK_CODE, each)
        return entry


def test_the_count_is_every_instruction_issued(program, image):  # noqa: F811
    """UC_HOOK_CODE reports every instruction executed except those an IT block skips
    (their condition fails); the block counter counts those too, as the M7 issues them."""
    board = _CodeHookBoard(program("dma_crc"), image, ram_bytes=RAM)
    r = board.run([2, 1, 0, 4096, 0, 1, 8192, 1000, 0], n_new=0)
    assert r.counter == "native"
    assert 0 <= r.instructions - board.code_hook_count <= 0.02 * r.instructions
    assert r.instructions > 10_000 and board.counter.outside == 0
    board.close()


def test_thumb_instruction_lengths():
    # movs r0, #0 (16-bit) | bl (32-bit: 0xF000 0xF800) | nop (16-bit) | ldr.w (0xF8D0 ...)
    code = bytes.fromhex("0020" "00f000f8" "00bf" "d0f80000")
    assert ic.thumb_instructions(code, 0, len(code)) == 4
    assert ic.thumb_instructions(code, 2, 4) == 1


# ----------------------------------------------------------------------------
# validation on a matrix-vector kernel


@pytest.fixture(scope="module")
def matvec_program(tmp_path_factory):
    return build_board_program("zig", tmp_path_factory.mktemp("matvec"))


def _kernel_instructions(elf, tmp_path, mode, rows, cols):
    """Counted instructions of one matvec_rows_i8 / matvec_rows call on the board."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, rows * cols).astype(np.int8).tobytes() if mode == MODE_INT8 else \
        rng.standard_normal(rows * cols).astype(np.float32).tobytes()
    x = rng.standard_normal(cols).astype(np.float32).tobytes()
    s = np.full(rows, 0.01, np.float32).tobytes()
    blob = bytearray()
    addrs = []
    for part in (x, w, s, s):
        addrs.append(len(blob))
        blob += part + bytes(-len(part) % 256)
    img = tmp_path / f"mv_{mode}_{rows}_{cols}.img"
    img.write_bytes(bytes(blob))
    prompt = [1, mode, rows, cols, FLAG_BIAS, addrs[0], addrs[1], addrs[2], addrs[3], 1]
    with Board(elf, img, ram_bytes=BOARD_RAM) as board:
        r = board.run(prompt, n_new=0, dump_logits=True)
    stage = STAGE_MATVEC_I8 if mode == MODE_INT8 else STAGE_MATVEC_F32
    return next(s.instructions for s in r.stages if s.index == stage)


def test_the_int8_kernels_count_is_its_inline_assembly(matvec_program, tmp_path):
    """dot2_i8's main loop is one asm block: 4 x 13 + 2 = 54 instructions per 16 columns of
    two rows (kernels_int8.c). 16 more columns on 8 rows = 4 row pairs x 54 more."""
    a = _kernel_instructions(matvec_program, tmp_path, MODE_INT8, 8, 256)
    b = _kernel_instructions(matvec_program, tmp_path, MODE_INT8, 8, 512)
    assert b - a == 4 * (512 - 256) // 16 * 54


def _fp32_loop_from_disassembly(elf):
    """(instructions, multiply-accumulates) of vec_dot's innermost loop, from llvm-objdump."""
    objdump = shutil.which("llvm-objdump") or "/usr/bin/llvm-objdump"
    if not shutil.which(objdump):
        pytest.skip("llvm-objdump is not installed")
    out = subprocess.run([objdump, "--triple=thumbv7em-none-eabihf", "--mattr=+fp-armv8", "-d",
                          "--no-show-raw-insn", str(elf)], capture_output=True, text=True, check=True).stdout
    body = out[out.index("<vec_dot>:"):]
    body = body[:body.index("\n\n")]
    insns = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"^\s*([0-9a-f]+):\s+(.*)$", body, re.M)]
    loops = []
    for addr, text in insns:
        m = re.match(r"b(?:ne|hi|gt|lt|ge|cc|cs|lo|hs)\S*\s+0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr:
            loop = [t for a, t in insns if int(m.group(1), 16) <= a <= addr]
            loops.append((len(loop), sum(t.startswith(("vmla", "vfma")) for t in loop)))
    return max(loops, key=lambda l: l[1])


def test_the_fp32_kernels_count_is_its_disassembled_loop(matvec_program, tmp_path):
    n, macs = _fp32_loop_from_disassembly(matvec_program)
    assert macs >= 4
    rows, c0, c1 = 8, 512, 1024                      # multiples of every unrolling
    a = _kernel_instructions(matvec_program, tmp_path, MODE_FP32, rows, c0)
    b = _kernel_instructions(matvec_program, tmp_path, MODE_FP32, rows, c1)
    assert b - a == rows * (c1 - c0) // macs * n


# ----------------------------------------------------------------------------
# counts per stage


def test_counts_per_stage_are_the_same_on_two_runs(tiny_build, tok):
    a, b = run_tiny(tiny_build, tok), run_tiny(tiny_build, tok)
    assert [c.instructions for c in a.stage_calls] == [c.instructions for c in b.stage_calls]
    assert a.instructions == b.instructions and a.compute_ns == b.compute_ns


def test_counts_per_stage_do_not_depend_on_the_position_but_attn_cores(tiny_build, tok):
    text = "Hello, my name is"
    n_prompt = len(tok.encode(text))
    r = run_tiny(tiny_build, tok, text, n_new=8)
    kinds = {i: s["kind"] for i, s in enumerate(tiny_build.plan.to_dict()["stages"])}
    by_stage = {}
    for c in r.stage_calls:
        if c.position >= n_prompt - 1:       # the positions that produce a token (same code path)
            by_stage.setdefault(c.index, []).append((c.position, c.instructions))
    for index, calls in by_stage.items():
        counts = np.array([n for _, n in calls], float)
        if kinds[index] in ("embed", "ln_1", "ln_2", "attn_qkv", "attn_proj"):
            assert len(set(counts)) == 1, (kinds[index], counts)
        elif kinds[index] in ("mlp", "head"):
            # tanh's and the top-k's branches depend on the values: a few in 10^3 at most
            assert counts.max() - counts.min() <= 5e-3 * counts.mean(), (kinds[index], counts)
        else:
            # attn_core: one more position of keys and values per step
            pos = np.array([p for p, _ in calls], float)
            slope, intercept = np.polyfit(pos, counts, 1)
            assert slope > 0 and np.abs(counts - (intercept + slope * pos)).max() <= 0.03 * counts.mean()


# ----------------------------------------------------------------------------
# compute time = instructions x CPI / clock


def test_compute_time_is_the_cycles_of_every_executed_instruction(program, image):  # noqa: F811
    """A second way to add the cycles up: a UC_HOOK_CODE callback per executed instruction
    sums each instruction's share of its block's cycles (the same per-instruction shares the
    native block counter sums by prefix sums over whole blocks). They agree, but for the
    instructions an IT block skips (UC_HOOK_CODE does not report them: under 2 %). At 100 MHz
    a cycle is 10 ns."""
    board = _CodeHookBoard(program("dma_crc"), image, ram_bytes=RAM, cpu_hz=100e6)
    r = board.run([2, 1, 0, 4096, 0, 1, 8192, 1000, 0], n_new=0)
    hooked = board.hooked_cycles / FIXED
    board.close()
    assert r.cycles == pytest.approx(hooked, rel=0.02) and r.cycles >= hooked
    assert r.compute_ns == pytest.approx(10.0 * r.cycles, rel=1e-12)
    assert 0.5 < r.cpi < 1.5


def test_compute_time_scales_with_the_clock(tiny_build, tok):
    """The same firmware and request at half the clock: the same instructions and cycles, twice
    the compute time."""
    base = run_tiny(tiny_build, tok, "Hi", n_new=1, cpu_hz=480e6)
    slow = run_tiny(tiny_build, tok, "Hi", n_new=1, cpu_hz=240e6)
    assert base.instructions == slow.instructions and base.cycles == slow.cycles
    assert slow.compute_ns == pytest.approx(2 * base.compute_ns)
    assert sum(s.instructions for s in base.stages) <= base.instructions


def test_the_summary_says_compute_is_counted(tiny_build):
    r = json.loads(mcugpt("run", "--build", tiny_build.out_dir, "--prompt", "Hi", "--tokens", "2", "--json",
                          check=True).stdout)
    d = r["device"]
    assert d["counter"] == "native" and "pipeline model" in d["compute_model"]
    # sim64 runs at 480 MHz: a cycle is 2.0833 ns (by hand)
    assert d["compute_s_per_token"] / d["cycles_per_token"] == pytest.approx(2.0833333e-9)
    assert 0.7 < d["cpi"] < 1.0


def test_without_the_counter_the_summary_says_compute_was_not_counted(tiny_build, monkeypatch):
    """Counting off: compute takes no simulated time, so the CPU waits for every transfer in
    full and the device time is the I/O; the summary says it is a lower bound."""
    monkeypatch.setenv("MCUGPT_COUNTER", "off")
    r = json.loads(mcugpt("run", "--build", tiny_build.out_dir, "--prompt", "Hi", "--tokens", "2", "--json",
                          check=True).stdout)
    d = r["device"]
    assert d["counter"] == "off" and "not counted" in d["compute_model"] and d["compute_s_per_token"] == 0
    assert d["s_per_token"] == pytest.approx(d["io_s_per_token"])


# ----------------------------------------------------------------------------
# where the cycles go, function by function (mcugpt run --by-function)


def test_every_counted_cycle_is_in_one_firmware_function(tiny_build, tok):
    """No token decoded: the profile covers the whole run, and its functions add up to the
    run's counted cycles (this board has no D-cache or bus sharing, so the clock's cycles
    are the counter's)."""
    r = run_tiny(tiny_build, tok, "Hi", n_new=1, by_function=True)
    by = r.cycles_by_function
    functions = dict(by["functions"])
    assert by["over"] == "run" and "(outside any function)" not in functions
    assert sum(functions.values()) == pytest.approx(by["cycles"]) == pytest.approx(r.cycles, rel=1e-9)
    assert max(functions, key=functions.get) == "vec_dot"   # tiny fp32: the matrices, a dot product per row


def test_the_decode_profile_is_the_decoded_tokens_and_the_native_one_equals_pythons(tiny_build, tok, monkeypatch):
    r = run_tiny(tiny_build, tok, n_new=4, by_function=True)
    native, n_prompt = r.cycles_by_function, len(tok.encode("Hello, my name is"))
    assert (native["over"], native["passes"]) == ("decode", 3)   # the first token is the prompt's
    # the same cycles as the trace unit's positions after the prompt's (from the same count,
    # cut at the same moments)
    decoded = sum(p.cycles for p in r.per_position if p.position >= n_prompt)
    assert native["cycles"] == pytest.approx(decoded, rel=1e-9) and native["cycles"] < r.cycles
    assert {"softmax_exps", "attention_head", "layernorm", "topk_push"} <= set(dict(native["functions"]))
    monkeypatch.setenv("MCUGPT_COUNTER", "python")
    python = run_tiny(tiny_build, tok, n_new=4, by_function=True).cycles_by_function
    assert python == native


def test_the_cli_says_where_the_cycles_go(tiny_build):
    out = mcugpt("run", "--build", str(tiny_build.out_dir), "--prompt", "Hello", "--tokens", "3",
                 "--by-function", "--json", check=True)
    f = json.loads(out.stdout)["cycles_by_function"]
    assert f["over"] == "decode" and f["passes"] == 2
    assert sum(g["cycles_per_pass"] for g in f["functions"]) == pytest.approx(f["cycles_per_pass"])
    assert sum(g["share"] for g in f["functions"]) == pytest.approx(1.0)
    text = mcugpt("run", "--build", str(tiny_build.out_dir), "--prompt", "Hello", "--tokens", "3",
                  "--by-function", check=True).stdout
    assert "where the CPU's cycles go, per decoded token" in text and "vec_dot" in text
