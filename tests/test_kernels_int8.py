"""The firmware's int8 kernels (runtime_c/kernels_int8.c) against compiler/quantize.py, bit for bit.

Three builds of the same C:
- the host (gcc, ctypes): the portable C loop, on random data and on the edges of the
  spec (amax == 0, exact .5 products, negative zero, short and long rows, unaligned rows);
- the Cortex-M7 object files of zig cc and arm-none-eabi-gcc: the DSP path (SXTB16 +
  SMLAD in matvec_rows_i8), single precision only, nothing to link but themselves;
- tests/board_firmware/int8_matvec.c on the emulated board: the DSP path executed,
  compared bit for bit with numpy, and timed against the fp32 matvec_rows.
Every comparison is np.array_equal on the raw bits: there is no tolerance anywhere.
"""

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from compiler import quantize as qz
from target import toolchain
from target.memory_map import TOPK_MAX

try:
    from . import kernels_host as kh
except ImportError:
    import kernels_host as kh

f32 = np.float32
SOURCE, HEADER = "kernels_int8.c", "kernels_int8.h"
FIRMWARE_DIR = Path(__file__).resolve().parent / "board_firmware"


# ----------------------------------------------------------------------------
# host build (ctypes), cached like kernels_host.build_library


def build_int8_library(cflags=kh.HOST_CFLAGS):
    cc = kh.host_cc()
    h = hashlib.sha256()
    for part in (*cc, *cflags):
        h.update(part.encode() + b"\0")
    for name in (SOURCE, HEADER):
        h.update((kh.RUNTIME_C / name).read_bytes())
    out_dir = Path(tempfile.gettempdir()) / "mcugpt-kernels-int8-host" / h.hexdigest()[:16]
    lib_path = out_dir / "libkernels_int8.so"
    if lib_path.exists():
        return lib_path
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f"libkernels_int8.{os.getpid()}.so"
    cmd = [*cc, *cflags, f"-I{kh.RUNTIME_C}", str(kh.RUNTIME_C / SOURCE), "-o", str(tmp)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"host build failed: {' '.join(cmd)}\n{res.stderr}")
    os.replace(tmp, lib_path)
    return lib_path


_FP = ctypes.POINTER(ctypes.c_float)
_I8P = ctypes.POINTER(ctypes.c_int8)


@functools.lru_cache(maxsize=None)
def lib():
    L = ctypes.CDLL(str(build_int8_library()))
    L.quantize_vector_i8.restype = None
    L.quantize_vector_i8.argtypes = [_I8P, _FP, _FP, ctypes.c_int]
    L.matvec_rows_i8.restype = None
    L.matvec_rows_i8.argtypes = [_FP, _I8P, _FP, _FP, _I8P, ctypes.c_void_p, ctypes.c_float, ctypes.c_int,
                                 ctypes.c_int]
    return L


def _f32(a):
    return np.array(a, dtype=np.float32, order="C", copy=True)


def _skewed_i8(a, skew):
    """A copy of int8 array a whose data starts `skew` bytes past a 32-byte boundary."""
    a = np.ascontiguousarray(a, dtype=np.int8)
    buf = np.zeros(a.size + 64, dtype=np.int8)
    start = (-buf.ctypes.data) % 32 + skew
    view = buf[start:start + a.size].reshape(a.shape)
    view[...] = a
    assert a.size == 0 or view.ctypes.data % 32 == skew
    return view


def c_quantize_vector(x, skew=0):
    """(q int8, scale float32) from quantize_vector_i8; q written `skew` bytes off alignment."""
    x = _f32(x).reshape(-1)
    q = _skewed_i8(np.zeros(x.size, np.int8), skew)
    scale = ctypes.c_float(-1.0)
    lib().quantize_vector_i8(q.ctypes.data_as(_I8P), ctypes.byref(scale), x.ctypes.data_as(_FP), x.size)
    return q.copy(), f32(scale.value)


def c_matvec(q_w, s_w, bias, q_x, s_x, w_skew=0, x_skew=0):
    rows, cols = q_w.shape
    w = _skewed_i8(q_w, w_skew)
    qx = _skewed_i8(q_x, x_skew)
    s = _f32(s_w)
    b = None if bias is None else _f32(bias)
    y = np.full(rows, np.nan, dtype=np.float32)
    lib().matvec_rows_i8(y.ctypes.data_as(_FP), w.ctypes.data_as(_I8P), s.ctypes.data_as(_FP),
                         None if b is None else b.ctypes.data_as(_FP), qx.ctypes.data_as(_I8P),
                         None, float(s_x), rows, cols)
    return y


def c_matvec_int8(q_w, s_w, x, bias, **skews):
    """The firmware's two calls, as quantize.matvec_int8 defines the product."""
    q_x, s_x = c_quantize_vector(x)
    return c_matvec(q_w, s_w, bias, q_x, s_x, **skews)


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(
        a.view(np.uint8 if a.dtype.itemsize == 1 else np.uint32),
        b.view(np.uint8 if b.dtype.itemsize == 1 else np.uint32))


def assert_quantize_matches(x, skew=0):
    q_ref, s_ref = qz.quantize_vector(np.asarray(x, np.float32))
    q, s = c_quantize_vector(x, skew)
    assert same_bits(np.asarray(s, f32), np.asarray(s_ref, f32)), (s, s_ref)
    bad = np.flatnonzero(q != q_ref)
    assert bad.size == 0, f"{bad.size} values differ, first x={np.asarray(x).reshape(-1)[bad[0]]!r}: " \
                          f"C {q[bad[0]]}, numpy {q_ref[bad[0]]}"
    return q, s


def bits(x):
    return int(np.array(x, dtype=np.float32).view(np.uint32))


def floats_from_bits(lo, hi, stride):
    return np.arange(lo, hi + 1, stride, dtype=np.uint64).astype(np.uint32).view(np.float32)


