/*
Global gradient norm (for gradient clipping): check and benchmark.

What it computes (llmc/global_norm.cuh): over all gradients, one contiguous buffer of n values,
    out[0] = norm = sqrt(sum_i g_i^2)
    out[1] = clip scale = clip / norm if norm > clip, else 1 (0 when the norm is not finite)
deterministically: the same gradients give the same bits, run after run. Shape: n = 124,475,904
bf16 gradients (GPT-2 124M), 249 MB, five times the 50 MB L2, so every run reads DRAM.

Build and run (from the repository root):
    make -C dev/cuda global_norm && build-dev-cuda/global_norm [n]
    add -DLLMC_FP32 for the fp32 build (fp32 gradients)
    (or `cmake --build build --target dev_cuda_global_norm`, program build/dev_cuda/global_norm)

Versions (all three write the same out[0..1]; all but v1 are deterministic). % of copy on an H200
(124.5M bf16 gradients), 2026-11-24:
  v1 atomics     each block sums its squares (a fixed tree), then atomicAdd's its sum into one
                 float. Correct to rounding, but the blocks finish in a different order every run,
                 float addition is not associative, so the bits change from run to run: why the
                 engine does not do this. 1024 blocks of 512 threads, 2-byte loads. 31.4%.
  v2 scalar (old engine)  the engine's first pass before issue 5, copied here because it is no
                 longer the engine's: NORM_BLOCKS = 1024 blocks of 512 threads each write one
                 partial sum (a fixed strided subset of the values, a fixed tree), 2-byte loads;
                 the engine's second kernel adds the 1024 partials in a fixed tree. The 1024
                 blocks of 512 threads do not fit on the GPU at once (two waves). 31.6%.
  v3 (engine)    global_norm() from llmc/global_norm.cuh: the same two passes and the same 1024
                 partials (so the same scratch), with 16-byte streaming loads, two of them in
                 flight per thread, and 256-thread blocks so that the 1024 blocks are resident at
                 once (8 per SM on 132 SMs). The values each thread sums differ from v2's, so its
                 bits differ from v2's (both are deterministic). 92.9% (91.6% in the run
                 before, as "v3 vectorized" when it still lived in this file).

Checks: each version on fresh random gradients per size (normal, std 1e-2): the full size and
odd ones (0, fewer values than a 16-byte packet, a pointer not 16-byte aligned), norm and clip
scale (clip 1.0) against a double-precision CPU sum to 1e-5; v2 and v3 run 10 times must give the
same bits (v1 prints how many different results its 10 runs gave); an inf or a NaN among the
gradients must give scale 0. Then each version is timed on the full size (3 warm-up runs, median
of 30): GB/s counts the gradients read once, as a % of the device-to-device copy bandwidth
(read + write) measured in the same run.
*/
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "llmc/global_norm.cuh"
#include "llmc/rand.h"
#include "common.cuh"

static const float CLIP = 1.0f;
static const double TOL = 1e-5;  // fp32 sums of up to 124.5M squares in a tree: ~1e-7 in practice
static const int REPEATS = 10;   // determinism runs

// ---- v1: atomics ------------------------------------------------------------------------------

#define NORM_V1_V2_THREADS 512

// this block's sum of g[i]^2 over a grid-stride loop of scalar loads (the same in every thread of
// the block afterwards); v1 and v2 differ only in where it goes
__device__ float block_sum_of_squares(const floatX* g, size_t n) {
    __shared__ float shared[32];
    float acc = 0.0f;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float x = to_float(g[i]);
        acc += x * x;
    }
    return block_sum(acc, shared);
}

// sum must hold 0 on entry; the order of the atomicAdd's is whatever order the blocks finish in
__global__ void norm_v1_kernel(float* sum, const floatX* g, size_t n) {
    const float acc = block_sum_of_squares(g, n);
    if (threadIdx.x == 0) atomicAdd(sum, acc);
}

