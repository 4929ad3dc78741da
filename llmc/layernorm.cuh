/*
LayerNorm over the channels, alone or fused with the residual add that precedes it.

Forward, per row n of N = B*T rows of C channels (eps 1e-5, biased variance, as PyTorch):
    mean[n] = sum_c x[n,c] / C,  rstd[n] = 1 / sqrt(sum_c (x[n,c]-mean)^2 / C + eps)
    out[n,c] = (x[n,c] - mean[n]) * rstd[n] * weight[c] + bias[c]
Fused form (fused_residual_layernorm_forward): residual[n,c] = a[n,c] + b[n,c] is stored (in floatX)
and normalized in the same pass, so the block output is read once instead of three times. The
normalized value is the stored (rounded) residual, the one the backward pass will read.
mean and rstd are kept in fp32 for the backward pass.

Backward, with xhat = (x - mean) * rstd and g = dout * weight:
    dinp[n,c] += rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))     ("+=": dinp is the residual
                                                                       stream's gradient, which
                                                                       this adds to)
    dweight[c] += sum_n dout[n,c] * xhat[n,c],   dbias[c] += sum_n dout[n,c]

Bytes: forward 2NC floatX (fused 4NC), backward 4NC (dout, x, dinp read + write) plus O(N + C); a
few flops per byte, so all three are memory bound. Four versions; the launchers at the bottom
(what the engine calls) pick for the forward v3 where it applies, else v1, and for the backward v4
(C <= 6144 bf16), else v1 (v3, the engine's backward for 1024 < C <= 4096 before 2026-11-24's
session 4, stays in dev/cuda as a step of the course). Numbers below: one H200 (copy ~4140 GB/s), N =
65,536, C = 768, bf16, from dev/cuda/layernorm.cu (2026-11-24 unless said otherwise).

v1 (the first, simple version; dev/cuda/layernorm.cu keeps timing it): one warp per row, scalar
loads, two passes over global memory; the backward writes each warp's dweight/dbias partial sums
for its rows into global scratch and re-reads them every row. 12% of the copy bandwidth in the
backward, 64% in the forward.

v2: one warp per row (the backward: two rows at a time when C is small), each lane owns the fixed
channels (i*32 + lane)*X128 .. +X128 (i < VPL, the packets per lane), read with 16-byte loads and
kept in registers, so the row is read from memory once; mean and variance are two passes over those
registers (two-pass: a one-pass E[x^2]-E[x]^2 loses digits in fp32). In the backward, a block of
LNB_WARPS warps owns a fixed range of LNB_ROWS_PER_BLOCK rows; each lane accumulates the
dweight/dbias sums of its channels in registers over its rows, the warps of a block then add them
into shared memory one warp after the other (fixed order), and the block writes one 2C partial to
scratch; a second kernel adds the per-block partials in block order. Measured: forward 72.6%,
fused 91.8%, backward 37.9% (257 us). Why the backward is slow: it holds two rows of three tensors
plus 2 * VPL * X128 accumulators per lane, 236 registers at C = 768, so one 8-warp block fits per
SM and too few bytes are in flight. The plain forward keeps its row as floats (63 registers) and a
warp has its one 1.5 KB row in flight only while it loads.

v3 (the engine's forward; its backward is a step of the course, v4 replaced it):
  forward: v2's warp-per-row arithmetic with the row kept packed (floatX) and converted where
    used: 48 instead of 63 registers at C = 768, 5 blocks per SM instead of 4: 83.0-84.9% in four
    runs (57.4-58.6 us) with 8-warp blocks; C = 1024: 86.5%. A warp can also load ROWS rows with
    all their loads issued first: 2 rows measured 81-82%, 4 rows 60% (121 registers); the engine
    uses LN3_FWD_ROWS = 1. The fused form runs the same kernel: 90.0-91.8% (v2 91.4%); C = 1024
    89.5%.
    Launch options (the engine's: the LN3_FWD_* and LN3_FUSED_* defines below). A later
    2026-11-24 run measured the block size and st.global.cs stores of out (evict first) in two
    runs of dev/cuda/layernorm.cu, the second alone on the machine (the first shared its host with
    a compile, which slows every launch; its numbers in parentheses):
      plain  8 warps 84.5% (80.6%), 4 warps 84.6% (83.6%), 2 warps 83.3% (82.9%), 1 warp 84.4%
             (80.9%); cs stores with 8 warps 84.8% (82.8%), 4 warps 86.8% (84.8%), 2 warps 86.2%
             (83.3%). The engine: 4 warps per block with cs stores (56.6 us). A block's slot
             frees only when its slowest row is done, so smaller blocks refill the SM sooner; the
             evict-first stores leave L2 to the rows being read.
      fused  8 warps 91.5% (90.6%), 4 warps 92.1% (90.9%), 2 warps 91.7% (91.1%), 1 warp 91.7%
             (90.1%); cs stores 88.0-90.0%: slower (the residual is stored too and read back by
             the next layer). The engine: 2 warps per block (107.0 us), no cs stores.
    A register cap for more warps per SM (__launch_bounds__ with 6 or 8 blocks of 256 threads:
    40 or 32 registers) was slower: plain 79.4-84.6% at 40 registers, 61-62% at 32; fused 63-68%, 44%.
    A v4 forward candidate (a one-wave grid of warps, each loading its next row into a second
    register buffer before computing the current one) measured 76.5% (fused 84.4%) and was
    dropped: its two buffers cost more warps per SM than the early loads gain. A v5 forward
    candidate (2026-11-24, a later run: a one-wave grid of warps, each streaming its rows
    round-robin through a ring of 2-4 shared-memory stages filled by cp.async, so 1-3 rows per
    warp stay in flight during the arithmetic without costing registers; 58 registers) was slower
    in every launch configuration and was dropped too: 8 warps per block with 2, 3, 4 stages
    75.8%, 75.3%, 73.7%; 4 warps 74.7% (3 stages), 72.5% (4); 16 warps 79.0% (2), 75.7% (3); 2
    blocks per SM 70.6%; st.global.cs stores of out 72.1-74.3%; fused 77.7-85.9% (v3 91.5% in the
    same run). More stages were slower, so the bytes in flight were not what it lacked; like the
    one-wave variants of other kernels here (AdamW), a fixed partition of the rows does worse on
    this GPU than many short blocks that the hardware schedules as others finish.
  backward: a row is shared by a "team" of C / X128 threads (rounded up to whole warps; one 16-byte
    packet of the row per thread), so each thread keeps only X128 dweight and X128 dbias sums
    instead of v2's 2 * VPL * X128 (64 registers in all). A block holds as many teams as fit in
    LN3_BWD_THREADS threads (5 teams of 96 at C = 768); team t of a block takes the block's rows
    t, t + teams, .... The rows are not staged in registers but prefetched with cp.async (16-byte
    global -> shared copies that need no registers while in flight) LN3_BWD_STAGES - 1 rows ahead
    of the one computed, mean and rstd with them; a thread only ever reads the shared-memory bytes
    it copied itself, so no barrier guards the copies, and the second pass over the row reads it
    again from shared memory (keeping it in registers took 99 registers). The row's two sums
    (g, g * xhat) are added over the team with warp shuffles, then across the team's warps
    through shared memory behind a named barrier (bar.sync per team; double-buffered, one
    barrier per row). The grid is one wave: as many blocks as fit on the device at once
    (occupancy API x multiprocessors), each taking an equal contiguous range of rows, so every
    block ends at about the same time and there are few partials to add. At the end the teams of
    a block add their sums into shared memory one team after the other, the block writes one 2C
    partial to scratch, and a second kernel adds the partials in block order (32 x 32 threads per
    32 columns). Measured 75.6-76.4% (127.6-129.3 us; v2 257 us); C = 1024 74.6%, C = 1600 at N =
    16,384 59.9% (fewer rows per block). What limited it (ncu on the 4-team variant, 129.9 us in
    all): the main kernel alone takes 122 us at 66% of peak DRAM throughput, SM throughput 56%,
    22 warps active per SM, 69 M warp instructions (~350 per warp per row): bound by latency and
    instruction issue more than by bandwidth; the partials kernel adds a few us.

v4 (the engine's backward for C <= 6144 bf16): v3's structure with fewer instructions per row and
  several packets per thread.
  - The two sums of a warp (g, g * xhat) in 5 shuffles instead of 10: one exchange across the
    half-warps leaves the lower half with g partials and the upper with g * xhat partials, then
    each half reduces its own; a multi-warp team adds its warps' pairs by shuffles, not a loop.
    dx = rstd * g + (shift + xhat * scale): two FMAs per element.
  - P packets per thread (thread t of a team owns packets t, t + team_threads, ...): with P = 3
    a C = 768 row is one warp's, so there is no team barrier at all, and the per-row overhead
    (shuffles, stats, loop) is shared by 3 packets. 2 * P * X128 accumulators: 127 registers at
    P = 3 (launch bounds 128); P = 4 needs 166, so its blocks are at most 128 threads.
  - Small blocks: 2 one-warp teams per block (64 threads), 2 stages. Measured (2026-11-24, two
    runs): 85.0% and 84.9% of copy (114.3-115.0 us, v3 129 us); its main kernel alone 112.0 us.
    Other configurations at C = 768: 4 teams 80.4%, 8 teams 76.0%, 1 team 70.8%, 3 stages 82.1%,
    one packet per thread in v3's 5 teams of 96 threads 73.4% (the fewer shuffles alone do not
    help), KEEP (g and xhat kept in registers between the two passes over the row: 80 registers)
    77.3%. The grids were 4 blocks per SM for every block size from 32 to 128 threads, so
    8 warps per SM (2 teams) beat 16 (4 teams) and 4 (1 team); the cap is the 16 named barriers
    the kernel reserves (bar.sync with a register id: ptxas says "used 16 barriers"), not
    registers or shared memory (without the barrier 8 blocks fit, and were slower: below).
  - Wider rows (C = 776 .. 1024 bf16): 3 packets per thread in two-warp teams, 2 teams, 3 stages:
    C = 1024 87.4% (148.2 us); one warp with 4 packets per thread 85.9%, 4 teams 2 stages 87.3%,
    v3 74.6%. Not measured at other C in this range.
  - Rows interleaved across the grid (team t of block b takes rows b * teams + t + k * grid *
    teams, not a contiguous range of the block's): every warp of the GPU then works in one moving
    window of neighbouring rows instead of 1056 places 62 rows apart. And the partials kernel as a
    programmatic dependent launch (sm_90: resident before the main kernel ends, waiting at
    griddepcontrol.wait), which hides its launch. Measured (2026-11-24 session 4, two runs):
    interleaved 89.3% / 89.0%, dependent launch 87.5% / 86.9%, both 91.1% / 88.6%, against
    85.5% / 85.8% without either in the same runs; the engine's since. With both, 4 teams
    85.4% / 84.4%, 3 stages 88.2% / 87.4%. Dropped after the first of those runs: a kernel
    without the named barrier for one-warp teams (8 blocks per SM could run instead of 4: 1056
    blocks, 81.3% / 80.6%; 1 team of one warp, 2112 blocks, 79.8% / 78.6%: more warps per SM are
    slower here, as 4 teams above) and dinp stored with st.global.cs (85.5% / 85.2% against
    86.1% / 85.3%).
  - The partials: v3's kernel (32 x 32 threads per 32 columns). A wider one (8 columns x 128
    lanes per block, 192 blocks at C = 768) took 8.7-9.0 us alone on 528 partials vs 8.2-8.4 us
    (both mostly launch and event overhead) and 84.3% vs 85.0% end to end; it stays in
    dev/cuda/layernorm.cu as a candidate. In the engine the partials add ~3 us (main kernel
    112.0 us of 115.0).

Determinism (the v3 and v4 backward): the row partition depends on N, C and the device (its
multiprocessor count and the kernel's occupancy on it), never on timing, and every sum is taken in
a fixed order with no atomics, so the same inputs give the same bits run after run on the same GPU
(a different GPU model may group the dweight/dbias sums differently and round differently in the
last bits). dev/cuda/layernorm.cu runs every backward twice from the same state and compares bits.
*/
#ifndef LLMC_LAYERNORM_CUH
#define LLMC_LAYERNORM_CUH

