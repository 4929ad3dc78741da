/*
sgemm: a packed, cache-blocked matrix multiply in portable C (GCC vector extensions + OpenMP).

    C[M,N] = beta * C + op(A)[M,K] @ op(B)[K,N]      (row-major; see llmc/matmul_cpu.h)

Threads split C into stripes of whole tiles along its longer side (rows for dW = dy^T @ x, whose
M = OC is large; columns for the forward and dx matmuls, whose N is the larger side) and each runs
the classic GotoBLAS/BLIS loops on its stripe, alone, with its own packing buffers:

    for jc over N in steps of NC:
      for pc over K in steps of KC:
        pack op(B)[pc:pc+KC, jc:jc+NC] into slivers of NR columns      (B panel, L2)
        for ic over M in steps of MC:
          pack op(A)[ic:ic+MC, pc:pc+KC] into slivers of MR rows        (A block, L2)
          for each B sliver, for each A sliver of the block:
            micro-kernel: tile = A sliver (MR x KC) @ B sliver (KC x NR), held in registers
            C tile = scale * C tile + tile      (scale = beta on the first K block, else 1)

Why stripes and not shared packed blocks (as BLIS does): there is no synchronisation at all inside
a call. With a barrier after every packing step, one thread descheduled by another process stalls
the whole team at each barrier, and on a busy 2-core machine that made calls 10x slower. The price
is that every thread packs the operand along the shorter side in full (A for the forward and dx
matmuls, a few percent of the time; B for dW, negligible).

Why packing: op(A) and op(B) may be transposed and have any row stride. Copying each block once
into the order the micro-kernel reads it (k-major slivers, zero-padded to full MR/NR width) makes
every inner-loop load contiguous and aligned, lets one micro-kernel serve all four trans cases,
and handles ragged edges with no special code: a partial tile is computed in full on zeros and
only its valid part is written back. The packing copies are O(MK + NK) against O(MNK) flops.

Micro-kernel: MR x NR accumulators stay in vector registers for the whole K block; each step k
loads NV vectors of B and broadcasts MR scalars of A for MR * NV fused multiply-adds. With
AVX-512 (32 registers of 16 floats) the tile is 8 x 48: 24 accumulators + 3 B vectors + 1
broadcast fit in the register file, there are enough independent FMA chains to cover the FMA
latency on two pipes, and the GPT-2 shapes (256 rows; 768, 2304, 3072, 50304 columns) divide
evenly, so no tile is wasted. With AVX/AVX2 or plain SSE (16 registers) the tile is 6 x 2 vectors.

Cache blocking (sizes for AVX-512): KC = 256 keeps a B sliver (KC x NR = 48 KB) in L1/L2 while it
meets every A sliver of the block (MC x KC = 256 x 256 floats = 256 KB, in L2); the B panel
(KC x NC = 256 x 768 floats = 768 KB) fits the 1 MB L2 of the machine below. Other choices measured
within noise of these (KC 128..384, NC 384..1536, tiles 12 x 32, loop over A slivers first).

Determinism: the K loop is never split. Every element of C is summed over k in the same order
(in order inside a K block, then added to C block after block) whichever thread computes it and
wherever its tile falls, so the result is bit-identical for any number of threads. The tile sizes
depend only on the instruction set the file is compiled for, so different builds (-march) may
differ in the last bits.

Speed (2-core AMD EPYC Zen 5, AVX-512, 2 threads, GPT-2 d12 shapes B*T = 256, C = 768): about
400 GFLOP/s, close to the FMA peak, roughly twice PyTorch's MKL sgemm at the same thread count
(`test_matmul --bench`). The multiply-adds become FMA instructions because GCC contracts a * b + c
under its default -std=gnu11 (-ffp-contract=fast); a strict -std=c11 build would be slower.
*/
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "llmc/matmul_cpu.h"

// ----------------------------------------------------------------------------------------------
// Tile and block sizes

