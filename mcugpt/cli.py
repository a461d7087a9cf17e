"""The `mcugpt` command: compile GPT-2 for a microcontroller, run the numpy reference, run the
firmware on the emulated board, benchmark, inspect an image. Every failure a user can cause
ends in one line, `mcugpt: error: ...`: exit 2 when the command line itself cannot be parsed
(argparse: an unknown option, a missing argument, a value that is not a number), exit 1 when a
value is refused or the work fails. Ctrl-C ends in `mcugpt: interrupted`, exit 130.

Options mean the same in every command: --seed is always the sampling seed, --weights-seed
the seed of the synthetic weights."""

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from compiler.config import preset_names
from target.boards import BOARDS
from target.errors import McugptError

BOARD_HELP = ", ".join(f"{b.name} ({b.doc.split(':')[0] if b.buyable else 'the abstract 64 MiB device'})"
                       for b in BOARDS.values())

EXAMPLES = """examples:
  mcugpt compile --model gpt2 --out build/gpt2          GPT-2 124M, synthetic weights, 64 MiB RAM
  mcugpt compile --model tiny --ram 1MiB --out build/t  a tiny model under a 1 MiB budget
  mcugpt compile --weights ~/gpt2-hf --out build/real   a Hugging Face checkpoint folder
  mcugpt reference --model gpt2 --prompt "Hello" --tokens 8 --json
  mcugpt run --build build/gpt2 --prompt "Hello, my name is" --tokens 16
  mcugpt run --build build/gpt2 --prompt "Once" --temperature 0.8 --top-k 40 --seed 7 --check
  mcugpt fit --model gpt2                               every board x dtype: fits? context? tokens/s?
  mcugpt inspect build/gpt2/flash.img

exit status: 0 done; 1 an input was refused or the work failed (one line: mcugpt: error: ...);
2 the command line could not be parsed (see the command's --help); 130 interrupted (Ctrl-C)
"""


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as mcugpt's one line (exit 2) and a pointer to --help."""

    def error(self, message):
        # 3.11 quotes every choice: "(choose from 'fp32', 'int8')"
        message = re.sub(r"\(choose from (.*)\)", lambda m: f"(choose from {m.group(1).replace(chr(39), '')})",
                         message)
        self.exit(2, f"mcugpt: error: {message}; see {self.prog} --help\n")


