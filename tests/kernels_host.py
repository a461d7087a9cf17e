"""ctypes bindings to the firmware's C kernels (runtime_c/), compiled for the host.

The same C files run on the board. Compiled here with gcc and -ffp-contract=off they
compute the same float32 results as on the Cortex-M7 (IEEE single on both, no fused
multiply-add, sqrt correctly rounded on both), so these tests check the firmware's
numerics without the emulator.

The wrappers take and return numpy arrays and never modify their inputs (the in-place C
kernels work on a copy unless asked otherwise).
"""

import ctypes
import functools
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from target import toolchain
from target.memory_map import TOPK_MAX

RUNTIME_C = Path(__file__).resolve().parent.parent / "runtime_c"
SOURCES = ("mathf.c", "kernels.c", "prng.c")
HEADERS = ("mathf.h", "kernels.h", "prng.h")

# -fno-math-errno: otherwise gcc keeps a libm call next to sqrtss for negative inputs.
HOST_CFLAGS = ("-O2", "-fPIC", "-shared", "-std=c99", "-ffp-contract=off", "-fno-math-errno",
               f"-DTOPK_MAX={TOPK_MAX}")

# Host-only helpers compiled into the test library, never into the firmware: array
# versions of the scalar math (one ctypes call per element would make sweeps of millions
# of points slow) and the layout facts the ctypes mirror of TopK needs.
_SHIM = r"""
#include "mathf.h"
#include "kernels.h"
#include "prng.h"
void host_expf_n(float* y, const float* x, int n) { for (int i = 0; i < n; i++) y[i] = mcu_expf(x[i]); }
void host_tanhf_n(float* y, const float* x, int n) { for (int i = 0; i < n; i++) y[i] = mcu_tanhf(x[i]); }
void host_tanhf2_n(float* y, const float* x, int n) { for (int i = 0; i + 1 < n; i += 2) mcu_tanhf2(y + i, x[i], x[i + 1]); }
void host_expf4_sub_n(float* y, const float* x, int n, float sub) { for (int i = 0; i + 3 < n; i += 4) mcu_expf4_sub(y + i, x + i, sub); }
void host_sqrtf_n(float* y, const float* x, int n) { for (int i = 0; i < n; i++) y[i] = mcu_sqrtf(x[i]); }
int host_topk_max(void) { return TOPK_MAX; }
int host_sizeof_topk(void) { return (int)sizeof(TopK); }
int host_sizeof_prng(void) { return (int)sizeof(Prng); }
"""


def host_cc() -> list[str]:
    """The host C compiler command plus the define every build of the kernels needs."""
    return [*toolchain.compiler("host"), f"-DTOPK_MAX={TOPK_MAX}"]


def build_library(cflags=HOST_CFLAGS):
    """Compile runtime_c + the shim into a shared library; return its path.

    Cached in the temp dir under a hash of the sources and flags, so editing a kernel
    rebuilds and concurrent test processes never see a half-written file.
    """
    cc = toolchain.compiler("host")
    h = hashlib.sha256()
    for part in (*cc, *cflags, _SHIM):
        h.update(part.encode() + b"\0")
    for name in SOURCES + HEADERS:
        h.update((RUNTIME_C / name).read_bytes())
    out_dir = Path(tempfile.gettempdir()) / "mcugpt-kernels-host" / h.hexdigest()[:16]
    lib_path = out_dir / "libkernels.so"
    if lib_path.exists():
        return lib_path
    out_dir.mkdir(parents=True, exist_ok=True)
    shim = out_dir / "host_shim.c"
    shim.write_text(_SHIM)
    tmp = out_dir / f"libkernels.{os.getpid()}.so"
    cmd = [*cc, *cflags, f"-I{RUNTIME_C}", *(str(RUNTIME_C / s) for s in SOURCES),
           str(shim), "-o", str(tmp)]
    toolchain.run(cmd, "host build of runtime_c's kernels")
    os.replace(tmp, lib_path)
    return lib_path


_FP = ctypes.POINTER(ctypes.c_float)
_INT = ctypes.c_int
_FLOAT = ctypes.c_float


