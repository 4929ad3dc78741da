/*
GELU (tanh approximation, GPT-2's), forward and backward: check and benchmark.

What it computes (llmc/gelu.cuh), elementwise over N values:
  forward   out = gelu(x)  = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
  backward  dx  = dout * gelu'(x)
N = 201,326,592 by default: B*T*4C for GPT-2 124M at B = 64, T = 1024, the MLP's hidden
activations of one layer; 403 MB per tensor in bf16, far beyond the 50 MB L2.

Where the engine runs them: in training both are fused into the MLP matmuls (cuBLASLt's
GELU_AUX_BIAS and DGELU epilogues, llmc/matmul.cuh, timed in dev/cuda/matmul.cu). llmc/gelu.cuh's
gelu_forward is the standalone kernel that recomputes gelu(fch) with -r 1, and its gelu_backward
the fallback when cuBLASLt offers no DGELU algorithm: those two are the "(engine)" versions here.

Build and run (from this folder; `make` builds every program here):
    nvcc -O3 -std=c++17 -gencode arch=compute_90,code=sm_90 -I../.. gelu.cu -o gelu
    ./gelu [N]                   bf16 (the engine's storage type)
    add -DLLMC_FP32 for the fp32 build of the same kernels

Versions (forward and backward alike):
  v1           one thread per value: 2-byte loads and stores; tanhf.
  v2           one thread per 16-byte packet (8 bf16): 8x fewer, wider accesses. Still tanhf,
               which evaluates both of its branches: ~25 instructions per value in the forward
               (~34 backward), so instruction issue takes ~80% as long as the memory traffic.
  v3 (engine)  llmc/gelu.cuh: 16-byte packets and the same function written with a sigmoid,
               0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)): one __expf and one fast reciprocal per
               value, ~16 instructions per value forward (~26 backward).

Checks: each version against a double-precision CPU reference, outputs poisoned with NaN first,
on fresh random inputs per version and size: N = 1,000,003 (a partial last packet; normal(0, 3)
values plus 0, -0, +-1e-4 ... +-100 at the front, so the far tails where exp overflows are covered)
and N = 5 are compared in full; at the full N (inputs normal(0, 2) drawn on the GPU: drawing 201M
on the CPU takes seconds) every output must be finite (no poison left) and a sample is compared:
the first and last 4096 values and every 193rd (a full double reference would take ~10 s per
version). The engine's backward is also checked in place (dinp == dout, how matmul.cuh calls it)
and at 2-byte-aligned pointers (its one-value-at-a-time path).
Timing (dev/cuda/common.cuh): 3 warm-up calls, median of 30 at the full N; GB/s over the bytes that
must move (forward 2N values, backward 3N) and % of the device-to-device copy bandwidth measured in
the same run.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <string>
#include <vector>

#include "llmc/gelu.cuh"
#include "common.cuh"

#ifdef LLMC_FP32
static const double TOL = 1e-5;  // fp32 storage: the float evaluation of the function (~1e-6)
#else
static const double TOL = 5e-3;  // bf16 storage: one rounding of each output (2^-9 relative)
#endif

// ---- versions written here (tanhf) ----------------------------------------------------------

__device__ static inline float gelu_tanh_value(float x) {
    const float u = GELU_SCALE * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
}

__device__ static inline float gelu_tanh_grad(float x) {
    const float u = GELU_SCALE * (x + 0.044715f * x * x * x);
    const float th = tanhf(u);
    const float du = GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
    return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
}

__global__ void gelu_forward_v1_kernel(floatX* out, const floatX* inp, size_t N) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N) out[i] = from_float<floatX>(gelu_tanh_value(to_float(inp[i])));
}

__global__ void gelu_backward_v1_kernel(floatX* dinp, const floatX* inp, const floatX* dout, size_t N) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N) dinp[i] = from_float<floatX>(gelu_tanh_grad(to_float(inp[i])) * to_float(dout[i]));
}

// one 16-byte packet per thread; the last, partial packet value by value (pointers 16-byte aligned)
__global__ void gelu_forward_v2_kernel(floatX* out, const floatX* inp, size_t N) {
    const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * X128;
    if (i + X128 <= N) {
        x128 x = load128(inp + i);
        for (int k = 0; k < X128; k++) x.v[k] = from_float<floatX>(gelu_tanh_value(to_float(x.v[k])));
        store128(out + i, x);
    } else {
        for (size_t j = i; j < N; j++) out[j] = from_float<floatX>(gelu_tanh_value(to_float(inp[j])));
    }
}

__global__ void gelu_backward_v2_kernel(floatX* dinp, const floatX* inp, const floatX* dout, size_t N) {
    const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * X128;
    if (i + X128 <= N) {
        const x128 x = load128(inp + i);
        x128 d = load128(dout + i);
        for (int k = 0; k < X128; k++)
            d.v[k] = from_float<floatX>(gelu_tanh_grad(to_float(x.v[k])) * to_float(d.v[k]));
        store128(dinp + i, d);
    } else {
        for (size_t j = i; j < N; j++)
            dinp[j] = from_float<floatX>(gelu_tanh_grad(to_float(inp[j])) * to_float(dout[j]));
    }
}

static const char* VERSIONS[] = {"v1", "v2", "v3 (engine)"};

static void forward_call(int version, floatX* out, const floatX* inp, size_t N) {
    const int block = 256;
    if (version == 0) {
        gelu_forward_v1_kernel<<<(unsigned)ceil_div_sz(N, block), block>>>(out, inp, N);
        cudaCheckLast();
    } else if (version == 1) {
        gelu_forward_v2_kernel<<<(unsigned)ceil_div_sz(N, (size_t)block * X128), block>>>(out, inp, N);
        cudaCheckLast();
    } else {
        gelu_forward(out, inp, N, 0);
    }
}

static void backward_call(int version, floatX* dinp, const floatX* inp, const floatX* dout, size_t N) {
    const int block = 256;
    if (version == 0) {
        gelu_backward_v1_kernel<<<(unsigned)ceil_div_sz(N, block), block>>>(dinp, inp, dout, N);
        cudaCheckLast();
    } else if (version == 1) {
        gelu_backward_v2_kernel<<<(unsigned)ceil_div_sz(N, (size_t)block * X128), block>>>(dinp, inp, dout, N);
        cudaCheckLast();
    } else {
        gelu_backward(dinp, inp, dout, N, 0);
    }
}

// ---- inputs and the reference ---------------------------------------------------------------

// normal(mean, std) values drawn on the GPU: Box-Muller on two hashes of the pair index
__global__ void fill_normal_kernel(floatX* x, size_t n, uint32_t seed, float mean, float std) {
    const size_t pair = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (2 * pair >= n) return;
    const uint32_t lo = (uint32_t)pair, hi = (uint32_t)(pair >> 32);
    const uint32_t a = hash_u32(lo ^ hash_u32(hi, seed), seed), b = hash_u32(a, seed ^ 0x5BD1E995u);
    const float u1 = ((float)(a >> 8) + 1.0f) * (1.0f / 16777216.0f);  // (0, 1]
    const float u2 = (float)(b >> 8) * (1.0f / 16777216.0f);           // [0, 1)
    const float r = sqrtf(-2.0f * logf(u1));
    float s, c;
    sincospif(2.0f * u2, &s, &c);
    x[2 * pair] = from_float<floatX>(mean + std * r * c);
    if (2 * pair + 1 < n) x[2 * pair + 1] = from_float<floatX>(mean + std * r * s);
}

static void fill_normal(floatX* x, size_t n, uint32_t seed, float mean, float std) {
    fill_normal_kernel<<<(unsigned)ceil_div_sz(ceil_div_sz(n, 2), 256), 256>>>(x, n, seed, mean, std);
    cudaCheckLast();
}

static double gelu_ref(double x) { return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }

static double gelu_grad_ref(double x) {
    const double th = tanh(0.7978845608028654 * (x + 0.044715 * x * x * x));
    return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x);
}

// which values to compare: all of them, or (full N) the ends and every 193rd
static std::vector<size_t> compared(size_t N, bool all) {
    std::vector<size_t> idx;
    for (size_t i = 0; i < N; i++) {
        if (all || i < 4096 || i >= N - 4096 || i % 193 == 0) idx.push_back(i);
    }
    return idx;
}

// rel_error over the compared values; infinity when any output (compared or not) is not finite
static double gelu_error(const std::vector<floatX>& ours, const std::vector<floatX>& x, const floatX* dout,
                         const std::vector<size_t>& idx) {
    for (const floatX& v : ours)
        if (!isfinite(to_float(v))) return INFINITY;
    std::vector<floatX> sample(idx.size());
    std::vector<double> ref(idx.size());
    for (size_t k = 0; k < idx.size(); k++) {
        const size_t i = idx[k];
        const double xi = to_float(x[i]);
        sample[k] = ours[i];
        ref[k] = dout ? gelu_grad_ref(xi) * (double)to_float(dout[i]) : gelu_ref(xi);
    }
    return bench::rel_error(sample, ref);
}

// host inputs for the sizes checked in full: normal(0, 3) and, at the front, the tails
static std::vector<floatX> host_inputs(Rng* rng, size_t N) {
    std::vector<floatX> x = bench::random_normal<floatX>(rng, N, 0.0f, 3.0f);
    const float special[] = {0.0f, -0.0f, 1e-4f, -1e-4f, 1.0f, -1.0f, 5.0f, -5.0f, 10.0f, -10.0f,
                             15.0f, -15.0f, 30.0f, -30.0f, 100.0f, -100.0f};
    for (size_t i = 0; i < N && i < sizeof(special) / sizeof(special[0]); i++) x[i] = from_float<floatX>(special[i]);
    return x;
}

// ---- checks ---------------------------------------------------------------------------------

// one version, one size checked in full (N small): forward and backward, fresh inputs
static void check_small(int version, size_t N, uint64_t seed) {
    Rng rng;
    rng_init(&rng, seed);
    const std::vector<floatX> x = host_inputs(&rng, N), dout = bench::random_normal<floatX>(&rng, N, 0.0f, 1.0f);
    floatX *d_x = bench::to_device(x), *d_dout = bench::to_device(dout), *d_out = bench::device_alloc<floatX>(N);
    const std::vector<size_t> all = compared(N, true);
    char what[96];

    bench::poison(d_out, N);
    forward_call(version, d_out, d_x, N);
    snprintf(what, sizeof(what), "gelu forward N=%zu %s", N, VERSIONS[version]);
    bench::check(what, gelu_error(bench::to_host(d_out, N), x, NULL, all), TOL);

    bench::poison(d_out, N);
    backward_call(version, d_out, d_x, d_dout, N);
    snprintf(what, sizeof(what), "gelu backward N=%zu %s", N, VERSIONS[version]);
    bench::check(what, gelu_error(bench::to_host(d_out, N), x, dout.data(), all), TOL);

    if (version == 2) {
        // in place: dinp == dout
        backward_call(version, d_dout, d_x, d_dout, N);
        snprintf(what, sizeof(what), "gelu backward N=%zu %s in place", N, VERSIONS[version]);
        bench::check(what, gelu_error(bench::to_host(d_dout, N), x, dout.data(), all), TOL);
        // 2-byte-aligned pointers (one past a 16-byte boundary): the one-value path
        if (N > 1) {
            const std::vector<floatX> x1(x.begin() + 1, x.end()), dout1(dout.begin() + 1, dout.end());
            const std::vector<size_t> all1 = compared(N - 1, true);
            bench::copy_to_device(d_dout, dout);
            bench::poison(d_out, N);
            forward_call(version, d_out + 1, d_x + 1, N - 1);
            snprintf(what, sizeof(what), "gelu forward N=%zu %s misaligned", N - 1, VERSIONS[version]);
            bench::check(what, gelu_error(bench::to_host(d_out + 1, N - 1), x1, NULL, all1), TOL);
            bench::poison(d_out, N);
            backward_call(version, d_out + 1, d_x + 1, d_dout + 1, N - 1);
            snprintf(what, sizeof(what), "gelu backward N=%zu %s misaligned", N - 1, VERSIONS[version]);
            bench::check(what, gelu_error(bench::to_host(d_out + 1, N - 1), x1, dout1.data(), all1), TOL);
        }
    }
    cudaCheck(cudaFree(d_x));
    cudaCheck(cudaFree(d_dout));
    cudaCheck(cudaFree(d_out));
}

// ---- main -----------------------------------------------------------------------------------

int main(int argc, char** argv) {
    size_t N = (size_t)64 * 1024 * 4 * 768;
    if (argc == 2) {
        const long long n = atoll(argv[1]);
        if (n <= 0) {
            fprintf(stderr, "error: N must be a positive integer, got '%s'\n", argv[1]);
            return 1;
        }
        N = (size_t)n;
    } else if (argc != 1) {
        fprintf(stderr, "usage: %s [N]   (default 201326592 = 64*1024*4*768)\n", argv[0]);
        return 1;
    }
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    printf("gelu: N=%zu, %s storage, %s\n", N, LLMC_PRECISION_NAME, prop.name);
    const double copy_gbs = bench::copy_bandwidth_gbs();

    uint64_t seed = 1;
    for (int v = 0; v < 3; v++) {
        check_small(v, 1000003, seed++);
        check_small(v, 5, seed++);
    }

    // full size: fresh inputs on the GPU per version, sampled check, then timing
    floatX *x = bench::device_alloc<floatX>(N), *dout = bench::device_alloc<floatX>(N);
    floatX* out = bench::device_alloc<floatX>(N);
    const std::vector<size_t> sample = compared(N, false);
    char kernel_fwd[64], kernel_bwd[64];
    snprintf(kernel_fwd, sizeof(kernel_fwd), "gelu forward (N=%zu)", N);
    snprintf(kernel_bwd, sizeof(kernel_bwd), "gelu backward (N=%zu)", N);
    const double bytes_fwd = 2.0 * N * sizeof(floatX), bytes_bwd = 3.0 * N * sizeof(floatX);
    for (int v = 0; v < 3; v++) {
        fill_normal(x, N, (uint32_t)(1000 + v), 0.0f, 2.0f);
        bench::poison(out, N);
        forward_call(v, out, x, N);
        cudaCheck(cudaDeviceSynchronize());
        const double err = gelu_error(bench::to_host(out, N), bench::to_host(x, N), NULL, sample);
        const double ms = bench::time_ms([&] { forward_call(v, out, x, N); });
        bench::report_memory(kernel_fwd, VERSIONS[v], err, TOL, ms, bytes_fwd, copy_gbs);
    }
    for (int v = 0; v < 3; v++) {
        fill_normal(x, N, (uint32_t)(2000 + 2 * v), 0.0f, 2.0f);
        fill_normal(dout, N, (uint32_t)(2001 + 2 * v), 0.0f, 1.0f);
        bench::poison(out, N);
        backward_call(v, out, x, dout, N);
        cudaCheck(cudaDeviceSynchronize());
        const std::vector<floatX> hdout = bench::to_host(dout, N);
        const double err = gelu_error(bench::to_host(out, N), bench::to_host(x, N), hdout.data(), sample);
        const double ms = bench::time_ms([&] { backward_call(v, out, x, dout, N); });
        bench::report_memory(kernel_bwd, VERSIONS[v], err, TOL, ms, bytes_bwd, copy_gbs);
    }
    cudaCheck(cudaFree(x));
    cudaCheck(cudaFree(dout));
    cudaCheck(cudaFree(out));
    return bench::finish();
}
