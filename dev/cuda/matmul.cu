/*
Matmuls of the linear layers: the engine's cuBLASLt path (llmc/matmul.cuh), plain cuBLAS, and a
course of hand-written forward kernels from a naive loop to Hopper's wgmma. Check and benchmark.

What it computes (row-major, N = B*T rows, weight (OC, C) as in nn.Linear):
  forward        out = inp @ W^T + bias                      (cuBLASLt epilogue BIAS)
  forward GELU   pre = inp @ W^T + bias, out = gelu(pre)     (GELU_AUX_BIAS)
  backward       dinp = (dout @ W) [* gelu'(pre_gelu)]       (DGELU)
                 dW += dout^T @ inp, dbias += colsum(dout)   (BGRADB, bias gradient fused)
The hand-written versions compute the forward product out (N, OC) = inp (N, C) @ W (OC, C)^T + bias
(bias optional): bf16 inputs, fp32 accumulation, bf16 output. In GEMM terms M = N rows, N = OC
columns, K = C; both operands are K-contiguous ("TN"), which is what mma.sync's row.col form and
wgmma's K-major shared-memory operands want, so no version transposes anything.

Shapes. Checks: small random matrices (odd sizes, not multiples of any tile) against a double-
precision CPU reference; on the model's shapes, the hand-written versions and the engine are
compared with cuBLAS's output (relative error, computed on the GPU). Timing: GPT-2 124M's four
block matmuls at N = B*T = 65,536 (C = 768: qkv 768->2304, attproj 768->768, fc 768->3072,
fcproj 3072->768) and the classifier 768->50304. Inputs are random (never zeros: zeros run faster).

Build and run (from the repository root):
    nvcc -O3 -std=c++17 -gencode arch=compute_90,code=sm_90 -I. dev/cuda/matmul.cu -o matmul \
        -lcublasLt -lcublas
    ./matmul [--no-v5] [--skip SUBSTR]...
  v5 uses wgmma, which exists only in the sm_90a target: add `-gencode arch=compute_90a,code=sm_90a`
  to include it (the Makefile and CMake do, for this program only; the driver then runs the sm_90a
  code on H100/H200). In a build without it, v5 is reported as skipped: a device-side probe says
  whether it was compiled. `--no-v5` skips it in an
  sm_90a build too; `--skip SUBSTR` skips the hand-written versions whose name contains SUBSTR.
  The fp32 build (-DLLMC_FP32) checks the engine only: the hand-written versions are bf16 kernels.

Versions (hand-written forward; each one a step of the course):
  v1 naive       one thread per output element, a loop over C in fp32. Any shape. The correctness
                 baseline; timed on one shape only (attproj).
  v2 SIMT tiled  128x128 block tile, BK = 16, 256 threads with an 8x8 register block each; tiles
                 staged through shared memory as fp32 (transposed so that a thread's 4 rows or 4
                 columns are one 16-byte read); plain FFMA, no tensor cores.
  v3 mma.sync    tensor cores: mma.sync.aligned.m16n8k16 bf16 -> fp32 (inline PTX), fragments read
                 with ldmatrix.x4; 128x128x32 block tile, 4 warps of 64x64 warp tiles. One shared
                 stage, loaded synchronously (global -> registers -> shared), unpadded rows (the
                 ldmatrix reads have 4-way bank conflicts): the step before v4.
  v4 mma.sync    v3 plus a cp.async pipeline (3-4 stages, one __syncthreads per k-tile), XOR-
                 swizzled shared rows (conflict-free ldmatrix and cp.async), larger tiles,
                 grouped block order for L2 reuse (8 row tiles share a column sweep), bias fused in
                 the epilogue. Several tile configurations are timed ("BMxBNxBK, warps, stages").
  v5 wgmma       Hopper (sm_90a): wgmma.mma_async m64nBNk16, both operands read by the tensor cores
                 straight from shared memory through matrix descriptors (128-byte swizzle, the
                 layout TMA's SWIZZLE_128B writes; here cp.async writes it), accumulators in
                 registers; one warpgroup per 64 rows; up to one wgmma group in flight while the
                 next tiles load. "2blk": 128x128 tiles, 3 stages, two blocks per SM (one block's
                 epilogue and prologue overlap the other's products).
Tried and dropped (slower, measured on the H200 on 2026-11-24): a persistent grid walking one flat
stream of k-tiles across output tiles (v4 and v5), and ldmatrix prefetch of the next k16 step
across the k-tile barrier (v4, the CUTLASS sm80 mainloop): 10-35% slower than the versions above.
That code recomputed the tile's coordinates (integer divisions) before every cp.async batch, ahead
of the next mma/wgmma issue, a likely cause; so the measurement does not rule the two ideas out.
Divisibility: v1 takes any shape. v2-v5 need C % 8 == 0 and 16-byte aligned inp/W (each row is read
in 16-byte pieces); any N and OC (row and column tails are guarded, the k tail is zero-filled). The
launchers check this and refuse with a message (the check below verifies that they refuse).

Timed versions per shape (forward): cuBLAS (cublasGemmEx, bf16 in, fp32 accumulate, no bias: the
expert upper bound), engine (cuBLASLt) (matmul_forward with the fused bias epilogue), then v1-v5.
Forward + backward per layer (3 products): "cuBLAS plain" (three cublasGemmEx calls, no bias
gradient, no GELU) and "engine (cuBLASLt)" (matmul_forward + matmul_backward: fused bias / GELU /
dGELU / bias-gradient epilogues). TFLOP/s counts 2*N*C*OC per product; "% of cuBLAS" compares with
the plain cuBLAS time of the same shape measured in the same run. Timing: CUDA events, warm-up,
median of up to 20 calls (fewer for the slow versions), dev/cuda/common.cuh.
*/
#include <cublas_v2.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <string>
#include <vector>

#include "llmc/matmul.cuh"   // defines: matmul_init/forward/backward/free (the engine, cuBLASLt)
#include "llmc/wgmma.cuh"    // defines: wgmma_ss, wgmma_desc_kmajor, wgmma_fence/commit/wait (v5)
#include "common.cuh"  // defines: bench:: inputs, poison, rel_error, time_ms, report_compute

#ifdef LLMC_FP32
static const double TOL = 1e-4;
#else
static const double TOL = 2e-2;  // bf16 outputs and bf16-rounded intermediates (pre-GELU)
#endif

// ================================================================================================
// engine checks (both builds): one layer's forward and backward against a double CPU reference

static double gelu_d(double x) { return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }
static double gelu_grad_d(double x) {
    const double u = 0.7978845608028654 * (x + 0.044715 * x * x * x), th = tanh(u);
    return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x);
}

