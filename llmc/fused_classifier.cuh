/*
Fused classifier: softmax, cross-entropy loss and the logits' gradient in one kernel, in place.

Input logits (N, Vp) (N = B*T; Vp the padded vocabulary, only the first V columns are real tokens),
targets (N) in [0, V). Per row n, with M = max_v logits[n,v] and S = sum_v exp(logits[n,v] - M)
over v < V:
    loss[n] = log S + M - logits[n, target]
    dlogits[n, v] = (exp(logits[n,v] - M) / S - [v == target]) * dloss    for v < V
    dlogits[n, v] = 0                                                       for V <= v < Vp
dlogits overwrites logits (write_dlogits = 1), so the (N, Vp) probabilities are never stored: the
largest activation of the model is read twice and written once. Padded columns are never part of
the softmax, so they are never predicted and get zero gradient. dloss is d(mean loss)/d(loss[n]),
i.e. 1 / (N * gradient accumulation steps).
losses[n] = (accumulate ? losses[n] : 0) + loss[n] * loss_weight: the trainer sums the mean loss of
a step over its micro-batches on the device and reads it back once per step.

One block of CLS_THREADS per row; the max and the sum are block reductions in a fixed order.
*/
#ifndef LLMC_FUSED_CLASSIFIER_CUH
#define LLMC_FUSED_CLASSIFIER_CUH

#include "llmc/cuda_common.cuh"

#define CLS_THREADS 1024

__global__ void fused_classifier_kernel(floatX* logits, float* losses, const int* targets, int V, int Vp, float dloss,
                                        float loss_weight, int write_dlogits, int accumulate) {
    __shared__ float shared[32];
    const int n = blockIdx.x;
    floatX* row = logits + (size_t)n * Vp;
    // per-thread online max/sum, then combine
    float m = -INFINITY, s = 0.0f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) {
        const float x = to_float(row[v]);
        if (x > m) {
            s *= expf(m - x);
            m = x;
        }
        s += expf(x - m);
    }
    const float M = block_max(m, shared);
    const float S = block_sum(m == -INFINITY ? 0.0f : s * expf(m - M), shared);
    const int target = targets[n];
    const float x_target = to_float(row[target]);  // read before any thread overwrites the row
    __syncthreads();
    if (threadIdx.x == 0) {
        const float loss = logf(S) + M - x_target;
        losses[n] = (accumulate ? losses[n] : 0.0f) + loss * loss_weight;
    }
    if (!write_dlogits) return;
    const float inv_S = 1.0f / S;
    for (int v = threadIdx.x; v < Vp; v += blockDim.x) {
        float g = 0.0f;
        if (v < V) {
            const float p = expf(to_float(row[v]) - M) * inv_S;
            g = (p - (v == target ? 1.0f : 0.0f)) * dloss;
        }
        row[v] = from_float<floatX>(g);
    }
}

static void fused_classifier(floatX* logits, float* losses, const int* targets, int N, int V, int Vp, float dloss,
                             float loss_weight, int write_dlogits, int accumulate, cudaStream_t stream) {
    fused_classifier_kernel<<<N, CLS_THREADS, 0, stream>>>(logits, losses, targets, V, Vp, dloss, loss_weight,
                                                          write_dlogits, accumulate);
    cudaCheckLast();
}

#endif  // LLMC_FUSED_CLASSIFIER_CUH
