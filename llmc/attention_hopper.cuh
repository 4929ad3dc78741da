/*
Causal flash attention on Hopper's warpgroup tensor cores (wgmma, sm_90a): forward.

Computes exactly what llmc/attention.cuh documents (same layouts: qkv (B, T, 3C), out (B, T, C),
lse (B, H, T) fp32 = each query row's log-sum-exp of its scaled scores), for head sizes 64 and 128,
bf16 in and out, fp32 accumulation. The mma.sync kernels there are FlashAttention-2 at warp level;
these issue the same two products per key tile as whole-warpgroup wgmma instructions
(llmc/wgmma.cuh), which is how Hopper's tensor cores reach their full rate:
    S = Q K^T     both operands read by the tensor cores straight from swizzled shared memory
                  (no ldmatrix, no fragments of Q or K in registers), 64 rows x BN keys per
                  warpgroup per tile;
    O += P V      P comes from registers: the fp32 S accumulators, exponentiated in place and
                  rounded to bf16 in pairs, already have the layout of wgmma's register A operand,
                  so P never goes through shared memory; V is read as an MN-major ("transposed")
                  operand, so it is stored as it arrives, row by row.
The online softmax between the two is FlashAttention-2's, in fp32 registers, on exp2 of
log2(e)-prescaled scores. A thread holds 2 rows x BN/4 scores; the 4 threads sharing a row combine
their max and sum with two shuffles.

Block: NWG warpgroups, each owning 64 query rows (the block owns BM = 64 NWG rows), all of them
copying tiles (cp.async, 16 bytes per thread per copy) into a ring of STAGES shared-memory stages
of K and V, STAGES - 1 tiles ahead of the math; one __syncthreads per key tile both publishes a
landed stage and retires the stage the next copy overwrites. Causal: key tiles past the block's last
row are never loaded, a warpgroup skips tiles entirely past its rows, and only tiles crossing its
diagonal are masked. Blocks are launched heaviest (last query rows) first.

Shared-memory layout: tiles of 64-column panels with the 128-byte swizzle (llmc/wgmma.cuh), Q
(BM rows) then STAGES x (K tile, V tile) of BN rows each. Any T >= 1: rows past T are zero-filled
on load and never written.

Three kernels: fah_forward_kernel, one product after the other (any number of warpgroups a
block); fah_forward_pipelined_kernel (one warpgroup a block), which overlaps the exponentials of
one tile with the P V product of the one before, as FlashAttention-3 does; its TMA option has the
Tensor Memory Accelerator copy the tiles (one thread issues a bulk tensor copy per 64-column
panel, a per-stage mbarrier counts the bytes in), which takes the copies' instructions off the
warpgroup; and fah_forward_ws_kernel, the production kernel: FlashAttention-3's warp-specialized
structure (a producer warpgroup issuing the TMA copies, two consumer warpgroups running the
pipelined loop on shared 128-key tiles, full/empty mbarriers instead of block barriers), made
persistent. Measured on an H200 (dev/cuda/attention.cu, 2026-11-24), forward at GPT-2 124M shapes
(B*H = 768, T = 1024, HS = 64): mma.sync flash kernels 0.43 ms; here 2 warpgroups a block 0.47 ms
(they wait for each other at every tile), 1 warpgroup 0.37 ms (three independent blocks
interleave on a multiprocessor), pipelined with 64-key tiles and 4 stages 0.357 ms, the same with
TMA copies 0.310-0.321 ms; the warp-specialized one 0.313 ms; cuDNN 0.33-0.34 ms in the same runs.
At HS = 128 (B*H = 384) the one-warpgroup kernels were stuck at 0.35 ms (cuDNN 0.23): a warpgroup
holding 64 rows of O and of S at HS = 128 leaves registers for two blocks a multiprocessor, and
each copies its own K/V tiles. The warp-specialized kernel gives the consumers 232 registers and
one copy of each tile for 128 rows: 0.289 ms with a block per item, 0.254 ms persistent; at
T = 4096, HS = 64: 1.003 ms against 1.046 (cuDNN 0.918). Tried and dropped: a quarter or half of
the softmax's exponentials from a degree-3 polynomial on the FMA pipe instead of the MUFU unit
(fused_classifier.cuh's cls4_ex2_poly): 0.427 / 0.507 ms against 0.355, so these kernels are bound
by instruction issue, not by MUFU; FlashAttention-3's ping-pong (the two consumers taking turns at
the tensor cores through named barriers): no gain here (0.254 ms at HS = 128, 0.322 at HS = 64).
*/
// llmc/attention.cuh includes this file (after its own kernels, before the dispatchers that pick
// these kernels when the program carries sm_90a code); the include guard comes after that include
// so that either header may be included first.
#include <cuda.h>          // CUtensorMap (the TMA kernel)
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled: reached through the runtime, no libcuda link

#include "llmc/attention.cuh"
#include "llmc/bulk_copy.cuh"
#include "llmc/wgmma.cuh"

#ifndef LLMC_ATTENTION_HOPPER_CUH
#define LLMC_ATTENTION_HOPPER_CUH

