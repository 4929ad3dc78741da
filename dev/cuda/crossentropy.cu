/*
Cross-entropy loss and its gradient: check and benchmark of what fusing the kernels saves.

What it computes: logits x (N, Vp) in floatX, of which the first V columns are real (Vp is the
padded vocabulary), and targets (N) int in [0, V). Per row n, with M = max_{v<V} x[n, v] and
S = sum_{v<V} exp(x[n, v] - M):
    loss[n]       = -log softmax(x[n])[target] = log S + M - x[n, target]        (fp32)
    dlogits[n, v] = (exp(x[n, v] - M) / S - [v == target]) / N     for v < V     (floatX)
    dlogits[n, v] = 0                                              for the padding
1/N is d(mean loss)/d(loss[n]). The padded columns are never part of the softmax.

Shape: N = 16,384 (GPT-2 at B = 16, T = 1,024), V = 50,257, Vp = 50,304. Each (N, Vp) tensor is
1.65 GB in bf16, far larger than the 50 MB L2: every run reads and writes DRAM.
(dev/cuda/fused_classifier.cu times the engine's kernels one by one at N = 65,536.)

Build and run (from the repository root):
    make -C dev/cuda crossentropy && build-dev-cuda/crossentropy [N]
    (or: nvcc -O3 -std=c++17 -gencode arch=compute_90,code=sm_90 -I. dev/cuda/crossentropy.cu ...)
    add -DLLMC_FP32 for fp32 storage.

Versions:
  v1  unfused, three kernels, as a framework runs them one operator at a time:
        softmax        logits -> probs (N, Vp), written to DRAM
        loss           loss[n] = -log probs[n, target], one thread per row
        dlogits        (probs - onehot) / N, elementwise
      Each kernel is efficient on its own (16-byte loads and stores), but the probabilities make
      a round trip through DRAM: 4 (N, Vp) tensors are read or written instead of 2, and they take
      a third (N, Vp) buffer. The loss also inherits probs' bf16 rounding (up to 2^-8 nats) and
      would be infinite for a target probability below fp32's range.
  v2  fused, one kernel, one 1024-thread block per row: pass 1 reads the row for the max and the
      sum (online softmax), thread 0 writes the loss as log S + M - x[target] (no log of a rounded
      probability), pass 2 reads the row again and writes dlogits to their own buffer. The second
      read is mostly an L2 hit: two blocks per SM keep 264 rows (26 MB) in flight, under the L2.
  v3  the engine's fused_classifier (llmc/fused_classifier.cuh, included, never copied), in place:
      dlogits overwrite the logits, so no second (N, Vp) buffer exists at all. Its kernels are
      compared one by one in dev/cuda/fused_classifier.cu.

Checks. Every version on fresh random inputs generated on the device: logits with std 3, every
7th row shifted by +100, every 5th row with a spike of +40 off target, every 3rd row with +25 at
its target (a confident row: loss under 1e-4, a target gradient (p - 1)/N that cancels), the padded
columns NaN. Outputs are poisoned first (losses and dlogits NaN; for the in-place engine the NaN
padding is the poison, and a logit it forgot to overwrite is 10^4 times larger than any
gradient). Each version runs twice (the same bits both times) and is compared with a double CPU
reference from the same bf16 logits: on 48 sampled rows at the timed shape (first, last, random;
every loss must be finite), on every row of the smaller shapes (odd V, a row too long for shared
memory, a short row).
  - dlogits, non-target columns: |ours - ref| / ref; target column: |ours - ref| / (1/N) (its
    value is (p - 1)/N, which cancels for confident rows); padding: exactly 0. bf16 tolerance 5e-3:
    one rounding to bf16 is at most 2^-8 = 3.9e-3 relative, the fp32 arithmetic adds ~1e-5. v1
    rounds twice (probs, then dlogits): 1e-2. fp32 build: 1e-4.
  - loss, absolute in nats: 1e-4 (fp32 arithmetic on values up to ~150: ~1e-5); v1 in bf16 5e-3
    (-log of a probability rounded to bf16: up to 2^-8 nats).
Timing: 3 warm-up runs, median of 30 (CUDA events); the engine's logits are refilled before each
run, outside the timed region. GB/s counts the bytes each version must move (v1: 4 (N, Vp)
tensors; v2 and the engine: 2; plus targets and losses), as % of the device-to-device copy
bandwidth measured in the same run.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <algorithm>
#include <string>
#include <vector>

#include "llmc/fused_classifier.cuh"
#include "common.cuh"

#ifdef LLMC_FP32
static const double TOL_GRAD[4] = {0, 1e-4, 1e-4, 1e-4}, TOL_LOSS[4] = {0, 1e-4, 1e-4, 1e-4};
#else
static const double TOL_GRAD[4] = {0, 1e-2, 5e-3, 5e-3}, TOL_LOSS[4] = {0, 5e-3, 1e-4, 1e-4};
#endif
static const char* VERSION_NAMES[4] = {"", "v1 unfused (3 kernels)", "v2 fused", "v3 fused_classifier (engine)"};

#define CE_THREADS 1024

// ---- pass 1, shared by v1's softmax and v2 -------------------------------------------------------
// Each thread folds the packets t, t + 1024, ... into a running max m and a sum s of exp(x - m)
// (rescaled when m grows), then the block agrees on M and S = sum exp(x - M) (block_max and
// block_sum: warp shuffles, then shared memory). Plain cached loads: pass 2 reads the row again.
__device__ static void row_max_sum(const floatX* row, int V, int Vp, float* shared, float* M, float* S) {
    float m = -INFINITY, s = 0.0f;
    for (int i = threadIdx.x; i < Vp / X128; i += CE_THREADS) {
        const x128 p = load128(row + (size_t)i * X128);
#pragma unroll
        for (int k = 0; k < X128; k++) {
            if (i * X128 + k >= V) continue;  // the padding
            const float x = to_float(p.v[k]);
            if (x > m) {
                s *= expf(m - x);  // 0 while m is -inf
                m = x;
            }
            s += expf(x - m);
        }
    }
    *M = block_max(m, shared);
    *S = block_sum(m == -INFINITY ? 0.0f : s * expf(m - *M), shared);
}

// ---- v1: three kernels -------------------------------------------------------------------------
__global__ void __launch_bounds__(CE_THREADS, 2) softmax_kernel(floatX* probs, const floatX* logits, int V, int Vp) {
    __shared__ float shared[32];
    const size_t offset = (size_t)blockIdx.x * Vp;
    float M, S;
    row_max_sum(logits + offset, V, Vp, shared, &M, &S);
    const float inv_S = 1.0f / S;
    for (int i = threadIdx.x; i < Vp / X128; i += CE_THREADS) {
        const x128 p = load128cs(logits + offset + (size_t)i * X128);  // last read: streaming
        x128 out;
        for (int k = 0; k < X128; k++) {
            const int v = i * X128 + k;
            out.v[k] = from_float<floatX>(v < V ? expf(to_float(p.v[k]) - M) * inv_S : 0.0f);
        }
        store128(probs + offset + (size_t)i * X128, out);
    }
}

__global__ void loss_from_probs_kernel(float* losses, const floatX* probs, const int* targets, int N, int Vp) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n < N) losses[n] = -logf(to_float(probs[(size_t)n * Vp + targets[n]]));
}

// one 16-byte packet per thread; no packet straddles two rows since Vp % X128 == 0
__global__ void dlogits_from_probs_kernel(floatX* dlogits, const floatX* probs, const int* targets, int N, int V,
                                          int Vp, float dloss) {
    const size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    const int per_row = Vp / X128;
    if (i >= (size_t)N * per_row) return;
    const int n = (int)(i / per_row), first = (int)(i % per_row) * X128, target = targets[n];
    const x128 p = load128cs(probs + i * X128);
    x128 g;
    for (int k = 0; k < X128; k++) {
        const int v = first + k;
        g.v[k] = from_float<floatX>(v < V ? (to_float(p.v[k]) - (v == target ? 1.0f : 0.0f)) * dloss : 0.0f);
    }
    store128(dlogits + i * X128, g);
}

// ---- v2: one fused kernel ------------------------------------------------------------------------
__global__ void __launch_bounds__(CE_THREADS, 2)
    crossentropy_fused_kernel(floatX* dlogits, float* losses, const floatX* logits, const int* targets, int V, int Vp,
                              float dloss) {
    __shared__ float shared[32];
    const size_t offset = (size_t)blockIdx.x * Vp;
    float M, S;
    row_max_sum(logits + offset, V, Vp, shared, &M, &S);
    const int target = targets[blockIdx.x];
    if (threadIdx.x == 0) losses[blockIdx.x] = logf(S) + M - to_float(logits[offset + target]);
    const float scale = dloss / S;
    for (int i = threadIdx.x; i < Vp / X128; i += CE_THREADS) {
        const x128 p = load128cs(logits + offset + (size_t)i * X128);
        x128 g;
        for (int k = 0; k < X128; k++) {
            const int v = i * X128 + k;
            float value = 0.0f;
            if (v < V) value = expf(to_float(p.v[k]) - M) * scale - (v == target ? dloss : 0.0f);
            g.v[k] = from_float<floatX>(value);
        }
        store128(dlogits + offset + (size_t)i * X128, g);
    }
}

// ---- running the versions ----------------------------------------------------------------------
struct Buffers {
    floatX *logits, *probs, *dlogits;  // probs: v1 only; dlogits: v1 and v2 (the engine writes into logits)
    float* losses;
    int* targets;
};

static floatX* grad_of(int version, const Buffers& b) { return version == 3 ? b.logits : b.dlogits; }

static void crossentropy_run(int version, const Buffers& b, int N, int V, int Vp) {
    const float dloss = 1.0f / (float)N;
    if (version == 1) {
        softmax_kernel<<<N, CE_THREADS>>>(b.probs, b.logits, V, Vp);
        cudaCheckLast();
        loss_from_probs_kernel<<<ceil_div(N, 256), 256>>>(b.losses, b.probs, b.targets, N, Vp);
        cudaCheckLast();
        const size_t packets = (size_t)N * (Vp / X128);
        dlogits_from_probs_kernel<<<(unsigned)ceil_div_sz(packets, 256), 256>>>(b.dlogits, b.probs, b.targets, N, V,
                                                                                 Vp, dloss);
        cudaCheckLast();
    } else if (version == 2) {
        crossentropy_fused_kernel<<<N, CE_THREADS>>>(b.dlogits, b.losses, b.logits, b.targets, V, Vp, dloss);
        cudaCheckLast();
    } else {
        fused_classifier(b.logits, b.losses, b.targets, N, V, Vp, dloss, 1.0f, 1, 0, (cudaStream_t)0);
    }
}

// bytes a version must move: the (N, Vp) tensors it reads or writes, plus targets and losses
static double bytes_moved(int version, int N, int Vp) {
    const double tensor = (double)N * Vp * sizeof(floatX);
    if (version == 1) return 4.0 * tensor + N * (2.0 * sizeof(int) + sizeof(floatX) + sizeof(float));
    return 2.0 * tensor + N * (sizeof(int) + sizeof(float));
}

// ---- inputs and the reference --------------------------------------------------------------------
// Random logits (bench::fill_logits, common.cuh): std 3, |x| <= 10.4, with the spikes, the +25 on
// some targets and the +100 shifts described on top; padding NaN.
static void fill(const Buffers& b, int N, int V, int Vp, uint32_t seed) {
    bench::fill_logits(b.logits, b.targets, N, V, Vp, seed);
}

struct Shape {
    int N, V, Vp, samples;
};

struct Checked {
    double grad_err, loss_err;  // as in the comment on top; INFINITY: NaN, not deterministic
};

static Checked check_version(int version, const Buffers& b, const Shape& sh, uint32_t seed) {
    const int N = sh.N, V = sh.V, Vp = sh.Vp;
    const size_t count = (size_t)N * Vp;
    Rng rng;
    rng_init(&rng, seed);
    std::vector<int> targets(N);
    for (int n = 0; n < N; n++) targets[n] = (int)rng_below(&rng, (uint64_t)V);
    bench::copy_to_device(b.targets, targets);
    const std::vector<int> rows = bench::rows_to_check(N, sh.samples, &rng);
    std::vector<floatX> x, got[2];
    std::vector<float> losses[2];
    for (int run = 0; run < 2; run++) {
        fill(b, N, V, Vp, seed);  // again for the second run: the engine overwrote the logits
        if (run == 0) x = bench::copy_rows(b.logits, Vp, rows);
        bench::poison(b.probs, count);
        bench::poison(b.dlogits, count);
        bench::poison(b.losses, N);
        crossentropy_run(version, b, N, V, Vp);
        cudaCheck(cudaDeviceSynchronize());
        got[run] = bench::copy_rows(grad_of(version, b), Vp, rows);
        losses[run] = bench::to_host(b.losses, N);
    }
    Checked c = {0.0, 0.0};
    if (!bench::same_bits(got[0], got[1]) || !bench::same_bits(losses[0], losses[1])) {
        printf("%s: two runs on the same input differ\n", VERSION_NAMES[version]);
        c.grad_err = INFINITY;
    }
    for (int n = 0; n < N; n++) {
        if (!isfinite(losses[0][n])) c.loss_err = INFINITY;  // every row's loss, sampled or not
    }
    const double dloss = 1.0f / (float)N;
    std::vector<double> e(V);
    for (size_t r = 0; r < rows.size(); r++) {
        const int n = rows[r], target = targets[n];
        const floatX* xr = &x[r * Vp];
        const floatX* gr = &got[0][r * Vp];
        double M = -INFINITY, S = 0.0;
        for (int v = 0; v < V; v++) M = std::max(M, (double)to_float(xr[v]));
        for (int v = 0; v < V; v++) S += (e[v] = exp((double)to_float(xr[v]) - M));
        const double loss = log(S) + M - (double)to_float(xr[target]);
        c.loss_err = std::max(c.loss_err, fabs((double)losses[0][n] - loss));
        for (int v = 0; v < Vp; v++) {
            const double o = to_float(gr[v]);
            if (!isfinite(o) || (v >= V && o != 0.0)) {
                c.grad_err = INFINITY;
                continue;
            }
            if (v >= V) continue;
            const double ref = (e[v] / S - (v == target ? 1.0 : 0.0)) * dloss;
            // the target column against 1/N (its value (p - 1)/N cancels for confident rows), the
            // others relative (ref = p/N > 0)
            c.grad_err = std::max(c.grad_err, fabs(o - ref) / (v == target ? dloss : ref));
        }
    }
    return c;
}

// checks (and with copy_gbs > 0, times) every version on one shape; returns each version's ms
static std::vector<double> run_shape(const Shape& sh, double copy_gbs, uint32_t seed) {
    const size_t count = (size_t)sh.N * sh.Vp;
    Buffers b;
    b.logits = bench::device_alloc<floatX>(count);
    b.probs = bench::device_alloc<floatX>(count);
    b.dlogits = bench::device_alloc<floatX>(count);
    b.losses = bench::device_alloc<float>(sh.N);
    b.targets = bench::device_alloc<int>(sh.N);
    char kernel[128];
    snprintf(kernel, sizeof(kernel), "cross-entropy loss + dlogits (N=%d V=%d Vp=%d)", sh.N, sh.V, sh.Vp);
    std::vector<double> ms(4, 0.0);
    for (int version = 1; version <= 3; version++) {
        const Checked c = check_version(version, b, sh, seed + 100u * version);
        const std::string what = std::string(kernel) + " " + VERSION_NAMES[version];
        bench::check((what + " loss (error in nats)").c_str(), c.loss_err, TOL_LOSS[version]);
        if (copy_gbs <= 0.0) {
            bench::check((what + " dlogits").c_str(), c.grad_err, TOL_GRAD[version]);
            continue;
        }
        auto run = [&] { crossentropy_run(version, b, sh.N, sh.V, sh.Vp); };
        if (version == 3) ms[version] = bench::time_ms([&] { fill(b, sh.N, sh.V, sh.Vp, seed); }, run);
        else ms[version] = bench::time_ms(run);
        bench::report_memory(kernel, VERSION_NAMES[version], c.grad_err, TOL_GRAD[version], ms[version],
                             bytes_moved(version, sh.N, sh.Vp), copy_gbs);
    }
    cudaCheck(cudaFree(b.logits));
    cudaCheck(cudaFree(b.probs));
    cudaCheck(cudaFree(b.dlogits));
    cudaCheck(cudaFree(b.losses));
    cudaCheck(cudaFree(b.targets));
    return ms;
}

int main(int argc, char** argv) {
    int N = 16384;
    if (argc == 2) {
        const long n = atol(argv[1]);
        if (n <= 0 || n > (1L << 24)) {
            fprintf(stderr, "error: N must be in [1, 2^24], got %s\n", argv[1]);
            return 1;
        }
        N = (int)n;
    } else if (argc != 1) {
        fprintf(stderr, "usage: %s [N]\n", argv[0]);
        return 1;
    }
    const int V = 50257, Vp = 50304;
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    printf("cross-entropy: %s logits and dlogits, fp32 losses, %s\n", LLMC_PRECISION_NAME, prop.name);

    // every row checked: a short odd row; a row longer than the engine stages in shared memory
    // (70,008 values); one between
    const Shape small[] = {{1001, 77, 80, 1 << 30}, {67, 70001, 70008, 1 << 30}, {130, 3001, 3008, 1 << 30}};
    uint32_t seed = 1;
    for (const Shape& sh : small) run_shape(sh, 0.0, seed++);

    const double copy_gbs = bench::copy_bandwidth_gbs();
    const std::vector<double> ms = run_shape({N, V, Vp, 48}, copy_gbs, seed++);
    const double tensor_gb = (double)N * Vp * sizeof(floatX) / 1e9;
    printf("fusion: v1 moves %.2f GB in %.3f ms (3 kernels), v2 %.2f GB in %.3f ms: %.1fx fewer bytes, %.2fx "
           "faster\n",
           bytes_moved(1, N, Vp) / 1e9, ms[1], bytes_moved(2, N, Vp) / 1e9, ms[2],
           bytes_moved(1, N, Vp) / bytes_moved(2, N, Vp), ms[1] / ms[2]);
    printf("memory: v1 needs logits + probs + dlogits (%.2f GB), v2 logits + dlogits (%.2f GB), the engine "
           "only the logits (%.2f GB, %.3f ms)\n",
           3 * tensor_gb, 2 * tensor_gb, tensor_gb, ms[3]);
    return bench::finish();
}
