"""`mcugpt run --trace FILE`: the run as a timeline on the board's simulated clock, in the
Trace Event Format (a JSON object with a `traceEvents` list) that ui.perfetto.dev and
chrome://tracing open. docs/timeline.md shows one and says how to read it.

One process, the board; one thread per track:

    CPU    `boot` (image checks, weight verification, PSRAM tier copies), then one slice per
           forward pass (a prefill chunk, or a generated token) holding one slice per stage
           call, each holding the CPU's waits on a transfer (`wait flash`, `wait psram`,
           `wait crc`, `wait xip`); an instant event per token chosen
    flash  every DMA transfer from the flash (and the XIP runtime's in-place line fills)
    PSRAM  every transfer to or from the PSRAM: KV cache rows, the weight tier's tiles and
           its copies at boot (only when the run used the PSRAM)
    CRC    the CRC unit's passes, where it is a second DMA pass (only when there were any)

Times are in microseconds from the board's reset, on the board's clock (the CPU's cycles by
the pipeline model plus its waits: emulator/peripherals.py CpuClock), never host time. They
are whole nanoseconds, so a slice nests in its parent exactly. The events come from
Board(timeline=True): the moments each unit of the board recorded (CpuClock.events).

    python -m mcugpt.timeline TRACE.json PICTURE.png   draws a trace with matplotlib
    python -m mcugpt.timeline RUN.json PICTURE.png     draws `mcugpt run --json`'s decode
                                                       passes against their position
"""

import bisect
import json
import os
import sys
from pathlib import Path

from target import memory_map as mm
from target.errors import McugptError
from target.flash_layout import HEADER

PID = 1
CPU, FLASH, PSRAM, CRC = 1, 2, 3, 4
TRACK_NAMES = {CPU: "CPU", FLASH: "flash", PSRAM: "PSRAM", CRC: "CRC unit"}