def parse_size(text: str) -> int:
    """Bytes from '67108864', '64MiB', '512K', '8 MB' (K/M/G are powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(i?[bB])?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size (examples: 65536, 512KiB, 64MiB)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def _model_args(p: argparse.ArgumentParser):
    p.add_argument("--model", metavar="PRESET",
                   help=f"model shapes: one of {', '.join(preset_names())} (default gpt2; with "
                        "--weights, the folder's config.json wins and this only names the model)")
    p.add_argument("--weights", metavar="DIR",
                   help="a Hugging Face GPT-2 checkpoint folder (config.json + model.safetensors or its "
                        "shards, optional vocab.json + merges.txt; what is accepted: docs/checkpoints.md); "
                        "default: synthetic weights")
    p.add_argument("--weights-seed", type=int, default=0, metavar="N",
                   help="seed of the synthetic weights, 0 .. 2^64-1 (default 0); ignored with --weights")


def _prompt_args(p: argparse.ArgumentParser):
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", help="text to continue")
    g.add_argument("--prompt-file", metavar="PATH",
                   help="read the text to continue from a UTF-8 file (- for standard input); its final "
                        "newline, if any, is dropped (one: an editor's)")


def read_prompt(a) -> str:
    """The prompt's text, from --prompt or --prompt-file."""
    if a.prompt is not None:
        return a.prompt
    path = a.prompt_file
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as e:
        raise McugptError(f"--prompt-file {path}: cannot read it ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise McugptError(f"--prompt-file {path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                          f"{e.start:,})") from None
    return text.removesuffix("\n")


def _sampling_args(p: argparse.ArgumentParser):
    p.add_argument("--greedy", action="store_true", help="always take the most likely token (the default)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sample with this temperature (> 0, a float32: at most 3.4e38) instead of greedy "
                        "decoding")
    p.add_argument("--top-k", type=int, default=40, help="sample among the k most likely tokens (default 40)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed of the sampling PRNG (xorshift64*, reproduced bit for bit by the firmware; "
                        "0 .. 2^64-1, default 0)")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="mcugpt", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Compile GPT-2 into staged firmware for a microcontroller with little RAM: the "
                    "model is split into atomic stages (6 per transformer block) that run one after "
                    "another, each streaming its weights from external flash.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("compile", help="GPT-2 -> ONNX -> stages -> memory plan -> flash image",
                       description="Export the model to ONNX, partition the graph into atomic stages, "
                                   "plan RAM under a budget and write DIR/model.onnx, DIR/plan.json, "
                                   "DIR/flash.img and the firmware's generated headers in DIR/include.")
    _model_args(c)
    c.add_argument("--board", default="sim64", metavar="NAME",
                   help=f"target board: {BOARD_HELP}; see docs/boards.md and `mcugpt fit`")
    c.add_argument("--dtype", default="fp32", choices=["fp32", "int8"],
                   help="weights in flash: fp32, or int8 per output row with float32 scales "
                        "(activations quantized per vector; exact integer dot products)")
    c.add_argument("--ram", type=parse_size, metavar="BYTES",
                   help="SRAM the model may use, stack included (default: all the board's SRAM)")
    c.add_argument("--group", default="auto", choices=["auto", "none"],
                   help="auto (default): keep weights resident in the SRAM left after the context "
                        "and buffers, smallest tensors first (most I/O time saved per byte), so "
                        "whole groups of stages run without flash I/O; none: stream every weight "
                        "every token")
    c.add_argument("--tcm", default="auto", choices=["auto", "off"],
                   help="auto (default): on a board with a data TCM, put the weight tiles, the KV "
                        "block and the int8 input there (zero-wait, no D-cache line fills); off: "
                        "everything in the SRAM arena, behind the D-cache (to compare)")
    c.add_argument("--kv", default="auto", choices=["auto", "fp32", "int8"],
                   help="KV cache keys and values: auto (default: fp32, or for int8 weights int8 when "
                        "fp32 would not reach the context and int8 reaches a longer one), fp32, or int8 per "
                        "position and head with float32 scales (the reference does the same arithmetic: "
                        "bit-identical)")
    c.add_argument("--verify", default="auto", choices=["auto", "stream", "boot"],
                   help="when weight CRCs are checked: stream (every blob each time it streams), boot "
                        "(every blob once at boot, then streamed unchecked), or auto (default: boot where "
                        "the board's CRC unit is a second DMA pass that would bound the token, else stream)")
    c.add_argument("--runtime", default="stream", choices=["stream", "xip"],
                   help="stream (default): weights streamed by DMA into tile buffers, the method; xip: "
                        "read in place through the memory-mapped flash and the D-cache, as most MCU LLM "
                        "ports do (a baseline to compare against)")
    c.add_argument("--tiers", default="auto", choices=["auto", "flash-only"],
                   help="auto (default, with --verify boot): the tail of every weight tile in the PSRAM "
                        "the KV cache leaves, copied there at boot and read by the PSRAM's DMA while the "
                        "flash's reads the rest of the tile; flash-only: every streamed weight from the "
                        "flash (to compare)")
    c.add_argument("--prefill", type=int, metavar="N",
                   help="prompt positions per chunk the plan holds activations for (default: the largest "
                        "up to 16 that fits beside the context; 1: one position at a time)")
    c.add_argument("--ctx", type=int, metavar="N",
                   help="context to plan for (KV cache positions); default: the model's, or the "
                        "largest the RAM budget allows")
    c.add_argument("--out", required=True, metavar="DIR", help="output folder")
    c.add_argument("--cc", default="zig", choices=["zig", "arm-none-eabi-gcc"],
                   help="C compiler for DIR/firmware.elf: zig (pip-installed, the default) or "
                        "arm-none-eabi-gcc")
    c.add_argument("--json", action="store_true", help="print the plan as JSON instead of tables")
    c.add_argument("--quiet", action="store_true", help="no progress bars")

    r = sub.add_parser("reference", help="generate text with the numpy reference (the oracle)",
                       description="Run GPT-2 in numpy, one token at a time with a KV cache, float32. "
                                   "The emulated firmware must produce exactly these tokens.")
    _model_args(r)
    _prompt_args(r)
    r.add_argument("--tokens", type=int, default=16, metavar="N", help="tokens to generate (default 16)")
    r.add_argument("--ctx", type=int, metavar="N", help="context limit (default: the model's)")
    r.add_argument("--dtype", default="fp32", choices=["fp32", "int8"],
                   help="weights: fp32, or int8 as `compile --dtype int8` stores them")
    r.add_argument("--kv", default="fp32", choices=["fp32", "int8"],
                   help="KV cache: fp32, or int8 per position and head as a build whose plan chose it")
    _sampling_args(r)
    r.add_argument("--json", action="store_true",
                   help="print one JSON object: prompt_tokens, tokens, text and settings")

    u = sub.add_parser("run", help="generate text on the emulated Cortex-M7 board",
                       description="Run DIR/firmware.elf on the emulated board (Unicorn Cortex-M7, SPI NOR "
                                   "flash holding DIR/flash.img), stream the text as it is generated, then "
                                   "print a summary: the prompt (prefill), decode and overall rates on this "
                                   "machine and on the device, the simulated device time per decoded token "
                                   "(flash and PSRAM I/O simulated from datasheet timing, compute from the "
                                   "executed basic blocks' cycles (Cortex-M7 pipeline model), overlapped as "
                                   "the double-buffered tiles overlap them), flash bytes per token, measured "
                                   "peak RAM vs the plan, "
                                   "and the slowest stage kinds.")
    u.add_argument("--build", required=True, metavar="DIR", help="a folder written by `mcugpt compile`")
    _prompt_args(u)
    u.add_argument("--tokens", type=int, default=16, metavar="N", help="tokens to generate (default 16)")
    _sampling_args(u)
    u.add_argument("--ram", type=parse_size, metavar="BYTES",
                   help="SRAM the board maps (default: all the board has), from the build's RAM budget "
                        "(compile --ram: the firmware's stack is at its top) to the board's SRAM; touching "
                        "more is a fault")
    u.add_argument("--flash", metavar="PART",
                   help="one of the board's flash alternatives instead of its own (sim64: mx66uw1g45g octal, "
                        "the default, or w25q01jv quad SPI); `mcugpt fit --json` lists each board's parts")
    u.add_argument("--check", action="store_true",
                   help="also run the numpy reference and compare tokens and logits")
    u.add_argument("--check-stages", action="store_true",
                   help="also capture every stage's output at the prompt's last position on the board and "
                        "compare it with the numpy reference (bit for bit) and with onnxruntime running the "
                        "stage's own ONNX subgraph (within a tolerance); print a table per stage and fail "
                        "naming the first stage that differs from the reference (runs the prompt with "
                        "--prefill-chunk 1; docs/check_stages.md)")
    u.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="stop the board after this much host time, a positive number (with --gdb: CPU "
                        "time, so a run paused at a breakpoint is not stopped)")
    u.add_argument("--gdb", metavar="PORT",
                   help="start halted at reset with a GDB server on PORT (udbserver; it listens on all "
                        "interfaces) and run under the debugger: attach with `gdb-multiarch "
                        "DIR/firmware.elf -ex 'target remote :PORT'`; same tokens and simulated times "
                        "(docs/debugging.md)")
    u.add_argument("--prefill-chunk", type=int, metavar="N",
                   help="prompt positions processed together, 1 .. the plan's chunk (default: the plan's; "
                        "1: one position at a time, to compare the time to first token)")
    u.add_argument("--trace", metavar="FILE",
                   help="write the run's timeline on the board's simulated clock to FILE (Chrome/Perfetto "
                        "trace events: open it at ui.perfetto.dev): stages, flash and PSRAM transfers, the "
                        "CPU's waits (docs/timeline.md)")
    u.add_argument("--by-function", action="store_true",
                   help="also say where the CPU's cycles go: each firmware function's cycles per decoded "
                        "token (over the whole run, boot and prompt included, when --tokens 1 decodes none), "
                        "from the same per-block cycle count as the device time (docs/board.md)")
    u.add_argument("--inject", action="append", default=[], metavar="KIND[:RATE|@N]",
                   help="inject a fault into the board (repeatable): flash-flip@N or :RATE (one bit flipped in "
                        "the Nth flash read, or in each read with that probability), flash-stuck[@ADDR] (a bit "
                        "stuck at a flash address; default: one the seed picks in a weight blob), flash-dead@N "
                        "(from the Nth read on the flash returns 0xFF), dma-hang@N (the Nth DMA transfer never "
                        "completes), psram-flip@N or :RATE; the summary says what each hit and how it was "
                        "handled (retried, fault); a fault the build cannot detect is refused "
                        "(docs/reliability.md)")
    u.add_argument("--inject-seed", type=int, default=0, metavar="N",
                   help="seed of the injected faults' random choices (bit, read, address), 0 .. 2^64-1 "
                        "(default 0)")
    u.add_argument("--json", action="store_true", help="print one JSON object (no streaming text)")

    b = sub.add_parser("bench", help="GPT-2 on every board and dtype, beside the paper",
                       description="Compile and run the model for every board profile "
                                   f"({', '.join(BOARDS)}), fp32 and int8, where it fits; "
                                   "check every run against the numpy reference; compare with the paper's "
                                   "figures at context 512; sweep the RAM budget. Writes DIR/bench.json, "
                                   "DIR/bench.md and PNG plots. Takes several minutes for GPT-2 124M, and "
                                   "disk for its builds in DIR/builds: about 0.95 GiB per fp32 build, 0.6 GiB "
                                   "per int8 build, at most about 2.7 GiB at once (each is removed once no later "
                                   "step needs it).")
    b.add_argument("--model", default="gpt2", metavar="PRESET", help="model preset (default gpt2)")
    b.add_argument("--tokens", type=int, default=3, metavar="N", help="tokens per run (default 3)")
    b.add_argument("--out", default="build/bench", metavar="DIR", help="output folder (default build/bench)")
    b.add_argument("--keep-builds", action="store_true",
                   help="keep every build in DIR/builds (up to about 17 GiB for GPT-2 124M: 23 builds) instead "
                        "of removing each once no later step needs it")
    b.add_argument("--json", action="store_true", help="print bench.json instead of the Markdown table")

    f = sub.add_parser("fit", help="which boards can run the model: flash, SRAM, context, tokens/s",
                       description="For every board and dtype: whether the flash image fits the board's "
                                   "flash and the memory plan its SRAM, the largest context its RAM or "
                                   "PSRAM allows, and the simulated tokens/s, measured by compiling the "
                                   "model into OUT and running one token on the emulated board (--no-run "
                                   "skips that). The same planner and board as compile and run.")
    _model_args(f)
    f.add_argument("--no-run", action="store_true", help="plan only: no compile, no tokens/s")
    f.add_argument("--out", default="build/fit", metavar="DIR",
                   help="where the builds that measure tokens/s go (default build/fit)")
    f.add_argument("--json", action="store_true",
                   help="print a JSON list: board, dtype, fits, why, ctx, tokens_per_s and the figures behind them")

    i = sub.add_parser("inspect", help="print and verify a flash image",
                       description="Print the image's header, stage table and tensor table, and "
                                   "check every CRC32 (header, tables, token table, each weight blob).")
    i.add_argument("image", metavar="IMAGE", help="a flash.img written by `mcugpt compile`")
    i.add_argument("--no-verify", action="store_true", help="skip the weight CRCs (fast)")
    i.add_argument("--json", action="store_true", help="print the header and tables as JSON")

    z = sub.add_parser("fuzz", help="a seeded campaign of corrupt images, odd checkpoints and strange arguments",
                       description="Compile the tiny model once into DIR/build, then run seeded cases, each a "
                                   "`mcugpt` command in its own process with a timeout: mutated flash images "
                                   "(inspect and run), mutated checkpoint folders (reference, compile, run "
                                   "--check) and random options of every command. Each case ends as a clean "
                                   "error, a traceback, a hang, a signal, or exit 0 with the clean run's "
                                   "answer or another; prints a table per campaign and a reproducer per "
                                   "failing case, and exits 1 if any case failed (docs/reliability.md).")
    z.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the cases (default 0)")
    z.add_argument("--images", type=int, default=300, metavar="N", help="mutated flash images (default 300)")
    z.add_argument("--checkpoints", type=int, default=50, metavar="N",
                   help="mutated checkpoint folders (default 50)")
    z.add_argument("--cli", type=int, default=100, metavar="N", help="random command lines (default 100; the defaults "
                   "are what CI runs, about a minute on 2 cores)")
    z.add_argument("--only", action="append", metavar="CAMPAIGN:INDEX",
                   help="run only this case (repeatable), e.g. images:17, and keep its files in DIR/cases")
    z.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="a command still running after this is a hang (default 60; fit's and bench's x3)")
    z.add_argument("--jobs", type=int, default=2, metavar="N", help="cases run at once (default 2)")
    z.add_argument("--fresh", action="store_true",
                   help="run each command as a fresh `python -m mcugpt.cli` instead of forking it from a server "
                        "that has mcugpt loaded (about 2x slower; the same outcomes)")
    z.add_argument("--out", default="build/fuzz", metavar="DIR",
                   help="the tiny build, the checkpoint and the cases' files (default build/fuzz)")
    z.add_argument("--json", action="store_true", help="print the report as JSON: counts, failures, every case")
    return ap


