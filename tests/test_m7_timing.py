"""Compute time is cycles per basic block from a Cortex-M7 pipeline model
(target/m7_pipeline.py), checked against blocks worked out by hand from the M7's measured
issue rules, and against LLVM's Cortex-M7 model (llvm-mca, through target/m7_timing.py) on
the two loops that execute 96-98 % of the firmware's instructions and on every integer
block. The figures here are the ones docs/board.md states."""

import statistics

import pytest

from compiler.pipeline import compile_model
from target import m7_pipeline, m7_timing


def _block(hex_code: str) -> list:
    return m7_pipeline.decode(m7_pipeline.disassemble(bytes.fromhex(hex_code), 0))


def test_a_straight_block_worked_by_hand():
    """ldr.w r0, [r1] | add.w r2, r3, r4 | ldr.w r5, [r6] | mul r7, r0, r2 | add.w r8, r7, #1
    cycle 0: the load and the add pair (older load, younger ALU op);
    cycle 1: the second load (two loads do not pair: same bank assumed);
    cycle 2: the mul (a multiply cannot take a load's result in the next cycle: r0 from 0);
    cycle 4: the add (a multiply's result has one extra cycle of latency).  5 cycles."""
    block = _block("d1f8000003eb0402d6f8005000fb02f707f10108")
    assert [i.cls for i in block] == ["load", "alu", "load", "mul", "alu"]
    assert m7_pipeline.schedule(block) == [0, 0, 1, 2, 4]
    assert m7_pipeline.block_cycles(block, loop=False) == 5


def test_a_loop_worked_by_hand():
    """loop: ldr.w r1, [r0], #4 | smlad r2, r1, r3, r2 | subs r4, #1 | bne loop
    The smlad waits a cycle for the load (cycle 2) and pairs with the subs; the branch and the
    next iteration's load pair at cycle 3: 3 cycles per iteration in the steady state."""
    block = _block("50f8041b21fb0322013cf9d1")
    assert m7_pipeline.schedule(block * 2) == [0, 2, 2, 3, 3, 5, 5, 6]
    assert m7_pipeline.block_cycles(block, loop=True) == 3


# (function, instructions per iteration, cycles worked out by hand from the measured issue
#  rules (docs/board.md), the pipeline model's cycles, llvm-mca's)
LOOPS = {
    "fp32": ("vec_dot", 55, 48, 50, 100.0),
    "int8": ("matvec_rows_i8", 44, 29, 29, 40.0),   # the four-row loop (kernels_int8.c dot4_i8)
}


@pytest.fixture(scope="module")
def firmware(tmp_path_factory, tiny_build):
    int8 = compile_model("tiny", tmp_path_factory.mktemp("tiny_int8_timing"), dtype="int8", quiet=True)
    return {"fp32": tiny_build.out_dir / "firmware.elf", "int8": int8.out_dir / "firmware.elf"}


def _code(elf):
    from elftools.elf.elffile import ELFFile
    with open(elf, "rb") as f:
        text = ELFFile(f).get_section_by_name(".text")
        return text["sh_addr"], text.data()


def _loop(elf, name):
    base, code = _code(elf)
    loop = m7_timing.inner_loop(m7_timing.function_blocks(elf, [name])[name])
    insns = [i for i in m7_pipeline.decode(m7_pipeline.disassemble(code, base)) if loop.start <= i.address < loop.end]
    return loop, insns


def test_basic_blocks_cover_the_code_once(firmware):
    base, code = _code(firmware["int8"])
    blocks = m7_timing.basic_blocks(code, base)
    assert len(blocks) > 100
    assert all(a.end <= b.start for a, b in zip(blocks, blocks[1:]))
    assert not any(line.startswith("it") for b in blocks for line in b.lines)   # llvm-mca takes no IT


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_the_kernels_inner_loops_against_the_measured_issue_rules(firmware, dtype):
    """fp32: 50 cycles per 16 MACs against 48 by hand (+4 %); int8: 29 per 32 MACs, as by hand
    (docs/board.md works both)."""
    name, n, by_hand, model, _ = LOOPS[dtype]
    loop, insns = _loop(firmware[dtype], name)
    assert loop.instructions == len(insns) == n
    got = m7_pipeline.block_cycles(insns, loop=True)
    assert got == model and abs(got / by_hand - 1) <= 0.05


@pytest.mark.skipif(not m7_timing.llvm_mca_available(), reason="llvm-mca is not installed (apt install llvm)")
@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_the_kernels_inner_loops_against_llvm_mca(firmware, dtype):
    """llvm-mca times the loops at 100 and 40 cycles: it holds each fp32 `vldr` until the
    `vmla` before it has read the reused register, a stall the measurements do not show; on the
    int8 loop it pairs fewer instructions than the measured rules allow (docs/board.md). The
    pipeline model's error against it: -50 % and -28 %."""
    name, _, _, model, mca = LOOPS[dtype]
    loop, _ = _loop(firmware[dtype], name)
    got = m7_timing.mca_cycles([loop])[loop.key]
    assert got == pytest.approx(mca, rel=0.02)
    assert model / got - 1 == pytest.approx({"fp32": -0.50, "int8": -0.275}[dtype], abs=0.01)


@pytest.mark.skipif(not m7_timing.llvm_mca_available(), reason="llvm-mca is not installed (apt install llvm)")
def test_every_integer_block_against_llvm_mca(firmware):
    """On the integer-only blocks of the int8 firmware (each in its steady state, as llvm-mca
    times them) the model gives fewer cycles than llvm-mca, by about a fifth: llvm-mca charges
    each nop a cycle, stores three cycles of latency, and no early-to-late ALU forwarding
    (movw/movt pairs), where the measurements say otherwise; it does pair two loads, which
    the model, not knowing the banks, does not. The spread stays within a band. (The ratios
    cluster at 2/3 and 3/4, so the median moves between the two as the firmware's code mix
    changes; the mean is the steadier figure.)"""
    base, code = _code(firmware["int8"])
    blocks = m7_timing.basic_blocks(code, base)
    mca = m7_timing.mca_cycles(blocks)
    insns = m7_pipeline.decode(m7_pipeline.disassemble(code, base))
    ratios = []
    for b in blocks:
        block = [i for i in insns if b.start <= i.address < b.end]
        if b.lines and block and not any(i.cls.startswith("v") for i in block):
            ratios.append(m7_pipeline.block_cycles(block, loop=True) / mca[b.key])
    assert len(ratios) > 300
    assert 0.70 <= statistics.mean(ratios) <= 0.85
    assert 0.60 <= statistics.median(ratios) <= 0.80
