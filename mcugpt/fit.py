"""`mcugpt fit`: can this model run on each board, in how much RAM, at what speed?

For every board x dtype: whether the flash image fits the board's flash and the plan fits its
SRAM, the largest context its RAM (or PSRAM) allows, and the simulated tokens/s, measured by
compiling the model and running it on the emulated board (one token; `run=False` skips this,
and says so). A board whose CPU the emulator does not run gets no speed figure, and says why.
Every answer comes from the same planner, image layout and board that `compile` and `run`
use, so they agree with them.
"""

import time
from pathlib import Path

from compiler.pipeline import check_flash, compile_model, load_model, output_folder, stages_of
from compiler.plan import DTYPES, make_plan
from compiler.sampler import Sampling
from compiler.tokenizer import token_bytes_table
from target.boards import BOARDS
from target.errors import McugptError

from .report import size, table
from .run import Build, run

PROMPT = "Hello"


def fit(model: str | None, weights_dir: str | None = None, weights_seed: int = 0, measure: bool = True,
        out: Path = Path("build/fit"), progress=None) -> list[dict]:
    progress = progress or (lambda it, **kw: it)
    cfg, _weights, tok = load_model(model, weights_dir, weights_seed)
    del _weights
    out = output_folder(out) if measure else Path(out)   # (refused now, not after the first plans)
    stages = stages_of(cfg)
    tokens = token_bytes_table(tok, cfg.vocab_size)
    rows = []
    configs = [(b, dt) for b in BOARDS.values() for dt in DTYPES]
    for board, dtype in progress(configs, desc="boards x dtypes"):
        row = {"board": board.name, "buyable": board.buyable, "dtype": dtype, "fits": False, "why": "",
               "ctx": None, "ctx_limited_by": None, "kv": None, "tokens_per_s": None,
               "image_bytes": None, "flash_bytes": board.flash_bytes, "peak_ram_plan": None,
               "sram_bytes": board.sram_bytes, "psram_bytes": board.psram_bytes, "tcm_bytes": 0,
               "assumptions": board.all_assumptions()}
        rows.append(row)
        try:
            plan = make_plan(cfg, stages, dtype=dtype, board=board.name)
        except McugptError as e:
            row["why"] = str(e)
            continue
        row.update(ctx=plan.ctx, ctx_limited_by=plan.ctx_limited_by, kv=plan.kv.placement,
                   peak_ram_plan=plan.peak_ram_bytes, tcm_bytes=plan.tcm_bytes)
        try:
            row["image_bytes"] = check_flash(cfg, plan, tokens, stages)
        except McugptError as e:
            row["why"] = str(e)
            continue
        row["fits"] = True
        limit = f", limited by the {plan.ctx_limited_by}" if plan.ctx_limited_by else ""
        row["why"] = (f"image {size(row['image_bytes'])} in {size(board.flash_bytes)} of flash; plan "
                      f"{size(plan.peak_ram_bytes)} in {size(board.sram_bytes)} of SRAM; context {plan.ctx}{limit}; "
                      f"KV cache in {plan.kv.placement}"
                      + (f"; tiles in {size(plan.tcm_bytes)} of data TCM" if plan.tcm_bytes else ""))
        if not board.cpu.emulated:
            row["why"] += f"; no speed figure: the emulator does not run the {board.cpu.core}"
        elif not measure:
            row["why"] += "; speed not measured (--no-run)"
        else:
            t0 = time.perf_counter()
            built = compile_model(model, out / f"{cfg.name}-{board.name}-{dtype}", weights_dir=weights_dir,
                                  weights_seed=weights_seed, dtype=dtype, board=board.name, quiet=True)
            report = run(Build.open(built.out_dir), PROMPT, 1, Sampling())
            row["tokens_per_s"] = report["device"]["tokens_per_s"]
            row["measured"] = {"build": str(built.out_dir), "wall_s": time.perf_counter() - t0,
                               "s_per_token": report["device"]["s_per_token"],
                               "peak_ram_measured": report["peak_ram"]["measured"]}
    return rows


def fit_table(rows: list[dict]) -> str:
    t = [[r["board"] + ("" if r["buyable"] else " (not buyable)"), r["dtype"], "yes" if r["fits"] else "NO",
          r["ctx"] if r["ctx"] is not None else "-",
          f"{r['tokens_per_s']:.2f}" if r["tokens_per_s"] is not None else "-", r["why"]] for r in rows]
    # (one token after a one-token prompt: its single forward pass is a decode step at position 0)
    return table(["board", "dtype", "fits", "ctx", "decode tok/s", "why"], t, "lllrrl")
