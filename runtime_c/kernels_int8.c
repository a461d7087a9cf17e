// int8 kernels of the firmware: the arithmetic is compiler/quantize.py's, bit for bit
// (see kernels_int8.h for the exact definitions and the alignment rules).
#include <stddef.h>
#include <stdint.h>
#include "kernels_int8.h"
#include "mathf.h"

#define QMAX 127.0f
#define QMAX16 32767.0f   // the query and the attention weights: int16 (quantize.py QMAX16)

// ----------------------------------------------------------------------------
// activation quantization

// quantize.py's round_half_away of one float32: v + where(v >= 0, 0.5, -0.5), one float32
// add (so -0.0f gets +0.5f, as np.where does), then truncation toward zero: C's float -> int
// conversion (VCVT.S32.F32 on the M7, CVTTSS2SI on x86).
static inline int32_t round_half_away(float v) {
    float t = v + (v >= 0.0f ? 0.5f : -0.5f);
    return (int32_t)t;
}

// max(m, |v|) for m >= +0.0f and v finite. On the M7 VABS.F32 and VMAXNM.F32 (mcu_fmaxf),
// two instructions without flags, so that four running maxima overlap; |v| clears the sign
// bit, and -0.0f becomes +0.0f, which like -0.0f never exceeds the +0.0f the maxima start from.
static inline float max_abs(float m, float v) {
    return mcu_fmaxf(m, __builtin_fabsf(v));
}

// max_i |x[i]|, +0.0f for none. The maximum of a set does not depend on the order it is taken
// in, so four running maxima and then theirs equal numpy's np.abs(x).max() (x has no NaN).
static float amax_of(const float* x, int n) {
    float m0 = 0.0f, m1 = 0.0f, m2 = 0.0f, m3 = 0.0f;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        m0 = max_abs(m0, x[i]);
        m1 = max_abs(m1, x[i + 1]);
        m2 = max_abs(m2, x[i + 2]);
        m3 = max_abs(m3, x[i + 3]);
    }
    for (; i < n; i++) m0 = max_abs(m0, x[i]);
    return max_abs(max_abs(m0, m1), max_abs(m2, m3));
}

void quantize_vector_i8(int8_t* q, float* scale, const float* x, int n) {
    float amax = amax_of(x, n);
    int i;
    if (amax == 0.0f) {
        for (i = 0; i < n; i++) q[i] = 0;
        *scale = 0.0f;
        return;
    }
    float inv = QMAX / amax;
    // Four elements at a time, each one's operations written out beside the others', so that
    // the compiler interleaves their dependent chains (each element alone waits on every result).
    for (i = 0; i + 4 <= n; i += 4) {
        float v0 = x[i] * inv, v1 = x[i + 1] * inv, v2 = x[i + 2] * inv, v3 = x[i + 3] * inv;
        q[i] = (int8_t)round_half_away(v0);
        q[i + 1] = (int8_t)round_half_away(v1);
        q[i + 2] = (int8_t)round_half_away(v2);
        q[i + 3] = (int8_t)round_half_away(v3);
    }
    for (; i < n; i++) q[i] = (int8_t)round_half_away(x[i] * inv);
    *scale = amax / QMAX;
}

// ----------------------------------------------------------------------------
// exact int8 dot products

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>

// Four int8 from any address as one word. The aligned(1) type makes the unaligned load
// defined C (GNU) and keeps the compiler from pairing loads into LDRD/LDM, which fault
// when unaligned; a plain LDR does not on the M7 (see kernels_int8.h). Little-endian:
// byte k of the word is element k.
typedef uint32_t __attribute__((aligned(1), may_alias)) u32_unaligned;

static inline uint32_t load4(const int8_t* p) {
    return *(const u32_unaligned*)(const void*)p;
}

// Elements 0, 2 and 1, 3 of a word of four int8, sign-extended to two int16 lanes each:
// SXTB16 and SXTB16 ROR #8. Written as inline assembly because GCC 12's arm_acle.h has
// no __ror and neither compiler is guaranteed to fold a C rotate into SXTB16's operand.
static inline int32_t even_pairs(uint32_t v) {
    return __sxtb16((int32_t)v);
}

static inline int32_t odd_pairs(uint32_t v) {
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}

// acc + w0*x0 + w1*x1 + w2*x2 + w3*x3 for one word of weights against an unpacked word
// of activations: two SMLAD (each adds the products of both int16 lanes).
#define MAC4(acc, wv, x02, x13)                                   \
    do {                                                          \
        (acc) = __smlad(even_pairs(wv), (x02), (acc));            \
        (acc) = __smlad(odd_pairs(wv), (x13), (acc));             \
    } while (0)

// One word (4 columns) of x against the same 4 columns of two rows, post-incrementing
// the three pointers: 3 LDR + 6 SXTB16 + 4 SMLAD for 8 multiply-accumulates.
#define DOT2_WORD                                   \
    "ldr    %[xa], [%[x]], #4\n\t"                  \
    "ldr    %[v0], [%[w0]], #4\n\t"                 \
    "ldr    %[v1], [%[w1]], #4\n\t"                 \
    "sxtb16 %[x13], %[xa], ror #8\n\t"              \
    "sxtb16 %[xa], %[xa]\n\t"                       \
    "sxtb16 %[t], %[v0], ror #8\n\t"                \
    "sxtb16 %[v0], %[v0]\n\t"                       \
    "smlad  %[a0], %[t], %[x13], %[a0]\n\t"         \
    "smlad  %[a0], %[v0], %[xa], %[a0]\n\t"         \
    "sxtb16 %[t], %[v1], ror #8\n\t"                \
    "sxtb16 %[v1], %[v1]\n\t"                       \
    "smlad  %[a1], %[t], %[x13], %[a1]\n\t"         \
    "smlad  %[a1], %[v1], %[xa], %[a1]\n\t"