# ----------------------------------------------------------------------------
# quantize_vector_i8


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 768, 3072, 4096, 100_003])
@pytest.mark.parametrize("spread", [1e-30, 1e-3, 1.0, 37.0, 1e30])
def test_quantize_vector_random(n, spread):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * spread).astype(f32)
    assert_quantize_matches(x)
    assert_quantize_matches(rng.uniform(-spread, spread, n).astype(f32), skew=n % 4)


def test_quantize_vector_heavy_tails_like_gpt2_activations():
    # a few outliers 100x the bulk: most values land in a handful of levels
    rng = np.random.default_rng(5)
    x = rng.standard_normal(768).astype(f32)
    x[[3, 77, 500]] = [-310.0, 95.5, 260.25]
    q, _ = assert_quantize_matches(x)
    assert q.min() == -127 and np.abs(q).max() == 127


def test_quantize_vector_all_zero_gives_zero_scale():
    for x in ([0.0], [0.0] * 9, [-0.0] * 5, [0.0, -0.0, 0.0, -0.0, -0.0]):
        q, s = assert_quantize_matches(np.array(x, f32))
        assert not q.any() and s == 0 and not np.signbit(s)


def test_quantize_vector_empty():
    q, s = c_quantize_vector(np.zeros(0, f32))
    assert q.size == 0 and s == 0


def test_quantize_vector_negative_zero_and_signs():
    x = np.array([-0.0, 0.0, 1.0, -1.0, -0.0, 127.0, -127.0, 1e-7, -1e-7], f32)
    q, s = assert_quantize_matches(x)
    assert list(q) == [0, 0, 1, -1, 0, 127, -127, 0, 0] and s == 1


def test_quantize_vector_exact_half_products_round_away_from_zero():
    # amax = 127 makes inv exactly 1, so x * inv = x: every k + 0.5 is an exact tie
    k = np.arange(-127, 127, dtype=np.float64)
    halves = (k + 0.5).astype(f32)
    x = np.concatenate([[f32(127.0)], halves, np.nextafter(halves, f32(0)), np.nextafter(halves, f32(1e9))])
    q, _ = assert_quantize_matches(x.astype(f32))
    h = q[1:1 + halves.size]
    assert np.array_equal(h, np.where(halves > 0, np.ceil(halves), np.floor(halves)).astype(np.int8))
    # the largest float below 0.5: v + 0.5 rounds up to 1.0 in float32, so the spec
    # (and numpy, and C) give 1, not 0. Pinned here because it is surprising.
    below = np.nextafter(f32(0.5), f32(0))
    q, _ = assert_quantize_matches(np.array([127.0, below, -below], f32))
    assert list(q) == [127, 1, -1]


def test_quantize_vector_ties_with_inexact_inverse():
    # amax chosen so 127/amax is inexact: values placed around the .5 points of x * inv
    for amax in (f32(3.0), f32(0.1), f32(1000.7), f32(6.1e-5)):
        inv = f32(f32(127.0) / amax)
        k = np.arange(-127, 127) + 0.5
        centre = (k / np.float64(inv)).astype(f32)
        x = np.concatenate([[amax], centre, np.nextafter(centre, f32(-np.inf)), np.nextafter(centre, f32(np.inf))])
        x = np.clip(x, -amax, amax).astype(f32)
        assert_quantize_matches(x)


def test_quantize_vector_sweep_of_bit_patterns():
    # every 97th float in [0, amax] on both signs, for amax on and off powers of two
    for amax in (1.0, 3.3, 1e-20, 2.5e20):
        hi = bits(amax)
        pos = floats_from_bits(0, hi, 97)
        x = np.concatenate([[f32(amax)], pos, -pos]).astype(f32)
        assert_quantize_matches(x)


def test_quantize_vector_agrees_with_quantize_rows_per_row():
    # the compiler's offline weight quantization and the runtime's activation quantization
    # are the same function of a row (a zero row: q = 0, scale = 0 in both)
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((33, 257)) * rng.uniform(1e-3, 10, (33, 1))).astype(f32)
    w[4] = 0.0
    w[9] = -0.0
    w[11, :] = np.arange(257) - 128.5
    q_rows, s_rows = qz.quantize_rows(w)
    for r in range(w.shape[0]):
        q, s = c_quantize_vector(w[r])
        assert same_bits(q, q_rows[r]) and same_bits(np.asarray(s, f32), s_rows[r]), r


# ----------------------------------------------------------------------------
# matvec_rows_i8


def random_case(rng, rows, cols, outliers=True):
    w = rng.standard_normal((rows, cols)).astype(f32) * f32(0.02)
    x = rng.standard_normal(cols).astype(f32)
    if outliers and cols > 8:
        x[rng.integers(0, cols, 3)] *= 40
    b = rng.standard_normal(rows).astype(f32)
    q_w, s_w = qz.quantize_rows(w)
    return q_w, s_w, x, b


@pytest.mark.parametrize("cols", [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 15, 16, 17, 63, 767, 768, 3072, 4096])
@pytest.mark.parametrize("rows", [1, 2, 3, 8])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matvec_rows_i8_matches_matvec_int8(rows, cols, with_bias):
    rng = np.random.default_rng(rows * 10_000 + cols)
    q_w, s_w, x, b = random_case(rng, rows, cols)
    bias = b if with_bias else None
    ref = qz.matvec_int8(q_w, s_w, x, bias)
    assert same_bits(c_matvec_int8(q_w, s_w, x, bias), ref)


@pytest.mark.parametrize("w_skew, x_skew", [(1, 0), (2, 3), (3, 1), (0, 2)])
def test_matvec_rows_i8_unaligned_tiles_and_vectors(w_skew, x_skew):
    rng = np.random.default_rng(w_skew * 4 + x_skew)
    for rows, cols in ((5, 7), (4, 13), (3, 769)):
        q_w, s_w, x, b = random_case(rng, rows, cols)
        got = c_matvec_int8(q_w, s_w, x, b, w_skew=w_skew, x_skew=x_skew)
        assert same_bits(got, qz.matvec_int8(q_w, s_w, x, b))


