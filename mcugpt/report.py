"""Human-readable tables for the command line."""

from target.flash_layout import NO_LAYER
from target.stages import STAGE_KINDS


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024


def count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def table(headers: list[str], rows: list[list], align: str) -> str:
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align))
    lines = [fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells[1:]]
    return "\n".join(line.rstrip() for line in lines)


def stage_table(plan) -> str:
    rows = []
    for s in plan.stages:
        tiles = " + ".join(f"{t.tiles}x{t.tile_rows}r" for _role, t in plan.matrices(s)) or "-"
        rows.append([s.index, s.name, size(s.weight_bytes), size(s.flash_bytes_per_token),
                     count(s.macs), size(s.act_bytes),
                     size(s.kv_read_bytes) if s.kv_read_bytes else "-",
                     size(s.ram_bytes), tiles])
    return table(["#", "stage", "weights", "flash/token", "MACs", "act", "KV read", "RAM", "tiles"],
                 rows, "rlrrrrrrl")


def plan_summary(plan) -> str:
    m, t, kv, res = plan.model, plan.totals, plan.kv, plan.resident
    what = {"flash": "weights", "psram": " and ".join(w for w, on in (("weights", plan.psram_weight_bytes),
                                                                     ("KV cache", kv.placement == "psram")) if on)}
    limit = {"sram": "the RAM budget, see --ctx/--ram",
             "psram": f"the board's {size(plan.profile.psram_bytes)} of PSRAM"}.get(plan.ctx_limited_by)
    ctx_note = f" (the model's is {m.n_ctx}; limited by {limit})" if limit else ""
    lines = [
        f"model        {m.name}: {m.n_layer} layers, {m.n_head} heads, n_embd {m.n_embd}, "
        f"vocab {m.vocab_size}, {plan.dtype}",
        f"stages       {t.stages} ({t.block_stages} in blocks + embed + head)",
        f"context      {plan.ctx} tokens{ctx_note}",
        f"weights      {size(t.weight_bytes)} in flash; "
        f"{size(t.flash_bytes_per_token + t.table_bytes_per_token)} read per token: {size(t.flash_bytes_per_token)} "
        f"of weights + {size(t.table_bytes_per_token)} of the image's stage and tensor entries and token offsets "
        f"(+ the token's own bytes)",
        f"compute      {count(t.macs_per_token_at_ctx)} MACs per token at full context",
        f"board        {plan.board}: {plan.profile.doc}",
        f"RAM budget   {size(plan.ram_budget)} ({plan.ram_budget:,} B)",
        f"  KV cache   {size(kv.bytes)} {kv.dtype} in {kv.placement} ({kv.bytes_per_token:,} B per token; {kv.why})",
        f"  tiles      {plan.weight_buffers} x {size(plan.tile_bytes)} weight tile buffers (double-buffered)"
        + (" in the data TCM" if plan.tcm_bytes else ""),
        f"  TCM        {size(plan.tcm_bytes)}: " + (", ".join(b.name for b in plan.buffers if b.region == 'dtcm'
                                                          and b.bytes) + f" ({plan.tcm_why})" if plan.tcm_bytes
                                                 else plan.tcm_why),
        f"  arena      {size(plan.arena_bytes)} + stack {size(plan.reserved['stack'])} "
        f"+ firmware {size(plan.reserved['firmware'])}",
        f"  resident   {size(res.bytes)} of weights kept in SRAM ({len(plan.resident_tensors)} "
        f"tensors; {res.stages_fully_resident} stages read no flash; --group {res.group})",
        f"  prefill    {plan.prefill_chunk} prompt positions per chunk ({plan.prefill_why})",
        f"  PSRAM tier {size(plan.psram_weight_bytes)} of weights: the tail of every full tile, copied to PSRAM at "
        f"boot and read beside the flash's part (--tiers {plan.tiers})" if plan.psram_weight_bytes else f"  PSRAM tier none (--tiers {plan.tiers})",
        f"  weights    CRC-checked " + ("once at boot" if plan.verify == "boot" else "as they stream")
        + f" ({plan.verify_why})",
        f"  largest    stage {plan.largest_stage['name']}: {size(plan.largest_stage['ram_bytes'])} "
        f"working set (without the KV cache)",
        f"peak RAM     {size(plan.peak_ram_bytes)} ({plan.peak_ram_bytes:,} B)",
        "buses        " + "; ".join(f"{name}: {size(b['bytes_per_token'])} of {what[name]} per token at {b['bytes_per_s'] / 1e6:.0f} MB/s = "
                                   f"{seconds(b['s_per_token'])}" for name, b in plan.buses.items() if isinstance(b, dict))
        + f" (at the planned context): no token faster than {seconds(plan.buses['bound_s_per_token'])}, "
          f"{plan.buses['bound_tokens_per_s']:.2f} tokens/s",
    ]
    return "\n".join(lines)


