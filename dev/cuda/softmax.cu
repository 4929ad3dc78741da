/*
Row softmax: check and benchmark, four versions from naive to fast.

What it computes: N rows of logits x (N, Vp), of which the first V columns are real (Vp is the
padded width, as the engine pads the vocabulary), become probabilities
    probs[n, v] = exp(x[n, v] - M_n) / S_n        for v < V
    probs[n, v] = 0                               for V <= v < Vp (padding: never read)
    M_n = max_{v < V} x[n, v],   S_n = sum_{v < V} exp(x[n, v] - M_n)
Subtracting the row max changes nothing mathematically but keeps exp() finite: exp(89) is already
infinite in fp32 (rows shifted by +100 test it). Storage is floatX, both ways: bf16 logits in and
bf16 probabilities out (fp32 in and out with -DLLMC_FP32); every version computes in fp32.

Shapes (each tensor larger than the 50 MB L2, so every run reads and writes DRAM):
  vocab rows      N =  16,384, V = 50,257, Vp = 50,304: GPT-2's classifier at B*T = 16,384
                  (1.65 GB in, 1.65 GB out in bf16); long rows, few of them.
  attention rows  N = 786,432, V = Vp = 1,024: full-row attention scores of B = 64, H = 12,
                  T = 1,024 (1.61 GB each way); short rows, very many of them.

Build and run (from the repository root):
    make -C dev/cuda softmax && build-dev-cuda/softmax [N V]
    (or: nvcc -O3 -std=c++17 -gencode arch=compute_90,code=sm_90 -I. dev/cuda/softmax.cu -o softmax)
    add -DLLMC_FP32 for fp32 storage. With N V, one timed shape of N rows of V columns (Vp = V
    rounded up to a multiple of 128) replaces the two default ones.

Versions (what each changes; the kernels are written here, none is the engine's):
  v1  one thread per row, three passes over the row (max, sum, write). The simplest correct code,
      and slow for three reasons: the 32 threads of a warp read 32 different rows, so a load
      instruction touches 32 cache lines instead of one; 16,384 rows make 512 warps for a GPU that
      holds 64 warps on each of its 132 SMs; the row is read three times.
  v2  one 256-thread block per row, the threads of the block read neighbouring columns (coalesced
      loads), and the max and the sum are reduced over the block by a tree in shared memory
      (8 steps, a __syncthreads() each). Still three passes over the row.
  v3  one warp per row (8 rows per block), no shared memory, no block barrier: each lane keeps a
      running max and a sum rescaled whenever the max grows ("online softmax", so max and sum take
      one pass instead of two), and the 32 lanes merge their (max, sum) pairs with warp shuffles.
      Two passes: the write pass reads the row again (from L1/L2 for short rows; from DRAM for
      vocab rows, since 8,448 rows of 100 KB in flight are far more than the L2).
  v4  16-byte loads and stores (8 bf16 per instruction), and the row kept in registers between
      the passes, so DRAM sees the minimum: one read and one write. A group of threads shares a
      row: one warp for rows of up to 1,024 bf16 (4 packets per lane), up to a 1,024-thread block
      for long rows (8 packets per thread: 65,536 bf16). The part of a row that does not fit (fp32
      vocab rows: 12,576 packets for 8,192 slots) is read again in the write pass: one pass more
      for that part only. exp(x - M) is computed as exp2(x * log2(e) - M * log2(e)), the hardware
      exp2. Needs Vp % 8 == 0 (bf16; % 4 for fp32). The engine goes further for the classifier
      (dev/cuda/fused_classifier.cu): rows staged in shared memory with cp.async, the next row
      loading while the current one is written.

Checks. Every version, on every shape, on fresh random inputs generated on the device (so 10^9
values take milliseconds, not minutes of a CPU generator): logits normal-like with std 3, every
7th row shifted by +100, every 5th row with one spike of +40, the padded columns NaN (a version
that lets one into the softmax fails). The output is poisoned with NaN first (an element left
unwritten fails), the version is run twice (the same bits both times: all four are deterministic)
and compared with a double-precision CPU softmax of the same bf16 inputs: at the two timed shapes
on a sample of rows (48 vocab rows and 1,024 attention rows: first, last and random ones; the
full reference would take minutes), on every row of the smaller shapes (odd V, a partial last
block, a row longer than v4's registers, V = 1, an unaligned Vp).
Each output element must be within a relative 5e-3 of the reference in bf16 (padded columns
exactly 0): rounding to bf16 (8 significant bits) is off by at most 2^-8 = 3.9e-3 relative, and
the fp32 arithmetic adds ~1e-5 (x and the max, up to ~140 in the rows shifted by +100, are
rounded to fp32 before exp), up to ~8e-5 for v1, whose single thread adds 70,001 terms one after
the other (terms under half an ulp of the running sum are lost, so S comes out low). fp32 build:
3e-4, a few times v1's error. What no per-element check of a bf16 output can see is an error in S
under its rounding, e.g. one packet of 8 values out of 50,257 left out of the sum (1.6e-4); the
spiked rows, which hold nearly all their mass at one column that moves from row to row, and the
short rows (8 of 77 or 1,024 values) are where such a bug shows.
Timing: 3 warm-up runs, median of 30 (CUDA events); GB/s counts the bytes a softmax must move,
N * Vp * sizeof(floatX) read plus the same written, as % of the device-to-device copy bandwidth
measured in the same run.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common.cuh"

#ifdef LLMC_FP32
static const double TOL = 3e-4;
#else
static const double TOL = 5e-3;
#endif
static const unsigned FULL_MASK = 0xFFFFFFFFu;

// ---- v1: one thread per row, three passes -----------------------------------------------------
#define V1_THREADS 128

__global__ void softmax_v1(floatX* out, const floatX* in, int N, int V, int Vp) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const floatX* x = in + (size_t)n * Vp;
    floatX* y = out + (size_t)n * Vp;
    float M = -INFINITY;
    for (int v = 0; v < V; v++) M = fmaxf(M, to_float(x[v]));
    float S = 0.0f;
    for (int v = 0; v < V; v++) S += expf(to_float(x[v]) - M);
    const float inv_S = 1.0f / S;
    for (int v = 0; v < Vp; v++) y[v] = from_float<floatX>(v < V ? expf(to_float(x[v]) - M) * inv_S : 0.0f);
}

// ---- v2: one block per row, tree reductions in shared memory ----------------------------------
#define V2_THREADS 256

// max (is_max) or sum of one value per thread over the block; every thread gets the result
__device__ static float v2_block_reduce(float x, float* buf, bool is_max) {
    buf[threadIdx.x] = x;
    __syncthreads();
    for (int stride = V2_THREADS / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) {
            const float other = buf[threadIdx.x + stride];
            buf[threadIdx.x] = is_max ? fmaxf(buf[threadIdx.x], other) : buf[threadIdx.x] + other;
        }
        __syncthreads();
    }
    const float result = buf[0];
    __syncthreads();  // buf is reused by the next reduction
    return result;
}

__global__ void __launch_bounds__(V2_THREADS) softmax_v2(floatX* out, const floatX* in, int V, int Vp) {
    __shared__ float buf[V2_THREADS];
    const floatX* x = in + (size_t)blockIdx.x * Vp;
    floatX* y = out + (size_t)blockIdx.x * Vp;
    float m = -INFINITY;
    for (int v = threadIdx.x; v < V; v += V2_THREADS) m = fmaxf(m, to_float(x[v]));
    const float M = v2_block_reduce(m, buf, true);
    float s = 0.0f;
    for (int v = threadIdx.x; v < V; v += V2_THREADS) s += expf(to_float(x[v]) - M);
    const float inv_S = 1.0f / v2_block_reduce(s, buf, false);
    for (int v = threadIdx.x; v < Vp; v += V2_THREADS) {
        y[v] = from_float<floatX>(v < V ? expf(to_float(x[v]) - M) * inv_S : 0.0f);
    }
}

// ---- v3: one warp per row, online softmax, warp shuffles --------------------------------------
#define V3_ROWS 8  // rows (warps) per block

// (m, s) and (m2, s2) are running (max, sum of exp(x - max)) pairs; the merged pair rescales each
// sum to the larger max. Both empty (max -inf, a lane that saw no column): stays (-inf, 0).
__device__ static inline void merge_max_sum(float& m, float& s, float m2, float s2) {
    const float M = fmaxf(m, m2);
    if (M == -INFINITY) return;
    s = s * expf(m - M) + s2 * expf(m2 - M);  // expf(-inf) = 0
    m = M;
}

__global__ void softmax_v3(floatX* out, const floatX* in, int N, int V, int Vp) {
    const int n = blockIdx.x * V3_ROWS + threadIdx.y, lane = threadIdx.x;
    if (n >= N) return;  // the whole warp: no block barrier in this kernel
    const floatX* x = in + (size_t)n * Vp;
    floatX* y = out + (size_t)n * Vp;
    float m = -INFINITY, s = 0.0f;
    for (int v = lane; v < V; v += 32) {
        const float xv = to_float(x[v]);
        if (xv > m) {
            s *= expf(m - xv);  // the sum so far, rescaled to the new max (0 while m is -inf)
            m = xv;
        }
        s += expf(xv - m);
    }
    // butterfly: after 5 steps every lane holds the row's (max, sum), bit-identical in all lanes
    for (int offset = 16; offset > 0; offset /= 2) {
        merge_max_sum(m, s, __shfl_xor_sync(FULL_MASK, m, offset), __shfl_xor_sync(FULL_MASK, s, offset));
    }
    const float inv_S = 1.0f / s;
    for (int v = lane; v < Vp; v += 32) y[v] = from_float<floatX>(v < V ? expf(to_float(x[v]) - m) * inv_S : 0.0f);
}

// ---- v4: 16-byte loads, the row kept in registers ---------------------------------------------
// blockDim.x threads share a row (a multiple of 32), blockDim.y rows per block. Thread t handles
// packets t, t + blockDim.x, ...; the first PACKETS of them stay in registers (fully unrolled loops,
// so reg[] is never indexed at run time and stays out of local memory). Max and sums are in the log2
// domain: x2 = x * log2(e), exp(x - M) = exp2(x2 - M2).
static const float LOG2E = 1.4426950408889634f;

__device__ static inline void merge_max_sum2(float& m, float& s, float m2, float s2) {
    const float M = fmaxf(m, m2);
    if (M == -INFINITY) return;
    s = s * exp2f(m - M) + s2 * exp2f(m2 - M);
    m = M;
}

// folds the packet holding columns first, first + 1, ... into the running (m, s): one rescale per
// packet rather than per value
__device__ static inline void fold_packet(const x128& p, int first, int V, float& m, float& s) {
    float pm = -INFINITY;
#pragma unroll
    for (int k = 0; k < X128; k++) {
        if (first + k < V) pm = fmaxf(pm, to_float(p.v[k]));  // the padding (NaN here) is left out
    }
    if (pm == -INFINITY) return;  // a packet wholly in the padding
    pm *= LOG2E;                  // = the max of x * log2(e): rounding is monotonic
    if (pm > m) {
        s *= exp2f(m - pm);
        m = pm;
    }
#pragma unroll
    for (int k = 0; k < X128; k++) {
        if (first + k < V) s += exp2f(to_float(p.v[k]) * LOG2E - m);
    }
}

__device__ static inline x128 normalize_packet(const x128& p, int first, int V, float M2, float inv_S) {
    x128 out;
#pragma unroll
    for (int k = 0; k < X128; k++) {
        out.v[k] = from_float<floatX>(first + k < V ? exp2f(to_float(p.v[k]) * LOG2E - M2) * inv_S : 0.0f);
    }
    return out;
}

// An empty asm that "may change" the packet's four 32-bit words: the compiler must then convert
// them again in pass 2 instead of keeping pass 1's conversions alive (8 fp32 registers per packet
// rather than 4 packed ones: with 8 packets per thread, spills to local memory).
__device__ static inline void keep_packed(x128& p) {
    uint32_t* w = reinterpret_cast<uint32_t*>(&p);
    asm volatile("" : "+r"(w[0]), "+r"(w[1]), "+r"(w[2]), "+r"(w[3]));
}

template <int PACKETS>
__global__ void __launch_bounds__(1024) softmax_v4(floatX* out, const floatX* in, int N, int V, int Vp) {
    __shared__ float warp_m[32], warp_s[32];
    const int tpr = blockDim.x, t = threadIdx.x, lane = t % 32;
    const int n = blockIdx.x * blockDim.y + threadIdx.y;
    const bool active = n < N;  // the last block may have idle rows; they still reach the barrier
    const size_t offset = (size_t)(active ? n : 0) * Vp;
    const floatX* x = in + offset;
    floatX* y = out + offset;
    const int packets = Vp / X128;

    // pass 1: read the row once, keep up to PACKETS packets per thread, fold everything into (m, s)
    x128 reg[PACKETS];
    float m = -INFINITY, s = 0.0f;
#pragma unroll
    for (int k = 0; k < PACKETS; k++) {
        const int i = t + k * tpr;
        if (active && i < packets) {
            reg[k] = load128cs(x + (size_t)i * X128);  // streaming: read once, no need to cache
            fold_packet(reg[k], i * X128, V, m, s);
        }
    }
    for (int i = t + PACKETS * tpr; active && i < packets; i += tpr) {  // did not fit: read again below
        fold_packet(load128(x + (size_t)i * X128), i * X128, V, m, s);
    }

    // (m, s) over the warp, then over the row's warps through shared memory
    for (int step = 16; step > 0; step /= 2) {
        merge_max_sum2(m, s, __shfl_xor_sync(FULL_MASK, m, step), __shfl_xor_sync(FULL_MASK, s, step));
    }
    if (tpr > 32) {  // the same for the whole block
        const int warps = tpr / 32, first_warp = threadIdx.y * warps;
        if (lane == 0) {
            warp_m[first_warp + t / 32] = m;
            warp_s[first_warp + t / 32] = s;
        }
        __syncthreads();
        m = lane < warps ? warp_m[first_warp + lane] : -INFINITY;
        s = lane < warps ? warp_s[first_warp + lane] : 0.0f;
        for (int step = 16; step > 0; step /= 2) {
            merge_max_sum2(m, s, __shfl_xor_sync(FULL_MASK, m, step), __shfl_xor_sync(FULL_MASK, s, step));
        }
    }
    if (!active) return;

    // pass 2: write from the registers (and from a second read of what did not fit)
    const float inv_S = 1.0f / s;
#pragma unroll
    for (int k = 0; k < PACKETS; k++) {
        const int i = t + k * tpr;
        if (i < packets) {
            keep_packed(reg[k]);
            store128(y + (size_t)i * X128, normalize_packet(reg[k], i * X128, V, m, inv_S));
        }
    }
    for (int i = t + PACKETS * tpr; i < packets; i += tpr) {
        store128(y + (size_t)i * X128, normalize_packet(load128(x + (size_t)i * X128), i * X128, V, m, inv_S));
    }
}

static bool v4_supported(int Vp) { return Vp % X128 == 0; }

static void softmax_v4_launch(floatX* out, const floatX* in, int N, int V, int Vp) {
    const int packets = Vp / X128;
    if (packets <= 32 * 4) {  // short rows: a warp per row, 4 packets per lane, 8 rows per block
        softmax_v4<4><<<ceil_div(N, 8), dim3(32, 8)>>>(out, in, N, V, Vp);
    } else {  // the smallest group (up to 1024 threads) whose registers hold the row
        int tpr = 32;
        while (tpr < 1024 && tpr * 8 < packets) tpr *= 2;
        const int rows = tpr >= 256 ? 1 : 256 / tpr;
        softmax_v4<8><<<ceil_div(N, rows), dim3(tpr, rows)>>>(out, in, N, V, Vp);
    }
    cudaCheckLast();
}

// ---- versions, inputs, reference ----------------------------------------------------------------
static const char* VERSION_NAMES[5] = {"", "v1 thread per row", "v2 block per row, smem tree",
                                       "v3 warp per row, online", "v4 16-byte, row in registers"};

static void softmax_run(int version, floatX* out, const floatX* in, int N, int V, int Vp) {
    if (version == 1) softmax_v1<<<ceil_div(N, V1_THREADS), V1_THREADS>>>(out, in, N, V, Vp);
    else if (version == 2) softmax_v2<<<N, V2_THREADS>>>(out, in, V, Vp);
    else if (version == 3) softmax_v3<<<ceil_div(N, V3_ROWS), dim3(32, V3_ROWS)>>>(out, in, N, V, Vp);
    else softmax_v4_launch(out, in, N, V, Vp);
    cudaCheckLast();
}

// Random logits (bench::fill_logits, common.cuh): std 3, |x| <= 10.4, one-hot-like spikes on rows
// n % 5 == 1, +100 shifts on rows n % 7 == 3, padding NaN.
static void fill(floatX* x, int N, int V, int Vp, uint32_t seed) {
    bench::fill_logits(x, NULL, N, V, Vp, seed);
}

struct Shape {
    const char* name;
    int N, V, Vp, samples;
};

// runs `version` twice on fresh inputs in (in, out) and compares the sampled rows with fp64: the
// largest per-element relative error, INFINITY for a NaN, a non-zero padding or two runs that differ
static double check_version(int version, floatX* in, floatX* out, const Shape& sh, uint32_t seed) {
    const int N = sh.N, V = sh.V, Vp = sh.Vp;
    Rng rng;
    rng_init(&rng, seed);
    const std::vector<int> rows = bench::rows_to_check(N, sh.samples, &rng);
    fill(in, N, V, Vp, seed);
    std::vector<floatX> got[2];
    for (int run = 0; run < 2; run++) {
        bench::poison(out, (size_t)N * Vp);
        softmax_run(version, out, in, N, V, Vp);
        cudaCheck(cudaDeviceSynchronize());
        got[run] = bench::copy_rows(out, Vp, rows);
    }
    const std::vector<floatX> x = bench::copy_rows(in, Vp, rows);
    double err = 0.0;
    if (!bench::same_bits(got[0], got[1])) {
        printf("%s: two runs on the same input differ\n", VERSION_NAMES[version]);
        err = INFINITY;
    }
    std::vector<double> e(V);
    for (size_t r = 0; r < rows.size(); r++) {
        const floatX* xr = &x[r * Vp];
        const floatX* yr = &got[0][r * Vp];
        double M = -INFINITY, S = 0.0;
        for (int v = 0; v < V; v++) M = std::max(M, (double)to_float(xr[v]));
        for (int v = 0; v < V; v++) S += (e[v] = exp((double)to_float(xr[v]) - M));
        for (int v = 0; v < Vp; v++) {
            const double o = to_float(yr[v]);
            if (!isfinite(o) || (v >= V && o != 0.0)) {
                err = INFINITY;
            } else if (v < V) {
                const double p = e[v] / S;  // > 1e-30 for these inputs
                err = std::max(err, fabs(o - p) / p);
            }
        }
    }
    return err;
}

// checks (and with copy_gbs > 0, times) every version on one shape
static void run_shape(const Shape& sh, double copy_gbs, uint32_t seed) {
    const size_t count = (size_t)sh.N * sh.Vp;
    floatX* in = bench::device_alloc<floatX>(count);
    floatX* out = bench::device_alloc<floatX>(count);
    char kernel[128];
    snprintf(kernel, sizeof(kernel), "softmax %s (N=%d V=%d Vp=%d)", sh.name, sh.N, sh.V, sh.Vp);
    for (int version = 1; version <= 4; version++) {
        if (version == 4 && !v4_supported(sh.Vp)) {
            printf("%s: v4 needs Vp %% %d == 0, skipped\n", kernel, X128);
            continue;
        }
        const double err = check_version(version, in, out, sh, seed + 100u * version);
        if (copy_gbs <= 0.0) {
            bench::check((std::string(kernel) + " " + VERSION_NAMES[version]).c_str(), err, TOL);
            continue;
        }
        const double ms = bench::time_ms([&] { softmax_run(version, out, in, sh.N, sh.V, sh.Vp); });
        const double bytes = 2.0 * count * sizeof(floatX);
        bench::report_memory(kernel, VERSION_NAMES[version], err, TOL, ms, bytes, copy_gbs);
    }
    cudaCheck(cudaFree(in));
    cudaCheck(cudaFree(out));
}

int main(int argc, char** argv) {
    std::vector<Shape> timed = {{"vocab rows", 16384, 50257, 50304, 48}, {"attention rows", 786432, 1024, 1024, 1024}};
    if (argc == 3) {
        const long N = atol(argv[1]), V = atol(argv[2]);
        if (N <= 0 || V <= 0 || N > (1L << 30) || V > (1L << 24)) {
            fprintf(stderr, "error: N must be in [1, 2^30] and V in [1, 2^24], got N=%s V=%s\n", argv[1], argv[2]);
            return 1;
        }
        timed = {{"custom", (int)N, (int)V, (int)((V + 127) / 128 * 128), 256}};
    } else if (argc != 1) {
        fprintf(stderr, "usage: %s [N V]\n", argv[0]);
        return 1;
    }
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    printf("softmax: %s in, %s out, %s\n", LLMC_PRECISION_NAME, LLMC_PRECISION_NAME, prop.name);

    // every row checked: odd V and a partial last block (v3, v4 with 8 rows per block), a row longer
    // than v4's registers (70,008 bf16 > 1,024 threads x 8 packets), v4 with 64-thread groups, V = 1,
    // an unaligned row stride (v4 skipped)
    const Shape small[] = {{"short odd", 1001, 77, 80, 1 << 30},
                           {"beyond registers", 67, 70001, 70008, 1 << 30},
                           {"two-warp rows", 501, 3001, 3008, 1 << 30},
                           {"one column", 9, 1, 8, 1 << 30},
                           {"unaligned", 300, 33, 33, 1 << 30}};
    uint32_t seed = 1;
    for (const Shape& sh : small) run_shape(sh, 0.0, seed++);

    const double copy_gbs = bench::copy_bandwidth_gbs();
    for (const Shape& sh : timed) run_shape(sh, copy_gbs, seed++);
    return bench::finish();
}
