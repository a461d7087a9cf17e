// xorshift64* and the top-k sampler. Freestanding C99; uint64 arithmetic wraps mod 2^64.
#include <stdint.h>
#include "prng.h"
#include "mathf.h"

// ----------------------------------------------------------------------------
// generator

void prng_init(Prng* rng, uint64_t seed) {
    // xor with the golden-ratio constant so small seeds (0, 1, 42) do not start from a
    // state with almost every bit zero
    rng->state = seed ^ 0x9E3779B97F4A7C15ull;
    if (rng->state == 0) rng->state = 1;
}

uint32_t prng_next_u32(Prng* rng) {
    uint64_t s = rng->state;
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    rng->state = s;
    // the multiply scrambles the low-quality low bits; keep the high half
    return (uint32_t)((s * 0x2545F4914F6CDD1Dull) >> 32);
}

float prng_next_f32(Prng* rng) {
    // 24 bits fit a float32 significand exactly, so every value is hit with equal odds
    return (float)(prng_next_u32(rng) >> 8) * (1.0f / 16777216.0f);
}

// ----------------------------------------------------------------------------
// sampler

int sample_topk(const TopK* t, float temperature, Prng* rng) {
    if (t->n <= 0) return -1;
    if (!(temperature > 0.0f)) return t->idx[0];
    // val[0] is the largest: every exponent is <= 0, so the weights are in (0, 1].
    float m = t->val[0];
    float total = 0.0f;
    for (int i = 0; i < t->n; i++) total += mcu_expf((t->val[i] - m) / temperature);
    float r = prng_next_f32(rng) * total;
    // The weights are computed again instead of kept in an array: no stack that grows
    // with TOPK_MAX, and mcu_expf is deterministic, so both passes see the same values.
    float acc = 0.0f;
    for (int i = 0; i < t->n; i++) {
        acc += mcu_expf((t->val[i] - m) / temperature);
        if (r < acc) return t->idx[i];
    }
    return t->idx[t->n - 1];
}
