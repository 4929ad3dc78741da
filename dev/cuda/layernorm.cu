/*
LayerNorm forward (plain and fused with the residual add) and backward: check and benchmark.

What it computes (llmc/layernorm.cuh has the formulas): for N rows of C channels,
  forward        out = (x - mean) * rstd * weight + bias, mean and rstd saved (fp32)
  fused forward  residual = a + b (stored), out = layernorm(residual)
  backward       dinp += dx (the residual stream's gradient), dweight += sum_n dout * xhat,
                 dbias += sum_n dout
Shapes: N = B*T = 65,536 rows, C = 768 by default (GPT-2 124M at B = 64, T = 1024); each (N, C)
tensor is 100 MB in bf16, larger than the L2 cache, so every run reads from DRAM. Before it, every
version is checked (not timed) on small shapes: odd N, the GPT-2 widths 768..1600, C = 2048 and
4096, C = 8 and 776 (a partial last packet group), C = 99 (no 16-byte packets: only v1 applies).

Build and run (from the repository root):
    make -C dev/cuda layernorm && build-dev-cuda/layernorm [N C] [--no-sweep] [--v4]
    (or: nvcc -O3 -std=c++17 -gencode arch=compute_90,code=sm_90 -I. dev/cuda/layernorm.cu -o layernorm)
    --no-sweep skips the small-shape checks (e.g. under ncu); --v4 adds the v4 candidates below.
    Add -DLLMC_FP32 for the fp32 build of the same kernels.

Versions. v1, v2, v3 are the production header's kernels (included, never copied; its top comment
says what each changes and why); "(engine)" marks the one the engine's public functions run
(layernorm_forward, fused_residual_layernorm_forward, layernorm_backward), which are also checked
on every shape, fallbacks included.
  v1  one warp per row, scalar loads, two passes over global memory; the backward keeps each
      warp's dweight/dbias partial sums in global scratch and re-reads/re-writes them every row.
  v2  one warp per row, 16-byte loads, the row kept in registers (read once); the backward
      accumulates dweight/dbias per lane in registers over a block's 128 rows (236 registers at
      C = 768: one block per SM), reduces the block's warps through shared memory in a fixed order,
      then one small kernel adds the per-block partials in block order.
  v3  forward: v2's arithmetic with 1, 2 or 4 rows per warp, all their loads issued first, kept
      packed (48 registers at 1 row: 5 blocks per SM instead of v2's 4; 4 rows: 121 registers).
      Backward: a team of C/8 threads per row (one 16-byte packet each, 16 accumulators), rows
      prefetched 1..5 ahead into shared memory with cp.async, a one-wave grid sized by the
      occupancy API; the variants differ in threads per block (teams) and stages.
  v4  candidates written here, not (yet) in the engine, and NOT YET RUN ON A GPU (the session that
      wrote them had no device run left): checked and timed only with --v4. v3's measurements
      said what limits it (ncu at C = 768: the backward kernel issues ~350 instructions per warp
      per row, instruction issue ~55% busy, DRAM 66% of peak; the plain forward has one row in
      flight per warp only while it loads), so:
      forward: a one-wave grid of warps, each loading its next row before computing the current
          one (two register buffers), so a warp always has a row in flight; C <= 1024 bf16.
      backward: v3 with fewer instructions per row: the two sums of a warp in 5 shuffles instead
          of 10 (half-warps exchange one value, then reduce one each), the team's warps added by
          shuffles instead of a loop, weights kept as floats, dx as two FMAs; options: KEEP (g and
          xhat stay in registers between the passes: 80 registers), P = 3 packets per thread
          (a C = 768 row is one warp's: no team barrier, ~27% fewer instructions per row, 128
          registers); and a wider partials kernel (8 columns x 128 lanes per block, 192 blocks at
          C = 768, instead of 32 x 32 in 48 blocks: v3's took 6.4 us of the 128 us).

Checks: every version against a double-precision CPU reference computed from the same rounded
inputs, on fresh random inputs per shape; outputs (out, residual, mean, rstd, the backward's
scratch) poisoned with NaN first; the backward (which adds into dinp, dweight, dbias) is run twice
from the same state and must give the same bits. Tolerance: 1e-2 of the largest reference value
in bf16 (one bf16 rounding of the output is 2^-9 relative), 1e-4 in fp32.
Timing: bench::time_ms (3 warm-up runs, median of 30, CUDA events), GB/s counts the bytes the
kernel must move: forward 2NC values, fused 4NC, backward 4NC (read dout, x, dinp, write dinp),
each plus the fp32 statistics; % of the device-to-device copy bandwidth measured in the same run.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <string>
#include <vector>

#include "llmc/layernorm.cuh"
#include "common.cuh"

#ifdef LLMC_FP32
static const double TOL = 1e-4;  // fp32 storage: summation-order differences only
#else
static const double TOL = 1e-2;  // bf16 storage: one rounding of the output (2^-9 relative) and a bit
#endif

// ==============================================================================================
// v4 candidates (see the top comment): written here until a device run shows they earn a place
// in llmc/layernorm.cuh. They reuse the header's cp.async and named-barrier helpers.

#define LN4_KEEP_THREADS 384  // threads per block at most of the KEEP variant (80 registers, 2 blocks/SM)

// Blocks of `threads` threads that fit on the device at once, for one wave of `kernel`.
template <typename Kernel>
static int ln4_one_wave_blocks(Kernel kernel, int threads, size_t smem) {
    int device = 0, sms = 0, per_sm = 0;
    cudaCheck(cudaGetDevice(&device));
    cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    cudaCheck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
    return (per_sm < 1 ? 1 : per_sm) * sms;
}

// One warp normalizes row `row` from its packets pa (FUSED: residual = pa + pb, stored; pa is
// overwritten with it). Lane `lane` holds channels (i * 32 + lane) * X128 .. + X128, i < VPL.
template <int VPL, bool FUSED>
__device__ __forceinline__ void ln4_forward_row(x128* pa, const x128* pb, floatX* residual, floatX* out, float* mean,
                                                float* rstd, const floatX* weight, const floatX* bias, int row,
                                                int C, int lane) {
    const size_t base = (size_t)row * C;
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < VPL; i++) {
        const int c = (i * 32 + lane) * X128;
        if (c < C) {
            if (FUSED) {
#pragma unroll
                for (int k = 0; k < X128; k++) {
                    pa[i].v[k] = from_float<floatX>(to_float(pa[i].v[k]) + to_float(pb[i].v[k]));
                }
                store128(residual + base + c, pa[i]);
            }
#pragma unroll
            for (int k = 0; k < X128; k++) sum += to_float(pa[i].v[k]);
        }
    }
    const float m = warp_sum(sum) / C;
    float var = 0.0f;
#pragma unroll
    for (int i = 0; i < VPL; i++) {
        const int c = (i * 32 + lane) * X128;
        if (c < C) {
#pragma unroll
            for (int k = 0; k < X128; k++) {
                const float d = to_float(pa[i].v[k]) - m;
                var += d * d;
            }
        }
    }
    const float s = 1.0f / sqrtf(warp_sum(var) / C + LN_EPS);
#pragma unroll
    for (int i = 0; i < VPL; i++) {
        const int c = (i * 32 + lane) * X128;
        if (c < C) {
            const x128 w = load128(weight + c);
            const x128 bb = load128(bias + c);
            x128 o;
#pragma unroll
            for (int k = 0; k < X128; k++) {
                o.v[k] = from_float<floatX>((to_float(pa[i].v[k]) - m) * s * to_float(w.v[k]) + to_float(bb.v[k]));
            }
            store128(out + base + c, o);
        }
    }
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = s;
    }
}

// starts the 16-byte loads of row `row` (and of b for FUSED) into pa, pb
template <int VPL, bool FUSED>
__device__ __forceinline__ void ln4_forward_load(x128* pa, x128* pb, const floatX* a, const floatX* b, int row, int C,
                                                 int lane) {
    const size_t base = (size_t)row * C;
#pragma unroll
    for (int i = 0; i < VPL; i++) {
        const int c = (i * 32 + lane) * X128;
        if (c < C) {
            pa[i] = load128cs(a + base + c);
            if (FUSED) pb[i] = load128cs(b + base + c);
        }
    }
}


// v4 forward: a one-wave grid of warps, warp w taking rows w, w + W, w + 2W, ... (W warps in all);
// the loads of its next row are issued before the current row is computed (two register buffers,
// the loop unrolled by two so that neither is copied), so a warp always has a row in flight.
template <int VPL, bool FUSED>
__global__ void __launch_bounds__(256) layernorm_forward_v4_kernel(floatX* residual, floatX* out, float* mean,
                                                                     float* rstd, const floatX* a, const floatX* b,
                                                                     const floatX* weight, const floatX* bias, int N,
                                                                     int C) {
    const int lane = threadIdx.x % 32;
    const int W = gridDim.x * (blockDim.x / 32);
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;
    x128 pa0[VPL], pa1[VPL], pb0[FUSED ? VPL : 1], pb1[FUSED ? VPL : 1];
    ln4_forward_load<VPL, FUSED>(pa0, pb0, a, b, row, C, lane);
    while (true) {
        if (row + W < N) ln4_forward_load<VPL, FUSED>(pa1, pb1, a, b, row + W, C, lane);
        ln4_forward_row<VPL, FUSED>(pa0, pb0, residual, out, mean, rstd, weight, bias, row, C, lane);
        row += W;
        if (row >= N) break;
        if (row + W < N) ln4_forward_load<VPL, FUSED>(pa0, pb0, a, b, row + W, C, lane);
        ln4_forward_row<VPL, FUSED>(pa1, pb1, residual, out, mean, rstd, weight, bias, row, C, lane);
        row += W;
        if (row >= N) break;
    }
}

// the v4 forward applies to rows of at most 4 packets per lane (C <= 1024 bf16, 512 fp32): two
// buffers of wider rows take so many registers that fewer warps fit on an SM than v3 runs
static bool layernorm_forward_v4_supported(int C) { return layernorm_v2_supported(C) && layernorm_vpl(C) <= 4; }

template <bool FUSED>
static void layernorm_forward_v4(floatX* residual, floatX* out, float* mean, float* rstd, const floatX* a,
                                 const floatX* b, const floatX* weight, const floatX* bias, int N, int C,
                                 cudaStream_t stream) {
    const int warps = 8;
    switch (layernorm_vpl(C)) {
#define LLMC_LN4_FWD_CASE(V)                                                                                      \
    case V: {                                                                                                     \
        int grid = ln4_one_wave_blocks(layernorm_forward_v4_kernel<V, FUSED>, 32 * warps, 0);                     \
        if (grid > ceil_div(N, warps)) grid = ceil_div(N, warps);                                                 \
        layernorm_forward_v4_kernel<V, FUSED><<<grid, 32 * warps, 0, stream>>>(residual, out, mean, rstd, a, b,   \
                                                                               weight, bias, N, C);               \
        break;                                                                                                    \
    }
        LLMC_LN4_FWD_CASE(1)
        LLMC_LN4_FWD_CASE(2)
        LLMC_LN4_FWD_CASE(3)
        LLMC_LN4_FWD_CASE(4)
#undef LLMC_LN4_FWD_CASE
        default:
            fprintf(stderr, "layernorm_forward_v4: C=%d not supported\n", C);
            exit(1);
    }
    cudaCheckLast();
}

// threads of a team: P 16-byte packets each, rounded up to whole warps
static inline int ln4_team_threads(int C, int packets) { return ceil_div(ceil_div(C / X128, packets), 32) * 32; }
// teams per block for at most `threads` threads per block (at least one, at most LN3_MAX_TEAMS)
static inline int ln4_teams(int C, int threads, int packets) {
    const int teams = threads / ln4_team_threads(C, packets);
    return teams < 1 ? 1 : (teams > LN3_MAX_TEAMS ? LN3_MAX_TEAMS : teams);
}
// dynamic shared memory: per team and stage the three tensors' packets and (mean, rstd) of each
// thread, then per team two buffers of one (g, g * xhat) pair per warp
static inline size_t ln4_smem_bytes(int teams, int team_threads, int stages, int packets) {
    return (size_t)teams * stages * team_threads * (3 * packets * sizeof(x128) + sizeof(float2)) +
           (size_t)teams * 2 * (LN3_MAX_TEAM / 32) * sizeof(float2);
}
// launch bounds: at most 64 registers for the default (2 blocks of 512 threads), 80 for KEEP (2
// blocks of 384), 128 with several packets per thread (2 blocks of 256: at 80 registers their
// 2 * P * X128 accumulators spill)
#define LN4_PACKETS_THREADS 256
__host__ __device__ constexpr int ln4_max_threads(bool keep, int packets) {
    return packets > 1 ? LN4_PACKETS_THREADS : (keep ? LN4_KEEP_THREADS : LN3_MAX_TEAM);
}
__host__ __device__ constexpr int ln4_min_blocks(int /*packets*/) { return 2; }