def cmd_compile(a) -> None:
    from compiler.pipeline import compile_model
    from mcugpt.report import plan_summary, size, stage_table
    t0 = time.time()
    res = compile_model(a.model, a.out, weights_dir=a.weights, weights_seed=a.weights_seed, ram=a.ram,
                        ctx=a.ctx, quiet=a.quiet or a.json, cc=a.cc, dtype=a.dtype, board=a.board,
                        group=a.group, tcm=a.tcm, kv_dtype=a.kv, verify=a.verify, prefill=a.prefill,
                        runtime=a.runtime, tiers=a.tiers)
    if a.json:
        print(res.plan.to_json())
        return
    print(stage_table(res.plan))
    print()
    print(plan_summary(res.plan))
    print(f"flash image  {res.out_dir / 'flash.img'}: {size(res.image_header['image_size'])}")
    print(f"wrote        {res.out_dir}/model.onnx, plan.json, flash.img, firmware.elf, include/*.h "
          f"in {time.time() - t0:.1f} s")


def cmd_reference(a) -> None:
    from compiler.pipeline import load_model
    from compiler.reference import Reference, generate
    from compiler.sampler import Sampling, check_request
    from compiler.tokenizer import encode
    check_request(a.temperature, a.top_k, a.tokens, a.seed)
    text_in = read_prompt(a)
    cfg, weights, tok = load_model(a.model, a.weights, a.weights_seed)
    sampling = Sampling(0.0 if a.greedy else a.temperature, a.top_k, a.seed)
    prompt = encode(tok, text_in)
    n_ctx = a.ctx or cfg.n_ctx
    if a.ctx is not None and not 1 <= a.ctx <= cfg.n_ctx:
        raise McugptError(f"--ctx {a.ctx} is outside 1..{cfg.n_ctx} (the model's context)")
    gen = generate(Reference(cfg, weights, dtype=a.dtype, kv_dtype=a.kv), prompt, a.tokens, sampling, n_ctx=n_ctx)
    text = tok.decode(gen.tokens)
    if a.json:
        print(json.dumps({"model": cfg.name, "prompt": text_in, "prompt_tokens": gen.prompt_tokens,
                          "tokens": gen.tokens, "text": text,
                          "sampling": {"greedy": sampling.greedy, "temperature": sampling.temperature,
                                       "top_k": sampling.top_k, "seed": sampling.seed}}))
    else:
        print(text_in + text)


