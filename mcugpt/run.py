"""`mcugpt run`: a compiled build on the emulated board, and the figures a user asks for.

    prompt text -> GPT-2 tokens -> mailbox -> firmware on the board -> tokens + UART text
                -> summary: speed on this machine, simulated device time per token (flash and
                   PSRAM I/O simulated from datasheet timing as DMA on the board's clock, compute
                   from the executed basic blocks' cycles (the Cortex-M7 pipeline model,
                   target/m7_pipeline.py) at the board's clock, overlapped as the firmware's
                   double-buffered tiles overlap them), flash bytes per token, measured peak
                   RAM against the plan

With counting off (MCUGPT_COUNTER=off) compute takes no simulated time: the device time is
then the I/O alone, and the summary says so.
"""

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compiler.pipeline import load_build_source, load_model
from compiler.plan import PSRAM_CHECK_BYTES, Plan
from compiler.reference import Reference, check_context, generate
from compiler.sampler import Sampling, check_request
from compiler.tokenizer import encode, load_tokenizer
from emulator import inject as injection
from emulator.board import Board, BoardFault, FirmwareError, RunResult
from mcugpt import timeline
from mcugpt.check_stages import StageCapture, checked_position
from mcugpt.check_stages import check_stages as compare_stages
from target.errors import McugptError
from target.flash_layout import read_image

# The reference computes the firmware's float32 operations in the firmware's order
# (compiler/numerics.py), so the board's logits equal it bit for bit: that is what --check
# and the tests demand. A tolerance is still reported, for a user's own firmware changes.
LOGIT_ATOL, LOGIT_RTOL = 1e-4, 1e-4


@dataclass
class Build:
    """A folder written by `mcugpt compile`."""
    path: Path
    plan: Plan
    source: dict

    @classmethod
    def open(cls, path) -> "Build":
        source = load_build_source(path)
        path = Path(path)
        for f in ("plan.json", "flash.img", "firmware.elf"):
            if not (path / f).is_file():
                raise McugptError(f"{path}: no {f}; rerun `mcugpt compile --out {path}`")
        return cls(path, Plan.load(path / "plan.json"), source)

    def model(self):
        """(config, weights, tokenizer), as the build was compiled."""
        return load_model(self.source["preset"] if not self.source["weights"] else self.source["model"],
                          self.source["weights"], self.source["weights_seed"])

    def tokenizer(self):
        return load_tokenizer(self.source["weights"])