// Block b takes rows [b * N / grid, (b + 1) * N / grid); team t of it the rows t, t + teams, ....
// scratch[b][0..C) gets the block's dweight partial sums, [C..2C) its dbias partial sums.
// P: packets per thread (thread t of a team owns packets t, t + team_threads, ...); P = 3 makes a
// C = 768 bf16 row one warp's (no barrier wait, fewer instructions per row, 2 * 24 accumulators).
// KEEP (P = 1 only): g = dout * weight and xhat stay in registers from the first pass over the
// row to the second (fewer instructions, 80 registers); else the second pass reads the row again
// from shared memory and recomputes them.
template <int STAGES, bool KEEP, int P>
__global__ void __launch_bounds__(ln4_max_threads(KEEP, P), ln4_min_blocks(P)) layernorm_backward_v4_kernel(
    floatX* dinp, float* scratch, const floatX* dout, const floatX* inp, const floatX* weight, const float* mean,
    const float* rstd, int N, int C, int teams) {
    static_assert(!KEEP || P == 1, "KEEP needs one packet per thread");
    extern __shared__ float4 ln4_shared[];  // float4: 16-byte alignment
    const int team_threads = blockDim.x / teams;
    const int team = threadIdx.x / team_threads, t = threadIdx.x % team_threads;
    const int lane = threadIdx.x % 32, team_warp = t / 32, team_warps = team_threads / 32;
    char* smem = reinterpret_cast<char*>(ln4_shared);
    const size_t rows_bytes = (size_t)teams * STAGES * 3 * P * team_threads * sizeof(x128);
    const size_t stats_bytes = (size_t)teams * STAGES * team_threads * sizeof(float2);
    // [stage][tensor][packet][t]: a thread reads back only the slots it filled
    x128* my_rows = reinterpret_cast<x128*>(smem) + (size_t)team * STAGES * 3 * P * team_threads;
    float2* my_stats = reinterpret_cast<float2*>(smem + rows_bytes) + (size_t)team * STAGES * team_threads;
    float2* my_red = reinterpret_cast<float2*>(smem + rows_bytes + stats_bytes) + team * 2 * (LN3_MAX_TEAM / 32);

    const int row_begin = (int)((long long)blockIdx.x * N / gridDim.x);
    const int row_end = (int)((long long)(blockIdx.x + 1) * N / gridDim.x);
    const int team_rows = row_end - row_begin > team ? ceil_div(row_end - row_begin - team, teams) : 0;
    const int stride = team_threads * X128;  // channels between a thread's packets
    const int c0 = t * X128;                 // this thread's first packet of every row
    const bool active = c0 < C;
    const float inv_C = 1.0f / C;

    // the weights: as floats with one packet per thread, kept packed with several (registers)
    constexpr bool PACKED_W = P > 1;
    x128 pw[P];
    float wf[PACKED_W ? 1 : X128];
    float dw[P][X128], db[P][X128];
#pragma unroll
    for (int p = 0; p < P; p++) {
        const int c = c0 + p * stride;
        if (c < C) pw[p] = load128(weight + c);
#pragma unroll
        for (int j = 0; j < X128; j++) {
            if (!PACKED_W) wf[PACKED_W ? 0 : j] = c < C ? to_float(pw[p].v[j]) : 0.0f;
            dw[p][j] = db[p][j] = 0.0f;
        }
    }
    auto w = [&](int p, int j) { return PACKED_W ? to_float(pw[p].v[j]) : wf[PACKED_W ? 0 : j]; };
    // starts the copies of the team's k-th row into stage k % STAGES (an empty group past the end)
    auto issue = [&](int k) {
        if (k < team_rows && active) {
            const int row = row_begin + team + k * teams;
            x128* slot = my_rows + (size_t)(k % STAGES) * 3 * P * team_threads + t;
#pragma unroll
            for (int p = 0; p < P; p++) {
                const int c = c0 + p * stride;
                if (c < C) {
                    const size_t off = (size_t)row * C + c;
                    ln3_copy16(slot + p * team_threads, dout + off);
                    ln3_copy16(slot + (P + p) * team_threads, inp + off);
                    ln3_copy16(slot + (2 * P + p) * team_threads, dinp + off);
                }
            }
            float2* st = my_stats + (k % STAGES) * team_threads + t;
            ln3_copy4(&st->x, mean + row);
            ln3_copy4(&st->y, rstd + row);
        }
        ln3_copy_commit();
    };
#pragma unroll
    for (int k = 0; k < STAGES - 1; k++) issue(k);
#pragma unroll 1
    for (int k = 0; k < team_rows; k++) {
        // the stage refilled here held row k - 1, which this thread has finished with
        issue(k + STAGES - 1);
        ln3_copy_wait<STAGES - 1>();  // row k has landed (this thread's part of it)
        const x128* slot = my_rows + (size_t)(k % STAGES) * 3 * P * team_threads + t;
        const float2* st = my_stats + (k % STAGES) * team_threads + t;
        float g_sum = 0.0f, gx_sum = 0.0f;
        float gk[KEEP ? X128 : 1], xk[KEEP ? X128 : 1];
        if (active) {
            const float2 ms = *st;
#pragma unroll
            for (int p = 0; p < P; p++) {
                if (c0 + p * stride < C) {
                    const x128 pd = slot[p * team_threads], px = slot[(P + p) * team_threads];
#pragma unroll
                    for (int j = 0; j < X128; j++) {
                        const float d = to_float(pd.v[j]);
                        const float xhat = (to_float(px.v[j]) - ms.x) * ms.y;
                        const float g = d * w(p, j);
                        g_sum += g;
                        gx_sum += g * xhat;
                        dw[p][j] += d * xhat;
                        db[p][j] += d;
                        if (KEEP) {
                            gk[KEEP ? j : 0] = g;
                            xk[KEEP ? j : 0] = xhat;
                        }
                    }
                }
            }
        } else if (KEEP) {
#pragma unroll
            for (int j = 0; j < X128; j++) gk[KEEP ? j : 0] = xk[KEEP ? j : 0] = 0.0f;
        }
        // the team's two sums, in a fixed order. Within a warp: one exchange across the half-warps
        // leaves lanes 0-15 with partial g sums and lanes 16-31 with partial g * xhat sums, four
        // more shuffle steps give lane 0 the warp's g sum and lane 16 its g * xhat sum. Across the
        // team's warps (at most 16): through shared memory behind the team's barrier (two buffers:
        // a warp can be one row ahead of another, never two), lane i < 16 of every warp reading
        // warp i's g sum and lane 16 + i its g * xhat sum, then the same four shuffle steps.
        const bool upper = lane >= 16;
        float v = upper ? gx_sum : g_sum;
        v += __shfl_xor_sync(0xFFFFFFFFu, upper ? g_sum : gx_sum, 16);
#pragma unroll
        for (int offset = 8; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, offset);
        float gs = v, gxs = v;
        if (team_warps > 1) {
            float2* red = my_red + (k & 1) * (LN3_MAX_TEAM / 32);
            if (lane == 0) red[team_warp].x = v;
            if (lane == 16) red[team_warp].y = v;
            ln3_team_barrier(1 + team, team_threads);
            const int i = lane % 16;
            float r = 0.0f;
            if (i < team_warps) r = upper ? red[i].y : red[i].x;
#pragma unroll
            for (int offset = 8; offset > 0; offset >>= 1) r += __shfl_xor_sync(0xFFFFFFFFu, r, offset);
            gs = r;
            gxs = r;
        }
        gs = __shfl_sync(0xFFFFFFFFu, gs, 0);
        gxs = __shfl_sync(0xFFFFFFFFu, gxs, 16);
        if (active) {
            // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) = rstd * g + (shift + xhat * scale)
            const float2 ms = *st;
            const float shift = -ms.y * gs * inv_C, scale = -ms.y * gxs * inv_C;
            const int row = row_begin + team + k * teams;
#pragma unroll
            for (int p = 0; p < P; p++) {
                const int c = c0 + p * stride;
                if (c < C) {
                    const x128 pg = slot[(2 * P + p) * team_threads];
                    x128 pd, px;
                    if (!KEEP) {
                        pd = slot[p * team_threads];
                        px = slot[(P + p) * team_threads];
                    }
                    x128 o;
#pragma unroll
                    for (int j = 0; j < X128; j++) {
                        const float g = KEEP ? gk[KEEP ? j : 0] : to_float(pd.v[j]) * w(p, j);
                        const float xhat = KEEP ? xk[KEEP ? j : 0] : (to_float(px.v[j]) - ms.x) * ms.y;
                        const float dx = fmaf(ms.y, g, fmaf(xhat, scale, shift));
                        o.v[j] = from_float<floatX>(to_float(pg.v[j]) + dx);
                    }
                    store128(dinp + (size_t)row * C + c, o);
                }
            }
        }
    }
    ln3_copy_wait<0>();
    __syncthreads();  // every team is done with its stages: they become the 2C accumulator
    float* acc = reinterpret_cast<float*>(smem);
    for (int turn = 0; turn < teams; turn++) {  // team 0 writes, then 1, 2, ... add, in that order
        if (team == turn) {
#pragma unroll
            for (int p = 0; p < P; p++) {
                const int c = c0 + p * stride;
                if (c < C) {
#pragma unroll
                    for (int j = 0; j < X128; j++) {
                        acc[c + j] = (turn == 0 ? 0.0f : acc[c + j]) + dw[p][j];
                        acc[C + c + j] = (turn == 0 ? 0.0f : acc[C + c + j]) + db[p][j];
                    }
                }
            }
        }
        __syncthreads();
    }
    float* partial = scratch + (size_t)blockIdx.x * 2 * C;
    for (int j = threadIdx.x; j < 2 * C; j += blockDim.x) partial[j] = acc[j];
}

