// int8 kernels of the firmware: per-vector activation quantization and the int8 x int8
// matrix-vector product with an exact int32 dot product. Freestanding C99, no libc.
//
// The numbers are defined by compiler/quantize.py (quantize_vector, matvec_int8) and these
// kernels reproduce them bit for bit: every float operation below is one IEEE float32
// operation in the order written. Build with -ffp-contract=off (no fused multiply-add).
//
// Two implementations of matvec_rows_i8, with identical results (integer sums are exact):
// - Cortex-M with the DSP extension (__ARM_FEATURE_DSP, e.g. -mcpu=cortex-m7): four int8
//   per 32-bit load, SXTB16 / SXTB16 ROR #8 to unpack them into two int16 pairs, SMLAD to
//   multiply-accumulate a pair per instruction; two rows per pass share the unpacked
//   activations (the CMSIS-NN arm_nn_vec_mat_mult_t_s8 pattern). The main loop is inline
//   assembly (16 columns x 2 rows, 1.69 instructions per MAC with zig cc and GCC alike),
//   the tails use the ACLE intrinsics of <arm_acle.h>.
// - anywhere else (the host tests): a plain C loop.
#ifndef MCUGPT_KERNELS_INT8_H
#define MCUGPT_KERNELS_INT8_H

#include <stdint.h>

// Quantize x to int8 with one scale, half away from zero:
//   amax = max_i |x[i]|  (+0.0f when x is empty or all zeros)
//   amax == 0:  q[i] = 0, *scale = 0
//   otherwise:  inv = 127.0f / amax;  v = x[i] * inv;
//               q[i] = (int8_t) trunc(v + (v >= 0 ? 0.5f : -0.5f));  *scale = amax / 127.0f
// Each of /, *, + is one float32 operation; the truncation is C's float -> int conversion.
// Preconditions: x finite, and amax = 0 or amax >= 127 / FLT_MAX (~3.7e-37) so that inv is
// finite (quantize.py has no defined result otherwise either). Then |q[i]| <= 127.
// q (n,), x (n,), n >= 0. q may be unaligned.
void quantize_vector_i8(int8_t* q, float* scale, const float* x, int n);

// One tile of rows of an int8 row-major weight matrix times a quantized vector:
//   acc = sum_c w_tile[r*cols + c] * qx[c]   (exact, int32; no overflow for cols < 133,000)
//   y[r] = (float)acc * (row_scales[r] * sx)          (two float32 roundings, in this order)
//   y[r] = y[r] + bias[r]                             (if bias_or_null is not NULL)
// Alignment: none required. Rows are cols bytes long, so with cols % 4 != 0 every other
// row starts unaligned even in a 32-byte aligned tile buffer; the DSP path reads 4 bytes at
// a time with plain LDR, which the Cortex-M7 performs unaligned in normal memory (CCR
// UNALIGN_TRP must stay clear, the reset value; never LDRD/LDM on these pointers). Aligned
// rows (cols % 4 == 0, tile 4-byte aligned) are the fast case on real silicon.
// y (rows,), w_tile (rows, cols), row_scales (rows,), bias_or_null (rows,) or NULL,
// qx (cols,) as produced by quantize_vector_i8 with scale sx. y must not alias the inputs.
// xu: NULL, or qx unpacked by unpack_i8 (then, with cols % 4 == 0 and 4-byte aligned rows,
// four rows share each load of the activations: the fast path). The result is the same
// either way: the sums are exact integers.
void matvec_rows_i8(float* y, const int8_t* w_tile, const float* row_scales,
                    const float* bias_or_null, const int8_t* qx, const uint32_t* xu, float sx,
                    int rows, int cols);

// qx (n,) unpacked once per matrix for matvec_rows_i8: for each word j of four int8,
// xu[2j] holds elements 4j and 4j+2 and xu[2j+1] elements 4j+1 and 4j+3, each sign-extended
// to an int16 lane (SXTB16 and SXTB16 ROR #8). xu (2 * (n / 4),) words, 8-byte aligned.
void unpack_i8(uint32_t* xu, const int8_t* qx, int n);