#include "llmc/cuda_common.cuh"

#define LN_EPS 1e-5f
#define LN_WARPS_PER_BLOCK 8
#define LN_ROWS_PER_WARP 32

// One warp normalizes row `row` of x into out (and records mean, rstd).
__device__ static inline void layernorm_row(floatX* out, float* mean, float* rstd, const floatX* x,
                                            const floatX* weight, const floatX* bias, int row, int C) {
    const int lane = threadIdx.x % 32;
    const floatX* xr = x + (size_t)row * C;
    float sum = 0.0f;
    for (int c = lane; c < C; c += 32) sum += to_float(xr[c]);
    const float m = warp_sum(sum) / C;
    float var = 0.0f;
    for (int c = lane; c < C; c += 32) {
        const float d = to_float(xr[c]) - m;
        var += d * d;
    }
    const float s = 1.0f / sqrtf(warp_sum(var) / C + LN_EPS);
    floatX* o = out + (size_t)row * C;
    for (int c = lane; c < C; c += 32) {
        const float n = (to_float(xr[c]) - m) * s;
        o[c] = from_float<floatX>(n * to_float(weight[c]) + to_float(bias[c]));
    }
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = s;
    }
}

__global__ void layernorm_forward_v1_kernel(floatX* out, float* mean, float* rstd, const floatX* inp,
                                         const floatX* weight, const floatX* bias, int N, int C) {
    const int row = blockIdx.x * LN_WARPS_PER_BLOCK + threadIdx.x / 32;
    if (row >= N) return;
    layernorm_row(out, mean, rstd, inp, weight, bias, row, C);
}

__global__ void fused_residual_layernorm_forward_v1_kernel(floatX* residual, floatX* out, float* mean, float* rstd,
                                                        const floatX* a, const floatX* b, const floatX* weight,
                                                        const floatX* bias, int N, int C) {
    const int row = blockIdx.x * LN_WARPS_PER_BLOCK + threadIdx.x / 32;
    if (row >= N) return;
    const int lane = threadIdx.x % 32;
    const size_t base = (size_t)row * C;
    for (int c = lane; c < C; c += 32) residual[base + c] = from_float<floatX>(to_float(a[base + c]) + to_float(b[base + c]));
    __syncwarp();  // the row is read back by other lanes of this warp
    layernorm_row(out, mean, rstd, residual, weight, bias, row, C);
}

static void layernorm_forward_v1(floatX* out, float* mean, float* rstd, const floatX* inp, const floatX* weight,
                              const floatX* bias, int N, int C, cudaStream_t stream) {
    layernorm_forward_v1_kernel<<<ceil_div(N, LN_WARPS_PER_BLOCK), 32 * LN_WARPS_PER_BLOCK, 0, stream>>>(
        out, mean, rstd, inp, weight, bias, N, C);
    cudaCheckLast();
}

// residual = a + b; out = layernorm(residual)
static void fused_residual_layernorm_forward_v1(floatX* residual, floatX* out, float* mean, float* rstd, const floatX* a,
                                             const floatX* b, const floatX* weight, const floatX* bias, int N, int C,
                                             cudaStream_t stream) {
    fused_residual_layernorm_forward_v1_kernel<<<ceil_div(N, LN_WARPS_PER_BLOCK), 32 * LN_WARPS_PER_BLOCK, 0, stream>>>(
        residual, out, mean, rstd, a, b, weight, bias, N, C);
    cudaCheckLast();
}

// v1 backward: each warp handles LN_ROWS_PER_WARP consecutive rows; its partial dweight/dbias sums go to
// scratch[warp][0..C) and scratch[warp][C..2C).
__global__ void layernorm_backward_v1_kernel(floatX* dinp, float* scratch, const floatX* dout, const floatX* inp,
                                          const floatX* weight, const float* mean, const float* rstd, int N, int C) {
    const int warp = blockIdx.x * LN_WARPS_PER_BLOCK + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int row_begin = warp * LN_ROWS_PER_WARP;
    if (row_begin >= N) return;
    const int row_end = min(row_begin + LN_ROWS_PER_WARP, N);
    float* dw_partial = scratch + (size_t)warp * 2 * C;
    float* db_partial = dw_partial + C;
    for (int row = row_begin; row < row_end; row++) {
        const size_t base = (size_t)row * C;
        const float m = mean[row], s = rstd[row];
        float g_sum = 0.0f, gx_sum = 0.0f;
        for (int c = lane; c < C; c += 32) {
            const float xhat = (to_float(inp[base + c]) - m) * s;
            const float g = to_float(dout[base + c]) * to_float(weight[c]);
            g_sum += g;
            gx_sum += g * xhat;
        }
        const float g_mean = warp_sum(g_sum) / C;
        const float gx_mean = warp_sum(gx_sum) / C;
        const bool first = row == row_begin;
        for (int c = lane; c < C; c += 32) {
            const float xhat = (to_float(inp[base + c]) - m) * s;
            const float d = to_float(dout[base + c]);
            const float g = d * to_float(weight[c]);
            const float dx = s * (g - g_mean - xhat * gx_mean);
            dinp[base + c] = from_float<floatX>(to_float(dinp[base + c]) + dx);
            dw_partial[c] = (first ? 0.0f : dw_partial[c]) + d * xhat;
            db_partial[c] = (first ? 0.0f : db_partial[c]) + d;
        }
    }
}

static size_t layernorm_backward_v1_scratch_floats(int N, int C) {
    return (size_t)ceil_div(N, LN_ROWS_PER_WARP) * 2 * C;
}

