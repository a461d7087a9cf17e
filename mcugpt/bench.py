"""`mcugpt bench`: GPT-2 124M on every board, dtype and flash part, measured on the emulated
board, beside the paper's figures. Writes bench.json, bench.md and PNG plots.

Every figure comes from a real compile and a real run (`mcugpt.run.run`, tokens checked
against the numpy reference), except the "classic" column of the paper comparison, which
is arithmetic on the plan (what holding the whole model would need), and is labelled so.

Each build goes in OUT/builds/ and is removed as soon as no later step needs it (unless
keep_builds): a GPT-2 124M build is about 0.95 GiB in fp32 and 0.6 GiB in int8 (model.onnx
holds float32 weights either way, flash.img the dtype's), and at most three sweep builds and
one other exist at once.
"""

import json
import platform
import shutil
import time
from pathlib import Path

import onnx

from compiler.config import load_preset
from compiler.partition import partition
from compiler.pipeline import compile_model, output_folder
from compiler.plan import make_plan
from compiler.sampler import Sampling, check_request
from mcugpt.report import size, table
from mcugpt.run import Build, run
from target.boards import BOARDS
from target.errors import McugptError
from target.stages import KIND_BY_NAME

PROMPT = "Hello, my name is"
# A 32-token prompt for the time to first token (GPT-2's tokenizer)
LONG_PROMPT = ("The staged method runs a language model on a microcontroller by streaming every weight "
               "from flash, one stage at a time, so that the peak memory is a single stage")
PAPER = {"classic_ram": 120e6, "staged_ram": 8e6, "classic_tokens_per_s": 20.0, "staged_tokens_per_s": 2.0,
         "ctx": 512, "source": "Khudaiberdieva et al., GPT-2-small-like model, 64 MB device, context 512"}
FRONTIER_RAM = [512 << 10, 1 << 20, 2 << 20, 4 << 20, 8 << 20, 16 << 20, 32 << 20, 64 << 20]
# The frontier holds the context at 4 positions (a 288 KiB fp32 KV cache for GPT-2 124M) so
# the budget goes to weights: what more SRAM buys is resident weights, i.e. less flash I/O.
FRONTIER_CTX = 4
QUANT_TOKENS = 300   # positions compared for the int8 quantization error


def machine() -> str:
    import os
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _row(report: dict, board: str, dtype: str, flash: str, compile_s: float, tcm: str = "auto") -> dict:
    d, ram = report["device"], report["peak_ram"]
    return {
        "board": board, "dtype": dtype, "flash": flash, "tcm": tcm if BOARDS[board].dtcm else "-",
        "ctx": report["ctx"], "kv": report["kv_placement"],
        "tokens_equal_reference": report["check"]["tokens_equal"],
        "logits_max_abs_error": report["check"]["logits_max_abs_error"],
        "peak_sram_measured": ram["measured"], "peak_sram_plan": ram["plan"],
        "flash_bytes_per_token": report["flash_bytes_per_token"],
        "psram_bytes_per_token": report["psram_bytes_per_token"],
        "io_ms_per_token": 1e3 * d["io_s_per_token"], "compute_ms_per_token": 1e3 * d["compute_s_per_token"],
        "crc_ms_per_token": 1e3 * d["crc_s_per_token"],
        "memory_ms_per_token": 1e3 * d["memory_cycles_per_token"] / d["cpu_hz"],
        "device_ms_per_token": 1e3 * d["s_per_token"], "device_tokens_per_s": d["tokens_per_s"],
        "emulator_s_per_token": report["decode_wall_s_per_token"],
        "emulator_tokens_per_s": 1.0 / report["decode_wall_s_per_token"] if report["decode_wall_s_per_token"] else 0.0,
        "compile_s": compile_s,
    }


