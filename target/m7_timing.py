"""Basic blocks of the firmware, and LLVM's Cortex-M7 scheduling model (llvm-mca) on them: the
independent figure the pipeline model (target/m7_pipeline.py) is checked against.

    python -m target.m7_timing build/gpt2/firmware.elf vec_dot matvec_rows_i8

cuts the firmware's code into basic blocks (leaders: the first instruction, branch targets,
the instruction after a branch), times every block with llvm-mca in one run (one code
region per block; MCA_ITERATIONS iterations, so a loop body is timed in its steady state),
and prints, for the largest block of each named function (its inner loop), the
instructions, llvm-mca's cycles per iteration and the pipeline model's. docs/board.md
("Cycles per basic block") sets them beside the cycles worked out by hand from the M7's
measured issue rules; tests/test_m7_timing.py keeps those figures true.

llvm-mca is Debian's `llvm` package (`make test` installs it as root; nothing else needs
it). What it does not take: the IT instruction (dropped; the conditional instructions it
covers are timed unconditionally), a call (timed as the branch it is: llvm-mca would assume
100 cycles of latency), and `vcmp.f32 sN, #0` (llvm 14 has no scheduling entry; timed as
`vcmp.f32 sN, sN`). It models every load as a hit in zero-wait memory.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from dataclasses import dataclass

import capstone

from target.errors import McugptError

MCA = "llvm-mca"
MCA_ARGS = ["-mtriple=thumbv7em-none-eabi", "-mcpu=cortex-m7", "-mattr=+fp-armv8d16sp"]
MCA_ITERATIONS = 100

_CONDS = ("eq", "ne", "hs", "lo", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le", "cs", "cc", "al")
_REG_ALIASES = {"sb": "r9", "sl": "r10", "fp": "r11", "ip": "r12"}


@dataclass
class Block:
    start: int                  # address of the first instruction
    end: int                    # address after the last
    lines: list[str]            # llvm-mca input, one instruction each (IT dropped, calls as branches)
    instructions: int           # as the core issues them (IT included)

    @property
    def key(self) -> str:
        """The block's identity: its instructions as llvm-mca reads them."""
        return hashlib.sha1("\n".join(self.lines).encode()).hexdigest()[:16]


def _disassembler():
    md = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_THUMB | capstone.CS_MODE_MCLASS)
    md.skipdata = True   # literal pools and jump tables between functions
    return md


def _is_branch(mnemonic: str, op_str: str) -> bool:
    m = mnemonic.split(".")[0]
    if m in ("b", "bl", "bx", "blx", "cbz", "cbnz", "tbb", "tbh"):
        return True
    if m.startswith("b") and m[1:] in _CONDS:
        return True
    return m.startswith(("pop", "ldm")) and "pc" in op_str or (m.startswith(("mov", "ldr")) and op_str.startswith("pc"))


def _strip_condition(mnemonic: str) -> str:
    base, dot, suffix = mnemonic.partition(".")
    for cc in _CONDS:
        if base.endswith(cc) and len(base) > len(cc) + 1:
            return base[: -len(cc)] + dot + suffix
    return mnemonic


def _mca_line(mnemonic: str, op_str: str, in_it: bool) -> str:
    ops = re.sub(r"\b(sb|sl|fp|ip)\b", lambda x: _REG_ALIASES[x.group(1)], op_str)
    m = mnemonic
    if _is_branch(m, ops) and re.search(r"#0x[0-9a-f]+", ops):
        ops = re.sub(r"#0x[0-9a-f]+", "tgt", ops)
        if m.split(".")[0] == "bl":
            m = "b"       # a call, timed as the branch it is (llvm-mca would assume 100 cycles)
    if in_it:
        m = _strip_condition(m)
    if m.startswith("vcmp") and re.fullmatch(r"(s\d+), #0", ops):
        ops = re.sub(r"(s\d+), #0", r"\1, \1", ops)
    return f"{m} {ops}".strip()


_COPROCESSOR = ("mcr", "mrc", "cdp", "ldc", "stc")


def basic_blocks(code: bytes, base: int) -> list[Block]:
    """The basic blocks of Thumb-2 code at `base`."""
    insns = [(i.address, i.size, i.mnemonic, i.op_str) for i in _disassembler().disasm(code, base)]
    leaders = {base}
    for k, (addr, size, m, ops) in enumerate(insns):
        if _is_branch(m, ops):
            leaders.add(addr + size)
            t = re.search(r"#(0x[0-9a-f]+)", ops)
            if t and m.split(".")[0] != "bl":
                leaders.add(int(t.group(1), 16))
    blocks, cur, it_left = [], None, 0
    for addr, size, m, ops in insns:
        # data: what capstone skipped, or a literal pool word that decodes as a coprocessor
        # instruction (the M7's only coprocessor is the FPU, whose instructions are v*): ends
        # the block, belongs to none
        if m == ".byte" or m.startswith(_COPROCESSOR):
            cur, it_left = None, 0
            continue
        if cur is None or addr in leaders:
            cur = Block(addr, addr, [], 0)
            blocks.append(cur)
        cur.end = addr + size
        cur.instructions += 1
        if m.startswith("it") and m[2:].strip("te") == "":
            it_left = len(m) - 1
        else:
            cur.lines.append(_mca_line(m, ops, it_left > 0))
            it_left = max(0, it_left - 1)
        if _is_branch(m, ops):
            cur = None
    return blocks