#if defined(__AVX512F__)
#define VEC_LEN 16  // floats per vector register
#define MR 8        // rows of a micro-tile
#define NV 3        // vectors per row of a micro-tile
#elif defined(__AVX__)
#define VEC_LEN 8
#define MR 6
#define NV 2
#else
#define VEC_LEN 4
#define MR 6
#define NV 2
#endif
#define NR (NV * VEC_LEN)  // columns of a micro-tile
#define KC 256             // depth of a K block
#define MC (MR * 32)       // rows of a packed A block
#define NC (NR * 16)       // columns of a packed B panel
#define ALIGNMENT 64       // bytes; a cache line and an AVX-512 register

typedef float vfloat __attribute__((vector_size(VEC_LEN * sizeof(float))));

static int min_int(int a, int b) { return a < b ? a : b; }

// ----------------------------------------------------------------------------------------------
// Packing

// Copies a sliver of `kc` steps into dst[k * width + t] = src[t * t_stride + k * k_stride] for
// t < valid, and zeros for valid <= t < width. Used for A (t: rows) and for B (t: columns).
static void pack_sliver(float* restrict dst, const float* restrict src, size_t t_stride,
                        size_t k_stride, int valid, int kc, int width) {
    for (int k = 0; k < kc; k++) {
        float* row = dst + (size_t)k * width;
        const float* col = src + (size_t)k * k_stride;
        for (int t = 0; t < valid; t++) row[t] = col[t * t_stride];
        for (int t = valid; t < width; t++) row[t] = 0.0f;
    }
}

// ----------------------------------------------------------------------------------------------
// Micro-kernel

// tile[MR][NR] = sum over k < kc of a[k][i] * b[k][j], with a and b packed slivers.
static void micro_kernel(int kc, const float* restrict a, const float* restrict b,
                         float* restrict tile) {
    vfloat acc[MR][NV] = {{{0}}};
    for (int k = 0; k < kc; k++) {
        const vfloat* bk = (const vfloat*)(b + (size_t)k * NR);
        const float* ak = a + (size_t)k * MR;
        for (int i = 0; i < MR; i++) {
            for (int v = 0; v < NV; v++) acc[i][v] += ak[i] * bk[v];
        }
    }
    for (int i = 0; i < MR; i++) {
        for (int v = 0; v < NV; v++) ((vfloat*)(tile + i * NR))[v] = acc[i][v];
    }
}

// C[0:rows, 0:cols] = scale * C + tile; with scale 0, C is not read (it may hold garbage).
static void update_c(const float* restrict tile, int rows, int cols, float scale,
                     float* restrict c, int ldc) {
    for (int i = 0; i < rows; i++) {
        float* c_row = c + (size_t)i * ldc;
        const float* t_row = tile + i * NR;
        if (scale == 0.0f) {
            for (int j = 0; j < cols; j++) c_row[j] = t_row[j];
        } else {
            for (int j = 0; j < cols; j++) c_row[j] = scale * c_row[j] + t_row[j];
        }
    }
}

// ----------------------------------------------------------------------------------------------
// One thread's share: C = beta * C + op(A) @ op(B) on a block of C, serially

// Operands are addressed through strides: element (i, k) of op(A) is A[i * a_rs + k * a_cs] and
// element (k, j) of op(B) is B[k * b_rs + j * b_cs], which covers both trans cases of each.
typedef struct {
    int M, N, K;
    const float* A;
    size_t a_rs, a_cs;
    const float* B;
    size_t b_rs, b_cs;
    float beta;
    float* C;
    int ldc;
} Gemm;

static Gemm sub_gemm(Gemm g, int row0, int rows, int col0, int cols) {
    g.A += row0 * g.a_rs;
    g.B += col0 * g.b_cs;
    g.C += (size_t)row0 * g.ldc + col0;
    g.M = rows;
    g.N = cols;
    return g;
}

