"""Cortex-M7 cycles per basic block: an in-order, dual-issue pipeline model built from the
issue rules measured on an STM32H743 (jnk0le/random, `pipeline cycle test/doc/cortex_m7.md`).

The model issues a block's instructions in order, at most two per cycle (the older and the
younger slot), and holds an instruction back while
  - a register it reads is not ready: each class of instruction makes its result ready a
    number of cycles after it issues, per consumer (LATENCY below);
  - it may not pair with the instruction beside it (PAIRING below), or the slot is closed to
    it for a while after a multiply-accumulate (the FPU's MAC window);
  - a multi-cycle instruction (load/store multiple, divide, square root) holds the pipeline.
A loop (a block that ends in a branch back to its own start) is timed in its steady state:
the third of three back-to-back iterations. Other blocks are timed from their first issue to
their last.

What it leaves out, and where that matters: memory behind the loads (every load hits a
zero-wait memory: the cache and TCM costs are charged by the board separately), the bank
conflicts of paired loads (two loads never pair here, as on the kernels' loops where the
weight row and the input vector sit at the same offset of their banks), branch
misprediction (loops are predicted), the "slippery" half-cycle effects of instruction
alignment, and dependencies that cross block boundaries.

Checked in tests/test_m7_timing.py against the cycles worked out by hand from the same
measurements (docs/board.md) and against LLVM's Cortex-M7 model (llvm-mca) on the blocks
where the two sources agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import capstone

from target.m7_timing import _CONDS

# --- instruction classes ------------------------------------------------------------------

ALU, SHIFTED, DSP, MUL, MAC, LOAD, LOADB, STORE, MULTI, BRANCH, IT, NOP = (
    "alu", "shifted", "dsp", "mul", "mac", "load", "loadb", "store", "multi", "branch", "it", "nop")
VLOAD, VSTORE, VMOV, VARITH, VMAC, VDIV = "vload", "vstore", "vmov", "varith", "vmac", "vdiv"

_DSP = ("sxt", "uxt", "ubfx", "sbfx", "bfi", "bfc", "pkh", "uadd", "usub", "sadd", "ssub", "qadd", "qsub",
        "clz", "rev", "rbit", "usat", "ssat", "sel", "uqadd", "uqsub", "shadd", "uhadd")
_MAC = ("mla", "mls", "smla", "smlal", "umlal", "smlsd", "smmla", "umaal")
_MUL = ("mul", "smul", "umul", "smmul", "sdiv", "udiv")


def _base(mnemonic: str) -> str:
    """The mnemonic without width (.w/.n), data type (.f32) or condition suffix."""
    m = mnemonic.split(".")[0]
    for cc in _CONDS:
        if m.endswith(cc) and len(m) > len(cc) + 1 and m[:-len(cc)] not in ("", "b", "bl", "t", "te"):
            return m[:-len(cc)]
    return m


def classify(mnemonic: str, op_str: str) -> str:
    m = _base(mnemonic)
    if m.startswith("it") and m[2:].strip("te") == "":
        return IT
    if m == "nop":
        return NOP
    if m.startswith("v"):
        if m in ("vldr",):
            return VLOAD
        if m in ("vstr",):
            return VSTORE
        if m in ("vpush", "vpop", "vldm", "vstm", "vldmia", "vstmia", "vldmdb", "vstmdb"):
            return MULTI
        if m in ("vmla", "vmls", "vfma", "vfms", "vnmla", "vnmls", "vfnma", "vfnms"):
            return VMAC
        if m in ("vdiv", "vsqrt"):
            return VDIV
        if m in ("vmov", "vmrs", "vmsr"):
            return VMOV
        return VARITH
    if m in ("b", "bl", "bx", "blx", "cbz", "cbnz", "tbb", "tbh") or (m.startswith("b") and m[1:] in _CONDS):
        return BRANCH
    if m in ("push", "pop", "ldm", "stm", "ldmia", "stmia", "ldmdb", "stmdb", "ldrd", "strd"):
        return BRANCH if m == "pop" and "pc" in op_str else MULTI
    if m.startswith("ldr"):
        return LOADB if m[3:4] in ("b", "h", "s") else LOAD
    if m.startswith("str"):
        return STORE
    if m.startswith(_MAC):
        return MAC
    if m.startswith(_MUL):
        return MUL
    if m.startswith(_DSP):
        return DSP
    if re.search(r", (lsl|lsr|asr|ror|rrx)", op_str):
        return SHIFTED
    return ALU


@dataclass
class Insn:
    address: int
    cls: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    accumulator: str | None      # the register a MAC accumulates into (its late-read operand)
    regs_in_list: int            # registers of a load/store multiple
    address_regs: tuple[str, ...] = ()   # registers a load/store uses to form its address
    target: int | None = None            # a branch's target address, when it is immediate


def decode(insns) -> list[Insn]:
    """Capstone instructions (with detail) -> Insn."""
    out = []
    for i in insns:
        if i.mnemonic == ".byte":
            continue
        cls = classify(i.mnemonic, i.op_str)
        r, w = i.regs_access()
        reads = tuple(i.reg_name(x) for x in r if i.reg_name(x) not in ("pc", "itstate", "apsr_nzcv", "fpscr_nzcv"))
        writes = tuple(i.reg_name(x) for x in w if i.reg_name(x) not in ("pc", "itstate"))
        ops = [o.strip() for o in i.op_str.split(",")]
        acc = None
        if cls == VMAC:
            acc = ops[0]
        elif cls == MAC:
            acc = ops[-1] if _base(i.mnemonic) not in ("smlal", "umlal", "smlalbb", "smlald", "umaal") else ops[0]
        n = len(re.findall(r"\b[rsd]\d+\b|\b(lr|pc|sb|sl|fp|ip)\b", i.op_str.split("{")[-1])) if "{" in i.op_str else (
            2 if cls == MULTI else 1)
        addr = tuple(re.findall(r"\b(r\d+|sb|sl|fp|ip|sp|lr)\b", i.op_str[i.op_str.index("["):])) if "[" in i.op_str else ()
        addr = tuple({"sb": "r9", "sl": "r10", "fp": "r11", "ip": "r12"}.get(r, r) for r in addr)
        t = re.search(r"#(0x[0-9a-f]+)", i.op_str) if cls == BRANCH else None
        out.append(Insn(i.address, cls, reads, writes, acc, n, addr, int(t.group(1), 16) if t else None))
    return out


# --- latencies: cycles after issue until a result is ready, by producer and consumer ----------

def _latency(producer: Insn, consumer: Insn, reg: str) -> int:
    p, c = producer.cls, consumer.cls
    as_acc = consumer.accumulator == reg
    if p in (ALU, IT, NOP, BRANCH):
        # early ALU -> late ALU forwards in 0 cycles: movw/movt, add then use, pair in one cycle
        return 0 if p == ALU and c in (ALU, STORE) and reg not in consumer.address_regs else 1
    if p == SHIFTED:
        return 1
    if p == DSP:
        return 2 if c in (LOAD, LOADB, STORE, VLOAD, VSTORE) else 1   # not as an address next cycle
    if p in (MUL, MAC):
        return 1 if (c == MAC and as_acc) else 2                      # MACs chain each cycle
    if p == LOAD:
        return 2 if (c in (MUL, MAC) and not as_acc) or c == SHIFTED else 1
    if p == LOADB:
        return 2
    if p == MULTI:
        return 2
    if p == VLOAD:
        return 2 if (c == VMAC and as_acc) else 1
    if p == VMAC:
        if c == VMAC and as_acc:
            return 3
        return 4 if c == VSTORE else 6
    if p == VARITH:
        return 3
    if p == VMOV:
        return 3 if c in (VARITH, VMAC, VMOV) else 1
    if p == VDIV:
        return 1
    return 1


# --- pairing: may `young` issue in the same cycle as `old`, in the younger slot? -------------

_SINGLE = (MULTI, VDIV)
_FP_ARITH = (VARITH, VMAC, VDIV)


def _pairs(old: Insn, young: Insn) -> bool:
    o, y = old.cls, young.cls
    if o in _SINGLE or y in _SINGLE:
        return o == VDIV and y in (ALU, SHIFTED)                      # a divide takes one integer op
    if set(young.reads) & set(old.writes):
        return o == ALU and y in (ALU, STORE)                        # early ALU forwards to late ALU
    if y == DSP:
        return False                                                  # bitfield/DSP: older slot only
    if o in (LOAD, LOADB, VLOAD) and y in (LOAD, LOADB, VLOAD):
        return False                                                  # same bank (see above)
    if o in (STORE, VSTORE) and y in (STORE, VSTORE):
        return False
    if {o, y} & {MUL, MAC} and ({o, y} <= {MUL, MAC} or {o, y} & {STORE, VSTORE}):
        return False
    if o in _FP_ARITH and y in _FP_ARITH:
        return False
    if {o, y} & {VMAC} and {o, y} & {VLOAD, VSTORE, VMOV}:
        return False
    if o == SHIFTED and y == SHIFTED:
        return False
    return True


def schedule(insns: list[Insn]) -> list[int]:
    """The issue cycle of each instruction, in order."""
    ready: dict[str, tuple[int, Insn]] = {}       # register -> (issue cycle of its producer, producer)
    cycle, slot = 0, 0                            # slot 0: older free; 1: younger free; 2: cycle full
    busy_until = 0                                # a multi-cycle instruction holds the pipeline
    mac_window = -10                              # the last cycle a VMAC issued
    prev: Insn | None = None
    out = []
    for ins in insns:
        earliest = max(cycle, busy_until)
        for r in ins.reads:
            if r in ready:
                t, producer = ready[r]
                earliest = max(earliest, t + _latency(producer, ins, r))
        while True:
            if earliest > cycle:
                cycle, slot, prev = earliest, 0, None
            young = slot == 1
            ok = slot < 2 and (not young or (prev is not None and _pairs(prev, ins)))
            since_mac = cycle - mac_window
            if ok and since_mac <= 3:
                if ins.cls in (VARITH, MULTI) or (ins.cls in (VLOAD, VSTORE, VMOV) and young):
                    ok = False
            if ok:
                break
            earliest = cycle + 1
        out.append(cycle)
        if ins.cls == VMAC:
            mac_window = cycle
        if ins.cls == MULTI:
            busy_until = cycle + max(1, -(-ins.regs_in_list // 2))
            slot = 2
        elif ins.cls == VDIV:
            busy_until = cycle + 14
            slot = 1
        else:
            slot += 1
        for w in ins.writes:
            ready[w] = (cycle, ins)
        prev = ins
        if slot >= 2:
            cycle, slot, prev = max(cycle + 1, busy_until), 0, None
    return out


def block_cycles(insns: list[Insn], loop: bool) -> float:
    """Cycles of one execution of a block; of one iteration in the steady state for a loop."""
    if not insns:
        return 0.0
    if loop:
        issue = schedule(insns * 3)
        n = len(insns)
        return float(issue[2 * n] - issue[n])
    issue = schedule(insns)
    return float(issue[-1] - issue[0] + 1)


def disassemble(code: bytes, base: int):
    md = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_THUMB | capstone.CS_MODE_MCLASS)
    md.detail = True
    md.skipdata = True
    return list(md.disasm(code, base))


# --- cycles of a whole code region, for the board's counter ---------------------------------

FIXED = 1024    # cycles are charged in 1/FIXED cycle units (integers in the native counter)
_cache: dict[str, list[int]] = {}


def halfword_costs(code: bytes, base: int) -> list[int]:
    """Per halfword of `code`: the cycles (x FIXED) charged when the instruction starting there
    executes, 0 where none starts. Each instruction is charged its basic block's cycles
    (block_cycles) divided by the block's instructions, so any run of whole instructions the
    emulator executes costs the sum of its instructions' shares."""
    import hashlib

    from target.m7_timing import basic_blocks
    key = hashlib.sha256(code).hexdigest() + f"{base:x}"
    if key in _cache:
        return _cache[key]
    insns = decode(disassemble(code, base))
    by_addr = {i.address: i for i in insns}
    costs = [0] * ((len(code) + 1) // 2)
    for b in basic_blocks(code, base):
        block = [by_addr[a] for a in range(b.start, b.end, 2) if a in by_addr]
        if not block:
            continue
        last = block[-1]
        loop = last.cls == BRANCH and last.target == b.start
        share = block_cycles(block, loop) / len(block)
        for i in block:
            costs[(i.address - base) // 2] = round(share * FIXED)
    _cache[key] = costs
    return costs
