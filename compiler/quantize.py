"""int8 weights and activations, defined so C and numpy compute bit for bit the same thing.

Weights: each output row r of a matrix W [out, in] gets a float32 scale
    s_w[r] = max|W[r]| / 127,   q_w[r] = round(W[r] / s_w[r])  in [-127, 127]
(offline, in the compiler). Activations: the input vector x of every matrix-vector product
is quantized on the fly with one scale
    s_x = max|x| / 127,         q_x = round(x * (127 / max|x|))
and the product is an exact int32 dot product, dequantized once per row:
    y[r] = float(sum_c q_w[r, c] * q_x[c]) * (s_w[r] * s_x) + b[r]
Every float operation above is a single IEEE float32 operation in this order, and round()
is half away from zero (trunc(v + copysign(0.5, v))), so runtime_c/ reproduces it exactly;
the int32 sum cannot overflow for rows up to 133,000 columns.
"""

import numpy as np

F32 = np.float32
QMAX = F32(127.0)


def round_half_away(v: np.ndarray) -> np.ndarray:
    return np.trunc(v + np.where(v >= 0, F32(0.5), F32(-0.5)).astype(np.float32))


def quantize_rows(w_out_in: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q int8 [out, in], scale float32 [out]) for a matrix stored [out, in]."""
    w = np.asarray(w_out_in, np.float32)
    amax = np.abs(w).max(axis=1)
    scale = (amax / QMAX).astype(np.float32)
    inv = np.where(amax > 0, QMAX / np.where(amax > 0, amax, F32(1)), F32(0)).astype(np.float32)
    q = round_half_away((w * inv[:, None]).astype(np.float32))
    return q.astype(np.int8), scale


def quantize_vector(x: np.ndarray) -> tuple[np.ndarray, np.float32]:
    x = np.asarray(x, np.float32)
    amax = F32(np.abs(x).max())
    if amax == 0:
        return np.zeros(x.shape, np.int8), F32(0)
    inv = F32(QMAX / amax)
    return round_half_away((x * inv).astype(np.float32)).astype(np.int8), F32(amax / QMAX)


def matvec_int8(q_w: np.ndarray, s_w: np.ndarray, x: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    q_x, s_x = quantize_vector(x)
    acc = q_w.astype(np.int32) @ q_x.astype(np.int32)            # exact
    y = acc.astype(np.float32) * (s_w * s_x).astype(np.float32)   # one rounding per row
    return y if bias is None else (y + bias).astype(np.float32)