def run(build: Build, prompt: str, n_new: int, sampling: Sampling, ram: int | None = None,
        flash: str | None = None, on_text=None, dump_logits: bool = False, check: bool = False,
        timeout_s: float | None = None, chunk: int | None = None, on_position=None,
        check_stages: bool = False, trace=None, gdb_port: int | None = None, on_gdb_wait=None,
        inject: list[str] = (), inject_seed: int = 0, by_function: bool = False) -> dict:
    """Generate on the board the build was planned for: its SRAM (or `ram`, to map less), its
    flash part (or `flash`), its PSRAM. `chunk`: prompt positions per chunk, 1 .. the plan's
    prefill chunk (default: the plan's). `on_position(pos, n_prompt)`: each forward pass as it
    starts, with the prompt's length (progress). `check_stages`: also capture every stage's
    output at the prompt's last position and compare it with the reference and onnxruntime
    (mcugpt/check_stages.py; the prompt then runs one position at a time). `trace`: a file to
    write the run's timeline to (mcugpt/timeline.py), named in the report. `gdb_port`: start
    halted, under a GDB server on that port (docs/debugging.md); `on_gdb_wait()` as it starts
    waiting for GDB. `inject`: faults to inject (--inject values, emulator/inject.py), the
    choices they leave to chance seeded by `inject_seed`; the report's `injected` says what
    each hit and how the firmware handled it (docs/reliability.md). `by_function`: the report's
    `cycles_by_function` says where the CPU's cycles went, function by function."""
    profile = build.plan.profile
    injections = check_injections(build, [injection.parse(text) for text in inject], inject_seed)
    flash = profile.flash_option(flash).part
    check_request(sampling.temperature, sampling.top_k, n_new, sampling.seed)
    check_board_ram(build, ram)
    if timeout_s is not None and not 0 < timeout_s < math.inf:
        raise McugptError(f"--timeout {timeout_s}: must be a positive number of seconds")
    tok = build.tokenizer()
    prompt_tokens = encode(tok, prompt)
    check_context(len(prompt_tokens), n_new, build.plan.ctx)
    if check_stages:
        if chunk not in (None, 1):
            raise McugptError(f"--check-stages reads one position's activations per forward pass: it runs the "
                              f"prompt with --prefill-chunk 1, not {chunk}")
        chunk = 1
    if chunk is not None and not 1 <= chunk <= build.plan.prefill_chunk:
        raise McugptError(f"--prefill-chunk {chunk} is outside 1..{build.plan.prefill_chunk} (the build's plan "
                          f"holds {build.plan.prefill_chunk} positions' activations)")
    # The firmware checks the image too (and is tested to); checking here first gives the
    # host's clearer message for a truncated, foreign or damaged image.
    image = read_image(build.path / "flash.img", verify_weights=False)
    if image.header["header_crc"] != build.source["image_crc"]:   # consistent, but not this build's
        raise McugptError(f"{build.path / 'flash.img'}: not the image this build wrote (header CRC32 "
                          f"0x{image.header['header_crc']:08x}, the build's 0x{build.source['image_crc']:08x}): "
                          f"its tables, tokens or weights were changed; rerun `mcugpt compile --out {build.path}`")
    if trace is not None:
        trace = timeline.check_path(trace)
    with Board.for_profile(build.path / "firmware.elf", build.path / "flash.img", profile,
                           ram_bytes=ram, flash_preset=flash, xip=build.plan.runtime == "xip",
                           timeline=trace is not None, by_function=by_function) as board:
        capture = StageCapture(board, build.plan, checked_position(len(prompt_tokens))) if check_stages else None
        injector = board.injector = injection.Injector(injections, inject_seed) if injections else None
        board.psram_label = lambda addr: psram_label(build.plan, addr)

        def write_trace(result):
            timeline.write(trace, timeline.build(result, build.plan, image, len(prompt_tokens),
                                                 token_text=lambda t: tok.decode([t])))
        try:
            result = board.run(prompt_tokens, n_new, temperature=sampling.temperature, top_k=sampling.top_k,
                               seed=sampling.seed, dump_logits=dump_logits or check or check_stages, on_text=on_text,
                               timeout_s=timeout_s, chunk=chunk or 0,
                               on_position=on_position and (lambda pos: on_position(pos, len(prompt_tokens))),
                               on_stage_end=capture, gdb_port=gdb_port, on_gdb_wait=on_gdb_wait)
        except (BoardFault, FirmwareError) as e:
            if trace is not None and e.result is not None:   # the timeline up to the fault: where it went wrong
                write_trace(e.result)
                e.args = (f"{e.args[0]} (timeline up to it: {trace})",)
            if injector is not None:   # the injected fault that caused it, in the same line
                cause = [h for h in injector.outcomes(e.result, e.args[0]) if h["handled"] == "fault"]
                e.args = (f"{e.args[0]}; injected " + "; ".join(injection.cause(h) for h in cause),) if cause else e.args
            raise
        injected = injector.outcomes(result) if injector is not None else None
    report = summarize(build, result, prompt, prompt_tokens, flash, chunk)
    if result.cycles_by_function is not None:
        report["cycles_by_function"] = cycles_by_function(result.cycles_by_function)
    if injected is not None:
        report["injected"], report["inject_seed"] = injected, inject_seed
    if trace is not None:
        write_trace(result)
        report["trace"] = str(trace)
    if check:
        report["check"] = compare_with_reference(build, prompt_tokens, n_new, sampling, result)
    if check_stages:
        report["check_stages"] = compare_stages(build, capture, result.logits[0], prompt_tokens)
    return report


def cycles_by_function(by: dict) -> dict:
    """Board's per-function cycles, per forward pass (a decoded token, or the whole run)."""
    passes = max(by["passes"], 1)
    return {"over": "decode" if by["over"] == "decode" else "run", "passes": by["passes"],
            "cycles_per_pass": by["cycles"] / passes,
            "functions": [{"function": name, "cycles_per_pass": cycles / passes,
                           "share": cycles / by["cycles"] if by["cycles"] else 0.0}
                          for name, cycles in by["functions"]],
            "source": "the pipeline model's cycles of every executed basic block, summed per function "
                      "symbol of the firmware (D-cache and bus-sharing cycles are not in any function)"}


