"""Build the firmware (runtime_c/) for the board, or as a host program, for one compiled model.

    build(out_dir, plan, cc="zig")                -> out_dir/firmware.elf   (Cortex-M7, zig cc)
    build(out_dir, plan, cc="arm-none-eabi-gcc")  -> out_dir/firmware.elf   (Cortex-M7, GNU)
    build(out_dir, plan, cc="host")               -> out_dir/firmware_host  (native, for tests)

`out_dir` is what `mcugpt compile` wrote: its include/ (flash_layout.h, model_plan.h,
memory_map.h) is on the include path, so the firmware and its image come from one plan.
The board builds link with a script rendered from memory_map.py and the plan
(templates/firmware.ld.j2); a firmware that does not fit the RAM budget fails to link.
Every failure is a one-line McugptError. A build whose inputs did not change is reused.
"""

import hashlib
import re
from pathlib import Path

import jinja2

from target import memory_map, toolchain
from target.errors import McugptError

from .plan import Plan

RUNTIME_C = Path(__file__).resolve().parent.parent / "runtime_c"
BOARD_ONLY = {"startup.c", "hal_board.c"}
HOST_ONLY = {"hal_host.c"}
COMPILERS = toolchain.NAMES

# Every build: no fused multiply-add (results must agree across compilers and with numpy),
# no libm (-fno-math-errno keeps sqrtf an instruction), C11 for the headers' _Static_assert,
# -fno-strict-aliasing because the arena is a byte array the runtime uses as floats, and
# DWARF debug info for `mcugpt run --gdb` (`list`, `print` a variable; it changes no code:
# the loaded bytes are the same with -g0).
COMMON_FLAGS = ["-std=c11", "-O2", "-g", "-ffp-contract=off", "-fno-math-errno", "-fno-strict-aliasing",
                "-Wall", "-Wextra", "-Wdouble-promotion"]
# Board builds: Cortex-M7 with the single-precision FPU, hard-float ABI.
ZIG_FLAGS = ["-target", "thumb-freestanding-eabihf", "-mcpu=cortex_m7+fp_armv8d16sp",
             # zig's linker ignores ENTRY(); no -nostdlib: it would drop compiler_rt
             "-Wl,--entry=Reset_Handler"]
GCC_FLAGS = ["-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-sp-d16", "-mfloat-abi=hard",
             "-ffreestanding", "-nostdlib",
             # gcc turns copy/zero loops into memcpy/memset calls, which -nostdlib lacks
             "-fno-tree-loop-distribute-patterns"]
SANITIZE_FLAGS = ["-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                  "-fno-sanitize-recover=all"]

# The linker script's checks, quoted as the error when a link fails.
LINK_ASSERTS = {
    "budget": "firmware does not fit the RAM budget: .data + arena + .bss overlap the stack reserve",
    "reserve": "firmware .data + .bss exceed the plan's firmware reserve",
}

_env = jinja2.Environment(loader=jinja2.PackageLoader("compiler", "templates"),
                          undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def render_linker_script(plan: Plan) -> str:
    return _env.get_template("firmware.ld.j2").render(
        model=plan.model.name, plan_id=plan.plan_id, ram=plan.ram_budget,
        code_base=memory_map.CODE_BASE, code_size=memory_map.CODE_SIZE,
        sram_base=memory_map.SRAM_BASE, stack=plan.reserved["stack"],
        firmware=plan.reserved["firmware"], asserts=LINK_ASSERTS,
        tcm=plan.tcm_bytes > 0, dtcm_base=memory_map.DTCM_BASE,
        dtcm=plan.profile.dtcm.bytes if plan.profile.dtcm else 0)


def sources(target: str, runtime: Path = RUNTIME_C) -> list[Path]:
    """runtime_c/*.c for the board ("board") or the host ("host")."""
    skip = HOST_ONLY if target == "board" else BOARD_ONLY
    return sorted(p for p in runtime.glob("*.c") if p.name not in skip)


def _check_headers(include: Path, plan: Plan) -> None:
    header = include / "model_plan.h"
    if not header.is_file():
        raise McugptError(f"{include}: no model_plan.h (run `mcugpt compile` into {include.parent} first)")
    m = re.search(r"#define PLAN_ID\s+0x([0-9A-Fa-f]+)u", header.read_text())
    if not m or int(m.group(1), 16) != plan.plan_id:
        found = f"0x{int(m.group(1), 16):08X}" if m else "none"
        raise McugptError(f"{header}: plan id {found} is not the plan's 0x{plan.plan_id:08X} "
                          f"(headers and plan.json come from different compiles)")


def _command(cc: str, include: Path, out: Path, ld: Path | None, sanitize: bool, runtime: Path) -> list[str]:
    defines = [f"-DTOPK_MAX={memory_map.TOPK_MAX}"]   # the TopK capacity (kernels.h) the mailbox allows
    paths = [f"-I{runtime}", f"-I{include}"]
    flags = {"zig": [*ZIG_FLAGS, "-T", str(ld)], "arm-none-eabi-gcc": [*GCC_FLAGS, "-T", str(ld)],
             "host": SANITIZE_FLAGS if sanitize else []}[cc]
    target = "host" if cc == "host" else "board"
    tail = ["-lgcc"] if cc == "arm-none-eabi-gcc" else []
    return [*toolchain.compiler(cc), *flags, *COMMON_FLAGS, *defines, *paths,
            *map(str, sources(target, runtime)), "-o", str(out), *tail]


def build(out_dir, plan: Plan | dict, cc: str = "zig", sanitize: bool = False,
          runtime: Path = RUNTIME_C) -> Path:
    """Compile runtime_c/ against out_dir/include for the board (cc = "zig" or
    "arm-none-eabi-gcc": out_dir/firmware.elf) or the host (cc = "host":
    out_dir/firmware_host; sanitize adds AddressSanitizer and UBSan). Returns the path.
    `runtime` is the C source folder: tests pass a deliberately broken copy of runtime_c/."""
    if cc not in COMPILERS:
        raise McugptError(f"unknown firmware compiler '{cc}' (known: {', '.join(COMPILERS)})")
    if sanitize and cc != "host":
        raise McugptError("sanitize=True needs cc='host' (the sanitizers do not run on the board)")
    plan = plan if isinstance(plan, Plan) else Plan.from_dict(plan)
    out_dir = Path(out_dir)
    include = out_dir / "include"
    _check_headers(include, plan)

    ld = None
    if cc == "host":
        out = out_dir / "firmware_host"
    else:
        out = out_dir / "firmware.elf"
        ld = out_dir / "firmware.ld"
        text = render_linker_script(plan)
        if not ld.is_file() or ld.read_text() != text:
            ld.write_text(text)
    cmd = _command(cc, include, out, ld, sanitize, Path(runtime))

    # Rebuild only when something that goes into the binary changed.
    h = hashlib.sha256("\0".join(cmd).encode())
    for p in [*sorted(Path(runtime).glob("*.[ch]")), *sorted(include.glob("*.h")), *([ld] if ld else [])]:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    stamp = out.with_name(out.name + ".inputs")
    if out.is_file() and stamp.is_file() and stamp.read_text() == h.hexdigest():
        return out

    stamp.unlink(missing_ok=True)
    toolchain.run(cmd, f"firmware build ({cc})", prefer=tuple(LINK_ASSERTS.values()))
    stamp.write_text(h.hexdigest())
    return out