// Two rows against the same activations: each activation word is loaded and unpacked
// once for both rows. The main loop, 16 columns per iteration, is one assembly block so
// that both compilers emit the same 54 instructions per 32 multiply-accumulates
// (1.69 per MAC; compiled from intrinsics it was 2.0-2.06: GCC does not fold the rotate
// into SXTB16 and both spend registers on index arithmetic). It needs 11 registers, so it
// also builds at -O0 with a frame pointer. Then up to three more words with intrinsics,
// and the last 0..3 columns in plain C.
static void dot2_i8(int32_t* out, const int8_t* w0, const int8_t* w1, const int8_t* x, int n) {
    int32_t a0 = 0, a1 = 0;
    int k = n >> 4;
    if (k > 0) {
        uint32_t xa, x13, v0, v1, t;
        __asm__ volatile(
            "1:\n\t"
            DOT2_WORD DOT2_WORD DOT2_WORD DOT2_WORD
            "subs   %[k], %[k], #1\n\t"
            "bne    1b\n\t"
            : [a0] "+r"(a0), [a1] "+r"(a1), [x] "+r"(x), [w0] "+r"(w0), [w1] "+r"(w1),
              [k] "+r"(k), [xa] "=&r"(xa), [x13] "=&r"(x13), [v0] "=&r"(v0), [v1] "=&r"(v1),
              [t] "=&r"(t)
            :
            : "cc", "memory");
    }
    for (int j = 0; j < ((n >> 2) & 3); j++) {
        uint32_t xa = load4(x);
        int32_t xa02 = even_pairs(xa), xa13 = odd_pairs(xa);
        uint32_t v;
        v = load4(w0); MAC4(a0, v, xa02, xa13);
        v = load4(w1); MAC4(a1, v, xa02, xa13);
        x += 4;
        w0 += 4;
        w1 += 4;
    }
    for (int c = 0; c < (n & 3); c++) {
        a0 += (int32_t)w0[c] * (int32_t)x[c];
        a1 += (int32_t)w1[c] * (int32_t)x[c];
    }
    out[0] = a0;
    out[1] = a1;
}

// Four rows against activations unpacked once per matrix (unpack_i8): each pair of words
// of xu (LDRD) serves four rows, so a word of four columns of four rows costs
// 1 LDRD + 4 LDR + 8 SXTB16 + 8 SMLAD for 16 multiply-accumulates. Each row's SMLAD on the
// odd lanes comes first: its operand was unpacked a cycle earlier, so it pairs with the
// second SXTB16, and the second SMLAD pairs with the next row's LDR (the M7's dual issue:
// target/m7_pipeline.py), three cycles per row and word. Rows 1 and 3 are
// addressed from rows 0 and 2 by the row length `cols`, so the loop needs 13 registers
// (r0-r12): built only when optimizing, where no frame pointer is reserved. n % 4 == 0,
// rows 4-byte aligned.
#if defined(__OPTIMIZE__)
// The loops below and the batch kernels further down need 13 registers: only when
// optimizing, where no frame pointer is reserved.
#define ASM_13_REGISTERS 1
#define DOT4_ROW(acc, row_load)                     \
    row_load                                        \
    "sxtb16 %[t], %[v], ror #8\n\t"                \
    "sxtb16 %[v], %[v]\n\t"                         \
    "smlad  %[" #acc "], %[t], %[x13], %[" #acc "]\n\t" \
    "smlad  %[" #acc "], %[v], %[x02], %[" #acc "]\n\t"
#define DOT4_WORD                                   \
    "ldrd   %[x02], %[x13], [%[xu]], #8\n\t"        \
    DOT4_ROW(a1, "ldr    %[v], [%[w0], %[cs]]\n\t")  \
    DOT4_ROW(a3, "ldr    %[v], [%[w2], %[cs]]\n\t")  \
    DOT4_ROW(a0, "ldr    %[v], [%[w0]], #4\n\t")     \
    DOT4_ROW(a2, "ldr    %[v], [%[w2]], #4\n\t")

// Four rows of n int8 (n a multiple of 4) against the unpacked vector: rows w0, w0 + cols,
// w2, w2 + cols. always_inline: with several callers GCC stops inlining it, and a call per
// four rows saves and restores the 13 registers each time.
static inline __attribute__((always_inline)) void dot4_i8_at(int32_t* out, const int8_t* w0, const int8_t* w2,
                                                             const uint32_t* xu, int n, int cols) {
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int k = n >> 3;    // two words per iteration
    uint32_t x02, x13, v, t;
    if (k > 0) {
        __asm__ volatile(
            "1:\n\t"
            DOT4_WORD DOT4_WORD
            "subs   %[k], %[k], #1\n\t"
            "bne    1b\n\t"
            : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [xu] "+r"(xu), [w0] "+r"(w0),
              [w2] "+r"(w2), [k] "+r"(k), [x02] "=&r"(x02), [x13] "=&r"(x13), [v] "=&r"(v), [t] "=&r"(t)
            : [cs] "r"(cols)
            : "cc", "memory");
    }
    if (n & 4) {   // one word left
        x02 = load4((const int8_t*)xu);       // two plain LDR: never paired into LDRD
        x13 = load4((const int8_t*)(xu + 1));
        v = load4(w0); a0 = __smlad(even_pairs(v), (int32_t)x02, a0); a0 = __smlad(odd_pairs(v), (int32_t)x13, a0);
        v = load4(w0 + cols); a1 = __smlad(even_pairs(v), (int32_t)x02, a1); a1 = __smlad(odd_pairs(v), (int32_t)x13, a1);
        v = load4(w2); a2 = __smlad(even_pairs(v), (int32_t)x02, a2); a2 = __smlad(odd_pairs(v), (int32_t)x13, a2);
        v = load4(w2 + cols); a3 = __smlad(even_pairs(v), (int32_t)x02, a3); a3 = __smlad(odd_pairs(v), (int32_t)x13, a3);
    }
    out[0] = a0;
    out[1] = a1;
    out[2] = a2;
    out[3] = a3;
}

// Rows 0..3 of a matrix with rows of `cols` bytes.
static inline __attribute__((always_inline)) void dot4_i8(int32_t* out, const int8_t* w, const uint32_t* xu, int n,
                                                          int cols) {
    dot4_i8_at(out, w, w + 2 * cols, xu, n, cols);
}
#endif

void unpack_i8(uint32_t* xu, const int8_t* qx, int n) {
    for (int j = 0; j < n >> 2; j++) {
        uint32_t v = load4(qx + 4 * j);
        xu[2 * j] = (uint32_t)even_pairs(v);
        xu[2 * j + 1] = (uint32_t)odd_pairs(v);
    }
}

