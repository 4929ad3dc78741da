/*
Fused classifier: softmax, cross-entropy loss and the logits' gradient in one kernel, in place.

Input logits (N, Vp) (N = B*T; Vp the padded vocabulary, only the first V columns are real tokens),
targets (N) in [0, V). Per row n, with M = max_v logits[n,v] and S = sum_v exp(logits[n,v] - M)
over v < V:
    loss[n] = log S + M - logits[n, target]
    dlogits[n, v] = (exp(logits[n,v] - M) / S - [v == target]) * dloss    for v < V
    dlogits[n, v] = 0                                                       for V <= v < Vp
dlogits overwrites logits (write_dlogits = 1), so the (N, Vp) probabilities are never stored: the
largest activation of the model is read from DRAM once and written once. Padded columns are never part of
the softmax, so they are never predicted and get zero gradient. dloss is d(mean loss)/d(loss[n]),
i.e. 1 / (N * gradient accumulation steps).
losses[n] = (accumulate ? losses[n] : 0) + loss[n] * loss_weight: the trainer sums the mean loss of
a step over its micro-batches on the device and reads it back once per step.

Kernels. v3 (production when two rows fit in shared memory: GPT-2 in bf16): persistent, one
1024-thread block per SM walking rows; row j+1 is copied into shared memory (cp.async) while row j
is reduced and written, so an SM's reads and writes overlap. v2 (when Vp % X128 == 0 otherwise;
the engine pads Vp to a multiple of 128): one block of CLS2_THREADS per row, 16-byte loads and stores. Pass 1 reads the row
once from DRAM (each thread: a running max and a sum rescaled to it, packet by packet) and, when the
row fits (Vp * sizeof(floatX) <= CLS2_MAX_STAGED_BYTES: GPT-2's 50304 bf16 logits are 98 KiB),
keeps a copy in shared memory; pass 2 reads that copy (or the row again from global memory, then
mostly an L2 hit) and writes dlogits over the logits. So DRAM sees the minimum: one read and one
write of the row. exp(x - M) is computed as exp2(x * log2(e) - M * log2(e)) (one FMA and the
hardware exp2). The block max and sum are reductions in a fixed order: deterministic.
v1 (kept for a Vp that is not a multiple of X128): one block of CLS_THREADS per row, scalar loads,
the row read twice from global memory.
*/
#ifndef LLMC_FUSED_CLASSIFIER_CUH
#define LLMC_FUSED_CLASSIFIER_CUH

#include "llmc/cuda_common.cuh"

#define CLS_THREADS 1024

// ---- v1 ---------------------------------------------------------------------------------------
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


// ---- v2 ---------------------------------------------------------------------------------------
#define CLS2_THREADS 512
// shared memory for a staged row: 2 blocks of 512 threads per SM with up to 110 KiB each
#define CLS2_MAX_STAGED_BYTES (110 * 1024)