def image_tables(img) -> str:
    h = img.header
    kinds = {k.id: k.name for k in STAGE_KINDS}
    head = "\n".join(f"{k:15} {v if not isinstance(v, int) or k in ('n_layer', 'n_head', 'n_embd', 'n_ctx', 'n_ctx_model', 'vocab_size', 'eot_token', 'stage_count', 'tensor_count', 'version', 'dtype') else f'{v:#x} ({v:,})'}"
                     for k, v in h.items() if k != "reserved")
    rows = []
    for i, s in enumerate(img.stages):
        names = [img.tensors[j]["name"] for j in s["tensors"][:s["n_tensors"]]]
        layer = "-" if s["layer"] == NO_LAYER else s["layer"]
        rows.append([i, kinds.get(s["kind"], f"?{s['kind']}"), layer, size(s["flash_bytes_per_token"]),
                     count(s["macs"]), ", ".join(names) or "-"])
    stage_t = table(["#", "kind", "layer", "flash/token", "MACs", "tensors"], rows, "rlrrrl")
    trows = [[i, t["name"], f"0x{t['offset']:08x}", size(t["size"]), f"{t['rows']}x{t['cols']}", f"{t['crc']:08x}"]
             for i, t in enumerate(img.tensors)]
    tensor_t = table(["#", "tensor", "offset", "bytes", "shape", "crc32"], trows, "rlrrrr")
    return f"{head}\n\nstages\n{stage_t}\n\ntensors\n{tensor_t}"


def seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} us"


def rates(x: dict, n_prompt: int, n_new: int, boot: str) -> str:
    """One line's rates (run.py "rates"), each named: prompt (prefill), decode, overall."""
    return (f"prompt (prefill) {n_prompt} positions in {seconds(x['prefill_s'])} = "
            f"{x['prefill_positions_per_s']:,.1f} positions/s; decode {seconds(x['decode_s_per_token'])} per token = "
            f"{x['decode_tokens_per_s']:.2f} tokens/s; overall {n_new} tokens in {seconds(x['overall_s'])} = "
            f"{x['overall_tokens_per_s']:.2f} tokens/s ({boot}prompt and decode)")


