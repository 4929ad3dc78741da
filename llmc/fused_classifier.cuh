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

Why it is memory-bound, and what limits it. GPT-2 at B*T = 65,536 moves 2 x 6.6 GB (bf16): 3.1 ms
at the H200's device-to-device copy rate (~4.25 TB/s counting read + write). Per element, the kernel
needs two exponentials (one for the sum, one for the gradient), and the SM's special-function unit
gives 16 per clock: 1.6 ms of the 3.1 if nothing else ran. So the arithmetic is a large fraction of
the memory time, and the versions below are mostly about how few instructions an element costs and
how well an SM keeps DRAM busy while it computes.

Versions (fused_classifier's `version`; dev/cuda/fused_classifier.cu checks and times each; H200,
N = 65,536, V = 50,257, Vp = 50,304, bf16, loss + dlogits as % of copy, 2026-11-24):
  v1 (0)   one 1024-thread block per row, scalar loads, the row read twice from global memory. Kept
           for a Vp that is not a multiple of X128 (16 bytes). 30%.
  v2 (1,2) one 512-thread block per row, 16-byte loads and stores; pass 1 a running max and a sum
           rescaled to it, packet by packet; pass 2 re-reads the row from global memory (1: mostly
           L2 hits) or from a copy kept in shared memory (2). 63% / 65%. Version 1 is the fallback
           for any Vp % X128 == 0 whose rows do not fit in shared memory.
  v3 (3)   persistent, one 1024-thread block per SM walking rows; row j+1 is copied into shared
           memory (cp.async) while row j is reduced and written. 69%: per element it still spent
           ~22 instructions (online rescaling, exp2f with its range fix-ups, a bound test and a
           target test per element), so the SM, not DRAM, set the pace.
  v4 (4)   THE ENGINE (bf16 GPT-2): v3's structure, arithmetic cut to ~10 instructions per element
           (the v4 family comment below lists how). 93% (3.32 ms, 3.97 TB/s); loss only 81%.
  v5 (5)   v4 with streaming cache hints (an L2 evict-first policy on the cp.async loads,
           st.global.cs stores): 89%, slower; not split further into loads and stores.
  v6, v7   v5 with 2 or 4 of every 8 exponentials of the write pass computed by a polynomial on the
           FMA pipe instead of MUFU: 89% both, no change, so MUFU was not the limit after v4.
  v8 (8)   v6 with 512-thread blocks (one per SM, twice the packets per thread): 89%.
  v9 (9)   one row buffer per 512-thread block and two blocks per SM, which overlap each other
           instead of double-buffering: 89% (loss only: 91-96%, the best read-only version).
           The engine for rows too large for two in shared memory (fp32 GPT-2: 89% at N = 8192).
  v10, v11 each row split over a cluster of 2 (or 4) blocks, their (max, sum) pairs combined
           through distributed shared memory after a cluster barrier: 82% / 70%; the cluster
           barrier once per row costs more than the smaller buffers gain.
Every version is deterministic: each thread owns fixed packets of a row, and the per-thread
partial results are combined in a fixed order (no atomics).
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