// Starts the copy (cp.async, one commit group is closed by the caller) of rows [row0, row0 + ROWS)
// of one head's slice into the swizzled tile at shared address dst: HS / 64 panels of ROWS rows of
// 128 bytes, 16-byte chunk c of row r at chunk c ^ (r % 8). src points at (row 0, column 0) of the
// slice, ld is the global row stride in elements; rows at or past T are zero-filled.
template <int ROWS, int HS, int NT>
__device__ __forceinline__ void fah_load_tile(uint32_t dst, const fa_bf16* src, size_t ld, int row0, int T) {
    constexpr int CPR = HS / 8;  // 16-byte chunks per row
    constexpr int CHUNKS = ROWS * CPR;
#pragma unroll
    for (int it = 0; it < (CHUNKS + NT - 1) / NT; it++) {
        const int idx = it * NT + (int)threadIdx.x;
        if (CHUNKS % NT == 0 || idx < CHUNKS) {
            const int r = idx / CPR, c = idx % CPR;
            const int row = row0 + r;
            const bool valid = row < T;
            const uint32_t panel = (uint32_t)(c / 8) * ROWS * 128;
            fa_cp_async16(dst + panel + r * 128 + (((c % 8) ^ (r & 7)) << 4), src + (size_t)(valid ? row : 0) * ld + c * 8,
                          valid);
        }
    }
}

template <int HS, int NWG, int BN, int STAGES>
static constexpr size_t fah_forward_smem() {
    return 1024 + (size_t)(64 * NWG + 2 * STAGES * BN) * HS * sizeof(fa_bf16);  // + 1024: alignment slack
}

#ifdef LLMC_WGMMA
// The steps of one key tile for one warpgroup (64 query rows, first row row_lo), shared by both
// forward kernels. q_s: the block's Q tile (BM rows); k_st / v_st: the stage holding the key tile.

// Issues acc (64 x N) = A B^T as HS / 16 wgmmas over the head dimension (the caller commits and
// waits): A = the 64 rows of warpgroup wg in a tile of AROWS rows at shared address a_s, B = the N
// rows of the tile at b_s, both HS wide and K-major. S = Q K^T here; S^T = K Q^T, dP^T = V dO^T,
// S = Q K^T and dP = dO V^T in the backward.
template <int HS, int AROWS, int N>
__device__ __forceinline__ void fah_issue_abt(float (&acc)[N / 2], uint32_t a_s, uint32_t b_s, int wg) {
#pragma unroll
    for (int kk = 0; kk < HS / 16; kk++) {
        const uint32_t a = a_s + (kk / 4) * AROWS * 128 + wg * 64 * 128 + (kk % 4) * 32;
        const uint32_t b = b_s + (kk / 4) * N * 128 + (kk % 4) * 32;
        wgmma_ss<N>(acc, wgmma_desc_kmajor(a), wgmma_desc_kmajor(b), kk > 0);
    }
}

// the same with Q from registers (qf: wgmma_a_frag_smem fragments of the warpgroup's Q rows)
template <int HS, int BN>
__device__ __forceinline__ void fah_issue_scores_qreg(float (&s)[BN / 2], const uint32_t (&qf)[HS / 16][4],
                                                      uint32_t k_st) {
#pragma unroll
    for (int kk = 0; kk < HS / 16; kk++)
        wgmma_rs_kmajor<BN>(s, qf[kk], wgmma_desc_kmajor(k_st + (kk / 4) * BN * 128 + (kk % 4) * 32), kk > 0);
}

// causal mask (keys j > row i to -inf) when the tile starting at key k0 crosses the diagonal
template <int BN>
__device__ __forceinline__ void fah_mask(float (&s)[BN / 2], int k0, int row_lo) {
    if (k0 + BN - 1 <= row_lo) return;
    const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int j = 0; j < BN / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int key = k0 + j * 8 + 2 * t + (e & 1);
            const int row = row_lo + warp * 16 + g + (e >> 1) * 8;
            if (key > row) s[4 * j + e] = -INFINITY;
        }
}

// Online softmax of one tile, per row (the 4 lanes t = 0..3 of a group share a row): updates the
// running max m (raw scores) and this lane's part of the sum l, exponentiates s in place and
// returns in corr the factor the accumulator rows must be scaled by.
template <int BN>
__device__ __forceinline__ void fah_softmax(float (&s)[BN / 2], float (&m)[2], float (&l)[2], float (&corr)[2],
                                            float sl2) {
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float mx = m[r];
#pragma unroll
        for (int j = 0; j < BN / 8; j++) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * r], s[4 * j + 2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mref = mx == -INFINITY ? 0.0f : mx * sl2;  // a row with no key yet stays at 0
        corr[r] = fa_exp2(m[r] * sl2 - mref);
        m[r] = mx;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < BN / 8; j++) {
            s[4 * j + 2 * r] = fa_exp2(fmaf(s[4 * j + 2 * r], sl2, -mref));
            s[4 * j + 2 * r + 1] = fa_exp2(fmaf(s[4 * j + 2 * r + 1], sl2, -mref));
            sum += s[4 * j + 2 * r] + s[4 * j + 2 * r + 1];
        }
        l[r] = l[r] * corr[r] + sum;
    }
}

template <int N>
__device__ __forceinline__ void fah_rescale(float (&acc)[N], const float (&corr)[2]) {
#pragma unroll
    for (int j = 0; j < N / 4; j++) {
        acc[4 * j] *= corr[0], acc[4 * j + 1] *= corr[0];
        acc[4 * j + 2] *= corr[1], acc[4 * j + 3] *= corr[1];
    }
}

// issues O += P V for a key tile (P as bf16 register fragments); the caller commits and waits
template <int HS, int BN>
__device__ __forceinline__ void fah_issue_pv(float (&o)[HS / 2], const uint32_t (&pa)[BN / 16][4], uint32_t v_st) {
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) wgmma_rs<HS>(o, pa[kk], wgmma_desc_mnmajor(v_st + kk * 16 * 128, BN * 128), 1);
}