static int32_t dot_i8(const int8_t* w, const int8_t* x, int n) {
    int32_t a = 0;
    for (int k = n >> 2; k > 0; k--) {
        uint32_t xa = load4(x), v = load4(w);
        MAC4(a, v, even_pairs(xa), odd_pairs(xa));
        x += 4;
        w += 4;
    }
    for (int c = 0; c < (n & 3); c++) a += (int32_t)w[c] * (int32_t)x[c];
    return a;
}

#else  // portable C: the host build

// SXTB16 and SXTB16 ROR #8 of a word of four int8 (little-endian), and that word
static uint32_t pairs(const int8_t* q, int first) {
    return (uint32_t)(uint16_t)(int16_t)q[first] | (uint32_t)(uint16_t)(int16_t)q[first + 2] << 16;
}
static inline uint32_t load4(const int8_t* p) {
    return (uint32_t)(uint8_t)p[0] | (uint32_t)(uint8_t)p[1] << 8 | (uint32_t)(uint8_t)p[2] << 16
         | (uint32_t)(uint8_t)p[3] << 24;
}
static inline int32_t even_pairs(uint32_t v) {
    int8_t q[4] = {(int8_t)v, (int8_t)(v >> 8), (int8_t)(v >> 16), (int8_t)(v >> 24)};
    return (int32_t)pairs(q, 0);
}
static inline int32_t odd_pairs(uint32_t v) {
    int8_t q[4] = {(int8_t)v, (int8_t)(v >> 8), (int8_t)(v >> 16), (int8_t)(v >> 24)};
    return (int32_t)pairs(q, 1);
}

void unpack_i8(uint32_t* xu, const int8_t* qx, int n) {
    for (int j = 0; j < n >> 2; j++) {
        xu[2 * j] = pairs(qx + 4 * j, 0);
        xu[2 * j + 1] = pairs(qx + 4 * j, 1);
    }
}

static void dot2_i8(int32_t* out, const int8_t* w0, const int8_t* w1, const int8_t* x, int n) {
    int32_t a0 = 0, a1 = 0;
    for (int c = 0; c < n; c++) {
        a0 += (int32_t)w0[c] * (int32_t)x[c];
        a1 += (int32_t)w1[c] * (int32_t)x[c];
    }
    out[0] = a0;
    out[1] = a1;
}

static int32_t dot_i8(const int8_t* w, const int8_t* x, int n) {
    int32_t a = 0;
    for (int c = 0; c < n; c++) a += (int32_t)w[c] * (int32_t)x[c];
    return a;
}

#endif

// ----------------------------------------------------------------------------
// matrix-vector

// quantize.py's dequantization: float32(acc) * float32(s_w * s_x), then + b.
static inline float dequant(int32_t acc, float row_scale, float sx, const float* bias, int r) {
    float y = (float)acc * (row_scale * sx);
    return bias ? y + bias[r] : y;
}

void matvec_rows_i8(float* y, const int8_t* w_tile, const float* row_scales,
                    const float* bias_or_null, const int8_t* qx, const uint32_t* xu, float sx,
                    int rows, int cols) {
    int r = 0;
#ifdef ASM_13_REGISTERS
    if (xu && (cols & 3) == 0 && ((uintptr_t)w_tile & 3) == 0) {
        for (; r + 4 <= rows; r += 4) {
            int32_t acc[4];
            dot4_i8(acc, w_tile + (size_t)r * (size_t)cols, xu, cols, cols);
            for (int i = 0; i < 4; i++) y[r + i] = dequant(acc[i], row_scales[r + i], sx, bias_or_null, r + i);
        }
    }
#else
    (void)xu;
#endif
    for (; r + 2 <= rows; r += 2) {
        const int8_t* w0 = w_tile + (size_t)r * (size_t)cols;
        int32_t acc[2];
        dot2_i8(acc, w0, w0 + cols, qx, cols);
        y[r] = dequant(acc[0], row_scales[r], sx, bias_or_null, r);
        y[r + 1] = dequant(acc[1], row_scales[r + 1], sx, bias_or_null, r + 1);
    }
    if (r < rows) {
        int32_t acc = dot_i8(w_tile + (size_t)r * (size_t)cols, qx, cols);
        y[r] = dequant(acc, row_scales[r], sx, bias_or_null, r);
    }
}

// ----------------------------------------------------------------------------
// a chunk of vectors: weights unpacked once per group of four rows

// Four rows' words, interleaved per column word: wu[8j + 2r] = row r's elements 4j, 4j+2 and
// wu[8j + 2r + 1] its elements 4j+1, 4j+3, each an int16 lane (SXTB16, as unpack_i8).
#ifdef ASM_13_REGISTERS
// In assembly for the M7's issue rules (target/m7_pipeline.py): SXTB16 issues only in the
// older slot, so each of the eight per word takes a cycle, and every load and store rides
// in a younger slot beside one. A store waits two cycles for its SXTB16, so the last one
// of a word (row 2's even lanes) is stored at the start of the next word's loop iteration,
// beside its first load: 11 cycles per word of four rows (17 with STRD, which issues alone).
// The first word is peeled so that no store precedes the buffer. 13 registers, as dot4_i8.
// noinline: inlined into its caller's loop, the 13 registers may not all be free
#define UNPACK4_WORD                                \
    "sxtb16 %[b2], %[b], ror #8\n\t"                \
    "ldr    %[c], [%[w0]], #4\n\t"      /* row 0 */ \
    "sxtb16 %[b], %[b]\n\t"                         \
    "ldr    %[a], [%[w2], %[cs]]\n\t"   /* row 3 */ \
    "sxtb16 %[c2], %[c], ror #8\n\t"                \
    "ldr    %[d], [%[w2]], #4\n\t"      /* row 2 */ \
    "sxtb16 %[c], %[c]\n\t"                         \
    "str    %[b2], [%[wu], #12]\n\t"                \
    "sxtb16 %[a2], %[a], ror #8\n\t"                \
    "str    %[b], [%[wu], #8]\n\t"                  \
    "sxtb16 %[a], %[a]\n\t"                         \
    "str    %[c2], [%[wu], #4]\n\t"                 \
    "sxtb16 %[d2], %[d], ror #8\n\t"                \
    "str    %[c], [%[wu]], #32\n\t"                 \
    "sxtb16 %[d], %[d]\n\t"                         \
    "str    %[a2], [%[wu], #-4]\n\t"                \
    "subs   %[k], %[k], #1\n\t"                     \
    "str    %[a], [%[wu], #-8]\n\t"                 \
    "str    %[d2], [%[wu], #-12]\n\t"