static void check_layer(int N, int C, int OC, bool gelu_out, bool dgelu_in) {
    Rng rng;
    rng_init(&rng, 1000 + OC + (gelu_out ? 1 : 0));
    const std::vector<floatX> h_inp = bench::random_normal<floatX>(&rng, (size_t)N * C, 0.0f, 1.0f);
    const std::vector<floatX> h_w = bench::random_normal<floatX>(&rng, (size_t)OC * C, 0.0f, 0.05f);
    const std::vector<floatX> h_b = bench::random_normal<floatX>(&rng, OC, 0.0f, 0.1f);
    const std::vector<floatX> h_dout = bench::random_normal<floatX>(&rng, (size_t)N * OC, 0.0f, 1.0f);
    const std::vector<floatX> h_pre = bench::random_normal<floatX>(&rng, (size_t)N * C, 0.0f, 1.0f);
    const std::vector<floatX> h_dw0 = bench::random_normal<floatX>(&rng, (size_t)OC * C, 0.0f, 1.0f);
    const std::vector<floatX> h_db0 = bench::random_normal<floatX>(&rng, OC, 0.0f, 1.0f);
    floatX *inp = bench::to_device(h_inp), *w = bench::to_device(h_w), *b = bench::to_device(h_b);
    floatX *dout = bench::to_device(h_dout), *pre = bench::to_device(h_pre);
    floatX *dw = bench::to_device(h_dw0), *db = bench::to_device(h_db0);
    floatX* out = bench::device_alloc<floatX>((size_t)N * OC);
    floatX* pre_out = bench::device_alloc<floatX>((size_t)N * OC);
    floatX* dinp = bench::device_alloc<floatX>((size_t)N * C);
    float* scratch = bench::device_alloc<float>(column_sum_scratch_floats(N, OC));

    // reference
    std::vector<double> ref_pre((size_t)N * OC), ref_out((size_t)N * OC), ref_dinp((size_t)N * C);
    std::vector<double> ref_dw((size_t)OC * C), ref_db(OC);
    const std::vector<double> d_inp = bench::to_double(h_inp), d_w = bench::to_double(h_w);
    const std::vector<double> d_dout = bench::to_double(h_dout);
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < OC; o++) {
            double acc = to_float(h_b[o]);
            for (int c = 0; c < C; c++) acc += d_inp[(size_t)n * C + c] * d_w[(size_t)o * C + c];
            ref_pre[(size_t)n * OC + o] = acc;
            // the engine applies GELU to the pre-activation it stores (rounded to floatX)
            ref_out[(size_t)n * OC + o] = gelu_out ? gelu_d(to_float(from_float<floatX>((float)acc))) : acc;
        }
    }
    for (int n = 0; n < N; n++) {
        for (int c = 0; c < C; c++) {
            double acc = 0.0;
            for (int o = 0; o < OC; o++) acc += d_dout[(size_t)n * OC + o] * d_w[(size_t)o * C + c];
            ref_dinp[(size_t)n * C + c] = dgelu_in ? acc * gelu_grad_d(to_float(h_pre[(size_t)n * C + c])) : acc;
        }
    }
    for (int o = 0; o < OC; o++) {
        double s = to_float(h_db0[o]);
        for (int n = 0; n < N; n++) s += d_dout[(size_t)n * OC + o];
        ref_db[o] = s;
        for (int c = 0; c < C; c++) {
            double acc = to_float(h_dw0[(size_t)o * C + c]);
            for (int n = 0; n < N; n++) acc += d_dout[(size_t)n * OC + o] * d_inp[(size_t)n * C + c];
            ref_dw[(size_t)o * C + c] = acc;
        }
    }

    char name[96];
    std::vector<floatX> first_out, first_dinp, first_dw;
    for (int call = 0; call < 2; call++) {  // call 0 builds the plans, call 1 hits the cache
        bench::poison(out, (size_t)N * OC);
        bench::poison(pre_out, (size_t)N * OC);
        bench::poison(dinp, (size_t)N * C);
        bench::poison(scratch, column_sum_scratch_floats(N, OC));
        bench::copy_to_device(dw, h_dw0);
        bench::copy_to_device(db, h_db0);
        matmul_forward(out, gelu_out ? pre_out : NULL, inp, w, b, N, C, OC, 0);
        matmul_backward(dinp, dw, db, dout, inp, w, dgelu_in ? pre : NULL, scratch, N, C, OC, 0);
        cudaCheck(cudaDeviceSynchronize());
        const std::vector<floatX> o = bench::to_host(out, (size_t)N * OC), di = bench::to_host(dinp, (size_t)N * C);
        const std::vector<floatX> dwh = bench::to_host(dw, (size_t)OC * C);
        if (call == 0) {
            snprintf(name, sizeof(name), "engine fwd%s %dx%d->%d", gelu_out ? "+gelu" : "", N, C, OC);
            bench::check(name, bench::rel_error(o, ref_out), TOL);
            if (gelu_out) {
                snprintf(name, sizeof(name), "engine fwd pre-gelu %dx%d->%d", N, C, OC);
                bench::check(name, bench::rel_error(bench::to_host(pre_out, (size_t)N * OC), ref_pre), TOL);
            }
            snprintf(name, sizeof(name), "engine bwd dinp%s %dx%d->%d", dgelu_in ? "*dgelu" : "", N, C, OC);
            bench::check(name, bench::rel_error(di, ref_dinp), TOL);
            snprintf(name, sizeof(name), "engine bwd dweight (+=) %dx%d->%d", N, C, OC);
            bench::check(name, bench::rel_error(dwh, ref_dw), TOL);
            snprintf(name, sizeof(name), "engine bwd dbias (+=) %dx%d->%d", N, C, OC);
            bench::check(name, bench::rel_error(bench::to_host(db, OC), ref_db), TOL);
            first_out = o;
            first_dinp = di;
            first_dw = dwh;
        } else {
            const bool same = bench::same_bits(o, first_out) && bench::same_bits(di, first_dinp) &&
                              bench::same_bits(dwh, first_dw);
            snprintf(name, sizeof(name), "engine cached call bit-identical %dx%d->%d", N, C, OC);
            bench::check(name, same ? 0.0 : INFINITY, 0.0);
        }
    }
    cudaCheck(cudaFree(inp)); cudaCheck(cudaFree(w)); cudaCheck(cudaFree(b)); cudaCheck(cudaFree(dout));
    cudaCheck(cudaFree(pre)); cudaCheck(cudaFree(dw)); cudaCheck(cudaFree(db)); cudaCheck(cudaFree(out));
    cudaCheck(cudaFree(pre_out)); cudaCheck(cudaFree(dinp)); cudaCheck(cudaFree(scratch));
}

// host cost of one small matmul call (cached plan): launches per second on a tiny shape
static void report_small_call_cost() {
    Rng rng;
    rng_init(&rng, 7);
    floatX* x = bench::to_device(bench::random_normal<floatX>(&rng, 64 * 64, 0.0f, 1.0f));
    floatX* y = bench::to_device(bench::random_normal<floatX>(&rng, 64 * 64, 0.0f, 1.0f));
    floatX* z = bench::device_alloc<floatX>(64 * 64);
    matmul_forward(z, NULL, x, y, NULL, 64, 64, 64, 0);
    cudaCheck(cudaDeviceSynchronize());
    const int calls = 2000;
    const double ms = bench::time_ms([&] {
        for (int i = 0; i < calls; i++) matmul_forward(z, NULL, x, y, NULL, 64, 64, 64, 0);
    }, 1, 5);
    printf("small matmul (64^3), cached plan: %.2f us per call (host + launch bound)\n", 1e3 * ms / calls);
    cudaCheck(cudaFree(x)); cudaCheck(cudaFree(y)); cudaCheck(cudaFree(z));
}

#ifndef LLMC_FP32
// ================================================================================================
// hand-written forward kernels (bf16): out (M, N) = inp (M, K) @ w (N, K)^T + bias (N)
// (M = B*T rows, N = OC, K = C in the model's names)

typedef __nv_bfloat16 bf16;
static const double TOL_HAND = 1e-2;  // hand-written forward: one bf16 rounding of an fp32 sum

// ---- building blocks: PTX wrappers --------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// 16-byte global -> shared copy; when !valid nothing is read and the 16 bytes are zero-filled
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {  // all but the newest PENDING groups have landed
    asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory");
}

