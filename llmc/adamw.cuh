/*
Fused AdamW update of one parameter tensor (n values), decoupled weight decay as in PyTorch:
    g = grad * grad_scale                       (grad_scale from global_norm: clipping, on device;
                                                 0 means a non-finite norm: nothing is updated)
    m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
    w = w - lr (m / (1 - beta1^t) / (sqrt(v / (1 - beta2^t)) + eps) + weight_decay w)
m and v are fp32. In the bf16 build the update is applied to fp32 master weights and the bf16
parameter is the master value stochastically rounded (cuda_common.cuh: store_rounded), so updates
far smaller than a bf16 ulp still move the weights on average. In the fp32 build master is NULL and
the parameters are updated directly.

Reproducibility. The random bits that round element i are hash_u32(i, seed), a pure function of the
element's index in its tensor and the per-step, per-tensor seed the caller passes. The arithmetic
of one element is written with explicit rounding intrinsics (__fmaf_rn, __fmul_rn, __fdiv_rn, ...)
in one __device__ function, adamw_element, so the compiler cannot contract it differently in
different kernels: every launch layout below (values per thread, grid-stride or not, one launch
per tensor or one for many) gives the same bits for the same inputs and seeds. (The kernel before
issue 5 left the contraction to the compiler, so its bits differ from these in the last place.)

Memory bound by design: per value the kernel reads grad, m, v, master and writes m, v, master,
param (28 bytes in the bf16 build), with nothing to reuse. dev/cuda/adamw.cu measures the layouts
below on GPT-2 124M's 16 tensors (% of the device-to-device copy bandwidth, one H200, full step /
wte alone; its top comment has every version):
  - each thread updates ADAMW_VEC = 4 consecutive values (one chunk; the grid covers the tensor,
    one chunk per thread), so a warp's accesses are contiguous and as wide as they can be without
    gaps: 16-byte fp32 loads/stores of m, v, master and 8-byte bf16 loads/stores of grad and param;
    with streaming cache hints (ld.global.cs / st.global.cs, ADAMW_STREAM): the 2 GB state is read
    and written once per step and never reused from L2. 94.9% / 98.8%, against 77.9% / 80.7% for
    the one-value-per-thread kernel before issue 5; 2 values per thread 94.7% / 98.3%, 8 values
    per thread (fp32 accesses 32 bytes apart) 89.6% / 94.8%, a grid-stride loop over one wave
    90.0% / 92.9%;
  - the grad_scale check comes after the loads;
  - tensors whose pointers are not aligned for the vector accesses, and the last partial chunk,
    take the same kernel's per-value path.
adamw_update launches one kernel per tensor (the engine's call, gpt2cu_update). adamw_update_tensors
updates up to ADAMW_MAX_TENSORS tensors in one launch from a small table (pointers, size, weight
decay, seed per tensor) with results identical to one adamw_update per tensor (checked bit for
bit); it saves the launch gaps and partial last waves of the 10 small tensors of a GPT-2 step:
100.6% of copy for the full step, 839 us instead of 890 us.
*/
#ifndef LLMC_ADAMW_CUH
#define LLMC_ADAMW_CUH

#include <stdint.h>
#include <string.h>

#include "llmc/cuda_common.cuh"

typedef struct {
    float learning_rate;
    float beta1;
    float beta2;
    float eps;
    float weight_decay;  // applied only to the tensors the caller marks as decayed
} AdamWParams;

// The constants of one step of one tensor, as the kernel sees them.
typedef struct {
    float lr;
    float beta1;
    float beta2;
    float one_minus_beta1;
    float one_minus_beta2;
    float bias_correction1;  // 1 - beta1^step
    float bias_correction2;  // 1 - beta2^step
    float eps;
    float weight_decay;
} AdamWStep;

static inline AdamWStep adamw_step_constants(const AdamWParams* p, float weight_decay, int step) {
    AdamWStep s;
    s.lr = p->learning_rate;
    s.beta1 = p->beta1;
    s.beta2 = p->beta2;
    s.one_minus_beta1 = 1.0f - p->beta1;
    s.one_minus_beta2 = 1.0f - p->beta2;
    s.bias_correction1 = 1.0f - powf(p->beta1, (float)step);
    s.bias_correction2 = 1.0f - powf(p->beta2, (float)step);
    s.eps = p->eps;
    s.weight_decay = weight_decay;
    return s;
}