def run_summary(r: dict) -> str:
    d, ram, plan = r["device"], r["peak_ram"], r["flash_bytes_per_token_plan"]
    n, n_prompt = len(r["tokens"]), len(r["prompt_tokens"])
    no_decode = "" if r["decode_steps"] else " (one token: no decode step, the prompt's last pass stands for one)"
    lines = [
        f"model        {r['model']} ({r['dtype']}) on the emulated {r['board']} board: {size(r['ram_mapped'])} "
        f"SRAM, {r['flash']} flash; context {r['ctx']}, KV cache in {r['kv_placement']}",
        f"tokens       {n} generated after a {n_prompt}-token prompt" + no_decode,
        "emulator     on this machine: " + rates(r["rates"]["emulator"], n_prompt, n, "boot, "),
        "device       simulated: " + rates(r["rates"]["device"], n_prompt, n, f"boot {seconds(d['boot_s'])}, "),
        f"device time  decode {seconds(d['s_per_token'])} per token -> {d['tokens_per_s']:.2f} tokens/s: I/O "
        f"{seconds(d['io_s_per_token'])}" + (f", CRC {seconds(d['crc_s_per_token'])}" if d["crc_s_per_token"] else "")
        + f" and compute {seconds(d['compute_s_per_token'])}, overlapped "
        f"(sequential would be {seconds(d['sequential_s_per_token'])}; "
        f"{100 * d['overlap_fraction']:.0f}% of the hideable time hidden)",
        f"             I/O: {d['io_model']}",
        f"             compute: {d['compute_model']}",
        f"             memory: {d['memory_model']}",
        f"             CRC: {seconds(d['crc_s_per_token'])} per token, {d['crc_model']}",
        f"first token  {seconds(d['prefill_s'])} on the device after boot ({r['prefill_positions']} prompt "
        f"positions in {r['prefill_chunks']} chunks of up to {r['prefill_chunk']}); {seconds(d['prefill_wall_s'])} "
        f"on this machine",
        f"boot         {seconds(d['boot_s'])} on the device: image checks"
        + (", every weight blob's CRC" if d["verify"] == "boot" else "") + ", resident weights",
        f"flash read   {size(r['flash_bytes_per_token'])} per token (the plan: {size(plan['weights'])} of weights + "
        f"{size(plan['tables'])} of image tables + the token's own bytes)"
        + (f"; PSRAM {size(r['psram_bytes_per_token'])} per token" if r["kv_placement"] == "psram" else ""),
        f"peak RAM     {size(ram['measured'])} measured ({ram['measured']:,} B: static {size(ram['static'])}, "
        f"arena high-water {size(ram['arena_high_water'])}, stack {size(ram['stack_used'])}) "
        f"vs plan {size(ram['plan'])}" + (f"; data TCM {size(r['tcm']['high_water'])} of "
                                           f"{size(r['tcm']['bytes'])}" if r["tcm"]["bytes"] else ""),
    ]
    if r["crc_retries"]:
        lines.append(f"CRC retries  {len(r['crc_retries'])} read(s) failed their CRC or PSRAM check word once and passed when read "
                     f"again (transient): {'; '.join(r['crc_retries'])}")
    if "injected" in r:
        from emulator.inject import summary
        lines.append(f"injected     {len(r['injected'])} fault(s), seed {r['inject_seed']}:")
        lines += [f"             {summary(h)}" for h in r["injected"]]
    if "check" in r:
        c = r["check"]
        verdict = "equal" if c["tokens_equal"] else f"DIFFERENT (reference {c['reference_tokens']})"
        logits = ("logits bit-identical" if c["logits_identical"] else
                  f"logits DIFFER: max |error| {c['logits_max_abs_error']:.2g}")
        lines.append(f"reference    tokens {verdict}; {logits} (numpy reference, compiler/reference.py)")
    if "trace" in r:
        lines.append(f"trace        {r['trace']}: {seconds(d['run_s'])} of simulated time (open it at "
                     f"ui.perfetto.dev; docs/timeline.md)")
    rows = [[k["kind"], k["stages"], seconds(k["io_s"]), seconds(k["compute_s"]), seconds(k["crc_s"]),
             seconds(k["device_s"]),
             f"{100 * k['overlap_fraction']:.0f}%", size(k["flash_bytes"]), f"{100 * k['share']:.0f}%"]
            for k in r["stage_kinds"]]
    lines += ["", "slowest stage kinds, per token (all layers)",
              table(["kind", "stages", "I/O", "compute", "CRC", "device", "overlap", "flash read", "share"], rows,
                    "lrrrrrrrr")]
    if "cycles_by_function" in r:
        f = r["cycles_by_function"]
        what = "per decoded token" if f["over"] == "decode" else "over the whole run (no token decoded)"
        top = f["functions"][:12]
        rows = [[g["function"], f"{g['cycles_per_pass'] / 1e6:.2f} M", f"{100 * g['share']:.1f}%"] for g in top]
        rest = sum(g["cycles_per_pass"] for g in f["functions"][12:])
        if rest:
            rows.append([f"({len(f['functions']) - 12} more)", f"{rest / 1e6:.2f} M",
                         f"{100 * rest / f['cycles_per_pass']:.1f}%" if f["cycles_per_pass"] else "-"])
        lines += ["", f"where the CPU's cycles go, {what}: {f['cycles_per_pass'] / 1e6:.1f} M cycles",
                  table(["function", "cycles", "share"], rows, "lrr")]
    return "\n".join(lines)
