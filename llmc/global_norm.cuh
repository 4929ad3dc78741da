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
*/
#ifndef LLMC_GLOBAL_NORM_CUH
#define LLMC_GLOBAL_NORM_CUH

#include "llmc/cuda_common.cuh"

#define NORM_BLOCKS 1024
#define NORM_THREADS 512

__global__ void global_norm_partial_kernel(float* partial, const floatX* g, size_t n) {
    __shared__ float shared[32];
    float acc = 0.0f;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
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
    global_norm_partial_kernel<<<NORM_BLOCKS, NORM_THREADS, 0, stream>>>(partial, grads, n);
    cudaCheckLast();
    global_norm_finish_kernel<<<1, 1024, 0, stream>>>(out, partial, clip);
    cudaCheckLast();
}

#endif  // LLMC_GLOBAL_NORM_CUH
