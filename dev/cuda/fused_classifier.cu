/*
Fused classifier (softmax + cross-entropy loss + dlogits in place): check and benchmark.

What it computes (llmc/fused_classifier.cuh has the formulas): for N rows of Vp logits of which the
first V are real tokens, the per-row loss log(sum_v exp(x_v - M)) + M - x_target (added, times
loss_weight, to losses[n]) and, over the logits, dlogits = (softmax(x) - onehot(target)) * dloss
for v < V and 0 for the padded columns. Shape of the benchmark: N = B*T = 65,536 rows (GPT-2 124M at
B = 64, T = 1024), V = 50,257, Vp = 50,304: the logits are 6.6 GB in bf16, far larger than the L2
cache, so every run reads and writes DRAM.

Build and run (from the repository root):
    make -C dev/cuda fused_classifier && build-dev-cuda/fused_classifier [N]
    add -DLLMC_FP32 for the fp32 build of the same kernels
(or `cmake --build build --target dev_cuda_fused_classifier`, program build/dev_cuda/fused_classifier)

Versions (all three are the production header's kernels, included, never copied; `version` is the
last argument of fused_classifier()):
  v1         one 1024-thread block per row, scalar loads, the row read twice from global memory
             (the engine's first kernel; now only for a Vp that is not a multiple of 16 bytes)
  v2-global  one 512-thread block per row, 16-byte loads and stores, the second pass re-reads the
             row from global memory (L2 hits if the row is still there); what runs when the row
             does not fit in shared memory (fp32 GPT-2)
  v2-staged  the same, with the row kept in shared memory between the passes: DRAM sees one read
             and one write.
  v3-persist one 1024-thread block per SM walking rows, row j+1 copied into shared memory
             (cp.async, double buffer) while row j is reduced and its dlogits written, so reads
             and writes overlap within an SM. What the engine runs when two rows fit in shared
             memory (GPT-2 in bf16).

Each version is checked against a double-precision CPU reference on fresh random inputs (logits
normal with std 3 plus a few large values, its dlogits poisoned with NaN first: an element left
unwritten fails), for several shapes (odd V, V close to Vp, a row too large for shared memory),
with accumulate on (losses start at a known value). It is run twice and must give identical bits
(determinism). Then each is timed on the full shape with CUDA events (3 warm-up runs, median of 20;
the logits are refilled before every run, outside the timed region, since the kernel overwrites
them). GB/s counts the bytes the kernel must move: read and write of N x Vp values (plus targets
and losses); % is of the device-to-device copy bandwidth measured in the same run.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "llmc/fused_classifier.cuh"
#include "llmc/rand.h"

static const int WARMUP = 3, REPS = 20;

#ifdef LLMC_FP32
static const double TOL_DLOGITS = 1e-5, TOL_LOSS = 1e-6;
#else
// dlogits are stored in bf16 (one rounding: 2^-9 relative); the loss is computed in fp32 from
// bf16 inputs that the reference reads exactly
static const double TOL_DLOGITS = 1e-2, TOL_LOSS = 1e-5;
#endif

static const char* VERSION_NAMES[4] = {"v1", "v2-global", "v2-staged", "v3-persist"};
static const int VERSIONS = 4;

// deterministic pseudo-random fill on the device (for the large benchmark buffer): normal-ish
// values with std ~3 from a sum of 4 uniforms
__global__ void fill_logits(floatX* x, size_t n, uint32_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float sum = 0.0f;
        for (int k = 0; k < 4; k++) sum += (float)hash_u32((uint32_t)(i * 4 + k), seed) * (1.0f / 4294967296.0f);
        x[i] = from_float<floatX>((sum - 2.0f) * 5.2f);
    }
}

struct CheckResult {
    double dlogits_err, loss_err;
    bool unwritten, deterministic;
};

// runs one version on N x Vp fresh random logits and compares with the fp64 reference
static CheckResult check(int version, int N, int V, int Vp, uint64_t seed) {
    Rng rng;
    rng_init(&rng, seed);
    std::vector<float> f((size_t)N * Vp);
    rng_normal_fill(&rng, f.data(), f.size(), 0.0f, 3.0f);
    std::vector<floatX> logits(f.size());
    for (size_t i = 0; i < f.size(); i++) logits[i] = from_float<floatX>(f[i]);
    std::vector<int> targets(N);
    for (int n = 0; n < N; n++) {
        targets[n] = (int)rng_below(&rng, (uint64_t)V);
        if (n % 3 == 0) logits[(size_t)n * Vp + targets[n]] = from_float<floatX>(25.0f);  // confident row
        if (n % 5 == 1) logits[(size_t)n * Vp + (n % V)] = from_float<floatX>(40.0f);       // large off-target
    }
    // the padded columns hold garbage that must be ignored
    for (int n = 0; n < N; n++)
        for (int v = V; v < Vp; v++) logits[(size_t)n * Vp + v] = from_float<floatX>(100.0f);
    const float loss_weight = 0.375f, dloss = loss_weight / (float)N, loss_start = 1.5f;

    floatX* d_logits;
    float* d_losses;
    int* d_targets;
    cudaCheck(cudaMalloc(&d_logits, logits.size() * sizeof(floatX)));
    cudaCheck(cudaMalloc(&d_losses, N * sizeof(float)));
    cudaCheck(cudaMalloc(&d_targets, N * sizeof(int)));
    cudaCheck(cudaMemcpy(d_targets, targets.data(), N * sizeof(int), cudaMemcpyHostToDevice));
    std::vector<floatX> out[2];
    std::vector<float> losses[2];
    for (int run = 0; run < 2; run++) {
        cudaCheck(cudaMemcpy(d_logits, logits.data(), logits.size() * sizeof(floatX), cudaMemcpyHostToDevice));
        std::vector<float> start(N, loss_start);
        cudaCheck(cudaMemcpy(d_losses, start.data(), N * sizeof(float), cudaMemcpyHostToDevice));
        fused_classifier(d_logits, d_losses, d_targets, N, V, Vp, dloss, loss_weight, 1, 1, 0, version);
        cudaCheck(cudaDeviceSynchronize());
        out[run].resize(logits.size());
        losses[run].resize(N);
        cudaCheck(cudaMemcpy(out[run].data(), d_logits, logits.size() * sizeof(floatX), cudaMemcpyDeviceToHost));
        cudaCheck(cudaMemcpy(losses[run].data(), d_losses, N * sizeof(float), cudaMemcpyDeviceToHost));
    }
    // a poisoned run: the kernel reads the logits and writes dlogits in place, so the poison is
    // the padded columns (NaN there must never reach the softmax) and the losses array
    {
        std::vector<floatX> poisoned = logits;
        for (int n = 0; n < N; n++)
            for (int v = V; v < Vp; v++) poisoned[(size_t)n * Vp + v] = from_float<floatX>(NAN);
        cudaCheck(cudaMemcpy(d_logits, poisoned.data(), poisoned.size() * sizeof(floatX), cudaMemcpyHostToDevice));
        std::vector<float> start(N, NAN);
        cudaCheck(cudaMemcpy(d_losses, start.data(), N * sizeof(float), cudaMemcpyHostToDevice));
        fused_classifier(d_logits, d_losses, d_targets, N, V, Vp, dloss, loss_weight, 1, 0, 0, version);
        cudaCheck(cudaDeviceSynchronize());
    }
    std::vector<floatX> out_p(logits.size());
    std::vector<float> losses_p(N);
    cudaCheck(cudaMemcpy(out_p.data(), d_logits, logits.size() * sizeof(floatX), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(losses_p.data(), d_losses, N * sizeof(float), cudaMemcpyDeviceToHost));
    cudaCheck(cudaFree(d_logits));
    cudaCheck(cudaFree(d_losses));
    cudaCheck(cudaFree(d_targets));

    CheckResult r = {0.0, 0.0, false, true};
    r.deterministic = memcmp(out[0].data(), out[1].data(), out[0].size() * sizeof(floatX)) == 0 &&
                      memcmp(losses[0].data(), losses[1].data(), N * sizeof(float)) == 0;
    double num = 0.0, den = 0.0, loss_num = 0.0, loss_den = 0.0;
    std::vector<double> p(V);
    for (int n = 0; n < N; n++) {
        const floatX* x = &logits[(size_t)n * Vp];
        double M = -INFINITY;
        for (int v = 0; v < V; v++) M = std::max(M, (double)to_float(x[v]));
        double S = 0.0;
        for (int v = 0; v < V; v++) S += exp((double)to_float(x[v]) - M);
        const double loss = log(S) + M - (double)to_float(x[targets[n]]);
        for (int which = 0; which < 2; which++) {
            const double ref = which == 0 ? loss_start + loss * loss_weight : loss * loss_weight;
            const double got = which == 0 ? losses[0][n] : losses_p[n];
            if (!std::isfinite(got)) r.unwritten = true;
            loss_num += (got - ref) * (got - ref);
            loss_den += ref * ref;
        }
        for (int v = 0; v < Vp; v++) {
            const double ref = v < V ? (exp((double)to_float(x[v]) - M) / S - (v == targets[n])) * dloss : 0.0;
            for (int which = 0; which < 2; which++) {
                const double got = to_float(which == 0 ? out[0][(size_t)n * Vp + v] : out_p[(size_t)n * Vp + v]);
                if (!std::isfinite(got)) r.unwritten = true;
                num += (got - ref) * (got - ref);
                den += ref * ref;
            }
        }
    }
    r.dlogits_err = sqrt(num / den);
    r.loss_err = sqrt(loss_num / loss_den);
    return r;
}

// median time of fn() in ms over REPS runs after WARMUP; before(), untimed, runs before each
template <typename Before, typename Fn>
static float time_ms(Before before, Fn fn) {
    cudaEvent_t start, stop;
    cudaCheck(cudaEventCreate(&start));
    cudaCheck(cudaEventCreate(&stop));
    std::vector<float> ms(REPS);
    for (int i = 0; i < WARMUP + REPS; i++) {
        before();
        cudaCheck(cudaEventRecord(start));
        fn();
        cudaCheck(cudaEventRecord(stop));
        cudaCheck(cudaEventSynchronize(stop));
        float t;
        cudaCheck(cudaEventElapsedTime(&t, start, stop));
        if (i >= WARMUP) ms[i - WARMUP] = t;
    }
    cudaCheck(cudaEventDestroy(start));
    cudaCheck(cudaEventDestroy(stop));
    std::sort(ms.begin(), ms.end());
    return ms[REPS / 2];
}

int main(int argc, char** argv) {
    const int N = argc > 1 ? atoi(argv[1]) : 65536;
    if (N <= 0) {
        fprintf(stderr, "usage: %s [N > 0]\n", argv[0]);
        return 1;
    }
    const int V = 50257, Vp = 50304;
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    printf("fused classifier, %s, %s\n", LLMC_PRECISION_NAME, prop.name);
    printf("engine version for Vp = %d: %s\n", Vp, VERSION_NAMES[fused_classifier_version(Vp)]);

    // ---- correctness
    struct Shape {
        int N, V, Vp;
    };
    // GPT-2; V = Vp - 1; tiny vocab; a row too large for shared memory (v2-staged falls back)
    const Shape shapes[] = {{96, 50257, 50304}, {64, 1023, 1024}, {257, 77, 128}, {16, 65000, 65024}};
    bool ok = true;
    for (int version = 0; version < VERSIONS; version++) {
        for (const Shape& sh : shapes) {
            const CheckResult r = check(version, sh.N, sh.V, sh.Vp, 1000 + sh.N + version);
            const bool pass = !r.unwritten && r.deterministic && r.dlogits_err <= TOL_DLOGITS && r.loss_err <= TOL_LOSS;
            ok = ok && pass;
            printf("check %-9s N=%5d V=%5d Vp=%5d  dlogits rel err %.2e  loss rel err %.2e  %s%s  %s\n",
                   VERSION_NAMES[version], sh.N, sh.V, sh.Vp, r.dlogits_err, r.loss_err,
                   r.unwritten ? "UNWRITTEN/NaN " : "", r.deterministic ? "deterministic" : "NOT DETERMINISTIC",
                   pass ? "ok" : "FAIL");
        }
    }

    // ---- timing
    const size_t count = (size_t)N * Vp;
    floatX* d_logits;
    float* d_losses;
    int* d_targets;
    cudaCheck(cudaMalloc(&d_logits, count * sizeof(floatX)));
    cudaCheck(cudaMalloc(&d_losses, N * sizeof(float)));
    cudaCheck(cudaMalloc(&d_targets, N * sizeof(int)));
    std::vector<int> targets(N);
    Rng rng;
    rng_init(&rng, 7);
    for (int n = 0; n < N; n++) targets[n] = (int)rng_below(&rng, V);
    cudaCheck(cudaMemcpy(d_targets, targets.data(), N * sizeof(int), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemset(d_losses, 0, N * sizeof(float)));

    // copy bandwidth: read + write of 2 GiB
    const size_t copy_bytes = (size_t)2 << 30;
    void *src, *dst;
    cudaCheck(cudaMalloc(&src, copy_bytes));
    cudaCheck(cudaMalloc(&dst, copy_bytes));
    cudaCheck(cudaMemset(src, 0, copy_bytes));
    const float copy_ms =
        time_ms([] {}, [&] { cudaCheck(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice)); });
    const double copy_gbs = 2.0 * copy_bytes / (copy_ms * 1e-3) / 1e9;
    cudaCheck(cudaFree(src));
    cudaCheck(cudaFree(dst));
    printf("device copy: %.1f GB/s (read + write)\n", copy_gbs);

    const double bytes = 2.0 * count * sizeof(floatX) + N * (sizeof(int) + 2 * sizeof(float));
    const double bytes_fwd = 1.0 * count * sizeof(floatX) + N * (sizeof(int) + sizeof(float));
    printf("N=%d V=%d Vp=%d: logits %.2f GB\n", N, V, Vp, count * sizeof(floatX) / 1e9);
    auto refill = [&] {
        fill_logits<<<prop.multiProcessorCount * 8, 256>>>(d_logits, count, 1234);
        cudaCheckLast();
    };
    for (int version = 0; version < VERSIONS; version++) {
        const float ms = time_ms(refill, [&] {
            fused_classifier(d_logits, d_losses, d_targets, N, V, Vp, 1.0f / N, 1.0f, 1, 0, 0, version);
        });
        const double gbs = bytes / (ms * 1e-3) / 1e9;
        printf("time %-9s loss + dlogits: %8.3f ms  %7.1f GB/s  %5.1f%% of copy\n", VERSION_NAMES[version], ms, gbs,
               100.0 * gbs / copy_gbs);
    }
    for (int version = 0; version < VERSIONS; version++) {
        const float ms = time_ms([] {}, [&] {
            fused_classifier(d_logits, d_losses, d_targets, N, V, Vp, 0.0f, 1.0f, 0, 0, 0, version);
        });
        const double gbs = bytes_fwd / (ms * 1e-3) / 1e9;
        printf("time %-9s loss only     : %8.3f ms  %7.1f GB/s  %5.1f%% of copy (read only)\n",
               VERSION_NAMES[version], ms, gbs, 100.0 * gbs / copy_gbs);
    }
    cudaCheck(cudaFree(d_logits));
    cudaCheck(cudaFree(d_losses));
    cudaCheck(cudaFree(d_targets));
    printf("%s\n", ok ? "all checks passed" : "SOME CHECKS FAILED");
    return ok ? 0 : 1;
}
