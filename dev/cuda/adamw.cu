/*
AdamW: one optimizer step over all of GPT-2 124M's parameters, check and benchmark.

What it computes (llmc/adamw.cuh has the formulas): for every parameter value, with the gradient
scaled by grad_scale (the clipping factor from global_norm),
    m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
    w = w - lr (m / (1 - beta1^t) / (sqrt(v / (1 - beta2^t)) + eps) + weight_decay w)
The engine keeps bf16 parameters and gradients, fp32 master weights w and fp32 m, v; the bf16
parameter is w stochastically rounded, with random bits hash(index, seed).

Shapes: the 16 parameter tensors of GPT-2 124M (L = 12, C = 768, Vp = 50,304, maxT = 1024), in
the on-disk order, 124,475,904 values; weight decay on the six 2-D weights only (wte, wpe, qkvw,
attprojw, fcw, fcprojw, as PARAM_DECAYED in llmc/gpt2cu.cuh); one launch per tensor, as
gpt2cu_update does (v8: one launch for all 16). The state is 2 GB, far larger than the 50 MB L2,
so every step reads DRAM.

Build and run (from the repository root; bf16 build only):
    make -C dev/cuda adamw && build-dev-cuda/adamw
    (or `cmake --build build --target dev_cuda_adamw`, program build/dev_cuda/adamw)

Versions, with their % of the device-to-device copy bandwidth measured in the same run on one H200
(2026-11-24, copy 4129 GB/s): full GPT-2 124M step (16 tensors) / wte alone (one launch, 38.6M
values). Every version passed every check.
  v1 naive fp32   fp32 parameters and gradients, no master weights, one thread per element; every
                  thread recomputes the bias corrections with powf. The formula, as written.
                  71.3% (1.184 ms) / -
  v2 scalar (old engine)  a copy of the engine's kernel before issue 5 (the only copied kernel here:
                  it is no longer the engine's): bf16 storage, fp32 master, m, v, stochastic
                  rounding, one thread per value, 2- and 4-byte accesses, 512-thread blocks, the
                  grad_scale check before the loads. Its arithmetic is left to the compiler's FMA
                  contraction, so its bits differ from v3..v8 in the last place: it is checked
                  against the reference, not bit for bit. 77.9% (1.084 ms) / 80.7%
  v3..v8 are llmc/adamw.cuh's kernel template in different launch layouts. They share the
  per-value arithmetic (adamw_element, explicit rounding) and the random bits (hash of the index in
  the tensor), so they must give the same bits as adamw_update, and are checked that way:
  v3 8 per thread     one 16-byte bf16 packet per thread, fp32 arrays as two 16-byte accesses
                      32 bytes apart (the layout of the first rewrite in issue 5, which measured
                      72.5% / 76.9% with its own kernel body; with this body the layout gives)
                      89.6% (941.9 us) / 94.8%
  v4 2 per thread     8-byte fp32 and 4-byte bf16 accesses, one chunk per thread
                      94.7% (891.5 us) / 98.3%
  v5 4 per thread     16-byte fp32 and 8-byte bf16 accesses, one chunk per thread
                      94.2% (895.9 us) / 98.7%
  v6 4 per thread, streaming   v5 with __ldcs / __stcs (evict-first: nothing is reused); the
                      engine's layout (fastest per-tensor version, by a hair over v4 and v5)
                      94.9% (889.7 us) / 98.8%
  v7 4 per thread, streaming, 1 wave   v6 as a grid-stride loop over one wave of resident blocks:
                      fewer threads in flight per byte, slower
                      90.0% (938.5 us) / 92.9%
  v8 4 per thread, streaming, 1 launch  v6's chunks, all 16 tensors in one launch
                      (adamw_update_tensors: a table of pointers, size, weight decay, seed per
                      tensor), which removes 15 launch gaps and partial last waves; the same bits
                      as v6. 100.6% (839.2 us) / 98.6% (a cudaMemcpy is not quite the ceiling)
The version whose layout is ADAMW_VEC / ADAMW_STREAM / ADAMW_WAVES (llmc/adamw.cuh) is labelled
"(engine)" and is timed through adamw_update itself.
Every version moves 28 bytes per value: v1 reads grad, w, m, v (4 bytes each) and writes w, m, v;
the others read grad (2), master, m, v (4 each) and write master, m, v (4 each) and param (2).

Checks (before any timing): four steps (t = 1..4, bias correction on, grad_scale 0.75, fresh
gradients every step, per-tensor gradient scales from 1e-2 to 1e-4) from the same fp32 start
against a double-precision CPU reference of the same formula, after step 1 and after step 4, for
the engine (adamw_update), v2 and v1:
  - master (v2, engine) or w (v1), m and v, per tensor, to 1e-6 / 1e-5 / 1e-5 of the tensor's
    largest value;
  - the bf16 parameter (poisoned with NaN before each step) must be the fp32 master rounded down
    or up to a neighbouring bf16 value, within one bf16 ulp of the reference, and the rounding
    must be unbiased: binned by the probability of rounding up, the number rounded up in each bin
    within 6 standard deviations of its expectation (round-to-nearest or truncation miss by
    hundreds);
  - v3..v8 run the same four steps from the same start and must end with the engine's bits
    (params, master, m, v); the engine's step 1 run twice from the same state gives the same
    bits; a step with grad_scale 0 (a non-finite norm) changes nothing.
Odd layouts (a partial last chunk, fewer values than a chunk, pointers not aligned, and four odd
tensors in one v8 launch) are checked the same way over two steps. Then each version is timed over
the whole model (3 warm-up steps, median of 30) and its GB/s (28 bytes per value) is printed as a
% of the device-to-device copy bandwidth measured in the same run, and again on the largest tensor
alone (wte, one launch), which shows what the 15 smaller launches of a step cost. About 40 s,
most of it the CPU reference.
*/
#ifdef LLMC_FP32
#error "dev/cuda/adamw.cu measures the bf16 build (master weights, stochastic rounding): build it without -DLLMC_FP32"
#endif

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <string>
#include <vector>