// dweight[c] += sum_b partial[b][c], dbias[c] += sum_b partial[b][C + c], b in index order. A block
// of 1024 threads takes 8 columns: thread (x, y) = (tid % 8, tid / 8) sums b = y, y + 128, ... of
// column blockIdx.x * 8 + x (8 columns of 4 bytes: one 32-byte sector per row), then a fixed tree
// over y in shared memory. Grid: ceil(2C / 8) blocks, so the few-MB read is spread over the SMs
// rather than latency bound in a few of them.
#define LN4_FIN_COLS 8
#define LN4_FIN_LANES 128
__global__ void __launch_bounds__(LN4_FIN_COLS* LN4_FIN_LANES) layernorm_backward_finish_v4_kernel(
    floatX* dweight, floatX* dbias, const float* scratch, int parts, int C) {
    __shared__ float tile[LN4_FIN_LANES][LN4_FIN_COLS];
    const int x = threadIdx.x % LN4_FIN_COLS, y = threadIdx.x / LN4_FIN_COLS;
    const int j = blockIdx.x * LN4_FIN_COLS + x;
    float acc = 0.0f;
    if (j < 2 * C) {
        for (int k = y; k < parts; k += LN4_FIN_LANES) acc += scratch[(size_t)k * 2 * C + j];
    }
    tile[y][x] = acc;
    __syncthreads();
    for (int half = LN4_FIN_LANES / 2; half > 0; half /= 2) {
        if (y < half) tile[y][x] += tile[y + half][x];
        __syncthreads();
    }
    if (y == 0 && j < 2 * C) {
        floatX* out = j < C ? dweight + j : dbias + (j - C);
        *out = from_float<floatX>(to_float(*out) + tile[0][x]);
    }
}

