/*
What every dev/cuda program shares: random inputs, host <-> device copies, poisoning outputs,
comparing against a double-precision reference, timing with CUDA events, the measured copy
bandwidth, and one result line per timed version.

Why one header: every program must check and time the same way, or their numbers cannot be
compared (dev/cuda/README.md, "Rules every program follows"). A program includes this header after
the llmc headers it exercises, never a copy of a kernel.

Result lines. Each timed version prints one line that dev/cuda/results_table.py turns into a row of
the README's table, so the format is fixed:

    RESULT | kernel | version | time | rate | % of limit | check

e.g. `RESULT | gelu forward (N=201326592) | v2 (engine) | 98.1 us | 4102 GB/s | 97.3% of copy |
pass (3.1e-03)`. report_memory() and report_compute() print them; check() records a verdict
without a timing. finish() prints the program's last line, "all checks passed" or
"SOME CHECKS FAILED", and returns its exit status.

Timing: warm-up calls, then the median of `reps` calls, each between two CUDA events on the default
stream. A `before` callback runs outside the timed region (to refill inputs a kernel overwrites).
*/
#ifndef LLMC_DEV_CUDA_COMMON_CUH
#define LLMC_DEV_CUDA_COMMON_CUH

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <string>
#include <vector>

#include "llmc/cuda_common.cuh"
#include "llmc/rand.h"