def check_path(path) -> Path:
    """The trace file's path, refused before the run (which may take minutes) when the
    file could not be written there."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise McugptError(f"--trace {path}: is a folder; give a file name, e.g. {path / 'trace.json'}")
    if not parent.is_dir():
        raise McugptError(f"--trace {path}: no folder {parent} to write it in")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise McugptError(f"--trace {path}: not writable")
    return path


def write(path, trace: dict) -> None:
    try:
        Path(path).write_text(json.dumps(trace, separators=(",", ":")))
    except OSError as e:
        raise McugptError(f"--trace {path}: cannot write it ({e.strerror or e})") from None


# ----------------------------------------------------------------------------
# what a transfer moves: names from the image's tables and the plan


class _Regions:
    """Address -> (label, tensor index or None), over sorted [start, end) ranges."""

    def __init__(self, ranges):
        self.ranges = sorted(ranges)
        self.starts = [r[0] for r in self.ranges]

    def find(self, addr: int):
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0 and addr < self.ranges[i][1]:
            return self.ranges[i][2], self.ranges[i][3]
        return None, None


def _flash_regions(image) -> _Regions:
    h = image.header
    ranges = [(0, HEADER.size, "image header", None),
              (h["tables_offset"], h["tables_offset"] + h["tables_size"], "stage and tensor tables", None),
              (h["tokens_offset"], h["tokens_offset"] + h["tokens_size"], "token table", None)]
    ranges += [(t["offset"], t["offset"] + t["size"], t["name"], i) for i, t in enumerate(image.tensors)]
    return _Regions(ranges)


def _psram_label(plan, tier: _Regions, addr: int):
    name, tensor = tier.find(addr)
    if name is not None:
        return name, tensor
    kv = plan.kv
    if kv.placement == "psram" and kv.offset <= addr < kv.offset + kv.bytes:
        # runtime.c kv_row_offset: [layer][keys, values][head][position] rows
        block = plan.model.n_head * plan.ctx * kv.row_bytes
        layer, values = divmod((addr - kv.offset) // block, 2)
        return f"KV {'values' if values else 'keys'} h{layer}", None
    return f"PSRAM 0x{addr:x}", None


# ----------------------------------------------------------------------------
# the trace


def _ns(t: float) -> int:
    return round(t)


def _slice(tid: int, name: str, cat: str, start: float, end: float, args: dict) -> dict:
    t0, t1 = _ns(start), _ns(end)
    return {"name": name, "cat": cat, "ph": "X", "pid": PID, "tid": tid, "ts": t0 / 1000,
            "dur": (t1 - t0) / 1000, "args": args}


def build(result, plan, image, n_prompt: int, token_text=lambda t: None) -> dict:
    """The Trace Event Format object for a RunResult recorded with Board(timeline=True).
    `token_text(id)`: a token's text, for the token events (None: ids only)."""
    if result.timeline is None:
        raise ValueError("the run was not recorded: Board(timeline=True)")
    events = result.timeline
    end = result.device_ns
    flash_names = _flash_regions(image)
    tier = _Regions([(t.psram_offset, t.psram_offset + t.psram_span, t.name, t.index)
                     for t in plan.tensors if t.psram_offset is not None])
    uses = [set(s.tensors.values()) for s in plan.stages]   # stage index -> its tensor indices
    positions = [e[1] for e in events if e[0] == "position"]
    boot_end = next((e[2] for e in events if e[0] == "position"), end)

    out: list[dict] = []
    boot = {"flash_bytes": 0, "psram_read_bytes": 0, "psram_write_bytes": 0, "cpu_wait_us": 0.0}
    calls = iter(result.stage_calls)
    stage = None          # (stage index, start ns, args) of the open stage
    pass_ = None          # (name, start ns, args) of the open forward pass
    in_flight = {}        # bus -> (name, args) of its latest transfer: the one a wait of that bus is for
    n_pass = 0

    def charged():        # what a transfer or a wait counts towards: the open stage, and its pass (or the boot)
        return ([stage[2]] if stage else []) + [pass_[2] if pass_ else boot]

    def close_stage(t):
        nonlocal stage
        index, t0, args = stage
        call = next(calls)
        args.update(instructions=call.instructions, io_us=call.io_ns / 1000)
        out.append(_slice(CPU, plan.stages[index].name, "stage", t0, t, args))
        stage = None

    def close_pass(t):
        name, t0, args = pass_
        out.append(_slice(CPU, name, "pass", t0, t, args))

    for e in events:
        kind = e[0]
        if kind == "stage":
            _, index, t = e
            if stage is not None:
                close_stage(t)
            if index != mm.TRACE_IDLE:
                s = plan.stages[index]
                stage = (index, t, {"position": pass_[2]["position"] if pass_ else None,
                                    "positions": pass_[2]["positions"] if pass_ else None,
                                    "stage": index, "kind": s.kind, "layer": s.layer,
                                    "flash_bytes": 0, "psram_read_bytes": 0, "psram_write_bytes": 0,
                                    "cpu_wait_us": 0.0})
        elif kind == "position":
            _, pos, t = e
            if pass_ is not None:
                close_pass(t)
            nxt = positions[n_pass + 1] if n_pass + 1 < len(positions) else pos + 1
            n = min(nxt, n_prompt) - pos if pos < n_prompt else 1
            name = (f"prefill {pos}" if n == 1 else f"prefill {pos}-{pos + n - 1}") if pos < n_prompt \
                else f"decode {pos}"
            pass_ = (name, t, {"position": pos, "positions": n, "flash_bytes": 0, "psram_read_bytes": 0,
                               "psram_write_bytes": 0, "cpu_wait_us": 0.0})
            n_pass += 1
        elif kind == "token":
            _, token, t = e
            text = token_text(token)
            out.append({"name": f"token {text!r}" if text is not None else f"token {token}", "cat": "token",
                        "ph": "i", "s": "t", "pid": PID, "tid": CPU, "ts": _ns(t) / 1000,
                        "args": {"token": token, "text": text}})
            if pass_ is not None:
                pass_[2].update(token=token, text=text)
        elif kind == "dma":
            _, bus, command, addr, moved, t0, t1, ram = e
            if bus == "flash":
                name, tensor = flash_names.find(addr)
                name = name or f"flash 0x{addr:x}"
            else:
                name, tensor = _psram_label(plan, tier, addr)
            issued = plan.stages[stage[0]].name if stage else "boot" if pass_ is None else "between stages"
            args = {"bytes": moved, "command": command, "address": f"0x{addr:x}", "ram": f"0x{ram:08x}",
                    "issued_in": issued, "cpu_wait_us": 0.0}
            if tensor is not None:
                args["tensor"] = tensor
                # data for a stage still to come (runtime.c starts a stage's first tile in that
                # stage, so this marks a change of the firmware's schedule)
                args["prefetch"] = bool(stage) and tensor not in uses[stage[0]] and any(
                    tensor in u for u in uses[stage[0] + 1:])
            key = "flash_bytes"
            if bus == "psram":
                direction = "write" if command == "WRITE" else "read"
                key = f"psram_{direction}_bytes"
                tier_copy = pass_ is None and tensor is not None and direction == "write"
                name = f"tier copy {name}" if tier_copy else f"{name} {direction}"
            in_flight[bus] = name, args
            out.append(_slice(FLASH if bus == "flash" else PSRAM, name, bus, t0, t1, args))
            for holder in charged():
                holder[key] += moved
        elif kind == "xip":
            _, addr, moved, t0, t1 = e
            name, tensor = flash_names.find(addr)
            args = {"bytes": moved, "command": "XIP line fills", "address": f"0x{addr:x}", "cpu_wait_us": 0.0}
            name = f"XIP {name or f'0x{addr:x}'}"
            in_flight["xip"] = name, args
            out.append(_slice(FLASH, name, "flash", t0, t1, args))
            for holder in charged():
                holder["flash_bytes"] += moved
        elif kind == "crc":
            _, addr, length, t0, t1 = e
            name, _tensor = flash_names.find(addr)
            args = {"bytes": length, "address": f"0x{addr:x}", "cpu_wait_us": 0.0}
            name = f"CRC {name or f'0x{addr:x}'}"
            in_flight["crc"] = name, args
            out.append(_slice(CRC, name, "crc", t0, t1, args))
        elif kind == "wait":
            _, cause, t0, t1 = e
            name, waited = in_flight.get(cause, (None, None))
            args = {"for": name} if name else {}
            for holder in charged() + ([waited] if waited is not None else []):
                holder["cpu_wait_us"] += (t1 - t0) / 1000
            out.append(_slice(CPU, f"wait {cause}", "wait", t0, t1, args))
    if stage is not None:   # a run that stopped inside a stage
        close_stage(end)
    if pass_ is not None:
        close_pass(end)
    if boot_end > 0:
        out.append(_slice(CPU, "boot", "boot", 0.0, boot_end, boot))

    for e in out:   # the sums above, to the nanosecond
        e["args"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in e["args"].items()}
    tracks = {e["tid"] for e in out} | {CPU}
    board = f"{plan.board} ({plan.model.name} {plan.dtype})"
    meta = [{"name": "process_name", "ph": "M", "pid": PID, "tid": 0,
             "args": {"name": f"{board}, simulated time"}}]
    for tid in sorted(tracks):
        meta.append({"name": "thread_name", "ph": "M", "pid": PID, "tid": tid, "args": {"name": TRACK_NAMES[tid]}})
        meta.append({"name": "thread_sort_index", "ph": "M", "pid": PID, "tid": tid, "args": {"sort_index": tid}})
    # per track in time order, a slice before the slices it holds (and, for the same span,
    # a pass before its stage before its wait)
    depth = {"boot": 0, "pass": 0, "stage": 1}
    out.sort(key=lambda e: (e["tid"], e["ts"], -e.get("dur", 0.0), depth.get(e["cat"], 2)))
    return {"traceEvents": meta + out, "displayTimeUnit": "ms",
            "otherData": {"model": plan.model.name, "dtype": plan.dtype, "board": plan.board,
                          "clock": "simulated: the board's CPU clock, not host time",
                          "device_s": result.device_ns * 1e-9, "boot_s": boot_end * 1e-9,
                          "flash_bytes": result.flash_bytes, "psram_bytes": result.psram_bytes,
                          "tokens": list(result.tokens)}}


