// The firmware's random numbers and its top-k sampler. The generator is a spec shared
// with the Python reference, which implements the same steps bit for bit.
#ifndef MCUGPT_PRNG_H
#define MCUGPT_PRNG_H

#include <stdint.h>
#include "kernels.h"

// xorshift64* (Vigna): 64 bits of state, shifts 12/25/27, multiplier 0x2545F4914F6CDD1D.
typedef struct {
    uint64_t state;   // never 0 (xorshift would stay at 0 forever)
} Prng;

// state = seed ^ 0x9E3779B97F4A7C15, or 1 if that is 0.
void prng_init(Prng* rng, uint64_t seed);

// state ^= state >> 12; state ^= state << 25; state ^= state >> 27;
// return the high 32 bits of state * 0x2545F4914F6CDD1D (mod 2^64).
uint32_t prng_next_u32(Prng* rng);

// (next_u32 >> 8) * 2^-24: uniform in [0, 1) on a grid of 2^-24, exact in float32.
float prng_next_f32(Prng* rng);

// Draw one index from the top-k candidates with probabilities softmax(val / temperature):
//   m = val[0]; w[i] = mcu_expf((val[i] - m) / temperature)   (subtract, divide, exp)
//   total = w[0] + w[1] + ... in order; r = prng_next_f32() * total;
//   return the first idx[i] whose running sum w[0] + ... + w[i] exceeds r (idx[n-1] if
//   none does, which rounding can cause).
// Consumes exactly one prng_next_u32. temperature <= 0 means greedy: idx[0], no draw.
// Returns -1 if t holds no candidates.
int sample_topk(const TopK* t, float temperature, Prng* rng);

#endif // MCUGPT_PRNG_H
