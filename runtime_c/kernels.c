// Numeric kernels of the firmware. The orders of summation are part of the interface
// (see kernels.h): change one and the numpy mirror has to change with it.
#include <stddef.h>
#include "kernels.h"
#include "mathf.h"

// ----------------------------------------------------------------------------
// dot product and matrix-vector

float vec_dot(const float* a, const float* b, int n) {
    // Four independent accumulators: the M7 FPU can start an add every cycle but each
    // one takes a few cycles to finish, so a single running sum would stall on itself.
    float acc0 = 0.0f, acc1 = 0.0f, acc2 = 0.0f, acc3 = 0.0f;
    int c = 0;
    for (; c + 4 <= n; c += 4) {
        acc0 += a[c] * b[c];
        acc1 += a[c + 1] * b[c + 1];
        acc2 += a[c + 2] * b[c + 2];
        acc3 += a[c + 3] * b[c + 3];
    }
    // the tail keeps the c % 4 rule
    if (c < n) acc0 += a[c] * b[c];
    if (c + 1 < n) acc1 += a[c + 1] * b[c + 1];
    if (c + 2 < n) acc2 += a[c + 2] * b[c + 2];
    return (acc0 + acc1) + (acc2 + acc3);
}

void matvec_rows(float* y, const float* w_tile, const float* bias_or_null, const float* x,
                 int rows, int cols) {
    for (int r = 0; r < rows; r++) {
        float s = vec_dot(w_tile + (size_t)r * (size_t)cols, x, cols);
        y[r] = bias_or_null ? bias_or_null[r] + s : s;
    }
}

// ----------------------------------------------------------------------------
// layer norm, GELU, softmax, residual

void layernorm(float* out, const float* x, const float* gamma, const float* beta,
               int n, float eps) {
    // Two passes (mean, then squared deviations), not E[x^2] - E[x]^2: the one-pass
    // form cancels catastrophically when |mean| >> std, as in GPT-2's residual stream.
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += x[i];
    float mean = sum / (float)n;
    float ss = 0.0f;
    for (int i = 0; i < n; i++) {
        float d = x[i] - mean;
        ss += d * d;
    }
    float var = ss / (float)n;
    float std = mcu_sqrtf(var + eps);
    // a division per element, not a multiply by 1/std: it is the reference's
    // (x - mean) / np.sqrt(var + eps) operation for operation, and n divisions are
    // cheap next to the matvec that follows.
    for (int i = 0; i < n; i++) {
        out[i] = (x[i] - mean) / std * gamma[i] + beta[i];
    }
}

#define GELU_SQRT_2_OVER_PI 0.7978846f   // sqrt(2/pi) rounded to float32
#define GELU_CUBIC          0.044715f

static inline float gelu_arg(float v) {
    return GELU_SQRT_2_OVER_PI * (v + GELU_CUBIC * ((v * v) * v));
}

void gelu_tanh(float* x, int n) {
    // x = (0.5f * v) * (1.0f + tanh(gelu_arg(v))), four elements at a time: their arguments
    // and their products written side by side, so that the M7 overlaps four chains of
    // dependent float operations (one element alone waits for each result). Each element's
    // operations are the same, in the same order.
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        float v0 = x[i], v1 = x[i + 1], v2 = x[i + 2], v3 = x[i + 3];
        float u0 = gelu_arg(v0), u1 = gelu_arg(v1), u2 = gelu_arg(v2), u3 = gelu_arg(v3);
        float t[4];
        mcu_tanhf2(t, u0, u1);
        mcu_tanhf2(t + 2, u2, u3);
        x[i] = (0.5f * v0) * (1.0f + t[0]);
        x[i + 1] = (0.5f * v1) * (1.0f + t[1]);
        x[i + 2] = (0.5f * v2) * (1.0f + t[2]);
        x[i + 3] = (0.5f * v3) * (1.0f + t[3]);
    }
    for (; i < n; i++) x[i] = (0.5f * x[i]) * (1.0f + mcu_tanhf(gelu_arg(x[i])));
}

float softmax_exps(float* x, int n) {
    // subtracting the max makes every exponent <= 0: no overflow, and the largest term is 1.
    // mcu_fmaxf is one VMAXNM; two running maxima halve the chain of dependent ones (the max is
    // the same in any order; a NaN among the scores makes the sum, and so every result, NaN
    // either way)
    float m0 = x[0], m1 = x[0];
    int i = 1;
    for (; i + 2 <= n; i += 2) {
        m0 = mcu_fmaxf(m0, x[i]);
        m1 = mcu_fmaxf(m1, x[i + 1]);
    }
    if (i < n) m0 = mcu_fmaxf(m0, x[i]);
    float max = mcu_fmaxf(m0, m1);
    float sum = 0.0f;
    for (i = 0; i + 4 <= n; i += 4) {   // four exponentials side by side, summed in order
        mcu_expf4_sub(x + i, x + i, max);
        sum += x[i];
        sum += x[i + 1];
        sum += x[i + 2];
        sum += x[i + 3];
    }
    for (; i < n; i++) {
        x[i] = mcu_expf(x[i] - max);
        sum += x[i];
    }
    return sum;
}