// A warpgroup's rows before their first key tile: O = 0, running max -inf, sum 0; the scores are
// zeroed too, though each tile's first product overwrites them (accumulate = 0): see the backward's
// note on ptxas and accumulators written in place.
template <int HS, int BN>
__device__ __forceinline__ void fah_rows_init(float (&o)[HS / 2], float (&s)[BN / 2], float (&m)[2], float (&l)[2]) {
#pragma unroll
    for (int i = 0; i < HS / 2; i++) o[i] = 0.0f;
#pragma unroll
    for (int i = 0; i < BN / 2; i++) s[i] = 0.0f;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.0f;
}

// The pipelined loop (FlashAttention-3's intra-warpgroup overlap) in three steps, shared by the
// pipelined and the warp-specialized kernels. One warpgroup's 64 rows: o, the running max m and
// sum l, s the scores of the tile in hand, pa P of the tile whose P V product is next. issue(s)
// issues the wgmmas of S = Q K^T for a tile (the caller's Q and K). First tile: S, softmax, P.
template <int BN, class Issue>
__device__ __forceinline__ void fah_pipe_first(float (&s)[BN / 2], uint32_t (&pa)[BN / 16][4], float (&m)[2],
                                               float (&l)[2], float (&corr)[2], Issue issue, int row_lo, float sl2) {
    wgmma_fence();
    issue(s);
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_pin_all(s);
    fah_mask<BN>(s, 0, row_lo);
    fah_softmax<BN>(s, m, l, corr, sl2);
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) wgmma_a_frag(pa[kk], s, kk);
}

// S of the next tile (first key k0_next) in flight while O += P V of this one runs (v_st: this
// tile's V); the next tile's softmax as soon as its scores land; O rescaled once P V is done; P of
// the next tile. When it returns, this tile's K and V are no longer read.
template <int HS, int BN, class Issue>
__device__ __forceinline__ void fah_pipe_step(float (&o)[HS / 2], float (&s)[BN / 2], uint32_t (&pa)[BN / 16][4],
                                              float (&m)[2], float (&l)[2], float (&corr)[2], Issue issue,
                                              uint32_t v_st, int k0_next, int row_lo, float sl2) {
    wgmma_fence();
    issue(s);
    wgmma_commit();
    fah_issue_pv<HS, BN>(o, pa, v_st);
    wgmma_commit();
    wgmma_wait<1>();  // S of the next tile landed; P V may still run
    wgmma_pin_all(s);
    fah_mask<BN>(s, k0_next, row_lo);
    fah_softmax<BN>(s, m, l, corr, sl2);
    wgmma_wait<0>();
    wgmma_pin_all(o);
    fah_rescale<HS / 2>(o, corr);
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) wgmma_a_frag(pa[kk], s, kk);
}

// the last tile's O += P V
template <int HS, int BN>
__device__ __forceinline__ void fah_pipe_last(float (&o)[HS / 2], const uint32_t (&pa)[BN / 16][4], uint32_t v_st) {
    wgmma_fence();
    fah_issue_pv<HS, BN>(o, pa, v_st);
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_pin_all(o);
}

// out rows (normalized by the row sums) and lse of one warpgroup's 64 rows
template <int HS>
__device__ __forceinline__ void fah_store(fa_bf16* out, float* lse, const float (&o)[HS / 2], const float (&m)[2],
                                          const float (&l)[2], int b, int bh, int h, int row_lo, int T, int C,
                                          float scale) {
    const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float lr = l[r];
        lr += __shfl_xor_sync(0xffffffffu, lr, 1);
        lr += __shfl_xor_sync(0xffffffffu, lr, 2);
        const int i = row_lo + warp * 16 + g + r * 8;
        if (i < T) {
            const float inv = 1.0f / lr;
            fa_bf16* orow = out + ((size_t)b * T + i) * C + (size_t)h * HS;
#pragma unroll
            for (int j = 0; j < HS / 8; j++)
                *reinterpret_cast<uint32_t*>(orow + j * 8 + 2 * t) =
                    wgmma_pack_bf16(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv);
            if (t == 0) lse[(size_t)bh * T + i] = m[r] * scale + logf(lr);
        }
    }
}
#endif  // LLMC_WGMMA

// ---- TMA (Tensor Memory Accelerator) copies, used by the pipelined forward and the backward ----
// One thread issues one bulk tensor copy per 64-column x 64-row box of a tile
// (cp.async.bulk.tensor, which writes the 128-byte-swizzled layout wgmma reads); the copies signal
// an mbarrier with their byte count, and the other threads only wait on it: no thread spends
// instructions on addresses, cp.async or the proxy fence per tile. qkv (and dout) are seen as 2-D
// tensors (B T rows, 3C or C columns): tile rows past a sequence's T read the next sequence's
// rows (finite values that the causal mask zeroes: their keys are after every valid query, their
// queries are never stored) or, past the tensor, zeros.

// one thread initializes n mbarriers (arrival count 1) at bar0, bar0 + 8, ...; the caller then
// synchronizes the block before anyone uses them (the mbarrier helpers: llmc/bulk_copy.cuh)
__device__ __forceinline__ void fah_mbar_init_all(uint32_t bar0, int n) {
    for (int i = 0; i < n; i++) mbar_init(bar0 + 8 * i, 1);
    mbar_init_fence();
}
// box (64 columns x the map's rows) at (column c0, row c1) of the tensor behind map -> dst
__device__ __forceinline__ void fah_tma_load(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
            dst),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
}

// TMA copies of rows [row0, row0 + ROWS) of columns [col0, col0 + HS) of the tensor behind map (boxes
// of 64 columns x 64 rows) into the swizzled tile at dst, signalling bar
template <int ROWS, int HS>
__device__ __forceinline__ void fah_tma_tile(uint32_t dst, const CUtensorMap* map, int col0, int row0, uint32_t bar) {
#pragma unroll
    for (int p = 0; p < HS / 64; p++)
#pragma unroll
        for (int rb = 0; rb < ROWS / 64; rb++)
            fah_tma_load(dst + p * ROWS * 128 + rb * 64 * 128, map, col0 + p * 64, row0 + rb * 64, bar);
}