def sweep(out: Path, model: str, tokens: int, progress, discard) -> tuple[list[dict], list[dict]]:
    """Every board x dtype x flash option that fits, compiled and run; and those that do not
    fit, with compile's one-line reason. A board with a data TCM also runs with `--tcm off`
    (every buffer behind the D-cache), to show what the TCM placement is worth."""
    rows, refused = [], []
    configs = [(b, dt, "auto") for b in BOARDS for dt in ("fp32", "int8")]
    configs += [(b, "int8", "off") for b in BOARDS if BOARDS[b].dtcm]
    for board, dtype, tcm in progress(configs, desc="boards x dtypes"):
        t0 = time.perf_counter()
        try:
            name = f"{model}-{board}-{dtype}" + ("-tcm-off" if tcm == "off" else "")
            built = compile_model(model, out / "builds" / name, board=board, dtype=dtype, tcm=tcm, quiet=True)
        except McugptError as e:
            if tcm == "auto":
                refused.append({"board": board, "dtype": dtype, "why": str(e)})
            continue
        compile_s = time.perf_counter() - t0
        build = Build.open(built.out_dir)
        for flash in BOARDS[board].flash:
            report = run(build, PROMPT, tokens, Sampling(), flash=flash.part, check=True)
            rows.append(_row(report, board, dtype, flash.part, compile_s, tcm))
        if tcm == "off":   # (no later step runs the TCM-off builds)
            discard(built.out_dir)
    return rows, refused


# Where streaming I/O dominates: sim64 fp32 on its quad SPI flash, at a context short enough
# that a chunk of 16 positions fits beside the KV cache (the default context leaves room for 2)
IO_BOUND_TTFT = {"board": "sim64", "dtype": "fp32", "flash": "w25q01jv", "ctx": 256}


def _ttft(build: Build, board: str, dtype: str, flash: str) -> dict:
    """LONG_PROMPT's time to first token with the plan's prefill chunk and one position at a
    time, in the same build."""
    chunked = run(build, LONG_PROMPT, 1, Sampling(), flash=flash, check=True)
    single = run(build, LONG_PROMPT, 1, Sampling(), flash=flash, chunk=1)
    return {"board": board, "dtype": dtype, "flash": flash, "ctx": build.plan.ctx,
            "prompt_tokens": len(chunked["prompt_tokens"]),
            "chunk": chunked["prefill_chunk"], "exact": chunked["check"]["logits_identical"],
            "ttft_s": chunked["device"]["prefill_s"], "ttft_one_at_a_time_s": single["device"]["prefill_s"],
            "speedup": single["device"]["prefill_s"] / chunked["device"]["prefill_s"],
            "ttft_wall_s": chunked["device"]["prefill_wall_s"],
            "ttft_one_at_a_time_wall_s": single["device"]["prefill_wall_s"]}


def time_to_first_token(out: Path, model: str, rows: list[dict], progress) -> list[dict]:
    """Each build of the sweep (TCM auto), then IO_BOUND_TTFT: the time to first token with the
    plan's prefill chunk and one position at a time, in the same build and run of the bench."""
    out_rows = []
    for r in progress([r for r in rows if r["tcm"] != "off"] + [IO_BOUND_TTFT], desc="time to first token"):
        if r is IO_BOUND_TTFT:
            ctx = min(r["ctx"], load_preset(model).n_ctx)
            if any((x["board"], x["dtype"], x["flash"], x["ctx"]) == (r["board"], r["dtype"], r["flash"], ctx)
                   for x in out_rows):
                continue   # a small model's default context is already this short
            name = f"{model}-{r['board']}-{r['dtype']}-ctx{ctx}"
            compile_model(model, out / "builds" / name, board=r["board"], dtype=r["dtype"], ctx=ctx, quiet=True)
        else:
            name = f"{model}-{r['board']}-{r['dtype']}"
        out_rows.append(_ttft(Build.open(out / "builds" / name), r["board"], r["dtype"], r["flash"]))
    return out_rows