#include "llmc/adamw.cuh"
#include "llmc/rand.h"
#include "common.cuh"

// ---- the parameter tensors --------------------------------------------------------------------

struct Tensor {
    const char* name;
    size_t size;
    bool decayed;     // weight decay applies (2-D weights)
    float init_mean;  // of the random start weights: 1 for LayerNorm weights, else 0
};

static std::vector<Tensor> gpt2_tensors(size_t L, size_t C, size_t Vp, size_t maxT) {
    return {{"wte", Vp * C, true, 0.0f},        {"wpe", maxT * C, true, 0.0f},
            {"ln1w", L * C, false, 1.0f},       {"ln1b", L * C, false, 0.0f},
            {"qkvw", L * 3 * C * C, true, 0.0f}, {"qkvb", L * 3 * C, false, 0.0f},
            {"attprojw", L * C * C, true, 0.0f}, {"attprojb", L * C, false, 0.0f},
            {"ln2w", L * C, false, 1.0f},       {"ln2b", L * C, false, 0.0f},
            {"fcw", L * 4 * C * C, true, 0.0f},  {"fcb", L * 4 * C, false, 0.0f},
            {"fcprojw", L * C * 4 * C, true, 0.0f}, {"fcprojb", L * C, false, 0.0f},
            {"lnfw", C, false, 1.0f},           {"lnfb", C, false, 0.0f}};
}

static size_t total_size(const std::vector<Tensor>& tensors) {
    size_t n = 0;
    for (const Tensor& t : tensors) n += t.size;
    return n;
}

static const AdamWParams HP = {6e-4f, 0.9f, 0.95f, 1e-8f, 0.1f};  // the trainer's betas and eps
static const float GRAD_SCALE = 0.75f;                          // as if the gradients were clipped
static const double TOL_W = 1e-6, TOL_MV = 1e-5;
static const double TOL_PARAM = 1.0 / 128;  // one bf16 ulp (8 significant bits) of the largest value

// the per-step, per-tensor seed of the stochastic rounding (the engine draws them from its Rng)
static uint32_t rounding_seed(int step, size_t tensor) {
    Rng rng;
    rng_init(&rng, (uint64_t)step * 1000003u + tensor);
    return rng_next_u32(&rng);
}

// roughly normal(mean, std), one 64-bit draw per value: the sum of four 16-bit uniforms (Irwin-Hall),
// fast enough for 124.5M values (common.cuh's random_normal, Box-Muller, would take seconds)
static float fast_normal(Rng* rng, float mean, float std) {
    const uint64_t r = rng_next_u64(rng);
    float s = 0.0f;
    for (int k = 0; k < 4; k++) s += (float)((r >> (16 * k)) & 0xFFFF);
    // four uniforms on [0, 65535]: mean 131070, standard deviation 65536 / sqrt(3) = 37837.2
    return mean + (s - 131070.0f) * (std / 37837.2f);
}