// TMA copies of the K and V rows [row, row + BN) of head h (map_kv: qkv with BN-row boxes, C = H HS)
// into a stage: K at k_dst, V right after it, both signalling bar
template <int BN, int HS>
__device__ __forceinline__ void fah_tma_kv(uint32_t k_dst, const CUtensorMap* map_kv, int C, int h, int row,
                                           uint32_t bar) {
#pragma unroll
    for (int p = 0; p < HS / 64; p++) {
        fah_tma_load(k_dst + p * BN * 128, map_kv, C + h * HS + p * 64, row, bar);
        fah_tma_load(k_dst + BN * HS * 2 + p * BN * 128, map_kv, 2 * C + h * HS + p * 64, row, bar);
    }
}

// A 2-D TMA descriptor of a row-major bf16 tensor (rows x cols, e.g. qkv: B T rows of 3C) with
// 64-column x box_rows boxes and the 128-byte swizzle.
static CUtensorMap fah_tensor_map(const fa_bf16* base, size_t cols, size_t rows, int box_rows) {
    static PFN_cuTensorMapEncodeTiled_v12000 encode = NULL;
    if (encode == NULL) {
        cudaDriverEntryPointQueryResult found;
        cudaCheck(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", reinterpret_cast<void**>(&encode), 12000,
                                                   cudaEnableDefault, &found));
        if (found != cudaDriverEntryPointSuccess || encode == NULL) {
            fprintf(stderr, "attention: cuTensorMapEncodeTiled not found in the driver\n");
            exit(1);
        }
    }
    CUtensorMap map;
    const cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows};
    const cuuint64_t strides[1] = {(cuuint64_t)cols * sizeof(fa_bf16)};
    const cuuint32_t box[2] = {64, (cuuint32_t)box_rows};
    const cuuint32_t elem_strides[2] = {1, 1};
    const CUresult r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<fa_bf16*>(base), dims, strides, box,
                              elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                              CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
        fprintf(stderr, "attention: cuTensorMapEncodeTiled failed (%d)\n", (int)r);
        exit(1);
    }
    return map;
}

// TMA needs 16-byte-aligned bases and row strides; the engine's activations always have them
static inline bool fah_tma_aligned(const void* p, size_t row_bytes) { return (uintptr_t)p % 16 == 0 && row_bytes % 16 == 0; }

// The straightforward version: per key tile, S = Q K^T, wait, softmax, O += P V, wait. While one
// warpgroup exponentiates, only the other warpgroups on the SM keep the tensor cores busy.
// grid (ceil(T / (64 NWG)), B * H), block 128 NWG threads; dynamic smem fah_forward_smem<...>()
template <int HS, int NWG, int BN, int STAGES>
__global__ void __launch_bounds__(NWG * 128) fah_forward_kernel(fa_bf16* out, float* lse, const fa_bf16* qkv, int T,
                                                                 int H, float scale) {
#ifdef LLMC_WGMMA
    static_assert(HS % 64 == 0 && BN % 64 == 0 && STAGES >= 2, "64-column panels, 64-key multiples");
    constexpr int BM = 64 * NWG, NT = 128 * NWG;
    constexpr uint32_t Q_BYTES = BM * HS * 2, KV_BYTES = BN * HS * 2;
    extern __shared__ __align__(16) unsigned char fah_smem[];
    const uint32_t q_s = (wgmma_smem_u32(fah_smem) + 1023u) & ~1023u;  // the swizzle repeats every 1024 bytes
    const uint32_t kv_s = q_s + Q_BYTES;  // stage st: K at kv_s + 2 st KV_BYTES, V after it

    const int C = H * HS;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * BM;  // heaviest blocks first
    const size_t ld = 3 * (size_t)C;
    const fa_bf16* qg = qkv + (size_t)b * T * ld + (size_t)h * HS;
    const fa_bf16* kg = qg + C;
    const fa_bf16* vg = qg + 2 * C;
    const int wg = threadIdx.x / 128;
    const int row_lo = q0 + wg * 64;                 // the warpgroup's first row
    const int nkb = (min(q0 + BM, T) - 1) / BN + 1;  // causal: key tiles up to the block's last row
    const float sl2 = scale * FA_LOG2E;

    fah_load_tile<BM, HS, NT>(q_s, qg, ld, q0, T);
#pragma unroll
    for (int st = 0; st < STAGES - 1; st++) {  // commit group st holds tile st (group 0 also Q)
        if (st < nkb) {
            fah_load_tile<BN, HS, NT>(kv_s + 2 * st * KV_BYTES, kg, ld, st * BN, T);
            fah_load_tile<BN, HS, NT>(kv_s + (2 * st + 1) * KV_BYTES, vg, ld, st * BN, T);
        }
        fa_cp_async_commit();
    }

    float o[HS / 2], s[BN / 2], m[2], l[2], corr[2];
    fah_rows_init<HS, BN>(o, s, m, l);

    for (int kb = 0; kb < nkb; kb++) {
        fa_cp_async_wait<STAGES - 2>();  // this thread's copies of tile kb landed
        fence_proxy_async();             // ... visible to the tensor cores' (async proxy) reads
        __syncthreads();                 // everyone's copies landed; stage (kb - 1) % STAGES is free
        const int next = kb + STAGES - 1;
        if (next < nkb) {
            const uint32_t st = kv_s + 2 * (next % STAGES) * KV_BYTES;
            fah_load_tile<BN, HS, NT>(st, kg, ld, next * BN, T);
            fah_load_tile<BN, HS, NT>(st + KV_BYTES, vg, ld, next * BN, T);
        }
        fa_cp_async_commit();  // possibly empty: keeps one group per tile for the wait above

        const int k0 = kb * BN;
        if (k0 > row_lo + 63 || row_lo >= T) continue;  // every key is after this warpgroup's rows
        const uint32_t k_st = kv_s + 2 * (kb % STAGES) * KV_BYTES, v_st = k_st + KV_BYTES;

        wgmma_fence();
        fah_issue_abt<HS, BM, BN>(s, q_s, k_st, wg);
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_pin_all(s);
        fah_mask<BN>(s, k0, row_lo);
        fah_softmax<BN>(s, m, l, corr, sl2);
        fah_rescale<HS / 2>(o, corr);
        uint32_t pa[BN / 16][4];
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++) wgmma_a_frag(pa[kk], s, kk);
        wgmma_fence();
        fah_issue_pv<HS, BN>(o, pa, v_st);
        wgmma_commit();
        wgmma_wait<0>();
        wgmma_pin_all(o);
    }
    fa_cp_async_wait<0>();
    if (row_lo < T) fah_store<HS>(out, lse, o, m, l, b, bh, h, row_lo, T, C, scale);