// The blocked loops; a_pack holds MC x KC floats and b_pack KC x NC, both aligned.
static void gemm_blocked(Gemm g, float* restrict a_pack, float* restrict b_pack) {
    float tile[MR * NR] __attribute__((aligned(ALIGNMENT)));
    for (int jc = 0; jc < g.N; jc += NC) {
        int nc = min_int(NC, g.N - jc);
        for (int pc = 0; pc < g.K; pc += KC) {
            int kc = min_int(KC, g.K - pc);
            float scale = pc == 0 ? g.beta : 1.0f;
            for (int jr = 0; jr * NR < nc; jr++) {
                const float* src = g.B + pc * g.b_rs + (jc + jr * NR) * g.b_cs;
                pack_sliver(b_pack + (size_t)jr * kc * NR, src, g.b_cs, g.b_rs,
                            min_int(NR, nc - jr * NR), kc, NR);
            }
            for (int ic = 0; ic < g.M; ic += MC) {
                int mc = min_int(MC, g.M - ic);
                for (int ir = 0; ir * MR < mc; ir++) {
                    const float* src = g.A + (ic + ir * MR) * g.a_rs + pc * g.a_cs;
                    pack_sliver(a_pack + (size_t)ir * kc * MR, src, g.a_rs, g.a_cs,
                                min_int(MR, mc - ir * MR), kc, MR);
                }
                for (int jr = 0; jr * NR < nc; jr++) {
                    for (int ir = 0; ir * MR < mc; ir++) {
                        micro_kernel(kc, a_pack + (size_t)ir * kc * MR,
                                     b_pack + (size_t)jr * kc * NR, tile);
                        int i0 = ic + ir * MR, j0 = jc + jr * NR;
                        update_c(tile, min_int(MR, g.M - i0), min_int(NR, g.N - j0), scale,
                                 g.C + (size_t)i0 * g.ldc + j0, g.ldc);
                    }
                }
            }
        }
    }
}

// Fallback for when the packing buffers cannot be allocated: plain loops, same K blocking.
static void gemm_unpacked(Gemm g) {
    for (int i = 0; i < g.M; i++) {
        for (int j = 0; j < g.N; j++) {
            float* c = g.C + (size_t)i * g.ldc + j;
            for (int pc = 0; pc < g.K; pc += KC) {
                float sum = 0.0f;
                for (int k = pc; k < min_int(pc + KC, g.K); k++) {
                    sum += g.A[i * g.a_rs + k * g.a_cs] * g.B[k * g.b_rs + j * g.b_cs];
                }
                float scale = pc == 0 ? g.beta : 1.0f;
                *c = scale == 0.0f ? sum : scale * *c + sum;
            }
        }
    }
}

// ----------------------------------------------------------------------------------------------
// sgemm: split C between the threads, each runs the blocked loops on its stripe

void sgemm(int trans_a, int trans_b, int M, int N, int K, const float* A, int lda, const float* B,
           int ldb, float beta, float* C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {  // nothing to add: C = beta * C
        for (int i = 0; i < M; i++) {
            float* c_row = C + (size_t)i * ldc;
            for (int j = 0; j < N; j++) c_row[j] = beta == 0.0f ? 0.0f : beta * c_row[j];
        }
        return;
    }
    Gemm g = {M, N, K, A, trans_a ? 1 : (size_t)lda, trans_a ? (size_t)lda : 1,
              B, trans_b ? 1 : (size_t)ldb, trans_b ? (size_t)ldb : 1, beta, C, ldc};
    // threads take stripes of whole tiles along the longer side of C (rows on a tie: measured
    // faster for the square dW of the attention projection)
    int split_rows = M >= N;
    int extent = split_rows ? M : N;
    int unit = split_rows ? MR : NR;
    long long n_units = (extent + unit - 1) / unit;

#pragma omp parallel
    {
        int thread = 0, threads = 1;
#ifdef _OPENMP
        thread = omp_get_thread_num();
        threads = omp_get_num_threads();
#endif
        int start = min_int(extent, (int)(n_units * thread / threads) * unit);
        int end = min_int(extent, (int)(n_units * (thread + 1) / threads) * unit);
        if (start < end) {
            Gemm mine = split_rows ? sub_gemm(g, start, end - start, 0, N)
                                   : sub_gemm(g, 0, M, start, end - start);
            float* a_pack = aligned_alloc(ALIGNMENT, sizeof(float) * MC * KC);
            float* b_pack = aligned_alloc(ALIGNMENT, sizeof(float) * KC * NC);
            if (a_pack != NULL && b_pack != NULL) {
                gemm_blocked(mine, a_pack, b_pack);
            } else {
                gemm_unpacked(mine);
            }
            free(a_pack);
            free(b_pack);
        }
    }
}