// gradients of one step: per-tensor scale 1e-2, 1e-3 or 1e-4
static void random_grads(Rng* rng, const std::vector<Tensor>& tensors, std::vector<floatX>& g) {
    size_t i = 0;
    for (size_t t = 0; t < tensors.size(); t++) {
        const float std = powf(10.0f, -2.0f - (float)(t % 3));
        for (size_t k = 0; k < tensors[t].size; k++, i++) g[i] = from_float<floatX>(fast_normal(rng, 0.0f, std));
    }
}

static std::vector<float> random_weights(Rng* rng, const std::vector<Tensor>& tensors) {
    std::vector<float> w(total_size(tensors));
    size_t i = 0;
    for (const Tensor& t : tensors) {
        for (size_t k = 0; k < t.size; k++, i++) w[i] = fast_normal(rng, t.init_mean, 0.02f);
    }
    return w;
}

// ---- v1: naive, fp32 everywhere ---------------------------------------------------------------

__global__ void adamw_v1_kernel(float* params, const float* grads, float* m, float* v, size_t n, float lr,
                                float beta1, float beta2, float eps, float weight_decay, int step,
                                const float* grad_scale) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float scale = grad_scale[0];
    if (scale == 0.0f) return;
    const float g = grads[i] * scale;
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    const float m_hat = mi / (1.0f - powf(beta1, (float)step));
    const float v_hat = vi / (1.0f - powf(beta2, (float)step));
    const float w = params[i];
    m[i] = mi;
    v[i] = vi;
    params[i] = w - lr * (m_hat / (sqrtf(v_hat) + eps) + weight_decay * w);
}

// ---- v2: the engine's kernel before issue 5 (a copy: it is no longer the engine's) ---------------

__global__ void adamw_v2_kernel(floatX* params, float* master, const floatX* grads, float* m, float* v, size_t n,
                                float lr, float beta1, float beta2, float bias_correction1, float bias_correction2,
                                float eps, float weight_decay, const float* grad_scale, uint32_t seed) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float scale = grad_scale[0];
    if (scale == 0.0f) return;
    const float g = to_float(grads[i]) * scale;
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    float w = master[i];
    const float update = (mi / bias_correction1) / (sqrtf(vi / bias_correction2) + eps);
    w -= lr * (update + weight_decay * w);
    master[i] = w;
    store_rounded(params + i, w, hash_u32((uint32_t)i, seed));
}

// ---- v3..v8: the engine's kernel template in different layouts ----------------------------------

struct Layout {
    const char* name;
    int vec;     // values per thread and chunk
    bool cs;     // streaming hints
    int waves;   // 0: one chunk per thread; k: grid-stride over at most k waves
    bool multi;  // all tensors in one launch (adamw_update_tensors' kernel)
};

static const Layout LAYOUTS[] = {
    {"v3 8 per thread", 8, false, 0, false},
    {"v4 2 per thread", 2, false, 0, false},
    {"v5 4 per thread", 4, false, 0, false},
    {"v6 4 per thread, streaming", 4, true, 0, false},
    {"v7 4 per thread, streaming, 1 wave", 4, true, 1, false},
    {"v8 4 per thread, streaming, 1 launch", 4, true, 0, true},
};
static const int NUM_LAYOUTS = (int)(sizeof(LAYOUTS) / sizeof(LAYOUTS[0]));

// the layout adamw_update uses (then it is timed and checked through adamw_update itself)
static bool is_engine(const Layout& l) {
    return !l.multi && l.vec == ADAMW_VEC && l.cs == (bool)(ADAMW_STREAM) && l.waves == ADAMW_WAVES;
}

static std::string layout_label(const Layout& l) { return std::string(l.name) + (is_engine(l) ? " (engine)" : ""); }

template <int VEC, bool CS>
static void launch_layout(const Layout& l, const AdamWTensor* t, int count, const AdamWStep* steps,
                          const float* d_scale) {
    if (l.multi) {
        adamw_launch_tensors<VEC, CS>(t, count, steps[0], d_scale, 0);
    } else {
        for (int k = 0; k < count; k++) adamw_launch<VEC, CS>(t[k], steps[k], d_scale, l.waves, 0);
    }
}

