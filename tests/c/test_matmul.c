/*
Tests sgemm (llmc/matmul_cpu.h) against a double-precision reference, and benchmarks it.

    test_matmul           correctness: many shapes, all four trans cases, beta 0 / 1 / 0.5,
                          padded leading dimensions, the GPT-2 d12 shapes; then determinism
                          (bit-identical C for 1 thread and for several threads)
    test_matmul --bench   GFLOP/s of the three linear-layer matmuls at the GPT-2 d12 shapes
                          (B*T = 256, C = 768), median of several runs after a warm-up

Each correctness case uses fresh random inputs and passes when ||C - ref|| / ||ref|| <= 1e-5
(Frobenius norms). Padding columns of A, B and C hold NaN or sentinel values, so a read or
write outside the matrices fails the case; with beta = 0, C starts as NaN (it must not be read).
Prints one line per case and then "N passed, M failed"; exits 1 on any failure.
*/
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "llmc/matmul_cpu.h"  // defines: sgemm
#include "llmc/rand.h"        // defines: Rng, rng_init, rng_uniform

#define TOLERANCE 1e-5
#define SENTINEL 12345.0f  // marks the padding of C, which sgemm must leave alone

static int passed = 0, failed = 0;

static void* checked_malloc(size_t bytes) {
    void* p = malloc(bytes > 0 ? bytes : 1);
    if (p == NULL) {
        fprintf(stderr, "test_matmul: out of memory allocating %zu bytes\n", bytes);
        exit(1);
    }
    return p;
}

static double now_seconds(void) {
#ifdef _OPENMP
    return omp_get_wtime();
#else
    return (double)clock() / CLOCKS_PER_SEC;
#endif
}

static int max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static void set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

// A rows x cols matrix with row stride ld: uniform(-1, 1) inside, `pad` in the padding columns.
static float* random_matrix(Rng* rng, int rows, int cols, int ld, float pad) {
    float* m = checked_malloc(sizeof(float) * (size_t)rows * ld);
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < ld; c++) {
            m[(size_t)r * ld + c] = c < cols ? (float)(2.0 * rng_uniform(rng) - 1.0) : pad;
        }
    }
    return m;
}

// ref = beta * C + op(A) @ op(B) in double precision, rows in parallel. Inner loops run along
// contiguous memory: over k for op(B) = B^T (dot products of rows), over j otherwise.
static void reference_gemm(int trans_a, int trans_b, int M, int N, int K, const float* A, int lda,
                           const float* B, int ldb, float beta, const float* C, int ldc,
                           double* ref) {
#pragma omp parallel
    {
        double* a_row = checked_malloc(sizeof(double) * (K > 0 ? K : 1));
#pragma omp for schedule(static)
        for (int i = 0; i < M; i++) {
            for (int k = 0; k < K; k++) {
                a_row[k] = trans_a ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
            }
            double* row = ref + (size_t)i * N;
            for (int j = 0; j < N; j++) {
                row[j] = beta == 0.0f ? 0.0 : (double)beta * C[(size_t)i * ldc + j];
            }
            if (trans_b) {
                for (int j = 0; j < N; j++) {
                    const float* b = B + (size_t)j * ldb;
                    double sum = 0.0;
                    for (int k = 0; k < K; k++) sum += a_row[k] * b[k];
                    row[j] += sum;
                }
            } else {
                for (int k = 0; k < K; k++) {
                    const float* b = B + (size_t)k * ldb;
                    for (int j = 0; j < N; j++) row[j] += a_row[k] * b[j];
                }
            }
        }
        free(a_row);
    }
}

// Runs one case; `pad` extra columns in every leading dimension. Returns 1 when it passes.
static int check_case(Rng* rng, int trans_a, int trans_b, int M, int N, int K, float beta, int pad,
                      const char* label) {
    // stored shapes: A is M x K (or K x M when transposed), B is K x N (or N x K)
    int a_rows = trans_a ? K : M, a_cols = trans_a ? M : K;
    int b_rows = trans_b ? N : K, b_cols = trans_b ? K : N;
    int lda = a_cols + pad, ldb = b_cols + pad, ldc = N + pad;
    float* A = random_matrix(rng, a_rows, a_cols, lda, NAN);
    float* B = random_matrix(rng, b_rows, b_cols, ldb, NAN);
    float* C = random_matrix(rng, M, N, ldc, SENTINEL);
    if (beta == 0.0f) {
        for (int i = 0; i < M; i++) {
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = NAN;
        }
    }
    double* ref = checked_malloc(sizeof(double) * (size_t)M * N);
    reference_gemm(trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc, ref);

    sgemm(trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc);

    double err2 = 0.0, ref2 = 0.0;
    int padding_touched = 0;
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < ldc; j++) {
            float c = C[(size_t)i * ldc + j];
            if (j >= N) {
                padding_touched |= c != SENTINEL;
                continue;
            }
            double d = (double)c - ref[(size_t)i * N + j];
            err2 += d * d;
            ref2 += ref[(size_t)i * N + j] * ref[(size_t)i * N + j];
        }
    }
    double rel = ref2 > 0.0 ? sqrt(err2 / ref2) : sqrt(err2);
    int ok = rel <= TOLERANCE && !padding_touched;  // a NaN anywhere makes rel NaN: fails
    printf("%-4s %-14s ta=%d tb=%d M=%-5d N=%-5d K=%-5d beta=%-3g pad=%d  rel_err=%.2e%s\n",
           ok ? "ok" : "FAIL", label, trans_a, trans_b, M, N, K, beta, pad, rel,
           padding_touched ? "  (padding of C overwritten)" : "");
    ok ? passed++ : failed++;
    free(A);
    free(B);
    free(C);
    free(ref);
    return ok;
}