template <bool STAGED>
__global__ void __launch_bounds__(CLS2_THREADS, 2)
    fused_classifier_kernel2(floatX* logits, float* losses, const int* targets, int V, int Vp, float dloss,
                             float loss_weight, int write_dlogits, int accumulate) {
    extern __shared__ __align__(16) unsigned char cls2_smem[];
    __shared__ float shared[32];
    x128* stage = reinterpret_cast<x128*>(cls2_smem);
    const float LOG2E = 1.4426950408889634f;
    const int n = blockIdx.x;
    floatX* row = logits + (size_t)n * Vp;
    const int packets = Vp / X128;
    const int target = targets[n];
    // pass 1: running max m and sum s of exp(x - m), in the log2 domain (x2 = x * log2(e))
    float m = -INFINITY, s = 0.0f;
    for (int i = threadIdx.x; i < packets; i += CLS2_THREADS) {
        const x128 packet = load128cs(row + (size_t)i * X128);
        if (STAGED) stage[i] = packet;
        float x2[X128];
        float pm = -INFINITY;
#pragma unroll
        for (int k = 0; k < X128; k++) {
            const int v = i * X128 + k;
            x2[k] = v < V ? to_float(packet.v[k]) * LOG2E : -INFINITY;
            pm = fmaxf(pm, x2[k]);
        }
        if (pm > m) {
            s *= exp2f(m - pm);  // m = -inf: s is 0 and exp2f(-inf) = 0
            m = pm;
        }
        if (m != -INFINITY) {
#pragma unroll
            for (int k = 0; k < X128; k++) s += exp2f(x2[k] - m);
        }
    }
    const float M2 = block_max(m, shared);
    const float S = block_sum(m == -INFINITY ? 0.0f : s * exp2f(m - M2), shared);
    if (threadIdx.x == 0) {
        // row[target] is read before any thread of this block overwrites the row: the block
        // reductions above end with __syncthreads(), and no thread has written yet
        const float x_target = to_float(row[target]);
        const float loss = logf(S) + M2 / LOG2E - x_target;
        losses[n] = (accumulate ? losses[n] : 0.0f) + loss * loss_weight;
    }
    if (!write_dlogits) return;
    __syncthreads();  // thread 0 has read row[target]
    const float scale = dloss / S;
    for (int i = threadIdx.x; i < packets; i += CLS2_THREADS) {
        const x128 packet = STAGED ? stage[i] : load128cs(row + (size_t)i * X128);
        x128 out;
#pragma unroll
        for (int k = 0; k < X128; k++) {
            const int v = i * X128 + k;
            float g = 0.0f;
            if (v < V) {
                g = exp2f(fmaf(to_float(packet.v[k]), LOG2E, -M2)) * scale;
                if (v == target) g -= dloss;
            }
            out.v[k] = from_float<floatX>(g);
        }
        store128(row + (size_t)i * X128, out);
    }
}


// ---- v3 ---------------------------------------------------------------------------------------
// Persistent, double-buffered: one 1024-thread block per SM walks rows blockIdx.x, + gridDim.x, ...
// and copies row j+1 into shared memory (cp.async) while it reduces row j and writes its dlogits,
// so an SM's reads and writes overlap. Shared memory: two rows (2 * Vp * sizeof(floatX)).
#define CLS3_THREADS 1024
#define CLS3_MAX_STAGED_BYTES (220 * 1024)

__device__ static inline void cls3_prefetch_row(x128* dst, const floatX* row, int packets) {
    for (int i = threadIdx.x; i < packets; i += CLS3_THREADS) {
        const uint32_t addr = (uint32_t)__cvta_generic_to_shared(dst + i);
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(addr), "l"(row + (size_t)i * X128));
    }
}

