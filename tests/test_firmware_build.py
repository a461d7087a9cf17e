"""Building the firmware (compiler/firmware.py): a Cortex-M7 ELF the board can load, float32
only, laid out by the plan; and clean one-line errors when it cannot be built.

Runs nothing on the board (tests/test_runtime_host.py runs the same runtime natively).
"""

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from compiler.firmware import RUNTIME_C, _command, build, render_linker_script
from compiler.plan import Plan
from target import memory_map, toolchain
from target.errors import McugptError

elffile = pytest.importorskip("elftools.elf.elffile")

BOARD_COMPILERS = ["zig", "arm-none-eabi-gcc"]


def build_dir(tiny_build, tmp_path):
    """A fresh out_dir holding the tiny compile's headers (each test builds its own ELF)."""
    shutil.copytree(tiny_build.out_dir / "include", tmp_path / "include")
    return tmp_path


def need(cc):
    if cc == "arm-none-eabi-gcc" and shutil.which(cc) is None:
        if os.environ.get("CI"):
            pytest.fail("arm-none-eabi-gcc is not installed, and CI must test it")
        pytest.skip("arm-none-eabi-gcc is not installed")


def disassemble(path):
    dis = next((n for n in ["llvm-objdump", *(f"llvm-objdump-{v}" for v in range(20, 13, -1))]
                if shutil.which(n)), None)
    if dis is None:
        pytest.skip("no llvm-objdump on PATH")
    # decode as a double-capable FPU so a stray double shows up as .f64
    res = subprocess.run([dis, "-d", "--triple=thumbv7em-none-eabihf", "--mattr=+fp-armv8", str(path)],
                         capture_output=True, text=True, check=True)
    return res.stdout


@pytest.fixture(scope="module", params=BOARD_COMPILERS)
def board_elf(request, tiny_build, tmp_path_factory):
    need(request.param)
    out = build_dir(tiny_build, tmp_path_factory.mktemp(request.param))
    return request.param, build(out, tiny_build.plan, cc=request.param), tiny_build.plan.to_dict()


def symbols(elf):
    return {s.name: s for s in elf.get_section_by_name(".symtab").iter_symbols() if s.name}


def test_elf_is_a_thumb_image_entered_at_reset_handler(board_elf):
    _cc, path, plan = board_elf
    with open(path, "rb") as f:
        elf = elffile.ELFFile(f)
        assert elf.elfclass == 32 and elf["e_machine"] == "EM_ARM" and elf["e_type"] == "ET_EXEC"
        sym = symbols(elf)
        reset = sym["Reset_Handler"]["st_value"]
        assert reset & 1 and elf["e_entry"] == reset   # Thumb bit set
        # the vector table at the start of code flash: initial SP, then the reset handler
        vec = elf.get_section_by_name(".isr_vector")
        assert vec["sh_addr"] == memory_map.CODE_BASE
        sp, pc = struct.unpack("<II", vec.data()[:8])
        assert sp == sym["_estack"]["st_value"] and pc == reset
        undefined = [s.name for s in sym.values() if s["st_shndx"] == "SHN_UNDEF"]
        assert undefined == []


def test_arena_and_stack_are_where_the_plan_says(board_elf):
    _cc, path, plan = board_elf
    with open(path, "rb") as f:
        elf = elffile.ELFFile(f)
        sym = symbols(elf)
        arena = elf.get_section_by_name(".arena")
        # NOLOAD: no bytes in the file, and startup does not zero it (it is not in .bss)
        assert arena["sh_type"] == "SHT_NOBITS" and arena["sh_size"] == plan["arena_bytes"]
        assert sym["arena"]["st_value"] == arena["sh_addr"] and arena["sh_addr"] % 32 == 0
        assert sym["arena"]["st_size"] == plan["arena_bytes"]
        bss_lo, bss_hi = sym["_sbss"]["st_value"], sym["_ebss"]["st_value"]
        assert bss_hi <= arena["sh_addr"] or bss_lo >= arena["sh_addr"] + arena["sh_size"]
        top = memory_map.SRAM_BASE + plan["ram_budget"]
        assert sym["_estack"]["st_value"] == top
        assert sym["_stack_bottom"]["st_value"] == top - plan["reserved"]["stack"]
        assert bss_hi <= sym["_stack_bottom"]["st_value"]
        # the firmware's own statics fit the plan's reserve for them
        data = elf.get_section_by_name(".data")
        assert (data["sh_size"] if data else 0) + (bss_hi - bss_lo) <= plan["reserved"]["firmware"]


def test_elf_has_debug_info_for_the_runtime(board_elf):
    """`mcugpt run --gdb` (docs/debugging.md): GDB lists runtime.c and breaks at a stage by
    name, from either compiler's ELF."""
    _cc, path, _plan = board_elf
    with open(path, "rb") as f:
        elf = elffile.ELFFile(f)
        assert elf.has_dwarf_info()
        dwarf = elf.get_dwarf_info()
        units = {Path(cu.get_top_DIE().get_full_path()).name: cu for cu in dwarf.iter_CUs()}
        assert "runtime.c" in units
        names = {die.attributes["DW_AT_name"].value.decode() for die in units["runtime.c"].iter_DIEs()
                 if die.tag == "DW_TAG_subprogram" and "DW_AT_name" in die.attributes}
        assert {"forward", "stage_embed", "stage_mlp", "stage_head"} <= names
        lines = dwarf.line_program_for_CU(units["runtime.c"]).get_entries()
        assert any(e.state is not None and e.state.line > 1 for e in lines)