// four 8x8 bf16 matrices from shared memory; lanes 8q .. 8q+7 give the row addresses of matrix q
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// Fragments of mma.m16n8k16 (lane = 4 g + t):
//   A (16 x 16, row-major): a0 = (row g, k 2t..2t+1), a1 = (row g+8, same k), a2 = (row g, k 2t+8..),
//                           a3 = (row g+8, k 2t+8..)
//   B (16 x 8, stored n-major = rows of W): b0 = (k 2t..2t+1, n g), b1 = (k 2t+8.., n g)
//   C (16 x 8 fp32): c0, c1 = (row g, cols 2t, 2t+1), c2, c3 = (row g+8, same cols)
// c += a * b
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Element offset of 16-byte chunk `chunk` of row `row` in a shared tile of BK bf16 per row.
// SWZ: the chunk index is XORed with a few row bits so that the 8 rows one ldmatrix matrix reads
// (same logical chunk, consecutive rows) land in 8 distinct groups of 4 banks. Rows of 64 bytes
// (BK = 32) come two per 128-byte line, rows r and r^1 in different halves of the banks already, so
// the XOR uses row / 2; rows of 128 bytes (BK = 64) use the row itself (the 128-byte swizzle).
// Unswizzled 64-byte rows (v3) put the 8 rows in 2 groups: 4-way conflicts.
template <int BK, bool SWZ>
__device__ __forceinline__ int tile_offset(int row, int chunk) {
    constexpr int CPR = BK / 8;        // 16-byte chunks per row
    if constexpr (SWZ) {
        constexpr int RPL = 8 / CPR;  // rows per 128-byte line
        chunk ^= (row / RPL) % CPR;
    }
    return row * BK + chunk * 8;
}

// The fragments of k16 step kk of a k-tile: A rows [wm0, wm0+WM), B (W) rows [wn0, wn0+WN)
template <int BK, int WM, int WN, bool SWZ>
__device__ __forceinline__ void warp_load_frags(uint32_t (&af)[WM / 16][4], uint32_t (&bfr)[WN / 8][2],
                                                const bf16* sA, const bf16* sB, int wm0, int wn0, int lane, int kk) {
#pragma unroll
    for (int mt = 0; mt < WM / 16; mt++) {
        // matrices: rows 0-7 k 0-7 (a0), rows 8-15 k 0-7 (a1), rows 0-7 k 8-15 (a2), rows 8-15 k 8-15 (a3)
        ldmatrix_x4(af[mt], smem_u32(sA + tile_offset<BK, SWZ>(wm0 + mt * 16 + (lane & 15), kk * 2 + (lane >> 4))));
    }
#pragma unroll
    for (int np = 0; np < WN / 16; np++) {
        // matrices: n 0-7 k 0-7 (b0 of n-tile 0), n 0-7 k 8-15 (b1), n 8-15 k 0-7, n 8-15 k 8-15 (n-tile 1)
        uint32_t r[4];
        const int n = wn0 + np * 16 + (lane & 7) + ((lane >> 4) << 3);
        ldmatrix_x4(r, smem_u32(sB + tile_offset<BK, SWZ>(n, kk * 2 + ((lane >> 3) & 1))));
        bfr[2 * np][0] = r[0];
        bfr[2 * np][1] = r[1];
        bfr[2 * np + 1][0] = r[2];
        bfr[2 * np + 1][1] = r[3];
    }
}

// acc (WM x WN) += the product of one k16 step's fragments
template <int WM, int WN>
__device__ __forceinline__ void warp_mma_frags(float (&acc)[WM / 16][WN / 8][4], const uint32_t (&af)[WM / 16][4],
                                               const uint32_t (&bfr)[WN / 8][2]) {
#pragma unroll
    for (int mt = 0; mt < WM / 16; mt++) {
#pragma unroll
        for (int nt = 0; nt < WN / 8; nt++) mma_16816(acc[mt][nt], af[mt], bfr[nt][0], bfr[nt][1]);
    }
}

// acc (WM x WN fp32 fragments) += A rows [wm0, wm0+WM) x B rows [wn0, wn0+WN) over one k-tile of BK
template <int BK, int WM, int WN, bool SWZ>
__device__ __forceinline__ void warp_tile_mma(float (&acc)[WM / 16][WN / 8][4], const bf16* sA, const bf16* sB,
                                              int wm0, int wn0, int lane) {
#pragma unroll
    for (int kk = 0; kk < BK / 16; kk++) {
        uint32_t af[WM / 16][4];
        uint32_t bfr[WN / 8][2];
        warp_load_frags<BK, WM, WN, SWZ>(af, bfr, sA, sB, wm0, wn0, lane, kk);
        warp_mma_frags<WM, WN>(acc, af, bfr);
    }
}

// out[row][col], out[row][col + 1] = v0, v1 (+ bias), guarded; one 4-byte store when possible
__device__ __forceinline__ void store_pair(bf16* out, int row, int col, float v0, float v1, int M, int N) {
    if (row >= M || col >= N) return;
    bf16* p = out + (size_t)row * N + col;
    if (col + 1 < N && (N & 1) == 0) {
        *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(v0, v1);
    } else {
        p[0] = __float2bfloat16_rn(v0);
        if (col + 1 < N) p[1] = __float2bfloat16_rn(v1);
    }
}

// epilogue of the mma.sync versions: the warp's C fragments (+ bias) to global memory
template <int MT, int NT>
__device__ __forceinline__ void store_warp_tile(bf16* out, const bf16* bias, const float (&acc)[MT][NT][4], int row0,
                                                int col0, int M, int N, int lane) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        const int col = col0 + nt * 8 + 2 * t;
        const float b0 = (bias != NULL && col < N) ? __bfloat162float(bias[col]) : 0.0f;
        const float b1 = (bias != NULL && col + 1 < N) ? __bfloat162float(bias[col + 1]) : 0.0f;
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            const int row = row0 + mt * 16 + g;
            store_pair(out, row, col, acc[mt][nt][0] + b0, acc[mt][nt][1] + b1, M, N);
            store_pair(out, row + 8, col, acc[mt][nt][2] + b0, acc[mt][nt][3] + b1, M, N);
        }
    }
}

// Grouped block order: consecutive blocks walk GROUP row tiles, then the next column tile, so the
// blocks resident at one time share a few row tiles of inp and a few column tiles of W in L2.
__device__ __forceinline__ void grouped_tile(int pid, int grid_m, int grid_n, int& bm, int& bn) {
    constexpr int GROUP = 8;
    const int per_group = GROUP * grid_n;
    const int first = (pid / per_group) * GROUP;
    const int size = min(grid_m - first, GROUP);
    const int local = pid % per_group;
    bm = first + local % size;
    bn = local / size;
}

// ---- v1: naive ----------------------------------------------------------------------------------

__global__ void matmul_v1_kernel(bf16* out, const bf16* inp, const bf16* w, const bf16* bias, int M, int N, int K) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    const int row = blockIdx.y * blockDim.y + threadIdx.y;
    if (row >= M || col >= N) return;
    const bf16* a = inp + (size_t)row * K;
    const bf16* b = w + (size_t)col * K;
    float acc = 0.0f;
    for (int k = 0; k < K; k++) acc += __bfloat162float(a[k]) * __bfloat162float(b[k]);
    if (bias != NULL) acc += __bfloat162float(bias[col]);
    out[(size_t)row * N + col] = __float2bfloat16_rn(acc);
}

// ---- v2: shared-memory tiling + register blocking (SIMT) ---------------------------------------

