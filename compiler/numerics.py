"""The firmware's float32 arithmetic in numpy, operation for operation: bit-exact with runtime_c/.

Why this exists: compiler/reference.py is the oracle the board is checked against. With
numpy's own arithmetic (BLAS matrix products, pairwise sums, np.exp, np.tanh) its logits
differ from the firmware's in the last bits, and in int8 builds a 1e-6 difference in an activation
can flip an int8 rounding, after which the logits differ visibly although the tokens agree.
So the reference does its float work here instead, and the board's logits can be compared
with np.array_equal.

runtime_c/ is the definition of the order of operations: kernels.h documents each
kernel's order, mathf.c defines expf/tanhf, prng.c the sampler. Any change to a kernel
there must be mirrored here; tests/test_numerics.py runs these functions against the C
kernels compiled for the host (and the whole host firmware against the reference) and
fails on the first differing bit.

Every function takes and returns float32 and performs only IEEE float32 operations
(+ - * / sqrt, each rounded once; no fused multiply-add, as the firmware is built with
-ffp-contract=off). Where the C loops over independent elements (rows of a matrix, heads,
the elements of a vector) numpy works on them all at once; where the C accumulates, the
same accumulation runs in the same order:
- a sequential sum s = 0; s += v[0]; s += v[1]; ... is np.cumsum in float32 (an
  accumulation is sequential by definition: every prefix is an output), plus +0.0 at the
  end for the one case where the two differ (all terms -0.0: C gives +0.0);
- vec_dot's four interleaved accumulators are a Python loop over groups of four columns,
  each step one vector operation across every row.
"""

import numpy as np

f32 = np.float32

# ----------------------------------------------------------------------------
# float32 scalar math: runtime_c/mathf.c

# exp (mcu_expf), the same literals as mathf.c (each rounds to the bits in the comment)
LOG2E = f32(1.44269504)                    # 0x3fb8aa3b
ROUND_MAGIC = f32(12582912.0)              # 1.5 * 2^23
LN2_HI = f32(0.693145751953125)            # 0x3f317200
LN2_LO = f32(1.42860682030941723212e-6)    # 0x35bfbe8e
EXP_MAX = f32(88.72283172607421875)        # 0x42b17217
EXP_MIN = f32(-104.0)
EXP_TAYLOR = tuple(f32(1.0) / f32(n) for n in (5040.0, 720.0, 120.0, 24.0, 6.0))  # 1/7! .. 1/3!

# tanh (mcu_tanhf)
TANH_TINY = f32(0.000244140625)            # 2^-12
TANH_POLY = f32(0.55)
TANH_SAT = f32(9.1)
# p = P0; p = p * t + P[i] for the rest (the C writes the negative ones as "- c")
TANH_P = (f32(0.0023986595), f32(-0.008416575), f32(0.021783734), f32(-0.053959794),
          f32(0.13333295), f32(-0.3333333))

ZERO, HALF, ONE, TWO = f32(0.0), f32(0.5), f32(1.0), f32(2.0)


def _pow2i(k: np.ndarray) -> np.ndarray:
    """2^k for k in [-126, 127] (int32 array), built in the exponent field like pow2i()."""
    return ((k + 127).astype(np.uint32) << np.uint32(23)).view(np.float32)


