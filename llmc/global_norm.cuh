/*
Global L2 norm of all gradients, and the gradient-clipping factor derived from it.

Input: the gradients as one contiguous buffer of n floatX values (all parameter tensors, in the
on-disk order). Output, on the device (out[0], out[1]):
    out[0] = norm = sqrt(sum_i g_i^2)
    out[1] = grad scale = clip / norm if clip > 0 and norm > clip, else 1 (0 if norm is not finite,
             so a step with inf/nan gradients changes nothing; the trainer reports it)
AdamW reads out[1] directly, so clipping needs no host round trip inside a step.

Deterministic two-stage reduction: a fixed number of blocks (NORM_BLOCKS, independent of the GPU)
each sum a fixed strided subset of the squares in a fixed tree; one block then sums the
NORM_BLOCKS partials in a fixed tree. No atomics: same gradients, same bits.

Memory bound: the first pass reads every gradient once with 16-byte streaming loads (X128 values
a packet, two packets in flight per thread) in 256-thread blocks, so the 1024 blocks are resident
at once (8 per SM on a 132-SM H200) instead of running in two waves. dev/cuda/global_norm.cu
measured it at 92.9% of the device-to-device copy bandwidth on an H200 (124.5M bf16
gradients; 91.6% in an earlier run), against 31.6% for this kernel's form before issue 5
(512-thread blocks, one 2-byte load per value). Since that change each thread sums a different
subset of the values, so the bits of the norm (and clip scale) differ in the last places from
those of the earlier kernel; both are deterministic. Pointers that are not 16-byte aligned take
the scalar loop (same kernel).
*/
#ifndef LLMC_GLOBAL_NORM_CUH
#define LLMC_GLOBAL_NORM_CUH

#include <stdint.h>

#include "llmc/cuda_common.cuh"

#define NORM_BLOCKS 1024
#define NORM_THREADS 256

__device__ static inline float global_norm_sum_squares(const x128& p) {
    float s = 0.0f;
    for (int k = 0; k < X128; k++) {
        const float x = to_float(p.v[k]);
        s += x * x;
    }
    return s;
}

// Thread t of the grid sums the 16-byte packets t, t + stride, t + 2 stride, ... (two loads in
// flight, streaming: the gradients are read once), then the values past the last whole packet,
// one per thread. packets: n / X128, or 0 when g is not 16-byte aligned (then every value goes
// through the scalar loop). Each block writes the sum of its threads' sums (a fixed tree).
__global__ void __launch_bounds__(NORM_THREADS, 8) global_norm_partial_kernel(float* partial, const floatX* g,
                                                                              size_t n, size_t packets) {
    __shared__ float shared[32];
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    const size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    float acc = 0.0f;
    size_t p = t;
    for (; p + stride < packets; p += 2 * stride) {
        const x128 a = load128cs(g + p * X128);
        const x128 b = load128cs(g + (p + stride) * X128);
        acc += global_norm_sum_squares(a);
        acc += global_norm_sum_squares(b);
    }
    if (p < packets) acc += global_norm_sum_squares(load128cs(g + p * X128));
    for (size_t i = packets * X128 + t; i < n; i += stride) {
        const float x = to_float(g[i]);
        acc += x * x;
    }
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void global_norm_finish_kernel(float* out, const float* partial, float clip) {
    __shared__ float shared[32];
    float acc = 0.0f;
    for (int i = threadIdx.x; i < NORM_BLOCKS; i += blockDim.x) acc += partial[i];
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) {
        const float norm = sqrtf(acc);
        float scale = 1.0f;
        if (!isfinite(norm)) scale = 0.0f;
        else if (clip > 0.0f && norm > clip) scale = clip / norm;
        out[0] = norm;
        out[1] = scale;
    }
}

// out: 2 floats on the device; partial: NORM_BLOCKS floats of scratch.
static void global_norm(float* out, float* partial, const floatX* grads, size_t n, float clip, cudaStream_t stream) {
    const size_t packets = ((uintptr_t)grads & 15u) == 0 ? n / X128 : 0;
    global_norm_partial_kernel<<<NORM_BLOCKS, NORM_THREADS, 0, stream>>>(partial, grads, n, packets);
    cudaCheckLast();
    global_norm_finish_kernel<<<1, 1024, 0, stream>>>(out, partial, clip);
    cudaCheckLast();
}

#endif  // LLMC_GLOBAL_NORM_CUH