#define V2_BM 128
#define V2_BN 128
#define V2_BK 16
#define V2_THREADS 256
// Each thread owns rows {4ty..4ty+3, 64+4ty..} and columns {4tx..4tx+3, 64+4tx..} (tx, ty in
// 0..15): its 4-wide pieces are 16-byte shared reads, and a quarter-warp's reads are contiguous.
__global__ void __launch_bounds__(V2_THREADS) matmul_v2_kernel(bf16* out, const bf16* inp, const bf16* w,
                                                                const bf16* bias, int M, int N, int K) {
    __shared__ __align__(16) float As[V2_BK][V2_BM];  // transposed: As[k][m]
    __shared__ __align__(16) float Bs[V2_BK][V2_BN];
    const int m0 = blockIdx.y * V2_BM, n0 = blockIdx.x * V2_BN;
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int lrow = tid % 128, lk = (tid / 128) * 8;  // the 8 k-values this thread loads
    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; i++) {
#pragma unroll
        for (int j = 0; j < 8; j++) acc[i][j] = 0.0f;
    }
    for (int k0 = 0; k0 < K; k0 += V2_BK) {
        const int k = k0 + lk;
        uint4 va = make_uint4(0, 0, 0, 0), vb = make_uint4(0, 0, 0, 0);
        if (m0 + lrow < M && k < K) va = *reinterpret_cast<const uint4*>(inp + (size_t)(m0 + lrow) * K + k);
        if (n0 + lrow < N && k < K) vb = *reinterpret_cast<const uint4*>(w + (size_t)(n0 + lrow) * K + k);
        const bf16* pa = reinterpret_cast<const bf16*>(&va);
        const bf16* pb = reinterpret_cast<const bf16*>(&vb);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            As[lk + j][lrow] = __bfloat162float(pa[j]);
            Bs[lk + j][lrow] = __bfloat162float(pb[j]);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < V2_BK; kk++) {
            float a[8], b[8];
            *reinterpret_cast<float4*>(&a[0]) = *reinterpret_cast<const float4*>(&As[kk][ty * 4]);
            *reinterpret_cast<float4*>(&a[4]) = *reinterpret_cast<const float4*>(&As[kk][64 + ty * 4]);
            *reinterpret_cast<float4*>(&b[0]) = *reinterpret_cast<const float4*>(&Bs[kk][tx * 4]);
            *reinterpret_cast<float4*>(&b[4]) = *reinterpret_cast<const float4*>(&Bs[kk][64 + tx * 4]);
#pragma unroll
            for (int i = 0; i < 8; i++) {
#pragma unroll
                for (int j = 0; j < 8; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int row = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + i - 4);
        if (row >= M) continue;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int col = n0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + j - 4);
            if (col >= N) continue;
            const float b = bias != NULL ? __bfloat162float(bias[col]) : 0.0f;
            out[(size_t)row * N + col] = __float2bfloat16_rn(acc[i][j] + b);
        }
    }
}

// ---- v3: tensor cores (mma.sync + ldmatrix), one synchronous shared stage -------------------------

#define V3_BM 128
#define V3_BN 128
#define V3_BK 32
#define V3_WM 64
#define V3_WN 64
#define V3_THREADS ((V3_BM / V3_WM) * (V3_BN / V3_WN) * 32)
__global__ void __launch_bounds__(V3_THREADS) matmul_v3_kernel(bf16* out, const bf16* inp, const bf16* w,
                                                                const bf16* bias, int M, int N, int K) {
    __shared__ __align__(128) bf16 sA[V3_BM * V3_BK];
    __shared__ __align__(128) bf16 sB[V3_BN * V3_BK];
    constexpr int CPR = V3_BK / 8;
    const int m0 = blockIdx.y * V3_BM, n0 = blockIdx.x * V3_BN;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm0 = (warp / (V3_BN / V3_WN)) * V3_WM, wn0 = (warp % (V3_BN / V3_WN)) * V3_WN;
    float acc[V3_WM / 16][V3_WN / 8][4];
#pragma unroll
    for (int i = 0; i < V3_WM / 16; i++) {
#pragma unroll
        for (int j = 0; j < V3_WN / 8; j++) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;
    }
    for (int k0 = 0; k0 < K; k0 += V3_BK) {
        uint4 va[V3_BM * CPR / V3_THREADS], vb[V3_BN * CPR / V3_THREADS];
#pragma unroll
        for (int it = 0; it < V3_BM * CPR / V3_THREADS; it++) {
            const int i = threadIdx.x + it * V3_THREADS, row = i / CPR, k = k0 + (i % CPR) * 8;
            va[it] = make_uint4(0, 0, 0, 0);
            if (m0 + row < M && k < K) va[it] = *reinterpret_cast<const uint4*>(inp + (size_t)(m0 + row) * K + k);
        }
#pragma unroll
        for (int it = 0; it < V3_BN * CPR / V3_THREADS; it++) {
            const int i = threadIdx.x + it * V3_THREADS, row = i / CPR, k = k0 + (i % CPR) * 8;
            vb[it] = make_uint4(0, 0, 0, 0);
            if (n0 + row < N && k < K) vb[it] = *reinterpret_cast<const uint4*>(w + (size_t)(n0 + row) * K + k);
        }
#pragma unroll
        for (int it = 0; it < V3_BM * CPR / V3_THREADS; it++) {
            const int i = threadIdx.x + it * V3_THREADS;
            *reinterpret_cast<uint4*>(sA + tile_offset<V3_BK, false>(i / CPR, i % CPR)) = va[it];
        }
#pragma unroll
        for (int it = 0; it < V3_BN * CPR / V3_THREADS; it++) {
            const int i = threadIdx.x + it * V3_THREADS;
            *reinterpret_cast<uint4*>(sB + tile_offset<V3_BK, false>(i / CPR, i % CPR)) = vb[it];
        }
        __syncthreads();
        warp_tile_mma<V3_BK, V3_WM, V3_WN, false>(acc, sA, sB, wm0, wn0, lane);
        __syncthreads();
    }
    store_warp_tile(out, bias, acc, m0 + wm0, n0 + wn0, M, N, lane);
}

// ---- v4: mma.sync + cp.async multi-stage pipeline + swizzled shared memory ------------------------

// Block tile BM x BN, k-tile BK, warp tile WM x WN, STAGES shared stages (dynamic shared memory).
// Pipeline: tiles 0 .. STAGES-2 are in flight before the loop; iteration kt waits for tile kt,
// one __syncthreads (tile kt visible to all, and every warp done with tile kt-1), then starts the
// copy of tile kt+STAGES-1 into the stage tile kt-1 used, then computes on tile kt.
template <int BM, int BN, int BK, int WM, int WN, int STAGES>
__global__ void __launch_bounds__((BM / WM) * (BN / WN) * 32) matmul_v4_kernel(bf16* out, const bf16* inp,
                                                                                const bf16* w, const bf16* bias,
                                                                                int M, int N, int K) {
    constexpr int THREADS = (BM / WM) * (BN / WN) * 32;
    constexpr int CPR = BK / 8;
    constexpr int STAGE_ELEMS = (BM + BN) * BK;
    static_assert((BM * CPR) % THREADS == 0 && (BN * CPR) % THREADS == 0, "tile copy must divide evenly");
    static_assert(STAGES >= 2, "at least two stages");
    extern __shared__ __align__(128) uint8_t v4_smem[];
    bf16* smem = reinterpret_cast<bf16*>(v4_smem);

    int bm, bn;
    grouped_tile(blockIdx.x, ceil_div(M, BM), ceil_div(N, BN), bm, bn);
    const int m0 = bm * BM, n0 = bn * BN;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm0 = (warp / (BN / WN)) * WM, wn0 = (warp % (BN / WN)) * WN;
    const int KT = ceil_div(K, BK);

    auto load_tile = [&](int stage, int kt) {
        bf16* sA = smem + stage * STAGE_ELEMS;
        bf16* sB = sA + BM * BK;
#pragma unroll
        for (int it = 0; it < BM * CPR / THREADS; it++) {
            const int i = threadIdx.x + it * THREADS, row = i / CPR, c = i % CPR, k = kt * BK + c * 8;
            const bool valid = m0 + row < M && k < K;
            const bf16* src = valid ? inp + (size_t)(m0 + row) * K + k : inp;
            cp_async16(smem_u32(sA + tile_offset<BK, true>(row, c)), src, valid);
        }
#pragma unroll
        for (int it = 0; it < BN * CPR / THREADS; it++) {
            const int i = threadIdx.x + it * THREADS, row = i / CPR, c = i % CPR, k = kt * BK + c * 8;
            const bool valid = n0 + row < N && k < K;
            const bf16* src = valid ? w + (size_t)(n0 + row) * K + k : w;
            cp_async16(smem_u32(sB + tile_offset<BK, true>(row, c)), src, valid);
        }
    };

    float acc[WM / 16][WN / 8][4];
#pragma unroll
    for (int i = 0; i < WM / 16; i++) {
#pragma unroll
        for (int j = 0; j < WN / 8; j++) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;
    }
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < KT) load_tile(s, s);
        cp_async_commit();  // one group per tile, empty past the end, so the wait count stays fixed
    }
    for (int kt = 0; kt < KT; kt++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int next = kt + STAGES - 1;
        if (next < KT) load_tile(next % STAGES, next);
        cp_async_commit();
        const bf16* sA = smem + (kt % STAGES) * STAGE_ELEMS;
        warp_tile_mma<BK, WM, WN, true>(acc, sA, sA + BM * BK, wm0, wn0, lane);
    }
    cp_async_wait<0>();
    store_warp_tile(out, bias, acc, m0 + wm0, n0 + wn0, M, N, lane);
}

