/*
Fused AdamW update of one parameter tensor (n values), decoupled weight decay as in PyTorch:
    g = grad * grad_scale                       (grad_scale from global_norm: clipping, on device;
                                                 0 means a non-finite norm: nothing is updated)
    m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
    w = w - lr (m / (1 - beta1^t) / (sqrt(v / (1 - beta2^t)) + eps) + weight_decay w)
m and v are fp32. In the bf16 build the update is applied to fp32 master weights and the bf16
parameter is the master value stochastically rounded (cuda_common.cuh: store_rounded), so updates
far smaller than a bf16 ulp still move the weights on average; the random bits hash (seed, index),
keeping runs reproducible. In the fp32 build master is NULL and the parameters are updated directly.
One thread per element; the kernel reads grad, m, v, master and writes m, v, master, param: memory
bound by design, with nothing to reuse.
*/
#ifndef LLMC_ADAMW_CUH
#define LLMC_ADAMW_CUH

#include "llmc/cuda_common.cuh"

typedef struct {
    float learning_rate;
    float beta1;
    float beta2;
    float eps;
    float weight_decay;  // applied only to the tensors the caller marks as decayed
} AdamWParams;

__global__ void adamw_kernel(floatX* params, float* master, const floatX* grads, float* m, float* v, size_t n,
                             float lr, float beta1, float beta2, float bias_correction1, float bias_correction2,
                             float eps, float weight_decay, const float* grad_scale, uint32_t seed) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float scale = grad_scale[0];
    if (scale == 0.0f) return;  // non-finite gradient norm: the step is skipped (global_norm.cuh)
    const float g = to_float(grads[i]) * scale;
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    float w = master != NULL ? master[i] : to_float(params[i]);
    const float update = (mi / bias_correction1) / (sqrtf(vi / bias_correction2) + eps);
    w -= lr * (update + weight_decay * w);
    if (master != NULL) {
        master[i] = w;
        store_rounded(params + i, w, hash_u32((uint32_t)i, seed));
    } else {
        params[i] = from_float<floatX>(w);
    }
}

// step counts from 1. grad_scale points to one float on the device. seed: per step and tensor.
static void adamw_update(floatX* params, float* master, const floatX* grads, float* m, float* v, size_t n,
                         const AdamWParams* p, float weight_decay, int step, const float* grad_scale, uint32_t seed,
                         cudaStream_t stream) {
    const float bc1 = 1.0f - powf(p->beta1, (float)step);
    const float bc2 = 1.0f - powf(p->beta2, (float)step);
    const int block = 512;
    adamw_kernel<<<(unsigned)ceil_div_sz(n, block), block, 0, stream>>>(params, master, grads, m, v, n,
                                                                        p->learning_rate, p->beta1, p->beta2, bc1,
                                                                        bc2, p->eps, weight_decay, grad_scale, seed);
    cudaCheckLast();
}

#endif  // LLMC_ADAMW_CUH