#else
    (void)out, (void)lse, (void)qkv, (void)T, (void)H, (void)scale;
    __trap();
#endif
}

// The pipelined version (FlashAttention-3's intra-warpgroup overlap): while the tensor cores run
// O += P_kb V_kb, the warpgroup already has S_kb+1 = Q K_kb+1^T in flight and exponentiates it as
// soon as it lands; only the rescale of O waits for the P V product. QREG: Q is read into registers
// once (ldmatrix) and S = Q K^T takes it from there, so each tile reads only K and V from shared
// memory (else Q is re-read by the tensor cores every tile). TMA: the tiles come by TMA (map_q:
// 64-row boxes, map_kv: BN-row boxes of qkv), one mbarrier per stage, instead of every thread's
// cp.async (the maps are unused otherwise). Two score tiles are live, so K/V tile kb+1 must be
// resident while tile kb is still read: STAGES >= 3, tiles loaded STAGES - 1 ahead of the one
// being exponentiated. One warpgroup per block, and no wgmma under a branch (the last tile's P V
// is peeled off the loop): ptxas serializes every wgmma of a kernel that issues one on a path it
// cannot prove uniform across the warpgroup.
template <int HS, int BN, int STAGES, bool QREG, bool TMA>
__global__ void __launch_bounds__(128)
    fah_forward_pipelined_kernel(fa_bf16* out, float* lse, const fa_bf16* qkv, int T, int H, float scale,
                                 const __grid_constant__ CUtensorMap map_q, const __grid_constant__ CUtensorMap map_kv) {
#ifdef LLMC_WGMMA
    static_assert(HS % 64 == 0 && BN % 64 == 0 && STAGES >= 3, "64-column panels, 64-key multiples, 3 stages");
    constexpr int BM = 64, NT = 128;
    constexpr uint32_t Q_BYTES = BM * HS * 2, KV_BYTES = BN * HS * 2;
    extern __shared__ __align__(16) unsigned char fah_smem[];
    __shared__ __align__(8) uint64_t bars[STAGES + 1];  // TMA: one per stage, then Q's
    const uint32_t q_s = (wgmma_smem_u32(fah_smem) + 1023u) & ~1023u;
    const uint32_t kv_s = q_s + Q_BYTES;
    const uint32_t bar0 = wgmma_smem_u32(bars), q_bar = bar0 + 8 * STAGES;

    const int C = H * HS;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * BM;
    const size_t ld = 3 * (size_t)C;
    const fa_bf16* qg = qkv + (size_t)b * T * ld + (size_t)h * HS;
    const fa_bf16* kg = qg + C;
    const fa_bf16* vg = qg + 2 * C;
    const int nkb = (min(q0 + BM, T) - 1) / BN + 1;
    const float sl2 = scale * FA_LOG2E;
    const bool producer = threadIdx.x == 0;
    auto k_stage = [&](int tile) { return kv_s + 2 * (tile % STAGES) * KV_BYTES; };
    auto load_kv = [&](int tile) {
        if constexpr (TMA) {
            if (producer) {
                const uint32_t bar = bar0 + 8 * (tile % STAGES);
                mbar_expect_tx(bar, 2 * KV_BYTES);
                fah_tma_kv<BN, HS>(k_stage(tile), &map_kv, C, h, b * T + tile * BN, bar);
            }
        } else {
            fah_load_tile<BN, HS, NT>(k_stage(tile), kg, ld, tile * BN, T);
            fah_load_tile<BN, HS, NT>(k_stage(tile) + KV_BYTES, vg, ld, tile * BN, T);
        }
    };

    if constexpr (TMA) {
        if (producer) fah_mbar_init_all(bar0, STAGES + 1);
        __syncthreads();
        if (producer) {
            mbar_expect_tx(q_bar, Q_BYTES);
            fah_tma_tile<BM, HS>(q_s, &map_q, h * HS, b * T + q0, q_bar);
            for (int tile = 0; tile < STAGES - 1 && tile < nkb; tile++) load_kv(tile);
        }
    } else {
        fah_load_tile<BM, HS, NT>(q_s, qg, ld, q0, T);
#pragma unroll
        for (int tile = 0; tile < STAGES - 1; tile++) {  // commit group `tile` (group 0 also holds Q)
            if (tile < nkb) load_kv(tile);
            fa_cp_async_commit();
        }
    }

    float o[HS / 2], s[BN / 2], m[2], l[2], corr[2];
    fah_rows_init<HS, BN>(o, s, m, l);
    uint32_t pa[BN / 16][4];  // P of the tile whose P V product is next

    // tile 0: S_0, softmax -> P_0
    if constexpr (TMA) {
        mbar_wait(q_bar, 0);
        mbar_wait(bar0, 0);
    } else {
        fa_cp_async_wait<STAGES - 2>();
        fence_proxy_async();
        __syncthreads();
    }
    uint32_t qf[QREG ? HS / 16 : 1][4];
    if constexpr (QREG) {
#pragma unroll
        for (int kk = 0; kk < HS / 16; kk++) wgmma_a_frag_smem(qf[kk], q_s + (kk / 4) * BM * 128, kk);
    }
    // S = Q K^T of the tile at k_st, Q from registers or shared memory
    auto scores_of = [&](uint32_t k_st) {
        return [&, k_st](float (&acc)[BN / 2]) {
            if constexpr (QREG) fah_issue_scores_qreg<HS, BN>(acc, qf, k_st);
            else fah_issue_abt<HS, BM, BN>(acc, q_s, k_st, 0);
        };
    };
    fah_pipe_first<BN>(s, pa, m, l, corr, scores_of(k_stage(0)), q0, sl2);

    for (int kb = 0; kb + 1 < nkb; kb++) {
        // tile kb + 1 must be visible; the stage of tile kb - 1 (its P V waited for) is free
        if constexpr (TMA) {
            mbar_wait(bar0 + 8 * ((kb + 1) % STAGES), ((kb + 1) / STAGES) & 1);
            __syncthreads();
            if (kb + STAGES - 1 < nkb) load_kv(kb + STAGES - 1);
        } else {
            fa_cp_async_wait<STAGES - 3>();
            fence_proxy_async();
            __syncthreads();
            if (kb + STAGES - 1 < nkb) load_kv(kb + STAGES - 1);
            fa_cp_async_commit();
        }
        fah_pipe_step<HS, BN>(o, s, pa, m, l, corr, scores_of(k_stage(kb + 1)), k_stage(kb) + KV_BYTES, (kb + 1) * BN,
                              q0, sl2);
    }
    fah_pipe_last<HS, BN>(o, pa, k_stage(nkb - 1) + KV_BYTES);
    if constexpr (!TMA) fa_cp_async_wait<0>();
    fah_store<HS>(out, lse, o, m, l, b, bh, h, q0, T, C, scale);
#else
    (void)out, (void)lse, (void)qkv, (void)T, (void)H, (void)scale, (void)map_q, (void)map_kv;
    __trap();
#endif
}