// ---- v5: Hopper wgmma (sm_90a), operands from 128-byte-swizzled shared memory ---------------------

// The wgmma primitives (descriptors, fences, wgmma_ss) come from llmc/wgmma.cuh. wgmma exists only
// in the sm_90a target: the device pass of an sm_90 build leaves the kernel empty (it traps if
// launched), and wgmma_compiled() tells main, so the program still builds and runs everything else.
#ifdef LLMC_WGMMA
// A warpgroup's 64 x BN accumulators (+ bias) to out rows row0 .. row0+63, columns n0 .. n0+BN-1.
// Layout: per n8 column block j, registers 4j .. 4j+3 are an mma.m16n8 C fragment of the warp's 16
// rows (warp w of the warpgroup holds rows 16w .. 16w+15).
template <int BN>
__device__ __forceinline__ void wgmma_store_tile(bf16* out, const bf16* bias, const float (&acc)[BN / 2], int row0,
                                                 int n0, int M, int N) {
    const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
    const int row = row0 + warp * 16 + g;
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
        const int col = n0 + j * 8 + 2 * t;
        const float b0 = (bias != NULL && col < N) ? __bfloat162float(bias[col]) : 0.0f;
        const float b1 = (bias != NULL && col + 1 < N) ? __bfloat162float(bias[col + 1]) : 0.0f;
        store_pair(out, row, col, acc[4 * j] + b0, acc[4 * j + 1] + b1, M, N);
        store_pair(out, row + 8, col, acc[4 * j + 2] + b0, acc[4 * j + 3] + b1, M, N);
    }
}
#endif  // LLMC_WGMMA

// Block tile 128 x BN x 64, 256 threads = 2 warpgroups, warpgroup g computes rows 64g .. 64g+63
// (one m64nBNk16 wgmma per k16 step, 4 per k-tile). Shared stage s holds the 128 rows of inp then
// the BN rows of W, each row 128 bytes, swizzled as the descriptor says. Pipeline: DIST = STAGES -
// 1 - INFLIGHT tiles are loaded ahead; INFLIGHT wgmma groups stay in flight after each k-tile (0
// or 1), so the stage a new copy overwrites was read by a group every warpgroup has waited for
// before the __syncthreads that precedes the copy. MINB: blocks per SM for __launch_bounds__.
template <int BN, int STAGES, int INFLIGHT, int MINB>
__global__ void __launch_bounds__(256, MINB) matmul_v5_kernel(bf16* out, const bf16* inp, const bf16* w,
                                                              const bf16* bias, int M, int N, int K) {
#ifdef LLMC_WGMMA
    constexpr int BM = 128, BK = 64, THREADS = 256;
    constexpr int STAGE_BYTES = (BM + BN) * BK * 2;
    constexpr int DIST = STAGES - 1 - INFLIGHT;
    static_assert(DIST >= 1, "at least one tile loaded ahead");
    static_assert(BN == 128 || BN == 256, "wgmma wrappers exist for n = 128 and 256");
    extern __shared__ uint8_t v5_smem[];
    const uint32_t base = (smem_u32(v5_smem) + 1023u) & ~1023u;  // the swizzle repeats every 1024 bytes

    int bm, bn;
    grouped_tile(blockIdx.x, ceil_div(M, BM), ceil_div(N, BN), bm, bn);
    const int m0 = bm * BM, n0 = bn * BN;
    const int wg = threadIdx.x / 128;
    const int KT = ceil_div(K, BK);

    auto load_tile = [&](int stage, int kt) {
        const uint32_t s = base + stage * STAGE_BYTES;
#pragma unroll
        for (int it = 0; it < BM * 8 / THREADS; it++) {
            const int i = threadIdx.x + it * THREADS, row = i / 8, c = i % 8, k = kt * BK + c * 8;
            const bool valid = m0 + row < M && k < K;
            const bf16* src = valid ? inp + (size_t)(m0 + row) * K + k : inp;
            cp_async16(s + row * 128 + ((c ^ (row & 7)) << 4), src, valid);
        }
#pragma unroll
        for (int it = 0; it < BN * 8 / THREADS; it++) {
            const int i = threadIdx.x + it * THREADS, row = i / 8, c = i % 8, k = kt * BK + c * 8;
            const bool valid = n0 + row < N && k < K;
            const bf16* src = valid ? w + (size_t)(n0 + row) * K + k : w;
            const int srow = BM + row;
            cp_async16(s + srow * 128 + ((c ^ (srow & 7)) << 4), src, valid);
        }
    };

    float acc[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; i++) {
        acc[i] = 0.0f;
        wgmma_pin(acc[i]);  // zeroed before the first wgmma.fence, not between it and the wgmma
    }
#pragma unroll
    for (int s = 0; s < DIST; s++) {
        if (s < KT) load_tile(s, s);
        cp_async_commit();
    }
    for (int kt = 0; kt < KT; kt++) {
        cp_async_wait<DIST - 1>();
        fence_proxy_async();
        __syncthreads();
        const int next = kt + DIST;
        if (next < KT) load_tile(next % STAGES, next);
        cp_async_commit();
        const uint32_t s = base + (kt % STAGES) * STAGE_BYTES;
        const uint32_t sa = s + wg * 64 * 128, sb = s + BM * 128;
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++)
            wgmma_ss<BN>(acc, wgmma_desc_kmajor(sa + kk * 32), wgmma_desc_kmajor(sb + kk * 32), 1);
        wgmma_commit();
        wgmma_wait<INFLIGHT>();
    }
    wgmma_wait<0>();
    wgmma_pin_all(acc);
    cp_async_wait<0>();

    wgmma_store_tile<BN>(out, bias, acc, m0 + wg * 64, n0, M, N);
#else
    (void)out, (void)inp, (void)w, (void)bias, (void)M, (void)N, (void)K;
    __trap();
#endif
}

// ---- launchers ----------------------------------------------------------------------------------

// Every launcher checks what its kernel assumes and returns false with a message when the call is
// not supported (nothing is launched then).
typedef bool (*HandLaunch)(bf16* out, const bf16* inp, const bf16* w, const bf16* bias, int M, int N, int K);

static bool g_wgmma_compiled = false;  // set in main from wgmma_compiled()

static bool hand_args_ok(const char* who, const bf16* out, const bf16* inp, const bf16* w, int M, int N, int K,
                         bool rows16) {
    if (M <= 0 || N <= 0 || K <= 0) {
        fprintf(stderr, "%s: empty shape (rows %d, C %d, OC %d)\n", who, M, K, N);
        return false;
    }
    if (rows16 && (K % 8 != 0 || (uintptr_t)inp % 16 != 0 || (uintptr_t)w % 16 != 0)) {
        fprintf(stderr, "%s: needs C %% 8 == 0 and 16-byte aligned inp and weight (rows are read in 16-byte "
                        "pieces); got C = %d\n", who, K);
        return false;
    }
    if ((uintptr_t)out % 4 != 0) {
        fprintf(stderr, "%s: out must be 4-byte aligned\n", who);
        return false;
    }
    return true;
}

