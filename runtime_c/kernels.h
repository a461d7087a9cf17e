// Numeric kernels of the firmware: one token's transformer math, one vector at a time.
// Freestanding C99, float32 only. Every reduction runs in a fixed order, written next to
// each function, so the numpy side can mirror it when it wants bit-exact agreement.
// Build with -ffp-contract=off: a*b + c must round twice, on the board and on the host.
#ifndef MCUGPT_KERNELS_H
#define MCUGPT_KERNELS_H

// ----------------------------------------------------------------------------
// vector kernels (no allocation; all buffers are the caller's)

// sum_c a[c]*b[c] in the order used by every dot product here:
// acc[c % 4] += a[c]*b[c] for c = 0, 1, ..., n-1 (acc starts at +0.0f),
// result = (acc[0] + acc[1]) + (acc[2] + acc[3]).
float vec_dot(const float* a, const float* b, int n);

// out = (x - mean) / sqrt(var + eps) * gamma + beta, evaluated left to right per element.
// mean = (sequential float32 sum of x) / n; var = (sequential sum of (x - mean)^2) / n
// (two-pass, numpy's x.var()). out may equal x.
// out (n,), x (n,), gamma (n,), beta (n,)
void layernorm(float* out, const float* x, const float* gamma, const float* beta,
               int n, float eps);

// y[r] = bias[r] + vec_dot(w_tile + r*cols, x, cols), or without bias if bias_or_null is
// NULL. One tile of rows of a row-major weight matrix, as streamed from flash.
// y (rows,), w_tile (rows, cols), bias_or_null (rows,) or NULL, x (cols,). y must not alias x.
void matvec_rows(float* y, const float* w_tile, const float* bias_or_null, const float* x,
                 int rows, int cols);

// In place, GPT-2's tanh GELU: 0.5*x*(1 + tanh(sqrt(2/pi)*(x + 0.044715*x^3))),
// evaluated as u = 0.7978846f * (x + 0.044715f * ((x*x)*x)); x = (0.5f*x) * (1 + tanh(u)).
// x (n,)
void gelu_tanh(float* x, int n);

// In place: x = exp(x - max); returns sum, accumulated sequentially: softmax's numerators
// and denominator. x (n,), n >= 1
float softmax_exps(float* x, int n);

// In place: x = exp(x - max) / sum (softmax_exps, then one division per element).
// x (n,), n >= 1
void softmax(float* x, int n);

// a += b (the residual connection). a (n,), b (n,)
void add_inplace(float* a, const float* b, int n);

// Attention in pieces, so a KV cache that arrives in blocks (from PSRAM) gets the very
// operations of attention_head, in the same order:
//   attention_scale(head_dim) = 1.0f / mcu_sqrtf((float)head_dim)
//   attention_scores: scores[t] = vec_dot(q, k_t, head_dim) * scale for t = 0..n-1,
//     k_t = k_rows + t*row_stride
//   attention_accumulate: for t = 0..n-1 in order, for each d: out[d] += scores[t] * v_t[d],
//     v_t = v_rows + t*row_stride (out is not zeroed: call it block after block)
float attention_scale(int head_dim);
void attention_scores(float* scores, const float* q, const float* k_rows, int n, int head_dim,
                      int row_stride, float scale);
void attention_accumulate(float* out, const float* scores, const float* v_rows, int n, int head_dim,
                          int row_stride);

// One attention head for the newest position, over positions 0..n_pos-1 of the KV cache:
// scores[t] = vec_dot(q, k_t, head_dim) * (1/sqrt(head_dim)); softmax(scores);
// out[d] = sum over t = 0..n_pos-1 in order of scores[t] * v_t[d] (starting from +0.0f).
// k_t = k_cache + t*row_stride (the cache is [pos][n_embd] per layer: pass the base plus
// the head's offset, and row_stride = n_embd); likewise v_t.
// out (head_dim,), q (head_dim,), scores_scratch (n_pos,). out may equal q. n_pos >= 1.
// = attention_scores, softmax, out = 0, attention_accumulate.
void attention_head(float* out, const float* q, const float* k_cache, const float* v_cache,
                    int n_pos, int head_dim, int row_stride, float* scores_scratch);

// ----------------------------------------------------------------------------
// running top-k over the vocabulary, one tile of logits at a time
//
// Keeps the k largest values seen, sorted by value descending, ties broken by the lower
// index first: exactly np.argsort(-logits, kind="stable")[:k]. NaN ranks below every
// number (as in numpy). Argmax is top-k with k = 1: topk_init(&t, 1), push, t.idx[0].

#ifndef TOPK_MAX
#error "TOPK_MAX: every build passes it (-DTOPK_MAX), from target/memory_map.py"
#endif

typedef struct {
    int k;                 // how many to keep, 1..TOPK_MAX
    int n;                 // how many are held so far, 0..k
    float val[TOPK_MAX];   // (n,) values, best first
    int idx[TOPK_MAX];     // (n,) their vocabulary indices
} TopK;

// k is clamped to [1, TOPK_MAX].
void topk_init(TopK* t, int k);

// Offer logits_tile[i] as vocabulary index first_index + i, for i in [0, count).
// Tiles may come in any order; the result does not depend on it.
void topk_push(TopK* t, const float* logits_tile, int first_index, int count);

#endif // MCUGPT_KERNELS_H