// ---- v4 family ---------------------------------------------------------------------------------
// Persistent like v3 (each thread copies its own 16-byte packets of the row into shared memory with
// cp.async and only ever reads those packets back, so the copy needs no block barrier), with the
// arithmetic cut to a few instructions per element so that the kernel is left waiting on DRAM:
//   - pass 1a: the thread's max over its packets (two bf16 at a time, max.bf16x2: exact);
//   - pass 1b: the thread's sum of 2^(x*log2(e) - m_thread): one FMA, one ex2.approx.ftz (MUFU)
//     and one add per element, no rescaling;
//   - one reduction of the (max, sum) pairs per row: warps combine by shuffles, each warp leaves
//     its pair in shared memory, one barrier (__syncthreads, or the cluster barrier), then every
//     warp combines the <= 32 pairs in the same fixed order: every thread gets the same bits;
//   - pass 2: dlogits = 2^(x*log2(e) + c) with c = log2(dloss / S) - M folded in (bf16 only: fp32
//     keeps exp2 then the product, for its precision), packed two at a time (cvt.rn.bf16x2);
//   - no per-element tests: the packets wholly below V take a test-free loop, the packet that
//     straddles V and the padding packets take a second loop, the target is one test per packet.
// Template parameters (dev/cuda/fused_classifier.cu times each combination):
//   THREADS  threads per block;
//   STAGES   2: rows double-buffered in one block (row j+1 lands while row j is computed);
//            1: one row per block and two blocks per SM, which overlap each other instead;
//   CLUSTER  blocks (on different SMs or not) sharing one row, each holding 1/CLUSTER of it; the
//            (max, sum) pairs meet through distributed shared memory (ld.shared::cluster);
//   HINTS    loads with an L2 evict-first policy, dlogits stored with st.global.cs (streaming);
//   POLY     bf16 only: of every 8 exponentials of pass 2, POLY are a polynomial on the FMA pipe
//            (relative error 8e-5, far under bf16's 4e-3) instead of MUFU (16 results per clock and
//            SM). Measured: no gain once v4's arithmetic is lean (MUFU is not the limit).
// Configurations (version: THREADS STAGES CLUSTER HINTS POLY): 4: 1024 2 1 no 0 (the engine),
// 5: 1024 2 1 yes 0, 6: 1024 2 1 yes 2, 7: 1024 2 1 yes 4, 8: 512 2 1 yes 2, 9: 512 1 1 yes 2,
// 10: 512 2 2 yes 2, 11: 256 2 4 yes 2.
// dynamic shared memory a v4 block may ask for: sm_90's 227 KiB per block less its static pairs
#define CLS4_MAX_SMEM (226 * 1024)
#define CLS4_LOG2E 1.4426950408889634f

__device__ static inline float cls4_ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// 2^a for a <= 0 on the FMA pipe: a = j + f (j the nearest integer, |f| <= 1/2), 2^f a degree-3
// polynomial (least-squares fit for relative error, max 7.6e-5), 2^j added to the exponent bits.
// a is clamped at -125 so the result stays a normal number (2^-125 ~ 2e-38 instead of less).
__device__ static inline float cls4_ex2_poly(float a) {
    const float ROUND = 12582912.0f;  // 1.5 * 2^23: a + ROUND has j in its low mantissa bits
    a = fmaxf(a, -125.0f);
    const float t = a + ROUND;
    const float f = a - (t - ROUND);
    const float p = fmaf(fmaf(fmaf(0.05517084f, f, 0.24260935f), f, 0.69326096f), f, 0.99992818f);
    return __int_as_float(__float_as_int(p) + (__float_as_int(t) << 23));
}

// one 16-byte shared-memory load (LDS.128)
__device__ static inline x128 cls4_lds(const x128* p) {
    const int4 raw = *reinterpret_cast<const int4*>(p);
    x128 out;
    memcpy(&out, &raw, sizeof(out));
    return out;
}

// the X128 values of a packet as fp32 (bf16 -> fp32 is a shift or a mask of the 32-bit word)
__device__ static inline void cls4_unpack(const x128& p, float* x) {
#ifdef LLMC_FP32
#pragma unroll
    for (int k = 0; k < X128; k++) x[k] = p.v[k];
#else
    const uint32_t* w = reinterpret_cast<const uint32_t*>(&p);
#pragma unroll
    for (int q = 0; q < X128 / 2; q++) {
        x[2 * q] = __uint_as_float(w[q] << 16);
        x[2 * q + 1] = __uint_as_float(w[q] & 0xFFFF0000u);
    }
#endif
}

__device__ static inline x128 cls4_pack(const float* g) {
    x128 out;
#ifdef LLMC_FP32
#pragma unroll
    for (int k = 0; k < X128; k++) out.v[k] = g[k];
#else
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&out);
#pragma unroll
    for (int q = 0; q < X128 / 2; q++) h[q] = __floats2bfloat162_rn(g[2 * q], g[2 * q + 1]);