def llvm_mca_available() -> bool:
    return shutil.which(MCA) is not None


def mca_cycles(blocks: list[Block]) -> dict[str, float]:
    """llvm-mca's steady-state cycles per iteration of each block, by Block.key, in one run."""
    if not llvm_mca_available():
        raise McugptError("llvm-mca is not installed (Debian/Ubuntu: apt install llvm)")
    todo = {b.key: b for b in blocks if b.lines}
    out = ["tgt:"]
    for key, b in todo.items():
        out += [f"# LLVM-MCA-BEGIN {key}", *b.lines, "# LLVM-MCA-END"]
    res = subprocess.run([MCA, *MCA_ARGS, f"-iterations={MCA_ITERATIONS}", "-instruction-info=false",
                          "-resource-pressure=false", "-"], input="\n".join(out) + "\n",
                         capture_output=True, text=True)
    if res.returncode != 0:
        err = next((ln for ln in res.stderr.splitlines() if "error" in ln), res.stderr.strip()[:200])
        note = next((ln for ln in res.stderr.splitlines() if ln.startswith("note: instruction")), "")
        raise McugptError(f"llvm-mca failed: {err} {note}".strip())
    cycles = {}
    for m in re.finditer(r"Code Region - (\w+)\s+Iterations:\s+(\d+)\s+Instructions:\s+\d+\s+Total Cycles:\s+(\d+)",
                         res.stdout):
        cycles[m.group(1)] = int(m.group(3)) / int(m.group(2))
    missing = set(todo) - set(cycles)
    if missing:
        raise McugptError(f"llvm-mca gave no figure for {len(missing)} of {len(todo)} blocks")
    return cycles


def function_blocks(elf_path, names: list[str]) -> dict[str, list[Block]]:
    """The basic blocks of each named function of a firmware ELF."""
    from elftools.elf.elffile import ELFFile
    with open(elf_path, "rb") as f:
        elf = ELFFile(f)
        text = elf.get_section_by_name(".text")
        base, code = text["sh_addr"], text.data()
        funcs = {s.name: (s["st_value"] & ~1, s["st_size"]) for s in elf.get_section_by_name(".symtab").iter_symbols()
                 if s["st_info"]["type"] == "STT_FUNC"}
    blocks = basic_blocks(code, base)
    out = {}
    for name in names:
        if name not in funcs:
            raise McugptError(f"{elf_path}: no function {name}")
        start, size = funcs[name]
        out[name] = [b for b in blocks if start <= b.start < start + size]
    return out


def inner_loop(blocks: list[Block]) -> Block:
    """A function's inner loop: of its unrolled blocks (16 instructions or more), the one
    densest in multiply-accumulates; its largest block when none is that long."""
    macs = lambda b: sum(1 for line in b.lines if line.split()[0].startswith(("smla", "vmla", "vfma")))
    unrolled = [b for b in blocks if b.instructions >= 16]
    if not unrolled:
        return max(blocks, key=lambda b: b.instructions)
    return max(unrolled, key=lambda b: (macs(b) / b.instructions, b.instructions))


def main(argv: list[str]) -> int:
    from target import m7_pipeline
    if len(argv) < 2:
        print("usage: python -m target.m7_timing FIRMWARE.elf FUNCTION...")
        return 2
    from elftools.elf.elffile import ELFFile
    with open(argv[0], "rb") as f:
        text = ELFFile(f).get_section_by_name(".text")
        insns = m7_pipeline.decode(m7_pipeline.disassemble(text.data(), text["sh_addr"]))
    loops = {name: inner_loop(bs) for name, bs in function_blocks(argv[0], argv[1:]).items()}
    cycles = mca_cycles(list(loops.values())) if llvm_mca_available() else {}
    for name, b in loops.items():
        model = m7_pipeline.block_cycles([i for i in insns if b.start <= i.address < b.end], loop=True)
        mca = f"llvm-mca {cycles[b.key]:.2f}" if b.key in cycles else "llvm-mca not installed"
        print(f"{name}: inner loop at 0x{b.start:08x}, {b.instructions} instructions: pipeline model "
              f"{model:.0f} cycles per iteration; {mca}")
    return 0


if __name__ == "__main__":
    import sys
    from target.errors import McugptError
    try:
        sys.exit(main(sys.argv[1:]))
    except (McugptError, OSError) as e:   # a missing function or file: one line, no traceback
        print(f"m7_timing: error: {e}", file=sys.stderr)
        sys.exit(2)