// One launch configuration of the v3 backward.
struct Ln4Config {
    int teams, stages, packets;
    bool keep;
};

static bool ln4_config_ok(int C, const Ln4Config& k) {
    if (!layernorm_v3_backward_supported(C) || k.teams < 1 || k.teams > LN3_MAX_TEAMS) return false;
    if (k.stages < 2 || k.stages > 4 || (k.packets != 1 && k.packets != 3) || (k.keep && k.packets != 1)) return false;
    const int threads = k.teams * ln4_team_threads(C, k.packets);
    const size_t smem = ln4_smem_bytes(k.teams, ln4_team_threads(C, k.packets), k.stages, k.packets);
    return threads <= ln4_max_threads(k.keep, k.packets) && smem <= 200 * 1024;
}

// calls fn(kernel) with the kernel instance of configuration k (checked first)
template <typename Fn>
static void ln4_with_kernel(int C, const Ln4Config& k, Fn fn) {
    if (!ln4_config_ok(C, k)) {
        fprintf(stderr, "layernorm_backward_v4: C=%d with %d teams, %d stages, %d packets%s not supported\n", C,
                k.teams, k.stages, k.packets, k.keep ? ", keep" : "");
        exit(1);
    }
    if (k.packets == 3) {
        if (k.stages == 2) fn(layernorm_backward_v4_kernel<2, false, 3>);
        else if (k.stages == 3) fn(layernorm_backward_v4_kernel<3, false, 3>);
        else fn(layernorm_backward_v4_kernel<4, false, 3>);
    } else if (k.keep) {
        if (k.stages == 2) fn(layernorm_backward_v4_kernel<2, true, 1>);
        else if (k.stages == 3) fn(layernorm_backward_v4_kernel<3, true, 1>);
        else fn(layernorm_backward_v4_kernel<4, true, 1>);
    } else {
        if (k.stages == 2) fn(layernorm_backward_v4_kernel<2, false, 1>);
        else if (k.stages == 3) fn(layernorm_backward_v4_kernel<3, false, 1>);
        else fn(layernorm_backward_v4_kernel<4, false, 1>);
    }
}

