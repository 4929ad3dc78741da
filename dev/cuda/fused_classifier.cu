/*
Fused classifier (softmax + cross-entropy loss + dlogits in place): check and benchmark.

What it computes (llmc/fused_classifier.cuh has the formulas): for N rows of Vp logits of which the
first V are real tokens, the per-row loss log(sum_v exp(x_v - M)) + M - x_target (added, times
loss_weight, to losses[n]) and, over the logits, dlogits = (softmax(x) - onehot(target)) * dloss
for v < V and 0 for the padded columns. Shape of the benchmark: N = B*T = 65,536 rows (GPT-2 124M at
B = 64, T = 1024), V = 50,257, Vp = 50,304: the logits are 6.6 GB in bf16, far larger than the L2
cache, so every run reads and writes DRAM.

Build and run (from the repository root):
    make -C dev/cuda fused_classifier && build-dev-cuda/fused_classifier [N [version]]
    (N rows, default 65536; a version number 0..11 checks and times that version alone)
    add -DLLMC_FP32 for the fp32 build of the same kernels
(or `cmake --build build --target dev_cuda_fused_classifier`, program build/dev_cuda/fused_classifier)

Versions (all are the production header's kernels, included, never copied; `version` is the last
argument of fused_classifier(); the header's top comment says more about each):
  v1           one 1024-thread block per row, scalar loads, the row read twice from global memory
               (the engine's first kernel; now only for a Vp that is not a multiple of 16 bytes)
  v2-global    one 512-thread block per row, 16-byte loads and stores, the second pass re-reads
               the row from global memory (L2 hits if the row is still there)
  v2-staged    the same, with the row kept in shared memory between the passes
  v3-persist   one 1024-thread block per SM walking rows, row j+1 copied into shared memory
               (cp.async, double buffer) while row j is reduced and its dlogits written
  v4-lean      v3's structure with a few instructions per element: exact bf16x2 max, then one
               FMA + ex2.approx + add per element, one barrier per row, scale folded into the
               exponent of pass 2, no per-element bound or target tests. The engine for bf16
               GPT-2 (two rows fit in shared memory)
  v5-stream    v4 + streaming cache hints: loads with an L2 evict-first policy, st.global.cs stores
  v6-poly2     v5 with 2 of every 8 exponentials of the write pass on the FMA pipe (polynomial)
  v7-poly4     v5 with 4 of every 8 on the FMA pipe
  v8-512       v6 with 512-thread blocks (one per SM, twice the packets per thread)
  v9-2cta      v6's arithmetic, one row buffer per 512-thread block and two blocks per SM; the
               engine when two rows do not fit (fp32 GPT-2)
  v10-cluster2 v6's arithmetic, each row split over a 2-block cluster (distributed shared memory
               for the row's max and sum), half-row double buffers, two blocks per SM
  v11-cluster4 the same with 4 blocks of 256 threads per row, quarter-row buffers, four per SM
A version whose rows do not fit in shared memory at a shape (two fp32 rows, say) runs v2-global.

Each version is checked against a double-precision CPU reference on fresh random inputs (logits
normal with std 3 plus a few large values), for several shapes (odd V, V close to Vp, a row too
large for shared memory), four runs each: twice with accumulate on (losses start at a known value;
the two must give identical bits: determinism), once poisoned (NaN in the padded columns, which must
never reach the softmax and must come out as zero gradient, and NaN losses with accumulate off), and
once in loss-only mode (write_dlogits = 0: the logits must come back untouched, bit for bit). Errors
are max |ours - ref| / max |ref| (common.cuh). Then each version is timed on the full shape
(bench::time_ms: 3 warm-up runs, median of 30; the logits are refilled before every run, outside
the timed region, since the kernel overwrites them). GB/s counts the bytes the kernel must move:
read and write of N x Vp values plus targets and losses (loss only: one read); % is of the
device-to-device copy bandwidth measured in the same run (read + write; a read-only pass can go
past 100% of it).
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <string>
#include <vector>

#include "llmc/fused_classifier.cuh"
#include "dev/cuda/common.cuh"

#ifdef LLMC_FP32
static const double TOL_DLOGITS = 1e-5, TOL_LOSS = 1e-6;
#else
// dlogits are stored in bf16 (one rounding: 2^-9 relative); the loss is computed in fp32 from
// bf16 inputs that the reference reads exactly
static const double TOL_DLOGITS = 1e-2, TOL_LOSS = 1e-5;
#endif

static const char* VERSION_NAMES[CLS_VERSIONS] = {"v1",      "v2-global", "v2-staged",    "v3-persist",
                                                  "v4-lean", "v5-stream", "v6-poly2",     "v7-poly4",
                                                  "v8-512",  "v9-2cta",   "v10-cluster2", "v11-cluster4"};

// deterministic pseudo-random fill on the device (for the large benchmark buffer): normal-ish
// values with std ~3 from a sum of 4 uniforms
__global__ void fill_logits(floatX* x, size_t n, uint32_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float sum = 0.0f;
        for (int k = 0; k < 4; k++) sum += (float)hash_u32((uint32_t)(i * 4 + k), seed) * (1.0f / 4294967296.0f);
        x[i] = from_float<floatX>((sum - 2.0f) * 5.2f);
    }
}

// worst errors of one version over the check shapes; INFINITY marks a failed bit-level check
struct Errors {
    double dlogits = 0.0, loss = 0.0, loss_only = 0.0;
};

// runs one version on N x Vp fresh random logits, compares with the fp64 reference and records
// the checks; folds its errors into `worst`
static void check(int version, int N, int V, int Vp, uint64_t seed, Errors* worst) {
    Rng rng;
    rng_init(&rng, seed);
    std::vector<floatX> logits = bench::random_normal<floatX>(&rng, (size_t)N * Vp, 0.0f, 3.0f);
    std::vector<int> targets(N);
    for (int n = 0; n < N; n++) {
        targets[n] = (int)rng_below(&rng, (uint64_t)V);
        if (n % 3 == 0) logits[(size_t)n * Vp + targets[n]] = from_float<floatX>(25.0f);  // confident row
        if (n % 5 == 1) logits[(size_t)n * Vp + (n % V)] = from_float<floatX>(40.0f);       // large off-target
    }
    // the padded columns hold garbage that must be ignored (large values here, NaN when poisoned)
    std::vector<floatX> poisoned = logits;
    for (int n = 0; n < N; n++) {
        for (int v = V; v < Vp; v++) {
            logits[(size_t)n * Vp + v] = from_float<floatX>(100.0f);
            poisoned[(size_t)n * Vp + v] = from_float<floatX>(NAN);
        }
    }
    const float loss_weight = 0.375f, dloss = loss_weight / (float)N, loss_start = 1.5f;

    floatX* d_logits = bench::to_device(logits);
    float* d_losses = bench::device_alloc<float>(N);
    int* d_targets = bench::to_device(targets);
    const std::vector<float> start(N, loss_start);
    // two identical runs with accumulate on (determinism)
    std::vector<floatX> out[2];
    std::vector<float> losses[2];
    for (int run = 0; run < 2; run++) {
        bench::copy_to_device(d_logits, logits);
        bench::copy_to_device(d_losses, start);
        fused_classifier(d_logits, d_losses, d_targets, N, V, Vp, dloss, loss_weight, 1, 1, 0, version);
        cudaCheck(cudaDeviceSynchronize());
        out[run] = bench::to_host(d_logits, logits.size());
        losses[run] = bench::to_host(d_losses, N);
    }
    // poisoned: NaN in the padded columns and in the losses (accumulate off overwrites them)
    bench::copy_to_device(d_logits, poisoned);
    bench::poison(d_losses, N);
    fused_classifier(d_logits, d_losses, d_targets, N, V, Vp, dloss, loss_weight, 1, 0, 0, version);
    cudaCheck(cudaDeviceSynchronize());
    const std::vector<floatX> out_poisoned = bench::to_host(d_logits, logits.size());
    const std::vector<float> losses_poisoned = bench::to_host(d_losses, N);
    // loss only: the logits must be left as they are
    bench::copy_to_device(d_logits, poisoned);
    bench::poison(d_losses, N);
    fused_classifier(d_logits, d_losses, d_targets, N, V, Vp, 0.0f, loss_weight, 0, 0, 0, version);
    cudaCheck(cudaDeviceSynchronize());
    const std::vector<floatX> out_loss_only = bench::to_host(d_logits, logits.size());
    const std::vector<float> losses_loss_only = bench::to_host(d_losses, N);
    cudaCheck(cudaFree(d_logits));
    cudaCheck(cudaFree(d_losses));
    cudaCheck(cudaFree(d_targets));

    // fp64 reference
    std::vector<double> ref_dlogits((size_t)N * Vp), ref_loss(N), ref_loss_acc(N);
    for (int n = 0; n < N; n++) {
        const floatX* x = &logits[(size_t)n * Vp];
        double M = -INFINITY;
        for (int v = 0; v < V; v++) M = std::max(M, (double)to_float(x[v]));
        double S = 0.0;
        for (int v = 0; v < V; v++) S += exp((double)to_float(x[v]) - M);
        const double loss = log(S) + M - (double)to_float(x[targets[n]]);
        ref_loss[n] = loss * loss_weight;
        ref_loss_acc[n] = loss_start + loss * loss_weight;
        for (int v = 0; v < Vp; v++) {
            ref_dlogits[(size_t)n * Vp + v] =
                v < V ? (exp((double)to_float(x[v]) - M) / S - (v == targets[n] ? 1.0 : 0.0)) * dloss : 0.0;
        }
    }
    char what[96];
    const char* name = VERSION_NAMES[version];
    snprintf(what, sizeof(what), "%s N=%d V=%d Vp=%d", name, N, V, Vp);
    const bool same = bench::same_bits(out[0], out[1]) && bench::same_bits(losses[0], losses[1]);
    const double e_dlogits = std::max(bench::rel_error(out[0], ref_dlogits), bench::rel_error(out_poisoned, ref_dlogits));
    const double e_loss = std::max(bench::rel_error(losses[0], ref_loss_acc), bench::rel_error(losses_poisoned, ref_loss));
    const double e_loss_only = bench::rel_error(losses_loss_only, ref_loss);
    const bool untouched = bench::same_bits(out_loss_only, poisoned);
    std::string label = std::string(what) + " dlogits";
    bench::check(label.c_str(), e_dlogits, TOL_DLOGITS);
    label = std::string(what) + " loss";
    bench::check(label.c_str(), e_loss, TOL_LOSS);
    label = std::string(what) + " loss only";
    bench::check(label.c_str(), e_loss_only, TOL_LOSS);
    label = std::string(what) + " deterministic (0: same bits)";
    bench::check(label.c_str(), same ? 0.0 : INFINITY, 0.0);
    label = std::string(what) + " loss only keeps logits (0: same bits)";
    bench::check(label.c_str(), untouched ? 0.0 : INFINITY, 0.0);
    // a failed bit-level check fails the version's result lines too
    worst->dlogits = std::max(worst->dlogits, same ? e_dlogits : INFINITY);
    worst->loss = std::max(worst->loss, e_loss);
    worst->loss_only = std::max(worst->loss_only, untouched ? e_loss_only : INFINITY);
}

int main(int argc, char** argv) {
    const int N = argc > 1 ? atoi(argv[1]) : 65536;
    const int only = argc > 2 ? atoi(argv[2]) : -1;  // one version, or all
    if (N <= 0 || only < -1 || only >= CLS_VERSIONS) {
        fprintf(stderr, "usage: %s [N > 0 [version 0..%d]]\n", argv[0], CLS_VERSIONS - 1);
        return 1;
    }
    const int first = only < 0 ? 0 : only, last = only < 0 ? CLS_VERSIONS - 1 : only;
    setvbuf(stdout, NULL, _IOLBF, 0);  // line by line into a log, even if a later version hangs
    const int V = 50257, Vp = 50304;
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    const int engine = fused_classifier_version(Vp);
    printf("fused classifier, %s, %s\n", LLMC_PRECISION_NAME, prop.name);
    printf("engine version for Vp = %d: %s\n", Vp, VERSION_NAMES[engine]);

    // ---- correctness
    struct Shape {
        int N, V, Vp;
    };
    // GPT-2; V = Vp - 1; tiny vocab; a row too large for two in shared memory
    const Shape shapes[] = {{96, 50257, 50304}, {64, 1023, 1024}, {257, 77, 128}, {16, 65000, 65024}};
    std::vector<Errors> errors(CLS_VERSIONS);
    for (int version = first; version <= last; version++) {
        for (const Shape& sh : shapes) check(version, sh.N, sh.V, sh.Vp, 1000 + sh.N + version, &errors[version]);
    }

    // ---- timing
    const size_t count = (size_t)N * Vp;
    floatX* d_logits = bench::device_alloc<floatX>(count);
    float* d_losses = bench::device_alloc<float>(N);
    std::vector<int> targets(N);
    Rng rng;
    rng_init(&rng, 7);
    for (int n = 0; n < N; n++) targets[n] = (int)rng_below(&rng, V);
    int* d_targets = bench::to_device(targets);
    cudaCheck(cudaMemset(d_losses, 0, N * sizeof(float)));

    const double copy_gbs = bench::copy_bandwidth_gbs((size_t)2 << 30);
    const double bytes = 2.0 * count * sizeof(floatX) + N * (sizeof(int) + 2 * sizeof(float));
    const double bytes_read = 1.0 * count * sizeof(floatX) + N * (sizeof(int) + sizeof(float));
    printf("N=%d V=%d Vp=%d: logits %.2f GB\n", N, V, Vp, count * sizeof(floatX) / 1e9);
    char kernel[96], kernel_read[96];
    snprintf(kernel, sizeof(kernel), "fused classifier loss + dlogits (N=%d Vp=%d)", N, Vp);
    snprintf(kernel_read, sizeof(kernel_read), "fused classifier loss only (read) (N=%d Vp=%d)", N, Vp);
    auto refill = [&] {
        fill_logits<<<prop.multiProcessorCount * 8, 256>>>(d_logits, count, 1234);
        cudaCheckLast();
    };
    auto label = [&](int version) {
        return std::string(VERSION_NAMES[version]) + (version == engine ? " (engine)" : "");
    };
    for (int version = first; version <= last; version++) {
        const double ms = bench::time_ms(refill, [&] {
            fused_classifier(d_logits, d_losses, d_targets, N, V, Vp, 1.0f / N, 1.0f, 1, 0, 0, version);
        });
        const double err = errors[version].loss <= TOL_LOSS ? errors[version].dlogits : INFINITY;
        bench::report_memory(kernel, label(version), err, TOL_DLOGITS, ms, bytes, copy_gbs);
    }
    refill();
    for (int version = first; version <= last; version++) {
        const double ms = bench::time_ms([&] {
            fused_classifier(d_logits, d_losses, d_targets, N, V, Vp, 0.0f, 1.0f, 0, 0, 0, version);
        });
        bench::report_memory(kernel_read, label(version), errors[version].loss_only, TOL_LOSS, ms, bytes_read,
                             copy_gbs);
    }
    cudaCheck(cudaFree(d_logits));
    cudaCheck(cudaFree(d_losses));
    cudaCheck(cudaFree(d_targets));
    return bench::finish();
}