def cmd_run(a) -> None:
    from compiler.sampler import Sampling
    from mcugpt.check_stages import failure, stage_table
    from mcugpt.report import run_summary
    from mcugpt.run import Build, run, to_json
    prompt = read_prompt(a)
    build = Build.open(a.build)
    sampling = Sampling(0.0 if a.greedy else a.temperature, a.top_k, a.seed)
    gdb_port = None
    if a.gdb is not None:
        if not a.gdb.strip().isdigit():
            raise McugptError(f"--gdb {a.gdb!r} is not a port number (1..65535)")
        gdb_port = int(a.gdb)

    def on_gdb_wait():  # stderr: stdout carries the text or the JSON
        print(f"mcugpt: the board is halted at reset; attach with: gdb-multiarch {build.path / 'firmware.elf'} "
              f"-ex 'target remote :{gdb_port}'", file=sys.stderr, flush=True)

    started = False
    # the prompt's positions as the board computes them (a bar on a terminal only): a long
    # prompt takes the board a while before the first token
    from compiler.pipeline import progress_bar
    bar = progress_bar(a.json)(desc="prompt", unit="position")

    def on_position(pos, n_prompt):
        if pos < n_prompt:
            bar.total = n_prompt
            bar.n = pos
            bar.refresh()

    def stream(text):  # the prompt, then the text as the board prints it
        nonlocal started
        if not started:
            bar.close()
            sys.stdout.write(prompt)
            started = True
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        report = run(build, prompt, a.tokens, sampling, ram=a.ram, flash=a.flash, on_text=None if a.json else stream,
                     check=a.check, timeout_s=a.timeout, chunk=a.prefill_chunk, on_position=on_position,
                     check_stages=a.check_stages, trace=a.trace, gdb_port=gdb_port, on_gdb_wait=on_gdb_wait,
                     inject=a.inject, inject_seed=a.inject_seed, by_function=a.by_function)
    finally:
        bar.close()
    if a.json:
        print(to_json(report))
    else:
        print("\n")
        print(run_summary(report))
        if a.check_stages:
            print()
            print(stage_table(report["check_stages"]))
    if a.check_stages and failure(report["check_stages"]):
        raise McugptError(failure(report["check_stages"]))
    if a.check and not (report["check"]["tokens_equal"] and report["check"]["logits_identical"]):
        raise McugptError(f"the board's tokens {report['tokens']} differ from the reference's "
                          f"{report['check']['reference_tokens']}" if not report["check"]["tokens_equal"] else
                          f"the board's logits differ from the reference's by up to "
                          f"{report['check']['logits_max_abs_error']:.3g}")