// The warp-specialized version (FlashAttention-3's structure), persistent. Block: 3 warpgroups.
// Warpgroup 0 is the producer: one of its threads takes work items (128 query rows of one head)
// from a global counter and issues the TMA copies of each item's Q (QBUF buffers) and of its K/V
// tiles into a ring of STAGES stages, waiting on a stage's "empty" mbarrier before refilling it;
// the warpgroup hands most of its registers to the others (setmaxnreg). Warpgroups 1 and 2 are
// consumers, 64 of the item's query rows each: they wait on a stage's "full" mbarrier, run the
// pipelined kernel's loop (S of the next tile in flight while P V of this one runs) and release
// the stage with one arrival each once its P V product is done. No __syncthreads in the loop: a
// consumer never waits for the other one, the two share every K/V tile (half the tile copies per
// query row of one-warpgroup blocks), and the producer fetches the next item's Q and first tiles
// while the consumers finish the last one (with one block per multiprocessor, a block per item
// would leave the tensor cores idle at every block's start and end).
// Items: head-major (the blocks running at one time share a few heads' K and V through L2),
// heaviest (last) query rows first within a head; taken dynamically, since their work ranges
// from 1 to T / 128 key tiles. The counter pair resets itself: the last block to finish zeroes it
// (one launch at a time per device, as on the engine's stream). Which block computes an item
// does not change its result.
// Both consumers run every key tile of every item (BN = 128 = their 128 rows; rows past T are
// computed on whatever the TMA brought and never stored), so the mbarrier counts never depend on T.
constexpr int FAH_WS_BN = 128;  // key tile = the item's query rows

// registers per thread at entry (__launch_bounds__(384, 1): ptxas needs the count at entry for
// setmaxnreg) and after the warpgroups trade: 40 + 2 x 232 = 3 x 168 (24 for the producer spills)
struct FahWsRegs {
    static constexpr int ENTRY = 168, PRODUCER = 40, CONSUMER = 232;
    static_assert(PRODUCER + 2 * CONSUMER <= 3 * ENTRY, "the warpgroups trade registers, the block gets no more");
};

// [0]: items handed out after each block's first, [1]: blocks finished
static __device__ int fah_ws_counters[2];

