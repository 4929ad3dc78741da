/*
LayerNorm over the channels, alone or fused with the residual add that precedes it.

Forward, per row n of N = B*T rows of C channels (eps 1e-5, biased variance, as PyTorch):
    mean[n] = sum_c x[n,c] / C,  rstd[n] = 1 / sqrt(sum_c (x[n,c]-mean)^2 / C + eps)
    out[n,c] = (x[n,c] - mean[n]) * rstd[n] * weight[c] + bias[c]
Fused form (fused_residual_layernorm_forward): residual[n,c] = a[n,c] + b[n,c] is stored (in floatX)
and normalized in the same pass, so the block output is read once instead of three times.
mean and rstd are kept in fp32 for the backward pass.

Backward, with xhat = (x - mean) * rstd and g = dout * weight:
    dinp[n,c] += rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))     ("+=": dinp is the residual
                                                                       stream's gradient, which
                                                                       this adds to)
    dweight[c] += sum_n dout[n,c] * xhat[n,c],   dbias[c] += sum_n dout[n,c]

Design: one warp per row, fp32 accumulation, two passes over the row (mean, then variance from the
centered values; a one-pass E[x^2]-E[x]^2 loses digits in fp32). The weight/bias gradients are
column sums over N rows: each warp sums its LN_ROWS_PER_WARP rows into its own slice of a scratch
buffer (no other warp writes there), then column_sum_finish adds the slices in index order. No
atomics, so results are bit-reproducible. Simple rather than fast: a later version can keep rows in
registers and use 16-byte loads (dev/cuda has the benchmarks).
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

__global__ void layernorm_forward_kernel(floatX* out, float* mean, float* rstd, const floatX* inp,
                                         const floatX* weight, const floatX* bias, int N, int C) {
    const int row = blockIdx.x * LN_WARPS_PER_BLOCK + threadIdx.x / 32;
    if (row >= N) return;
    layernorm_row(out, mean, rstd, inp, weight, bias, row, C);
}

__global__ void fused_residual_layernorm_forward_kernel(floatX* residual, floatX* out, float* mean, float* rstd,
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

static void layernorm_forward(floatX* out, float* mean, float* rstd, const floatX* inp, const floatX* weight,
                              const floatX* bias, int N, int C, cudaStream_t stream) {
    layernorm_forward_kernel<<<ceil_div(N, LN_WARPS_PER_BLOCK), 32 * LN_WARPS_PER_BLOCK, 0, stream>>>(
        out, mean, rstd, inp, weight, bias, N, C);
    cudaCheckLast();
}

// residual = a + b; out = layernorm(residual)
static void fused_residual_layernorm_forward(floatX* residual, floatX* out, float* mean, float* rstd, const floatX* a,
                                             const floatX* b, const floatX* weight, const floatX* bias, int N, int C,
                                             cudaStream_t stream) {
    fused_residual_layernorm_forward_kernel<<<ceil_div(N, LN_WARPS_PER_BLOCK), 32 * LN_WARPS_PER_BLOCK, 0, stream>>>(
        residual, out, mean, rstd, a, b, weight, bias, N, C);
    cudaCheckLast();
}

// Each warp handles LN_ROWS_PER_WARP consecutive rows; its partial dweight/dbias sums go to
// scratch[warp][0..C) and scratch[warp][C..2C).
__global__ void layernorm_backward_kernel(floatX* dinp, float* scratch, const floatX* dout, const floatX* inp,
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

static size_t layernorm_backward_scratch_floats(int N, int C) {
    return (size_t)ceil_div(N, LN_ROWS_PER_WARP) * 2 * C;
}

// dinp += ..., dweight += ..., dbias += ...; scratch holds layernorm_backward_scratch_floats(N, C).
static void layernorm_backward(floatX* dinp, floatX* dweight, floatX* dbias, float* scratch, const floatX* dout,
                               const floatX* inp, const floatX* weight, const float* mean, const float* rstd, int N,
                               int C, cudaStream_t stream) {
    const int warps = ceil_div(N, LN_ROWS_PER_WARP);
    layernorm_backward_kernel<<<ceil_div(warps, LN_WARPS_PER_BLOCK), 32 * LN_WARPS_PER_BLOCK, 0, stream>>>(
        dinp, scratch, dout, inp, weight, mean, rstd, N, C);
    cudaCheckLast();
    dim3 block(32, 8);
    column_sum_finish_kernel<<<ceil_div(C, 32), block, 0, stream>>>(dweight, scratch, warps, C, 2 * C, 1);
    cudaCheckLast();
    column_sum_finish_kernel<<<ceil_div(C, 32), block, 0, stream>>>(dbias, scratch + C, warps, C, 2 * C, 1);
    cudaCheckLast();
}

#endif  // LLMC_LAYERNORM_CUH