def xip_baseline(out: Path, model: str, rows: list[dict], ttft: list[dict], progress, discard) -> list[dict]:
    """The XIP baseline on each real board the model runs on: the same model and dtype built
    with `--runtime xip`, run on LONG_PROMPT one position at a time (as the ports do), its
    decode time and time to first token against mcugpt's from this bench run."""
    out_rows = []
    for r in progress([r for r in rows if r["tcm"] != "off" and BOARDS[r["board"]].buyable], desc="XIP baseline"):
        built = compile_model(model, out / "builds" / f"{model}-{r['board']}-{r['dtype']}-xip", board=r["board"],
                              dtype=r["dtype"], runtime="xip", quiet=True)
        rep = run(Build.open(built.out_dir), LONG_PROMPT, 2, Sampling(), flash=r["flash"], chunk=1, check=True)
        discard(built.out_dir)
        t = next(x for x in ttft if (x["board"], x["dtype"], x["flash"]) == (r["board"], r["dtype"], r["flash"]))
        d = rep["device"]
        out_rows.append({
            "board": r["board"], "dtype": r["dtype"], "flash": r["flash"], "exact": rep["check"]["logits_identical"],
            "xip_decode_ms": 1e3 * d["s_per_token"], "mcugpt_decode_ms": r["device_ms_per_token"],
            "decode_speedup": 1e3 * d["s_per_token"] / r["device_ms_per_token"],
            "xip_ttft_s": d["prefill_s"], "mcugpt_ttft_s": t["ttft_s"], "ttft_speedup": d["prefill_s"] / t["ttft_s"],
            "xip_peak_sram": rep["peak_ram"]["measured"], "mcugpt_peak_sram": r["peak_sram_measured"]})
    return out_rows


def xip_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    t = [[r["board"], r["dtype"], r["flash"], "yes" if r["exact"] else "NO", f"{r['xip_decode_ms']:.0f}",
          f"{r['mcugpt_decode_ms']:.0f}", f"{r['decode_speedup']:.2f}x", f"{r['xip_ttft_s']:.2f}",
          f"{r['mcugpt_ttft_s']:.2f}", f"{r['ttft_speedup']:.2f}x"] for r in rows]
    return ("\n## Against the XIP baseline\n\n```\n"
            + table(["board", "dtype", "flash", "exact", "XIP ms/token", "mcugpt ms/token", "decode speed-up",
                     "XIP TTFT s", "mcugpt TTFT s", "TTFT speed-up"], t, "llllrrrrrr")
            + "\n```\n\nXIP = the same model built with `--runtime xip`: weights read in place through the "
              "memory-mapped flash, each 32-byte D-cache line one read command of the part (command, address, "
              "dummy and data phases), the CPU waiting; the prompt one position at a time, as the MCU LLM ports "
              "run it. mcugpt = this bench's streamed build (decode from the table above, TTFT from the one "
              "before). Simulated device time, same part and clocks.\n")


def ttft_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    t = [[r["board"], r["dtype"], r["flash"], r["ctx"], r["prompt_tokens"], r["chunk"], "yes" if r["exact"] else "NO",
          f"{r['ttft_s']:.2f}", f"{r['ttft_one_at_a_time_s']:.2f}", f"{r['speedup']:.2f}x",
          f"{r['ttft_wall_s']:.1f}", f"{r['ttft_one_at_a_time_wall_s']:.1f}"] for r in rows]
    return ("\n## Time to first token\n\n```\n"
            + table(["board", "dtype", "flash", "context", "prompt", "chunk", "exact", "TTFT s", "one at a time s",
                     "speed-up", "wall s", "one at a time wall s"], t, "lllrrrlrrrrr")
            + "\n```\n\nTTFT = simulated device time from the first prompt position to the first token (after "
              "boot); one at a time = the same build with `mcugpt run --prefill-chunk 1`; exact = the chunked run's "
              "logits bit-identical to the numpy reference.\n")


def frontier(out: Path, model: str, progress, discard) -> list[dict]:
    """Simulated tokens/s against the RAM budget on the sim64 board: context FRONTIER_CTX,
    KV cache in SRAM, --group auto keeping what it can resident."""
    points = []
    for dtype in ("fp32", "int8"):
        for ram in progress(FRONTIER_RAM, desc=f"frontier {dtype}"):
            try:
                built = compile_model(model, out / "builds" / f"{model}-frontier-{dtype}-{ram}", ram=ram,
                                      ctx=FRONTIER_CTX, dtype=dtype, quiet=True)
            except McugptError as e:
                points.append({"dtype": dtype, "ram": ram, "error": str(e)})
                continue
            report = run(Build.open(built.out_dir), "Hello", 2, Sampling(), check=False)
            discard(built.out_dir)
            points.append({"dtype": dtype, "ram": ram, "ctx": report["ctx"],
                           "resident_bytes": built.plan.resident.bytes,
                           "flash_bytes_per_token": report["flash_bytes_per_token"],
                           "tile_bytes": built.plan.tile_bytes,
                           "peak_sram_measured": report["peak_ram"]["measured"],
                           "device_tokens_per_s": report["device"]["tokens_per_s"],
                           "io_ms_per_token": 1e3 * report["device"]["io_s_per_token"],
                           "compute_ms_per_token": 1e3 * report["device"]["compute_s_per_token"]})
    return points