def _expm1_reduced(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(p = e^r - 1, k) with x = k ln2 + r: expm1_reduced() for x in [-104, 88.73]."""
    kf = (x * LOG2E + ROUND_MAGIC) - ROUND_MAGIC
    r = (x - kf * LN2_HI) - kf * LN2_LO
    q = EXP_TAYLOR[0]
    for c in EXP_TAYLOR[1:]:
        q = q * r + c
    q = q * r + HALF
    return r + (r * r) * q, kf.astype(np.int32)


def expf(x) -> np.ndarray:
    """mcu_expf, elementwise."""
    x = np.asarray(x, dtype=f32)
    with np.errstate(all="ignore"):
        xs = np.where((x >= EXP_MIN) & (x <= EXP_MAX), x, ZERO)  # NaN, out of range -> 0
        p, k = _expm1_reduced(xs)
        y = ONE + p
        # scale by 2^k with one rounding; 2^128 and 2^-127.. are not normal floats, so
        # mathf.c splits the power of two at the ends of the range
        big = (y * TWO) * _pow2i(np.clip(k - 1, -126, 127))
        small = (y * _pow2i(np.clip(k + 64, -126, 127))) * _pow2i(np.int32(-64))
        y = np.where(k > 127, big, np.where(k < -126, small, y * _pow2i(np.clip(k, -126, 127))))
    y = np.where(x > EXP_MAX, f32(np.inf), y)
    y = np.where(x < EXP_MIN, ZERO, y)
    return np.where(np.isnan(x), x, y)


def tanhf(x) -> np.ndarray:
    """mcu_tanhf, elementwise."""
    x = np.asarray(x, dtype=f32)
    a = np.abs(x)
    with np.errstate(all="ignore"):
        # |x| < 0.55: a + a^3 P(a^2)
        t = a * a
        p = TANH_P[0]
        for c in TANH_P[1:]:
            p = p * t + c
        y_poly = a + (a * t) * p
        # 0.55 <= |x| < 9.1: m / (m + 2), m = e^(2a) - 1 from the reduced exp
        a_mid = np.where((a >= TANH_POLY) & (a < TANH_SAT), a, TANH_POLY)
        p, k = _expm1_reduced(TWO * a_mid)
        s = _pow2i(k)
        m = (s - ONE) + s * p
        y_mid = m / (m + TWO)
    y = np.where(a < TANH_POLY, y_poly, np.where(a < TANH_SAT, y_mid, ONE))
    y = np.where(x < ZERO, -y, y)
    return np.where((a < TANH_TINY) | np.isnan(x), x, y)  # tiny (and +-0) and NaN: x itself


def sqrtf(x) -> np.ndarray:
    """mcu_sqrtf: VSQRT.F32 on the board, SQRTSS on the host; numpy's float32 sqrt is
    correctly rounded too (x < 0: NaN)."""
    with np.errstate(invalid="ignore"):
        return np.sqrt(np.asarray(x, dtype=f32))


# ----------------------------------------------------------------------------
# sums and dot products


def seq_sum(v, axis: int = -1) -> np.ndarray:
    """s = +0.0f; s += v[i] for i = 0, 1, ... along `axis` (every other axis independent)."""
    v = np.asarray(v, dtype=f32)
    if v.shape[axis] == 0:
        return np.zeros(np.delete(v.shape, axis), f32)
    return np.take(np.cumsum(v, axis=axis, dtype=f32), -1, axis=axis) + ZERO


def _combine_lanes(acc: np.ndarray) -> np.ndarray:
    """vec_dot's last line: (acc0 + acc1) + (acc2 + acc3), acc (..., 4)."""
    return (acc[..., 0] + acc[..., 1]) + (acc[..., 2] + acc[..., 3])


def dot(a, b) -> np.ndarray:
    """vec_dot(a, b, n) along the last axis, broadcasting the others:
    acc[c % 4] += a[c] * b[c] for c = 0 .. n-1 from +0.0f, then (acc0 + acc1) + (acc2 + acc3)."""
    p = np.multiply(np.asarray(a, f32), np.asarray(b, f32))
    n = p.shape[-1]
    acc = np.zeros(p.shape[:-1] + (4,), f32)
    for c in range(0, n, 4):   # columns c .. c+3 go to accumulators 0 .. 3
        group = p[..., c:c + 4]
        acc[..., :group.shape[-1]] += group
    return _combine_lanes(acc)


def matvec(x, w, bias=None) -> np.ndarray:
    """x @ W (+ bias) for W [in, out] (Hugging Face's layout), as the firmware's matvec_rows
    computes it on W's transpose: y[r] = bias[r] + vec_dot(W[:, r], x).

    W [in, out] is the fast layout here: four of its rows are the four columns vec_dot
    adds in one step, for every output at once."""
    x, w = np.asarray(x, f32), np.asarray(w, f32)
    n, out = w.shape
    acc = np.zeros((4, out), f32)
    prod = np.empty((4, out), f32)
    for c in range(0, n, 4):   # rows c .. c+3 of W go to accumulators 0 .. 3
        k = min(4, n - c)
        np.multiply(w[c:c + k], x[c:c + k, None], out=prod[:k])
        acc[:k] += prod[:k]
    y = (acc[0] + acc[1]) + (acc[2] + acc[3])
    return y if bias is None else np.asarray(bias, f32) + y


def matvec_rows(w, x, bias=None, chunk: int = 512) -> np.ndarray:
    """matvec_rows for W [rows, cols] as the firmware stores it: y[r] = bias[r] + vec_dot(W[r], x).
    Works through the rows `chunk` at a time (the products of a chunk are one temporary)."""
    w, x = np.asarray(w, f32), np.asarray(x, f32)
    y = np.empty(w.shape[0], f32)
    for r in range(0, w.shape[0], chunk):
        y[r:r + chunk] = dot(w[r:r + chunk], x)
    return y if bias is None else np.asarray(bias, f32) + y


# ----------------------------------------------------------------------------
# the vector kernels: runtime_c/kernels.c


def add(a, b) -> np.ndarray:
    """add_inplace(a, b): the residual connection (and the embedding sum), a + b elementwise."""
    return np.add(np.asarray(a, f32), np.asarray(b, f32))


def layernorm(x, gamma, beta, eps) -> np.ndarray:
    """layernorm(): two passes of sequential sums, then (x - mean) / std * gamma + beta."""
    x = np.asarray(x, f32)
    n = f32(x.shape[-1])
    mean = seq_sum(x) / n
    d = x - mean
    var = seq_sum(d * d) / n
    std = sqrtf(var + f32(eps))
    return (x - mean) / std * np.asarray(gamma, f32) + np.asarray(beta, f32)


GELU_SQRT_2_OVER_PI = f32(0.7978846)   # sqrt(2/pi) rounded to float32 (0x3f4c422a)
GELU_CUBIC = f32(0.044715)


def gelu_tanh(x) -> np.ndarray:
    """gelu_tanh(): u = 0.7978846f * (x + 0.044715f * ((x*x)*x)); (0.5f*x) * (1 + tanh(u))."""
    x = np.asarray(x, f32)
    u = GELU_SQRT_2_OVER_PI * (x + GELU_CUBIC * ((x * x) * x))
    return (HALF * x) * (ONE + tanhf(u))


def softmax_exps(x, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """softmax_exps() along `axis`: e = expf(x - max) and its sequential sum. (With a NaN in
    x the sum is NaN in C too, which makes every use of it NaN; +-0 maxima differ only in a
    sign that expf maps to the same 1.0.)"""
    x = np.asarray(x, f32)
    e = expf(x - np.max(x, axis=axis, keepdims=True))
    return e, seq_sum(e, axis=axis)


def softmax(x, axis: int = -1) -> np.ndarray:
    """softmax() along `axis`: softmax_exps, then one division per element."""
    e, total = softmax_exps(x, axis)
    return e / np.expand_dims(total, axis)


def attention_scale(head_dim: int) -> np.float32:
    """attention_scale(): 1.0f / sqrtf((float)head_dim)."""
    return ONE / sqrtf(f32(head_dim))


def attention(q, keys, values, n_head: int) -> np.ndarray:
    """Every head of attn_core for the newest position (attention_head per head, all heads
    at once; they are independent). q (n_embd,); keys, values (T, n_embd): the cache rows
    0..pos, row t holding every head's key (value) at position t. Returns (n_embd,).

    Per head: scores[t] = vec_dot(q, k_t) * scale; softmax over t; out = +0.0f, then
    out += scores[t] * v_t for t = 0, 1, ... in order."""
    q, keys, values = np.asarray(q, f32), np.asarray(keys, f32), np.asarray(values, f32)
    n_pos, n_embd = keys.shape
    hd = n_embd // n_head
    k = keys.reshape(n_pos, n_head, hd)
    v = values.reshape(n_pos, n_head, hd)
    scores = dot(q.reshape(n_head, hd), k) * attention_scale(hd)   # (T, n_head)
    p = softmax(scores, axis=0)
    weighted = p[:, :, None] * v                                    # (T, n_head, hd): s * v[d]
    out = np.zeros((n_head, hd), f32)
    for t in range(n_pos):
        out += weighted[t]
    return out.reshape(n_embd)