// one step of the tensors t (their AdamWStep in steps) with layout l
static void run_layout(const Layout& l, const AdamWTensor* t, int count, const AdamWStep* steps,
                       const float* d_scale) {
    if (l.vec == 2 && !l.cs) launch_layout<2, false>(l, t, count, steps, d_scale);
    else if (l.vec == 4 && !l.cs) launch_layout<4, false>(l, t, count, steps, d_scale);
    else if (l.vec == 4 && l.cs) launch_layout<4, true>(l, t, count, steps, d_scale);
    else if (l.vec == 8 && !l.cs) launch_layout<8, false>(l, t, count, steps, d_scale);
    else {
        fprintf(stderr, "no instantiation for layout %s\n", l.name);
        exit(1);
    }
}

// ---- device state and one step over all tensors -----------------------------------------------

struct Fp32State {  // v1
    float *params, *grads, *m, *v;
};
struct Bf16State {  // v2 and the engine's layouts (the gradients are separate)
    floatX* params;
    float *master, *m, *v;
};

static void v1_step(const Fp32State& st, const std::vector<Tensor>& tensors, int step, const float* d_scale) {
    size_t off = 0;
    for (const Tensor& t : tensors) {
        const float wd = t.decayed ? HP.weight_decay : 0.0f;
        adamw_v1_kernel<<<(unsigned)ceil_div_sz(t.size, 512), 512>>>(st.params + off, st.grads + off, st.m + off,
                                                                     st.v + off, t.size, HP.learning_rate, HP.beta1,
                                                                     HP.beta2, HP.eps, wd, step, d_scale);
        cudaCheckLast();
        off += t.size;
    }
}

static void v2_step(const Bf16State& st, const floatX* grads, const std::vector<Tensor>& tensors, int step,
                    const float* d_scale) {
    const float bc1 = 1.0f - powf(HP.beta1, (float)step), bc2 = 1.0f - powf(HP.beta2, (float)step);
    size_t off = 0;
    for (size_t k = 0; k < tensors.size(); k++) {
        const Tensor& t = tensors[k];
        const float wd = t.decayed ? HP.weight_decay : 0.0f;
        adamw_v2_kernel<<<(unsigned)ceil_div_sz(t.size, 512), 512>>>(
            st.params + off, st.master + off, grads + off, st.m + off, st.v + off, t.size, HP.learning_rate, HP.beta1,
            HP.beta2, bc1, bc2, HP.eps, wd, d_scale, rounding_seed(step, k));
        cudaCheckLast();
        off += t.size;
    }
}

// the engine: adamw_update per tensor, as gpt2cu_update calls it
static void engine_step(const Bf16State& st, const floatX* grads, const std::vector<Tensor>& tensors, int step,
                        const float* d_scale) {
    size_t off = 0;
    for (size_t k = 0; k < tensors.size(); k++) {
        const Tensor& t = tensors[k];
        const float wd = t.decayed ? HP.weight_decay : 0.0f;
        adamw_update(st.params + off, st.master + off, grads + off, st.m + off, st.v + off, t.size, &HP, wd, step,
                     d_scale, rounding_seed(step, k), 0);
        off += t.size;
    }
}

// one step with layout l (through adamw_update when l is the engine's)
static void layout_step(const Layout& l, const Bf16State& st, const floatX* grads, const std::vector<Tensor>& tensors,
                        int step, const float* d_scale) {
    if (is_engine(l)) {
        engine_step(st, grads, tensors, step, d_scale);
        return;
    }
    std::vector<AdamWTensor> t(tensors.size());
    std::vector<AdamWStep> steps(tensors.size());
    size_t off = 0;
    for (size_t k = 0; k < tensors.size(); k++) {
        const float wd = tensors[k].decayed ? HP.weight_decay : 0.0f;
        t[k] = {st.params + off, st.master + off, grads + off, st.m + off, st.v + off, tensors[k].size, wd,
                rounding_seed(step, k)};
        steps[k] = adamw_step_constants(&HP, wd, step);
        off += tensors[k].size;
    }
    run_layout(l, t.data(), (int)t.size(), steps.data(), d_scale);
}

// n values per buffer, `offset` values in (to test pointers that are not 16-byte aligned)
static Bf16State alloc_bf16_state(size_t n, size_t offset) {
    Bf16State st;
    st.params = bench::device_alloc<floatX>(n + offset) + offset;
    st.master = bench::device_alloc<float>(n + offset) + offset;
    st.m = bench::device_alloc<float>(n + offset) + offset;
    st.v = bench::device_alloc<float>(n + offset) + offset;
    return st;
}

static void free_bf16_state(const Bf16State& st, size_t offset) {
    cudaCheck(cudaFree(st.params - offset));
    cudaCheck(cudaFree(st.master - offset));
    cudaCheck(cudaFree(st.m - offset));
    cudaCheck(cudaFree(st.v - offset));
}

