// Float32 exp, tanh and sqrt for a board without libm. Freestanding C99, no doubles:
// every literal carries an f suffix, so the Cortex-M7 single-precision FPU does all the work.
#include <stdint.h>
#include "mathf.h"

// ----------------------------------------------------------------------------
// float <-> bits (a union is the C99 way to type-pun without memcpy)

typedef union { float f; uint32_t u; } F32Bits;

static float from_bits(uint32_t u) { F32Bits v; v.u = u; return v.f; }
static uint32_t to_bits(float f) { F32Bits v; v.f = f; return v.u; }

// 2^k for k in [-126, 127], built directly in the exponent field: exact, no loop.
static float pow2i(int k) { return from_bits((uint32_t)(k + 127) << 23); }

// ----------------------------------------------------------------------------
// exp: range reduction + polynomial
//
// x = k*ln2 + r with k = round(x / ln2), so |r| <= ln2/2 ~ 0.347 and e^x = 2^k * e^r.
// - k: x*log2(e) rounded to nearest by adding and subtracting 1.5*2^23 (at that magnitude
//   a float has no fraction bits, so the FPU's round-to-nearest does the rounding). Valid
//   for |x*log2(e)| < 2^22; callers clamp x to [-104, 88.73] first. If the rounded product
//   picks the neighbouring k, |r| grows by a hair and the polynomial is still accurate.
// - r: Cody-Waite. ln2 = LN2_HI + LN2_LO where LN2_HI keeps only 15 significant bits
//   (9 trailing zero bits), so k*LN2_HI is exact for |k| < 512 and x - k*LN2_HI is exact
//   (Sterbenz: the two are within a factor 2). Only the tiny k*LN2_LO term rounds.
// - e^r - 1 = r + r^2 * (1/2! + r/3! + ... + r^5/7!): Taylor to degree 7. Truncation
//   error r^8/8! < 6e-9 relative for |r| <= 0.35, a tenth of a float32 ulp; keeping the
//   leading r out of the Horner chain keeps e^r - 1 accurate to ~1 ulp relative to
//   itself, which tanh relies on (no cancellation when it needs e^y - 1).

#define LOG2E       1.44269504f       // 1/ln2
#define ROUND_MAGIC 12582912.0f       // 1.5 * 2^23
#define LN2_HI      0.693145751953125f         // 0x3f317200
#define LN2_LO      1.42860682030941723212e-6f // 0x35bfbe8e, ln2 - LN2_HI
#define EXP_MAX     88.72283172607421875f      // largest x with e^x < FLT_MAX (0x42b17217)
#define EXP_MAX_BITS 0x42b17217u
#define EXP_MIN     -104.0f                    // e^-104 < 2^-150: rounds to 0 below this

// Returns p = e^r - 1 and sets *k, where x = k*ln2 + r. Needs x in [-104, 88.73].
static float expm1_reduced(float x, int* k) {
    float kf = (x * LOG2E + ROUND_MAGIC) - ROUND_MAGIC;
    float r = (x - kf * LN2_HI) - kf * LN2_LO;
    float q = 1.0f / 5040.0f;          // 1/7!
    q = q * r + 1.0f / 720.0f;         // 1/6!
    q = q * r + 1.0f / 120.0f;         // 1/5!
    q = q * r + 1.0f / 24.0f;          // 1/4!
    q = q * r + 1.0f / 6.0f;           // 1/3!
    q = q * r + 0.5f;                  // 1/2!
    *k = (int)kf;
    return r + (r * r) * q;
}

float mcu_expf(float x) {
    if (x != x) return x;                           // NaN
    if (x > EXP_MAX) return from_bits(0x7f800000u); // +inf
    if (x < EXP_MIN) return 0.0f;
    int k;
    float y = 1.0f + expm1_reduced(x, &k);          // e^r in [0.70, 1.42]
    // Scale by 2^k with a single rounding. 2^128 and 2^-127.. are not normal floats, so
    // split the power of two: the first product is exact, only the second one rounds
    // (for k < -126 that is the one rounding into the subnormal range).
    if (k > 127) return (y * 2.0f) * pow2i(k - 1);
    if (k < -126) return (y * pow2i(k + 64)) * pow2i(-64);
    return y * pow2i(k);
}

// The checks of the common path as integer arithmetic: a float compare costs the M7 a
// VCMP and a VMRS whose flags the branch waits for. A value is in range when the difference
// below is >= 0, so OR-ing the differences of four values tests all four with one sign.
static inline int32_t exp_in_range(float x) {   // |x| <= EXP_MAX (a NaN's bits are above)
    return (int32_t)(EXP_MAX_BITS - (to_bits(x) & 0x7fffffffu));
}
static inline int32_t pow2_normal(int k) {      // k in [-126, 127]: 2^k a normal float
    return (int32_t)((uint32_t)(k + 126) | (uint32_t)(127 - k));
}