__global__ void __launch_bounds__(CLS3_THREADS, 1)
    fused_classifier_kernel3(floatX* logits, float* losses, const int* targets, int N, int V, int Vp, float dloss,
                             float loss_weight, int write_dlogits, int accumulate) {
    extern __shared__ __align__(16) unsigned char cls2_smem[];
    __shared__ float shared[32];
    const float LOG2E = 1.4426950408889634f;
    const int packets = Vp / X128;
    x128* buffers = reinterpret_cast<x128*>(cls2_smem);
    int n = blockIdx.x;
    if (n >= N) return;
    cls3_prefetch_row(buffers, logits + (size_t)n * Vp, packets);
    asm volatile("cp.async.commit_group;\n" ::);  // its own group: wait_group 1 below waits for it
    for (int j = 0; n < N; j++, n += gridDim.x) {
        const int next = n + gridDim.x;
        if (next < N) cls3_prefetch_row(buffers + ((j + 1) & 1) * packets, logits + (size_t)next * Vp, packets);
        asm volatile("cp.async.commit_group;\n" ::);
        asm volatile("cp.async.wait_group 1;\n" ::: "memory");  // row n has landed (this thread's part)
        const x128* cur = buffers + (j & 1) * packets;
        floatX* row = logits + (size_t)n * Vp;
        const int target = targets[n];
        // read before the block barriers below: no thread writes row n before them
        const float x_target = threadIdx.x == 0 ? to_float(row[target]) : 0.0f;
        float m = -INFINITY, s = 0.0f;
        for (int i = threadIdx.x; i < packets; i += CLS3_THREADS) {
            const x128 packet = cur[i];
            float x2[X128];
            float pm = -INFINITY;
#pragma unroll
            for (int k = 0; k < X128; k++) {
                const int v = i * X128 + k;
                x2[k] = v < V ? to_float(packet.v[k]) * LOG2E : -INFINITY;
                pm = fmaxf(pm, x2[k]);
            }
            if (pm > m) {
                s *= exp2f(m - pm);
                m = pm;
            }
            if (m != -INFINITY) {
#pragma unroll
                for (int k = 0; k < X128; k++) s += exp2f(x2[k] - m);
            }
        }
        const float M2 = block_max(m, shared);
        const float S = block_sum(m == -INFINITY ? 0.0f : s * exp2f(m - M2), shared);
        if (threadIdx.x == 0) {
            const float loss = logf(S) + M2 / LOG2E - x_target;
            losses[n] = (accumulate ? losses[n] : 0.0f) + loss * loss_weight;
        }
        if (!write_dlogits) continue;
        const float scale = dloss / S;
        for (int i = threadIdx.x; i < packets; i += CLS3_THREADS) {
            const x128 packet = cur[i];
            x128 out;
#pragma unroll
            for (int k = 0; k < X128; k++) {
                const int v = i * X128 + k;
                float g = 0.0f;
                if (v < V) {
                    g = exp2f(fmaf(to_float(packet.v[k]), LOG2E, -M2)) * scale;
                    if (v == target) g -= dloss;
                }
                out.v[k] = from_float<floatX>(g);
            }
            store128(row + (size_t)i * X128, out);
        }
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");
}

// Which kernel fused_classifier runs for this Vp: 3 (persistent, two rows in shared memory),
// 2 (v2 staged in shared memory), 1 (v2 re-reading the row from global memory) or 0 (v1, scalar).
#define CLS_PREFER_V3 1
static int fused_classifier_version(int Vp) {
    if (Vp % X128 != 0) return 0;
    if (CLS_PREFER_V3 && 2 * (size_t)Vp * sizeof(floatX) <= CLS3_MAX_STAGED_BYTES) return 3;
    return (size_t)Vp * sizeof(floatX) <= CLS2_MAX_STAGED_BYTES ? 2 : 1;
}

// version: -1 picks fused_classifier_version(Vp); 0..3 force one (dev/cuda compares them; a
// version whose shared memory would not hold the row falls back to 1).
static void fused_classifier(floatX* logits, float* losses, const int* targets, int N, int V, int Vp, float dloss,
                             float loss_weight, int write_dlogits, int accumulate, cudaStream_t stream,
                             int version = -1) {
    if (version < 0) version = fused_classifier_version(Vp);
    const size_t row_bytes = (size_t)Vp * sizeof(floatX);
    if (version == 0 || Vp % X128 != 0) {
        fused_classifier_kernel<<<N, CLS_THREADS, 0, stream>>>(logits, losses, targets, V, Vp, dloss, loss_weight,
                                                              write_dlogits, accumulate);
    } else if (version == 3 && 2 * row_bytes <= CLS3_MAX_STAGED_BYTES) {
        static int sms = 0;
        if (sms == 0) {
            int device;
            cudaCheck(cudaGetDevice(&device));
            cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
            cudaCheck(cudaFuncSetAttribute(fused_classifier_kernel3, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           CLS3_MAX_STAGED_BYTES));
        }
        const int grid = N < sms ? N : sms;
        fused_classifier_kernel3<<<grid, CLS3_THREADS, 2 * row_bytes, stream>>>(
            logits, losses, targets, N, V, Vp, dloss, loss_weight, write_dlogits, accumulate);
    } else if (version == 2 && row_bytes <= CLS2_MAX_STAGED_BYTES) {
        static bool attribute_set = false;
        if (!attribute_set) {
            cudaCheck(cudaFuncSetAttribute(fused_classifier_kernel2<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           CLS2_MAX_STAGED_BYTES));
            attribute_set = true;
        }
        fused_classifier_kernel2<true><<<N, CLS2_THREADS, row_bytes, stream>>>(logits, losses, targets, V, Vp, dloss,
                                                                               loss_weight, write_dlogits, accumulate);
    } else {
        fused_classifier_kernel2<false><<<N, CLS2_THREADS, 0, stream>>>(logits, losses, targets, V, Vp, dloss,
                                                                        loss_weight, write_dlogits, accumulate);
    }
    cudaCheckLast();
}

#endif  // LLMC_FUSED_CLASSIFIER_CUH