// dinp += ..., dweight += ..., dbias += ...; scratch holds layernorm_backward_scratch_floats(N, C).
static void layernorm_backward_v1(floatX* dinp, floatX* dweight, floatX* dbias, float* scratch, const floatX* dout,
                               const floatX* inp, const floatX* weight, const float* mean, const float* rstd, int N,
                               int C, cudaStream_t stream) {
    const int warps = ceil_div(N, LN_ROWS_PER_WARP);
    layernorm_backward_v1_kernel<<<ceil_div(warps, LN_WARPS_PER_BLOCK), 32 * LN_WARPS_PER_BLOCK, 0, stream>>>(
        dinp, scratch, dout, inp, weight, mean, rstd, N, C);
    cudaCheckLast();
    dim3 block(32, 8);
    column_sum_finish_kernel<<<ceil_div(C, 32), block, 0, stream>>>(dweight, scratch, warps, C, 2 * C, 1);
    cudaCheckLast();
    column_sum_finish_kernel<<<ceil_div(C, 32), block, 0, stream>>>(dbias, scratch + C, warps, C, 2 * C, 1);
    cudaCheckLast();
}

// ----------------------------------------------------------------------------------------------
// v2: 16-byte packets, rows in registers, block-level weight-gradient partials

#define LN_MAX_VPL 8          // packets per lane supported by v2 (C <= 8 * 32 * X128)
#define LNB_WARPS 8           // warps per block of the v2 backward
#define LNB_ROWS_PER_BLOCK 128  // rows per block of the v2 backward (fixed: the reduction order)
// rows per iteration of a warp in the v2 backward: two while a row is small (<= 3 packets per lane)
#define LNB_RPI(VPL) ((VPL) <= 3 ? 2 : 1)

static inline bool layernorm_v2_supported(int C) {
    return C % X128 == 0 && C <= LN_MAX_VPL * 32 * X128;
}
static inline int layernorm_vpl(int C) { return ceil_div(C, 32 * X128); }

// FUSED: residual = a + b is stored and normalized; else the input is a (b and residual unused).
template <int VPL, bool FUSED>
__global__ void __launch_bounds__(256) layernorm_forward_v2_kernel(floatX* residual, floatX* out, float* mean,
                                                                     float* rstd, const floatX* a, const floatX* b,
                                                                     const floatX* weight, const floatX* bias, int N,
                                                                     int C) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= N) return;
    const size_t base = (size_t)row * C;
    float x[VPL][X128];
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < VPL; i++) {
        const int c = (i * 32 + lane) * X128;
        if (c < C) {
            const x128 pa = load128cs(a + base + c);
            if (FUSED) {
                const x128 pb = load128cs(b + base + c);
                x128 pr;
#pragma unroll
                for (int k = 0; k < X128; k++) {
                    pr.v[k] = from_float<floatX>(to_float(pa.v[k]) + to_float(pb.v[k]));
                    x[i][k] = to_float(pr.v[k]);
                    sum += x[i][k];
                }
                store128(residual + base + c, pr);
            } else {
#pragma unroll
                for (int k = 0; k < X128; k++) {
                    x[i][k] = to_float(pa.v[k]);
                    sum += x[i][k];
                }
            }
        } else {
#pragma unroll
            for (int k = 0; k < X128; k++) x[i][k] = 0.0f;
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
                const float d = x[i][k] - m;
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
                o.v[k] = from_float<floatX>((x[i][k] - m) * s * to_float(w.v[k]) + to_float(bb.v[k]));
            }
            store128(out + base + c, o);
        }
    }
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = s;
    }
}