// Grid of the v3 backward: the blocks that fit on the device at once (one wave), at most one per
// `teams` rows. Also sets the kernel's dynamic shared-memory limit (above 48 KB needs it).
static int layernorm_backward_v4_grid(int N, int C, const Ln4Config& k) {
    const int team_threads = ln4_team_threads(C, k.packets);
    const size_t smem = ln4_smem_bytes(k.teams, team_threads, k.stages, k.packets);
    int wave = 0;
    ln4_with_kernel(C, k, [&](auto kernel) {
        cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        wave = ln4_one_wave_blocks(kernel, k.teams * team_threads, smem);
    });
    const int most = ceil_div(N, k.teams);
    return wave < most ? wave : most;
}

static size_t layernorm_backward_v4_scratch_floats(int N, int C, const Ln4Config& k) {
    return (size_t)layernorm_backward_v4_grid(N, C, k) * 2 * C;
}

// k: the launch configuration; scratch holds
// layernorm_backward_v4_scratch_floats(N, C, k) floats.
static void layernorm_backward_v4(floatX* dinp, floatX* dweight, floatX* dbias, float* scratch, const floatX* dout,
                                  const floatX* inp, const floatX* weight, const float* mean, const float* rstd, int N,
                                  int C, cudaStream_t stream, const Ln4Config& k) {
    const int grid = layernorm_backward_v4_grid(N, C, k);  // checks the configuration
    const int team_threads = ln4_team_threads(C, k.packets);
    const size_t smem = ln4_smem_bytes(k.teams, team_threads, k.stages, k.packets);
    ln4_with_kernel(C, k, [&](auto kernel) {
        kernel<<<grid, k.teams * team_threads, smem, stream>>>(dinp, scratch, dout, inp, weight, mean, rstd, N, C,
                                                               k.teams);
    });
    cudaCheckLast();
    layernorm_backward_finish_v4_kernel<<<ceil_div(2 * C, LN4_FIN_COLS), LN4_FIN_COLS * LN4_FIN_LANES, 0, stream>>>(
        dweight, dbias, scratch, grid, C);
    cudaCheckLast();
}

// ==============================================================================================
// versions

// forward: v1, v2, v3 with 1, 2 or 4 rows per warp, v4 (candidate)
struct FwdVersion {
    int version, rows;
};
static const FwdVersion FWD_VERSIONS[] = {{1, 0}, {2, 0}, {3, 1}, {3, 2}, {3, 4}, {4, 0}};

static bool forward_applies(const FwdVersion& v, int C, bool candidates) {
    if (v.version == 1) return true;
    if (v.version == 4) return candidates && layernorm_forward_v4_supported(C);
    return layernorm_v2_supported(C);
}
static bool forward_is_engine(const FwdVersion& v, bool fused) {
    return v.version == 3 && v.rows == (fused ? LN3_FUSED_ROWS : LN3_FWD_ROWS);
}
static std::string forward_name(const FwdVersion& v, bool fused) {
    if (forward_is_engine(v, fused)) return "v3 (engine)";
    if (v.version == 3) return "v3 (" + std::to_string(v.rows) + (v.rows == 1 ? " row" : " rows") + " per warp)";
    return "v" + std::to_string(v.version) + (v.version == 4 ? " (candidate)" : "");
}

template <bool FUSED>
static void run_forward(const FwdVersion& v, floatX* residual, floatX* out, float* mean, float* rstd, const floatX* a,
                        const floatX* b, const floatX* w, const floatX* bias, int N, int C) {
    if (v.version == 1) {
        if (FUSED) fused_residual_layernorm_forward_v1(residual, out, mean, rstd, a, b, w, bias, N, C, 0);
        else layernorm_forward_v1(out, mean, rstd, a, w, bias, N, C, 0);
    } else if (v.version == 2) {
        layernorm_forward_v2<FUSED>(residual, out, mean, rstd, a, b, w, bias, N, C, 0);
    } else if (v.version == 4) {
        layernorm_forward_v4<FUSED>(residual, out, mean, rstd, a, b, w, bias, N, C, 0);
    } else if (v.rows == 1) {
        layernorm_forward_v3<FUSED, 1>(residual, out, mean, rstd, a, b, w, bias, N, C, 0);
    } else if (v.rows == 2) {
        layernorm_forward_v3<FUSED, 2>(residual, out, mean, rstd, a, b, w, bias, N, C, 0);
    } else {
        layernorm_forward_v3<FUSED, 4>(residual, out, mean, rstd, a, b, w, bias, N, C, 0);
    }
}

// backward: v1, v2; v3 with at most `threads` threads per block (whole teams) and `stages`; v4
// (candidate) likewise with `packets` per thread and `keep` (g and xhat kept in registers)
struct BwdVersion {
    int version, threads, stages, packets;
    bool keep;
};
static const BwdVersion BWD_VERSIONS[] = {
    {1, 0, 0, 0, false},   {2, 0, 0, 0, false},                                                  // v1, v2
    {3, 512, 4, 1, false}, {3, 96, 4, 1, false},  {3, 384, 2, 1, false}, {3, 384, 4, 1, false},  // v3
    {3, 384, 6, 1, false},                                                                       //
    {4, 512, 4, 1, false}, {4, 384, 4, 1, false}, {4, 384, 4, 1, true},  {4, 384, 3, 1, true},   // v4
    {4, 64, 2, 3, false},  {4, 128, 2, 3, false}, {4, 256, 2, 3, false}, {4, 128, 3, 3, false}};

