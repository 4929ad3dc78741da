/*
Seeded random numbers for model init, data shuffling and sampling.

One small generator everywhere (CPU engine, CUDA engine's host-side init, the dataloader's shuffle,
the sampler) so that a seed means the same thing in every program: `-e d12` with seed 1337 gives
bit-identical initial weights in train_gpt2 and train_gpt2cu. The generator is SplitMix64: 64 bits
of state, one add and three xor-shift-multiplies per draw, passes BigCrush, and its whole state fits
in the optimizer-state file's RNG slots. Normals use Box-Muller in double precision.
Header-only (static inline): it is included from C, C++ and CUDA translation units alike.
*/
#ifndef LLMC_RAND_H
#define LLMC_RAND_H

#include <math.h>
#include <stdint.h>

typedef struct {
    uint64_t state;
} Rng;

static inline void rng_init(Rng* rng, uint64_t seed) { rng->state = seed; }

static inline uint64_t rng_next_u64(Rng* rng) {
    uint64_t z = (rng->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint32_t rng_next_u32(Rng* rng) { return (uint32_t)(rng_next_u64(rng) >> 32); }

// Uniform in [0, 1) with 53 random bits.
static inline double rng_uniform(Rng* rng) {
    return (double)(rng_next_u64(rng) >> 11) * (1.0 / 9007199254740992.0);
}

// Uniform integer in [0, n), n > 0 (rejection sampling, so no modulo bias).
static inline uint64_t rng_below(Rng* rng, uint64_t n) {
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do {
        x = rng_next_u64(rng);
    } while (x >= limit);
    return x % n;
}

// Fills out[0..n) with normal(mean, std) draws.
static inline void rng_normal_fill(Rng* rng, float* out, size_t n, float mean, float std) {
    const double two_pi = 6.283185307179586476925286766559;
    for (size_t i = 0; i < n; i += 2) {
        double u1 = 1.0 - rng_uniform(rng);  // in (0, 1], so log() is finite
        double u2 = rng_uniform(rng);
        double radius = sqrt(-2.0 * log(u1));
        out[i] = (float)(mean + std * radius * cos(two_pi * u2));
        if (i + 1 < n) out[i + 1] = (float)(mean + std * radius * sin(two_pi * u2));
    }
}

// Fisher-Yates shuffle of a permutation of size n.
static inline void rng_shuffle_u32(Rng* rng, uint32_t* items, size_t n) {
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)rng_below(rng, i);
        uint32_t tmp = items[i - 1];
        items[i - 1] = items[j];
        items[j] = tmp;
    }
}

#endif  // LLMC_RAND_H