// grid (blocks <= items), block 384 threads; dynamic smem fah_forward_ws_smem<HS, STAGES, QBUF>()
template <int HS, int STAGES, int QBUF>
__global__ void __launch_bounds__(384, 1)
    fah_forward_ws_kernel(fa_bf16* out, float* lse, int T, int H, int items, float scale,
                          const __grid_constant__ CUtensorMap map_q, const __grid_constant__ CUtensorMap map_kv) {
#ifdef LLMC_WGMMA
    static_assert(HS % 64 == 0 && STAGES >= 2 && (QBUF == 1 || QBUF == 2), "64-column panels, 2 stages, 1-2 Q buffers");
    constexpr int BM = 128, BN = FAH_WS_BN;
    constexpr uint32_t Q_BYTES = BM * HS * 2, KV_BYTES = BN * HS * 2;
    extern __shared__ __align__(16) unsigned char fah_smem[];
    // "full" and "empty" per stage, then per Q buffer
    __shared__ __align__(8) uint64_t bars[2 * STAGES + 2 * QBUF];
    __shared__ int item_s[QBUF];  // the item in each Q buffer, -1: no more
    const uint32_t q_s = (wgmma_smem_u32(fah_smem) + 1023u) & ~1023u;  // Q buffer i at q_s + i Q_BYTES
    const uint32_t kv_s = q_s + QBUF * Q_BYTES;  // stage st: K at kv_s + 2 st KV_BYTES, V after it
    const uint32_t full0 = wgmma_smem_u32(bars), empty0 = full0 + 8 * STAGES;
    const uint32_t qfull0 = empty0 + 8 * STAGES, qempty0 = qfull0 + 8 * QBUF;
    const int C = H * HS;
    const int nqb = ceil_div(T, BM);  // items per head
    // the warpgroup through a shuffle: provably the same across each warp, so ptxas does not
    // serialize the wgmmas under the role branch
    const int wg = __shfl_sync(0xffffffffu, (int)threadIdx.x / 128, 0);
    auto k_stage = [&](int g) { return kv_s + 2 * (g % STAGES) * KV_BYTES; };  // g: tiles since the start

    if (threadIdx.x == 0) {
        for (int i = 0; i < STAGES; i++) mbar_init(full0 + 8 * i, 1), mbar_init(empty0 + 8 * i, 2);
        for (int i = 0; i < QBUF; i++) mbar_init(qfull0 + 8 * i, 1), mbar_init(qempty0 + 8 * i, 2);
        mbar_init_fence();
    }
    __syncthreads();

    if (wg == 0) {  // the producer
        setmaxnreg_dec<FahWsRegs::PRODUCER>();
        if (threadIdx.x == 0) {
            int item = blockIdx.x, g = 0;
            for (int n = 0;; n++) {
                const int qb = n % QBUF;
                if (n >= QBUF) mbar_wait(qempty0 + 8 * qb, (n / QBUF - 1) & 1);
                if (item >= items) {  // tell the consumers, who are waiting for the next Q
                    item_s[qb] = -1;
                    mbar_arrive(qfull0 + 8 * qb);
                    break;
                }
                item_s[qb] = item;  // published by the arrival below (release), read after the wait
                const int bh = item / nqb, b = bh / H, h = bh % H;
                const int q0 = (nqb - 1 - item % nqb) * BM;
                const int nkb = (min(q0 + BM, T) - 1) / BN + 1;
                mbar_expect_tx(qfull0 + 8 * qb, Q_BYTES);
                fah_tma_tile<BM, HS>(q_s + qb * Q_BYTES, &map_q, h * HS, b * T + q0, qfull0 + 8 * qb);
                for (int kb = 0; kb < nkb; kb++, g++) {
                    const int st = g % STAGES;
                    if (g >= STAGES) mbar_wait(empty0 + 8 * st, (g / STAGES - 1) & 1);
                    const uint32_t bar = full0 + 8 * st;
                    mbar_expect_tx(bar, 2 * KV_BYTES);
                    fah_tma_kv<BN, HS>(k_stage(g), &map_kv, C, h, b * T + kb * BN, bar);
                }
                item = gridDim.x + atomicAdd(&fah_ws_counters[0], 1);
            }
            if (atomicAdd(&fah_ws_counters[1], 1) == (int)gridDim.x - 1) {  // every block is past its last take
                fah_ws_counters[0] = 0;
                fah_ws_counters[1] = 0;
            }
        }
        return;
    }

    setmaxnreg_inc<FahWsRegs::CONSUMER>();
    const int c = wg - 1;  // consumer 0 or 1
    const float sl2 = scale * FA_LOG2E;
    int g = 0;
    for (int n = 0;; n++) {
        const int qb = n % QBUF;
        mbar_wait(qfull0 + 8 * qb, (n / QBUF) & 1);
        const int item = *reinterpret_cast<volatile int*>(&item_s[qb]);
        if (item < 0) break;
        const int bh = item / nqb, b = bh / H, h = bh % H;
        const int q0 = (nqb - 1 - item % nqb) * BM;
        const int nkb = (min(q0 + BM, T) - 1) / BN + 1;
        const int row_lo = q0 + 64 * c;
        const uint32_t q_cur = q_s + qb * Q_BYTES;

        float o[HS / 2], s[BN / 2], m[2], l[2], corr[2];
        fah_rows_init<HS, BN>(o, s, m, l);
        uint32_t pa[BN / 16][4];  // P of the tile whose P V product is next

        auto scores_of = [&](uint32_t k_st) {  // S = Q K^T of the tile at k_st for this consumer's rows
            return [&, k_st](float (&acc)[BN / 2]) { fah_issue_abt<HS, BM, BN>(acc, q_cur, k_st, c); };
        };
        mbar_wait(full0 + 8 * (g % STAGES), (g / STAGES) & 1);
        fah_pipe_first<BN>(s, pa, m, l, corr, scores_of(k_stage(g)), row_lo, sl2);
        for (int kb = 0; kb + 1 < nkb; kb++, g++) {
            mbar_wait(full0 + 8 * ((g + 1) % STAGES), ((g + 1) / STAGES) & 1);
            fah_pipe_step<HS, BN>(o, s, pa, m, l, corr, scores_of(k_stage(g + 1)), k_stage(g) + KV_BYTES,
                                  (kb + 1) * BN, row_lo, sl2);
            if (threadIdx.x % 128 == 0) mbar_arrive(empty0 + 8 * (g % STAGES));  // done with K and V of tile g
        }
        if (threadIdx.x % 128 == 0) mbar_arrive(qempty0 + 8 * qb);  // every S = Q K^T of the item is done
        fah_pipe_last<HS, BN>(o, pa, k_stage(g) + KV_BYTES);
        if (threadIdx.x % 128 == 0) mbar_arrive(empty0 + 8 * (g % STAGES));
        g++;
        if (row_lo < T) fah_store<HS>(out, lse, o, m, l, b, bh, h, row_lo, T, C, scale);
    }
#else
    (void)out, (void)lse, (void)T, (void)H, (void)items, (void)scale, (void)map_q, (void)map_kv;
    __trap();
#endif
}