__attribute__((noinline)) static void unpack_rows4_i8(uint32_t* wu, const int8_t* w, int cols) {
    const int8_t* w0 = w;
    const int8_t* w2 = w + 2 * cols;
    int k = cols >> 2;
    uint32_t a, a2, b, b2, c, c2, d, d2;
    if (k > 0) __asm__ volatile(
        "ldr    %[b], [%[w0], %[cs]]\n\t"      /* row 1 */
        UNPACK4_WORD
        "beq    2f\n\t"
        "1:\n\t"
        "ldr    %[b], [%[w0], %[cs]]\n\t"
        "str    %[d], [%[wu], #-16]\n\t"       /* the previous word's */
        UNPACK4_WORD
        "bne    1b\n\t"
        "2:\n\t"
        "str    %[d], [%[wu], #-16]\n\t"
        : [w0] "+r"(w0), [w2] "+r"(w2), [wu] "+r"(wu), [k] "+r"(k), [a] "=&r"(a), [a2] "=&r"(a2),
          [b] "=&r"(b), [b2] "=&r"(b2), [c] "=&r"(c), [c2] "=&r"(c2), [d] "=&r"(d), [d2] "=&r"(d2)
        : [cs] "r"(cols)
        : "cc", "memory");
}
#else
static void unpack_rows4_i8(uint32_t* wu, const int8_t* w, int cols) {
    for (int j = 0; j < cols >> 2; j++) {
        for (int r = 0; r < 4; r++) {
            uint32_t v = load4(w + (size_t)r * (size_t)cols + 4 * j);
            wu[8 * j + 2 * r] = (uint32_t)even_pairs(v);
            wu[8 * j + 2 * r + 1] = (uint32_t)odd_pairs(v);
        }
    }
}
#endif

// After a loop of whole iterations, k = (words left) - (words per iteration) < 0: its low
// bits say which of the blocks of `n` copies of a word's code still run. Straight-line
// blocks rather than a loop of one word: a loop's branch would cost a cycle per word.
#define LADDER(n, word, skip)                        \
    "tst    %[k], #" #n "\n\t"                       \
    "beq    " skip "f\n\t"                           \
    ".rept  " #n "\n\t" word ".endr\n\t"           \
    skip ":\n\t"

// Two rows of int8 weights against one unpacked vector, and the same rows unpacked into
// wu as unpack_rows4_i8 lays them out (wu: the group's, plus 4 words for rows 2 and 3):
// out = {row 0 . x, row 1 . x}. With an odd number of vectors the odd one takes this pass,
// so the unpacking that every pair of vectors then reads costs no pass of its own: per word
// of two rows, 4 LDR + 4 SXTB16 + 4 STR + 4 SMLAD issue in 8 cycles (all dual-issued:
// SXTB16 beside a store or a SMLAD, SMLAD beside a load), where unpack_rows4_i8 and a
// one-vector pass over the unpacked rows would take 10.5. The schedule is a software
// pipeline found by search under target/m7_pipeline.py's rules: a word's SXTB16 and first
// SMLAD run in its own 8 cycles, its row 1 SMLAD and three of its stores in the next
// word's; the first word's half is peeled, the last word's finished after the loop.
// 13 registers. words >= 1.
#ifdef ASM_13_REGISTERS
// Row 0 and row 1 of this word (ra, rb: raw, then even lanes; oa, ob: odd lanes) and of the
// previous word, whose row 1 SMLAD and stores (at wu - 32 + 8, + 4, + 12) are interleaved.
#define UNPACK_DOT2X1_WORD                                   \
    "ldr    %[ra], [%[w0]], #4\n\t"                          \
    "smlad  %[a1], %[rb], %[xe], %[a1]\n\t"                  \
    "str    %[rb], [%[wu], #-24]\n\t"                        \
    "ldr    %[rb], [%[w0], %[cs4]]\n\t"                      \
    "ldr    %[xe], [%[xu]], #8\n\t"                          \
    "str    %[oa], [%[wu], #-28]\n\t"                        \
    "smlad  %[a1], %[ob], %[xo], %[a1]\n\t"                  \
    "ldr    %[xo], [%[xu], #-4]\n\t"                         \
    UNPACK_DOT2X1_TAIL("str    %[ob], [%[wu], #-20]\n\t")
#define UNPACK_DOT2X1_TAIL(store_ob)                         \
    "sxtb16 %[oa], %[ra], ror #8\n\t"                        \
    store_ob                                                 \
    "sxtb16 %[ra], %[ra]\n\t"                                \
    "smlad  %[a0], %[oa], %[xo], %[a0]\n\t"                  \
    "sxtb16 %[ob], %[rb], ror #8\n\t"                        \
    "smlad  %[a0], %[ra], %[xe], %[a0]\n\t"                  \
    "sxtb16 %[rb], %[rb]\n\t"                                \
    "str    %[ra], [%[wu]], #32\n\t"