namespace bench {

static int failures = 0;
static int checks = 0;

// ---- inputs and transfers ------------------------------------------------------------------

// n normal(mean, std) values, rounded to the storage type T (float or bf16)
template <typename T>
static std::vector<T> random_normal(Rng* rng, size_t n, float mean, float std) {
    std::vector<float> f(n);
    rng_normal_fill(rng, f.data(), n, mean, std);
    std::vector<T> out(n);
    for (size_t i = 0; i < n; i++) out[i] = from_float<T>(f[i]);
    return out;
}

template <typename T>
static std::vector<double> to_double(const std::vector<T>& x) {
    std::vector<double> out(x.size());
    for (size_t i = 0; i < x.size(); i++) out[i] = (double)to_float(x[i]);
    return out;
}

template <typename T>
static T* device_alloc(size_t n) {
    T* d = NULL;
    cudaCheck(cudaMalloc(&d, std::max<size_t>(n, 1) * sizeof(T)));
    return d;
}

template <typename T>
static T* to_device(const std::vector<T>& h) {
    T* d = device_alloc<T>(h.size());
    cudaCheck(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

template <typename T>
static void copy_to_device(T* d, const std::vector<T>& h) {
    cudaCheck(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
}

template <typename T>
static std::vector<T> to_host(const T* d, size_t n) {
    std::vector<T> h(n);
    cudaCheck(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}

// the rows of an (N, width) matrix a check compares: all of them when samples >= N, else the first
// and last 16 and random ones (for shapes whose full CPU reference would be too slow)
static std::vector<int> rows_to_check(int N, int samples, Rng* rng) {
    std::vector<int> rows;
    if (samples >= N) {
        for (int n = 0; n < N; n++) rows.push_back(n);
        return rows;
    }
    for (int n = 0; n < 16; n++) rows.push_back(n);
    for (int n = N - 16; n < N; n++) rows.push_back(n);
    while ((int)rows.size() < samples) rows.push_back((int)rng_below(rng, (uint64_t)N));
    return rows;
}

// those rows of a device (N, width) matrix, one after another on the host
template <typename T>
static std::vector<T> copy_rows(const T* d, int width, const std::vector<int>& rows) {
    std::vector<T> h(rows.size() * (size_t)width);
    for (size_t r = 0; r < rows.size(); r++) {
        cudaCheck(cudaMemcpy(&h[r * width], d + (size_t)rows[r] * width, width * sizeof(T), cudaMemcpyDeviceToHost));
    }
    return h;
}

// fills n elements with 0xFF bytes: NaN for fp32 and bf16, so an element a kernel forgot to write
// fails the check
template <typename T>
static void poison(T* d, size_t n) {
    cudaCheck(cudaMemset(d, 0xFF, n * sizeof(T)));
}

// ---- checks ---------------------------------------------------------------------------------

// max |ours - ref| / max |ref|; a NaN or infinity in ours (e.g. a poisoned element left unwritten)
// gives infinity
template <typename T>
static double rel_error(const std::vector<T>& ours, const std::vector<double>& ref) {
    if (ours.size() != ref.size()) return INFINITY;
    double worst = 0.0, scale = 1e-30;
    for (size_t i = 0; i < ref.size(); i++) scale = std::max(scale, fabs(ref[i]));
    for (size_t i = 0; i < ref.size(); i++) {
        const double o = (double)to_float(ours[i]);
        if (!isfinite(o)) return INFINITY;
        worst = std::max(worst, fabs(o - ref[i]));
    }
    return worst / scale;
}

// true when two device results are bit-identical (determinism checks)
template <typename T>
static bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() && memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

static std::string verdict(double err, double tol) {
    char buf[64];
    snprintf(buf, sizeof(buf), "%s (%.2e)", err <= tol ? "pass" : "FAIL", err);
    return buf;
}

// records a check with no timing; prints it
static bool check(const char* what, double err, double tol) {
    checks++;
    const bool ok = err <= tol;  // false for NaN
    if (!ok) failures++;
    printf("check %-48s max rel err %.2e (tol %.0e)  %s\n", what, err, tol, ok ? "ok" : "FAIL");
    return ok;
}

// ---- timing ---------------------------------------------------------------------------------

// Keeps the GPU busy for about `us` microseconds (one block spinning on the global timer), so
// that work the host enqueues behind it waits in the queue instead of finding the GPU idle.
static __global__ void bench_busy_kernel(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < ns);
}

// median ms of fn() over reps calls after warmup calls; before() runs untimed ahead of each call.
// Each call is timed by events around it on a GPU that is already busy: a 50 us spin kernel runs
// first, and the host enqueues the start event and fn()'s launches while it spins. Started from
// an idle GPU, the start event would be stamped as soon as the host records it, and the time the
// host then takes to launch fn()'s first kernel (3-5 us, measured with ncu against these events
// in 2026-11-24's session 5: the encoder forward 34.5 us by ncu, 39 us from an idle GPU) would be
// counted as the kernel's; in a training step the GPU runs ahead of the host and never sees it.
// Launches inside fn() after the first still count whatever gaps they leave.
template <typename Before, typename F>
static double time_ms(Before before, F fn, int warmup = 3, int reps = 30) {
    cudaEvent_t start, stop;
    cudaCheck(cudaEventCreate(&start));
    cudaCheck(cudaEventCreate(&stop));
    for (int i = 0; i < warmup; i++) {
        before();
        fn();
    }
    cudaCheck(cudaDeviceSynchronize());
    std::vector<float> ms(reps);
    for (int i = 0; i < reps; i++) {
        before();
        bench_busy_kernel<<<1, 1>>>(50000ull);
        cudaCheckLast();
        cudaCheck(cudaEventRecord(start));
        fn();
        cudaCheck(cudaEventRecord(stop));
        cudaCheck(cudaEventSynchronize(stop));
        cudaCheck(cudaEventElapsedTime(&ms[i], start, stop));
    }
    cudaCheck(cudaEventDestroy(start));
    cudaCheck(cudaEventDestroy(stop));
    std::sort(ms.begin(), ms.end());
    return ms[reps / 2];
}

template <typename F>
static double time_ms(F fn, int warmup = 3, int reps = 30) {
    return time_ms([] {}, fn, warmup, reps);
}

// device-to-device copy bandwidth (bytes read + written per second, GB/s) on a buffer of `bytes`;
// the memory-bound kernels' limit. Use a buffer larger than the 50 MB L2.
static double copy_bandwidth_gbs(size_t bytes = (size_t)512 << 20) {
    void *src = NULL, *dst = NULL;
    cudaCheck(cudaMalloc(&src, bytes));
    cudaCheck(cudaMalloc(&dst, bytes));
    cudaCheck(cudaMemset(src, 0, bytes));
    const double ms = time_ms([&] { cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice)); });
    cudaCheck(cudaFree(src));
    cudaCheck(cudaFree(dst));
    const double gbs = 2.0 * (double)bytes / (ms * 1e-3) / 1e9;
    printf("device copy: %.0f GB/s (%.1f MB read + written in %.1f us)\n", gbs, bytes / 1e6, ms * 1e3);
    return gbs;
}

// ---- result lines ---------------------------------------------------------------------------

static std::string format_time(double ms) {
    char buf[32];
    if (ms < 1.0) snprintf(buf, sizeof(buf), "%.1f us", ms * 1e3);
    else snprintf(buf, sizeof(buf), "%.3f ms", ms);
    return buf;
}

static void result_line(const std::string& kernel, const std::string& version, const std::string& time,
                        const std::string& rate, const std::string& limit, const std::string& check_text) {
    printf("RESULT | %s | %s | %s | %s | %s | %s\n", kernel.c_str(), version.c_str(), time.c_str(), rate.c_str(),
           limit.c_str(), check_text.c_str());
}

// a memory-bound version: bytes it must move, as GB/s and % of the measured copy bandwidth.
// err < 0 means "not checked in this line" (the check was reported separately).
static void report_memory(const std::string& kernel, const std::string& version, double err, double tol, double ms,
                          double bytes, double copy_gbs) {
    std::string text = "-";
    if (err >= 0.0 || isnan(err)) {
        checks++;
        if (!(err <= tol)) failures++;
        text = verdict(err, tol);
    }
    const double gbs = bytes / (ms * 1e-3) / 1e9;
    char rate[32], limit[32];
    snprintf(rate, sizeof(rate), "%.0f GB/s", gbs);
    snprintf(limit, sizeof(limit), "%.1f%% of copy", 100.0 * gbs / copy_gbs);
    result_line(kernel, version, format_time(ms), rate, limit, text);
}

// a compute-bound version: flops as TFLOP/s and % of a baseline measured in the same run
// (baseline_ms <= 0: no baseline, prints "-")
static void report_compute(const std::string& kernel, const std::string& version, double err, double tol, double ms,
                           double flops, double baseline_ms, const char* baseline_name) {
    std::string text = "-";
    if (err >= 0.0 || isnan(err)) {
        checks++;
        if (!(err <= tol)) failures++;
        text = verdict(err, tol);
    }
    char rate[32], limit[48] = "-";
    snprintf(rate, sizeof(rate), "%.1f TFLOP/s", flops / (ms * 1e-3) / 1e12);
    if (baseline_ms > 0.0) snprintf(limit, sizeof(limit), "%.1f%% of %s", 100.0 * baseline_ms / ms, baseline_name);
    result_line(kernel, version, format_time(ms), rate, limit, text);
}

// the program's last line and exit status
static int finish() {
    if (checks == 0) {
        printf("SOME CHECKS FAILED (no check ran)\n");
        return 1;
    }
    printf("%s\n", failures == 0 ? "all checks passed" : "SOME CHECKS FAILED");
    return failures == 0 ? 0 : 1;
}

// Random logits for the softmax-family programs (softmax, crossentropy): (u1 + u2 + u3 + u4 - 2)
// * 5.2 with u uniform in [0, 1) from a hash of (seed, row, column): mean 0, std 3, |x| <= 10.4.
// Rows n % 5 == 1 get one spike of +40 (a nearly one-hot row), rows n % 7 == 3 are shifted by +100
// (exp without the max subtraction overflows), the padded columns (V <= v < Vp) are NaN. With
// targets (else NULL), rows n % 3 == 0 put 25 on their target (a confident, correct prediction).
__global__ void fill_logits_kernel(floatX* x, const int* targets, int N, int V, int Vp, uint32_t seed) {
    const size_t total = (size_t)N * Vp;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const int n = (int)(i / Vp), v = (int)(i % Vp);
        float value = NAN;
        if (v < V) {
            const uint32_t row_seed = hash_u32((uint32_t)n, seed);
            float sum = 0.0f;
            for (uint32_t k = 0; k < 4; k++) sum += (float)hash_u32((uint32_t)v * 4u + k, row_seed) * 2.3283064e-10f;
            value = (sum - 2.0f) * 5.2f;
            if (n % 5 == 1 && v == (int)((n * 7919LL) % V)) value = 40.0f;
            if (targets != NULL && n % 3 == 0 && v == targets[n]) value = 25.0f;
            if (n % 7 == 3) value += 100.0f;
        }
        x[i] = from_float<floatX>(value);
    }
}

static void fill_logits(floatX* x, const int* targets, int N, int V, int Vp, uint32_t seed) {
    int device = 0, sms = 0;
    cudaCheck(cudaGetDevice(&device));
    cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    fill_logits_kernel<<<sms * 16, 256>>>(x, targets, N, V, Vp, seed);
    cudaCheckLast();
}

}  // namespace bench

#endif  // LLMC_DEV_CUDA_COMMON_CUH