def test_float32_only_no_soft_double_no_libc(board_elf):
    _cc, path, _plan = board_elf
    text = disassemble(path)
    assert ".f64" not in text, "double-precision instruction in the firmware"
    for helper in ("__aeabi_d", "__aeabi_f2d", "memcpy", "memset", "sqrtf", "expf"):
        assert f"<{helper}" not in text, f"call to {helper}"
    assert "vsqrt.f32" in text and "vmul.f32" in text


def test_sources_compile_without_warnings(tiny_build, tmp_path):
    # stricter than the build itself: -Werror with pedantic, conversion and shadow warnings
    strict = ["-Werror", "-Wpedantic", "-Wconversion", "-Wshadow"]
    ld = tmp_path / "firmware.ld"
    ld.write_text(render_linker_script(tiny_build.plan))
    for cc in (c for c in toolchain.NAMES if toolchain.available(c)):
        cmd = _command(cc, tiny_build.out_dir / "include", tmp_path / f"fw_{cc}", ld, False,
                       RUNTIME_C)
        res = subprocess.run([*cmd, *strict], capture_output=True, text=True)
        assert res.returncode == 0, f"{cc}: {res.stderr}"


def test_linker_script_comes_from_the_memory_map_and_plan(tiny_build):
    text = render_linker_script(tiny_build.plan)
    d = tiny_build.plan.to_dict()
    assert f"ORIGIN = 0x{memory_map.CODE_BASE:08X}, LENGTH = {memory_map.CODE_SIZE}" in text
    assert f"ORIGIN = 0x{memory_map.SRAM_BASE:08X}, LENGTH = {d['ram_budget']}" in text
    assert f"STACK_RESERVE = {d['reserved']['stack']};" in text
    assert ".arena (NOLOAD)" in text


def test_rebuild_only_when_inputs_change(tiny_build, tmp_path):
    out = build_dir(tiny_build, tmp_path)
    elf = build(out, tiny_build.plan, cc="zig")
    mtime = elf.stat().st_mtime_ns
    assert build(out, tiny_build.plan, cc="zig").stat().st_mtime_ns == mtime
    header = out / "include" / "model_plan.h"
    header.write_text(header.read_text() + "\n/* touched */\n")
    assert build(out, tiny_build.plan, cc="zig").stat().st_mtime_ns != mtime


# ----------------------------------------------------------------------------
# errors: one line, naming the problem


@pytest.mark.parametrize("cc", BOARD_COMPILERS)
@pytest.mark.parametrize("change, message", [
    # the arena fits, the stack does not
    (lambda d: {"ram_budget": d["arena_bytes"] + 1024}, "firmware does not fit the RAM budget"),
    # the plan promised less room for the firmware's own statics than they take
    (lambda d: {"reserved": {**d["reserved"], "firmware": 64}}, "exceed the plan's firmware reserve"),
])
def test_budget_too_small_to_link_is_a_clean_error(cc, change, message, tiny_build, tmp_path):
    need(cc)
    out = build_dir(tiny_build, tmp_path)
    data = tiny_build.plan.to_dict()
    with pytest.raises(McugptError) as e:
        build(out, Plan.from_dict({**data, **change(data)}), cc=cc)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"firmware build ({cc}) failed") and message in msg
    assert not (out / "firmware.elf").exists()


def test_compile_error_is_a_clean_error(tiny_build, tmp_path):
    out = build_dir(tiny_build, tmp_path)
    header = out / "include" / "model_plan.h"
    header.write_text(header.read_text().replace("#define N_EMBD ", "#define N_EMBD_GONE "))
    for cc in ("zig", "host"):
        with pytest.raises(McugptError) as e:
            build(out, tiny_build.plan, cc=cc)
        assert "\n" not in str(e.value) and "N_EMBD" in str(e.value), str(e.value)


def test_missing_compiler_and_wrong_headers_are_clean_errors(tiny_build, tmp_path, monkeypatch):
    out = build_dir(tiny_build, tmp_path)
    with pytest.raises(McugptError, match="unknown firmware compiler 'clang'"):
        build(out, tiny_build.plan, cc="clang")
    other = dict(tiny_build.plan.to_dict(), plan_id=0x12345678)
    with pytest.raises(McugptError, match="plan id .* is not the plan's 0x12345678"):
        build(out, Plan.from_dict(other), cc="zig")
    with pytest.raises(McugptError, match="no model_plan.h"):
        build(tmp_path / "nowhere", tiny_build.plan, cc="zig")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(McugptError, match="arm-none-eabi-gcc is not on PATH"):
        build(out, tiny_build.plan, cc="arm-none-eabi-gcc")