static inline __attribute__((always_inline)) void unpack_dot2x1_i8(int32_t* out, uint32_t* wu, const int8_t* w,
                                                                   int cols, const uint32_t* xu) {
    int32_t a0 = 0, a1 = 0;
    int k = (cols >> 2) - 1;   // words after the first: eight per iteration, then 4, 2, 1 as needed
    uint32_t ra, rb, oa, ob, xe, xo;
    __asm__ volatile(
        "ldr    %[ra], [%[w0]], #4\n\t"
        "ldr    %[rb], [%[w0], %[cs4]]\n\t"
        "ldr    %[xe], [%[xu]], #8\n\t"
        "ldr    %[xo], [%[xu], #-4]\n\t"
        UNPACK_DOT2X1_TAIL("")
        "subs   %[k], %[k], #8\n\t"
        "blt    2f\n\t"
        "1:\n\t"
        ".rept   8\n\t" UNPACK_DOT2X1_WORD ".endr\n\t"
        "subs   %[k], %[k], #8\n\t"
        "bge    1b\n\t"
        "2:\n\t"
        LADDER(4, UNPACK_DOT2X1_WORD, "4") LADDER(2, UNPACK_DOT2X1_WORD, "5") LADDER(1, UNPACK_DOT2X1_WORD, "3")
        "smlad  %[a1], %[rb], %[xe], %[a1]\n\t"
        "str    %[rb], [%[wu], #-24]\n\t"
        "str    %[oa], [%[wu], #-28]\n\t"
        "smlad  %[a1], %[ob], %[xo], %[a1]\n\t"
        "str    %[ob], [%[wu], #-20]\n\t"
        : [a0] "+r"(a0), [a1] "+r"(a1), [w0] "+r"(w), [xu] "+r"(xu), [wu] "+r"(wu), [k] "+r"(k),
          [ra] "=&r"(ra), [rb] "=&r"(rb), [oa] "=&r"(oa), [ob] "=&r"(ob), [xe] "=&r"(xe), [xo] "=&r"(xo)
        : [cs4] "r"(cols - 4)
        : "cc", "memory");
    out[0] = a0;
    out[1] = a1;
}
#else
static void unpack_dot2x1_i8(int32_t* out, uint32_t* wu, const int8_t* w, int cols, const uint32_t* xu) {
    int32_t a[2] = {0, 0};
    for (int j = 0; j < cols >> 2; j++) {
        for (int r = 0; r < 2; r++) {
            uint32_t v = load4(w + (size_t)r * (size_t)cols + 4 * j);
            int32_t e = even_pairs(v), o = odd_pairs(v);
            wu[8 * j + 2 * r] = (uint32_t)e;
            wu[8 * j + 2 * r + 1] = (uint32_t)o;
            a[r] += (int32_t)(int16_t)(e & 0xFFFF) * (int32_t)(int16_t)(xu[2 * j] & 0xFFFF)
                  + (int32_t)(int16_t)((uint32_t)e >> 16) * (int32_t)(int16_t)(xu[2 * j] >> 16)
                  + (int32_t)(int16_t)(o & 0xFFFF) * (int32_t)(int16_t)(xu[2 * j + 1] & 0xFFFF)
                  + (int32_t)(int16_t)((uint32_t)o >> 16) * (int32_t)(int16_t)(xu[2 * j + 1] >> 16);
        }
    }
    out[0] = a[0];
    out[1] = a[1];
}
#endif

// A group of four rows (w) against one vector, unpacked into wu on the way: out[i] = row i . x.
__attribute__((noinline)) static void unpack_dot4x1_i8(int32_t* out, uint32_t* wu, const int8_t* w, int cols,
                                                       const uint32_t* xu) {
    unpack_dot2x1_i8(out, wu, w, cols, xu);
    unpack_dot2x1_i8(out + 2, wu + 4, w + 2 * (size_t)cols, cols, xu);
}

// Two rows of a group unpacked by unpack_rows4_i8 (wu: the group's, plus 4 words for rows
// 2 and 3) against two unpacked vectors: out = {row 0 . x0, row 0 . x1, row 1 . x0,
// row 1 . x1}. Each loaded word serves two SMLAD, so a word of four columns is 8 LDR and
// 8 SMLAD for 16 multiply-accumulates, and every SMLAD dual-issues with a load: 8 cycles,
// the M7's one multiply-accumulate per cycle (one vector against four rows takes 10:
// 10 loads per 8 SMLAD).
// The loads run three cycles ahead of the SMLAD that use them (a load's result reaches a
// multiply two cycles later), so each loop iteration starts the next word's first three
// loads, and the last word, which has none to start, is peeled. Four registers then hold
// every operand in flight: each load reuses the register whose last SMLAD issues beside it.
// words >= 1.
#ifdef ASM_13_REGISTERS
// One word: p, q, r hold the word's even x0, even row 0 and even x1 on entry; then the
// even row 1, odd x0, odd row 0, odd x1, odd row 1 follow, and the next word's three.
#define DOT2X2_MACS_LOADS(l5, l6, l7, l8, l9, l10, l11, l12)                 \
    "smlad  %[a00], %[q], %[p], %[a00]\n\t"  l5                               \
    "smlad  %[a01], %[q], %[r], %[a01]\n\t"  l6                               \
    "smlad  %[a10], %[s], %[p], %[a10]\n\t"  l7                               \
    "smlad  %[a11], %[s], %[r], %[a11]\n\t"  l8                               \
    "smlad  %[a00], %[p], %[q], %[a00]\n\t"  l9                               \
    "smlad  %[a01], %[p], %[r], %[a01]\n\t"  l10                              \
    "smlad  %[a10], %[s], %[q], %[a10]\n\t"  l11                              \
    "smlad  %[a11], %[s], %[r], %[a11]\n\t"  l12
#define DOT2X2_THIS_WORD                                                      \
    "ldr    %[s], [%[wp], #-24]\n\t",   /* row 1, even */                     \
    "ldr    %[q], [%[x0], #-4]\n\t",    /* x0, odd */                         \
    "ldr    %[p], [%[wp], #-28]\n\t",   /* row 0, odd */                      \
    "ldr    %[r], [%[x1], #-4]\n\t",    /* x1, odd */                         \
    "ldr    %[s], [%[wp], #-20]\n\t"    /* row 1, odd */
#define DOT2X2_NEXT_WORD                                                      \
    "ldr    %[p], [%[x0]], #8\n\t",     /* next x0, even */                   \
    "ldr    %[q], [%[wp]], #32\n\t",    /* next row 0, even */                \
    "ldr    %[r], [%[x1]], #8\n\t"      /* next x1, even */
#define DOT2X2_EXPAND(m, ...) m(__VA_ARGS__)
#define DOT2X2_WORD DOT2X2_EXPAND(DOT2X2_MACS_LOADS, DOT2X2_THIS_WORD, DOT2X2_NEXT_WORD)
#define DOT2X2_LAST_WORD DOT2X2_EXPAND(DOT2X2_MACS_LOADS, DOT2X2_THIS_WORD, "", "", "")