def test_matvec_rows_i8_extreme_sums_round_once_to_float32():
    # |acc| up to 127 * 127 * 4096 = 66,064,384 > 2^24: float(acc) rounds, as in numpy
    cols = 4096
    q_x = np.full(cols, 127, np.int8)
    q_x[1::3] = -127
    q_w = np.stack([np.full(cols, 127, np.int8), np.full(cols, -127, np.int8), q_x, -q_x,
                    np.where(np.arange(cols) % 2 == 0, 127, -127).astype(np.int8)])
    s_w = np.array([1.0, 0.5, 3.0, 1e-3, 7.0], f32)
    acc = q_w.astype(np.int64) @ q_x.astype(np.int64)
    assert np.abs(acc).max() == 127 * 127 * cols
    s_x = f32(0.013)
    ref = acc.astype(np.int32).astype(f32) * (s_w * s_x).astype(f32)
    assert same_bits(c_matvec(q_w, s_w, None, q_x, s_x), ref.astype(f32))


def test_matvec_rows_i8_zero_vector_gives_bias_or_zero():
    rng = np.random.default_rng(3)
    q_w, s_w, _, b = random_case(rng, 6, 10)
    x = np.zeros(10, f32)
    assert same_bits(c_matvec_int8(q_w, s_w, x, b), qz.matvec_int8(q_w, s_w, x, b))
    y = c_matvec_int8(q_w, s_w, x, None)
    assert not y.any() and not np.signbit(y).any()


def test_matvec_rows_i8_zero_and_negative_zero_rows():
    w = np.random.default_rng(4).standard_normal((4, 9)).astype(f32)
    w[1] = 0.0
    w[2] = -0.0
    q_w, s_w = qz.quantize_rows(w)
    x = np.linspace(-2, 3, 9).astype(f32)
    b = np.array([0.5, -0.0, 2.0, -1.0], f32)
    assert same_bits(c_matvec_int8(q_w, s_w, x, b), qz.matvec_int8(q_w, s_w, x, b))


def test_matvec_rows_i8_does_not_write_past_y():
    rng = np.random.default_rng(8)
    q_w, s_w, x, _ = random_case(rng, 3, 5)
    q_x, s_x = c_quantize_vector(x)
    y = np.full(6, 123.0, f32)
    lib().matvec_rows_i8(y.ctypes.data_as(_FP), np.ascontiguousarray(q_w).ctypes.data_as(_I8P),
                         _f32(s_w).ctypes.data_as(_FP), None, q_x.ctypes.data_as(_I8P), None, float(s_x), 3, 5)
    assert list(y[3:]) == [123.0] * 3


# ----------------------------------------------------------------------------
# Cortex-M7 objects: DSP instructions in the inner loop, single precision only

ZIG_FLAGS = ["-target", "thumb-freestanding-eabihf", "-mcpu=cortex_m7+fp_armv8d16sp",
             "-O2", "-ffp-contract=off", "-fno-math-errno"]
GCC_FLAGS = ["-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-sp-d16", "-mfloat-abi=hard",
             "-O2", "-ffp-contract=off", "-fno-math-errno", "-ffreestanding",
             "-fno-tree-loop-distribute-patterns"]   # never turn a loop into memset/memcpy
WARN_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Wdouble-promotion", "-Werror"]
OBJDUMP = "/usr/bin/llvm-objdump"


def m7_compiler(name):
    cc = "zig" if name == "zig" else "arm-none-eabi-gcc"
    if not toolchain.available(cc):
        pytest.skip(f"{cc} is not installed")
    return [*toolchain.compiler(cc), *(ZIG_FLAGS if cc == "zig" else GCC_FLAGS)]


def disassembler():
    tool = OBJDUMP if Path(OBJDUMP).exists() else shutil.which("llvm-objdump")
    if not tool:
        pytest.skip("llvm-objdump is not installed")
    # +fp-armv8 decodes the whole VFP set, so a stray double shows up as .f64
    return [tool, "--triple=thumbv7em-none-eabihf", "--mattr=+fp-armv8", "-d", "-r", "--no-show-raw-insn"]