// the start of training: master = w0, m = v = 0, the bf16 parameters poisoned (they are only written)
static void reset_bf16_state(const Bf16State& st, const std::vector<float>& w0) {
    const size_t n = w0.size();
    bench::copy_to_device(st.master, w0);
    cudaCheck(cudaMemset(st.m, 0, n * sizeof(float)));
    cudaCheck(cudaMemset(st.v, 0, n * sizeof(float)));
    bench::poison(st.params, n);
}

struct HostBf16 {
    std::vector<floatX> params;
    std::vector<float> master, m, v;
};

static HostBf16 download(const Bf16State& st, size_t n) {
    return {bench::to_host(st.params, n), bench::to_host(st.master, n), bench::to_host(st.m, n),
            bench::to_host(st.v, n)};
}

// 0 when two states are bit-identical, else infinity (a check value for bench::check)
static double bits_differ(const HostBf16& a, const HostBf16& b) {
    const bool same = bench::same_bits(a.params, b.params) && bench::same_bits(a.master, b.master) &&
                      bench::same_bits(a.m, b.m) && bench::same_bits(a.v, b.v);
    return same ? 0.0 : INFINITY;
}

// ---- the fp64 reference -----------------------------------------------------------------------

struct Reference {
    std::vector<double> w, m, v;
};

static Reference reference_start(const std::vector<float>& w0) {
    Reference r;
    r.w.assign(w0.begin(), w0.end());
    r.m.assign(w0.size(), 0.0);
    r.v.assign(w0.size(), 0.0);
    return r;
}

static void reference_step(Reference& r, const std::vector<floatX>& grads, const std::vector<Tensor>& tensors,
                           int step) {
    const double b1 = HP.beta1, b2 = HP.beta2, lr = HP.learning_rate, eps = HP.eps;
    const double bc1 = 1.0 - pow(b1, step), bc2 = 1.0 - pow(b2, step);
    size_t i = 0;
    for (const Tensor& t : tensors) {
        const double wd = t.decayed ? (double)HP.weight_decay : 0.0;
        for (size_t k = 0; k < t.size; k++, i++) {
            const double g = (double)to_float(grads[i]) * (double)GRAD_SCALE;
            r.m[i] = b1 * r.m[i] + (1.0 - b1) * g;
            r.v[i] = b2 * r.v[i] + (1.0 - b2) * g * g;
            const double update = (r.m[i] / bc1) / (sqrt(r.v[i] / bc2) + eps);
            r.w[i] -= lr * (update + wd * r.w[i]);
        }
    }
}

// ---- comparisons ------------------------------------------------------------------------------

// max |ours - ref| / max |ref| over each tensor, worst tensor; non-finite values give infinity
template <typename T>
static double tensor_rel_error(const std::vector<T>& ours, const std::vector<double>& ref,
                               const std::vector<Tensor>& tensors) {
    double worst = 0.0;
    size_t start = 0;
    for (const Tensor& t : tensors) {
        double scale = 1e-30, err = 0.0;
        for (size_t i = start; i < start + t.size; i++) scale = std::max(scale, fabs(ref[i]));
        for (size_t i = start; i < start + t.size; i++) {
            const double o = (double)to_float(ours[i]);
            if (!isfinite(o)) return INFINITY;
            err = std::max(err, fabs(o - ref[i]));
        }
        worst = std::max(worst, err / scale);
        start += t.size;
    }
    return worst;
}

static uint32_t float_bits(float x) {
    uint32_t b;
    memcpy(&b, &x, sizeof(b));
    return b;
}
static uint16_t bf16_bits(floatX x) {
    uint16_t b;
    memcpy(&b, &x, sizeof(b));
    return b;
}

