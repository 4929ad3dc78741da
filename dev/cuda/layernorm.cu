/*
LayerNorm forward (plain and fused with the residual add) and backward: check and benchmark.

What it computes (llmc/layernorm.cuh has the formulas): for N rows of C channels,
  forward        out = (x - mean) * rstd * weight + bias, mean and rstd saved (fp32)
  fused forward  residual = a + b (stored), out = layernorm(residual)
  backward       dinp += dx (the residual stream's gradient), dweight += sum_n dout * xhat,
                 dbias += sum_n dout
Shapes: N = B*T = 65,536 rows, C = 768 by default (GPT-2 124M at B = 64, T = 1024); each (N, C)
tensor is 100 MB in bf16, larger than the L2 cache, so every run reads from DRAM.

Build and run (from this folder; `make` builds every program here):
    nvcc -O3 -std=c++17 -gencode arch=compute_90,code=sm_90 -I../.. layernorm.cu -o layernorm
    ./layernorm [N C]            bf16 (the engine's storage type)
    add -DLLMC_FP32 for the fp32 build of the same kernels

Versions (both are the production header's kernels, included, never copied):
  v1  one warp per row, scalar loads, two passes over global memory; the backward keeps each
      warp's dweight/dbias partial sums in global scratch and re-reads/re-writes them every row.
  v2  one warp per row, 16-byte loads, the row kept in registers (read once); the backward
      accumulates dweight/dbias per lane in registers over a block's 128 rows, reduces the block's
      warps through shared memory in a fixed order, then one small kernel adds the per-block
      partials in block order. What the engine runs whenever C % 8 == 0 (bf16) and C <= 2048.

Each version is checked against a double-precision CPU reference on fresh random inputs (its
outputs poisoned with NaN first), then timed with CUDA events (3 warm-up runs, median of 30). It
prints GB/s (bytes the kernel must move: forward 2NC, fused 4NC, backward 4NC values, plus the
fp32 statistics) and the % of the device-to-device copy bandwidth measured in the same run.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "llmc/layernorm.cuh"
#include "llmc/rand.h"

static const int WARMUP = 3, REPS = 30;

#ifdef LLMC_FP32
static const double TOL = 1e-4;  // fp32 storage: summation-order differences only
#else
static const double TOL = 1e-2;  // bf16 storage: one rounding of the output (2^-9 relative) and a bit
#endif

// host conversion helpers
static float host_to_float(floatX x) { return to_float(x); }
static floatX host_from_float(float x) { return from_float<floatX>(x); }

static std::vector<floatX> random_vec(Rng* rng, size_t n, float mean, float std) {
    std::vector<float> f(n);
    rng_normal_fill(rng, f.data(), n, mean, std);
    std::vector<floatX> out(n);
    for (size_t i = 0; i < n; i++) out[i] = host_from_float(f[i]);
    return out;
}

template <typename T>
static T* to_device(const std::vector<T>& h) {
    T* d = NULL;
    cudaCheck(cudaMalloc(&d, h.size() * sizeof(T)));
    cudaCheck(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

template <typename T>
static std::vector<T> to_host(const T* d, size_t n) {
    std::vector<T> h(n);
    cudaCheck(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}

// max |ours - ref| / max |ref|: NaN (a poisoned value left unwritten) counts as a failure
template <typename T>
static double rel_error(const std::vector<T>& ours, const std::vector<double>& ref) {
    double worst = 0.0, scale = 1e-30;
    for (size_t i = 0; i < ref.size(); i++) scale = std::max(scale, fabs(ref[i]));
    for (size_t i = 0; i < ref.size(); i++) {
        const double o = (double)to_float(ours[i]);
        const double e = fabs(o - ref[i]);
        if (!(e == e)) return INFINITY;
        worst = std::max(worst, e);
    }
    return worst / scale;
}

// times fn(): median of REPS runs after WARMUP, in ms
template <typename F>
static double time_ms(F fn) {
    cudaEvent_t start, stop;
    cudaCheck(cudaEventCreate(&start));
    cudaCheck(cudaEventCreate(&stop));
    for (int i = 0; i < WARMUP; i++) fn();
    std::vector<float> ms(REPS);
    for (int i = 0; i < REPS; i++) {
        cudaCheck(cudaEventRecord(start));
        fn();
        cudaCheck(cudaEventRecord(stop));
        cudaCheck(cudaEventSynchronize(stop));
        cudaCheck(cudaEventElapsedTime(&ms[i], start, stop));
    }
    std::sort(ms.begin(), ms.end());
    cudaCheck(cudaEventDestroy(start));
    cudaCheck(cudaEventDestroy(stop));
    return ms[REPS / 2];
}

static int failures = 0;
static double copy_gbs = 0.0;

static void report(const char* kernel, const char* version, double err, double ms, double bytes) {
    const bool ok = err <= TOL;
    if (!ok) failures++;
    const double gbs = bytes / (ms * 1e-3) / 1e9;
    printf("%-16s %-3s  check %-4s (max rel err %.2e)  %8.1f us  %7.0f GB/s  %5.1f%% of copy\n", kernel, version,
           ok ? "ok" : "FAIL", err, ms * 1e3, gbs, 100.0 * gbs / copy_gbs);
}

int main(int argc, char** argv) {
    int N = 65536, C = 768;
    if (argc == 3) {
        N = atoi(argv[1]);
        C = atoi(argv[2]);
    } else if (argc != 1) {
        fprintf(stderr, "usage: %s [N C]\n", argv[0]);
        return 1;
    }
    if (N <= 0 || C <= 0) {
        fprintf(stderr, "error: N and C must be positive\n");
        return 1;
    }
    const size_t NC = (size_t)N * C;
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    printf("layernorm: N=%d C=%d, %s storage, %s\n", N, C, LLMC_PRECISION_NAME, prop.name);

    // copy bandwidth (read + write) on a buffer of 4 (N, C) tensors
    {
        const size_t bytes = 4 * NC * sizeof(floatX);
        void *src, *dst;
        cudaCheck(cudaMalloc(&src, bytes));
        cudaCheck(cudaMalloc(&dst, bytes));
        cudaCheck(cudaMemset(src, 0, bytes));
        const double ms = time_ms([&] { cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice)); });
        copy_gbs = 2.0 * bytes / (ms * 1e-3) / 1e9;
        printf("device copy: %.0f GB/s (%.1f MB read + written in %.1f us)\n", copy_gbs, bytes / 1e6, ms * 1e3);
        cudaCheck(cudaFree(src));
        cudaCheck(cudaFree(dst));
    }

    Rng rng;
    rng_init(&rng, 42);
    const std::vector<floatX> ha = random_vec(&rng, NC, 0.1f, 1.0f), hb = random_vec(&rng, NC, 0.0f, 0.5f);
    const std::vector<floatX> hw = random_vec(&rng, C, 1.0f, 0.2f), hbias = random_vec(&rng, C, 0.0f, 0.2f);
    const std::vector<floatX> hdout = random_vec(&rng, NC, 0.0f, 1.0f), hdinp0 = random_vec(&rng, NC, 0.0f, 0.5f);
    const std::vector<floatX> hdw0 = random_vec(&rng, C, 0.0f, 1.0f), hdb0 = random_vec(&rng, C, 0.0f, 1.0f);
    floatX *a = to_device(ha), *b = to_device(hb), *w = to_device(hw), *bias = to_device(hbias);
    floatX *dout = to_device(hdout), *dinp = to_device(hdinp0), *dw = to_device(hdw0), *db = to_device(hdb0);
    floatX *out, *residual;
    float *mean, *rstd, *scratch;
    cudaCheck(cudaMalloc(&out, NC * sizeof(floatX)));
    cudaCheck(cudaMalloc(&residual, NC * sizeof(floatX)));
    cudaCheck(cudaMalloc(&mean, N * sizeof(float)));
    cudaCheck(cudaMalloc(&rstd, N * sizeof(float)));
    cudaCheck(cudaMalloc(&scratch, layernorm_backward_scratch_floats(N, C) * sizeof(float)));

    // ---- CPU references (double) ----
    // fused: residual = round(a + b); plain forward of `a`. Both give out, mean, rstd.
    std::vector<double> ref_res(NC);
    for (size_t i = 0; i < NC; i++) {
        ref_res[i] = host_to_float(host_from_float(host_to_float(ha[i]) + host_to_float(hb[i])));
    }
    auto cpu_forward = [&](const std::vector<double>& x, std::vector<double>& o, std::vector<double>& m,
                           std::vector<double>& s) {
        o.assign(NC, 0.0);
        m.assign(N, 0.0);
        s.assign(N, 0.0);
        for (int n = 0; n < N; n++) {
            const double* xr = &x[(size_t)n * C];
            double mu = 0.0, var = 0.0;
            for (int c = 0; c < C; c++) mu += xr[c];
            mu /= C;
            for (int c = 0; c < C; c++) var += (xr[c] - mu) * (xr[c] - mu);
            const double r = 1.0 / sqrt(var / C + 1e-5);
            for (int c = 0; c < C; c++) {
                o[(size_t)n * C + c] = (xr[c] - mu) * r * host_to_float(hw[c]) + host_to_float(hbias[c]);
            }
            m[n] = mu;
            s[n] = r;
        }
    };
    std::vector<double> xa(NC);
    for (size_t i = 0; i < NC; i++) xa[i] = host_to_float(ha[i]);
    std::vector<double> ref_out_a, ref_mean_a, ref_rstd_a, ref_out_f, ref_mean_f, ref_rstd_f;
    cpu_forward(xa, ref_out_a, ref_mean_a, ref_rstd_a);
    cpu_forward(ref_res, ref_out_f, ref_mean_f, ref_rstd_f);
    // backward of the plain forward of `a`, with its exact (double) statistics
    std::vector<double> ref_dinp(NC), ref_dw(C), ref_db(C);
    for (int c = 0; c < C; c++) {
        ref_dw[c] = host_to_float(hdw0[c]);
        ref_db[c] = host_to_float(hdb0[c]);
    }
    for (int n = 0; n < N; n++) {
        const size_t base = (size_t)n * C;
        double g_mean = 0.0, gx_mean = 0.0;
        for (int c = 0; c < C; c++) {
            const double xhat = (xa[base + c] - ref_mean_a[n]) * ref_rstd_a[n];
            const double g = host_to_float(hdout[base + c]) * host_to_float(hw[c]);
            g_mean += g;
            gx_mean += g * xhat;
        }
        g_mean /= C;
        gx_mean /= C;
        for (int c = 0; c < C; c++) {
            const double d = host_to_float(hdout[base + c]);
            const double xhat = (xa[base + c] - ref_mean_a[n]) * ref_rstd_a[n];
            const double g = d * host_to_float(hw[c]);
            ref_dinp[base + c] = host_to_float(hdinp0[base + c]) + ref_rstd_a[n] * (g - g_mean - xhat * gx_mean);
            ref_dw[c] += d * xhat;
            ref_db[c] += d;
        }
    }

    const double fwd_bytes = 2.0 * NC * sizeof(floatX) + 8.0 * N;
    const double fused_bytes = 4.0 * NC * sizeof(floatX) + 8.0 * N;
    const double bwd_bytes = 4.0 * NC * sizeof(floatX) + 8.0 * N;
    const bool v2 = layernorm_v2_supported(C);
    if (!v2) printf("note: C=%d is not supported by v2; only v1 runs\n", C);

    // ---- forward ----
    auto poison_forward = [&] {
        cudaCheck(cudaMemset(out, 0xFF, NC * sizeof(floatX)));
        cudaCheck(cudaMemset(residual, 0xFF, NC * sizeof(floatX)));
        cudaCheck(cudaMemset(mean, 0xFF, N * sizeof(float)));
        cudaCheck(cudaMemset(rstd, 0xFF, N * sizeof(float)));
    };
    auto check_forward = [&](bool fused) {
        double err = rel_error(to_host(out, NC), fused ? ref_out_f : ref_out_a);
        err = std::max(err, rel_error(to_host(mean, N), fused ? ref_mean_f : ref_mean_a));
        err = std::max(err, rel_error(to_host(rstd, N), fused ? ref_rstd_f : ref_rstd_a));
        if (fused) err = std::max(err, rel_error(to_host(residual, NC), ref_res));
        return err;
    };
    for (int version = 1; version <= (v2 ? 2 : 1); version++) {
        auto fwd = [&] {
            if (version == 1) layernorm_forward_v1(out, mean, rstd, a, w, bias, N, C, 0);
            else layernorm_forward_v2<false>(NULL, out, mean, rstd, a, NULL, w, bias, N, C, 0);
        };
        poison_forward();
        fwd();
        cudaCheck(cudaDeviceSynchronize());
        const double err = check_forward(false);
        report("forward", version == 1 ? "v1" : "v2", err, time_ms(fwd), fwd_bytes);
    }
    for (int version = 1; version <= (v2 ? 2 : 1); version++) {
        auto fwd = [&] {
            if (version == 1) fused_residual_layernorm_forward_v1(residual, out, mean, rstd, a, b, w, bias, N, C, 0);
            else layernorm_forward_v2<true>(residual, out, mean, rstd, a, b, w, bias, N, C, 0);
        };
        poison_forward();
        fwd();
        cudaCheck(cudaDeviceSynchronize());
        const double err = check_forward(true);
        report("fused fwd", version == 1 ? "v1" : "v2", err, time_ms(fwd), fused_bytes);
    }

    // ---- backward (statistics from the plain forward of `a`, recomputed by the version checked) ----
    for (int version = 1; version <= (v2 ? 2 : 1); version++) {
        auto bwd = [&] {
            if (version == 1) layernorm_backward_v1(dinp, dw, db, scratch, dout, a, w, mean, rstd, N, C, 0);
            else layernorm_backward_v2(dinp, dw, db, scratch, dout, a, w, mean, rstd, N, C, 0);
        };
        layernorm_forward_v1(out, mean, rstd, a, w, bias, N, C, 0);
        cudaCheck(cudaMemcpy(dinp, hdinp0.data(), NC * sizeof(floatX), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(dw, hdw0.data(), C * sizeof(floatX), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(db, hdb0.data(), C * sizeof(floatX), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemset(scratch, 0xFF, layernorm_backward_scratch_floats(N, C) * sizeof(float)));
        bwd();
        cudaCheck(cudaDeviceSynchronize());
        double err = rel_error(to_host(dinp, NC), ref_dinp);
        err = std::max(err, rel_error(to_host(dw, C), ref_dw));
        err = std::max(err, rel_error(to_host(db, C), ref_db));
        // determinism: the same inputs again give the same bits
        const std::vector<floatX> first_dw = to_host(dw, C);
        cudaCheck(cudaMemcpy(dw, hdw0.data(), C * sizeof(floatX), cudaMemcpyHostToDevice));
        bwd();
        const std::vector<floatX> second_dw = to_host(dw, C);
        if (memcmp(first_dw.data(), second_dw.data(), C * sizeof(floatX)) != 0) {
            printf("backward %s: dweight differs between two identical runs\n", version == 1 ? "v1" : "v2");
            err = INFINITY;
        }
        report("backward", version == 1 ? "v1" : "v2", err, time_ms(bwd), bwd_bytes);
    }

    printf("%s\n", failures == 0 ? "all checks passed" : "SOME CHECKS FAILED");
    return failures == 0 ? 0 : 1;
}