// One element: g is the scaled gradient, m and v are updated in place, returns the new weight.
// Every operation rounds explicitly (no contraction left to the compiler): the same bits in
// every kernel that calls it.
__device__ static inline float adamw_element(float g, float& m, float& v, float w, const AdamWStep& s) {
    m = __fmaf_rn(s.beta1, m, __fmul_rn(s.one_minus_beta1, g));
    v = __fmaf_rn(s.beta2, v, __fmul_rn(__fmul_rn(s.one_minus_beta2, g), g));
    const float m_hat = __fdiv_rn(m, s.bias_correction1);
    const float v_hat = __fdiv_rn(v, s.bias_correction2);
    const float update = __fdiv_rn(m_hat, __fadd_rn(__fsqrt_rn(v_hat), s.eps));
    return __fmaf_rn(-s.lr, __fmaf_rn(s.weight_decay, w, update), w);  // w - lr (update + wd w)
}

// ---- vector moves of N consecutive values (N * sizeof(T) bytes: 2, 4, 8 or a multiple of 16) ----
// CS: streaming hints (__ldcs / __stcs: evict first, the data is not reused).

template <typename T, int N, bool CS>
__device__ static inline void adamw_vload(T* dst, const T* src) {
    constexpr int BYTES = (int)sizeof(T) * N;
    static_assert(BYTES % 16 == 0 || BYTES == 8 || BYTES == 4 || BYTES == 2, "unsupported vector size");
    if constexpr (BYTES % 16 == 0) {
        for (int k = 0; k < BYTES / 16; k++) {
            const int4* p = reinterpret_cast<const int4*>(src) + k;
            const int4 q = CS ? __ldcs(p) : *p;
            memcpy(reinterpret_cast<char*>(dst) + 16 * k, &q, 16);
        }
    } else if constexpr (BYTES == 8) {
        const int2* p = reinterpret_cast<const int2*>(src);
        const int2 q = CS ? __ldcs(p) : *p;
        memcpy(dst, &q, 8);
    } else if constexpr (BYTES == 4) {
        const int* p = reinterpret_cast<const int*>(src);
        const int q = CS ? __ldcs(p) : *p;
        memcpy(dst, &q, 4);
    } else {
        const unsigned short* p = reinterpret_cast<const unsigned short*>(src);
        const unsigned short q = CS ? __ldcs(p) : *p;
        memcpy(dst, &q, 2);
    }
}

template <typename T, int N, bool CS>
__device__ static inline void adamw_vstore(T* dst, const T* src) {
    constexpr int BYTES = (int)sizeof(T) * N;
    static_assert(BYTES % 16 == 0 || BYTES == 8 || BYTES == 4 || BYTES == 2, "unsupported vector size");
    if constexpr (BYTES % 16 == 0) {
        for (int k = 0; k < BYTES / 16; k++) {
            int4 q;
            memcpy(&q, reinterpret_cast<const char*>(src) + 16 * k, 16);
            int4* p = reinterpret_cast<int4*>(dst) + k;
            if (CS) __stcs(p, q);
            else *p = q;
        }
    } else if constexpr (BYTES == 8) {
        int2 q;
        memcpy(&q, src, 8);
        int2* p = reinterpret_cast<int2*>(dst);
        if (CS) __stcs(p, q);
        else *p = q;
    } else if constexpr (BYTES == 4) {
        int q;
        memcpy(&q, src, 4);
        int* p = reinterpret_cast<int*>(dst);
        if (CS) __stcs(p, q);
        else *p = q;
    } else {
        unsigned short q;
        memcpy(&q, src, 2);
        unsigned short* p = reinterpret_cast<unsigned short*>(dst);
        if (CS) __stcs(p, q);
        else *p = q;
    }
}

// ---- one tensor, one chunk ----------------------------------------------------------------------

// One tensor's buffers (master NULL in the fp32 build), size, weight decay and rounding seed.
typedef struct {
    floatX* params;
    float* master;
    const floatX* grads;
    float* m;
    float* v;
    size_t n;
    float weight_decay;
    uint32_t seed;
} AdamWTensor;