static inline __attribute__((always_inline)) void dot2x2u_i8(int32_t* out, const uint32_t* wu,
                                                             const uint32_t* x0, const uint32_t* x1, int words) {
    int32_t a00 = 0, a01 = 0, a10 = 0, a11 = 0;
    int k = words - 1;   // words with a next one: sixteen per iteration, then 8, 4, 2, 1 as needed
    uint32_t p, q, r, s;
    __asm__ volatile(
        "ldr    %[p], [%[x0]], #8\n\t"
        "ldr    %[q], [%[wp]], #32\n\t"
        "ldr    %[r], [%[x1]], #8\n\t"
        "subs   %[k], %[k], #16\n\t"
        "blt    2f\n\t"
        "1:\n\t"
        ".rept   16\n\t" DOT2X2_WORD ".endr\n\t"   /* (16 copies in C would exceed C99's string length) */
        "subs   %[k], %[k], #16\n\t"
        "bge    1b\n\t"
        "2:\n\t"
        LADDER(8, DOT2X2_WORD, "5") LADDER(4, DOT2X2_WORD, "6") LADDER(2, DOT2X2_WORD, "7")
        LADDER(1, DOT2X2_WORD, "4")
        DOT2X2_LAST_WORD
        : [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11), [wp] "+r"(wu), [x0] "+r"(x0),
          [x1] "+r"(x1), [k] "+r"(k), [p] "=&r"(p), [q] "=&r"(q), [r] "=&r"(r), [s] "=&r"(s)
        :
        : "cc", "memory");
    out[0] = a00;
    out[1] = a01;
    out[2] = a10;
    out[3] = a11;
}
#else
static void dot2x2u_i8(int32_t* out, const uint32_t* wu, const uint32_t* x0, const uint32_t* x1, int words) {
    int32_t a[4] = {0, 0, 0, 0};
    for (int j = 0; j < words; j++) {
        for (int i = 0; i < 4; i++) {
            for (int h = 0; h < 2; h++) {
                uint32_t wv = wu[8 * j + 2 * (i >> 1) + h], xv = (i & 1 ? x1 : x0)[2 * j + h];
                a[i] += (int32_t)(int16_t)(wv & 0xFFFF) * (int32_t)(int16_t)(xv & 0xFFFF)
                      + (int32_t)(int16_t)(wv >> 16) * (int32_t)(int16_t)(xv >> 16);
            }
        }
    }
    for (int i = 0; i < 4; i++) out[i] = a[i];
}
#endif

// Both halves of a group of four rows against two vectors, in one call:
// out[2i + j] = row i . xj.
__attribute__((noinline)) static void dot4x2u_i8(int32_t* out, const uint32_t* wu, const uint32_t* x0,
                                                 const uint32_t* x1, int words) {
    dot2x2u_i8(out, wu, x0, x1, words);
    dot2x2u_i8(out + 4, wu + 4, x0, x1, words);
}

// dequant() of a group of four rows against m vectors (1 or 2): y_j[i] from acc[m i + j].
// Every input is read before the first output is written, so the compiler may overlap the
// conversions and products of different outputs (the float operations of each are dequant's).
static inline void dequant_rows4(float* y0, float* y1, int m, const int32_t* acc, const float* scales,
                                 float sx0, float sx1, const float* bias) {
    float v[8];
    for (int i = 0; i < 4; i++) {
        v[m * i] = (float)acc[m * i] * (scales[i] * sx0);
        if (m == 2) v[2 * i + 1] = (float)acc[2 * i + 1] * (scales[i] * sx1);
    }
    if (bias) {
        for (int i = 0; i < 4; i++) {
            v[m * i] = v[m * i] + bias[i];
            if (m == 2) v[2 * i + 1] = v[2 * i + 1] + bias[i];
        }
    }
    for (int i = 0; i < 4; i++) {
        y0[i] = v[m * i];
        if (m == 2) y1[i] = v[2 * i + 1];
    }
}

void matvec_rows_i8_batch(float* const* y, const int8_t* w_tile, const float* row_scales,
                          const float* bias_or_null, const int8_t* const* qx, const uint32_t* const* xu,
                          const float* sx, int n, int rows, int cols, uint32_t* scratch) {
    int r = 0;
    if ((cols & 3) == 0 && cols > 0 && ((uintptr_t)w_tile & 3) == 0) {
        int words = cols >> 2;
        for (; r + 4 <= rows; r += 4) {
            const float* b = bias_or_null ? bias_or_null + r : 0;
            const int8_t* w = w_tile + (size_t)r * (size_t)cols;
            int pairs = n >> 1;
            if (n & 1) {   // the odd vector unpacks the group for the pairs
                int32_t acc[4];
                unpack_dot4x1_i8(acc, scratch, w, cols, xu[n - 1]);
                dequant_rows4(y[n - 1] + r, 0, 1, acc, row_scales + r, sx[n - 1], 0.0f, b);
            } else {
                unpack_rows4_i8(scratch, w, cols);
            }
            for (int p = 0; p < 2 * pairs; p += 2) {   // each loaded word serves two rows and two vectors
                int32_t acc[8];
                dot4x2u_i8(acc, scratch, xu[p], xu[p + 1], words);
                dequant_rows4(y[p] + r, y[p + 1] + r, 2, acc, row_scales + r, sx[p], sx[p + 1], b);
            }
        }
    }
    if (r < rows) {   // the rows left: each vector on its own
        for (int p = 0; p < n; p++) {
            matvec_rows_i8(y[p] + r, w_tile + (size_t)r * (size_t)cols, row_scales + r,
                           bias_or_null ? bias_or_null + r : 0, qx[p], xu[p], sx[p], rows - r, cols);
        }
    }
}

// ----------------------------------------------------------------------------
// attention over an int8 KV cache (quantize.py attention_int8)

static inline float row_scale(const uint8_t* row) {
    return *(const float*)(const void*)row;
}