// the v4 launch configuration of a v4 entry (only for version 4: v1-v3 have no packets)
static Ln4Config backward_config_v4(const BwdVersion& v, int C) {
    const Ln4Config k = {ln4_teams(C, v.threads, v.packets), v.stages, v.packets, v.keep};
    return k;
}
static bool backward_applies(const BwdVersion& v, int C, bool candidates) {
    if (v.version == 1) return true;
    if (v.version == 2) return layernorm_v2_supported(C);
    if (v.version == 3) return layernorm_v3_backward_supported(C);
    return candidates && ln4_config_ok(C, backward_config_v4(v, C));
}
static bool backward_is_engine(const BwdVersion& v, int C) {
    return v.version == 3 && v.stages == LN3_BWD_STAGES && ln3_teams(C, v.threads) == ln3_teams(C, LN3_BWD_THREADS);
}
// (version, teams, stages, packets, keep): two entries with the same key run the same kernel
static std::vector<int> backward_key(const BwdVersion& v, int C) {
    if (v.version == 3) return {3, ln3_teams(C, v.threads), v.stages, 1, 0};
    if (v.version == 4) {
        const Ln4Config k = backward_config_v4(v, C);
        return {4, k.teams, k.stages, k.packets, k.keep ? 1 : 0};
    }
    return {v.version};
}
static std::string backward_name(const BwdVersion& v, int C) {
    if (v.version < 3) return "v" + std::to_string(v.version);
    if (backward_is_engine(v, C)) return "v3 (engine)";
    const std::vector<int> key = backward_key(v, C);
    const int teams = key[1], team_threads = v.version == 3 ? ln3_team_threads(C) : ln4_team_threads(C, v.packets);
    std::string name = "v" + std::to_string(v.version) + " (" + std::to_string(teams) +
                       (teams == 1 ? " team" : " teams") + " x " + std::to_string(team_threads) + " thr, ";
    if (v.version == 4) name += std::to_string(v.packets) + " pkt, ";
    name += std::to_string(v.stages) + " stages";
    if (v.keep) name += ", keep";
    return name + (v.version == 4 ? ", candidate)" : ")");
}
static size_t backward_scratch_floats(const BwdVersion& v, int N, int C) {
    if (v.version == 1) return layernorm_backward_v1_scratch_floats(N, C);
    if (v.version == 2) return layernorm_backward_v2_scratch_floats(N, C);
    if (v.version == 3) return layernorm_backward_v3_scratch_floats(N, C, ln3_teams(C, v.threads), v.stages);
    return layernorm_backward_v4_scratch_floats(N, C, backward_config_v4(v, C));
}
static void run_backward(const BwdVersion& v, floatX* dinp, floatX* dw, floatX* db, float* scratch, const floatX* dout,
                         const floatX* x, const floatX* w, const float* mean, const float* rstd, int N, int C) {
    if (v.version == 1) {
        layernorm_backward_v1(dinp, dw, db, scratch, dout, x, w, mean, rstd, N, C, 0);
    } else if (v.version == 2) {
        layernorm_backward_v2(dinp, dw, db, scratch, dout, x, w, mean, rstd, N, C, 0);
    } else if (v.version == 3) {
        const int teams = ln3_teams(C, v.threads);
        layernorm_backward_v3(dinp, dw, db, scratch, dout, x, w, mean, rstd, N, C, 0, teams, v.stages);
    } else {
        layernorm_backward_v4(dinp, dw, db, scratch, dout, x, w, mean, rstd, N, C, 0, backward_config_v4(v, C));
    }
}
// launch configuration of a v3/v4 entry, for the log
static void print_backward_config(const BwdVersion& v, const std::string& name, int N, int C) {
    int grid = 0, threads = 0;
    size_t smem = 0;
    if (v.version == 3) {
        const int teams = ln3_teams(C, v.threads);
        grid = layernorm_backward_v3_grid(N, C, teams, v.stages);
        threads = teams * ln3_team_threads(C);
        smem = ln3_smem_bytes(teams, ln3_team_threads(C), v.stages);
    } else if (v.version == 4) {
        const Ln4Config k = backward_config_v4(v, C);
        grid = layernorm_backward_v4_grid(N, C, k);
        threads = k.teams * ln4_team_threads(C, k.packets);
        smem = ln4_smem_bytes(k.teams, ln4_team_threads(C, k.packets), k.stages, k.packets);
    } else {
        return;
    }
    printf("info: %s: grid %d blocks of %d threads, %.1f KB shared memory each\n", name.c_str(), grid, threads,
           smem / 1024.0);
}

// ---- CPU references (double) ------------------------------------------------------------------

static void cpu_forward(const std::vector<double>& x, const std::vector<double>& w, const std::vector<double>& bias,
                        int N, int C, std::vector<double>& out, std::vector<double>& mean, std::vector<double>& rstd) {
    out.assign((size_t)N * C, 0.0);
    mean.assign(N, 0.0);
    rstd.assign(N, 0.0);
    for (int n = 0; n < N; n++) {
        const double* xr = &x[(size_t)n * C];
        double mu = 0.0, var = 0.0;
        for (int c = 0; c < C; c++) mu += xr[c];
        mu /= C;
        for (int c = 0; c < C; c++) var += (xr[c] - mu) * (xr[c] - mu);
        const double r = 1.0 / sqrt(var / C + 1e-5);
        for (int c = 0; c < C; c++) out[(size_t)n * C + c] = (xr[c] - mu) * r * w[c] + bias[c];
        mean[n] = mu;
        rstd[n] = r;
    }
}

