/*
GELU, tanh approximation (GPT-2's, PyTorch's approximate="tanh"), elementwise over N values:
    gelu(x)  = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
    gelu'(x) = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
Forward writes out = gelu(inp); backward writes dinp = gelu'(inp) * dout (dinp may alias dout).

In the engine these run fused into the MLP matmuls (cuBLASLt's GELU_AUX_BIAS and DGELU epilogues,
matmul.cuh); the kernels here are the fallback when cuBLASLt offers no algorithm with that
epilogue for a shape or precision, and the reference for the dev/cuda benchmark. tanhf, not a fast
intrinsic: the fp32 build must match PyTorch to 1e-4.
*/
#ifndef LLMC_GELU_CUH
#define LLMC_GELU_CUH

#include "llmc/cuda_common.cuh"

#define GELU_SCALE 0.7978845608028654f  // sqrt(2 / pi)

__device__ static inline float gelu_value(float x) {
    const float u = GELU_SCALE * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
}

__device__ static inline float gelu_grad(float x) {
    const float u = GELU_SCALE * (x + 0.044715f * x * x * x);
    const float th = tanhf(u);
    const float du = GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
    return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
}

__global__ void gelu_forward_kernel(floatX* out, const floatX* inp, size_t N) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N) out[i] = from_float<floatX>(gelu_value(to_float(inp[i])));
}

__global__ void gelu_backward_kernel(floatX* dinp, const floatX* inp, const floatX* dout, size_t N) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N) dinp[i] = from_float<floatX>(gelu_grad(to_float(inp[i])) * to_float(dout[i]));
}

static void gelu_forward(floatX* out, const floatX* inp, size_t N, cudaStream_t stream) {
    const int block = 256;
    gelu_forward_kernel<<<(unsigned)ceil_div_sz(N, block), block, 0, stream>>>(out, inp, N);
    cudaCheckLast();
}

static void gelu_backward(floatX* dinp, const floatX* inp, const floatX* dout, size_t N, cudaStream_t stream) {
    const int block = 256;
    gelu_backward_kernel<<<(unsigned)ceil_div_sz(N, block), block, 0, stream>>>(dinp, inp, dout, N);
    cudaCheckLast();
}

#endif  // LLMC_GELU_CUH