// Same inputs, 1 thread vs `threads` threads: C must be identical bit for bit.
static void check_determinism(Rng* rng, int trans_a, int trans_b, int M, int N, int K, float beta,
                              int threads) {
    int a_rows = trans_a ? K : M, a_cols = trans_a ? M : K;
    int b_rows = trans_b ? N : K, b_cols = trans_b ? K : N;
    float* A = random_matrix(rng, a_rows, a_cols, a_cols, 0.0f);
    float* B = random_matrix(rng, b_rows, b_cols, b_cols, 0.0f);
    float* C1 = random_matrix(rng, M, N, N, 0.0f);
    float* Cn = checked_malloc(sizeof(float) * (size_t)M * N);
    memcpy(Cn, C1, sizeof(float) * (size_t)M * N);
    int saved = max_threads();
    set_threads(1);
    sgemm(trans_a, trans_b, M, N, K, A, a_cols, B, b_cols, beta, C1, N);
    set_threads(threads);
    sgemm(trans_a, trans_b, M, N, K, A, a_cols, B, b_cols, beta, Cn, N);
    set_threads(saved);
    int ok = memcmp(C1, Cn, sizeof(float) * (size_t)M * N) == 0;
    printf("%-4s %-14s ta=%d tb=%d M=%-5d N=%-5d K=%-5d beta=%-3g 1 vs %d threads bit-identical\n",
           ok ? "ok" : "FAIL", "determinism", trans_a, trans_b, M, N, K, beta, threads);
    ok ? passed++ : failed++;
    free(A);
    free(B);
    free(C1);
    free(Cn);
}

// K = 0: C = beta * C exactly (and C is not read when beta = 0).
static void check_empty_k(void) {
    float C[4] = {1.0f, -2.0f, 3.0f, NAN};
    sgemm(0, 0, 2, 2, 0, NULL, 1, NULL, 2, 0.5f, C, 2);
    int ok = C[0] == 0.5f && C[1] == -1.0f && C[2] == 1.5f && isnan(C[3]);
    float D[2] = {NAN, NAN};
    sgemm(1, 1, 1, 2, 0, NULL, 1, NULL, 1, 0.0f, D, 2);
    ok = ok && D[0] == 0.0f && D[1] == 0.0f;
    printf("%-4s %-14s K=0 gives beta * C\n", ok ? "ok" : "FAIL", "empty-k");
    ok ? passed++ : failed++;
}

// ----------------------------------------------------------------------------------------------