def quantization_error(model: str, n_tokens: int, progress) -> dict:
    """int8 against fp32 on the numpy reference, teacher-forced on the fp32 model's own greedy
    continuation: per position, the RMS of the logit error (relative to the fp32 logits'
    standard deviation) and whether both pick the same top-1 token."""
    import numpy as np

    from compiler.reference import KVCache, Reference, generate
    from compiler.tokenizer import encode, load_tokenizer
    from compiler.weights import synthetic_weights
    cfg = load_preset(model)
    weights = synthetic_weights(cfg, 0)
    prompt = encode(load_tokenizer(), PROMPT)
    n = min(n_tokens, cfg.n_ctx - len(prompt))
    tokens = prompt + generate(Reference(cfg, weights), prompt, n, Sampling()).tokens
    fp32, int8 = Reference(cfg, weights), Reference(cfg, weights, dtype="int8")
    kv32, kv8 = KVCache.empty(cfg, cfg.n_ctx), KVCache.empty(cfg, cfg.n_ctx)
    rel_rms, agree = [], 0
    for pos in progress(range(len(tokens) - 1), desc="int8 vs fp32"):
        a, b = fp32.forward(tokens[pos], pos, kv32), int8.forward(tokens[pos], pos, kv8)
        if pos >= len(prompt) - 1:
            rel_rms.append(float(np.sqrt(np.mean((a - b) ** 2)) / np.std(a)))
            agree += int(np.argmax(a) == np.argmax(b))
    return {"positions": len(rel_rms), "logit_rms_error_relative": float(np.mean(rel_rms)),
            "logit_rms_error_relative_max": float(np.max(rel_rms)), "top1_agreement": agree / len(rel_rms),
            "weights": "synthetic (seed 0): real GPT-2 weights have other statistics"}


# What instruction counting may cost in wall time (the counter is a native block hook).
COUNTER_OVERHEAD_TARGET = 1.3


def counter_overhead(build_dir: Path, repeats: int = 3, progress=None) -> dict:
    """Wall time of the same run with the native instruction counter and without any, best
    of `repeats` each, interleaved; checked against COUNTER_OVERHEAD_TARGET."""
    from emulator.board import Board
    build = Build.open(build_dir)
    prompt = build.tokenizer().encode(PROMPT)
    best = {True: float("inf"), False: float("inf")}
    for _ in (progress or (lambda it, **kw: it))(range(repeats), desc="counter overhead"):
        for counting in (False, True):
            with Board.for_profile(build.path / "firmware.elf", build.path / "flash.img",
                                   build.plan.profile, count_instructions=counting) as board:
                t0 = time.perf_counter()
                board.run(prompt, 2)
                best[counting] = min(best[counting], time.perf_counter() - t0)
    ratio = best[True] / best[False]
    return {"counted_s": best[True], "uncounted_s": best[False], "ratio": ratio,
            "target": COUNTER_OVERHEAD_TARGET, "meets_target": ratio <= COUNTER_OVERHEAD_TARGET,
            "build": str(build_dir)}


def smallest_budget(cfg, stages, ctx: int, dtype: str) -> int:
    """The smallest SRAM budget the planner accepts for this context on sim64 (bisection)."""
    lo, hi = 1 << 10, 64 << 20
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            make_plan(cfg, stages, ram=mid, ctx=ctx, dtype=dtype)
            hi = mid
        except McugptError:
            lo = mid + 1
    return lo