// The same product for n input vectors at once (a chunk of prompt positions): each group of
// four rows is unpacked once into `scratch` (8 * cols bytes, 8-byte aligned; with n odd by
// the pass of the odd vector, which multiplies as it unpacks) and then read two rows by two
// vectors at a time, so a weight is sign-extended once per chunk and each loaded word
// serves two multiply-accumulates (8 cycles per 16 on the M7). y[p], xu[p], sx[p], qx[p] as
// matvec_rows_i8's for vector p (xu[p] not NULL); cols % 4 == 0 and 4-byte aligned rows take
// the fast path, other rows matvec_rows_i8's. Same bits.
void matvec_rows_i8_batch(float* const* y, const int8_t* w_tile, const float* row_scales,
                          const float* bias_or_null, const int8_t* const* qx, const uint32_t* const* xu,
                          const float* sx, int n, int rows, int cols, uint32_t* scratch);

// Attention for one head over an int8 KV cache (compiler/quantize.py attention_int8). A
// stored row is row_bytes long: a float32 scale, then head_dim int8 (then anything: a
// PSRAM check word); n rows one after another, 4-byte aligned.
// The head's query x (n,) quantized to int16 with one scale, as quantize_vector_i8 quantizes
// to int8 but with 32767.0f for 127.0f: q (n,), *scale; and q laid out as unpack_i8 lays out
// an int8 vector (qu: 2 * (n / 4) words, 4-byte aligned), for the four-key kernel.
void quantize_query_i16(int16_t* q, uint32_t* qu, float* scale, const float* x, int n);

// scores[t] = ((float)acc_t * (scale_t * sq)) * scale, acc_t = sum_d row_t[d] * qh[d] (exact:
// |acc_t| < 2^31 for head_dim < 516), one rounding in the conversion when |acc_t| > 2^24;
// qh, qu, sq from quantize_query_i16.
void attention_scores_i8(float* scores, const uint8_t* rows, int row_bytes, int n, const int16_t* qh,
                         const uint32_t* qu, float sq, int head_dim, float scale);

// One block of n rows of values (quantize.py attention_int8): the softmax's exponentials
// (softmax_exps: not yet divided by their sum) times the rows' scales, w[t] = e[t] * scale_t,
// written over e, then quantized to int16 with one scale for the block,
//   amax = max_t w[t];  amax < 1e-30f (or none): nothing more changes;
//   otherwise:  wq[t] = (int16_t) trunc(w[t] * (32767.0f / amax) + 0.5f),  sw = amax / 32767.0f
//   acc_d = sum_t wq[t] * row_t[d]   (exact, int32: n <= 32 keeps |acc| < 2^31 / 16)
//   out[d] = out[d] + (float)acc_d * sw
// wq: scratch of n int16, 4-byte aligned (read as pairs). The caller divides by the sum once,
// at the end (attention_head_i8).
void attention_accumulate_i8(float* out, float* e, const uint8_t* rows, int row_bytes, int n, int head_dim,
                             int16_t* wq);

// attention_accumulate_i8 for a block of n positions stored transposed (runtime.c,
// "transposed value blocks"): row r of the block holds position r's scale, as a value row
// does, and then the values of columns 2r and 2r + 1 at the block's n positions (head_dim =
// 2n; n a multiple of 4). The same weights, the same exact integer sums and the same out[d]
// update, so the same bits; each column is a dot product of n int8 values with the int16
// weights, four columns at a time (dot4_i8). wu: scratch of n / 2 words, 4-byte aligned.
void attention_accumulate_cols_i8(float* out, float* e, const uint8_t* block, int row_bytes, int n, int16_t* wq,
                                  uint32_t* wu);

#endif // MCUGPT_KERNELS_INT8_H