// Rows [blockIdx.x * LNB_ROWS_PER_BLOCK, ...); scratch[block][0..C) dweight, [C..2C) dbias partials.
// Dynamic shared memory: 2C floats.
template <int VPL, int RPI>
__global__ void __launch_bounds__(32 * LNB_WARPS) layernorm_backward_v2_kernel(
    floatX* dinp, float* scratch, const floatX* dout, const floatX* inp, const floatX* weight, const float* mean,
    const float* rstd, int N, int C) {
    extern __shared__ float shared_dwdb[];  // (2C)
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int row_begin = blockIdx.x * LNB_ROWS_PER_BLOCK;
    const int row_end = min(row_begin + LNB_ROWS_PER_BLOCK, N);
    float dw[VPL][X128], db[VPL][X128];
#pragma unroll
    for (int i = 0; i < VPL; i++) {
#pragma unroll
        for (int k = 0; k < X128; k++) {
            dw[i][k] = 0.0f;
            db[i][k] = 0.0f;
        }
    }
    // RPI rows per iteration: their loads are all issued before any arithmetic, so a warp keeps
    // RPI * 3 * C * sizeof(floatX) bytes in flight (the kernel is latency bound with one bf16 row)
#pragma unroll 1
    for (int row0 = row_begin + warp; row0 < row_end; row0 += RPI * LNB_WARPS) {
        x128 pd[RPI][VPL], px[RPI][VPL], pg[RPI][VPL];
#pragma unroll
        for (int r = 0; r < RPI; r++) {
            const int row = row0 + r * LNB_WARPS;
            const size_t base = (size_t)row * C;
#pragma unroll
            for (int i = 0; i < VPL; i++) {
                const int c = (i * 32 + lane) * X128;
                if (row < row_end && c < C) {
                    pd[r][i] = load128cs(dout + base + c);
                    px[r][i] = load128cs(inp + base + c);
                    pg[r][i] = load128(dinp + base + c);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < RPI; r++) {
            const int row = row0 + r * LNB_WARPS;
            if (row >= row_end) break;  // uniform across the warp
            const size_t base = (size_t)row * C;
            const float m = mean[row], s = rstd[row];
            float g_sum = 0.0f, gx_sum = 0.0f;
#pragma unroll
            for (int i = 0; i < VPL; i++) {
                const int c = (i * 32 + lane) * X128;
                if (c < C) {
                    const x128 pw = load128(weight + c);  // re-read from L1: saves registers
#pragma unroll
                    for (int k = 0; k < X128; k++) {
                        const float d = to_float(pd[r][i].v[k]);
                        const float xhat = (to_float(px[r][i].v[k]) - m) * s;
                        const float g = d * to_float(pw.v[k]);
                        g_sum += g;
                        gx_sum += g * xhat;
                        dw[i][k] += d * xhat;
                        db[i][k] += d;
                    }
                }
            }
            const float g_mean = warp_sum(g_sum) / C;
            const float gx_mean = warp_sum(gx_sum) / C;
#pragma unroll
            for (int i = 0; i < VPL; i++) {
                const int c = (i * 32 + lane) * X128;
                if (c < C) {
                    const x128 pw = load128(weight + c);
                    x128 o;
#pragma unroll
                    for (int k = 0; k < X128; k++) {
                        const float xhat = (to_float(px[r][i].v[k]) - m) * s;
                        const float g = to_float(pd[r][i].v[k]) * to_float(pw.v[k]);
                        const float dx = s * (g - g_mean - xhat * gx_mean);
                        o.v[k] = from_float<floatX>(to_float(pg[r][i].v[k]) + dx);
                    }
                    store128(dinp + base + c, o);
                }
            }
        }
    }
    // the block's partial sums: warp 0 writes, then warps 1, 2, ... add, in that order
    for (int turn = 0; turn < LNB_WARPS; turn++) {
        if (warp == turn) {
#pragma unroll
            for (int i = 0; i < VPL; i++) {
                const int c = (i * 32 + lane) * X128;
                if (c < C) {
#pragma unroll
                    for (int k = 0; k < X128; k++) {
                        shared_dwdb[c + k] = (turn == 0 ? 0.0f : shared_dwdb[c + k]) + dw[i][k];
                        shared_dwdb[C + c + k] = (turn == 0 ? 0.0f : shared_dwdb[C + c + k]) + db[i][k];
                    }
                }
            }
        }
        __syncthreads();
    }
    float* partial = scratch + (size_t)blockIdx.x * 2 * C;
    for (int j = threadIdx.x; j < 2 * C; j += blockDim.x) partial[j] = shared_dwdb[j];
}

// dweight[c] += sum_b partial[b][c], dbias[c] += sum_b partial[b][C + c] over the `parts` partial
// rows in scratch, b in index order: thread (x, y) of a 32 x LANES block sums b = y, y + LANES, ...
// of column blockIdx.x * 32 + x, then row y = 0 adds the LANES sums in order. Grid: ceil(2C / 32)
// blocks. The v2 backward uses 8 lanes; v3 and v4, with hundreds of partial rows, 32. It may be
// launched as a programmatic dependent launch of the kernel that writes scratch (sm_90: it is
// then resident early and waits here until that kernel finished and its writes are visible).
template <int LANES>
__global__ void __launch_bounds__(32 * LANES) layernorm_backward_finish_kernel(floatX* dweight, floatX* dbias,
                                                                                const float* scratch, int parts, int C) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
    __shared__ float tile[LANES][33];
    const int j = blockIdx.x * 32 + threadIdx.x;
    float acc = 0.0f;
    if (j < 2 * C) {
#pragma unroll 4
        for (int k = threadIdx.y; k < parts; k += LANES) acc += scratch[(size_t)k * 2 * C + j];
    }
    tile[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && j < 2 * C) {
        float s = 0.0f;
        for (int i = 0; i < LANES; i++) s += tile[i][threadIdx.x];
        floatX* out = j < C ? dweight + j : dbias + (j - C);
        *out = from_float<floatX>(to_float(*out) + s);
    }
}

template <bool FUSED>
static void layernorm_forward_v2(floatX* residual, floatX* out, float* mean, float* rstd, const floatX* a,
                                 const floatX* b, const floatX* weight, const floatX* bias, int N, int C,
                                 cudaStream_t stream) {
    const int warps = 8;
    const dim3 grid(ceil_div(N, warps)), block(32 * warps);
    switch (layernorm_vpl(C)) {
#define LLMC_LN_FWD_CASE(V)                                                                                     \
    case V:                                                                                                     \
        layernorm_forward_v2_kernel<V, FUSED><<<grid, block, 0, stream>>>(residual, out, mean, rstd, a, b, weight, \
                                                                          bias, N, C);                          \
        break;
        LLMC_LN_FWD_CASE(1)
        LLMC_LN_FWD_CASE(2)
        LLMC_LN_FWD_CASE(3)
        LLMC_LN_FWD_CASE(4)
        LLMC_LN_FWD_CASE(5)
        LLMC_LN_FWD_CASE(6)
        LLMC_LN_FWD_CASE(7)
        LLMC_LN_FWD_CASE(8)
#undef LLMC_LN_FWD_CASE
        default:
            fprintf(stderr, "layernorm_forward_v2: C=%d not supported\n", C);
            exit(1);
    }
    cudaCheckLast();
}

static size_t layernorm_backward_v2_scratch_floats(int N, int C) {
    return (size_t)ceil_div(N, LNB_ROWS_PER_BLOCK) * 2 * C;
}

static void layernorm_backward_v2(floatX* dinp, floatX* dweight, floatX* dbias, float* scratch, const floatX* dout,
                                  const floatX* inp, const floatX* weight, const float* mean, const float* rstd, int N,
                                  int C, cudaStream_t stream) {
    const int blocks = ceil_div(N, LNB_ROWS_PER_BLOCK);
    const size_t smem = 2 * (size_t)C * sizeof(float);
    switch (layernorm_vpl(C)) {
#define LLMC_LN_BWD_CASE(V)                                                                            \
    case V:                                                                                            \
        layernorm_backward_v2_kernel<V, LNB_RPI(V)><<<blocks, 32 * LNB_WARPS, smem, stream>>>( \
            dinp, scratch, dout, inp, weight, mean, rstd, N, C);                                     \
        break;
        LLMC_LN_BWD_CASE(1)
        LLMC_LN_BWD_CASE(2)
        LLMC_LN_BWD_CASE(3)
        LLMC_LN_BWD_CASE(4)
        LLMC_LN_BWD_CASE(5)
        LLMC_LN_BWD_CASE(6)
        LLMC_LN_BWD_CASE(7)
        LLMC_LN_BWD_CASE(8)
#undef LLMC_LN_BWD_CASE
        default:
            fprintf(stderr, "layernorm_backward_v2: C=%d not supported\n", C);
            exit(1);
    }
    cudaCheckLast();
    layernorm_backward_finish_kernel<8><<<ceil_div(2 * C, 32), dim3(32, 8), 0, stream>>>(dweight, dbias, scratch,
                                                                                        blocks, C);
    cudaCheckLast();
}

// ----------------------------------------------------------------------------------------------
// v3: the forward with several rows in flight per warp; the backward with a team of threads per
// row, cp.async prefetch into shared memory and a one-wave grid (the header comment says why)

// The engine's forward launch, plain and fused (the header comment has the measurements): rows per
// warp, warps per block, st.global.cs stores of out. Each can be set with -D at build time, to
// measure another launch as the engine's.
#ifndef LN3_FWD_ROWS
#define LN3_FWD_ROWS 1
#endif
#ifndef LN3_FWD_WARPS
#define LN3_FWD_WARPS 4
#endif
#ifndef LN3_FWD_STREAM
#define LN3_FWD_STREAM true
#endif
#ifndef LN3_FUSED_ROWS
#define LN3_FUSED_ROWS 1  // one fused row is already two loads per packet
#endif
#ifndef LN3_FUSED_WARPS
#define LN3_FUSED_WARPS 2
#endif
#ifndef LN3_FUSED_STREAM
#define LN3_FUSED_STREAM false
#endif
#define LN3_BWD_THREADS 512   // threads per block of the v3 backward, at most (whole teams)
#define LN3_BWD_STAGES 4      // rows a team holds in shared memory: the one computed + 3 in flight
#define LN3_MAX_TEAM 512      // threads of one team at most, so C <= 512 * X128
#define LN3_MAX_TEAMS 15      // named barriers 1..15 (0 is __syncthreads)

__device__ static inline void ln3_store128cs(floatX* p, const x128& x) {
    __stcs(reinterpret_cast<int4*>(p), *reinterpret_cast<const int4*>(&x));
}

// Rows row0 .. row0 + ROWS - 1 of one warp (row0 = global warp index * ROWS). FUSED: residual =
// a + b is stored and normalized; else the input is a (b and residual unused). STREAM stores out
// with st.global.cs (evict first: out is not re-read while it could still be in L2).
template <int VPL, int ROWS, bool FUSED, bool STREAM>
__global__ void __launch_bounds__(256) layernorm_forward_v3_kernel(floatX* residual, floatX* out, float* mean,
                                                                     float* rstd, const floatX* a, const floatX* b,
                                                                     const floatX* weight, const floatX* bias, int N,
                                                                     int C) {
    const int lane = threadIdx.x % 32;
    const int row0 = (blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) * ROWS;
    if (row0 >= N) return;
    // every load of the warp's rows is issued before the first is used; kept packed (floatX)
    x128 pa[ROWS][VPL];
    x128 pb[FUSED ? ROWS : 1][VPL];
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const size_t base = (size_t)(row0 + r) * C;
#pragma unroll
        for (int i = 0; i < VPL; i++) {
            const int c = (i * 32 + lane) * X128;
            if (row0 + r < N && c < C) {
                pa[r][i] = load128cs(a + base + c);
                if (FUSED) pb[FUSED ? r : 0][i] = load128cs(b + base + c);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const int row = row0 + r;
        if (row >= N) break;  // uniform across the warp
        const size_t base = (size_t)row * C;
        float sum = 0.0f;
#pragma unroll
        for (int i = 0; i < VPL; i++) {
            const int c = (i * 32 + lane) * X128;
            if (c < C) {
                if (FUSED) {
#pragma unroll
                    for (int k = 0; k < X128; k++) {
                        const float sum_ab = to_float(pa[r][i].v[k]) + to_float(pb[FUSED ? r : 0][i].v[k]);
                        pa[r][i].v[k] = from_float<floatX>(sum_ab);
                    }
                    store128(residual + base + c, pa[r][i]);
                }
#pragma unroll
                for (int k = 0; k < X128; k++) sum += to_float(pa[r][i].v[k]);
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
                    const float d = to_float(pa[r][i].v[k]) - m;
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
                    const float n = (to_float(pa[r][i].v[k]) - m) * s;
                    o.v[k] = from_float<floatX>(n * to_float(w.v[k]) + to_float(bb.v[k]));
                }
                if (STREAM) ln3_store128cs(out + base + c, o);
                else store128(out + base + c, o);
            }
        }
        if (lane == 0) {
            mean[row] = m;
            rstd[row] = s;
        }
    }
}

// rows per warp actually used for VPL packets per lane: ROWS while the rows stay small (VPL <= 4
// and at most 12 packets per lane in all), else fewer; wide rows (VPL >= 5) have one, since their
// registers would otherwise cut the warps per SM (and a wide row is already many bytes in flight)
__host__ __device__ constexpr int ln3_forward_rows(int vpl, int rows) {
    return vpl > 4 ? 1 : (vpl * rows <= 12 ? rows : 12 / vpl);
}

// warps: per block (1..8); STREAM: out stored with st.global.cs
template <bool FUSED, int ROWS, bool STREAM>
static void layernorm_forward_v3(floatX* residual, floatX* out, float* mean, float* rstd, const floatX* a,
                                 const floatX* b, const floatX* weight, const floatX* bias, int N, int C,
                                 cudaStream_t stream, int warps) {
    if (warps < 1 || warps > 8) {
        fprintf(stderr, "layernorm_forward_v3: %d warps per block not supported\n", warps);
        exit(1);
    }
    const dim3 block(32 * warps);
    switch (layernorm_vpl(C)) {
#define LLMC_LN3_FWD_CASE(V)                                                                                \
    case V:                                                                                                 \
        layernorm_forward_v3_kernel<V, ln3_forward_rows(V, ROWS), FUSED, STREAM>                            \
            <<<ceil_div(N, warps * ln3_forward_rows(V, ROWS)), block, 0, stream>>>(residual, out, mean, rstd, a, \
                                                                                  b, weight, bias, N, C);  \
        break;
        LLMC_LN3_FWD_CASE(1)
        LLMC_LN3_FWD_CASE(2)
        LLMC_LN3_FWD_CASE(3)
        LLMC_LN3_FWD_CASE(4)
        LLMC_LN3_FWD_CASE(5)
        LLMC_LN3_FWD_CASE(6)
        LLMC_LN3_FWD_CASE(7)
        LLMC_LN3_FWD_CASE(8)
#undef LLMC_LN3_FWD_CASE
        default:
            fprintf(stderr, "layernorm_forward_v3: C=%d not supported\n", C);
            exit(1);
    }
    cudaCheckLast();
}

// cp.async: 16-byte (L2 only, .cg) and 4-byte (.ca) global -> shared copies that complete in the
// background; commit_group closes a group of them, wait_group<K> waits until at most K of this
// thread's groups are pending. Each thread waits for its own copies only.
__device__ static inline void ln3_copy16(void* smem, const void* gmem) {
    const unsigned dst = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem) : "memory");
}
__device__ static inline void ln3_copy4(void* smem, const void* gmem) {
    const unsigned dst = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(gmem) : "memory");
}
__device__ static inline void ln3_copy_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int PENDING>
__device__ static inline void ln3_copy_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory");
}
// barrier `id` (1..15) for `threads` threads (whole warps): one team of a block
__device__ static inline void ln3_team_barrier(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

static inline int ln3_team_threads(int C) { return ceil_div(C / X128, 32) * 32; }
static inline bool layernorm_v3_backward_supported(int C) {
    return C > 0 && C % X128 == 0 && ln3_team_threads(C) <= LN3_MAX_TEAM;
}
// teams per block for about `threads` threads per block (at least one, at most LN3_MAX_TEAMS)
static inline int ln3_teams(int C, int threads) {
    const int teams = threads / ln3_team_threads(C);
    return teams < 1 ? 1 : (teams > LN3_MAX_TEAMS ? LN3_MAX_TEAMS : teams);
}
// dynamic shared memory: per team and stage the three 16-byte packets and (mean, rstd) of each
// thread, then per team two buffers of one (g, g * xhat) pair per warp
static inline size_t ln3_smem_bytes(int teams, int team_threads, int stages) {
    return (size_t)teams * stages * team_threads * (3 * sizeof(x128) + sizeof(float2)) +
           (size_t)teams * 2 * (LN3_MAX_TEAM / 32) * sizeof(float2);
}

// The rows of team `team` of this block in the v3 and v4 backward: first, first + step, ...
// (count of them). Contiguous: block b owns rows [b N / grid, (b + 1) N / grid), its teams take
// every teams-th of them. Interleaved: rows dealt out across the whole grid, team t of block b
// taking b * teams + t + k * grid * teams.
struct Ln3Rows {
    int first, step, count;
};
__device__ static inline Ln3Rows ln3_team_rows(int N, int teams, int team, bool interleave) {
    const int first = interleave ? blockIdx.x * teams + team : (int)((long long)blockIdx.x * N / gridDim.x) + team;
    const int last = interleave ? N : (int)((long long)(blockIdx.x + 1) * N / gridDim.x);
    const int step = interleave ? gridDim.x * teams : teams;
    return {first, step, first < last ? ceil_div(last - first, step) : 0};
}

// lets a programmatic dependent launch behind this kernel (the partials kernel) start now; it
// waits for this grid's end itself (griddepcontrol.wait)
__device__ static inline void ln3_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// Block b takes rows [b * N / grid, (b + 1) * N / grid); team t of it the rows t, t + teams, ....
// scratch[b][0..C) gets the block's dweight partial sums, [C..2C) its dbias partial sums.
template <int STAGES>
__global__ void __launch_bounds__(LN3_MAX_TEAM, 2) layernorm_backward_v3_kernel(
    floatX* dinp, float* scratch, const floatX* dout, const floatX* inp, const floatX* weight, const float* mean,
    const float* rstd, int N, int C, int teams) {
    extern __shared__ float4 ln3_shared[];  // float4: 16-byte alignment
    const int team_threads = blockDim.x / teams;
    const int team = threadIdx.x / team_threads, t = threadIdx.x % team_threads;
    const int lane = threadIdx.x % 32, team_warp = t / 32, team_warps = team_threads / 32;
    char* smem = reinterpret_cast<char*>(ln3_shared);
    const size_t rows_bytes = (size_t)teams * STAGES * 3 * team_threads * sizeof(x128);
    const size_t stats_bytes = (size_t)teams * STAGES * team_threads * sizeof(float2);
    x128* my_rows = reinterpret_cast<x128*>(smem) + (size_t)team * STAGES * 3 * team_threads;  // [stage][3][t]
    float2* my_stats = reinterpret_cast<float2*>(smem + rows_bytes) + (size_t)team * STAGES * team_threads;
    float2* my_red = reinterpret_cast<float2*>(smem + rows_bytes + stats_bytes) + team * 2 * (LN3_MAX_TEAM / 32);

    const Ln3Rows rows = ln3_team_rows(N, teams, team, false);
    const int c = t * X128;  // this thread's packet of every row
    const bool active = c < C;
    const float inv_C = 1.0f / C;

    x128 pw;  // kept packed (X128 / 2 registers in bf16) and converted where used
    if (active) pw = load128(weight + c);
    float dw[X128], db[X128];
#pragma unroll
    for (int j = 0; j < X128; j++) dw[j] = db[j] = 0.0f;
    // starts the copies of the team's k-th row into stage k % STAGES (an empty group past the end)
    auto issue = [&](int k) {
        if (k < rows.count && active) {
            const int row = rows.first + k * rows.step;
            const size_t off = (size_t)row * C + c;
            x128* slot = my_rows + (size_t)(k % STAGES) * 3 * team_threads + t;
            ln3_copy16(slot, dout + off);
            ln3_copy16(slot + team_threads, inp + off);
            ln3_copy16(slot + 2 * team_threads, dinp + off);
            float2* st = my_stats + (k % STAGES) * team_threads + t;
            ln3_copy4(&st->x, mean + row);
            ln3_copy4(&st->y, rstd + row);
        }
        ln3_copy_commit();
    };
#pragma unroll
    for (int k = 0; k < STAGES - 1; k++) issue(k);
#pragma unroll 1
    for (int k = 0; k < rows.count; k++) {
        // the stage refilled here held row k - 1, which this thread has finished with
        issue(k + STAGES - 1);
        ln3_copy_wait<STAGES - 1>();  // row k has landed (this thread's part of it)
        const x128* slot = my_rows + (size_t)(k % STAGES) * 3 * team_threads + t;
        const float2* st = my_stats + (k % STAGES) * team_threads + t;
        float g_sum = 0.0f, gx_sum = 0.0f;
        if (active) {
            const x128 pd = slot[0], px = slot[team_threads];
            const float2 ms = *st;
#pragma unroll
            for (int j = 0; j < X128; j++) {
                const float d = to_float(pd.v[j]);
                const float xhat = (to_float(px.v[j]) - ms.x) * ms.y;
                const float g = d * to_float(pw.v[j]);
                g_sum += g;
                gx_sum += g * xhat;
                dw[j] += d * xhat;
                db[j] += d;
            }
        }
        // the team's sums: shuffles within each warp, then the warps' pairs in warp order (two
        // buffers: a warp can be one row ahead of another, never two, because of the barrier)
        g_sum = warp_sum(g_sum);
        gx_sum = warp_sum(gx_sum);
        float2* red = my_red + (k & 1) * (LN3_MAX_TEAM / 32);
        if (lane == 0) red[team_warp] = make_float2(g_sum, gx_sum);
        ln3_team_barrier(1 + team, team_threads);
        float gs = 0.0f, gxs = 0.0f;
        for (int i = 0; i < team_warps; i++) {
            const float2 v = red[i];
            gs += v.x;
            gxs += v.y;
        }
        if (active) {
            // the row is read again from shared memory rather than kept in registers across the
            // barrier (fewer registers, more threads per SM)
            const x128 pd = slot[0], px = slot[team_threads], pg = slot[2 * team_threads];
            const float2 ms = *st;
            const float g_mean = gs * inv_C, gx_mean = gxs * inv_C;
            x128 o;
#pragma unroll
            for (int j = 0; j < X128; j++) {
                const float xhat = (to_float(px.v[j]) - ms.x) * ms.y;
                const float dx = ms.y * (to_float(pd.v[j]) * to_float(pw.v[j]) - g_mean - xhat * gx_mean);
                o.v[j] = from_float<floatX>(to_float(pg.v[j]) + dx);
            }
            const int row = rows.first + k * rows.step;
            store128(dinp + (size_t)row * C + c, o);
        }
    }
    ln3_copy_wait<0>();
    __syncthreads();  // every team is done with its stages: they become the 2C accumulator
    float* acc = reinterpret_cast<float*>(smem);
    for (int turn = 0; turn < teams; turn++) {  // team 0 writes, then 1, 2, ... add, in that order
        if (team == turn && active) {
#pragma unroll
            for (int j = 0; j < X128; j++) {
                acc[c + j] = (turn == 0 ? 0.0f : acc[c + j]) + dw[j];
                acc[C + c + j] = (turn == 0 ? 0.0f : acc[C + c + j]) + db[j];
            }
        }
        __syncthreads();
    }
    float* partial = scratch + (size_t)blockIdx.x * 2 * C;
    for (int j = threadIdx.x; j < 2 * C; j += blockDim.x) partial[j] = acc[j];
}

// Grid of the v3 backward: the blocks that fit on the device at once (one wave), at most one per
// `teams` rows. Also sets the kernel's dynamic shared-memory limit (above 48 KB needs it).
template <int STAGES>
static int layernorm_backward_v3_grid_t(int N, int C, int teams) {
    const int team_threads = ln3_team_threads(C);
    const size_t smem = ln3_smem_bytes(teams, team_threads, STAGES);
    cudaCheck(cudaFuncSetAttribute(layernorm_backward_v3_kernel<STAGES>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   (int)smem));
    int device = 0, sms = 0, per_sm = 0;
    cudaCheck(cudaGetDevice(&device));
    cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    cudaCheck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, layernorm_backward_v3_kernel<STAGES>,
                                                            teams * team_threads, smem));
    if (per_sm < 1) per_sm = 1;
    const int most = ceil_div(N, teams);
    return per_sm * sms < most ? per_sm * sms : most;
}