# ----------------------------------------------------------------------------
# a picture of a trace


KIND_COLORS = {"embed": "#8c564b", "ln_1": "#bcbd22", "attn_qkv": "#1f77b4", "attn_core": "#17becf",
               "attn_proj": "#9467bd", "ln_2": "#bcbd22", "mlp": "#2ca02c", "head": "#ff7f0e"}
TRACK_COLORS = {"wait": "#d62728", "flash": "#7f7f7f", "psram": "#e377c2", "crc": "#393b79"}
COLUMNS = 1200   # a row of short slices is drawn as how much of each of this many columns they fill


def _occupancy(spans, lo: float, hi: float):
    """(column edges, fraction of each column covered) for non-overlapping (start, duration) spans."""
    import numpy as np
    edges = np.linspace(lo, hi, COLUMNS + 1)
    if not spans:
        return edges, np.zeros(COLUMNS)
    start, dur = np.array(spans, float).T
    # covered(t): the spans' time before t; a column's share is its difference across the column
    covered = np.array([np.clip(t - start, 0.0, dur).sum() for t in edges])
    return edges, np.diff(covered) / np.diff(edges)


def default_windows(trace: dict) -> list[tuple[str, float, float]]:
    """The whole run; the last forward pass; a block of that pass: the first that reads from the
    PSRAM (both buses at work), else the middle one."""
    xs = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    windows = [("the whole run", 0.0, max(e["ts"] + e["dur"] for e in xs))]
    passes = [e for e in xs if e["cat"] == "pass"]
    if passes:
        last = passes[-1]
        windows.append((f"its last forward pass ({last['name']})", last["ts"], last["ts"] + last["dur"]))
        stages = [e for e in xs if e["cat"] == "stage" and e["ts"] >= last["ts"] and e["args"]["layer"] is not None]
        if stages:
            layers = sorted({e["args"]["layer"] for e in stages})
            layer = next((e["args"]["layer"] for e in stages if e["args"]["psram_read_bytes"]), layers[len(layers) // 2])
            block = [e for e in stages if e["args"]["layer"] == layer]
            windows.append((f"block {layer} of that pass: " + ", ".join(e["args"]["kind"] for e in block),
                            block[0]["ts"], block[-1]["ts"] + block[-1]["dur"]))
    return windows


def render(trace: dict, png, windows=None, title: str | None = None) -> None:
    """Draw `trace` to `png` with matplotlib: tracks as rows, top to bottom the CPU's boot and
    passes, its stages (coloured by kind), its waits, then the flash, PSRAM and CRC tracks.
    Passes and stages are bars; waits and transfers, thousands of short slices, are drawn as
    the share of each column of pixels they fill (a full-height column: busy throughout).
    `windows`: [(label, start us, end us)], one panel each (default: `default_windows`)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch

    xs = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    windows = windows or default_windows(trace)
    names = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    rows = [("CPU: boot, passes", "bars", lambda e: e["tid"] == CPU and e["cat"] in ("boot", "pass")),
            ("CPU: stages", "bars", lambda e: e["tid"] == CPU and e["cat"] == "stage"),
            ("CPU: waits on I/O", "wait", lambda e: e["tid"] == CPU and e["cat"] == "wait")]
    rows += [(names[t], {FLASH: "flash", PSRAM: "psram", CRC: "crc"}[t], lambda e, t=t: e["tid"] == t)
             for t in sorted(names) if t != CPU]

    fig, axes = plt.subplots(len(windows), 1, figsize=(13, 0.9 + 0.42 * len(rows) * len(windows)), squeeze=False)
    for ax, (label, lo, hi) in zip(axes[:, 0], windows):
        scale, unit = (1e3, "ms") if hi - lo > 5e3 else (1.0, "us")
        for y, (_name, style, keep) in enumerate(rows):
            base = len(rows) - 1 - y - 0.4
            shown = [e for e in xs if keep(e) and e["ts"] < hi and e["ts"] + e["dur"] > lo]
            if style != "bars":
                edges, share = _occupancy([(e["ts"], e["dur"]) for e in shown], lo, hi)
                ax.fill_between(edges / scale, base, base + 0.8 * np.append(share, share[-1]), step="post",
                                color=TRACK_COLORS[style], linewidth=0)
                continue
            colors = [KIND_COLORS.get(e["args"]["kind"], "grey") if e["cat"] == "stage" else
                      "#c7c7c7" if e["cat"] == "boot" else ("#aec7e8", "#ffbb78")[i % 2] for i, e in enumerate(shown)]
            ax.broken_barh([(e["ts"] / scale, e["dur"] / scale) for e in shown], (base, 0.8), facecolors=colors,
                           linewidth=0)
            for e in shown:   # name the passes and the boot where there is room
                if e["cat"] in ("boot", "pass") and e["dur"] > (hi - lo) * 0.06:
                    mid = (max(e["ts"], lo) + min(e["ts"] + e["dur"], hi)) / 2
                    ax.text(mid / scale, base + 0.4, e["name"], ha="center", va="center", fontsize=8)
        ax.set_yticks(range(len(rows)), [r[0] for r in reversed(rows)])
        ax.set_xlim(lo / scale, hi / scale)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_xlabel(f"simulated time ({unit}) from reset")
        ax.set_title(label, fontsize=10, loc="left")
    kinds = {e["args"]["kind"] for e in xs if e["cat"] == "stage"}
    handles = [Patch(color=KIND_COLORS[k], label="ln_1, ln_2" if k == "ln_1" else k)
               for k in KIND_COLORS if k in kinds and k != "ln_2"]
    handles.append(Patch(color=TRACK_COLORS["wait"], label="CPU waiting"))
    handles += [Patch(color=TRACK_COLORS[style], label=f"{name} busy") for name, style, _keep in rows[3:]]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    other = trace.get("otherData", {})
    fig.suptitle(title or f"{other.get('model', '')} {other.get('dtype', '')} on {other.get('board', '')}: "
                          f"timeline of `mcugpt run --trace` (simulated time)", x=0.01, ha="left", fontsize=11)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    fig.savefig(png, dpi=110)
    plt.close(fig)


def render_positions(report: dict, png) -> None:
    """Draw a run's decode passes against their position (`mcugpt run --json`'s
    `decode_by_position`) to `png`: the device time per token, its I/O and compute, their mean
    over the run, and the 3.0 tokens/s line. Over a whole context, how attention, which reads
    every earlier position, makes a token's time grow."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = report["decode_by_position"]
    if not steps:
        raise McugptError("the run decoded no token (--tokens 1): nothing to draw against the position")
    x = [p["position"] for p in steps]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for key, label in (("device_ms", "device: what a token takes"), ("io_ms", "I/O: flash and PSRAM bus time, summed"),
                       ("compute_ms", "compute")):
        ax.plot(x, [p[key] for p in steps], label=label, lw=1.2)
    mean = sum(p["device_ms"] for p in steps) / len(steps)
    ax.axhline(mean, color="k", ls=":", lw=1, label=f"device, mean over the run: {mean:.1f} ms ({1e3 / mean:.2f} tokens/s)")
    ax.axhline(1e3 / 3.0, color="r", ls="--", lw=1, label="3.0 tokens/s")
    ax.set_xlabel("position decoded")
    ax.set_ylabel("ms per token (simulated)")
    ax.set_title(f"{report['model']} {report['dtype']} on {report['board']}, context {report['ctx']}: "
                 f"{len(steps)} decoded tokens", fontsize=10, loc="left")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m mcugpt.timeline RUN.json PICTURE.png   (RUN.json: a --trace file, or a "
              "--json report)", file=sys.stderr)
        return 2
    try:
        data = json.loads(Path(argv[0]).read_text())
        if isinstance(data, dict) and "traceEvents" in data:
            render(data, argv[1])
        elif isinstance(data, dict) and "decode_by_position" in data:
            render_positions(data, argv[1])
        else:
            raise McugptError(f"{argv[0]}: neither a --trace file (traceEvents) nor a --json report "
                              "(decode_by_position)")
    except (OSError, ValueError, McugptError) as e:   # one line, no traceback
        print(f"mcugpt.timeline: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
