/*
Matmuls of the linear layers (llmc/matmul.cuh): check and benchmark.

What it computes (row-major, N = B*T rows, weight (OC, C) as in nn.Linear):
  forward        out = inp @ W^T + bias                      (cuBLASLt epilogue BIAS)
  forward GELU   pre = inp @ W^T + bias, out = gelu(pre)     (GELU_AUX_BIAS)
  backward       dinp = (dout @ W) [* gelu'(pre_gelu)]       (DGELU)
                 dW += dout^T @ inp, dbias += colsum(dout)   (BGRADB, bias gradient fused)
Shapes: the check uses small random matrices (N=512, C=256, OC=768 and 1024) so a double-precision
CPU reference is quick; the timing uses GPT-2 124M's four block matmuls at B*T = 65,536 (C = 768:
qkv 768->2304, attproj 768->768, fc 768->3072 with GELU, fcproj 3072->768) and the classifier.

Build and run (from this folder; `make` builds every program here):
    nvcc -O3 -std=c++17 -gencode arch=compute_90,code=sm_90 -I../.. matmul.cu -o matmul -lcublasLt -lcublas
    ./matmul

Versions timed, on each shape (forward + backward of the layer, 3 matmuls):
  cublas   plain cublasGemmEx (bf16 in, fp32 accumulate), no fused epilogue, the bias gradient
           and the GELU not done: the library's upper bound for the same three products.
  engine   matmul_forward + matmul_backward from llmc/matmul.cuh, the code that trains: cached
           cuBLASLt plans, fused bias / GELU / dGELU / bias-gradient epilogues.
Printed: ms, TFLOP/s (2*N*C*OC per product) and the engine's % of cuBLAS. Outputs of the check are
poisoned (NaN) before each run; the check also verifies that the cache-hit path gives the same
bits as the first (plan-building) call.
*/
#include <cublas_v2.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "llmc/matmul.cuh"
#include "llmc/rand.h"

#ifdef LLMC_FP32
static const double TOL = 1e-4;
#else
static const double TOL = 2e-2;  // bf16 outputs and bf16-rounded intermediates (pre-GELU)
#endif

static std::vector<floatX> random_vec(Rng* rng, size_t n, float std) {
    std::vector<float> f(n);
    rng_normal_fill(rng, f.data(), n, 0.0f, std);
    std::vector<floatX> out(n);
    for (size_t i = 0; i < n; i++) out[i] = from_float<floatX>(f[i]);
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
template <typename T>
static double rel_error(const std::vector<T>& ours, const std::vector<double>& ref) {
    double worst = 0.0, scale = 1e-30;
    for (size_t i = 0; i < ref.size(); i++) scale = std::max(scale, fabs(ref[i]));
    for (size_t i = 0; i < ref.size(); i++) {
        const double e = fabs((double)to_float(ours[i]) - ref[i]);
        if (!(e == e)) return INFINITY;
        worst = std::max(worst, e);
    }
    return worst / scale;
}
static double gelu_d(double x) { return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }
static double gelu_grad_d(double x) {
    const double u = 0.7978845608028654 * (x + 0.044715 * x * x * x), th = tanh(u);
    return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x);
}

static int failures = 0;
static void verdict(const char* what, double err) {
    const bool ok = err <= TOL;
    if (!ok) failures++;
    printf("check %-36s %-4s max rel err %.2e\n", what, ok ? "ok" : "FAIL", err);
}