static int layernorm_backward_v3_grid(int N, int C, int teams, int stages) {
    switch (stages) {
        case 2: return layernorm_backward_v3_grid_t<2>(N, C, teams);
        case 3: return layernorm_backward_v3_grid_t<3>(N, C, teams);
        case 4: return layernorm_backward_v3_grid_t<4>(N, C, teams);
        case 6: return layernorm_backward_v3_grid_t<6>(N, C, teams);
        default:
            fprintf(stderr, "layernorm_backward_v3: %d stages not supported (2, 3, 4, 6)\n", stages);
            exit(1);
    }
}

static size_t layernorm_backward_v3_scratch_floats(int N, int C, int teams, int stages) {
    return (size_t)layernorm_backward_v3_grid(N, C, teams, stages) * 2 * C;
}

// The v3 and v4 partials kernel over the main kernel's `parts` partial rows; pdl: launched as a
// programmatic dependent launch of it (resident early, waiting at griddepcontrol.wait).
static void layernorm_backward_finish(floatX* dweight, floatX* dbias, const float* scratch, int parts, int C,
                                      cudaStream_t stream, bool pdl) {
    launch_dependent(layernorm_backward_finish_kernel<32>, dim3(ceil_div(2 * C, 32)), dim3(32, 32), stream, pdl,
                     dweight, dbias, scratch, parts, C);
}