#endif
    return out;
}

// running max over packets: pairs of bf16 (exact), or fp32
struct Cls4Max {
#ifdef LLMC_FP32
    float m = -INFINITY;
    __device__ void add(const x128& p) {
#pragma unroll
        for (int k = 0; k < X128; k++) m = fmaxf(m, p.v[k]);
    }
    __device__ float value() const { return m; }
#else
    __nv_bfloat162 m = __bfloat162bfloat162(__ushort_as_bfloat16((unsigned short)0xFF80u));  // -inf
    __device__ void add(const x128& p) {
        const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&p);
        m = __hmax2(m, __hmax2(__hmax2(h[0], h[1]), __hmax2(h[2], h[3])));
    }
    __device__ float value() const { return fmaxf(__low2float(m), __high2float(m)); }
#endif
};

// (m, s) <- (m, s) + (mo, so): sums of 2^(x - m) brought to the larger max. Symmetric to the bit
// (explicit roundings keep the compiler from fusing one product into an FMA), so both lanes of a
// butterfly step get the same result.
__device__ static inline void cls4_combine(float& m, float& s, float mo, float so) {
    const float mn = fmaxf(m, mo);
    if (mn == -INFINITY) return;  // both empty
    s = __fadd_rn(__fmul_rn(s, cls4_ex2(m - mn)), __fmul_rn(so, cls4_ex2(mo - mn)));
    m = mn;
}

__device__ static inline void cls4_warp_combine(float& m, float& s) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float mo = __shfl_xor_sync(0xFFFFFFFFu, m, offset);
        const float so = __shfl_xor_sync(0xFFFFFFFFu, s, offset);
        cls4_combine(m, s, mo, so);
    }
}

__device__ static inline void cls4_cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

__device__ static inline float2 cls4_load_remote(const float2* p, uint32_t rank) {
    const uint32_t local = (uint32_t)__cvta_generic_to_shared(p);
    uint32_t remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
    float2 v;
    asm volatile("ld.shared::cluster.v2.f32 {%0, %1}, [%2];" : "=f"(v.x), "=f"(v.y) : "r"(remote) : "memory");
    return v;
}

// (m, s) of every thread of the block (of the cluster) -> the row's (M, S) in every thread.
// pairs: two slots of 32 (row parity): a slot is rewritten two rows later, after a barrier that
// every reader of its previous contents has passed, so one barrier per row is enough.
template <int THREADS, int CLUSTER>
__device__ static inline void cls4_reduce(float& m, float& s, float2 (*pairs)[32], int parity) {
    constexpr int WARPS = THREADS / 32;
    static_assert(WARPS * CLUSTER <= 32, "one pair per lane in the final step");
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    cls4_warp_combine(m, s);
    if (lane == 0) pairs[parity][warp] = make_float2(m, s);
    float2 p = make_float2(-INFINITY, 0.0f);
    if (CLUSTER == 1) {
        __syncthreads();
        if (lane < WARPS) p = pairs[parity][lane];
    } else {
        cls4_cluster_sync();
        if (lane < WARPS * CLUSTER) p = cls4_load_remote(&pairs[parity][lane % WARPS], lane / WARPS);
    }
    m = p.x;
    s = p.y;
    cls4_warp_combine(m, s);
}

// this thread's packets [threadIdx.x, count) step THREADS of `row` into dst
template <int THREADS, bool HINTS>
__device__ static inline void cls4_load(x128* dst, const floatX* row, int count, uint64_t policy) {
    for (int i = threadIdx.x; i < count; i += THREADS) {
        const uint32_t addr = (uint32_t)__cvta_generic_to_shared(dst + i);
        if (HINTS) {
            asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(addr),
                         "l"(row + (size_t)i * X128), "l"(policy)
                         : "memory");
        } else {
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(addr), "l"(row + (size_t)i * X128)
                         : "memory");
        }
    }
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <bool HINTS>
__device__ static inline void cls4_store(floatX* p, const x128& x) {
    if (HINTS) __stcs(reinterpret_cast<int4*>(p), *reinterpret_cast<const int4*>(&x));
    else store128(p, x);
}