class TopK(ctypes.Structure):
    """Mirror of the C struct; TOPK_MAX is checked against the library on load."""
    TOPK_MAX = TOPK_MAX
    _fields_ = [("k", ctypes.c_int), ("n", ctypes.c_int),
                ("val", ctypes.c_float * TOPK_MAX), ("idx", ctypes.c_int * TOPK_MAX)]

    def result(self):
        """(idx, val) of what is held, best first."""
        n = self.n
        return (np.array(self.idx[:n], dtype=np.int64), np.array(self.val[:n], dtype=np.float32))


class _PrngStruct(ctypes.Structure):
    _fields_ = [("state", ctypes.c_uint64)]


@functools.lru_cache(maxsize=None)
def lib():
    """The loaded library, with argument types declared."""
    L = ctypes.CDLL(str(build_library()))
    sigs = {
        "host_expf_n": (None, [_FP, _FP, _INT]),
        "host_tanhf_n": (None, [_FP, _FP, _INT]),
        "host_tanhf2_n": (None, [_FP, _FP, _INT]),
        "host_expf4_sub_n": (None, [_FP, _FP, _INT, _FLOAT]),
        "host_sqrtf_n": (None, [_FP, _FP, _INT]),
        "host_topk_max": (_INT, []),
        "host_sizeof_topk": (_INT, []),
        "host_sizeof_prng": (_INT, []),
        "mcu_expf": (_FLOAT, [_FLOAT]),
        "mcu_tanhf": (_FLOAT, [_FLOAT]),
        "mcu_sqrtf": (_FLOAT, [_FLOAT]),
        "vec_dot": (_FLOAT, [_FP, _FP, _INT]),
        "layernorm": (None, [_FP, _FP, _FP, _FP, _INT, _FLOAT]),
        "matvec_rows": (None, [_FP, _FP, _FP, _FP, _INT, _INT]),
        "gelu_tanh": (None, [_FP, _INT]),
        "softmax": (None, [_FP, _INT]),
        "softmax_exps": (_FLOAT, [_FP, _INT]),
        "add_inplace": (None, [_FP, _FP, _INT]),
        "attention_head": (None, [_FP, _FP, _FP, _FP, _INT, _INT, _INT, _FP]),
        "topk_init": (None, [ctypes.POINTER(TopK), _INT]),
        "topk_push": (None, [ctypes.POINTER(TopK), _FP, _INT, _INT]),
        "prng_init": (None, [ctypes.POINTER(_PrngStruct), ctypes.c_uint64]),
        "prng_next_u32": (ctypes.c_uint32, [ctypes.POINTER(_PrngStruct)]),
        "prng_next_f32": (_FLOAT, [ctypes.POINTER(_PrngStruct)]),
        "sample_topk": (_INT, [ctypes.POINTER(TopK), _FLOAT, ctypes.POINTER(_PrngStruct)]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(L, name)
        fn.restype, fn.argtypes = restype, argtypes
    assert L.host_topk_max() == TopK.TOPK_MAX, "TOPK_MAX differs between C and ctypes"
    assert L.host_sizeof_topk() == ctypes.sizeof(TopK), "TopK layout differs"
    assert L.host_sizeof_prng() == ctypes.sizeof(_PrngStruct), "Prng layout differs"
    return L


def _f32(a):
    """A contiguous float32 copy of a (always a copy: C may write into it)."""
    return np.array(a, dtype=np.float32, order="C", copy=True)


def _p(a):
    return a.ctypes.data_as(_FP)


# ----------------------------------------------------------------------------
# math


def _elementwise(cname, x):
    x = _f32(x)
    flat = x.reshape(-1)
    y = np.empty_like(flat)
    getattr(lib(), cname)(_p(y), _p(flat), flat.size)
    return y.reshape(x.shape)


def expf(x):
    return _elementwise("host_expf_n", x)


def tanhf(x):
    return _elementwise("host_tanhf_n", x)


def expf4_sub(x, sub, in_place=False):
    """mcu_expf4_sub on the groups x[0:4], x[4:8], ... (x.size a multiple of 4), in place of
    x or into another array."""
    x = _f32(x).copy()
    y = x if in_place else np.empty_like(x)
    lib().host_expf4_sub_n(_p(y), _p(x), x.size, ctypes.c_float(sub))
    return y


def tanhf2(x):
    """mcu_tanhf2 on the pairs (x[0], x[1]), (x[2], x[3]), ... (x.size even)."""
    return _elementwise("host_tanhf2_n", x)


def sqrtf(x):
    return _elementwise("host_sqrtf_n", x)


# ----------------------------------------------------------------------------
# kernels


def vec_dot(a, b):
    a, b = _f32(a), _f32(b)
    assert a.shape == b.shape and a.ndim == 1
    return np.float32(lib().vec_dot(_p(a), _p(b), a.size))


def layernorm(x, gamma, beta, eps=1e-5, inplace=False):
    """inplace=True passes out == x to C (the firmware does that)."""
    x, gamma, beta = _f32(x), _f32(gamma), _f32(beta)
    out = x if inplace else np.empty_like(x)
    lib().layernorm(_p(out), _p(x), _p(gamma), _p(beta), x.size, float(eps))
    return out


def matvec_rows(w, x, bias=None):
    """w (rows, cols) row-major, x (cols,), bias (rows,) or None -> y (rows,)."""
    w, x = _f32(w), _f32(x)
    rows, cols = w.shape
    assert x.shape == (cols,)
    y = np.empty(rows, dtype=np.float32)
    b = None if bias is None else _f32(bias)
    lib().matvec_rows(_p(y), _p(w), None if b is None else _p(b), _p(x), rows, cols)
    return y


def gelu_tanh(x):
    x = _f32(x)
    lib().gelu_tanh(_p(x), x.size)
    return x


def softmax(x):
    x = _f32(x)
    lib().softmax(_p(x), x.size)
    return x


def softmax_exps(x):
    """(e, sum): the exponentials in place of x, and their sum."""
    x = _f32(x)
    total = lib().softmax_exps(_p(x), x.size)
    return x, np.float32(total)


def add_inplace(a, b):
    """Returns a + b as computed by the C residual add (on a copy of a)."""
    a, b = _f32(a), _f32(b)
    lib().add_inplace(_p(a), _p(b), a.size)
    return a


def attention_head(q, k_cache, v_cache, n_pos, head_offset=0, out_is_q=False):
    """q (head_dim,); k_cache, v_cache (positions, n_embd); the head is the columns
    [head_offset, head_offset + head_dim). out_is_q=True passes out == q to C."""
    q, k_cache, v_cache = _f32(q), _f32(k_cache), _f32(v_cache)
    head_dim = q.size
    row_stride = k_cache.shape[1]
    assert v_cache.shape[1] == row_stride and head_offset + head_dim <= row_stride
    assert k_cache.shape[0] >= n_pos and v_cache.shape[0] >= n_pos
    scores = np.empty(n_pos, dtype=np.float32)
    out = q if out_is_q else np.empty(head_dim, dtype=np.float32)
    kp = ctypes.cast(k_cache.ctypes.data + 4 * head_offset, _FP)
    vp = ctypes.cast(v_cache.ctypes.data + 4 * head_offset, _FP)
    lib().attention_head(_p(out), _p(q), kp, vp, n_pos, head_dim, row_stride, _p(scores))
    return out


# ----------------------------------------------------------------------------
# top-k and sampling


def topk_new(k):
    t = TopK()
    lib().topk_init(ctypes.byref(t), k)
    return t


def topk_push(t, tile, first_index):
    tile = _f32(tile)
    lib().topk_push(ctypes.byref(t), _p(tile), first_index, tile.size)


def topk(logits, k, tile=1024, order=None):
    """Run the running top-k over logits in tiles of `tile` (in `order` of tile numbers
    if given); return (idx, val) best first."""
    logits = _f32(logits).reshape(-1)
    t = topk_new(k)
    starts = list(range(0, logits.size, tile))
    if order is not None:
        starts = [starts[i] for i in order]
    for s in starts:
        topk_push(t, logits[s:s + tile], s)
    return t.result()


class Prng:
    """The firmware's generator, driven from Python."""

    def __init__(self, seed):
        self._s = _PrngStruct()
        lib().prng_init(ctypes.byref(self._s), seed)

    @property
    def state(self):
        return self._s.state

    def next_u32(self):
        return lib().prng_next_u32(ctypes.byref(self._s))

    def next_f32(self):
        return np.float32(lib().prng_next_f32(ctypes.byref(self._s)))

    def sample_topk(self, t, temperature):
        return lib().sample_topk(ctypes.byref(t), float(temperature), ctypes.byref(self._s))