// int16 values laid out as unpack_i8 lays out an int8 vector, for dot4_i8's SMLAD lanes:
// words 2j and 2j + 1 hold elements 4j, 4j + 2 and 4j + 1, 4j + 3 (n / 4 groups).
static void unpack_i16(uint32_t* xu, const int16_t* q, int n) {
    for (int j = 0; j < n >> 2; j++) {
        xu[2 * j] = (uint16_t)q[4 * j] | (uint32_t)(uint16_t)q[4 * j + 2] << 16;
        xu[2 * j + 1] = (uint16_t)q[4 * j + 1] | (uint32_t)(uint16_t)q[4 * j + 3] << 16;
    }
}

void quantize_query_i16(int16_t* q, uint32_t* qu, float* scale, const float* x, int n) {
    float amax = amax_of(x, n);   // as quantize_vector_i8, with QMAX16 for QMAX
    if (amax == 0.0f) {
        for (int i = 0; i < n; i++) q[i] = 0;
        *scale = 0.0f;
    } else {
        float inv = QMAX16 / amax;
        for (int i = 0; i < n; i++) q[i] = (int16_t)round_half_away(x[i] * inv);
        *scale = amax / QMAX16;
    }
    unpack_i16(qu, q, n);
}

void attention_scores_i8(float* scores, const uint8_t* rows, int row_bytes, int n, const int16_t* qh,
                         const uint32_t* qu, float sq, int head_dim, float scale) {
    int t = 0;
#ifdef ASM_13_REGISTERS
    // four keys at a time against the query's int16 pairs: matvec_rows_i8's 4-row kernel
    // (whose SMLAD takes any int16 lanes, not only int8 ones), at the stored row's stride
    if ((head_dim & 3) == 0 && (row_bytes & 3) == 0 && ((uintptr_t)rows & 3) == 0) {
        for (; t + 4 <= n; t += 4) {
            const uint8_t* r0 = rows + (size_t)t * (size_t)row_bytes;
            int32_t acc[4];
            dot4_i8(acc, (const int8_t*)(r0 + 4), qu, head_dim, row_bytes);
            for (int i = 0; i < 4; i++)
                scores[t + i] = dequant(acc[i], row_scale(r0 + (size_t)i * (size_t)row_bytes), sq, NULL, 0) * scale;
        }
    }
#else
    (void)qu;
#endif
    for (; t < n; t++) {
        const uint8_t* r = rows + (size_t)t * (size_t)row_bytes;
        const int8_t* k = (const int8_t*)(r + 4);
        int32_t acc = 0;
        for (int d = 0; d < head_dim; d++) acc += (int32_t)k[d] * (int32_t)qh[d];
        scores[t] = dequant(acc, row_scale(r), sq, NULL, 0) * scale;
    }
}

// acc + the product of one int16 lane of a and one of w (bottom or top: SMLABB, SMLATB,
// SMLABT, SMLATT; one multiply-accumulate each, the weight pair needs no unpacking)
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#define smlabb_(a, w, acc) __smlabb((int32_t)(a), (int32_t)(w), (acc))
#define smlatb_(a, w, acc) __smlatb((int32_t)(a), (int32_t)(w), (acc))
#define smlabt_(a, w, acc) __smlabt((int32_t)(a), (int32_t)(w), (acc))
#define smlatt_(a, w, acc) __smlatt((int32_t)(a), (int32_t)(w), (acc))
#else
#define lane_(x, top) ((int32_t)(int16_t)((top) ? (uint32_t)(x) >> 16 : (uint32_t)(x)))
#define smlabb_(a, w, acc) ((acc) + lane_(a, 0) * lane_(w, 0))
#define smlatb_(a, w, acc) ((acc) + lane_(a, 1) * lane_(w, 0))
#define smlabt_(a, w, acc) ((acc) + lane_(a, 0) * lane_(w, 1))
#define smlatt_(a, w, acc) ((acc) + lane_(a, 1) * lane_(w, 1))
#endif

// Weights below this add nothing (their inverse would overflow float32; what they would add is
// below 1e-26): quantize.py WEIGHT_MIN.
#define WEIGHT_MIN 1e-30f

// One block's weights: w[t] = e[t] * s_v[t] (>= 0), in e's place, quantized to int16 with one
// scale for the block (*sw). Returns 0 when the block adds nothing (largest weight below
// WEIGHT_MIN).
static int block_weights(float* e, const uint8_t* rows, int row_bytes, int n, int16_t* wq, float* sw) {
    // their largest: two running maxima (VMAXNM; a NaN is skipped, and the softmax's sum is
    // NaN then, which makes every output NaN)
    float m0 = 0.0f, m1 = 0.0f;
    int t = 0;
    for (; t + 2 <= n; t += 2) {
        e[t] = e[t] * row_scale(rows + (size_t)t * (size_t)row_bytes);
        e[t + 1] = e[t + 1] * row_scale(rows + (size_t)(t + 1) * (size_t)row_bytes);
        m0 = mcu_fmaxf(m0, e[t]);
        m1 = mcu_fmaxf(m1, e[t + 1]);
    }
    if (t < n) {
        e[t] = e[t] * row_scale(rows + (size_t)t * (size_t)row_bytes);
        m0 = mcu_fmaxf(m0, e[t]);
    }
    float amax = mcu_fmaxf(m0, m1);
    if (!(amax >= WEIGHT_MIN)) return 0;
    float inv = QMAX16 / amax;
    *sw = amax / QMAX16;
    // round_half_away of values >= 0; four at a time, a step of each before the next, so the
    // M7 overlaps their float latencies
    for (t = 0; t + 4 <= n; t += 4) {
        float a0 = e[t] * inv, a1 = e[t + 1] * inv, a2 = e[t + 2] * inv, a3 = e[t + 3] * inv;
        a0 = a0 + 0.5f, a1 = a1 + 0.5f, a2 = a2 + 0.5f, a3 = a3 + 0.5f;
        int32_t i0 = (int32_t)a0, i1 = (int32_t)a1, i2 = (int32_t)a2, i3 = (int32_t)a3;
        wq[t] = (int16_t)i0, wq[t + 1] = (int16_t)i1, wq[t + 2] = (int16_t)i2, wq[t + 3] = (int16_t)i3;
    }
    for (; t < n; t++) wq[t] = (int16_t)(int32_t)(e[t] * inv + 0.5f);
    return 1;
}