static bool launch_v1(bf16* out, const bf16* inp, const bf16* w, const bf16* bias, int M, int N, int K) {
    if (!hand_args_ok("v1", out, inp, w, M, N, K, false)) return false;
    if (ceil_div(M, 8) > 65535) {
        fprintf(stderr, "v1: at most %d rows\n", 65535 * 8);
        return false;
    }
    matmul_v1_kernel<<<dim3(ceil_div(N, 32), ceil_div(M, 8)), dim3(32, 8)>>>(out, inp, w, bias, M, N, K);
    cudaCheckLast();
    return true;
}

static bool launch_v2(bf16* out, const bf16* inp, const bf16* w, const bf16* bias, int M, int N, int K) {
    if (!hand_args_ok("v2", out, inp, w, M, N, K, true)) return false;
    matmul_v2_kernel<<<dim3(ceil_div(N, V2_BN), ceil_div(M, V2_BM)), V2_THREADS>>>(out, inp, w, bias, M, N, K);
    cudaCheckLast();
    return true;
}

static bool launch_v3(bf16* out, const bf16* inp, const bf16* w, const bf16* bias, int M, int N, int K) {
    if (!hand_args_ok("v3", out, inp, w, M, N, K, true)) return false;
    matmul_v3_kernel<<<dim3(ceil_div(N, V3_BN), ceil_div(M, V3_BM)), V3_THREADS>>>(out, inp, w, bias, M, N, K);
    cudaCheckLast();
    return true;
}

static bool grid_fits(const char* who, int M, int N, int BM, int BN) {
    if ((long long)ceil_div(M, BM) * ceil_div(N, BN) > 0x7FFFFFFFLL) {
        fprintf(stderr, "%s: too many tiles\n", who);
        return false;
    }
    return true;
}

template <int BM, int BN, int BK, int WM, int WN, int STAGES>
static bool launch_v4(bf16* out, const bf16* inp, const bf16* w, const bf16* bias, int M, int N, int K) {
    if (!hand_args_ok("v4", out, inp, w, M, N, K, true) || !grid_fits("v4", M, N, BM, BN)) return false;
    constexpr int threads = (BM / WM) * (BN / WN) * 32;
    constexpr size_t smem = (size_t)STAGES * (BM + BN) * BK * sizeof(bf16);
    auto kernel = matmul_v4_kernel<BM, BN, BK, WM, WN, STAGES>;
    static bool configured = false;
    if (!configured) {
        cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        configured = true;
    }
    kernel<<<ceil_div(M, BM) * ceil_div(N, BN), threads, smem>>>(out, inp, w, bias, M, N, K);
    cudaCheckLast();
    return true;
}

template <int BN, int STAGES, int INFLIGHT, int MINB>
static bool launch_v5(bf16* out, const bf16* inp, const bf16* w, const bf16* bias, int M, int N, int K) {
    if (!g_wgmma_compiled) {
        fprintf(stderr, "v5: not in this build (wgmma needs -gencode arch=compute_90a,code=sm_90a)\n");
        return false;
    }
    if (!hand_args_ok("v5", out, inp, w, M, N, K, true) || !grid_fits("v5", M, N, 128, BN)) return false;
    constexpr size_t smem = (size_t)STAGES * (128 + BN) * 64 * sizeof(bf16) + 1024;  // + 1024: alignment
    auto kernel = matmul_v5_kernel<BN, STAGES, INFLIGHT, MINB>;
    static bool configured = false;
    if (!configured) {
        cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        configured = true;
    }
    kernel<<<ceil_div(M, 128) * ceil_div(N, BN), 256, smem>>>(out, inp, w, bias, M, N, K);
    cudaCheckLast();
    return true;
}

struct HandVersion {
    const char* name;
    HandLaunch launch;
    bool wgmma;      // v5: needs the sm_90a build
    bool all_shapes;  // false: timed on attproj only (v1)
};

static const HandVersion k_versions[] = {
    {"v1 naive", launch_v1, false, false},
    {"v2 SIMT tiled", launch_v2, false, true},
    {"v3 mma.sync", launch_v3, false, true},
    {"v4 mma.sync 128x128x32 4w 4st", launch_v4<128, 128, 32, 64, 64, 4>, false, true},
    {"v4 mma.sync 128x128x32 8w 4st", launch_v4<128, 128, 32, 64, 32, 4>, false, true},
    {"v4 mma.sync 128x256x32 8w 4st", launch_v4<128, 256, 32, 64, 64, 4>, false, true},
    {"v4 mma.sync 256x128x32 8w 4st", launch_v4<256, 128, 32, 64, 64, 4>, false, true},
    {"v4 mma.sync 128x128x64 4w 3st", launch_v4<128, 128, 64, 64, 64, 3>, false, true},
    {"v5 wgmma 128x256x64 4st", launch_v5<256, 4, 1, 1>, true, true},
    {"v5 wgmma 128x128x64 4st", launch_v5<128, 4, 1, 1>, true, true},
    {"v5 wgmma 128x128x64 3st 2blk", launch_v5<128, 3, 0, 2>, true, true},
};
static const int k_num_versions = (int)(sizeof(k_versions) / sizeof(k_versions[0]));

static std::vector<std::string> g_skip;  // --skip SUBSTR: versions whose name contains SUBSTR

static bool version_enabled(const HandVersion& v, bool run_v5) {
    for (const std::string& sub : g_skip) {
        if (strstr(v.name, sub.c_str()) != NULL) return false;
    }
    return !v.wgmma || (run_v5 && g_wgmma_compiled);
}

// ---- checks on small shapes against a double CPU reference ----------------------------------------

struct SmallShape {
    int M, K, N;
    bool bias;
};

// odd sizes on purpose: row, column and k tails in every tiling, an odd OC (no paired stores),
// a k-loop shorter than the pipeline (K = 64) and a long one (K = 3072)
static const SmallShape k_small_shapes[] = {
    {128, 64, 256, true}, {77, 200, 333, true}, {300, 776, 130, true},
    {257, 512, 264, false}, {1000, 96, 390, true}, {64, 3072, 96, true},
};

