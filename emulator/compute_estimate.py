"""How long a real Cortex-M7 would spend computing each stage: an estimate from the work done.

A run does not use this: the board counts the instructions the firmware executes and times
them with the board's cycles per instruction (emulator/instruction_count.py,
peripherals.CpuClock, docs/board.md "Time"). This estimate remains for what has no run to
count: `mcugpt run` with counting off (MCUGPT_COUNTER=off) falls back to it, and a
whole-model figure for a plan nobody ran (the bench's classic comparison) can use it. Its
2 cycles/MAC is the optimistic bound of docs/board.md's "Cycles per instruction" (the
counted fp32 firmware comes out at ~3.0 cycles/MAC).

  cycles = CYCLES_PER_MAC x multiply-accumulates
         + CYCLES_PER_TRANSCENDENTAL x (exp in softmax, tanh in GELU)
         + CYCLES_PER_ELEMENT x (other element-wise work: layer norms, residual adds)

CYCLES_PER_MAC: the M7 issues one single-precision VFMA/VMLA per cycle, but a matrix-vector
product also loads a weight and an activation per MAC (two 32-bit loads; the M7 dual-issues
one load with FP work), so a tuned fp32 loop (CMSIS-DSP arm_mat_vec_mult_f32) runs at about
2 cycles per MAC from TCM/cache; weights arriving by DMA into SRAM keep it there.
CYCLES_PER_TRANSCENDENTAL: expf/tanhf by range reduction and a degree-5/6 polynomial,
about 30-40 FP operations.
"""

CPU_HZ = 480e6                  # default clock; the board profile's (target/boards.py) is used
CYCLES_PER_MAC = 2.0
CYCLES_PER_TRANSCENDENTAL = 40.0
CYCLES_PER_ELEMENT = 4.0


def stage_cycles(stage: dict, n_embd: int, n_head: int, position: int) -> float:
    """Estimated cycles of one stage (a plan.json stage row) for the token at `position`."""
    kind, d = stage["kind"], n_embd
    macs = sum(m["rows"] * m["cols"] for m in stage["matrices"])
    trans = elems = 0
    if kind == "attn_core":
        n = position + 1
        macs = 2 * d * n                 # q.k over every cached key, then weights x values
        trans = n_head * n               # softmax exponentials
        elems = 2 * d + 2 * n_head * n   # store k/v; softmax max/normalise
    elif kind in ("ln_1", "ln_2"):
        elems = 4 * d
    elif kind == "mlp":
        trans, elems = 4 * d, d
    elif kind == "attn_proj":
        elems = d
    elif kind == "embed":
        elems = d
    elif kind == "head":
        elems = 4 * d + stage["matrices"][0]["rows"]  # layer norm, then top-k over the vocabulary
    return CYCLES_PER_MAC * macs + CYCLES_PER_TRANSCENDENTAL * trans + CYCLES_PER_ELEMENT * elems


def stage_compute_ns(stage: dict, n_embd: int, n_head: int, position: int, cpu_hz: float = CPU_HZ) -> float:
    return stage_cycles(stage, n_embd, n_head, position) / cpu_hz * 1e9