@functools.lru_cache(maxsize=None)
def m7_object(compiler):
    out = Path(tempfile.mkdtemp(prefix=f"mcugpt-int8-{compiler}-"))
    obj = out / "kernels_int8.o"
    cmd = [*m7_compiler(compiler), *WARN_FLAGS, f"-I{kh.RUNTIME_C}", "-c",
           str(kh.RUNTIME_C / SOURCE), "-o", str(obj)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"
    dis = subprocess.run([*disassembler(), str(obj)], capture_output=True, text=True, check=True).stdout
    return obj, dis


def function_body(dis, name):
    """The disassembly lines of one function: [(address, mnemonic, operands)]."""
    # to the next function's label: a literal pool inside the function (<$d>, then <$t>) is
    # preceded by a blank line too
    m = re.search(rf"^[0-9a-f]+ <{re.escape(name)}>:\n(.*?)(?:\n\n[0-9a-f]+ <(?!\$)|\Z)", dis, re.S | re.M)
    assert m, f"{name} not in the disassembly"
    insns = []
    for line in m.group(1).splitlines():
        im = re.match(r"\s*([0-9a-f]+):\s+(\S+)\s*(.*)", line)
        if im and "R_ARM" not in line:   # -r puts relocations on lines of their own
            insns.append((int(im.group(1), 16), im.group(2), im.group(3)))
    return insns


def hottest_loop(insns):
    """The loop (backward branch) with the fewest instructions per SMLAD MAC: (body, macs)."""
    best = None
    for i, (addr, op, args) in enumerate(insns):
        t = re.search(r"0x([0-9a-f]+)", args)
        if not op.startswith("b") or op.startswith(("bl", "bx", "bic")) or not t:
            continue
        target = int(t.group(1), 16)
        if target >= addr:
            continue
        body = [x for x in insns if target <= x[0] <= addr]
        macs = 2 * sum(1 for x in body if x[1].startswith("smlad"))
        if macs and (best is None or len(body) / macs < len(best[0]) / best[1]):
            best = (body, macs)
    assert best, "no loop with SMLAD"
    return best


@pytest.mark.parametrize("compiler", ["zig", "gcc"])
def test_m7_matvec_uses_sxtb16_and_smlad(compiler):
    _obj, dis = m7_object(compiler)
    body = function_body(dis, "matvec_rows_i8")
    ops = [op for _a, op, _r in body]
    assert "smlad" in ops and "sxtb16" in ops, f"{compiler}: no DSP instructions in matvec_rows_i8"
    assert any(op == "sxtb16" and "ror #8" in args for _a, op, args in body)
    loop, macs = hottest_loop(body)
    per_mac = len(loop) / macs
    print(f"\n{compiler}: inner loop {len(loop)} instructions for {macs} MACs = {per_mac:.3f} per MAC")
    print("\n".join(f"    {op:8s} {args}" for _a, op, args in loop))
    # 4 rows x 8 columns: 2 LDRD + 8 LDR + 16 SXTB16 + 16 SMLAD + loop overhead
    assert per_mac <= 1.5, f"{compiler}: {per_mac:.2f} instructions per MAC"
    # LDRD/LDM fault on unaligned addresses: only the (aligned) stack, and the unpacked
    # activations (8-byte aligned by contract, streamed with post-increment #8) may be read
    # that way; weight rows never
    paired = [(op, args) for _a, op, args in body if op.startswith(("ldrd", "ldm"))
              and not re.search(r"\[sp\b|^sp\b", args) and not re.search(r"\], #8$", args)]
    assert not paired, f"{compiler}: {paired} would fault on unaligned rows"


@pytest.mark.parametrize("compiler", ["zig", "gcc"])
def test_m7_object_is_single_precision_and_self_contained(compiler):
    obj, dis = m7_object(compiler)
    assert ".f64" not in dis and "__aeabi_d" not in dis and "__aeabi_f2d" not in dis
    assert "<unknown>" not in dis
    elffile = pytest.importorskip("elftools.elf.elffile")
    with open(obj, "rb") as f:
        undefined = {s.name for s in elffile.ELFFile(f).get_section_by_name(".symtab").iter_symbols()
                     if s.name and s["st_shndx"] == "SHN_UNDEF"}
    ehabi = {"__aeabi_unwind_cpp_pr0", "__aeabi_unwind_cpp_pr1", "__aeabi_unwind_cpp_pr2"}
    assert undefined - ehabi == set(), f"{compiler}: needs {sorted(undefined - ehabi)}"
    q = [op for _a, op, _r in function_body(dis, "quantize_vector_i8")]
    assert "vdiv.f32" in q and "vcvt.s32.f32" in q


@pytest.mark.parametrize("compiler", ["zig", "gcc"])
@pytest.mark.parametrize("opt", ["-O0", "-Os", "-O3"])
def test_m7_builds_at_every_optimization_level(compiler, opt, tmp_path):
    # the inline assembly must find its registers even at -O0 (frame pointer, no inlining)
    cmd = [*m7_compiler(compiler), *WARN_FLAGS, opt, f"-I{kh.RUNTIME_C}", "-c",
           str(kh.RUNTIME_C / SOURCE), "-o", str(tmp_path / "x.o")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"


def test_host_build_has_no_warnings(tmp_path):
    cmd = [*kh.host_cc(), "-O2", "-ffp-contract=off", *WARN_FLAGS, "-Wconversion", "-Wshadow",
           f"-I{kh.RUNTIME_C}", "-c", str(kh.RUNTIME_C / SOURCE), "-o", str(tmp_path / "x.o")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


SANITIZER_DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "kernels_int8.h"
int main(void) {
    volatile float sink = 0.0f;
    for (int cols = 1; cols <= 19; cols++) {
        for (int rows = 1; rows <= 5; rows++) {
            float* x = malloc(sizeof(float) * (size_t)cols);          /* exactly sized */
            int8_t* q = malloc((size_t)cols);
            int8_t* w = malloc((size_t)(rows * cols));
            float *s = malloc(sizeof(float) * (size_t)rows), *b = malloc(sizeof(float) * (size_t)rows);
            float* y = malloc(sizeof(float) * (size_t)rows);
            float sx;
            for (int i = 0; i < cols; i++) x[i] = (float)((i * 37) % 11) - 5.5f;
            for (int i = 0; i < rows * cols; i++) w[i] = (int8_t)((i * 53) % 255 - 127);
            for (int r = 0; r < rows; r++) { s[r] = 0.01f * (float)(r + 1); b[r] = (float)r; }
            quantize_vector_i8(q, &sx, x, cols);
            matvec_rows_i8(y, w, s, b, q, 0, sx, rows, cols);
            matvec_rows_i8(y, w, s, NULL, q, 0, sx, rows, cols);
            sink += y[rows - 1];
            free(x); free(q); free(w); free(s); free(b); free(y);
        }
    }
    printf("ok %d\n", sink == sink);
    return 0;
}
"""


def test_kernels_under_address_and_undefined_behaviour_sanitizers(tmp_path):
    src = tmp_path / "driver.c"
    src.write_text(SANITIZER_DRIVER)
    exe = tmp_path / "driver"
    cmd = [*kh.host_cc(), "-std=c99", "-O1", "-g", "-ffp-contract=off", "-fno-math-errno",
           "-fsanitize=address,undefined,float-cast-overflow", "-fno-sanitize-recover=all",
           f"-I{kh.RUNTIME_C}", str(src), str(kh.RUNTIME_C / SOURCE), "-o", str(exe)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 and "sanitize" in res.stderr.lower():
        pytest.skip(f"sanitizer runtime not available: {res.stderr.strip()[:200]}")
    assert res.returncode == 0, res.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True,
                         env={"ASAN_OPTIONS": "detect_leaks=1", "UBSAN_OPTIONS": "print_stacktrace=1"})
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stderr[-3000:]


# ----------------------------------------------------------------------------
# on the emulated board: tests/board_firmware/int8_matvec.c

BOARD_SOURCES = ("kernels_int8.c", "kernels.c", "mathf.c")
MODE_INT8, MODE_FP32, MODE_BATCH, FLAG_BIAS, FLAG_UNPACKED = 1, 2, 3, 1, 2
STAGE_QUANTIZE, STAGE_MATVEC_I8, STAGE_MATVEC_F32, STAGE_MATVEC_I8_BATCH = 1, 2, 3, 4
BOARD_RAM = 16 << 20   # the program's 14 MiB arena + statics + stack


def build_board_program(compiler, out):
    """tests/board_firmware/int8_matvec.c + crt0.c + the kernels, built by zig or
    arm-none-eabi-gcc into out/int8_matvec_<compiler>.elf."""
    from compiler.codegen import render_memory_map
    (out / "include").mkdir(parents=True, exist_ok=True)
    (out / "include" / "memory_map.h").write_text(render_memory_map())
    elf = out / f"int8_matvec_{compiler}.elf"
    srcs = [str(FIRMWARE_DIR / "crt0.c"), str(FIRMWARE_DIR / "int8_matvec.c"),
            *(str(kh.RUNTIME_C / s) for s in BOARD_SOURCES)]
    # zig: -nostdlib would drop compiler_rt; gcc: no newlib, libgcc for any helper
    link = ["-Wl,--entry=Reset_Handler"] + ([] if compiler == "zig" else ["-nostdlib"])
    cmd = [*m7_compiler(compiler), "-std=c99", "-Wall", "-Wextra", "-Werror", f"-DTOPK_MAX={TOPK_MAX}",
           f"-I{out / 'include'}", f"-I{FIRMWARE_DIR}", f"-I{kh.RUNTIME_C}",
           "-T", str(FIRMWARE_DIR / "board_test.ld"), *link, *srcs, "-o", str(elf)]
    if compiler == "gcc":
        cmd.append("-lgcc")
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"
    return elf


@pytest.fixture(scope="module")
def board_program(tmp_path_factory):
    """board_program("zig" | "gcc") -> path of int8_matvec.elf built by that compiler."""
    pytest.importorskip("unicorn")
    out = tmp_path_factory.mktemp("int8_board")
    built = {}

    def build(compiler):
        if compiler not in built:
            built[compiler] = build_board_program(compiler, out)
        return built[compiler]

    return build


class FlashBlob:
    """Arrays laid end to end (4-byte aligned) in a flash image file; add() gives the address."""

    def __init__(self):
        self.parts, self.size = [], 0

    def add(self, a):
        raw = np.ascontiguousarray(a).tobytes()
        addr = self.size
        pad = (-len(raw)) % 4
        self.parts.append(raw + b"\0" * pad)
        self.size += len(raw) + pad
        return addr

    def write(self, path):
        path.write_bytes(b"".join(self.parts) + b"\0" * 4)
        return path


def int8_case(blob, q_w, s_w, x, bias, w_skew=0, x_skew=0, reps=1, unpacked=False):
    rows, cols = q_w.shape
    b_addr = blob.add(np.asarray(bias, f32)) if bias is not None else 0
    flags = (FLAG_BIAS if bias is not None else 0) | (FLAG_UNPACKED if unpacked else 0) | w_skew << 8 | x_skew << 12
    return [MODE_INT8, rows, cols, flags, blob.add(np.asarray(x, f32)), blob.add(q_w.astype(np.int8)),
            blob.add(np.asarray(s_w, f32)), b_addr, reps]


def fp32_case(blob, w, x, bias, reps=1):
    rows, cols = w.shape
    b_addr = blob.add(np.asarray(bias, f32)) if bias is not None else 0
    return [MODE_FP32, rows, cols, FLAG_BIAS if bias is not None else 0, blob.add(np.asarray(x, f32)),
            blob.add(np.asarray(w, f32)), 0, b_addr, reps]


def run_board(elf, blob, cases, tmp_path):
    from emulator.board import Board
    image = blob.write(tmp_path / "int8_cases.img")
    words = [len(cases)] + [w for c in cases for w in c]
    with Board(elf, image, ram_bytes=BOARD_RAM) as board:
        result = board.run(words, n_new=0, dump_logits=True, timeout_s=600)
    return result


def board_int8_outputs(result, step, rows, cols):
    """(y, q_x, s_x) dumped by an int8 case whose first logits step is `step`."""
    y = result.logits[step][:rows]
    raw = result.logits[step + 1]
    words = (cols + 3) // 4
    q_x = raw[:words].view(np.int8)[:cols]
    return y, q_x, raw[words]


BOARD_CASES = [  # rows, cols, bias, w_skew, x_skew, vector kind
    (1, 1, False, 0, 0, "random"), (3, 5, True, 1, 3, "random"), (2, 4, True, 0, 0, "random"),
    (5, 7, False, 3, 1, "random"), (4, 13, True, 2, 2, "random"), (8, 768, True, 0, 0, "random"),
    (7, 769, True, 1, 0, "random"), (3, 4096, False, 0, 1, "random"), (4, 4096, True, 0, 0, "extreme"),
    (6, 10, True, 0, 0, "zero"), (4, 9, True, 2, 0, "negzero"), (3, 511, True, 0, 0, "halves"),
    # the 4-row kernel (unpacked input, cols % 4 == 0, aligned rows): whole groups of four
    # rows, a remainder of rows, and a last single word of columns
    (9, 24, True, 0, 0, "random"), (12, 12, False, 0, 0, "random"), (4, 4, True, 0, 0, "extreme"),
]


def board_vector(kind, cols, rng):
    if kind == "zero":
        return np.zeros(cols, f32)
    if kind == "negzero":
        x = np.linspace(-3, 3, cols).astype(f32)
        x[::2] = -0.0
        return x
    if kind == "halves":   # amax 127: every other value an exact tie of round-half-away
        x = ((np.arange(cols) % 254) - 126.5).astype(f32)
        x[0] = 127.0
        x[1::2] = np.nextafter(x[1::2], f32(0))
        return x
    if kind == "extreme":
        x = np.full(cols, 5.0, f32)
        x[1::3] = -5.0
        return x
    x = rng.standard_normal(cols).astype(f32)
    x[rng.integers(0, cols, 2)] *= 30
    return x


@pytest.mark.parametrize("unpacked", [False, True], ids=["2-row", "4-row"])
@pytest.mark.parametrize("compiler", ["zig", "gcc"])
def test_board_int8_kernels_are_bit_exact(compiler, unpacked, board_program, tmp_path):
    rng = np.random.default_rng(11)
    blob, cases, expected = FlashBlob(), [], []
    for rows, cols, with_bias, w_skew, x_skew, kind in BOARD_CASES:
        if kind == "extreme":
            q_w = np.where(rng.random((rows, cols)) < 0.5, 127, -127).astype(np.int8)
            q_w[0] = 127
            s_w = rng.uniform(0.001, 0.1, rows).astype(f32)
        else:
            q_w, s_w = qz.quantize_rows(rng.standard_normal((rows, cols)).astype(f32))
        if kind == "negzero":
            q_w[1], s_w[1] = 0, 0.0
        x = board_vector(kind, cols, rng)
        bias = rng.standard_normal(rows).astype(f32) if with_bias else None
        cases.append(int8_case(blob, q_w, s_w, x, bias, w_skew, x_skew, unpacked=unpacked))
        expected.append((qz.matvec_int8(q_w, s_w, x, bias), *qz.quantize_vector(x)))
    result = run_board(board_program(compiler), blob, cases, tmp_path)
    assert len(result.logits) == 2 * len(cases)
    for i, ((rows, cols, *_rest, kind), (y_ref, q_ref, s_ref)) in enumerate(zip(BOARD_CASES, expected)):
        y, q_x, s_x = board_int8_outputs(result, 2 * i, rows, cols)
        assert same_bits(q_x, q_ref), (compiler, i, kind)
        assert same_bits(np.asarray(s_x, f32), np.asarray(s_ref, f32)), (compiler, i, kind)
        assert same_bits(y, y_ref), (compiler, i, kind, y, y_ref)


def board_speed(compiler, board_program, tmp_path, rows=768, cols=3072, reps=3):
    """Wall time of matvec_rows_i8 and of the fp32 matvec_rows on the board, per call, and
    their outputs checked bit for bit (int8 against numpy, fp32 against the host C build)."""
    rng = np.random.default_rng(12)
    w = (rng.standard_normal((rows, cols)) * 0.02).astype(f32)
    x = rng.standard_normal(cols).astype(f32)
    b = rng.standard_normal(rows).astype(f32)
    q_w, s_w = qz.quantize_rows(w)
    blob = FlashBlob()
    cases = [int8_case(blob, q_w, s_w, x, b, reps=reps), fp32_case(blob, w, x, b, reps=reps)]
    result = run_board(board_program(compiler), blob, cases, tmp_path)
    y8, q_x, s_x = board_int8_outputs(result, 0, rows, cols)
    assert same_bits(y8, qz.matvec_int8(q_w, s_w, x, b))
    assert same_bits(result.logits[2][:rows], kh.matvec_rows(w, x, b))
    stages = {s.index: s for s in result.stages}
    assert stages[STAGE_MATVEC_I8].calls == 1 and stages[STAGE_MATVEC_F32].calls == 1
    macs = rows * cols
    t_q = stages[STAGE_QUANTIZE].wall_s / reps
    t8 = stages[STAGE_MATVEC_I8].wall_s / reps
    t32 = stages[STAGE_MATVEC_F32].wall_s / reps
    return {"macs": macs, "int8_s": t8, "fp32_s": t32, "quantize_s": t_q,
            "int8_mac_s": macs / t8, "fp32_mac_s": macs / t32,
            "int8_instructions": stages[STAGE_MATVEC_I8].instructions / reps,
            "fp32_instructions": stages[STAGE_MATVEC_F32].instructions / reps}


@pytest.mark.parametrize("compiler", ["zig", "gcc"])
def test_board_int8_matvec_768x3072_is_exact_and_executes_fewer_instructions_than_fp32(
        compiler, board_program, tmp_path):
    """Exact (checked in board_speed), and cheaper on the device: counted instructions, not
    the emulator's wall time (a benchmark figure, not a test)."""
    s = board_speed(compiler, board_program, tmp_path)
    per_mac8, per_mac32 = s["int8_instructions"] / s["macs"], s["fp32_instructions"] / s["macs"]
    print(f"\n{compiler}: 768x3072 on the board: int8 {per_mac8:.3f} instructions/MAC, "
          f"fp32 {per_mac32:.3f}")
    assert per_mac8 < 0.8 * per_mac32


# ----------------------------------------------------------------------------
# matvec_rows_i8_batch: a prefill chunk's vectors against one tile

def batch_case(blob, q_w, s_w, xs, bias, w_skew=0, reps=1):
    rows, cols = q_w.shape
    b_addr = blob.add(np.asarray(bias, f32)) if bias is not None else 0
    flags = (FLAG_BIAS if bias is not None else 0) | w_skew << 8 | len(xs) << 16
    return [MODE_BATCH, rows, cols, flags, blob.add(np.asarray(xs, f32)), blob.add(q_w.astype(np.int8)),
            blob.add(np.asarray(s_w, f32)), b_addr, reps]


BATCH_CASES = [  # rows, cols, vectors, bias, w_skew, weights
    # the fast path (cols % 4 == 0, aligned rows): one vector, pairs, pairs and an odd one;
    # 1..17 words (the 8-word loop, the words after it, the last), rows past the last group
    (4, 4, 1, True, 0, "random"), (4, 4, 2, False, 0, "random"), (4, 8, 3, True, 0, "random"),
    (8, 12, 4, True, 0, "random"), (4, 36, 5, False, 0, "random"), (12, 64, 6, True, 0, "random"),
    (4, 68, 7, True, 0, "random"), (7, 40, 9, True, 0, "random"), (6, 32, 2, False, 0, "random"),
    (4, 96, 16, True, 0, "random"), (8, 72, 9, True, 0, "extreme"), (4, 3072, 3, True, 0, "extreme"),
    # the fallback: unaligned rows, cols % 4 != 0, fewer than four rows
    (8, 24, 3, True, 2, "random"), (5, 13, 4, True, 0, "random"), (3, 16, 3, False, 0, "random"),
]


def batch_weights(rows, cols, kind, rng):
    if kind == "extreme":   # every product +-127 * +-127, summed with one sign: the largest sums
        q_w = np.full((rows, cols), 127, np.int8)
        q_w[1::2] = -127
        return q_w, rng.uniform(0.001, 0.1, rows).astype(f32)
    return qz.quantize_rows(rng.standard_normal((rows, cols)).astype(f32))


def batch_vectors(n, cols, kind, rng):
    if kind == "extreme":
        return np.where(np.arange(n)[:, None] % 2 == 0, 5.0, -5.0).astype(f32) * np.ones((n, cols), f32)
    xs = rng.standard_normal((n, cols)).astype(f32)
    xs[:, rng.integers(0, cols, 2)] *= 30
    return xs


@pytest.mark.parametrize("compiler", ["zig", "gcc"])
def test_board_int8_batch_kernel_is_bit_exact(compiler, board_program, tmp_path):
    """matvec_rows_i8_batch: every vector's y equals matvec_int8's, bit for bit, whatever
    the number of vectors, words, rows and alignment (each a path of the kernel)."""
    rng = np.random.default_rng(13)
    for rows, cols, n, with_bias, w_skew, kind in BATCH_CASES:
        q_w, s_w = batch_weights(rows, cols, kind, rng)
        xs = batch_vectors(n, cols, kind, rng)
        bias = rng.standard_normal(rows).astype(f32) if with_bias else None
        blob = FlashBlob()
        result = run_board(board_program(compiler), blob, [batch_case(blob, q_w, s_w, xs, bias, w_skew)], tmp_path)
        assert len(result.logits) == n
        for p in range(n):
            expected = qz.matvec_int8(q_w, s_w, xs[p], bias)
            assert same_bits(result.logits[p][:rows], expected), (compiler, rows, cols, n, kind, p)


@pytest.mark.parametrize("compiler", ["zig", "gcc"])
def test_board_int8_batch_kernel_cycles_per_mac(compiler, board_program, tmp_path):
    """The modelled cycles per multiply-accumulate of a GPT-2 tile with a prefill chunk of 9
    vectors (a benchmark figure, printed; the bound only catches a lost fast path)."""
    rng = np.random.default_rng(14)
    for rows, cols, n in ((28, 768, 9), (4, 3072, 9), (28, 768, 6)):
        q_w, s_w = qz.quantize_rows(rng.standard_normal((rows, cols)).astype(f32))
        xs = rng.standard_normal((n, cols)).astype(f32)
        b = rng.standard_normal(rows).astype(f32)
        blob = FlashBlob()
        result = run_board(board_program(compiler), blob, [batch_case(blob, q_w, s_w, xs, b, reps=2)], tmp_path)
        for p in range(n):
            assert same_bits(result.logits[p][:rows], qz.matvec_int8(q_w, s_w, xs[p], b))
        stage = {s.index: s for s in result.stages}[STAGE_MATVEC_I8_BATCH]
        per_mac = stage.cycles / (2 * rows * cols * n)
        print(f"\n{compiler}: {rows}x{cols} tile, {n} vectors: {per_mac:.3f} cycles per MAC")
        assert per_mac < 0.7


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s", *sys.argv[1:]]))


# ----------------------------------------------------------------------------
# attention over an int8 KV cache: attention_scores_i8 and attention_accumulate_i8 (or, on a
# complete block stored transposed, attention_accumulate_cols_i8) against
# quantize.attention_int8 (one head), on rows laid out as the cache stores them


def kv_rows(q, scales, row_bytes):
    """Rows of `row_bytes`: a float32 scale, then the int8 values, then filler (a check word)."""
    n, hd = q.shape
    rows = np.full((n, row_bytes), 0x5A, np.uint8)
    rows[:, :4] = np.asarray(scales, np.float32).view(np.uint8).reshape(n, 4)
    rows[:, 4:4 + hd] = q.view(np.uint8)
    return rows


def transposed_block(rows, hd):
    """runtime.c kv_transpose_values: a complete block of value rows rewritten so that row r
    keeps its scale and then holds columns 2r and 2r + 1 at the block's positions."""
    n = rows.shape[0]
    out = rows.copy()
    values = rows[:, 4:4 + hd]                      # (n positions, hd columns)
    out[:, 4:4 + hd] = values.T.reshape(n, hd)      # row r: columns 2r, 2r + 1, n bytes each
    return out


def c_attention_head(q, k_q, k_s, v_q, v_s, row_bytes, block=32, transposed=True):
    """The firmware's calls for one head (runtime.c attention_head_i8): scores a block of keys
    at a time, the softmax's exponentials, the values a block at a time (a complete block of a
    head of 2 x block columns stored transposed, as in the PSRAM), then the division by the
    exponentials' sum."""
    from compiler import numerics as nx
    L = lib()
    L.attention_scores_i8.restype = L.attention_accumulate_i8.restype = None
    L.quantize_query_i16.restype = None
    L.quantize_query_i16.argtypes = [ctypes.c_void_p, ctypes.c_void_p, _FP, _FP, ctypes.c_int]
    L.attention_scores_i8.argtypes = [_FP, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                                      ctypes.c_void_p, ctypes.c_float, ctypes.c_int, ctypes.c_float]
    L.attention_accumulate_i8.argtypes = [_FP, _FP, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                          ctypes.c_void_p]
    L.attention_accumulate_cols_i8.restype = None
    L.attention_accumulate_cols_i8.argtypes = [_FP, _FP, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                               ctypes.c_void_p, ctypes.c_void_p]
    n, hd = k_q.shape
    qh, qu, sq = np.zeros(hd, np.int16), np.zeros(hd // 2 + 2, np.uint32), ctypes.c_float(-1.0)
    L.quantize_query_i16(qh.ctypes.data, qu.ctypes.data, ctypes.byref(sq), _f32(q).ctypes.data_as(_FP), hd)
    want_qh, want_sq = qz.quantize_vector(q, qz.QMAX16)
    assert same_bits(qh, want_qh) and same_bits(np.float32(sq.value), want_sq)
    sq = f32(sq.value)
    keys, values = kv_rows(k_q, k_s, row_bytes), kv_rows(v_q, v_s, row_bytes)
    scores = np.full(n, np.nan, np.float32)
    for t in range(0, n, block):
        m = min(block, n - t)
        L.attention_scores_i8(scores[t:].ctypes.data_as(_FP), keys[t:].ctypes.data, row_bytes, m,
                              qh.ctypes.data, None, float(sq), hd, float(nx.attention_scale(hd)))
    e, total = kh.softmax_exps(scores)
    out = np.zeros(hd, np.float32)
    wq, wu = np.zeros(block, np.int16), np.zeros(block // 2, np.uint32)
    for t in range(0, n, block):
        m = min(block, n - t)
        if transposed and m == block and hd == 2 * block:
            cols = transposed_block(values[t:t + m], hd)
            L.attention_accumulate_cols_i8(out.ctypes.data_as(_FP), e[t:].ctypes.data_as(_FP), cols.ctypes.data,
                                           row_bytes, m, wq.ctypes.data, wu.ctypes.data)
            continue
        L.attention_accumulate_i8(out.ctypes.data_as(_FP), e[t:].ctypes.data_as(_FP), values[t:].ctypes.data,
                                  row_bytes, m, hd, wq.ctypes.data)
    return out * (f32(1) / total)


@pytest.mark.parametrize("n", [1, 5, 32, 33, 100, 1024])
@pytest.mark.parametrize("hd, row_bytes", [(64, 68), (64, 72), (12, 16), (10, 16)])
def test_int8_attention_kernels_match_the_reference(n, hd, row_bytes):
    rng = np.random.default_rng(n * 1000 + row_bytes)
    k = rng.normal(0, 3, (n, hd)).astype(np.float32)
    v = rng.normal(0, 1, (n, hd)).astype(np.float32)
    (k_q, k_s), (v_q, v_s) = zip(*(qz.quantize_vector(r) for r in k)), zip(*(qz.quantize_vector(r) for r in v))
    k_q, v_q = np.stack(k_q), np.stack(v_q)
    k_s, v_s = np.array(k_s, np.float32), np.array(v_s, np.float32)
    q = rng.normal(0, 2, hd).astype(np.float32)
    want = qz.attention_int8(q, k_q, k_s[:, None], v_q, v_s[:, None], 1)
    assert same_bits(c_attention_head(q, k_q, k_s, v_q, v_s, row_bytes), want)
    # complete blocks as rows (the cache in SRAM) and transposed (in the PSRAM): the same bits
    assert same_bits(c_attention_head(q, k_q, k_s, v_q, v_s, row_bytes, transposed=False), want)
    # and it is the int8 arithmetic: the dequantized float attention has other bits (with one
    # position both are that value row, whatever the order of its two products)
    from compiler import numerics as nx
    if n == 1:
        return
    dequant = lambda q_, s_: (q_.astype(np.float32) * s_[:, None]).astype(np.float32)
    assert not same_bits(nx.attention(q, dequant(k_q, k_s), dequant(v_q, v_s), 1), want)


def test_int8_attention_blocks_whose_weights_vanish_add_nothing():
    """A block of value rows that are all zero (scale 0: w = 0) and a block of weights below
    quantize.WEIGHT_MIN (keys far below the best one's) leave out as it was, in C as in numpy."""
    rng = np.random.default_rng(7)
    hd, n = 64, 100
    k = rng.normal(0, 1, (n, hd)).astype(np.float32)
    k[0] = 40.0                      # position 0 takes all the weight: exp(-huge) elsewhere
    v = rng.normal(0, 1, (n, hd)).astype(np.float32)
    v[32:64] = 0.0                   # the second block: scale 0
    (k_q, k_s), (v_q, v_s) = zip(*(qz.quantize_vector(r) for r in k)), zip(*(qz.quantize_vector(r) for r in v))
    k_q, v_q = np.stack(k_q), np.stack(v_q)
    k_s, v_s = np.array(k_s, np.float32), np.array(v_s, np.float32)
    q = np.full(hd, 3.0, np.float32)
    want = qz.attention_int8(q, k_q, k_s[:, None], v_q, v_s[:, None], 1)
    assert same_bits(c_attention_head(q, k_q, k_s, v_q, v_s, 72), want)
    # the answer is position 0's value row, as the float softmax makes it
    assert np.allclose(want, v_q[0] * v_s[0], rtol=1e-4, atol=1e-6)