// dinp = dinp0 + dx, dw = dw0 + sum_n dout * xhat, db = db0 + sum_n dout (exact statistics of x)
static void cpu_backward(const std::vector<double>& x, const std::vector<double>& dout, const std::vector<double>& w,
                         const std::vector<double>& mean, const std::vector<double>& rstd, int N, int C,
                         std::vector<double>& dinp, std::vector<double>& dw, std::vector<double>& db) {
    for (int n = 0; n < N; n++) {
        const size_t base = (size_t)n * C;
        double g_mean = 0.0, gx_mean = 0.0;
        for (int c = 0; c < C; c++) {
            const double xhat = (x[base + c] - mean[n]) * rstd[n];
            const double g = dout[base + c] * w[c];
            g_mean += g;
            gx_mean += g * xhat;
        }
        g_mean /= C;
        gx_mean /= C;
        for (int c = 0; c < C; c++) {
            const double d = dout[base + c];
            const double xhat = (x[base + c] - mean[n]) * rstd[n];
            dinp[base + c] += rstd[n] * (d * w[c] - g_mean - xhat * gx_mean);
            dw[c] += d * xhat;
            db[c] += d;
        }
    }
}

// ---- one shape: check every version that applies; with copy_gbs > 0 also time it ---------------

static void run_shape(int N, int C, double copy_gbs, uint32_t seed, bool candidates) {
    const size_t NC = (size_t)N * C;
    const bool timed = copy_gbs > 0.0;
    char shape[64];
    snprintf(shape, sizeof(shape), "(N=%d C=%d)", N, C);
    printf("---- shape N=%d C=%d%s\n", N, C, timed ? "" : " (checks only)");

    Rng rng;
    rng_init(&rng, seed);
    const std::vector<floatX> ha = bench::random_normal<floatX>(&rng, NC, 0.1f, 1.0f);
    const std::vector<floatX> hb = bench::random_normal<floatX>(&rng, NC, 0.0f, 0.5f);
    const std::vector<floatX> hw = bench::random_normal<floatX>(&rng, C, 1.0f, 0.2f);
    const std::vector<floatX> hbias = bench::random_normal<floatX>(&rng, C, 0.0f, 0.2f);
    const std::vector<floatX> hdout = bench::random_normal<floatX>(&rng, NC, 0.0f, 1.0f);
    const std::vector<floatX> hdinp0 = bench::random_normal<floatX>(&rng, NC, 0.0f, 0.5f);
    const std::vector<floatX> hdw0 = bench::random_normal<floatX>(&rng, C, 0.0f, 1.0f);
    const std::vector<floatX> hdb0 = bench::random_normal<floatX>(&rng, C, 0.0f, 1.0f);

    // references: plain forward of a; fused: residual = round(a + b), forward of it; backward of the
    // plain forward of a, with its exact statistics
    const std::vector<double> xa = bench::to_double(ha), xb = bench::to_double(hb), w = bench::to_double(hw);
    const std::vector<double> bias = bench::to_double(hbias), dout = bench::to_double(hdout);
    std::vector<double> ref_res(NC);
    for (size_t i = 0; i < NC; i++) ref_res[i] = to_float(from_float<floatX>((float)(xa[i] + xb[i])));
    std::vector<double> ref_out_a, ref_mean_a, ref_rstd_a, ref_out_f, ref_mean_f, ref_rstd_f;
    cpu_forward(xa, w, bias, N, C, ref_out_a, ref_mean_a, ref_rstd_a);
    cpu_forward(ref_res, w, bias, N, C, ref_out_f, ref_mean_f, ref_rstd_f);
    std::vector<double> ref_dinp = bench::to_double(hdinp0), ref_dw = bench::to_double(hdw0);
    std::vector<double> ref_db = bench::to_double(hdb0);
    cpu_backward(xa, dout, w, ref_mean_a, ref_rstd_a, N, C, ref_dinp, ref_dw, ref_db);

    floatX *a = bench::to_device(ha), *b = bench::to_device(hb), *weight = bench::to_device(hw);
    floatX *bias_d = bench::to_device(hbias), *ddout = bench::to_device(hdout), *dinp = bench::to_device(hdinp0);
    floatX *gw = bench::to_device(hdw0), *gb = bench::to_device(hdb0);
    floatX* out = bench::device_alloc<floatX>(NC);
    floatX* residual = bench::device_alloc<floatX>(NC);
    float* mean = bench::device_alloc<float>(N);
    float* rstd = bench::device_alloc<float>(N);
    size_t scratch_floats = layernorm_backward_scratch_floats(N, C);
    for (const BwdVersion& v : BWD_VERSIONS) {
        if (backward_applies(v, C, candidates)) {
            scratch_floats = std::max(scratch_floats, backward_scratch_floats(v, N, C));
        }
    }
    float* scratch = bench::device_alloc<float>(scratch_floats);

    const double fwd_bytes = 2.0 * NC * sizeof(floatX) + 8.0 * N;
    const double fused_bytes = 4.0 * NC * sizeof(floatX) + 8.0 * N;
    const double bwd_bytes = 4.0 * NC * sizeof(floatX) + 8.0 * N;

    // ---- forward and fused forward ----
    auto poison_forward = [&] {
        bench::poison(out, NC);
        bench::poison(residual, NC);
        bench::poison(mean, N);
        bench::poison(rstd, N);
    };
    auto forward_error = [&](bool fused) {
        double err = bench::rel_error(bench::to_host(out, NC), fused ? ref_out_f : ref_out_a);
        err = std::max(err, bench::rel_error(bench::to_host(mean, N), fused ? ref_mean_f : ref_mean_a));
        err = std::max(err, bench::rel_error(bench::to_host(rstd, N), fused ? ref_rstd_f : ref_rstd_a));
        if (fused) err = std::max(err, bench::rel_error(bench::to_host(residual, NC), ref_res));
        return err;
    };
    for (int f = 0; f < 2; f++) {
        const bool fused = f == 1;
        const std::string kernel =
            std::string(fused ? "layernorm fused residual + forward " : "layernorm forward ") + shape;
        for (const FwdVersion& v : FWD_VERSIONS) {
            if (!forward_applies(v, C, candidates)) continue;
            auto fwd = [&] {
                if (fused) run_forward<true>(v, residual, out, mean, rstd, a, b, weight, bias_d, N, C);
                else run_forward<false>(v, NULL, out, mean, rstd, a, NULL, weight, bias_d, N, C);
            };
            poison_forward();
            fwd();
            cudaCheck(cudaDeviceSynchronize());
            const double err = forward_error(fused);
            const std::string name = forward_name(v, fused);
            if (timed) {
                bench::report_memory(kernel, name, err, TOL, bench::time_ms(fwd), fused ? fused_bytes : fwd_bytes,
                                     copy_gbs);
            } else {
                bench::check((kernel + " " + name).c_str(), err, TOL);
            }
        }
        // the engine's entry point (its version, or the fallback for this C)
        poison_forward();
        if (fused) fused_residual_layernorm_forward(residual, out, mean, rstd, a, b, weight, bias_d, N, C, 0);
        else layernorm_forward(out, mean, rstd, a, weight, bias_d, N, C, 0);
        cudaCheck(cudaDeviceSynchronize());
        bench::check((kernel + " engine entry").c_str(), forward_error(fused), TOL);
    }

    // ---- backward (statistics from v1's plain forward of a) ----
    const std::string kernel = std::string("layernorm backward ") + shape;
    layernorm_forward_v1(out, mean, rstd, a, weight, bias_d, N, C, 0);
    auto reset_backward = [&] {
        bench::copy_to_device(dinp, hdinp0);
        bench::copy_to_device(gw, hdw0);
        bench::copy_to_device(gb, hdb0);
        bench::poison(scratch, scratch_floats);
    };
    // checks `bwd` (twice from the same state: same bits) and returns its error
    auto check_backward = [&](const std::string& what, auto bwd) {
        std::vector<floatX> got[2][3];
        for (int run = 0; run < 2; run++) {
            reset_backward();
            bwd();
            cudaCheck(cudaDeviceSynchronize());
            got[run][0] = bench::to_host(dinp, NC);
            got[run][1] = bench::to_host(gw, C);
            got[run][2] = bench::to_host(gb, C);
        }
        double err = bench::rel_error(got[0][0], ref_dinp);
        err = std::max(err, bench::rel_error(got[0][1], ref_dw));
        err = std::max(err, bench::rel_error(got[0][2], ref_db));
        for (int i = 0; i < 3; i++) {
            if (!bench::same_bits(got[0][i], got[1][i])) {
                printf("%s: two runs from the same state differ (%s)\n", what.c_str(),
                       i == 0 ? "dinp" : (i == 1 ? "dweight" : "dbias"));
                err = INFINITY;
            }
        }
        return err;
    };
    std::vector<std::vector<int>> seen;  // configurations already run (one entry per kernel)
    for (const BwdVersion& v : BWD_VERSIONS) {
        if (!backward_applies(v, C, candidates)) continue;
        const std::vector<int> key = backward_key(v, C);
        if (std::find(seen.begin(), seen.end(), key) != seen.end()) continue;
        seen.push_back(key);
        auto bwd = [&] { run_backward(v, dinp, gw, gb, scratch, ddout, a, weight, mean, rstd, N, C); };
        const std::string name = backward_name(v, C);
        const double err = check_backward(kernel + " " + name, bwd);
        if (!timed) {
            bench::check((kernel + " " + name).c_str(), err, TOL);
            continue;
        }
        print_backward_config(v, name, N, C);
        bench::report_memory(kernel, name, err, TOL, bench::time_ms(bwd), bwd_bytes, copy_gbs);
    }
    const double err = check_backward(kernel + " engine entry", [&] {
        layernorm_backward(dinp, gw, gb, scratch, ddout, a, weight, mean, rstd, N, C, 0);
    });
    bench::check((kernel + " engine entry").c_str(), err, TOL);
    if (timed && layernorm_v3_backward_supported(C)) {
        // how much of the engine's backward is its second (partials) kernel
        const int grid = layernorm_backward_v3_grid(N, C, ln3_teams(C, LN3_BWD_THREADS), LN3_BWD_STAGES);
        const double ms = bench::time_ms([&] {
            layernorm_backward_finish_v3_kernel<<<ceil_div(2 * C, 32), dim3(32, 32)>>>(gw, gb, scratch, grid, C);
            cudaCheckLast();
        });
        printf("info: engine backward: its partials kernel alone (%d partials of %d floats) takes %.1f us\n", grid,
               2 * C, ms * 1e3);
        if (candidates) {
            const double ms4 = bench::time_ms([&] {
                layernorm_backward_finish_v4_kernel<<<ceil_div(2 * C, LN4_FIN_COLS), LN4_FIN_COLS * LN4_FIN_LANES>>>(
                    gw, gb, scratch, grid, C);
                cudaCheckLast();
            });
            printf("info: v4's partials kernel on the same %d partials takes %.1f us\n", grid, ms4 * 1e3);
        }
    }

    for (floatX* p : {a, b, weight, bias_d, ddout, dinp, gw, gb, out, residual}) cudaCheck(cudaFree(p));
    for (float* p : {mean, rstd, scratch}) cudaCheck(cudaFree(p));
}