void mcu_expf4_sub(float* y, const float* x, float sub) {
    float x0 = x[0] - sub, x1 = x[1] - sub, x2 = x[2] - sub, x3 = x[3] - sub;
    // The common path, four side by side: |x| <= EXP_MAX ([-104, -88.7) takes mcu_expf's own
    // path) and 2^k a normal float. Each takes exactly mcu_expf's operations; otherwise one at
    // a time.
    if ((exp_in_range(x0) | exp_in_range(x1) | exp_in_range(x2) | exp_in_range(x3)) >= 0) {
        int k0, k1, k2, k3;
        float y0 = 1.0f + expm1_reduced(x0, &k0);
        float y1 = 1.0f + expm1_reduced(x1, &k1);
        float y2 = 1.0f + expm1_reduced(x2, &k2);
        float y3 = 1.0f + expm1_reduced(x3, &k3);
        if ((pow2_normal(k0) | pow2_normal(k1) | pow2_normal(k2) | pow2_normal(k3)) >= 0) {
            y[0] = y0 * pow2i(k0);
            y[1] = y1 * pow2i(k1);
            y[2] = y2 * pow2i(k2);
            y[3] = y3 * pow2i(k3);
            return;
        }
    }
    y[0] = mcu_expf(x0);
    y[1] = mcu_expf(x1);
    y[2] = mcu_expf(x2);
    y[3] = mcu_expf(x3);
}

// ----------------------------------------------------------------------------
// tanh
//
// tanh is odd: work on a = |x| and put the sign back at the end.
// - a < 2^-12: tanh(a) = a - a^3/3 + ..., the correction is below a third of an ulp,
//   so a itself is the correctly rounded result (and -0 stays -0).
// - a < 0.55: tanh(a) = a + a^3 * P(a^2), P a degree-5 polynomial. Near 0 the formula
//   via exp would subtract two nearly equal numbers; this one only adds a small
//   correction to a. P: least-squares fit in float64 of (tanh(a) - a)/a^3 on 2000
//   Chebyshev nodes of t = a^2 in [0, 0.3025], weighted by t (the final relative
//   error is ~t * error(P)), coefficients rounded to float32. Measured max error 1 ulp.
// - a < 9.1: tanh(a) = m / (m + 2) with m = e^(2a) - 1 >= 2. m is formed as
//   (2^k - 1) + 2^k * p from the reduced exp (p = e^r - 1), which rounds once and
//   never cancels; then m + 2 and the division add at most one ulp between them.
// - a >= 9.1: 1 - tanh(a) < 2e^(-2a) < 2^-26, so the float result is exactly 1.

#define TANH_TINY 0.000244140625f  // 2^-12
#define TANH_POLY 0.55f
#define TANH_SAT  9.1f

// tanh(a) for TANH_TINY <= a < TANH_POLY, and for TANH_POLY <= a < TANH_SAT
static inline float tanh_poly(float a) {
    float t = a * a;
    float p = 0.0023986595f;
    p = p * t - 0.008416575f;
    p = p * t + 0.021783734f;
    p = p * t - 0.053959794f;
    p = p * t + 0.13333295f;
    p = p * t - 0.3333333f;
    return a + (a * t) * p;
}

static inline float tanh_exp(float a) {
    int k;
    float p = expm1_reduced(2.0f * a, &k);   // 2a in [1.1, 18.2]: k in [2, 26]
    float s = pow2i(k);
    float m = (s - 1.0f) + s * p;
    return m / (m + 2.0f);
}

float mcu_tanhf(float x) {
    if (x != x) return x;                 // NaN
    float a = x < 0.0f ? -x : x;
    if (a < TANH_TINY) return x;
    float y;
    if (a < TANH_POLY) {
        y = tanh_poly(a);
    } else if (a < TANH_SAT) {
        y = tanh_exp(a);
    } else {
        y = 1.0f;
    }
    return x < 0.0f ? -y : y;
}

void mcu_tanhf2(float* y, float x0, float x1) {
    // Two arguments on the same path (a NaN is on none: its comparisons are false) run side
    // by side in one block, so the M7 overlaps their chains of dependent float operations;
    // each takes exactly mcu_tanhf's operations. Otherwise one after the other.
    float a0 = x0 < 0.0f ? -x0 : x0, a1 = x1 < 0.0f ? -x1 : x1;
    float t0, t1;
    if (a0 >= TANH_TINY && a1 >= TANH_TINY && a0 < TANH_POLY && a1 < TANH_POLY) {
        t0 = tanh_poly(a0);
        t1 = tanh_poly(a1);
    } else if (a0 >= TANH_POLY && a1 >= TANH_POLY && a0 < TANH_SAT && a1 < TANH_SAT) {
        t0 = tanh_exp(a0);
        t1 = tanh_exp(a1);
    } else {
        y[0] = mcu_tanhf(x0);
        y[1] = mcu_tanhf(x1);
        return;
    }
    y[0] = x0 < 0.0f ? -t0 : t0;
    y[1] = x1 < 0.0f ? -t1 : t1;
}

// ----------------------------------------------------------------------------
// sqrt
//
// One instruction on the M7 (VSQRT.F32, correctly rounded). Written as inline asm on ARM
// because __builtin_sqrtf is not enough there: zig cc for a freestanding target defaults
// to -fmath-errno, so clang keeps a call to libc sqrtf (for errno on negative input)
// and at -O2 emits *only* that call. The asm cannot turn into a libcall whatever the flags.
// Elsewhere (host tests) the builtin is an SSE/NEON instruction, also correctly rounded,
// so host and board agree bit for bit.

float mcu_sqrtf(float x) {
#if defined(__arm__) && defined(__ARM_FP) && (__ARM_FP & 4)
    float r;
    __asm__("vsqrt.f32 %0, %1" : "=t"(r) : "t"(x));
    return r;
#else
    return __builtin_sqrtf(x);
#endif
}