// Updates the values [c * VEC, c * VEC + VEC) of tensor t (those below t.n). vector: t's pointers
// are aligned for VEC-wide accesses (adamw_vector_ok), so a whole chunk moves with vector accesses;
// the last, partial chunk (and every chunk when vector is false) goes value by value. s holds t's
// weight decay. The loads come before the scale check.
template <int VEC, bool CS>
__device__ static inline void adamw_chunk(const AdamWTensor& t, bool vector, size_t c, const AdamWStep& s,
                                          float scale) {
    const size_t first = c * VEC;
    if (first >= t.n) return;
    const bool whole = vector && first + VEC <= t.n;
    floatX gp[VEC], pp[VEC];
    float mi[VEC], vi[VEC], w[VEC];
    if (whole) {
        adamw_vload<floatX, VEC, CS>(gp, t.grads + first);
        adamw_vload<float, VEC, CS>(mi, t.m + first);
        adamw_vload<float, VEC, CS>(vi, t.v + first);
        if (t.master != NULL) {
            adamw_vload<float, VEC, CS>(w, t.master + first);
        } else {
            adamw_vload<floatX, VEC, CS>(pp, t.params + first);
            for (int k = 0; k < VEC; k++) w[k] = to_float(pp[k]);
        }
    } else {
        for (int k = 0; k < VEC; k++) {
            const size_t i = first + k;
            const bool in = i < t.n;
            gp[k] = in ? t.grads[i] : from_float<floatX>(0.0f);
            mi[k] = in ? t.m[i] : 0.0f;
            vi[k] = in ? t.v[i] : 0.0f;
            w[k] = !in ? 0.0f : t.master != NULL ? t.master[i] : to_float(t.params[i]);
        }
    }
    if (scale == 0.0f) return;  // non-finite gradient norm: the step is skipped (global_norm.cuh)

    for (int k = 0; k < VEC; k++) {
        w[k] = adamw_element(__fmul_rn(to_float(gp[k]), scale), mi[k], vi[k], w[k], s);
        if (t.master != NULL) store_rounded(&pp[k], w[k], hash_u32((uint32_t)(first + k), t.seed));
        else pp[k] = from_float<floatX>(w[k]);
    }

    if (whole) {
        adamw_vstore<float, VEC, CS>(t.m + first, mi);
        adamw_vstore<float, VEC, CS>(t.v + first, vi);
        if (t.master != NULL) adamw_vstore<float, VEC, CS>(t.master + first, w);
        adamw_vstore<floatX, VEC, CS>(t.params + first, pp);
    } else {
        for (int k = 0; k < VEC; k++) {
            const size_t i = first + k;
            if (i >= t.n) break;
            t.m[i] = mi[k];
            t.v[i] = vi[k];
            if (t.master != NULL) t.master[i] = w[k];
            t.params[i] = pp[k];
        }
    }
}

#define ADAMW_BLOCK 256
#define ADAMW_MAX_TENSORS 16

// The engine's layout, chosen by dev/cuda/adamw.cu's measurements: values per thread and chunk,
// streaming hints, and the grid (0: one chunk per thread; k > 0: a grid-stride loop over at most
// k full waves of resident blocks).
#ifndef ADAMW_VEC
#define ADAMW_VEC 4
#endif
#ifndef ADAMW_STREAM
#define ADAMW_STREAM true
#endif
#ifndef ADAMW_WAVES
#define ADAMW_WAVES 0
#endif

// One tensor: chunk c, c + stride, ... (one chunk per thread when the grid covers the tensor).
template <int VEC, bool CS>
__global__ void __launch_bounds__(ADAMW_BLOCK) adamw_kernel(AdamWTensor t, int vector, AdamWStep s,
                                                            const float* grad_scale) {
    const float scale = grad_scale[0];
    const size_t chunks = ceil_div_sz(t.n, VEC);
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t c = (size_t)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += stride) {
        adamw_chunk<VEC, CS>(t, vector != 0, c, s, scale);
    }
}

// Many tensors in one launch: tensor k owns blocks [block_end[k - 1], block_end[k]), one chunk per
// thread, exactly the chunks a one-chunk-per-thread adamw_kernel launch would give it.
typedef struct {
    AdamWTensor tensor[ADAMW_MAX_TENSORS];
    int vector[ADAMW_MAX_TENSORS];
    unsigned block_end[ADAMW_MAX_TENSORS];
    int count;
} AdamWTable;

template <int VEC, bool CS>
__global__ void __launch_bounds__(ADAMW_BLOCK) adamw_multi_kernel(const __grid_constant__ AdamWTable table,
                                                                  AdamWStep s, const float* grad_scale) {
    const float scale = grad_scale[0];
    int k = 0;
    while (k + 1 < table.count && blockIdx.x >= table.block_end[k]) k++;  // the same for the whole block
    const unsigned block0 = k == 0 ? 0u : table.block_end[k - 1];
    AdamWStep st = s;
    st.weight_decay = table.tensor[k].weight_decay;
    const size_t c = (size_t)(blockIdx.x - block0) * blockDim.x + threadIdx.x;
    adamw_chunk<VEC, CS>(table.tensor[k], table.vector[k] != 0, c, st, scale);
}

// ---- host side ------------------------------------------------------------------------------------

static inline bool adamw_aligned(const void* p, size_t bytes) { return ((uintptr_t)p % bytes) == 0; }