// PIPELINED: fah_forward_pipelined_kernel (NWG must be 1), with Q in registers (QREG) and/or TMA
// copies (TMA: qkv must be 16-byte aligned with a row stride of a multiple of 16 bytes,
// fah_tma_aligned); else fah_forward_kernel.
template <int HS, int NWG, int BN, int STAGES, bool PIPELINED, bool QREG = false, bool TMA = false>
static void fah_forward(fa_bf16* out, float* lse, const fa_bf16* qkv, int B, int T, int H, cudaStream_t stream) {
    const size_t smem = fah_forward_smem<HS, NWG, BN, STAGES>();
    const float scale = 1.0f / sqrtf((float)HS);
    dim3 grid(ceil_div(T, 64 * NWG), B * H);
    if constexpr (PIPELINED) {
        static_assert(NWG == 1, "the pipelined kernel runs one warpgroup per block");
        auto kernel = fah_forward_pipelined_kernel<HS, BN, STAGES, QREG, TMA>;
        cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        CUtensorMap map_q = {}, map_kv = {};
        if (TMA) {
            const size_t cols = 3 * (size_t)H * HS, rows = (size_t)B * T;
            map_q = fah_tensor_map(qkv, cols, rows, 64);
            map_kv = fah_tensor_map(qkv, cols, rows, BN);
        }
        kernel<<<grid, 128, smem, stream>>>(out, lse, qkv, T, H, scale, map_q, map_kv);
    } else {
        auto kernel = fah_forward_kernel<HS, NWG, BN, STAGES>;
        static_assert(!QREG && !TMA, "QREG and TMA are options of the pipelined kernel");
        cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        kernel<<<grid, NWG * 128, smem, stream>>>(out, lse, qkv, T, H, scale);
    }
    cudaCheckLast();
}

template <int HS, int STAGES, int QBUF>
static constexpr size_t fah_forward_ws_smem() {
    return 1024 + (size_t)(128 * QBUF + 2 * STAGES * FAH_WS_BN) * HS * sizeof(fa_bf16);
}

// fah_forward_ws_kernel; qkv must pass fah_tma_aligned. PERSISTENT: one block per multiprocessor
// (else one per item, each taking one item)
template <int HS, int STAGES, int QBUF, bool PERSISTENT = true>
static void fah_forward_ws(fa_bf16* out, float* lse, const fa_bf16* qkv, int B, int T, int H, cudaStream_t stream) {
    const size_t smem = fah_forward_ws_smem<HS, STAGES, QBUF>();
    const float scale = 1.0f / sqrtf((float)HS);
    auto kernel = fah_forward_ws_kernel<HS, STAGES, QBUF>;
    static int sms = 0;
    if (sms == 0) {
        int device;
        cudaCheck(cudaGetDevice(&device));
        cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
        cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    }
    const int items = ceil_div(T, 128) * B * H;
    const size_t cols = 3 * (size_t)H * HS, rows = (size_t)B * T;
    const CUtensorMap map_q = fah_tensor_map(qkv, cols, rows, 64), map_kv = fah_tensor_map(qkv, cols, rows, FAH_WS_BN);
    kernel<<<PERSISTENT && sms < items ? sms : items, 384, smem, stream>>>(out, lse, T, H, items, scale, map_q, map_kv);
    cudaCheckLast();
}

// The production configuration per head size, chosen by timing in dev/cuda/attention.cu (H200,
// causal, 2026-11-24): the warp-specialized persistent kernel, with 6 stages and 2 Q buffers at
// HS = 64 (B*H = 768, T = 1024: 0.313 ms, the one-warpgroup TMA kernel 0.315, cuDNN 0.331;
// T = 4096: 1.003 against 1.046, cuDNN 0.918) and 3 stages and one Q buffer at HS = 128 (shared
// memory allows no more; B*H = 384: 0.254 ms, the one-warpgroup cp.async kernel 0.350, cuDNN
// 0.229). Without TMA alignment (never in the engine), the cp.async pipelined kernel.
template <int HS>
struct FahFwdConfig {
    static constexpr int STAGES = HS == 64 ? 6 : 3, QBUF = HS == 64 ? 2 : 1;
    static constexpr int FALLBACK_STAGES = HS == 64 ? 4 : 3;  // the cp.async kernel's, 64-key tiles
};

template <int HS>
static void fah_forward_hs(fa_bf16* out, float* lse, const fa_bf16* qkv, int B, int T, int H, cudaStream_t stream) {
    typedef FahFwdConfig<HS> Cfg;
    if (fah_tma_aligned(qkv, 3 * (size_t)H * HS * sizeof(fa_bf16))) {
        fah_forward_ws<HS, Cfg::STAGES, Cfg::QBUF>(out, lse, qkv, B, T, H, stream);
    } else {
        fah_forward<HS, 1, 64, Cfg::FALLBACK_STAGES, true>(out, lse, qkv, B, T, H, stream);
    }
}

#endif  // LLMC_ATTENTION_HOPPER_CUH