// teams and stages: the launch configuration (the engine's: ln3_teams(C, LN3_BWD_THREADS) and
// LN3_BWD_STAGES); scratch holds layernorm_backward_v3_scratch_floats(N, C, teams, stages).
static void layernorm_backward_v3(floatX* dinp, floatX* dweight, floatX* dbias, float* scratch, const floatX* dout,
                                  const floatX* inp, const floatX* weight, const float* mean, const float* rstd, int N,
                                  int C, cudaStream_t stream, int teams, int stages) {
    if (!layernorm_v3_backward_supported(C) || teams < 1 || teams > LN3_MAX_TEAMS ||
        teams * ln3_team_threads(C) > LN3_MAX_TEAM) {
        fprintf(stderr, "layernorm_backward_v3: C=%d with %d teams not supported\n", C, teams);
        exit(1);
    }
    const int grid = layernorm_backward_v3_grid(N, C, teams, stages);
    const int threads = teams * ln3_team_threads(C);
    const size_t smem = ln3_smem_bytes(teams, ln3_team_threads(C), stages);
    switch (stages) {
#define LLMC_LN3_BWD_CASE(S)                                                                                 \
    case S:                                                                                                  \
        layernorm_backward_v3_kernel<S><<<grid, threads, smem, stream>>>(dinp, scratch, dout, inp, weight, mean, \
                                                                         rstd, N, C, teams);                 \
        break;
        LLMC_LN3_BWD_CASE(2)
        LLMC_LN3_BWD_CASE(3)
        LLMC_LN3_BWD_CASE(4)
        LLMC_LN3_BWD_CASE(6)
#undef LLMC_LN3_BWD_CASE
    }
    cudaCheckLast();
    layernorm_backward_finish(dweight, dbias, scratch, grid, C, stream, false);
}

// ----------------------------------------------------------------------------------------------
// v4: the backward with P 16-byte packets per thread (a C <= 768 bf16 row is one warp's: no team
// barrier), fewer instructions per row, and small blocks (the header comment says why)

#define LN4_BWD_TEAMS 2       // teams per block of the engine's v4 backward
#define LN4_BWD_STAGES 2      // rows a one-warp team holds in shared memory: the one computed + 1 ahead
#define LN4_BWD_WIDE_STAGES 3 // the same for wider rows (3 packets per thread, two-warp teams)
#define LN4_MAX_PACKETS 4     // packets per thread at most (2 * P * X128 accumulators; 128 registers)
#define LN4_MAX_THREADS 256   // threads per block at most with 2 or 3 packets per thread
#ifndef LN4_BWD_INTERLEAVE
#define LN4_BWD_INTERLEAVE true  // the engine's Ln4Config options (below; -D can set them to time another)
#endif
#ifndef LN4_BWD_PDL
#define LN4_BWD_PDL true
#endif

// threads per block at most for P packets per thread (launch bounds, with 2 such blocks per SM):
// one packet fits in 64 registers (512 threads, as v3); 2 or 3 in 128; 4 need more (at 128 they
// spill), so blocks of at most 128 threads (up to 255 registers)
__host__ __device__ constexpr int ln4_max_threads(int packets) {
    return packets == 1 ? LN3_MAX_TEAM : (packets > 3 ? 128 : LN4_MAX_THREADS);
}

// packets per thread that make a row one warp's
static inline int ln4_packets(int C) { return ceil_div(C / X128, 32); }
// threads of a team: `packets` 16-byte packets each, rounded up to whole warps
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

// Block b takes rows [b * N / grid, (b + 1) * N / grid); team t of it the rows t, t + teams, ....
// interleave: team t of block b takes the rows (b * teams + t) + k * grid * teams instead, so the
// rows in flight on the whole GPU at a time are neighbours (one moving window through the tensors).
// scratch[b][0..C) gets the block's dweight partial sums, [C..2C) its dbias partial sums.
// Thread t of a team owns the packets t, t + team_threads, ... (P of them) of every row.
// PE (layer 0's ln1, whose dinp is the encoder's dout): each team also sums the dinp rows it
// writes, as stored, into pe_partials row (its index in the grid): the launcher makes the grid's
// teams a multiple m of T with rows interleaved, so team g's rows are all at position g % T, and
// row g = part * T + t of pe_partials is part g / T of dwpe[t]'s sum (layernorm_backward_v4_dwpe).
// The PE instance may take up to 255 registers (one block per SM in its launch bounds): its 24 more
// accumulators spilled at 128 (118 MB of local loads by ncu, 123 us against 102), while the blocks
// that fit on an SM are bounded by the 16 named barriers of each, not by registers.
template <int STAGES, int P, bool PE>
__global__ void __launch_bounds__(ln4_max_threads(P), PE ? 1 : 2) layernorm_backward_v4_kernel(
    floatX* dinp, float* scratch, const floatX* dout, const floatX* inp, const floatX* weight, const float* mean,
    const float* rstd, int N, int C, int teams, bool interleave, float* pe_partials) {
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

    const Ln3Rows rows = ln3_team_rows(N, teams, team, interleave);
    const int stride = team_threads * X128;  // channels between a thread's packets
    ln3_launch_dependents();
    const int c0 = t * X128;                 // this thread's first packet of every row
    const bool active = c0 < C;
    const float inv_C = 1.0f / C;

    // the weights: as floats with one packet per thread, kept packed (fewer registers) with several
    constexpr bool PACKED_W = P > 1;
    x128 pw[P];
    float wf[PACKED_W ? 1 : X128];
    float dw[P][X128], db[P][X128], pe[PE ? P : 1][X128];
#pragma unroll
    for (int p = 0; p < P; p++) {
        const int c = c0 + p * stride;
        if (c < C) pw[p] = load128(weight + c);
#pragma unroll
        for (int j = 0; j < X128; j++) {
            if (!PACKED_W) wf[PACKED_W ? 0 : j] = c < C ? to_float(pw[p].v[j]) : 0.0f;
            dw[p][j] = db[p][j] = 0.0f;
            if (PE) pe[PE ? p : 0][j] = 0.0f;
        }
    }
    auto w = [&](int p, int j) { return PACKED_W ? to_float(pw[p].v[j]) : wf[PACKED_W ? 0 : j]; };
    // starts the copies of the team's k-th row into stage k % STAGES (an empty group past the end)
    auto issue = [&](int k) {
        if (k < rows.count && active) {
            const int row = rows.first + k * rows.step;
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
    for (int k = 0; k < rows.count; k++) {
        // the stage refilled here held row k - 1, which this thread has finished with
        issue(k + STAGES - 1);
        ln3_copy_wait<STAGES - 1>();  // row k has landed (this thread's part of it)
        const x128* slot = my_rows + (size_t)(k % STAGES) * 3 * P * team_threads + t;
        const float2* st = my_stats + (k % STAGES) * team_threads + t;
        float g_sum = 0.0f, gx_sum = 0.0f;
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
                    }
                }
            }
        }
        // the team's two sums, in a fixed order. Within a warp: one exchange across the half-warps
        // leaves lanes 0-15 with partial g sums and lanes 16-31 with partial g * xhat sums, four
        // more shuffle steps give lane 0 the warp's g sum and lane 16 its g * xhat sum. Across the
        // team's warps (at most 16; none when the row is one warp's): through shared memory behind
        // the team's barrier (two buffers: a warp can be one row ahead of another, never two), lane
        // i < 16 of every warp reading warp i's g sum and lane 16 + i its g * xhat sum, then the
        // same four shuffle steps.
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
            // the row is read again from shared memory (fewer registers than keeping g and xhat):
            // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) = rstd * g + (shift + xhat * scale)
            const float2 ms = *st;
            const float shift = -ms.y * gs * inv_C, scale = -ms.y * gxs * inv_C;
            const int row = rows.first + k * rows.step;