template <int THREADS, int STAGES, int CLUSTER, bool HINTS, int POLY>
__global__ void __launch_bounds__(THREADS, STAGES == 1 || CLUSTER > 1 ? 1024 / THREADS : 1)
    fused_classifier_kernel4(floatX* logits, float* losses, const int* targets, int N, int V, int Vp, float dloss,
                             float loss_weight, int write_dlogits, int accumulate) {
    extern __shared__ __align__(16) unsigned char cls4_smem[];
    __shared__ float2 pairs[2][32];
    constexpr float L = CLS4_LOG2E;
    constexpr int POLY_K = sizeof(floatX) == 2 ? POLY : 0;  // polynomial exponentials per packet
    uint32_t rank = 0, cluster = blockIdx.x, clusters = gridDim.x;
    if (CLUSTER > 1) {
        asm("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
        asm("mov.u32 %0, %%clusterid.x;" : "=r"(cluster));
        asm("mov.u32 %0, %%nclusterid.x;" : "=r"(clusters));
    }
    // this block's slice of each row: packets [lo, lo + count); valid (< V) ones: [0, valid);
    // wholly valid ones: [0, fast)
    const int packets = Vp / X128;
    const int slice = (packets + CLUSTER - 1) / CLUSTER;
    const int lo = (int)rank * packets / CLUSTER;
    const int count = ((int)rank + 1) * packets / CLUSTER - lo;
    const int valid = min(max((V + X128 - 1) / X128 - lo, 0), count);
    const int fast = min(max(V / X128 - lo, 0), count);
    uint64_t policy = 0;
    if (HINTS) asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
    x128* buffers = reinterpret_cast<x128*>(cls4_smem);

    int n = (int)cluster;
    if (n >= N) return;  // the whole cluster: n depends on the cluster only
    int target = targets[n];
    if (STAGES == 2) cls4_load<THREADS, HINTS>(buffers, logits + (size_t)n * Vp + (size_t)lo * X128, valid, policy);
    for (int j = 0; n < N; j++, n += (int)clusters) {
        const int next = n + (int)clusters;
        const int target_next = next < N ? targets[next] : 0;
        x128* cur = buffers + (STAGES == 2 ? (j & 1) * slice : 0);
        if (STAGES == 2) {
            if (next < N) {
                cls4_load<THREADS, HINTS>(buffers + ((j + 1) & 1) * slice, logits + (size_t)next * Vp + (size_t)lo * X128,
                                          valid, policy);
            } else {
                asm volatile("cp.async.commit_group;\n" ::: "memory");
            }
            asm volatile("cp.async.wait_group 1;\n" ::: "memory");  // this thread's packets of row n
        } else {
            cls4_load<THREADS, HINTS>(cur, logits + (size_t)n * Vp + (size_t)lo * X128, valid, policy);
            asm volatile("cp.async.wait_group 0;\n" ::: "memory");
        }
        // the thread holding the target's packet computes the loss; it reads the old loss early
        const int tpk = target / X128 - lo;
        const bool owner = tpk >= 0 && tpk < count && tpk % THREADS == (int)threadIdx.x;
        const float loss_before = owner && accumulate ? losses[n] : 0.0f;

        // pass 1a: this thread's max; pass 1b: its sum of 2^(x*L - m)
        // (the first own packet past `fast` is the one that straddles V when it is below `valid`:
        // there is at most one)
        Cls4Max maxer;
        int i = threadIdx.x;
        for (; i < fast; i += THREADS) maxer.add(cls4_lds(cur + i));
        if (i < valid) {
            x128 p = cls4_lds(cur + i);
#pragma unroll
            for (int k = 0; k < X128; k++)
                if ((lo + i) * X128 + k >= V) p.v[k] = from_float<floatX>(-INFINITY);
            maxer.add(p);
        }
        float m = maxer.value() * L, s = 0.0f;
        i = threadIdx.x;
        for (; i < fast; i += THREADS) {
            float x[X128];
            cls4_unpack(cls4_lds(cur + i), x);
            float e[X128];
#pragma unroll
            for (int k = 0; k < X128; k++) e[k] = cls4_ex2(fmaf(x[k], L, -m));
#pragma unroll
            for (int w = 1; w < X128; w *= 2) {
#pragma unroll
                for (int k = 0; k < X128; k += 2 * w) e[k] += e[k + w];
            }
            s += e[0];
        }
        if (i < valid) {
            float x[X128];
            cls4_unpack(cls4_lds(cur + i), x);
#pragma unroll
            for (int k = 0; k < X128; k++)
                if ((lo + i) * X128 + k < V) s += cls4_ex2(fmaf(x[k], L, -m));
        }
        cls4_reduce<THREADS, CLUSTER>(m, s, pairs, j & 1);
        const float M = m, S = s;  // row max (times log2(e)) and sum of 2^(x*L - M), in every thread

        if (owner) {
            const float x_target = to_float(reinterpret_cast<const floatX*>(cur + tpk)[target % X128]);
            const float loss = logf(S) + M / L - x_target;
            losses[n] = loss_before + loss * loss_weight;
        }
        if (write_dlogits) {
            // pass 2: g = 2^(x*L - M) * dloss / S - [v == target] * dloss
            const bool fold = sizeof(floatX) == 2 && dloss > 0.0f;
            const float c = fold ? log2f(dloss / S) - M : -M;
            const float scale = fold ? 1.0f : dloss / S;
            floatX* row = logits + (size_t)n * Vp + (size_t)lo * X128;
            i = threadIdx.x;
            for (; i < fast; i += THREADS) {
                float x[X128];
                cls4_unpack(cls4_lds(cur + i), x);
                float g[X128];
#pragma unroll
                for (int k = 0; k < X128; k++) {
                    const float a = fmaf(x[k], L, c);
                    g[k] = k < POLY_K ? cls4_ex2_poly(a) : cls4_ex2(a);
                }
                if (!fold) {
#pragma unroll
                    for (int k = 0; k < X128; k++) g[k] *= scale;
                }
                if (i == tpk) {
#pragma unroll
                    for (int k = 0; k < X128; k++)
                        if (k == target % X128) g[k] -= dloss;
                }
                cls4_store<HINTS>(row + (size_t)i * X128, cls4_pack(g));
            }
            if (i < valid) {  // the packet that straddles V
                float x[X128];
                cls4_unpack(cls4_lds(cur + i), x);
                float g[X128];
#pragma unroll
                for (int k = 0; k < X128; k++) {
                    const int v = (lo + i) * X128 + k;
                    g[k] = 0.0f;
                    if (v < V) {
                        g[k] = cls4_ex2(fmaf(x[k], L, c)) * scale;
                        if (v == target) g[k] -= dloss;
                    }
                }
                cls4_store<HINTS>(row + (size_t)i * X128, cls4_pack(g));
                i += THREADS;
            }
            x128 zero;
#pragma unroll
            for (int k = 0; k < X128; k++) zero.v[k] = from_float<floatX>(0.0f);
            for (; i < count; i += THREADS) cls4_store<HINTS>(row + (size_t)i * X128, zero);  // padding
        }
        target = target_next;
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    if (CLUSTER > 1) cls4_cluster_sync();  // peers may still read this block's pairs
}

// Launches one v4-family kernel on a persistent grid (as many blocks, or clusters, as fit on the
// GPU at once; each walks rows cluster, + clusters, ...). Returns false, launching nothing, when
// its shared memory would not hold the rows (the caller falls back).
template <int THREADS, int STAGES, int CLUSTER, bool HINTS, int POLY>
static bool fused_classifier_launch4(floatX* logits, float* losses, const int* targets, int N, int V, int Vp,
                                     float dloss, float loss_weight, int write_dlogits, int accumulate,
                                     cudaStream_t stream) {
    auto kernel = fused_classifier_kernel4<THREADS, STAGES, CLUSTER, HINTS, POLY>;
    const size_t smem = (size_t)STAGES * ceil_div(Vp / X128, CLUSTER) * sizeof(x128);
    if (smem > CLS4_MAX_SMEM) return false;
    cudaLaunchAttribute attribute;
    attribute.id = cudaLaunchAttributeClusterDimension;
    attribute.val.clusterDim.x = CLUSTER;
    attribute.val.clusterDim.y = 1;
    attribute.val.clusterDim.z = 1;
    cudaLaunchConfig_t config = {};
    config.blockDim = dim3(THREADS);
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    config.attrs = &attribute;
    config.numAttrs = 1;
    // resident blocks (clusters) on the whole GPU for this shared memory size, found once per size
    static size_t cached_smem = 0;
    static int cached_units = 0;
    if (cached_smem != smem) {
        int device, sms, optin;
        cudaCheck(cudaGetDevice(&device));
        cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
        cudaCheck(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
        cudaFuncAttributes attributes;
        cudaCheck(cudaFuncGetAttributes(&attributes, kernel));
        cached_smem = smem;
        cached_units = 0;
        if (smem + attributes.sharedSizeBytes > (size_t)optin) return false;  // static + dynamic
        cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                       cudaSharedmemCarveoutMaxShared));
        if (CLUSTER == 1) {
            int per_sm = 0;
            cudaCheck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, THREADS, smem));
            cached_units = per_sm * sms;
        } else {
            config.gridDim = dim3(CLUSTER * sms);
            cudaCheck(cudaOccupancyMaxActiveClusters(&cached_units, kernel, &config));
        }
    }
    if (cached_units <= 0) return false;
    const int units = N < cached_units ? N : cached_units;
    if (CLUSTER == 1) {
        kernel<<<units, THREADS, smem, stream>>>(logits, losses, targets, N, V, Vp, dloss, loss_weight, write_dlogits,
                                                 accumulate);
    } else {
        config.gridDim = dim3(units * CLUSTER);
        cudaCheck(cudaLaunchKernelEx(&config, kernel, logits, losses, targets, N, V, Vp, dloss, loss_weight,
                                     write_dlogits, accumulate));
    }
    cudaCheckLast();
    return true;
}

