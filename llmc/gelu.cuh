/*
GELU, tanh approximation (GPT-2's, PyTorch's approximate="tanh"), elementwise over N values:
    gelu(x)  = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
    gelu'(x) = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
Forward writes out = gelu(inp); backward writes dinp = gelu'(inp) * dout (dinp may alias dout).

In training both run fused into the MLP matmuls (cuBLASLt's GELU_AUX_BIAS and DGELU epilogues,
matmul.cuh). The kernels here are the recompute of gelu(fch) with -r 1 (gpt2cu.cuh), the fallback
when cuBLASLt offers no algorithm with that epilogue, and what dev/cuda/gelu.cu checks and times.

How they are evaluated. With s = sigmoid(2u) = 1 / (1 + exp(-2u)), which equals 0.5 (1 + tanh(u)),
    gelu(x)  = x s
    gelu'(x) = s + 2 x s (1 - s) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
the same functions, for one fast exponential (__expf, the ex2.approx unit) and one fast reciprocal.
Why not tanhf: it evaluates both of its branches, and the kernels would no longer be comfortably
memory-bound. On sm_90 the 16-byte forward kernel takes ~25 instructions per value with tanhf and
~16 with this form (backward: ~34 and ~26); over GPT-2's 201M values per layer, 25 per value is
~150 us of instruction issue against ~190 us of memory traffic at copy speed, too close to hide.
Accuracy of this form: relative error ~1e-6 in fp32 (tanhf: ~1e-7), far inside the 1e-4 the fp32
build is held to against PyTorch; a bf16 output's rounding is 2^-9. For large |x| the limits hold:
exp overflows to inf for x << 0, so s = 0 and gelu(x) = -0; s = 1 for x >> 0.

Each thread handles X128 consecutive values (one 16-byte load per input, one 16-byte store) when
the pointers are 16-byte aligned, else one value (V = 1); the last, partial packet value by value.

History (issue 5, dev/cuda/gelu.cu measures both): before, one thread per value (2-byte accesses)
and tanhf.
*/
#ifndef LLMC_GELU_CUH
#define LLMC_GELU_CUH

#include <stdint.h>

#include "llmc/cuda_common.cuh"

#define GELU_SCALE 0.7978845608028654f  // sqrt(2 / pi)

// sigmoid(2u) = 0.5 (1 + tanh(u))
__device__ static inline float gelu_sigmoid(float x) {
    const float u = GELU_SCALE * (x + 0.044715f * x * x * x);
    return __fdividef(1.0f, 1.0f + __expf(-2.0f * u));  // 0 when the exponential overflows
}

__device__ static inline float gelu_value(float x) { return x * gelu_sigmoid(x); }

__device__ static inline float gelu_grad(float x) {
    const float s = gelu_sigmoid(x);
    const float du = GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
    return s + 2.0f * x * s * (1.0f - s) * du;
}

// V consecutive values of floatX, read or written as one access (16 bytes when V == X128)
template <int V>
struct alignas(V * sizeof(floatX)) GeluPack {
    floatX v[V];
};

template <int V>
__global__ void gelu_forward_kernel(floatX* out, const floatX* inp, size_t N) {
    const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (i + V <= N) {
        GeluPack<V> x = *reinterpret_cast<const GeluPack<V>*>(inp + i);
        for (int k = 0; k < V; k++) x.v[k] = from_float<floatX>(gelu_value(to_float(x.v[k])));
        *reinterpret_cast<GeluPack<V>*>(out + i) = x;
    } else {
        for (size_t j = i; j < N; j++) out[j] = from_float<floatX>(gelu_value(to_float(inp[j])));
    }
}

template <int V>
__global__ void gelu_backward_kernel(floatX* dinp, const floatX* inp, const floatX* dout, size_t N) {
    const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (i + V <= N) {
        const GeluPack<V> x = *reinterpret_cast<const GeluPack<V>*>(inp + i);
        GeluPack<V> d = *reinterpret_cast<const GeluPack<V>*>(dout + i);
        for (int k = 0; k < V; k++) d.v[k] = from_float<floatX>(gelu_grad(to_float(x.v[k])) * to_float(d.v[k]));
        *reinterpret_cast<GeluPack<V>*>(dinp + i) = d;
    } else {
        for (size_t j = i; j < N; j++) dinp[j] = from_float<floatX>(gelu_grad(to_float(inp[j])) * to_float(dout[j]));
    }
}

static inline bool gelu_aligned(const void* a, const void* b, const void* c) {
    return ((uintptr_t)a | (uintptr_t)b | (uintptr_t)c) % 16 == 0;
}

static void gelu_forward(floatX* out, const floatX* inp, size_t N, cudaStream_t stream) {
    const int block = 256;
    if (N == 0) return;
    if (gelu_aligned(out, inp, inp)) {
        gelu_forward_kernel<X128><<<(unsigned)ceil_div_sz(N, (size_t)block * X128), block, 0, stream>>>(out, inp, N);
    } else {
        gelu_forward_kernel<1><<<(unsigned)ceil_div_sz(N, block), block, 0, stream>>>(out, inp, N);
    }
    cudaCheckLast();
}

static void gelu_backward(floatX* dinp, const floatX* inp, const floatX* dout, size_t N, cudaStream_t stream) {
    const int block = 256;
    if (N == 0) return;
    if (gelu_aligned(dinp, inp, dout)) {
        gelu_backward_kernel<X128><<<(unsigned)ceil_div_sz(N, (size_t)block * X128), block, 0, stream>>>(dinp, inp,
                                                                                                        dout, N);
    } else {
        gelu_backward_kernel<1><<<(unsigned)ceil_div_sz(N, block), block, 0, stream>>>(dinp, inp, dout, N);
    }
    cudaCheckLast();
}

#endif  // LLMC_GELU_CUH