#pragma unroll
            for (int p = 0; p < P; p++) {
                const int c = c0 + p * stride;
                if (c < C) {
                    const x128 pd = slot[p * team_threads], px = slot[(P + p) * team_threads];
                    const x128 pg = slot[(2 * P + p) * team_threads];
                    x128 o;
#pragma unroll
                    for (int j = 0; j < X128; j++) {
                        const float g = to_float(pd.v[j]) * w(p, j);
                        const float xhat = (to_float(px.v[j]) - ms.x) * ms.y;
                        const float dx = fmaf(ms.y, g, fmaf(xhat, scale, shift));
                        o.v[j] = from_float<floatX>(to_float(pg.v[j]) + dx);
                        if (PE) pe[PE ? p : 0][j] += to_float(o.v[j]);
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
    if (PE) {
        float* pe_row = pe_partials + (size_t)(blockIdx.x * teams + team) * C;
#pragma unroll
        for (int p = 0; p < P; p++) {
            const int c = c0 + p * stride;
            if (c < C) {
#pragma unroll
                for (int j = 0; j < X128; j += 4)
                    *reinterpret_cast<float4*>(pe_row + c + j) = make_float4(
                        pe[PE ? p : 0][j], pe[PE ? p : 0][j + 1], pe[PE ? p : 0][j + 2], pe[PE ? p : 0][j + 3]);
            }
        }
    }
}

// A launch configuration of the v4 backward. interleave: rows dealt out across the whole grid
// (the kernel's comment); pdl: the partials kernel as a programmatic dependent launch.
struct Ln4Config {
    int teams, stages, packets;
    bool interleave, pdl;
};
// The engine's (for C with layernorm_v4_backward_supported(C)), the best measured: rows of at most
// 3 * 32 packets (C <= 768 bf16) are one warp's, 2 teams per block, 2 stages (C = 768: 85.0% of
// copy; 3 stages 82.1%); wider rows take 3 packets per thread in teams of several warps, 2 teams
// (1 where two do not fit in a block), 3 stages (C = 1024: 87.4%; one warp with 4 packets per
// thread 85.9%). Rows interleaved across the grid and the partials kernel as a dependent launch
// (LN4_BWD_INTERLEAVE, LN4_BWD_PDL): C = 768 88.6-91.1%; C = 1600 (GPT-2 XL, 2026-11-24 session
// 4, one run) 93.0%, where v3, the engine's there before, took 69.9% (v4 with 2 stages and
// interleaved rows 94.0%, without either 91.8%).
static inline Ln4Config ln4_engine_config(int C) {
    const int row_packets = ln4_packets(C);
    const int packets = row_packets < 1 ? 1 : (row_packets <= 3 ? row_packets : 3);
    const int teams = LN4_BWD_TEAMS * ln4_team_threads(C, packets) <= ln4_max_threads(packets) ? LN4_BWD_TEAMS : 1;
    const Ln4Config k = {teams, row_packets <= 3 ? LN4_BWD_STAGES : LN4_BWD_WIDE_STAGES, packets, LN4_BWD_INTERLEAVE,
                         LN4_BWD_PDL};
    return k;
}
static inline bool ln4_config_ok(int C, const Ln4Config& k) {
    if (C <= 0 || C % X128 != 0 || k.teams < 1 || k.teams > LN3_MAX_TEAMS) return false;
    if (k.stages < 2 || k.stages > 4 || k.packets < 1 || k.packets > LN4_MAX_PACKETS) return false;
    const int team_threads = ln4_team_threads(C, k.packets);
    const size_t smem = ln4_smem_bytes(k.teams, team_threads, k.stages, k.packets);
    return team_threads <= LN3_MAX_TEAM && k.teams * team_threads <= ln4_max_threads(k.packets) && smem <= 200 * 1024 &&
           2 * (size_t)C * sizeof(float) <= smem;  // the stages also hold the block's 2C partial
}
// the engine runs v4 where its configuration fits (C <= 6144 bf16, 3072 fp32)
static inline bool layernorm_v4_backward_supported(int C) { return ln4_config_ok(C, ln4_engine_config(C)); }

// calls fn(kernel) with the kernel instance of configuration k (checked first); PE: the one that
// also sums dwpe's partials
template <bool PE = false, typename Fn>
static void ln4_with_kernel(int C, const Ln4Config& k, Fn fn) {
    if (!ln4_config_ok(C, k)) {
        fprintf(stderr, "layernorm_backward_v4: C=%d with %d teams, %d stages, %d packets not supported\n", C,
                k.teams, k.stages, k.packets);
        exit(1);
    }
    switch (k.stages * 10 + k.packets) {
#define LLMC_LN4_BWD_CASE(S, P) \
    case S * 10 + P: fn(layernorm_backward_v4_kernel<S, P, PE>); break;
        LLMC_LN4_BWD_CASE(2, 1) LLMC_LN4_BWD_CASE(2, 2) LLMC_LN4_BWD_CASE(2, 3) LLMC_LN4_BWD_CASE(2, 4)
        LLMC_LN4_BWD_CASE(3, 1) LLMC_LN4_BWD_CASE(3, 2) LLMC_LN4_BWD_CASE(3, 3) LLMC_LN4_BWD_CASE(3, 4)
        LLMC_LN4_BWD_CASE(4, 1) LLMC_LN4_BWD_CASE(4, 2) LLMC_LN4_BWD_CASE(4, 3) LLMC_LN4_BWD_CASE(4, 4)
#undef LLMC_LN4_BWD_CASE
    }
}

// Blocks of configuration k (PE: the instance that also sums dwpe) that fit on the device at once.
// Also sets the kernel's dynamic shared-memory limit (above 48 KB needs it).
template <bool PE = false>
static int ln4_resident_blocks(int C, const Ln4Config& k) {
    const int threads = k.teams * ln4_team_threads(C, k.packets);
    const size_t smem = ln4_smem_bytes(k.teams, ln4_team_threads(C, k.packets), k.stages, k.packets);
    int device = 0, sms = 0, per_sm = 0;
    cudaCheck(cudaGetDevice(&device));
    cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    ln4_with_kernel<PE>(C, k, [&](auto kernel) {
        cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        cudaCheck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
    });
    return (per_sm < 1 ? 1 : per_sm) * sms;
}

// Grid of the v4 backward: the blocks that fit on the device at once (one wave), at most one per
// `teams` rows.
static int layernorm_backward_v4_grid(int N, int C, const Ln4Config& k) {
    const int resident = ln4_resident_blocks(C, k), most = ceil_div(N, k.teams);
    return resident < most ? resident : most;
}

static size_t layernorm_backward_v4_scratch_floats(int N, int C, const Ln4Config& k) {
    return (size_t)layernorm_backward_v4_grid(N, C, k) * 2 * C;
}

// The main kernel alone (dinp and the per-block partials in scratch); returns its grid, the
// number of partials.
static int layernorm_backward_v4_partials(floatX* dinp, float* scratch, const floatX* dout, const floatX* inp,
                                          const floatX* weight, const float* mean, const float* rstd, int N, int C,
                                          cudaStream_t stream, const Ln4Config& k) {
    const int grid = layernorm_backward_v4_grid(N, C, k);  // checks the configuration
    const int team_threads = ln4_team_threads(C, k.packets);
    const size_t smem = ln4_smem_bytes(k.teams, team_threads, k.stages, k.packets);
    ln4_with_kernel(C, k, [&](auto kernel) {
        kernel<<<grid, k.teams * team_threads, smem, stream>>>(dinp, scratch, dout, inp, weight, mean, rstd, N, C,
                                                               k.teams, k.interleave, (float*)NULL);
    });
    cudaCheckLast();
    return grid;
}

// k: the launch configuration; scratch holds layernorm_backward_v4_scratch_floats(N, C, k) floats.
// The partials are added by v3's kernel (measured faster than a wider one: the header comment).
static void layernorm_backward_v4(floatX* dinp, floatX* dweight, floatX* dbias, float* scratch, const floatX* dout,
                                  const floatX* inp, const floatX* weight, const float* mean, const float* rstd, int N,
                                  int C, cudaStream_t stream, const Ln4Config& k) {
    const int grid = layernorm_backward_v4_partials(dinp, scratch, dout, inp, weight, mean, rstd, N, C, stream, k);
    layernorm_backward_finish(dweight, dbias, scratch, grid, C, stream, k.pdl);
}

// ---- layer 0's ln1 backward with the encoder's dwpe ----------------------------------------
// The encoder's dout is the dinp that layer 0's ln1 backward writes last, and dwpe[t] is the sum
// of its rows at position t over b. Summed by the encoder, that reads all of dout once more
// (llmc/encoder.cuh); summed here, as the rows are written, it costs m T C floats of partials.
// The grid is chosen so that its teams are a multiple m of T, at most one wave: with rows dealt
// out across the grid, team g then takes only rows at position g % T (the kernel's PE).
// Measured (H200, 2026-11-24 session 6, dev/cuda/layernorm, N = 65536, C = 768, T = 1024): 110.5 us
// against 105.2 us for the engine's backward alone and 137.2 us for it followed by the encoder's
// dwpe pass; with the dwpe finish as a programmatic dependent launch 109.0 / 109.5 us against
// 105.0 / 105.2 and 135.9 / 135.5 (two runs). Other configurations with dwpe (first run): 2 teams
// with 3 / 4 stages 115.2 / 118.4 us, 4 teams with 2 / 3 / 4 stages 112.6 / 117.5 / 120.3 us.

// m, the partial sums of each dwpe row (teams = m T), or 0 where the fused form does not apply
// (rows not interleaved, N not a multiple of T, or no multiple of T teams in one wave)
static int layernorm_backward_v4_dwpe_parts(int N, int C, int T, const Ln4Config& k) {
    if (!k.interleave || T <= 0 || N % T != 0 || !ln4_config_ok(C, k)) return 0;
    const long long most_teams = (long long)ln4_resident_blocks<true>(C, k) * k.teams;
    for (long long m = most_teams / T < N / T ? most_teams / T : N / T; m >= 1; m--)
        if (m * T % k.teams == 0) return (int)m;
    return 0;
}

static size_t layernorm_backward_v4_dwpe_scratch_floats(int N, int C, int T, const Ln4Config& k) {
    const int m = layernorm_backward_v4_dwpe_parts(N, C, T, k);
    return (size_t)m * T / k.teams * 2 * C + (size_t)m * T * C;
}

// dwpe[t, :] += the m partial rows part * T + t, in part order; one thread per 4 columns. Launched
// as a programmatic dependent launch behind layernorm_backward_finish (which itself waits for the
// main kernel): resident early, it waits here for the kernels before it.
__global__ void layernorm_dwpe_finish_kernel(floatX* dwpe, const float* pe_partials, int parts, int T, int C) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= T * (C / 4)) return;
    const int t = idx / (C / 4), c = (idx % (C / 4)) * 4;
    float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int part = 0; part < parts; part++) {
        const float4 x = *reinterpret_cast<const float4*>(pe_partials + ((size_t)part * T + t) * C + c);
        sum.x += x.x;
        sum.y += x.y;
        sum.z += x.z;
        sum.w += x.w;
    }
    floatX* g = dwpe + (size_t)t * C + c;
    g[0] = from_float<floatX>(to_float(g[0]) + sum.x);
    g[1] = from_float<floatX>(to_float(g[1]) + sum.y);
    g[2] = from_float<floatX>(to_float(g[2]) + sum.z);
    g[3] = from_float<floatX>(to_float(g[3]) + sum.w);
}