def paper_comparison(out: Path, model: str, rows: list[dict], progress, discard) -> dict:
    """The paper's case at context 512: classic (everything resident) vs staged."""
    cfg = load_preset(model)
    ctx = min(PAPER["ctx"], cfg.n_ctx)
    result = {"paper": PAPER, "ctx": ctx, "dtypes": {}}
    for dtype in progress(("fp32", "int8"), desc="the paper's case"):
        build = Build.open(out / "builds" / f"{model}-sim64-{dtype}")
        stages = partition(onnx.load(str(build.path / "model.onnx"), load_external_data=False))
        plan = make_plan(cfg, stages, ram=64 << 20, ctx=ctx, dtype=dtype)
        acts = sum(b.bytes for b in plan.buffers if b.name not in ("weights", "weights_next", "kv", "kv_block", "resident"))
        kv = ctx * cfg.kv_bytes_per_token
        classic = plan.totals.weight_bytes + kv + acts
        # block stages only: embed reads two rows of its tables, the head streams the vocabulary
        largest_stage = max(s.weight_bytes for s in plan.stages if KIND_BY_NAME[s.kind].in_block)
        staged_whole = largest_stage + kv + acts
        minimal = smallest_budget(cfg, stages, ctx, dtype)
        measured = [r for r in rows if r["board"] == "sim64" and r["dtype"] == dtype]
        # classic: the same counted instructions with every weight already in RAM (no I/O)
        classic_s = min(r["compute_ms_per_token"] for r in measured) / 1e3
        # staged + grouped: the same context, the RAM the KV cache leaves keeps weights resident
        grouped_build = compile_model(model, out / "builds" / f"{model}-paper-grouped-{dtype}", ctx=ctx,
                                      dtype=dtype, group="auto", quiet=True)
        grouped = {flash: run(Build.open(grouped_build.out_dir), PROMPT, 2, Sampling(), flash=flash)
                   for flash in (m.part for m in BOARDS["sim64"].flash)}
        discard(grouped_build.out_dir)
        result["dtypes"][dtype] = {
            "classic_ram": classic, "staged_ram_whole_stage": staged_whole, "staged_ram_streamed_min": minimal,
            "kv_bytes": kv, "largest_block_stage_weights": largest_stage,
            "classic_tokens_per_s_compute_bound": 1.0 / classic_s,
            "staged_tokens_per_s": {r["flash"]: r["device_tokens_per_s"] for r in measured},
            "grouped_resident_bytes": grouped_build.plan.resident.bytes,
            "grouped_ram": grouped_build.plan.peak_ram_bytes,
            "staged_grouped_tokens_per_s": {f: g["device"]["tokens_per_s"] for f, g in grouped.items()},
        }
    return result