def psram_label(plan: Plan, addr: int) -> str:
    """What the PSRAM holds at `addr`: a KV cache row (its layer, keys or values, head and
    position: runtime.c kv_row_offset), a tensor's tile tail in the PSRAM tier, either's
    check word, or nothing."""
    kv = plan.kv
    if kv.placement == "psram" and kv.row_bytes and addr < kv.bytes:
        row, pos = divmod(addr // kv.row_bytes, plan.ctx)
        rest, head = divmod(row, plan.model.n_head)
        layer, values = divmod(rest, 2)
        check = " (its check word)" if addr % kv.row_bytes >= kv.row_bytes - PSRAM_CHECK_BYTES else ""
        if values and kv.values_transposed:   # a complete block of value rows is stored transposed
            block = kv.block_positions
            first = pos // block * block
            check += (f", row {pos - first} of the block from position {first}, which holds columns "
                      f"{2 * (pos - first)} and {2 * (pos - first) + 1} once the block is complete")
        return f"the KV cache: layer {layer}'s {'values' if values else 'keys'}, head {head}, position {pos}{check}"
    for i, t in enumerate(plan.tensors):
        if t.psram_offset is not None and t.psram_offset <= addr < t.psram_offset + t.psram_span:
            tile, at = divmod(addr - t.psram_offset, t.psram_tail + PSRAM_CHECK_BYTES)
            return (f"the PSRAM tier's tail of tile {tile} of tensor {i} '{t.name}'"
                    + (" (its check word)" if at >= t.psram_tail else ""))
    return "no data the plan puts there"


def check_injections(build: Build, injections: list, seed: int) -> list:
    """The injections this build can detect, or a McugptError saying why one cannot be, and
    what to do (docs/reliability.md, "Fault injection": which reads each build checks)."""
    plan = build.plan
    if not 0 <= seed < 1 << 64:
        raise McugptError(f"--inject-seed {seed}: must be 0 .. 2^64-1")
    for inj in injections:
        flash = inj.kind.startswith("flash-")
        if flash and plan.runtime == "xip":
            raise McugptError(f"--inject {inj.text}: this XIP build reads its weights in place, checked only at "
                              f"boot, so a flash fault after boot would go undetected; inject into a streaming "
                              f"build (compile without --runtime xip)")
        if inj.kind == "flash-flip" and plan.verify == "boot":
            raise McugptError(f"--inject {inj.text}: this build checks its streamed weight tiles and vectors only "
                              f"at boot (--verify boot: {plan.verify_why}), so a bit flipped in one read after boot "
                              f"could change the tokens undetected; compile with --verify stream to check every "
                              f"read (flash-stuck and flash-dead are detected in both modes)")
        if inj.kind == "flash-stuck" and inj.n is not None:
            size = (build.path / "flash.img").stat().st_size
            if inj.n >= size:
                raise McugptError(f"--inject {inj.text}: flash address 0x{inj.n:x} is past the {size:,}-byte image: "
                                  f"nothing reads it")
        if inj.kind == "psram-flip" and plan.kv.placement != "psram" and not plan.psram_weight_bytes:
            raise McugptError(f"--inject {inj.text}: this build reads nothing from PSRAM (its KV cache is in "
                              f"SRAM and it has no PSRAM tier)")
    return injections


def check_board_ram(build: Build, ram: int | None) -> None:
    """`ram`, the SRAM the board maps, must hold the firmware: the build is linked for its plan's
    whole RAM budget (the stack at its top), which may be more than the plan's peak."""
    if ram is None:
        return
    plan, board = build.plan, build.plan.profile
    if ram < 1:
        raise McugptError(f"--ram {ram}: must be at least 1 byte")
    if ram > board.sram_bytes:
        raise McugptError(f"--ram {ram:,} bytes: more than the {board.name} board's {board.sram_bytes:,} bytes of SRAM")
    if ram < plan.ram_budget:
        raise McugptError(
            f"--ram {ram:,} bytes: this build is linked for its RAM budget of {plan.ram_budget:,} bytes (the stack "
            f"at its top), so the board must map all of it, although its plan's peak is {plan.peak_ram_bytes:,}; "
            f"to run in {ram:,} bytes, recompile with `mcugpt compile --ram {ram}`")


def _max_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    """The largest |a - b|: 0 where both are the same infinity or both NaN; inf where only one
    side is NaN or infinite (never NaN, which would compare as no difference at all)."""
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    d = np.where(same, 0.0, np.abs(a.astype(np.float64) - b.astype(np.float64)))
    return float(np.max(np.nan_to_num(d, nan=np.inf), initial=0.0))


def compare_with_reference(build: Build, prompt_tokens, n_new, sampling, result: RunResult) -> dict:
    cfg, weights, _ = build.model()
    t0 = time.perf_counter()
    # IEEE float32 is the specification, overflow to infinity and NaN included (weights near
    # float32's range overflow on the board too): numpy's warnings about them are not errors
    with np.errstate(all="ignore"):
        ref = generate(Reference(cfg, weights, dtype=build.plan.dtype, kv_dtype=build.plan.kv.dtype),
                       prompt_tokens, n_new, sampling, n_ctx=build.plan.ctx, keep_logits=True)
        # a NaN on both sides at the same place agrees (its sign bit is the FPU's choice)
        err = max(_max_abs_difference(a, b) for a, b in zip(result.logits, ref.logits))
        scale = max(float(np.nanmax(np.abs(b), initial=0.0)) for b in ref.logits)
        close = all(np.allclose(a, b, atol=LOGIT_ATOL, rtol=LOGIT_RTOL, equal_nan=True)
                    for a, b in zip(result.logits, ref.logits))
    identical = len(result.logits) == len(ref.logits) and all(
        np.array_equal(a, b, equal_nan=True) for a, b in zip(result.logits, ref.logits))
    return {"reference_tokens": ref.tokens, "tokens_equal": ref.tokens == result.tokens,
            "logits_identical": identical,
            "logits_max_abs_error": err, "logits_max_abs": scale, "logits_within_tolerance": close,
            "tolerance": {"atol": LOGIT_ATOL, "rtol": LOGIT_RTOL},
            "reference_wall_s": time.perf_counter() - t0}


def summarize(build: Build, result: RunResult, prompt: str, prompt_tokens: list[int], flash: str,
              chunk: int | None = None) -> dict:
    plan = build.plan
    n_prompt = len(prompt_tokens)
    cpu_hz = result.cpu_hz or plan.profile.cpu_hz
    counted = result.counter != "off"

    # A generated token costs one forward pass that ends in the head: positions
    # n_prompt-1 onwards. The prompt's other positions skip the head (prefill).
    # (The prompt runs in chunks of positions: an entry per chunk, at its first position.
    # Decoding runs one position at a time from n_prompt on; with no such step, the last
    # forward pass stands for one.)
    decode = ([p for p in result.per_position if p.position >= n_prompt]
              or [p for p in result.per_position if p.position >= n_prompt - 1] or result.per_position[-1:])
    prefill = [p for p in result.per_position if p.position < n_prompt and p not in decode]
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0
    io_s = mean([p.io_ns for p in decode]) * 1e-9
    compute_s = mean([p.compute_ns for p in decode]) * 1e-9
    device_s = mean([p.device_ns for p in decode]) * 1e-9
    stall_s = mean([p.stall_ns for p in decode]) * 1e-9
    crc_s = mean([p.crc_ns for p in decode]) * 1e-9
    # what runs at once: the flash and PSRAM DMA, the CPU, and (where it is a separate pass)
    # the CRC unit; overlapping can hide all but the longest of them
    sequential_s = io_s + compute_s + crc_s
    overlap_s = sequential_s - device_s

    by_kind = {}
    for s in result.stages:
        row = plan.stages[s.index]
        k = by_kind.setdefault(row.kind, {"kind": row.kind, "stages": 0, "io_s": 0.0, "compute_s": 0.0,
                                          "crc_s": 0.0, "device_s": 0.0, "overlap_s": 0.0, "instructions": 0,
                                          "flash_bytes": 0})
        k["stages"] += 1
        # per generated token: this stage's mean per call over the run (attn_core's compute
        # grows with the position: its mean is over the positions computed)
        io = (s.flash_ns + s.psram_ns) * 1e-9 / s.calls
        comp, dev = s.compute_ns * 1e-9 / s.calls, s.device_ns * 1e-9 / s.calls
        crc = s.crc_ns * 1e-9 / s.calls
        k["io_s"] += io
        k["compute_s"] += comp
        k["crc_s"] += crc
        k["device_s"] += dev
        k["overlap_s"] += io + comp + crc - dev
        k["instructions"] += s.instructions // s.calls
        k["flash_bytes"] += s.flash_bytes // s.calls
    kinds = sorted(by_kind.values(), key=lambda k: -k["device_s"])
    total = sum(k["device_s"] for k in kinds) or 1.0
    for k in kinds:
        k["share"] = k["device_s"] / total
        # the most overlapping can hide: all but the longest of I/O, compute and CRC
        hideable = k["io_s"] + k["compute_s"] + k["crc_s"] - max(k["io_s"], k["compute_s"], k["crc_s"])
        k["overlap_fraction"] = k["overlap_s"] / hideable if hideable > 0 else 0.0

    instructions = mean([p.instructions for p in decode])
    cycles = mean([p.cycles for p in decode])
    if counted:
        compute_model = (f"{instructions / 1e6:,.1f}M instructions, {cycles / 1e6:,.1f}M cycles per token "
                         f"(CPI {cycles / instructions if instructions else 0:.2f}): every executed basic block "
                         f"timed by the Cortex-M7 pipeline model (target/m7_pipeline.py), at {cpu_hz / 1e6:g} MHz")
    else:
        compute_model = ("not counted (MCUGPT_COUNTER=off): compute took no simulated time, so the "
                         "device time is the I/O alone, a lower bound")
    hideable = sequential_s - max(io_s, compute_s, crc_s)
    ram = result.peak_ram
    memory_cycles = mean([p.memory_cycles for p in decode])
    dc = plan.profile.dcache
    tcm_buffers = [b.name for b in plan.buffers if b.region == "dtcm" and b.bytes]
    steal = plan.profile.dma_steal_cycles_per_word
    parts = []
    if result.dcache is not None:
        parts.append(f"D-cache line fills ({dc.fill_cycles} cycles each, one per line a DMA wrote into the SRAM) "
                     f"and write-backs ({dc.writeback_cycles})")
    if steal:
        parts.append(f"bus sharing with the DMA ({steal:g} cycles per word moved, an assumption)")
    if not parts:
        memory_model = ("zero-wait SRAM, no D-cache (the board's memory is abstract)" if dc is None else
                        "D-cache not modelled")
    else:
        memory_model = (f"{memory_cycles / 1e6:,.2f}M cycles per token ({100 * memory_cycles / cycles if cycles else 0:.1f}% "
                        f"of compute): " + " and ".join(parts) + "; "
                        + (f"{', '.join(tcm_buffers)} in the zero-wait data TCM" if tcm_buffers
                           else "nothing in the data TCM") + " (emulator/dcache.py)")
    n_new = len(result.tokens)
    decode_wall_s = mean([p.wall_s for p in decode])
    per_s = lambda n, s: n / s if s else 0.0
    prefill_s, prefill_wall_s = result.ttft_ns * 1e-9, result.ttft_wall_s
    return {
        "model": plan.model.name, "dtype": plan.dtype, "flash": flash, "ram_mapped": ram.ram_mapped,
        "prompt": prompt, "prompt_tokens": prompt_tokens, "tokens": result.tokens, "text": result.text,
        "wall_s": result.wall_s,
        # overall: the generated tokens over the whole emulation, boot and prompt included
        "emulated_tokens_per_s": per_s(n_new, result.wall_s),
        "decode_wall_s_per_token": decode_wall_s,
        # Every rate, labelled: prompt (prefill: from the first prompt position to the first
        # token, boot excluded), decode (per generated token after the first), overall (the
        # generated tokens over everything, boot and prompt included); on this machine
        # (emulator) and on the simulated device. With one token there is no decode step
        # (decode_steps 0): the prompt's last forward pass stands for one.
        "decode_steps": len([p for p in result.per_position if p.position >= n_prompt]),
        # each decode pass on the device, in order: how a token's time grows with the position
        # (attention reads every earlier position)
        "decode_by_position": [{"position": p.position, "device_ms": p.device_ns * 1e-6,
                                "compute_ms": p.compute_ns * 1e-6, "io_ms": p.io_ns * 1e-6}
                               for p in result.per_position if p.position >= n_prompt],
        "rates": {
            "emulator": {"prefill_s": prefill_wall_s, "prefill_positions_per_s": per_s(n_prompt, prefill_wall_s),
                         "decode_s_per_token": decode_wall_s, "decode_tokens_per_s": per_s(1, decode_wall_s),
                         "overall_s": result.wall_s, "overall_tokens_per_s": per_s(n_new, result.wall_s)},
            "device": {"boot_s": result.boot_ns * 1e-9,
                       "prefill_s": prefill_s, "prefill_positions_per_s": per_s(n_prompt, prefill_s),
                       "decode_s_per_token": device_s, "decode_tokens_per_s": per_s(1, device_s),
                       "overall_s": result.device_ns * 1e-9,
                       "overall_tokens_per_s": per_s(n_new, result.device_ns * 1e-9)},
        },
        "prefill_positions": n_prompt,
        "prefill_chunks": len([p for p in result.per_position if p.position < n_prompt]),
        "prefill_chunk": chunk or plan.prefill_chunk,
        "device": {
            "io_s_per_token": io_s, "compute_s_per_token": compute_s, "s_per_token": device_s,
            "tokens_per_s": 1.0 / device_s if device_s else 0.0,
            # s_per_token = io + compute + crc - overlap: what runs at once (the
            # double-buffered weight tiles, a separate CRC pass) hides; stall = the CPU waiting
            "overlap_s_per_token": overlap_s, "stall_s_per_token": stall_s,
            "sequential_s_per_token": sequential_s,
            "overlap_fraction": overlap_s / hideable if hideable > 0 else 0.0,
            "instructions_per_token": instructions, "cycles_per_token": cycles,
            "cpi": cycles / instructions if instructions else 0.0, "cpu_hz": cpu_hz,
            "counter": result.counter,
            "compute_model": compute_model,
            "memory_cycles_per_token": memory_cycles,
            "memory_model": memory_model,
            "crc_s_per_token": crc_s,
            "crc_model": ("inline: the flash controller's DMA feeds the CRC unit, at no cost"
                          if plan.profile.crc.bytes_per_s is None else
                          f"a second DMA pass through the CRC unit after each read, at "
                          f"{plan.profile.crc.bytes_per_s / 1e6:g} MB/s ({plan.profile.crc.source})")
                         + _checked(plan),
            "verify": plan.verify, "verify_why": plan.verify_why,
            # time to first token: from the first prompt position to the first token chosen
            "prefill_s": result.ttft_ns * 1e-9, "prefill_wall_s": result.ttft_wall_s,
            "boot_s": result.boot_ns * 1e-9,
            "run_s": result.device_ns * 1e-9,   # the whole run: boot, prompt and every token
            "io_model": f"{flash} flash" + (f" + {plan.profile.psram.part} PSRAM" if plan.kv.placement == "psram" else "")
                        + ", simulated from datasheet timing, by DMA concurrent with the CPU (double-buffered weight tiles)",
        },
        # reads that failed their CRC once and passed when read again (transient errors)
        "crc_retries": list(result.crc_retries),
        "flash_bytes_per_token": int(mean([p.flash_bytes for p in decode])),
        # what the plan expects a decoded token to read (the token's own text bytes aside)
        "flash_bytes_per_token_plan": {"weights": plan.totals.flash_bytes_per_token,
                                       "tables": plan.totals.table_bytes_per_token},
        "flash_bytes_total": result.flash_bytes,
        "psram_bytes_per_token": int(mean([p.psram_bytes for p in decode])),
        "psram_bytes_total": result.psram_bytes,
        "kv_placement": plan.kv.placement, "ctx": plan.ctx, "board": plan.board,
        "board_profile": plan.profile.summary(),
        "peak_ram": {"measured": ram.peak_bytes, "static": ram.static_bytes,
                     "arena_high_water": ram.arena_high_water, "arena": ram.arena_bytes,
                     "stack_used": ram.stack_used, "stack_reserve": ram.stack_bytes,
                     "plan": plan.peak_ram_bytes, "plan_arena": plan.arena_bytes},
        "tcm": {"bytes": result.tcm_bytes, "high_water": result.tcm_high_water, "plan": plan.tcm_bytes,
                "buffers": tcm_buffers, "why": plan.tcm_why},
        "dcache": result.dcache,
        "bus_sharing_cycles": result.bus_cycles,
        "stage_kinds": kinds,
        "stages": [{"index": s.index, "name": s.name, "calls": s.calls, "flash_bytes": s.flash_bytes,
                    "flash_s": s.flash_ns * 1e-9, "wall_s": s.wall_s, "instructions": s.instructions,
                    "compute_s": s.compute_ns * 1e-9, "device_s": s.device_ns * 1e-9,
                    "overlap_s": s.overlap_ns * 1e-9} for s in result.stages],
    }


def _checked(plan: Plan) -> str:
    """What the firmware checks, and when (docs/runtime.md "Integrity")."""
    if plan.runtime == "xip":
        return "; every weight blob checked once at boot, then read in place unchecked (embedding rows too)"
    rows = "every embedding row against its row CRC as it is read"
    if plan.verify == "boot":
        return f"; every weight blob checked once at boot, streamed tiles not re-checked; {rows}"
    return f"; every streamed blob checked as it streams, {rows}; a failed check is read again once"


def to_json(report: dict) -> str:
    return json.dumps(report, indent=1)