def cmd_bench(a) -> None:
    from compiler.pipeline import progress_bar
    from mcugpt.bench import bench
    out = Path(a.out)
    # progress on stderr, a line per step when it is not a terminal: the bench takes minutes
    result = bench(a.out, a.model, a.tokens, progress=progress_bar(lines=True),
                   command=" ".join(["mcugpt", *sys.argv[1:]]), keep_builds=a.keep_builds)
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        print((out / "bench.md").read_text())
        print(f"wrote {out}/bench.json, bench.md, time_split.png, frontier.png "
              f"in {result['info']['wall_s']:.0f} s")


def cmd_fit(a) -> None:
    from compiler.pipeline import progress_bar

    from .fit import fit, fit_table
    # a line per board when stderr is not a terminal: measuring compiles and runs each one
    rows = fit(a.model, a.weights, a.weights_seed, measure=not a.no_run, out=a.out,
               progress=progress_bar(a.json, lines=True))
    if a.json:
        print(json.dumps(rows, indent=1))
        return
    print(fit_table(rows))
    n = sum(r["fits"] for r in rows)
    print(f"\n{n} of {len(rows)} board x dtype combinations fit. Assumptions behind these figures: "
          f"`mcugpt fit --json` and docs/boards.md.")


def cmd_inspect(a) -> None:
    from compiler.pipeline import progress_bar
    from mcugpt.report import image_tables
    from target.flash_layout import read_image
    img = read_image(a.image, verify_weights=not a.no_verify, progress=progress_bar(a.json))
    if a.json:
        print(json.dumps({"header": img.header, "stages": img.stages, "tensors": img.tensors,
                          "verified": not a.no_verify}, indent=1))
        return
    print(image_tables(img))
    rows = sum(1 for t in img.tensors if t["row_crcs"])
    checked = "header, tables, token table" + ("" if a.no_verify else f", {len(img.tensors)} weight blobs and "
                                               f"every row of the {rows} tensors read a row at a time")
    print(f"\nCRC32 OK: {checked}; every header and table field consistent (docs/flash_image.md)")