def markdown(rows, paper, front, info) -> str:
    lines = [f"# mcugpt bench: {info['model']}", "",
             f"Machine: {info['machine']}. Date: {info['date']}. Command: `{info['command']}`.",
             f"Each configuration generates {info['tokens']} tokens after the prompt {PROMPT!r}, greedy, "
             "and is checked against the numpy reference.", "",
             "## Boards, dtypes and flash parts", ""]
    t = [[r["board"], r["dtype"], r["flash"], r["tcm"], r["ctx"], r["kv"], "yes" if r["tokens_equal_reference"] else "NO",
          size(r["peak_sram_measured"]), size(r["flash_bytes_per_token"]), size(r["psram_bytes_per_token"]),
          f"{r['io_ms_per_token']:.0f}", f"{r['compute_ms_per_token']:.0f}", f"{r['memory_ms_per_token']:.0f}",
          f"{r['crc_ms_per_token']:.0f}", f"{r['device_ms_per_token']:.0f}",
          f"{r['device_tokens_per_s']:.2f}", f"{r['emulator_tokens_per_s']:.2f}"] for r in rows]
    lines.append("```")
    lines.append(table(["board", "dtype", "flash", "TCM", "ctx", "KV", "exact", "peak SRAM", "flash/tok", "PSRAM/tok",
                        "I/O ms", "compute ms", "of it memory", "CRC ms", "device ms", "device tok/s",
                        "emulator tok/s"], t, "lllllllrrrrrrrrrr"))
    lines += ["```", "",
              "Every ms and tok/s figure is per decoded token (the prompt: the time to first token, below). "
              "device = simulated: I/O from datasheet timing, compute from the executed blocks' cycles (Cortex-M7 "
              "pipeline model) at the board's clock, overlapped as the firmware's double-buffered tiles overlap "
              "them, with the CRC check's second DMA pass where the board's CRC unit is not on the flash DMA's "
              "path (CRC ms; docs/boards.md); of it memory = the part of compute that is D-cache line fills and "
              "bus sharing with the DMA (emulator/dcache.py); TCM auto = the tiles, KV block and int8 input in "
              "the data TCM, off = all behind the D-cache; emulator tok/s = wall-clock "
              "decode speed of the emulation on the machine above.", "",
              f"## The paper's case: context {paper['ctx']}", ""]
    pt = []
    for dtype, d in paper["dtypes"].items():
        staged = ", ".join(f"{v:.2f} ({k})" for k, v in d["staged_tokens_per_s"].items())
        grouped = ", ".join(f"{v:.2f} ({k})" for k, v in d["staged_grouped_tokens_per_s"].items())
        pt.append([dtype, size(d["classic_ram"]), size(d["staged_ram_whole_stage"]), size(d["staged_ram_streamed_min"]),
                   f"{d['classic_tokens_per_s_compute_bound']:.2f}", staged,
                   f"{grouped} [{size(d['grouped_resident_bytes'])} resident]"])
    pt.append(["paper", f"{paper['paper']['classic_ram'] / 1e6:.0f} MB", f"{paper['paper']['staged_ram'] / 1e6:.0f} MB", "-",
               f"{paper['paper']['classic_tokens_per_s']:.0f}", f"{paper['paper']['staged_tokens_per_s']:.0f}", "-"])
    lines += ["```", table(["", "classic RAM", "staged RAM (1 stage whole)", "staged RAM (streamed, min)",
                            "classic tok/s (M7 compute bound)", "staged tok/s (simulated)",
                            "staged+grouped tok/s (64 MiB)"], pt, "lrrrrll"), "```", "",
              "classic = all weights + KV cache + activations resident (arithmetic on the plan); staged (1 stage "
              "whole) = the largest block stage's weights + KV cache + activations, the paper's accounting; "
              "staged (streamed) = the smallest budget mcugpt's planner accepts at this context (tiles of rows). "
              f"Both staged figures include the {paper['ctx']}-token KV cache "
              f"({size(paper['dtypes']['fp32']['kv_bytes'])} in float32; an int8 build's smallest budget takes "
              "the int8 cache, as --kv auto does), which the paper's 8 MB leaves out. "
              "staged+grouped = the 64 MiB sim64 board at this context with `--group auto`: the SRAM the "
              "KV cache leaves holds weights resident.", "",
              f"## RAM vs tokens/s (sim64, context {FRONTIER_CTX}, --group auto)", "", "```"]
    ft = [[p["dtype"], size(p["ram"]), size(p.get("resident_bytes", 0)), size(p.get("flash_bytes_per_token", 0)),
           f"{p['device_tokens_per_s']:.2f}" if "error" not in p else p["error"][:60]] for p in front]
    lines += [table(["dtype", "RAM budget", "resident", "flash/token", "device tok/s"], ft, "lrrrl"), "```", "",
              "![time per token](time_split.png)", "", "![frontier](frontier.png)", ""]
    return "\n".join(lines)


def quant_markdown(q: dict) -> str:
    return (f"\n## int8 against fp32\n\nOver {q['positions']} positions of the fp32 model's own greedy "
            f"continuation (teacher-forced), the int8 logits differ by an RMS of "
            f"{100 * q['logit_rms_error_relative']:.2f}% of the fp32 logits' standard deviation on average "
            f"(worst position {100 * q['logit_rms_error_relative_max']:.2f}%), and the top-1 token agrees at "
            f"{100 * q['top1_agreement']:.1f}% of positions. Weights: {q['weights']}.\n")


def refused_markdown(refused: list[dict]) -> str:
    if not refused:
        return ""
    return ("\n## What does not fit\n\n" + "\n".join(f"- {r['board']} {r['dtype']}: {r['why']}" for r in refused)
            + "\n")


def overhead_markdown(o: dict) -> str:
    verdict = "meets" if o["meets_target"] else "MISSES"
    return (f"\n## Counter overhead\n\nCounting every executed instruction (the native block counter) "
            f"makes a run take {o['ratio']:.2f}x the wall time of the same run uncounted "
            f"({o['counted_s']:.2f} s vs {o['uncounted_s']:.2f} s, best of 3, on the machine above): "
            f"{verdict} the target of {o['target']:g}x.\n")