// One layer's forward and backward on random data against a double CPU reference.
static void check_layer(int N, int C, int OC, bool gelu_out, bool dgelu_in) {
    Rng rng;
    rng_init(&rng, 1000 + OC + (gelu_out ? 1 : 0));
    const std::vector<floatX> h_inp = random_vec(&rng, (size_t)N * C, 1.0f), h_w = random_vec(&rng, (size_t)OC * C, 0.05f);
    const std::vector<floatX> h_b = random_vec(&rng, OC, 0.1f), h_dout = random_vec(&rng, (size_t)N * OC, 1.0f);
    const std::vector<floatX> h_pre = random_vec(&rng, (size_t)N * C, 1.0f);  // GELU input that made inp
    const std::vector<floatX> h_dw0 = random_vec(&rng, (size_t)OC * C, 1.0f), h_db0 = random_vec(&rng, OC, 1.0f);
    floatX *inp = to_device(h_inp), *w = to_device(h_w), *b = to_device(h_b), *dout = to_device(h_dout);
    floatX *pre = to_device(h_pre), *dw = to_device(h_dw0), *db = to_device(h_db0);
    floatX *out, *pre_out, *dinp;
    float* scratch;
    cudaCheck(cudaMalloc(&out, (size_t)N * OC * sizeof(floatX)));
    cudaCheck(cudaMalloc(&pre_out, (size_t)N * OC * sizeof(floatX)));
    cudaCheck(cudaMalloc(&dinp, (size_t)N * C * sizeof(floatX)));
    cudaCheck(cudaMalloc(&scratch, column_sum_scratch_floats(N, OC) * sizeof(float)));

    // reference
    std::vector<double> ref_pre((size_t)N * OC), ref_out((size_t)N * OC), ref_dinp((size_t)N * C);
    std::vector<double> ref_dw((size_t)OC * C), ref_db(OC);
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < OC; o++) {
            double acc = to_float(h_b[o]);
            for (int c = 0; c < C; c++) acc += (double)to_float(h_inp[(size_t)n * C + c]) * to_float(h_w[(size_t)o * C + c]);
            ref_pre[(size_t)n * OC + o] = acc;
            // the engine applies GELU to the pre-activation it stores (rounded to floatX)
            ref_out[(size_t)n * OC + o] = gelu_out ? gelu_d(to_float(from_float<floatX>((float)acc))) : acc;
        }
    }
    for (int n = 0; n < N; n++) {
        for (int c = 0; c < C; c++) {
            double acc = 0.0;
            for (int o = 0; o < OC; o++) acc += (double)to_float(h_dout[(size_t)n * OC + o]) * to_float(h_w[(size_t)o * C + c]);
            ref_dinp[(size_t)n * C + c] = dgelu_in ? acc * gelu_grad_d(to_float(h_pre[(size_t)n * C + c])) : acc;
        }
    }
    for (int o = 0; o < OC; o++) {
        double s = to_float(h_db0[o]);
        for (int n = 0; n < N; n++) s += to_float(h_dout[(size_t)n * OC + o]);
        ref_db[o] = s;
        for (int c = 0; c < C; c++) {
            double acc = to_float(h_dw0[(size_t)o * C + c]);
            for (int n = 0; n < N; n++) acc += (double)to_float(h_dout[(size_t)n * OC + o]) * to_float(h_inp[(size_t)n * C + c]);
            ref_dw[(size_t)o * C + c] = acc;
        }
    }

    char name[96];
    std::vector<floatX> first_out, first_dinp, first_dw;
    for (int call = 0; call < 2; call++) {  // call 0 builds the plans, call 1 hits the cache
        cudaCheck(cudaMemset(out, 0xFF, (size_t)N * OC * sizeof(floatX)));
        cudaCheck(cudaMemset(pre_out, 0xFF, (size_t)N * OC * sizeof(floatX)));
        cudaCheck(cudaMemset(dinp, 0xFF, (size_t)N * C * sizeof(floatX)));
        cudaCheck(cudaMemset(scratch, 0xFF, column_sum_scratch_floats(N, OC) * sizeof(float)));
        cudaCheck(cudaMemcpy(dw, h_dw0.data(), h_dw0.size() * sizeof(floatX), cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(db, h_db0.data(), h_db0.size() * sizeof(floatX), cudaMemcpyHostToDevice));
        matmul_forward(out, gelu_out ? pre_out : NULL, inp, w, b, N, C, OC, 0);
        matmul_backward(dinp, dw, db, dout, inp, w, dgelu_in ? pre : NULL, scratch, N, C, OC, 0);
        cudaCheck(cudaDeviceSynchronize());
        const std::vector<floatX> o = to_host(out, (size_t)N * OC), di = to_host(dinp, (size_t)N * C);
        const std::vector<floatX> dwh = to_host(dw, (size_t)OC * C);
        if (call == 0) {
            snprintf(name, sizeof(name), "fwd%s %dx%d->%d", gelu_out ? "+gelu" : "", N, C, OC);
            verdict(name, rel_error(o, ref_out));
            if (gelu_out) {
                snprintf(name, sizeof(name), "fwd pre-gelu %dx%d->%d", N, C, OC);
                verdict(name, rel_error(to_host(pre_out, (size_t)N * OC), ref_pre));
            }
            snprintf(name, sizeof(name), "bwd dinp%s %dx%d->%d", dgelu_in ? "*dgelu" : "", N, C, OC);
            verdict(name, rel_error(di, ref_dinp));
            snprintf(name, sizeof(name), "bwd dweight (+=) %dx%d->%d", N, C, OC);
            verdict(name, rel_error(dwh, ref_dw));
            snprintf(name, sizeof(name), "bwd dbias (+=) %dx%d->%d", N, C, OC);
            verdict(name, rel_error(to_host(db, OC), ref_db));
            first_out = o;
            first_dinp = di;
            first_dw = dwh;
        } else {
            const bool same = memcmp(o.data(), first_out.data(), o.size() * sizeof(floatX)) == 0 &&
                              memcmp(di.data(), first_dinp.data(), di.size() * sizeof(floatX)) == 0 &&
                              memcmp(dwh.data(), first_dw.data(), dwh.size() * sizeof(floatX)) == 0;
            snprintf(name, sizeof(name), "cached call bit-identical %dx%d->%d", N, C, OC);
            verdict(name, same ? 0.0 : INFINITY);
        }
    }
    cudaFree(inp); cudaFree(w); cudaFree(b); cudaFree(dout); cudaFree(pre); cudaFree(dw); cudaFree(db);
    cudaFree(out); cudaFree(pre_out); cudaFree(dinp); cudaFree(scratch);
}