def interrupted(_signum=None, _frame=None):
    """Ctrl-C: one line and exit 130, at once. A KeyboardInterrupt raised inside the emulator's
    callbacks would be swallowed by unicorn (the run would go on and print its summary), so the
    process ends here, whatever it was doing, printing nothing more."""
    try:
        os.write(2, (b"\r\033[K" if os.isatty(2) else b"") + b"mcugpt: interrupted\n")  # (over a progress bar)
    except OSError:   # no stderr left to tell
        pass
    os._exit(130)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    if extra:   # the command's own error, so its hint points to its own --help
        commands = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction)).choices
        commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def cmd_fuzz(a) -> None:
    from mcugpt.fuzz import main as fuzz
    fuzz(a)


def one_line(message: str) -> str:
    """A message as one printable line: a value the user gave (a --model with a newline in it)
    or read from a file may hold control characters; they are shown escaped, never obeyed."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def main(argv: list[str] | None = None) -> int:
    owner = threading.current_thread() is threading.main_thread()   # (only it may set handlers)
    previous = signal.signal(signal.SIGINT, interrupted) if owner else None
    try:
        args = parse_args(argv)
        {"compile": cmd_compile, "reference": cmd_reference, "run": cmd_run, "bench": cmd_bench,
         "fit": cmd_fit, "inspect": cmd_inspect, "fuzz": cmd_fuzz}[args.command](args)
    except McugptError as e:
        print(f"mcugpt: error: {one_line(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        interrupted()
    except BrokenPipeError:  # `mcugpt ... | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    except OSError as e:   # the machine refused (disk full, permissions): not a bug, one line
        where = e.filename or "I/O"
        print(f"mcugpt: error: {one_line(f'{where}: {e.strerror or e}')}", file=sys.stderr)
        return 1
    finally:
        if owner:
            signal.signal(signal.SIGINT, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