// whether t's pointers allow VEC-wide accesses (the alignment adamw_vload/adamw_vstore need)
template <int VEC>
static inline bool adamw_vector_ok(const AdamWTensor& t) {
    const size_t a32 = 4 * VEC < 16 ? 4 * VEC : 16;
    const size_t ax = sizeof(floatX) * VEC < 16 ? sizeof(floatX) * VEC : 16;
    return adamw_aligned(t.params, ax) && adamw_aligned(t.grads, ax) && adamw_aligned(t.master, a32) &&
           adamw_aligned(t.m, a32) && adamw_aligned(t.v, a32);
}

// blocks of one resident wave of adamw_kernel<VEC, CS> on the current device
template <int VEC, bool CS>
static inline unsigned adamw_wave_blocks() {
    int device = 0, sms = 0, per_sm = 0;
    cudaCheck(cudaGetDevice(&device));
    cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    cudaCheck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, adamw_kernel<VEC, CS>, ADAMW_BLOCK, 0));
    return (unsigned)(sms * (per_sm > 0 ? per_sm : 1));
}

// One tensor with a given layout (dev/cuda/adamw.cu times several; adamw_update uses the engine's).
// waves 0: one chunk per thread; else at most `waves` full waves, grid-stride.
template <int VEC, bool CS>
static void adamw_launch(const AdamWTensor& t, const AdamWStep& s, const float* grad_scale, int waves,
                         cudaStream_t stream) {
    if (t.n == 0) return;
    size_t blocks = ceil_div_sz(ceil_div_sz(t.n, VEC), ADAMW_BLOCK);
    if (waves > 0) {
        const size_t cap = (size_t)waves * adamw_wave_blocks<VEC, CS>();
        if (blocks > cap) blocks = cap;
    }
    adamw_kernel<VEC, CS><<<(unsigned)blocks, ADAMW_BLOCK, 0, stream>>>(t, adamw_vector_ok<VEC>(t) ? 1 : 0, s,
                                                                        grad_scale);
    cudaCheckLast();
}

// Up to ADAMW_MAX_TENSORS tensors per launch (more: several launches), same results as one
// adamw_launch<VEC, CS> per tensor.
template <int VEC, bool CS>
static void adamw_launch_tensors(const AdamWTensor* tensors, int count, const AdamWStep& s,
                                 const float* grad_scale, cudaStream_t stream) {
    for (int first = 0; first < count; first += ADAMW_MAX_TENSORS) {
        AdamWTable table;
        memset(&table, 0, sizeof(table));
        size_t blocks = 0;
        for (int k = first; k < count && k < first + ADAMW_MAX_TENSORS; k++) {
            if (tensors[k].n == 0) continue;
            const int j = table.count++;
            table.tensor[j] = tensors[k];
            table.vector[j] = adamw_vector_ok<VEC>(tensors[k]) ? 1 : 0;
            blocks += ceil_div_sz(ceil_div_sz(tensors[k].n, VEC), ADAMW_BLOCK);
            table.block_end[j] = (unsigned)blocks;
        }
        if (table.count == 0) continue;
        adamw_multi_kernel<VEC, CS><<<(unsigned)blocks, ADAMW_BLOCK, 0, stream>>>(table, s, grad_scale);
        cudaCheckLast();
    }
}

// step counts from 1. grad_scale points to one float on the device. seed: per step and tensor.
static void adamw_update(floatX* params, float* master, const floatX* grads, float* m, float* v, size_t n,
                         const AdamWParams* p, float weight_decay, int step, const float* grad_scale, uint32_t seed,
                         cudaStream_t stream) {
    if (n == 0) return;
    const AdamWStep s = adamw_step_constants(p, weight_decay, step);
    AdamWTensor t;
    t.params = params;
    t.master = master;
    t.grads = grads;
    t.m = m;
    t.v = v;
    t.n = n;
    t.weight_decay = weight_decay;
    t.seed = seed;
    adamw_launch<ADAMW_VEC, ADAMW_STREAM>(t, s, grad_scale, ADAMW_WAVES, stream);
}

// All of a step's tensors at once (each with its own weight decay and seed in `tensors`): the same
// results as adamw_update on each, in one launch per ADAMW_MAX_TENSORS tensors.
static void adamw_update_tensors(const AdamWTensor* tensors, int count, const AdamWParams* p, int step,
                                 const float* grad_scale, cudaStream_t stream) {
    const AdamWStep s = adamw_step_constants(p, 0.0f, step);  // weight decay: per tensor, from the table
    adamw_launch_tensors<ADAMW_VEC, ADAMW_STREAM>(tensors, count, s, grad_scale, stream);
}

#endif  // LLMC_ADAMW_CUH
