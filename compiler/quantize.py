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

The int8 KV cache (attention_int8) holds each head's key and value per position as int8
with one float32 scale (quantize_vector). Attention computes on those int8 values as they
are, not dequantized: a key is a row of an int8 matrix and the head's query its input
vector, quantized to int16 (the scores are matvec_int8's products with a 16-bit input, times
the attention scale: the query's quantization adds no error that matters). Each
value row's scale is folded into its softmax exponential, w[t] = e[t] * s_v[t], and the
weights of each block of KV_BLOCK positions are quantized to int16 with one scale, so that a
block of values is an exact int32 sum too; the softmax's division comes last, once per output.
"""

import numpy as np

from . import numerics as nx

F32 = np.float32
QMAX = F32(127.0)
# attention_int8: the value rows are summed a block of this many positions at a time (positions
# 0-31, 32-63, ...; the firmware reads the PSRAM cache a block per DMA: compiler/plan.py), each
# block's weights quantized to int16 (QMAX16, as the query); a block whose largest weight is below WEIGHT_MIN
# adds nothing (32767 / weight would overflow float32; it would add less than 1e-26).
KV_BLOCK = 32
QMAX16 = F32(32767.0)
WEIGHT_MIN = F32(1e-30)


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


def quantize_vector(x: np.ndarray, qmax: np.float32 = QMAX) -> tuple[np.ndarray, np.float32]:
    """(q, scale): int8 for qmax 127 (QMAX), int16 for 32767 (QMAX16)."""
    x = np.asarray(x, np.float32)
    dtype = np.int8 if qmax == QMAX else np.int16
    amax = F32(np.abs(x).max())
    if amax == 0:
        return np.zeros(x.shape, dtype), F32(0)
    inv = F32(qmax / amax)
    return round_half_away((x * inv).astype(np.float32)).astype(dtype), F32(amax / qmax)


def matvec_int8(q_w: np.ndarray, s_w: np.ndarray, x: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    q_x, s_x = quantize_vector(x)
    acc = q_w.astype(np.int32) @ q_x.astype(np.int32)            # exact
    y = acc.astype(np.float32) * (s_w * s_x).astype(np.float32)   # one rounding per row
    return y if bias is None else (y + bias).astype(np.float32)


def attention_int8(q: np.ndarray, k_q: np.ndarray, k_s: np.ndarray, v_q: np.ndarray, v_s: np.ndarray,
                   n_head: int) -> np.ndarray:
    """Every head of attn_core over an int8 KV cache, as runtime_c/kernels_int8.c
    attention_scores_i8 and attention_accumulate_i8 (or attention_accumulate_cols_i8, the same
    sums on a transposed block) compute it. q (n_embd,) float32; k_q, v_q
    (T, n_embd) int8 rows 0..pos, row t holding every head's key (value) at position t; k_s,
    v_s (T, n_head) their float32 scales. Per head, with (q_h, s_q) = quantize_vector(q's
    slice, QMAX16), int16:
        scores[t] = (float(sum_d k_q[t, d] q_h[d]) * (k_s[t] * s_q)) * scale
        e, total = softmax_exps(scores);  w[t] = e[t] * v_s[t];  out = +0.0f
    then per block of KV_BLOCK positions, unless its largest weight amax < WEIGHT_MIN:
        w_q[t] = trunc(w[t] * (QMAX16 / amax) + 0.5),  s_w = amax / QMAX16
        out[d] = out[d] + float(sum_t w_q[t] v_q[t, d]) * s_w
    and last the softmax's division, once per output: out[d] = out[d] * (1 / total).
    Returns (n_embd,) float32."""
    n_pos, n_embd = k_q.shape
    hd = n_embd // n_head
    heads = [quantize_vector(q[h * hd:(h + 1) * hd], QMAX16) for h in range(n_head)]
    q_q = np.stack([qh for qh, _ in heads]).astype(np.int64)              # (n_head, hd)
    s_q = np.array([s for _, s in heads], F32)                           # (n_head,)
    acc = np.einsum("thd,hd->th", k_q.reshape(n_pos, n_head, hd).astype(np.int64), q_q)   # exact
    scores = (acc.astype(F32) * (np.asarray(k_s, F32) * s_q)) * nx.attention_scale(hd)
    e, total = nx.softmax_exps(scores, axis=0)                           # (T, n_head), (n_head,)
    w = e * np.asarray(v_s, F32)                                         # >= 0
    v = v_q.reshape(n_pos, n_head, hd).astype(np.int64)
    out = np.zeros((n_head, hd), F32)
    for t in range(0, n_pos, KV_BLOCK):
        wb = w[t:t + KV_BLOCK]
        amax = wb.max(axis=0)                                            # (n_head,)
        adds = amax >= WEIGHT_MIN
        safe = np.where(adds, amax, QMAX16)
        w_q = np.trunc(wb * (QMAX16 / safe) + F32(0.5)).astype(np.int64)  # (block, n_head)
        block = np.einsum("th,thd->hd", w_q, v[t:t + KV_BLOCK])           # exact
        out = np.where(adds[:, None], out + block.astype(F32) * (safe / QMAX16)[:, None], out)
    return (out * (F32(1) / total)[:, None]).reshape(n_embd)