template <typename F>
static double time_ms(F fn, int reps) {
    cudaEvent_t start, stop;
    cudaCheck(cudaEventCreate(&start));
    cudaCheck(cudaEventCreate(&stop));
    for (int i = 0; i < 3; i++) fn();
    std::vector<float> ms(reps);
    for (int i = 0; i < reps; i++) {
        cudaCheck(cudaEventRecord(start));
        fn();
        cudaCheck(cudaEventRecord(stop));
        cudaCheck(cudaEventSynchronize(stop));
        cudaCheck(cudaEventElapsedTime(&ms[i], start, stop));
    }
    std::sort(ms.begin(), ms.end());
    return ms[reps / 2];
}

#ifndef LLMC_FP32
// forward + backward of one layer: cuBLAS plain vs the engine's path
static void bench_layer(cublasHandle_t handle, const char* name, int N, int C, int OC, bool gelu_out, bool has_bias) {
    const size_t big = std::max((size_t)N * OC, (size_t)N * C);
    floatX *inp, *w, *b, *out, *pre, *dout, *dinp, *dw, *db;
    float* scratch;
    cudaCheck(cudaMalloc(&inp, (size_t)N * C * sizeof(floatX)));
    cudaCheck(cudaMalloc(&w, (size_t)OC * C * sizeof(floatX)));
    cudaCheck(cudaMalloc(&b, OC * sizeof(floatX)));
    cudaCheck(cudaMalloc(&out, big * sizeof(floatX)));
    cudaCheck(cudaMalloc(&pre, big * sizeof(floatX)));
    cudaCheck(cudaMalloc(&dout, (size_t)N * OC * sizeof(floatX)));
    cudaCheck(cudaMalloc(&dinp, (size_t)N * C * sizeof(floatX)));
    cudaCheck(cudaMalloc(&dw, (size_t)OC * C * sizeof(floatX)));
    cudaCheck(cudaMalloc(&db, OC * sizeof(floatX)));
    cudaCheck(cudaMalloc(&scratch, column_sum_scratch_floats(N, OC) * sizeof(float)));
    cudaCheck(cudaMemset(inp, 0, (size_t)N * C * sizeof(floatX)));
    cudaCheck(cudaMemset(w, 0, (size_t)OC * C * sizeof(floatX)));
    cudaCheck(cudaMemset(b, 0, OC * sizeof(floatX)));
    cudaCheck(cudaMemset(dout, 0, (size_t)N * OC * sizeof(floatX)));
    cudaCheck(cudaMemset(dw, 0, (size_t)OC * C * sizeof(floatX)));
    cudaCheck(cudaMemset(db, 0, OC * sizeof(floatX)));
    cudaCheck(cudaMemset(pre, 0, big * sizeof(floatX)));
    const float one = 1.0f, zero = 0.0f;
    const cudaDataType_t t = LLMC_CUDA_FLOATX;
    auto plain = [&] {
        // out^T (OC, N) = W (OC,C as col-major C x OC, transposed) @ inp^T
        cublasCheck(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, &one, w, t, C, inp, t, C, &zero, out, t,
                                 OC, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        cublasCheck(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, &one, w, t, C, dout, t, OC, &zero, dinp, t,
                                 C, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        cublasCheck(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, &one, inp, t, C, dout, t, OC, &one, dw, t,
                                 C, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    };
    auto engine = [&] {
        matmul_forward(out, gelu_out ? pre : NULL, inp, w, has_bias ? b : NULL, N, C, OC, 0);
        matmul_backward(dinp, dw, has_bias ? db : NULL, dout, inp, w, NULL, scratch, N, C, OC, 0);
    };
    const double flops = 3.0 * 2.0 * N * (double)C * OC;
    const double ms_plain = time_ms(plain, 20), ms_engine = time_ms(engine, 20);
    printf("%-26s cublas %7.3f ms %5.0f TFLOP/s | engine %7.3f ms %5.0f TFLOP/s  %5.1f%% of cuBLAS\n", name, ms_plain,
           flops / ms_plain / 1e9, ms_engine, flops / ms_engine / 1e9, 100.0 * ms_plain / ms_engine);
    cudaFree(inp); cudaFree(w); cudaFree(b); cudaFree(out); cudaFree(pre); cudaFree(dout); cudaFree(dinp);
    cudaFree(dw); cudaFree(db); cudaFree(scratch);
}
#endif

int main(void) {
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    printf("matmul: %s storage, %s\n", LLMC_PRECISION_NAME, prop.name);
    matmul_init();
    check_layer(512, 256, 768, false, false);
    check_layer(512, 256, 1024, true, false);  // fc: GELU forward epilogue
    check_layer(512, 1024, 256, false, true);  // fcproj: dGELU on its input's gradient
    // host cost of one small matmul call (cached plan): launches per second on a tiny shape
    {
        floatX *x, *y, *z;
        cudaCheck(cudaMalloc(&x, 64 * 64 * sizeof(floatX)));
        cudaCheck(cudaMalloc(&y, 64 * 64 * sizeof(floatX)));
        cudaCheck(cudaMalloc(&z, 64 * 64 * sizeof(floatX)));
        cudaCheck(cudaMemset(x, 0, 64 * 64 * sizeof(floatX)));
        cudaCheck(cudaMemset(y, 0, 64 * 64 * sizeof(floatX)));
        matmul_forward(z, NULL, x, y, NULL, 64, 64, 64, 0);
        cudaCheck(cudaDeviceSynchronize());
        const int calls = 2000;
        cudaEvent_t e0, e1;
        cudaCheck(cudaEventCreate(&e0));
        cudaCheck(cudaEventCreate(&e1));
        cudaCheck(cudaEventRecord(e0));
        for (int i = 0; i < calls; i++) matmul_forward(z, NULL, x, y, NULL, 64, 64, 64, 0);
        cudaCheck(cudaEventRecord(e1));
        cudaCheck(cudaEventSynchronize(e1));
        float ms = 0.0f;
        cudaCheck(cudaEventElapsedTime(&ms, e0, e1));
        printf("small matmul (64^3), cached plan: %.2f us per call (host + launch bound)\n", 1e3 * ms / calls);
        cudaFree(x); cudaFree(y); cudaFree(z);
    }
#ifndef LLMC_FP32
    cublasHandle_t handle;
    cublasCheck(cublasCreate(&handle));
    const int N = 65536;
    bench_layer(handle, "qkv 768->2304 (+bias)", N, 768, 2304, false, true);
    bench_layer(handle, "attproj 768->768 (+bias)", N, 768, 768, false, true);
    bench_layer(handle, "fc 768->3072 (+bias,gelu)", N, 768, 3072, true, true);
    bench_layer(handle, "fcproj 3072->768 (+bias)", N, 3072, 768, false, true);
    bench_layer(handle, "classifier 768->50304", N, 768, 50304, false, false);
    cublasCheck(cublasDestroy(handle));
#endif
    matmul_free();
    printf("%s\n", failures == 0 ? "all checks passed" : "SOME CHECKS FAILED");
    return failures == 0 ? 0 : 1;
}