// Stochastic rounding of the fp32 master to the bf16 parameter. Truncating the fp32 pattern to
// its top 16 bits gives the neighbour toward zero; the other neighbour is one bf16 step away from
// zero, to be chosen with probability p = (dropped 16 bits) / 2^16. Returns the number of
// parameters that are neither neighbour. *bias_z: the values are split into 8 bins by p, and in
// each bin the number rounded away from zero is compared with its expectation sum(p), in units of
// the standard deviation sqrt(sum p(1 - p)); the largest |z| of the bins. About 2 when the rounding
// is unbiased; round-to-nearest or truncation give hundreds.
static size_t rounding_errors(const HostBf16& h, double* bias_z) {
    const int BINS = 8;
    double ups[BINS] = {0}, expected[BINS] = {0}, variance[BINS] = {0};
    size_t bad = 0;
    for (size_t i = 0; i < h.master.size(); i++) {
        const uint32_t w = float_bits(h.master[i]);
        const uint32_t down = w >> 16;
        const double p = (double)(w & 0xFFFFu) / 65536.0;
        const uint32_t got = bf16_bits(h.params[i]);
        if (got != down && !(got == down + 1 && p > 0.0)) bad++;
        const int b = (int)(p * BINS);
        ups[b] += got == down + 1 ? 1.0 : 0.0;
        expected[b] += p;
        variance[b] += p * (1.0 - p);
    }
    *bias_z = 0.0;
    for (int b = 0; b < BINS; b++) {
        if (variance[b] > 0.0) *bias_z = std::max(*bias_z, fabs(ups[b] - expected[b]) / sqrt(variance[b]));
    }
    return bad;
}

// every check of one bf16 version's state against the reference; prints them, true when all pass
static bool check_bf16(const char* what, const HostBf16& h, const Reference& r, const std::vector<Tensor>& tensors,
                       double* master_err) {
    char label[128];
    bool ok = true;
    *master_err = tensor_rel_error(h.master, r.w, tensors);
    snprintf(label, sizeof(label), "%s: master weights", what);
    ok &= bench::check(label, *master_err, TOL_W);
    snprintf(label, sizeof(label), "%s: m", what);
    ok &= bench::check(label, tensor_rel_error(h.m, r.m, tensors), TOL_MV);
    snprintf(label, sizeof(label), "%s: v", what);
    ok &= bench::check(label, tensor_rel_error(h.v, r.v, tensors), TOL_MV);
    snprintf(label, sizeof(label), "%s: bf16 params (one ulp)", what);
    ok &= bench::check(label, tensor_rel_error(h.params, r.w, tensors), TOL_PARAM);
    double bias_z = 0.0;
    const size_t bad = rounding_errors(h, &bias_z);
    snprintf(label, sizeof(label), "%s: params not a bf16 neighbour (count)", what);
    ok &= bench::check(label, (double)bad, 0.0);
    snprintf(label, sizeof(label), "%s: rounding bias (max |z| of 8 bins)", what);
    ok &= bench::check(label, bias_z, 6.0);
    return ok;
}

// ---- odd layouts: partial chunks, unaligned pointers, several odd tensors in one launch ---------

// tensors of the given sizes back to back, `offset` values past an aligned start; two steps of the
// engine against the reference, and of every other layout against the engine's bits
static bool check_odd(const std::vector<size_t>& sizes, size_t offset, float* d_scale, Rng* rng) {
    std::vector<Tensor> tensors;
    std::string shape;
    for (size_t k = 0; k < sizes.size(); k++) {
        tensors.push_back({"odd", sizes[k], k % 2 == 0, 0.0f});  // decayed and not, alternating
        shape += (k ? "+" : "") + std::to_string(sizes[k]);
    }
    const size_t n = total_size(tensors);
    const std::vector<float> w0 = random_weights(rng, tensors);
    std::vector<floatX> g(n);
    floatX* d_grads[2];
    const Bf16State se = alloc_bf16_state(n, offset), sc = alloc_bf16_state(n, offset);
    reset_bf16_state(se, w0);
    Reference r = reference_start(w0);
    for (int step = 1; step <= 2; step++) {
        random_grads(rng, tensors, g);
        d_grads[step - 1] = bench::device_alloc<floatX>(n + offset) + offset;
        bench::copy_to_device(d_grads[step - 1], g);
        bench::poison(se.params, n);
        engine_step(se, d_grads[step - 1], tensors, step, d_scale);
        reference_step(r, g, tensors, step);
    }
    const HostBf16 he = download(se, n);
    bool ok = true;
    double err = 0.0;
    char what[128];
    snprintf(what, sizeof(what), "engine n=%s offset=%zu step 2", shape.c_str(), offset);
    ok &= check_bf16(what, he, r, tensors, &err);
    for (const Layout& l : LAYOUTS) {
        if (is_engine(l)) continue;
        reset_bf16_state(sc, w0);
        for (int step = 1; step <= 2; step++) {
            bench::poison(sc.params, n);
            layout_step(l, sc, d_grads[step - 1], tensors, step, d_scale);
        }
        snprintf(what, sizeof(what), "%s == engine bits, n=%s offset=%zu", l.name, shape.c_str(), offset);
        ok &= bench::check(what, bits_differ(download(sc, n), he), 0.0);
    }
    for (floatX* d : d_grads) cudaCheck(cudaFree(d - offset));
    free_bf16_state(se, offset);
    free_bf16_state(sc, offset);
    return ok;
}