// ---- choosing and launching a version ----------------------------------------------------------
// Versions: 0 v1, 1 v2 (row re-read from global memory), 2 v2 (row staged in shared memory),
// 3 v3, 4..11 the v4 family (CLS4_CONFIGS below). fused_classifier() with version -1 runs
// fused_classifier_version(Vp): CLS_ENGINE_VERSION when its rows fit in shared memory, else the
// first of CLS_FALLBACK_VERSIONS that fits, else v2/v1 as before.
struct Cls4Config {
    int version, threads, stages, cluster;
};
static const Cls4Config CLS4_CONFIGS[] = {
    {4, 1024, 2, 1}, {5, 1024, 2, 1}, {6, 1024, 2, 1},  {7, 1024, 2, 1},
    {8, 512, 2, 1},  {9, 512, 1, 1},  {10, 512, 2, 2}, {11, 256, 2, 4},
};
#define CLS_VERSIONS 12
#define CLS_ENGINE_VERSION 4
static const int CLS_FALLBACK_VERSIONS[] = {9, 10};

// true when version (of the v4 family) fits its rows in shared memory for this Vp
static bool fused_classifier_fits(int version, int Vp) {
    for (const Cls4Config& c : CLS4_CONFIGS) {
        if (c.version == version) {
            return Vp % X128 == 0 && (size_t)c.stages * ceil_div(Vp / X128, c.cluster) * sizeof(x128) <= CLS4_MAX_SMEM;
        }
    }
    return false;
}