int main(int argc, char** argv) {
    int N = 65536, C = 768;
    bool sweep = true, candidates = false;
    std::vector<const char*> numbers;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--no-sweep") == 0) sweep = false;
        else if (strcmp(argv[i], "--v4") == 0) candidates = true;
        else numbers.push_back(argv[i]);
    }
    if (numbers.size() == 2) {
        char *end_n = NULL, *end_c = NULL;
        const long n = strtol(numbers[0], &end_n, 10), c = strtol(numbers[1], &end_c, 10);
        if (*end_n != '\0' || *end_c != '\0' || n <= 0 || c <= 0 || n > (1L << 26) || c > (1L << 16)) {
            fprintf(stderr, "error: N must be an integer in [1, 2^26] and C in [1, 65536], got N=%s C=%s\n", numbers[0],
                    numbers[1]);
            return 1;
        }
        N = (int)n;
        C = (int)c;
    } else if (!numbers.empty()) {
        fprintf(stderr, "usage: %s [N C] [--no-sweep] [--v4]\n", argv[0]);
        return 1;
    }
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    printf("layernorm: N=%d C=%d, %s storage, %s%s\n", N, C, LLMC_PRECISION_NAME, prop.name,
           candidates ? ", with the v4 candidates" : "");

    uint32_t seed = 1;
    if (sweep) {
        // odd N everywhere; GPT-2 widths; v3's largest team (4096 bf16); partial packet groups (776,
        // 8); C = 99: no 16-byte packets, v1 only (the engine's fallback)
        const int shapes[][2] = {{1003, 768}, {517, 1024}, {301, 1280}, {257, 1600}, {129, 2048}, {33, 4096},
                                 {77, 776},   {65, 8},     {1, 768},    {31, 99}};
        for (const auto& s : shapes) run_shape(s[0], s[1], 0.0, seed++, candidates);
    }
    const double copy_gbs = bench::copy_bandwidth_gbs();
    run_shape(N, C, copy_gbs, seed++, candidates);
    return bench::finish();
}