void attention_accumulate_cols_i8(float* out, float* e, const uint8_t* block, int row_bytes, int n, int16_t* wq,
                                  uint32_t* wu) {
    float sw;
    if (!block_weights(e, block, row_bytes, n, wq, &sw)) return;
    unpack_i16(wu, wq, n);
    // columns d, d + 1 are row d / 2's values, d + 2, d + 3 the next row's: each column is a
    // row of an int8 matrix with the weights for its input, so dot4_i8 sums four of them
    for (int d = 0; d < 2 * n; d += 4) {
        const int8_t* c0 = (const int8_t*)(block + (size_t)(d / 2) * (size_t)row_bytes + 4);
        int32_t acc[4];
#ifdef ASM_13_REGISTERS
        dot4_i8_at(acc, c0, c0 + row_bytes, wu, n, n);
#else
        for (int i = 0; i < 4; i++) {
            const int8_t* c = c0 + (i >= 2 ? row_bytes : 0) + (i & 1) * n;
            acc[i] = 0;
            for (int t = 0; t < n; t++) acc[i] += (int32_t)wq[t] * (int32_t)c[t];
        }
        (void)wu;
#endif
        for (int i = 0; i < 4; i++) out[d + i] = out[d + i] + (float)acc[i] * sw;
    }
}

void attention_accumulate_i8(float* out, float* e, const uint8_t* rows, int row_bytes, int n, int head_dim,
                             int16_t* wq) {
    float sw;
    if (!block_weights(e, rows, row_bytes, n, wq, &sw)) return;
    int t;
    const int8_t* v0 = (const int8_t*)(rows + 4);
    int d = 0;
    if ((head_dim & 3) == 0 && (row_bytes & 3) == 0 && ((uintptr_t)rows & 3) == 0) {
        // four columns of two rows per step: SXTB16 unpacks a row's word into two int16
        // pairs (columns 0, 2 and 1, 3), and each column's product with its row's weight,
        // the bottom (row t) or top (row t + 1) lane of the weight pair, is one SMLAxy into
        // the column's exact int32 sum
        for (; d < head_dim; d += 4) {
            int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
            const int8_t* v = v0 + d;
            const uint32_t* w2 = (const uint32_t*)(const void*)wq;
            const uint32_t* w2_end = w2 + n / 2;
            t = n & ~1;   // the last row of an odd block, if any
#ifdef ASM_13_REGISTERS
            // In assembly for the M7's issue rules (target/m7_pipeline.py): SXTB16 takes the
            // older slot beside a SMLAxy, and the loop's own instructions ride beside the
            // other SMLAxy: 11 cycles per 8 multiply-accumulates (compiled from the C below,
            // 16: the compiler spilled). 13 registers, as dot4_i8.
            if (w2 < w2_end) {
                uint32_t w, x, xo, y, yo;
                __asm__ volatile(
                    "1:\n\t"
                    "ldr    %[w], [%[w2]], #4\n\t"
                    "ldr    %[y], [%[v]]\n\t"
                    "sxtb16 %[yo], %[y], ror #8\n\t"
                    "ldr    %[x], [%[v], %[rb]]\n\t"
                    "sxtb16 %[y], %[y]\n\t"
                    "smlabb %[a1], %[yo], %[w], %[a1]\n\t"
                    "sxtb16 %[xo], %[x], ror #8\n\t"
                    "smlatb %[a3], %[yo], %[w], %[a3]\n\t"
                    "sxtb16 %[x], %[x]\n\t"
                    "smlabb %[a0], %[y], %[w], %[a0]\n\t"
                    "add    %[v], %[v], %[rb], lsl #1\n\t"
                    "smlatb %[a2], %[y], %[w], %[a2]\n\t"
                    "cmp    %[w2], %[end]\n\t"
                    "smlabt %[a1], %[xo], %[w], %[a1]\n\t"
                    "smlatt %[a3], %[xo], %[w], %[a3]\n\t"
                    "smlabt %[a0], %[x], %[w], %[a0]\n\t"
                    "smlatt %[a2], %[x], %[w], %[a2]\n\t"
                    "bne    1b\n\t"
                    : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [v] "+r"(v), [w2] "+r"(w2),
                      [w] "=&r"(w), [x] "=&r"(x), [xo] "=&r"(xo), [y] "=&r"(y), [yo] "=&r"(yo)
                    : [rb] "r"(row_bytes), [end] "r"(w2_end)
                    : "cc", "memory");
            }
#else
            for (; w2 < w2_end; v += 2 * row_bytes, w2++) {
                uint32_t w = *w2;
                uint32_t x = load4(v);
                uint32_t xe = (uint32_t)even_pairs(x), xo = (uint32_t)odd_pairs(x);
                a0 = smlabb_(xe, w, a0);
                a2 = smlatb_(xe, w, a2);
                a1 = smlabb_(xo, w, a1);
                a3 = smlatb_(xo, w, a3);
                x = load4(v + row_bytes);
                xe = (uint32_t)even_pairs(x), xo = (uint32_t)odd_pairs(x);
                a0 = smlabt_(xe, w, a0);
                a2 = smlatt_(xe, w, a2);
                a1 = smlabt_(xo, w, a1);
                a3 = smlatt_(xo, w, a3);
            }
#endif
            if (t < n) {   // the last row of an odd block
                a0 += (int32_t)wq[t] * v[0];
                a1 += (int32_t)wq[t] * v[1];
                a2 += (int32_t)wq[t] * v[2];
                a3 += (int32_t)wq[t] * v[3];
            }
            out[d] = out[d] + (float)a0 * sw;
            out[d + 1] = out[d + 1] + (float)a1 * sw;
            out[d + 2] = out[d + 2] + (float)a2 * sw;
            out[d + 3] = out[d + 3] + (float)a3 * sw;
        }
        return;
    }
    for (; d < head_dim; d++) {
        int32_t a = 0;
        for (t = 0; t < n; t++) a += (int32_t)wq[t] * v0[(size_t)t * (size_t)row_bytes + (size_t)d];
        out[d] = out[d] + (float)a * sw;
    }
}
