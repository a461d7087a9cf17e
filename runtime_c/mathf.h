// Float32 elementary functions for the firmware: no libm on the board.
// All three are within 2 ulp of the correctly rounded float32 result (measured: 1 ulp),
// see tests/test_kernels_host.py. Build with -ffp-contract=off: the error analysis in
// mathf.c assumes every + and * rounds separately.
#ifndef MCUGPT_MATHF_H
#define MCUGPT_MATHF_H

// e^x. NaN -> NaN; x > 88.7228317 -> +inf; subnormal results are exact to 1 ulp;
// x < -104 -> 0 (e^x < 2^-150 rounds to zero anyway).
float mcu_expf(float x);

// y[i] = mcu_expf(x[i] - sub) for i < 4, bit for bit (y may be x): softmax's exponentials,
// four side by side when all four take the common path.
void mcu_expf4_sub(float* y, const float* x, float sub);

// tanh(x) for every float: odd, tanh(+-0) = +-0, saturates to +-1 for |x| > 9.1.
float mcu_tanhf(float x);

// y[0] = mcu_tanhf(x0), y[1] = mcu_tanhf(x1), bit for bit; faster than two calls when both
// take the same path.
void mcu_tanhf2(float* y, float x0, float x1);

// Correctly rounded square root (IEEE: the VSQRT.F32 instruction on the Cortex-M7).
float mcu_sqrtf(float x);

// The larger of a and b, a NaN ignored (IEEE maxNum; of +0 and -0 either). On the M7 one
// VMAXNM.F32 (FPv5), no flags and no branch; elsewhere spelled out (fmaxf would be a libm
// call on the host, whose builds link none).
static inline float mcu_fmaxf(float a, float b) {
#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP && defined(__ARM_FP)
    return __builtin_fmaxf(a, b);
#else
    return a != a ? b : (b > a ? b : a);
#endif
}

#endif // MCUGPT_MATHF_H