static int run_tests(void) {
    Rng rng;
    rng_init(&rng, 1337);
    const float betas[3] = {0.0f, 1.0f, 0.5f};

    // small and odd shapes: sizes 1, primes, one more / one less than the tile sizes, K over the
    // K block (256) with a remainder, M over the M block, N over the N panel
    const int shapes[][3] = {
        {1, 1, 1},     {1, 7, 3},     {5, 1, 9},      {3, 17, 65},    {17, 3, 129},
        {65, 129, 17}, {129, 65, 3},  {9, 49, 257},   {7, 47, 255},   {13, 97, 300},
        {64, 64, 64},  {192, 192, 192}, {31, 1601, 37}, {301, 83, 513}, {97, 800, 700},
    };
    int n_shapes = (int)(sizeof(shapes) / sizeof(shapes[0]));
    for (int s = 0; s < n_shapes; s++) {
        for (int t = 0; t < 4; t++) {
            for (int b = 0; b < 3; b++) {
                int pad = (s + t + b) % 3 == 0 ? 0 : 1 + (s + 2 * t + b) % 7;
                check_case(&rng, t >> 1, t & 1, shapes[s][0], shapes[s][1], shapes[s][2],
                           betas[b], pad, "odd-shape");
            }
        }
    }
    check_empty_k();

    // the three linear-layer matmuls of small GPT-2 configs and of GPT-2 d12 (BT = 256, C = 768)
    const int configs[][2] = {{64, 64}, {128, 96}, {256, 192}, {256, 768}};  // {BT, C}
    for (int c = 0; c < 4; c++) {
        int BT = configs[c][0], C = configs[c][1];
        const int ocs[5] = {3 * C, C, 4 * C, 50304, 65};
        int n_ocs = C == 768 ? 4 : 5;
        for (int o = 0; o < n_ocs; o++) {
            int OC = ocs[o];
            check_case(&rng, 0, 1, BT, OC, C, 0.0f, 0, "gpt2-forward");  // y = x @ W^T
            check_case(&rng, 0, 0, BT, C, OC, 1.0f, 0, "gpt2-dx");       // dx += dy @ W
            check_case(&rng, 1, 0, OC, C, BT, 1.0f, 0, "gpt2-dW");       // dW += dy^T @ x
        }
    }

    // determinism: 1 thread vs all threads, and vs an odd count that splits the tiles unevenly
    int threads[2] = {max_threads(), 3};
    for (int t = 0; t < 2; t++) {
        check_determinism(&rng, 0, 1, 256, 2304, 768, 0.0f, threads[t]);
        check_determinism(&rng, 0, 0, 256, 768, 3072, 1.0f, threads[t]);
        check_determinism(&rng, 1, 0, 3072, 768, 256, 1.0f, threads[t]);
        check_determinism(&rng, 1, 1, 301, 83, 513, 0.5f, threads[t]);
    }

    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}

// ----------------------------------------------------------------------------------------------

static int compare_doubles(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

#define BENCH_WARMUP 2
#define BENCH_RUNS 7

// Median seconds of one sgemm call on random inputs.
static double time_sgemm(Rng* rng, int trans_a, int trans_b, int M, int N, int K, float beta) {
    int a_rows = trans_a ? K : M, a_cols = trans_a ? M : K;
    int b_rows = trans_b ? N : K, b_cols = trans_b ? K : N;
    float* A = random_matrix(rng, a_rows, a_cols, a_cols, 0.0f);
    float* B = random_matrix(rng, b_rows, b_cols, b_cols, 0.0f);
    float* C = random_matrix(rng, M, N, N, 0.0f);
    double times[BENCH_RUNS];
    for (int r = 0; r < BENCH_WARMUP + BENCH_RUNS; r++) {
        double start = now_seconds();
        sgemm(trans_a, trans_b, M, N, K, A, a_cols, B, b_cols, beta, C, N);
        if (r >= BENCH_WARMUP) times[r - BENCH_WARMUP] = now_seconds() - start;
    }
    qsort(times, BENCH_RUNS, sizeof(double), compare_doubles);
    free(A);
    free(B);
    free(C);
    return times[BENCH_RUNS / 2];
}

static int run_bench(void) {
    Rng rng;
    rng_init(&rng, 42);
    const int BT = 256, C = 768;
    const int ocs[4] = {2304, 768, 3072, 50304};
    printf("sgemm at GPT-2 d12 shapes (B*T = %d, C = %d), %d threads, median of %d runs\n", BT, C,
           max_threads(), BENCH_RUNS);
    double total_flops = 0.0, total_seconds = 0.0;
    for (int o = 0; o < 4; o++) {
        int OC = ocs[o];
        double flops = 2.0 * BT * C * OC;
        double t_fwd = time_sgemm(&rng, 0, 1, BT, OC, C, 0.0f);
        double t_dx = time_sgemm(&rng, 0, 0, BT, C, OC, 1.0f);
        double t_dw = time_sgemm(&rng, 1, 0, OC, C, BT, 1.0f);
        printf("OC=%-5d  forward x@W^T %8.3f ms %7.1f GFLOP/s | dx += dy@W %8.3f ms %7.1f "
               "GFLOP/s | dW += dy^T@x %8.3f ms %7.1f GFLOP/s\n",
               OC, t_fwd * 1e3, flops / t_fwd * 1e-9, t_dx * 1e3, flops / t_dx * 1e-9, t_dw * 1e3,
               flops / t_dw * 1e-9);
        total_flops += 3.0 * flops;
        total_seconds += t_fwd + t_dx + t_dw;
    }
    printf("all 12 shapes: %.1f GFLOP/s\n", total_flops / total_seconds * 1e-9);
    return 0;
}

int main(int argc, char** argv) {
    if (argc == 2 && strcmp(argv[1], "--bench") == 0) return run_bench();
    if (argc != 1) {
        fprintf(stderr, "usage: %s [--bench]\n", argv[0]);
        return 1;
    }
    return run_tests();
}