static void check_hand_version(const HandVersion& v, int vi) {
    const int num = (int)(sizeof(k_small_shapes) / sizeof(k_small_shapes[0]));
    for (int si = 0; si <= num; si++) {
        // v1 also takes a C that is no multiple of 8
        if (si == num && v.launch != launch_v1) break;
        const SmallShape s = si < num ? k_small_shapes[si] : SmallShape{33, 13, 17, true};
        Rng rng;
        rng_init(&rng, 5000 + 100 * (uint64_t)vi + si);  // fresh inputs per version and shape
        const std::vector<bf16> h_inp = bench::random_normal<bf16>(&rng, (size_t)s.M * s.K, 0.0f, 1.0f);
        const std::vector<bf16> h_w = bench::random_normal<bf16>(&rng, (size_t)s.N * s.K, 0.0f, 0.05f);
        const std::vector<bf16> h_b = bench::random_normal<bf16>(&rng, s.N, 0.0f, 0.1f);
        const std::vector<double> d_inp = bench::to_double(h_inp), d_w = bench::to_double(h_w);
        std::vector<double> ref((size_t)s.M * s.N);
        for (int m = 0; m < s.M; m++) {
            for (int n = 0; n < s.N; n++) {
                double acc = s.bias ? (double)__bfloat162float(h_b[n]) : 0.0;
                for (int k = 0; k < s.K; k++) acc += d_inp[(size_t)m * s.K + k] * d_w[(size_t)n * s.K + k];
                ref[(size_t)m * s.N + n] = acc;
            }
        }
        bf16 *inp = bench::to_device(h_inp), *w = bench::to_device(h_w), *b = bench::to_device(h_b);
        bf16* out = bench::device_alloc<bf16>((size_t)s.M * s.N);
        char name[128];
        snprintf(name, sizeof(name), "%s %dx%d->%d%s", v.name, s.M, s.K, s.N, s.bias ? " +bias" : "");
        std::vector<bf16> first;
        for (int run = 0; run < 2; run++) {  // run 1: same bits again (no atomics, fixed order)
            bench::poison(out, (size_t)s.M * s.N);
            const bool launched = v.launch(out, inp, w, s.bias ? b : NULL, s.M, s.N, s.K);
            cudaCheck(cudaDeviceSynchronize());
            const std::vector<bf16> o = bench::to_host(out, (size_t)s.M * s.N);
            if (run == 0) {
                bench::check(name, launched ? bench::rel_error(o, ref) : INFINITY, TOL_HAND);
                first = o;
            } else if (si == 1) {  // the determinism check once per version, on the shape with every tail
                char what[160];
                snprintf(what, sizeof(what), "%s rerun bit-identical", v.name);
                bench::check(what, launched && bench::same_bits(o, first) ? 0.0 : INFINITY, 0.0);
            }
        }
        cudaCheck(cudaFree(inp)); cudaCheck(cudaFree(w)); cudaCheck(cudaFree(b)); cudaCheck(cudaFree(out));
    }
    if (v.launch != launch_v1) {  // the 16-byte row loads: C % 8 != 0 must be refused, not computed wrong
        bf16* buf = bench::device_alloc<bf16>(64 * 64);
        printf("(expected refusal next) ");
        fflush(stdout);
        const bool refused = !v.launch(buf, buf, buf, NULL, 16, 16, 12);
        char what[160];
        snprintf(what, sizeof(what), "%s refuses C %% 8 != 0", v.name);
        bench::check(what, refused ? 0.0 : INFINITY, 0.0);
        cudaCheck(cudaFree(buf));
    }
}

// ---- the model's shapes: checks against cuBLAS, timings -------------------------------------------

// deterministic pseudo-random bf16 in [-scale, scale) (hash of the index)
__global__ void fill_uniform_kernel(bf16* x, size_t n, uint32_t seed, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const uint32_t h = hash_u32((uint32_t)i ^ (uint32_t)(i >> 32) * 0x85EBCA6Bu, seed);
        x[i] = __float2bfloat16_rn(scale * ((float)(h >> 8) * (2.0f / 16777216.0f) - 1.0f));
    }
}
static void fill_uniform(bf16* x, size_t n, uint32_t seed, float scale) {
    fill_uniform_kernel<<<2048, 256>>>(x, n, seed, scale);
    cudaCheckLast();
}

// out (rows, cols) = bias broadcast over rows (zeros when bias is NULL)
__global__ void broadcast_rows_kernel(bf16* out, const bf16* bias, size_t total, int cols) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        out[i] = bias != NULL ? bias[i % cols] : __float2bfloat16_rn(0.0f);
    }
}

// result[0] = max |ours - ref| (float bits), result[1] = max |ref|, result[2] = 1 if ours has a
// NaN or infinity (a poisoned element left unwritten). Non-negative floats order like their bits.
__global__ void compare_kernel(const bf16* ours, const bf16* ref, size_t n, unsigned int* result) {
    float diff = 0.0f, scale = 0.0f;
    bool bad = false;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float o = __bfloat162float(ours[i]), r = __bfloat162float(ref[i]);
        if (!isfinite(o)) bad = true;
        else diff = fmaxf(diff, fabsf(o - r));
        scale = fmaxf(scale, fabsf(r));
    }
    diff = warp_max(diff);
    scale = warp_max(scale);
    bad = __any_sync(0xFFFFFFFFu, bad);
    if (threadIdx.x % 32 == 0) {
        atomicMax(&result[0], __float_as_uint(diff));
        atomicMax(&result[1], __float_as_uint(scale));
        if (bad) atomicOr(&result[2], 1u);
    }
}

// max |ours - ref| / max |ref| over n elements, on the GPU; infinity if ours has a non-finite value
static double device_rel_error(const bf16* ours, const bf16* ref, size_t n) {
    unsigned int* d_result = bench::device_alloc<unsigned int>(3);
    cudaCheck(cudaMemset(d_result, 0, 3 * sizeof(unsigned int)));
    compare_kernel<<<4096, 256>>>(ours, ref, n, d_result);
    cudaCheckLast();
    unsigned int r[3];
    cudaCheck(cudaMemcpy(r, d_result, sizeof(r), cudaMemcpyDeviceToHost));
    cudaCheck(cudaFree(d_result));
    if (r[2] != 0) return INFINITY;
    float diff, scale;
    memcpy(&diff, &r[0], sizeof(float));
    memcpy(&scale, &r[1], sizeof(float));
    return (double)diff / std::max((double)scale, 1e-30);
}

// median time of fn; slow versions get fewer calls (one untimed call sizes the count: 5 to 20)
template <typename F>
static double time_adaptive(F fn) {
    const double one = bench::time_ms(fn, 1, 1);
    const int reps = std::min(20, std::max(5, (int)(300.0 / std::max(one, 1e-3))));
    return bench::time_ms(fn, 2, reps);
}

struct LayerShape {
    const char* name;
    int C, OC;
    bool bias, gelu;
};

static const LayerShape k_layers[] = {
    {"qkv", 768, 2304, true, false},
    {"attproj", 768, 768, true, false},
    {"fc", 768, 3072, true, true},
    {"fcproj", 3072, 768, true, false},
    {"classifier", 768, 50304, false, false},
};