static int fused_classifier_version(int Vp) {
    if (Vp % X128 != 0) return 0;
    if (fused_classifier_fits(CLS_ENGINE_VERSION, Vp)) return CLS_ENGINE_VERSION;
    for (int version : CLS_FALLBACK_VERSIONS) {
        if (fused_classifier_fits(version, Vp)) return version;
    }
    return (size_t)Vp * sizeof(floatX) <= CLS2_MAX_STAGED_BYTES ? 2 : 1;
}

// version: -1 picks fused_classifier_version(Vp); 0..CLS_VERSIONS-1 force one (dev/cuda compares
// them; a version whose shared memory would not hold the row falls back to 1).
static void fused_classifier(floatX* logits, float* losses, const int* targets, int N, int V, int Vp, float dloss,
                             float loss_weight, int write_dlogits, int accumulate, cudaStream_t stream,
                             int version = -1) {
    if (version < 0) version = fused_classifier_version(Vp);
    if (Vp % X128 != 0) version = 0;
    const size_t row_bytes = (size_t)Vp * sizeof(floatX);
    bool launched = true;
    switch (version) {
#define CLS4_CASE(v, threads, stages, cluster, hints, poly)                                                        \
    case v:                                                                                                        \
        launched = fused_classifier_launch4<threads, stages, cluster, hints, poly>(                                \
            logits, losses, targets, N, V, Vp, dloss, loss_weight, write_dlogits, accumulate, stream);             \
        break;
        CLS4_CASE(4, 1024, 2, 1, false, 0)
        CLS4_CASE(5, 1024, 2, 1, true, 0)
        CLS4_CASE(6, 1024, 2, 1, true, 2)
        CLS4_CASE(7, 1024, 2, 1, true, 4)
        CLS4_CASE(8, 512, 2, 1, true, 2)
        CLS4_CASE(9, 512, 1, 1, true, 2)
        CLS4_CASE(10, 512, 2, 2, true, 2)
        CLS4_CASE(11, 256, 2, 4, true, 2)
#undef CLS4_CASE
        case 0:
            fused_classifier_kernel<<<N, CLS_THREADS, 0, stream>>>(logits, losses, targets, V, Vp, dloss, loss_weight,
                                                                  write_dlogits, accumulate);
            cudaCheckLast();
            break;
        case 3:
            if (2 * row_bytes <= CLS3_MAX_STAGED_BYTES) {
                static int sms = 0;
                if (sms == 0) {
                    int device;
                    cudaCheck(cudaGetDevice(&device));
                    cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
                    cudaCheck(cudaFuncSetAttribute(fused_classifier_kernel3,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize, CLS3_MAX_STAGED_BYTES));
                }
                const int grid = N < sms ? N : sms;
                fused_classifier_kernel3<<<grid, CLS3_THREADS, 2 * row_bytes, stream>>>(
                    logits, losses, targets, N, V, Vp, dloss, loss_weight, write_dlogits, accumulate);
                cudaCheckLast();
            } else {
                launched = false;
            }
            break;
        case 2:
            if (row_bytes <= CLS2_MAX_STAGED_BYTES) {
                static bool attribute_set = false;
                if (!attribute_set) {
                    cudaCheck(cudaFuncSetAttribute(fused_classifier_kernel2<true>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize, CLS2_MAX_STAGED_BYTES));
                    attribute_set = true;
                }
                fused_classifier_kernel2<true><<<N, CLS2_THREADS, row_bytes, stream>>>(
                    logits, losses, targets, V, Vp, dloss, loss_weight, write_dlogits, accumulate);
                cudaCheckLast();
            } else {
                launched = false;
            }
            break;
        default:
            launched = false;
            break;
    }
    if (!launched) {  // v2 re-reading the row from global memory: any Vp % X128 == 0
        fused_classifier_kernel2<false><<<N, CLS2_THREADS, 0, stream>>>(logits, losses, targets, V, Vp, dloss,
                                                                        loss_weight, write_dlogits, accumulate);
        cudaCheckLast();
    }
}

#endif  // LLMC_FUSED_CLASSIFIER_CUH