// ---- main -------------------------------------------------------------------------------------

int main(int argc, char** argv) {
    if (argc != 1) {
        fprintf(stderr, "usage: %s   (no arguments: GPT-2 124M's parameters)\n", argv[0]);
        return 1;
    }
    const std::vector<Tensor> tensors = gpt2_tensors(12, 768, 50304, 1024);
    const size_t N = total_size(tensors);
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    printf("adamw: GPT-2 124M, %zu parameters in %zu tensors, %s storage, %s\n", N, tensors.size(),
           LLMC_PRECISION_NAME, prop.name);
    printf("engine layout: ADAMW_VEC %d, ADAMW_STREAM %d, ADAMW_WAVES %d\n", ADAMW_VEC, (int)(ADAMW_STREAM),
           ADAMW_WAVES);
    const double copy_gbs = bench::copy_bandwidth_gbs();

    float* d_scale = bench::device_alloc<float>(1);
    const float scale_h = GRAD_SCALE, zero_h = 0.0f;
    cudaCheck(cudaMemcpy(d_scale, &scale_h, sizeof(float), cudaMemcpyHostToDevice));

    Rng rng;
    rng_init(&rng, 42);

    printf("-- odd layouts\n");
    bool odd_ok = check_odd({12345}, 0, d_scale, &rng);
    odd_ok &= check_odd({5}, 0, d_scale, &rng);
    odd_ok &= check_odd({1001}, 3, d_scale, &rng);
    odd_ok &= check_odd({1001, 5, 12345, 7}, 0, d_scale, &rng);  // one aligned tensor, three not

    // the whole model: four steps of v1, v2 and the engine from the same start
    printf("-- GPT-2 124M, steps 1 to 4\n");
    const std::vector<float> w0 = random_weights(&rng, tensors);
    std::vector<floatX> grads_h(N);
    std::vector<float> grads32_h(N);
    floatX* d_grads[4];
    for (floatX*& d : d_grads) d = bench::device_alloc<floatX>(N);
    Fp32State s1;
    s1.params = bench::to_device(w0);
    s1.grads = bench::device_alloc<float>(N);
    s1.m = bench::device_alloc<float>(N);
    s1.v = bench::device_alloc<float>(N);
    cudaCheck(cudaMemset(s1.m, 0, N * sizeof(float)));
    cudaCheck(cudaMemset(s1.v, 0, N * sizeof(float)));
    const Bf16State s2 = alloc_bf16_state(N, 0), se = alloc_bf16_state(N, 0), sc = alloc_bf16_state(N, 0);
    reset_bf16_state(s2, w0);
    reset_bf16_state(se, w0);
    Reference ref = reference_start(w0);

    bool ok1 = true, ok2 = true, oke = odd_ok;
    double err1 = 0.0, err2 = 0.0, erre = 0.0;
    HostBf16 he;
    char what[128];
    for (int step = 1; step <= 4; step++) {
        random_grads(&rng, tensors, grads_h);
        for (size_t i = 0; i < N; i++) grads32_h[i] = to_float(grads_h[i]);
        bench::copy_to_device(d_grads[step - 1], grads_h);
        bench::copy_to_device(s1.grads, grads32_h);
        bench::poison(s2.params, N);
        bench::poison(se.params, N);
        v1_step(s1, tensors, step, d_scale);
        v2_step(s2, d_grads[step - 1], tensors, step, d_scale);
        engine_step(se, d_grads[step - 1], tensors, step, d_scale);
        cudaCheck(cudaDeviceSynchronize());
        reference_step(ref, grads_h, tensors, step);
        if (step != 1 && step != 4) continue;

        he = download(se, N);
        snprintf(what, sizeof(what), "engine (adamw_update) step %d", step);
        oke &= check_bf16(what, he, ref, tensors, &erre);
        snprintf(what, sizeof(what), "v2 scalar (old engine) step %d", step);
        ok2 &= check_bf16(what, download(s2, N), ref, tensors, &err2);
        const std::vector<float> w1 = bench::to_host(s1.params, N), m1 = bench::to_host(s1.m, N),
                                 v1 = bench::to_host(s1.v, N);
        err1 = tensor_rel_error(w1, ref.w, tensors);
        snprintf(what, sizeof(what), "v1 naive fp32 step %d: weights", step);
        ok1 &= bench::check(what, err1, TOL_W);
        snprintf(what, sizeof(what), "v1 naive fp32 step %d: m", step);
        ok1 &= bench::check(what, tensor_rel_error(m1, ref.m, tensors), TOL_MV);
        snprintf(what, sizeof(what), "v1 naive fp32 step %d: v", step);
        ok1 &= bench::check(what, tensor_rel_error(v1, ref.v, tensors), TOL_MV);

        if (step == 1) {
            // determinism: the engine's step 1 again from the same start, the same seeds: same bits
            reset_bf16_state(sc, w0);
            engine_step(sc, d_grads[0], tensors, 1, d_scale);
            oke &= bench::check("engine step 1 run twice: same bits", bits_differ(download(sc, N), he), 0.0);
        }
    }
    // grad_scale 0 (a non-finite gradient norm): the step must leave every value as it was
    cudaCheck(cudaMemcpy(d_scale, &zero_h, sizeof(float), cudaMemcpyHostToDevice));
    engine_step(se, d_grads[0], tensors, 5, d_scale);
    oke &= bench::check("engine grad_scale 0 changes nothing", bits_differ(download(se, N), he), 0.0);
    cudaCheck(cudaMemcpy(d_scale, &scale_h, sizeof(float), cudaMemcpyHostToDevice));

    // every other layout: the same four steps from the same start must end with the engine's bits
    bool layout_ok[NUM_LAYOUTS];
    for (int k = 0; k < NUM_LAYOUTS; k++) {
        const Layout& l = LAYOUTS[k];
        layout_ok[k] = true;
        if (is_engine(l)) continue;
        reset_bf16_state(sc, w0);
        for (int step = 1; step <= 4; step++) {
            bench::poison(sc.params, N);
            layout_step(l, sc, d_grads[step - 1], tensors, step, d_scale);
        }
        snprintf(what, sizeof(what), "%s == engine bits, step 4", l.name);
        layout_ok[k] = bench::check(what, bits_differ(download(sc, N), he), 0.0) && odd_ok;
    }

    // timings: one step over the whole model, the state keeps evolving
    printf("-- timings\n");
    char kernel[96];
    snprintf(kernel, sizeof(kernel), "adamw step, GPT-2 124M (%zu params, 16 tensors)", N);
    const double bytes = 28.0 * (double)N;
    int step = 5;
    const double ms1 = bench::time_ms([&] { v1_step(s1, tensors, step++, d_scale); });
    bench::report_memory(kernel, "v1 naive fp32", ok1 ? err1 : INFINITY, TOL_W, ms1, bytes, copy_gbs);
    const double ms2 = bench::time_ms([&] { v2_step(s2, d_grads[step % 4], tensors, step, d_scale), step++; });
    bench::report_memory(kernel, "v2 scalar (old engine)", ok2 ? err2 : INFINITY, TOL_W, ms2, bytes, copy_gbs);
    for (int k = 0; k < NUM_LAYOUTS; k++) {
        const Layout& l = LAYOUTS[k];
        const bool ok = is_engine(l) ? oke : layout_ok[k] && oke;
        const double ms =
            bench::time_ms([&] { layout_step(l, sc, d_grads[step % 4], tensors, step, d_scale), step++; });
        bench::report_memory(kernel, layout_label(l), ok ? erre : INFINITY, TOL_W, ms, bytes, copy_gbs);
    }

    // the largest tensor alone (one launch): the same kernels without the 15 smaller launches
    const std::vector<Tensor> wte(tensors.begin(), tensors.begin() + 1);
    snprintf(kernel, sizeof(kernel), "adamw step, one tensor (wte, %zu params)", wte[0].size);
    const double wte_bytes = 28.0 * (double)wte[0].size;
    const double ms2w = bench::time_ms([&] { v2_step(s2, d_grads[step % 4], wte, step, d_scale), step++; });
    bench::report_memory(kernel, "v2 scalar (old engine)", ok2 ? err2 : INFINITY, TOL_W, ms2w, wte_bytes, copy_gbs);
    for (int k = 0; k < NUM_LAYOUTS; k++) {
        const Layout& l = LAYOUTS[k];
        const bool ok = is_engine(l) ? oke : layout_ok[k] && oke;
        const double ms = bench::time_ms([&] { layout_step(l, sc, d_grads[step % 4], wte, step, d_scale), step++; });
        bench::report_memory(kernel, layout_label(l), ok ? erre : INFINITY, TOL_W, ms, wte_bytes, copy_gbs);
    }
    return bench::finish();
}