// out (N, OC) = inp @ W^T (+ beta * out) with plain cublasGemmEx, bf16 in, fp32 accumulate
static void cublas_forward(cublasHandle_t handle, bf16* out, const bf16* inp, const bf16* w, int N, int C, int OC,
                           float beta) {
    const float one = 1.0f;
    // row-major out (N, OC) is column-major out^T (OC, N) = W (C x OC column-major, transposed) @ inp^T
    cublasCheck(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, &one, w, CUDA_R_16BF, C, inp, CUDA_R_16BF,
                             C, &beta, out, CUDA_R_16BF, OC, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// forward on one of the model's shapes: cuBLAS, the engine and every hand-written version
static void bench_forward(cublasHandle_t handle, const LayerShape& s, int N, bool run_v5) {
    const int C = s.C, OC = s.OC;
    const size_t n_out = (size_t)N * OC;
    bf16* inp = bench::device_alloc<bf16>((size_t)N * C);
    bf16* w = bench::device_alloc<bf16>((size_t)OC * C);
    bf16* bias = bench::device_alloc<bf16>(OC);
    bf16* out = bench::device_alloc<bf16>(n_out);
    bf16* ref = bench::device_alloc<bf16>(n_out);
    fill_uniform(inp, (size_t)N * C, 11 + OC, 1.0f);
    fill_uniform(w, (size_t)OC * C, 12 + OC, 0.05f);
    fill_uniform(bias, OC, 13 + OC, 0.1f);
    const bf16* b = s.bias ? bias : NULL;
    // the reference: cuBLAS with beta = 1 over the broadcast bias (one rounding, like the kernels)
    broadcast_rows_kernel<<<2048, 256>>>(ref, b, n_out, OC);
    cudaCheckLast();
    cublas_forward(handle, ref, inp, w, N, C, OC, 1.0f);
    cudaCheck(cudaDeviceSynchronize());

    char kernel[128];
    snprintf(kernel, sizeof(kernel), "matmul forward %s %d->%d%s (N=%d)", s.name, C, OC, s.bias ? " +bias" : "", N);
    const double flops = 2.0 * N * (double)C * OC;
    const double ms_cublas = time_adaptive([&] { cublas_forward(handle, out, inp, w, N, C, OC, 0.0f); });
    bench::report_compute(kernel, "cuBLAS", -1.0, 0.0, ms_cublas, flops, ms_cublas, "cuBLAS");

    bench::poison(out, n_out);
    matmul_forward(out, NULL, inp, w, b, N, C, OC, 0);
    const double err_engine = device_rel_error(out, ref, n_out);
    const double ms_engine = time_adaptive([&] { matmul_forward(out, NULL, inp, w, b, N, C, OC, 0); });
    bench::report_compute(kernel, "engine (cuBLASLt)", err_engine, TOL_HAND, ms_engine, flops, ms_cublas, "cuBLAS");

    for (int vi = 0; vi < k_num_versions; vi++) {
        const HandVersion& v = k_versions[vi];
        if (!version_enabled(v, run_v5) || (!v.all_shapes && strcmp(s.name, "attproj") != 0)) continue;
        bench::poison(out, n_out);
        if (!v.launch(out, inp, w, b, N, OC, C)) {
            bench::report_compute(kernel, v.name, INFINITY, TOL_HAND, INFINITY, flops, ms_cublas, "cuBLAS");
            continue;
        }
        const double err = device_rel_error(out, ref, n_out);
        const double ms = time_adaptive([&] { v.launch(out, inp, w, b, N, OC, C); });
        bench::report_compute(kernel, v.name, err, TOL_HAND, ms, flops, ms_cublas, "cuBLAS");
    }
    cudaCheck(cudaFree(inp)); cudaCheck(cudaFree(w)); cudaCheck(cudaFree(bias)); cudaCheck(cudaFree(out));
    cudaCheck(cudaFree(ref));
}

// forward + backward of one layer: cuBLAS plain (3 products) vs the engine's path
static void bench_layer(cublasHandle_t handle, const LayerShape& s, int N) {
    const int C = s.C, OC = s.OC;
    const size_t big = std::max((size_t)N * OC, (size_t)N * C);
    bf16* inp = bench::device_alloc<bf16>((size_t)N * C);
    bf16* w = bench::device_alloc<bf16>((size_t)OC * C);
    bf16* b = bench::device_alloc<bf16>(OC);
    bf16* out = bench::device_alloc<bf16>(big);
    bf16* pre = bench::device_alloc<bf16>(big);
    bf16* dout = bench::device_alloc<bf16>((size_t)N * OC);
    bf16* dinp = bench::device_alloc<bf16>((size_t)N * C);
    bf16* dw = bench::device_alloc<bf16>((size_t)OC * C);
    bf16* db = bench::device_alloc<bf16>(OC);
    float* scratch = bench::device_alloc<float>(column_sum_scratch_floats(N, OC));
    fill_uniform(inp, (size_t)N * C, 21, 1.0f);
    fill_uniform(w, (size_t)OC * C, 22, 0.05f);
    fill_uniform(b, OC, 23, 0.1f);
    fill_uniform(dout, (size_t)N * OC, 24, 1.0f);
    fill_uniform(pre, big, 25, 1.0f);
    cudaCheck(cudaMemset(dw, 0, (size_t)OC * C * sizeof(bf16)));
    cudaCheck(cudaMemset(db, 0, OC * sizeof(bf16)));
    const float one = 1.0f, zero = 0.0f;
    const cudaDataType_t t = CUDA_R_16BF;
    auto plain = [&] {
        cublas_forward(handle, out, inp, w, N, C, OC, 0.0f);
        // dinp^T (C, N) = W^T (C x OC column-major) @ dout^T
        cublasCheck(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, &one, w, t, C, dout, t, OC, &zero, dinp,
                                 t, C, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        // dW^T (C, OC) += inp^T @ dout
        cublasCheck(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, &one, inp, t, C, dout, t, OC, &one, dw, t,
                                 C, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    };
    auto engine = [&] {
        matmul_forward(out, s.gelu ? pre : NULL, inp, w, s.bias ? b : NULL, N, C, OC, 0);
        matmul_backward(dinp, dw, s.bias ? db : NULL, dout, inp, w, NULL, scratch, N, C, OC, 0);
    };
    char kernel[128];
    snprintf(kernel, sizeof(kernel), "matmul fwd+bwd %s %d->%d%s (N=%d)", s.name, C, OC,
             s.gelu ? " +bias,gelu" : (s.bias ? " +bias" : ""), N);
    const double flops = 3.0 * 2.0 * N * (double)C * OC;
    const double ms_plain = time_adaptive(plain), ms_engine = time_adaptive(engine);
    bench::report_compute(kernel, "cuBLAS plain", -1.0, 0.0, ms_plain, flops, ms_plain, "cuBLAS");
    bench::report_compute(kernel, "engine (cuBLASLt)", -1.0, 0.0, ms_engine, flops, ms_plain, "cuBLAS");
    cudaCheck(cudaFree(inp)); cudaCheck(cudaFree(w)); cudaCheck(cudaFree(b)); cudaCheck(cudaFree(out));
    cudaCheck(cudaFree(pre)); cudaCheck(cudaFree(dout)); cudaCheck(cudaFree(dinp)); cudaCheck(cudaFree(dw));
    cudaCheck(cudaFree(db)); cudaCheck(cudaFree(scratch));
}

#endif  // !LLMC_FP32

// ================================================================================================

int main(int argc, char** argv) {
    [[maybe_unused]] bool run_v5 = true;  // (the fp32 build has no v5)
    const char* usage = "usage: matmul [--no-v5] [--skip SUBSTR]...\n"
                        "  --no-v5        skip the wgmma versions (v5) even in an sm_90a build\n"
                        "  --skip SUBSTR  skip the hand-written versions whose name contains SUBSTR\n";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--no-v5") == 0) {
            run_v5 = false;
        } else if (strcmp(argv[i], "--skip") == 0 && i + 1 < argc) {
#ifndef LLMC_FP32
            g_skip.push_back(argv[i + 1]);
#endif
            i++;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("%s", usage);
            return 0;
        } else {
            fprintf(stderr, "matmul: bad argument '%s'\n%s", argv[i], usage);
            return 1;
        }
    }
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    printf("matmul: %s storage, %s (%d SMs)\n", LLMC_PRECISION_NAME, prop.name, prop.multiProcessorCount);
    matmul_init();
    check_layer(512, 256, 768, false, false);
    check_layer(512, 256, 1024, true, false);  // fc: GELU forward epilogue
    check_layer(512, 1024, 256, false, true);  // fcproj: dGELU on its input's gradient
    report_small_call_cost();
#ifndef LLMC_FP32
    g_wgmma_compiled = wgmma_compiled();
    if (!g_wgmma_compiled) {
        printf("v5 (wgmma) skipped: this build has no sm_90a code (-gencode arch=compute_90a,code=sm_90a)\n");
    } else if (!run_v5) {
        printf("v5 (wgmma) skipped: --no-v5\n");
    }
    for (int vi = 0; vi < k_num_versions; vi++) {
        if (version_enabled(k_versions[vi], run_v5)) check_hand_version(k_versions[vi], vi);
    }
    cublasHandle_t handle;
    cublasCheck(cublasCreate(&handle));
    const int N = 65536;  // B*T = 64 * 1024
    for (const LayerShape& s : k_layers) bench_forward(handle, s, N, run_v5);
    for (const LayerShape& s : k_layers) bench_layer(handle, s, N);
    cublasCheck(cublasDestroy(handle));
#else
    printf("fp32 build: the hand-written versions are bf16 kernels and the timings use bf16; both skipped\n");
#endif
    matmul_free();
    return bench::finish();
}