def plots(out: Path, rows, front, model: str) -> dict:
    """time_split.png and frontier.png; returns their titles (also each PNG's Title)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fig, ax = plt.subplots(figsize=(11, 5))
    labels = [f"{r['board']}\n{r['dtype']}\n{r['flash']}" + ("\nTCM off" if r['tcm'] == "off" else "") for r in rows]
    x = np.arange(len(rows))
    for k, (key, name) in enumerate((("io_ms_per_token", "I/O (flash + PSRAM, simulated DMA)"),
                                     ("compute_ms_per_token", "compute (cycles of the executed blocks)"),
                                     ("device_ms_per_token", "device time (overlapped)"))):
        ax.bar(x + (k - 1) * 0.27, [r[key] for r in rows], 0.27, label=name)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("ms per token (simulated device)")
    ax.set_yscale("log")
    titles = {"time_split.png": f"{model}: time per token by board, dtype and flash part"}
    ax.set_title(titles["time_split.png"])
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "time_split.png", dpi=110, metadata={"Title": titles["time_split.png"]})
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for dtype in ("fp32", "int8"):
        pts = [p for p in front if p["dtype"] == dtype and "error" not in p]
        ax.plot([p["ram"] / 2**20 for p in pts], [p["device_tokens_per_s"] for p in pts], "o-", label=dtype)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("SRAM budget (MiB)")
    ax.set_ylabel("simulated tokens/s")
    flash = BOARDS["sim64"].flash[0]
    titles["frontier.png"] = (f"{model} on sim64 ({flash.chips} x {flash.part} flash, context {FRONTIER_CTX}): "
                              "RAM vs speed")
    ax.set_title(titles["frontier.png"])
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=110, metadata={"Title": titles["frontier.png"]})
    plt.close(fig)
    return titles


def bench(out: Path, model: str = "gpt2", tokens: int = 3, progress=None, command: str = "",
          keep_builds: bool = False) -> dict:
    """`keep_builds`: leave every build in out/builds (up to about 17 GiB for GPT-2 124M) instead
    of removing each once no later step needs it."""
    check_request(0.0, 1, tokens)
    model = load_preset(model).name   # (an unknown preset fails here, before any work)
    out = output_folder(out)
    progress = progress or (lambda it, **kw: it)

    def discard(build_dir: Path):
        if not keep_builds:
            shutil.rmtree(build_dir, ignore_errors=True)

    t0 = time.perf_counter()
    rows, refused = sweep(out, model, tokens, progress, discard)
    ttft = time_to_first_token(out, model, rows, progress)
    xip = xip_baseline(out, model, rows, ttft, progress, discard)
    for r in rows:   # only the paper's case and the counter overhead run on sweep builds from here
        if r["board"] != "sim64":
            discard(out / "builds" / f"{model}-{r['board']}-{r['dtype']}")
    paper = paper_comparison(out, model, rows, progress, discard)
    discard(out / "builds" / f"{model}-sim64-fp32")
    front = frontier(out, model, progress, discard)
    quant = quantization_error(model, QUANT_TOKENS, progress)
    overhead = counter_overhead(out / "builds" / f"{model}-sim64-int8", progress=progress)
    discard(out / "builds" / f"{model}-sim64-int8")
    if not keep_builds and (out / "builds").is_dir() and not any((out / "builds").iterdir()):
        (out / "builds").rmdir()
    info = {"model": model, "tokens": tokens, "machine": machine(), "date": time.strftime("%Y-%m-%d"),
            "command": command or f"mcugpt bench --model {model} --tokens {tokens} --out {out}",
            "wall_s": time.perf_counter() - t0, "builds_kept": keep_builds}
    result = {"info": info, "configs": rows, "refused": refused, "time_to_first_token": ttft, "xip_baseline": xip,
              "paper": paper,
              "frontier": front,
              "int8_vs_fp32": quant,
              "counter_overhead": overhead,
              "plots": plots(out, rows, front, model)}
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    (out / "bench.md").write_text(markdown(rows, paper, front, info) + refused_markdown(refused)
                                  + ttft_markdown(ttft) + xip_markdown(xip) + quant_markdown(quant)
                                  + overhead_markdown(overhead))
    return result