// the sum lands in partial[0], the other partials are 0, and the engine's second kernel turns it
// into norm and scale
static void norm_v1(float* out, float* partial, const floatX* g, size_t n, float clip) {
    cudaCheck(cudaMemsetAsync(partial, 0, NORM_BLOCKS * sizeof(float)));
    norm_v1_kernel<<<NORM_BLOCKS, NORM_V1_V2_THREADS>>>(partial, g, n);
    cudaCheckLast();
    global_norm_finish_kernel<<<1, 1024>>>(out, partial, clip);
    cudaCheckLast();
}

// ---- v2: the engine's first pass before issue 5 (a copy: it is no longer the engine's) ----------

__global__ void norm_v2_partial_kernel(float* partial, const floatX* g, size_t n) {
    const float acc = block_sum_of_squares(g, n);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

static void norm_v2(float* out, float* partial, const floatX* g, size_t n, float clip) {
    norm_v2_partial_kernel<<<NORM_BLOCKS, NORM_V1_V2_THREADS>>>(partial, g, n);
    cudaCheckLast();
    global_norm_finish_kernel<<<1, 1024>>>(out, partial, clip);
    cudaCheckLast();
}

// ---- running and checking ---------------------------------------------------------------------

static const char* NAMES[4] = {"", "v1 atomics", "v2 scalar (old engine)", "v3 (engine)"};

static void run(int version, float* out, float* partial, const floatX* g, size_t n) {
    if (version == 1) norm_v1(out, partial, g, n, CLIP);
    else if (version == 2) norm_v2(out, partial, g, n, CLIP);
    else global_norm(out, partial, g, n, CLIP, 0);
}

static uint32_t float_bits(float x) {
    uint32_t b;
    memcpy(&b, &x, sizeof(b));
    return b;
}

// runs `version` on the host gradients h (copied to the device `offset` values past a 16-byte
// boundary); checks norm and scale against fp64, and determinism over REPEATS runs. Returns the
// worst relative error (infinity when a deterministic version's bits changed).
static double check(int version, const std::vector<floatX>& h, size_t offset, const char* label) {
    const size_t n = h.size();
    floatX* base = bench::device_alloc<floatX>(n + offset);
    if (n > 0) bench::copy_to_device(base + offset, h);
    float* out = bench::device_alloc<float>(2);
    float* partial = bench::device_alloc<float>(NORM_BLOCKS);

    double sum = 0.0;
    for (size_t i = 0; i < n; i++) sum += (double)to_float(h[i]) * (double)to_float(h[i]);
    const double norm = sqrt(sum);
    const double scale = norm > CLIP ? CLIP / norm : 1.0;

    std::set<std::pair<uint32_t, uint32_t>> results;  // distinct (norm, scale) bit patterns
    std::vector<float> first;
    for (int r = 0; r < REPEATS; r++) {
        bench::poison(out, 2);
        bench::poison(partial, NORM_BLOCKS);
        run(version, out, partial, base + offset, n);
        const std::vector<float> got = bench::to_host(out, 2);
        if (r == 0) first = got;
        results.insert({float_bits(got[0]), float_bits(got[1])});
    }
    char what[128];
    snprintf(what, sizeof(what), "%s %s: norm", NAMES[version], label);
    double err = bench::rel_error(std::vector<float>{first[0]}, std::vector<double>{norm});
    bench::check(what, err, TOL);
    snprintf(what, sizeof(what), "%s %s: clip scale", NAMES[version], label);
    const double err_scale = bench::rel_error(std::vector<float>{first[1]}, std::vector<double>{scale});
    bench::check(what, err_scale, TOL);
    err = std::max(err, err_scale);
    if (version == 1) {
        printf("      %s %s: %zu different results in %d runs (atomics)\n", NAMES[version], label, results.size(),
               REPEATS);
    } else {
        snprintf(what, sizeof(what), "%s %s: %d runs, same bits", NAMES[version], label, REPEATS);
        const double same = results.size() == 1 ? 0.0 : INFINITY;
        bench::check(what, same, 0.0);
        err = std::max(err, same);
    }
    cudaCheck(cudaFree(base));
    cudaCheck(cudaFree(out));
    cudaCheck(cudaFree(partial));
    return err;
}

// an inf or a NaN among the gradients: the scale must be 0 (AdamW then skips the step); returns 0
// when it is, infinity when not
static double check_non_finite(int version, float bad, Rng* rng) {
    std::vector<floatX> h = bench::random_normal<floatX>(rng, 4099, 0.0f, 1e-2f);
    h[1234] = from_float<floatX>(bad);
    floatX* g = bench::to_device(h);
    float* out = bench::device_alloc<float>(2);
    float* partial = bench::device_alloc<float>(NORM_BLOCKS);
    bench::poison(out, 2);
    run(version, out, partial, g, h.size());
    const std::vector<float> got = bench::to_host(out, 2);
    char what[96];
    snprintf(what, sizeof(what), "%s with a%s gradient: scale 0", NAMES[version], isnan(bad) ? " NaN" : "n inf");
    const double err = got[1] == 0.0f ? 0.0 : INFINITY;
    bench::check(what, err, 0.0);
    cudaCheck(cudaFree(g));
    cudaCheck(cudaFree(out));
    cudaCheck(cudaFree(partial));
    return err;
}

int main(int argc, char** argv) {
    size_t n = 124475904;  // GPT-2 124M's parameters
    if (argc == 2) {
        char* end = NULL;
        const long long v = strtoll(argv[1], &end, 10);
        if (end == argv[1] || *end != '\0' || v <= 0) {
            fprintf(stderr, "error: n must be a positive integer, got '%s'\n", argv[1]);
            return 1;
        }
        n = (size_t)v;
    } else if (argc != 1) {
        fprintf(stderr, "usage: %s [n]   (default 124475904, GPT-2 124M's gradients)\n", argv[0]);
        return 1;
    }
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    printf("global_norm: n=%zu, %s storage, %s (%d SMs)\n", n, LLMC_PRECISION_NAME, prop.name,
           prop.multiProcessorCount);
    const double copy_gbs = bench::copy_bandwidth_gbs();

    Rng rng;
    rng_init(&rng, 42);
    // the full size: one set of gradients for all versions (generating 124.5M normals takes seconds)
    const std::vector<floatX> big = bench::random_normal<floatX>(&rng, n, 0.0f, 1e-2f);
    char full[64];
    snprintf(full, sizeof(full), "n=%zu", n);
    double errs[4] = {0.0, 0.0, 0.0, 0.0};  // per version, the worst of its checks (its RESULT line)
    for (int version = 1; version <= 3; version++) {
        double e = check(version, big, 0, full);
        e = std::max(e, check(version, bench::random_normal<floatX>(&rng, 0, 0.0f, 1e-2f), 0, "n=0"));
        e = std::max(e, check(version, bench::random_normal<floatX>(&rng, 7, 0.0f, 1e-2f), 0, "n=7"));
        e = std::max(e, check(version, bench::random_normal<floatX>(&rng, 1000003, 0.0f, 1e-2f), 1,
                              "n=1000003 unaligned"));
        e = std::max(e, check_non_finite(version, INFINITY, &rng));
        e = std::max(e, check_non_finite(version, NAN, &rng));
        errs[version] = e;
    }

    // timings on the full size
    floatX* g = bench::to_device(big);
    float* out = bench::device_alloc<float>(2);
    float* partial = bench::device_alloc<float>(NORM_BLOCKS);
    char kernel[96];
    snprintf(kernel, sizeof(kernel), "global norm (n=%zu, %s)", n, LLMC_PRECISION_NAME);
    const double bytes = (double)n * sizeof(floatX);
    for (int version = 1; version <= 3; version++) {
        const double ms = bench::time_ms([&] { run(version, out, partial, g, n); });
        bench::report_memory(kernel, NAMES[version], errs[version], TOL, ms, bytes, copy_gbs);
    }
    return bench::finish();
}