void softmax(float* x, int n) {
    float sum = softmax_exps(x, n);
    for (int i = 0; i < n; i++) x[i] = x[i] / sum;
}

void add_inplace(float* a, const float* b, int n) {
    for (int i = 0; i < n; i++) a[i] += b[i];
}

// ----------------------------------------------------------------------------
// attention, one head

float attention_scale(int head_dim) {
    // GPT-2 has head_dim = 64: sqrt is 8 and the scale 1/8 is exact, so multiplying by
    // it equals numpy's division by sqrt(head_dim).
    return 1.0f / mcu_sqrtf((float)head_dim);
}

void attention_scores(float* scores, const float* q, const float* k_rows, int n, int head_dim,
                      int row_stride, float scale) {
    for (int t = 0; t < n; t++) {
        const float* k = k_rows + (size_t)t * (size_t)row_stride;   // (head_dim,)
        scores[t] = vec_dot(q, k, head_dim) * scale;
    }
}

void attention_accumulate(float* out, const float* scores, const float* v_rows, int n, int head_dim,
                          int row_stride) {
    // Eight columns at a time, held in registers over every t (each out[d] still adds its
    // terms in the order of t): a multiply-add per loaded value, without reading and
    // writing out[d] once per t.
    int d = 0;
    for (; d + 8 <= head_dim; d += 8) {
        float o0 = out[d], o1 = out[d + 1], o2 = out[d + 2], o3 = out[d + 3];
        float o4 = out[d + 4], o5 = out[d + 5], o6 = out[d + 6], o7 = out[d + 7];
        const float* v = v_rows + d;
        for (int t = 0; t < n; t++, v += row_stride) {
            float s = scores[t];
            o0 += s * v[0];
            o1 += s * v[1];
            o2 += s * v[2];
            o3 += s * v[3];
            o4 += s * v[4];
            o5 += s * v[5];
            o6 += s * v[6];
            o7 += s * v[7];
        }
        out[d] = o0, out[d + 1] = o1, out[d + 2] = o2, out[d + 3] = o3;
        out[d + 4] = o4, out[d + 5] = o5, out[d + 6] = o6, out[d + 7] = o7;
    }
    for (; d < head_dim; d++) {
        float o = out[d];
        for (int t = 0; t < n; t++) o += scores[t] * v_rows[(size_t)t * (size_t)row_stride + (size_t)d];
        out[d] = o;
    }
}

void attention_head(float* out, const float* q, const float* k_cache, const float* v_cache,
                    int n_pos, int head_dim, int row_stride, float* scores_scratch) {
    float* scores = scores_scratch;   // (n_pos,)
    attention_scores(scores, q, k_cache, n_pos, head_dim, row_stride, attention_scale(head_dim));
    softmax(scores, n_pos);
    // q is no longer needed from here on, which is why out may alias it
    for (int d = 0; d < head_dim; d++) out[d] = 0.0f;
    attention_accumulate(out, scores, v_cache, n_pos, head_dim, row_stride);
}

// ----------------------------------------------------------------------------
// running top-k

// Does (va, ia) rank strictly before (vb, ib)? Larger value first, then lower index;
// NaN after every number (numpy sorts NaN last), NaNs among themselves by index.
static int ranks_before(float va, int ia, float vb, int ib) {
    int a_nan = va != va, b_nan = vb != vb;
    if (a_nan || b_nan) return a_nan == b_nan ? ia < ib : b_nan;
    if (va != vb) return va > vb;
    return ia < ib;
}

void topk_init(TopK* t, int k) {
    if (k < 1) k = 1;
    if (k > TOPK_MAX) k = TOPK_MAX;
    t->k = k;
    t->n = 0;
}

void topk_push(TopK* t, const float* logits_tile, int first_index, int count) {
    for (int i = 0; i < count; i++) {
        float v = logits_tile[i];
        int ix = first_index + i;
        int p;
        if (t->n < t->k) {
            p = t->n++;
        } else {
            // the common case over 50k logits: one compare against the current k-th
            if (!ranks_before(v, ix, t->val[t->k - 1], t->idx[t->k - 1])) continue;
            p = t->k - 1;   // evict the last
        }
        // Insertion by swaps rather than a shifting loop: a plain shift is the memmove
        // idiom, which compilers may turn into a call to a memmove we do not have.
        t->val[p] = v;
        t->idx[p] = ix;
        while (p > 0 && ranks_before(t->val[p], t->idx[p], t->val[p - 1], t->idx[p - 1])) {
            float tv = t->val[p - 1];
            int ti = t->idx[p - 1];
            t->val[p - 1] = t->val[p];
            t->idx[p - 1] = t->idx[p];
            t->val[p] = tv;
            t->idx[p] = ti;
            p--;
        }
    }
}