// layernorm_backward_v4 and, for N = B T rows, dwpe[t] += sum_b dinp[b T + t] (dinp as written);
// scratch holds layernorm_backward_v4_dwpe_scratch_floats(N, C, T, k) floats. Returns false, having
// done nothing, where the fused form does not apply (layernorm_backward_v4_dwpe_parts == 0).
static bool layernorm_backward_v4_dwpe(floatX* dinp, floatX* dweight, floatX* dbias, floatX* dwpe, float* scratch,
                                       const floatX* dout, const floatX* inp, const floatX* weight, const float* mean,
                                       const float* rstd, int N, int C, int T, cudaStream_t stream,
                                       const Ln4Config& k) {
    const int m = layernorm_backward_v4_dwpe_parts(N, C, T, k);  // also sets the shared-memory limit
    if (m == 0) return false;
    const int grid = m * T / k.teams, team_threads = ln4_team_threads(C, k.packets);
    const size_t smem = ln4_smem_bytes(k.teams, team_threads, k.stages, k.packets);
    float* pe_partials = scratch + (size_t)grid * 2 * C;
    ln4_with_kernel<true>(C, k, [&](auto kernel) {
        kernel<<<grid, k.teams * team_threads, smem, stream>>>(dinp, scratch, dout, inp, weight, mean, rstd, N, C,
                                                               k.teams, true, pe_partials);
    });
    cudaCheckLast();
    layernorm_backward_finish(dweight, dbias, scratch, grid, C, stream, k.pdl);
    launch_dependent(layernorm_dwpe_finish_kernel, dim3(ceil_div(T * (C / 4), 256)), dim3(256), stream, k.pdl, dwpe,
                     (const float*)pe_partials, m, T, C);
    return true;
}

// ----------------------------------------------------------------------------------------------
// what the engine calls: the forward v3 where it applies (C <= 8 * 32 * X128, 2048 bf16), else v1;
// the backward v4 where its configuration fits (C <= 6144 bf16), else v1

static void layernorm_forward(floatX* out, float* mean, float* rstd, const floatX* inp, const floatX* weight,
                              const floatX* bias, int N, int C, cudaStream_t stream) {
    if (layernorm_v2_supported(C)) {
        layernorm_forward_v3<false, LN3_FWD_ROWS, LN3_FWD_STREAM>(NULL, out, mean, rstd, inp, NULL, weight, bias, N,
                                                                  C, stream, LN3_FWD_WARPS);
    } else {
        layernorm_forward_v1(out, mean, rstd, inp, weight, bias, N, C, stream);
    }
}

// residual = a + b; out = layernorm(residual)
static void fused_residual_layernorm_forward(floatX* residual, floatX* out, float* mean, float* rstd, const floatX* a,
                                             const floatX* b, const floatX* weight, const floatX* bias, int N, int C,
                                             cudaStream_t stream) {
    if (layernorm_v2_supported(C)) {
        layernorm_forward_v3<true, LN3_FUSED_ROWS, LN3_FUSED_STREAM>(residual, out, mean, rstd, a, b, weight, bias,
                                                                     N, C, stream, LN3_FUSED_WARPS);
    } else {
        fused_residual_layernorm_forward_v1(residual, out, mean, rstd, a, b, weight, bias, N, C, stream);
    }
}

// Floats of scratch that layernorm_backward needs (for the version it will run).
static size_t layernorm_backward_scratch_floats(int N, int C) {
    if (layernorm_v4_backward_supported(C)) {
        return layernorm_backward_v4_scratch_floats(N, C, ln4_engine_config(C));
    }
    return layernorm_backward_v1_scratch_floats(N, C);
}

// dinp += ..., dweight += ..., dbias += ...; scratch holds layernorm_backward_scratch_floats(N, C).
static void layernorm_backward(floatX* dinp, floatX* dweight, floatX* dbias, float* scratch, const floatX* dout,
                               const floatX* inp, const floatX* weight, const float* mean, const float* rstd, int N,
                               int C, cudaStream_t stream) {
    if (layernorm_v4_backward_supported(C)) {
        layernorm_backward_v4(dinp, dweight, dbias, scratch, dout, inp, weight, mean, rstd, N, C, stream,
                              ln4_engine_config(C));
    } else {
        layernorm_backward_v1(dinp, dweight, dbias, scratch, dout, inp, weight, mean, rstd, N, C, stream);
    }
}

// Layer 0's ln1 backward, whose dinp is the encoder's dout: the same as layernorm_backward for
// N = B T rows and also dwpe[t] += sum_b dinp[b T + t] (dinp as written), where the v4 form with
// dwpe applies; returns false, having done nothing, where it does not (the caller then runs
// layernorm_backward and the encoder's dwpe pass). scratch holds
// layernorm_backward_dwpe_scratch_floats(N, C, T) floats.
static size_t layernorm_backward_dwpe_scratch_floats(int N, int C, int T) {
    if (!layernorm_v4_backward_supported(C)) return 0;
    return layernorm_backward_v4_dwpe_scratch_floats(N, C, T, ln4_engine_config(C));
}
static bool layernorm_backward_dwpe(floatX* dinp, floatX* dweight, floatX* dbias, floatX* dwpe, float* scratch,
                                    const floatX* dout, const floatX* inp, const floatX* weight, const float* mean,
                                    const float* rstd, int N, int C, int T, cudaStream_t stream) {
    if (!layernorm_v4_backward_supported(C)) return false;
    return layernorm_backward_v4_dwpe(dinp, dweight, dbias, dwpe, scratch, dout, inp, weight, mean, rstd, N, C, T,
                                      stream, ln4_engine_config(C));
}

#endif  // LLMC_LAYERNORM_CUH
