/*
Causal flash attention on Hopper's warpgroup tensor cores (wgmma, sm_90a): backward.

Computes exactly what fa_backward in llmc/attention.cuh documents (same layouts; dqkv is written,
not added; lse from the forward, delta is the (B, H, T) fp32 scratch for D_i = dout_i . out_i),
for head sizes 64 and 128, bf16 in and out, fp32 accumulation, and like it deterministically: every
gradient element is written once by one thread after a loop in a fixed order, no atomics. Three
kernels, the first shared with the mma.sync backward:
  1. fa_backward_preprocess_kernel: D_i.
  2. fah_backward_dkdv_kernel: a block owns 64 NWG keys (64 per warpgroup, their K and V rows
     loaded once) and streams BQ-query tiles of Q, dO, lse and D from its diagonal to T. Per tile,
     per warpgroup (^T: keys are the accumulator rows, queries its columns):
        S^T  = K Q^T              wgmma, both operands K-major in shared memory
        dP^T = V dO^T             wgmma, issued right behind S^T so it runs during the exp
        P^T  = exp2(S^T scale log2e - lse log2e), 0 where key > query
        dV  += P^T dO             wgmma, P^T from registers, dO read MN-major ("transposed")
        dS^T = P^T (dP^T - D)
        dK  += dS^T Q             wgmma, dS^T from registers, Q read MN-major
     The same swizzled Q and dO tiles serve as K-major operands (for S^T, dP^T) and as MN-major
     ones (for dV, dK): nothing is transposed in memory.
  3. fah_backward_dq_kernel: a block owns 64 NWG query rows (their Q and dO rows loaded once),
     streams BK-key tiles of K and V up to its diagonal: S = Q K^T, dP = dO V^T (both K-major
     operands), P, dS = P (dP - D), dQ += dS K (dS from registers, K read MN-major).
dQ in its own kernel repeats S and dP (7 matrix products per tile pair instead of FlashAttention's
5) but needs no atomic adds into dQ, whose order would change the result from run to run.

Both loops use the forward's machinery (llmc/attention_hopper.cuh): 64-column panels with the
128-byte swizzle, TMA copies (or fah_load_tile's cp.async ones) into a ring of STAGES stages, one
__syncthreads per tile. The per-query fp32 lse and D of a query tile travel in the same ring (4-byte cp.async).
Causal: tiles past the diagonal are never loaded, a warpgroup skips tiles entirely masked for it,
and only tiles crossing its diagonal (or T) are masked. Any T >= 1: rows past T are zero-filled
on load and never written (their lse and D load as 0, and they are masked in the dk/dv kernel).

Why it is shaped this way (H200, B*H = 768, T = 1024, HS = 64, backward ms in dev/cuda/attention.cu,
2026-11-24; cuDNN's backward 1.15 in the same runs, our mma.sync one 1.48):
- Grids are (blocks per head, B*H): the blocks of one head run at about the same time, so the
  tiles they all stream (Q, dO or K, V of the head) come from DRAM about once and then from L2.
  With the head index fastest, every block re-read them from DRAM: 1.54 -> 1.40 ms.
- LAG in the dk/dv kernel (dK's product overlaps the next tile's barrier and S^T, dP^T): 1.40 ->
  1.21 ms; with 2 stages and no lag the loop is one long dependency chain per warpgroup. In the dq
  kernel it gains nothing (1.21 either way), nor do 4 stages (1.20-1.26).
- One warpgroup a block: 2 or 3 warpgroups share one barrier a tile and run in lockstep, so their
  exp and matrix phases overlap less than independent blocks' do: 1.23-1.32 ms. The dk/dv kernel
  needs 222 registers (2 blocks a multiprocessor), the dq kernel 157 (3 blocks).
- Holding the warpgroup's own rows (K, V or Q, dO) as register A operands (ldmatrix once, then
  register-A wgmma, less shared-memory traffic) was slower: 1.24-1.39 ms (more registers, fewer
  blocks). 128-row streamed tiles (twice the S, dP accumulators) were tried only before the grid
  and lag changes (dk/dv: 255 registers with spills, 3% faster than 64 there; dq: no change) and
  leave no registers for lag.
- ptxas serializes the wgmmas (C7515) when ordinary instructions write registers a wgmma
  accumulates into: accumulators are never zeroed or written in place (accumulate = 0 on the first
  product instead; P and dS get arrays of their own).
- TMA copies (FahCfg's TMA, as the forward): one thread issues each tile, an mbarrier per stage
  counts the bytes in; fewer registers and no per-thread copy work: 1.20 -> 1.12 ms.
Result (2026-11-24, one run of dev/cuda/attention): 1.12 ms against cuDNN's 1.14, forward +
backward 1.43 against 1.46 (102%); T = 2048: 2.11 vs 1.93, T = 4096: 3.89 vs 3.62; HS = 128
(B*H = 384): 1.18 vs 0.80 (FahBwdConfig<128>: 2 warpgroups a block, the registers allow no lag).
The 7 products (64 x 64 x 64 per tile pair, diagonal tiles whole) run at ~345 TFLOP/s, about 43%
of the bf16 matrix rate measured on this machine (the table counts FlashAttention's 5: ~230): the
chains S -> exp -> dV and dP -> dS -> dK of a warpgroup are serial, and the 2-3 warpgroups a
multiprocessor holds hide only part of them.
*/
#ifndef LLMC_ATTENTION_HOPPER_BWD_CUH
#define LLMC_ATTENTION_HOPPER_BWD_CUH

#include "llmc/attention_hopper.cuh"

// Launch configuration of one backward kernel: NWG warpgroups (each owning 64 rows: keys in
// dk/dv, queries in dq), streamed tiles of BT rows (queries in dk/dv, keys in dq), STAGES stages,
// MINB blocks per multiprocessor asked of the compiler (__launch_bounds__: caps the registers).
// LAG = 1: a tile's last product (dK += dS^T Q, dQ += dS K) is not waited for at the end of the
// tile but runs on behind the next tile's barrier and first products; the stage it reads is then
// refilled one tile later (prefetch distance STAGES - 2 instead of STAGES - 1).
// TMA = 1: the bf16 tiles come by TMA (one thread issues them, a per-stage mbarrier counts their
// bytes in; llmc/attention_hopper.cuh's forward does the same) instead of every thread's cp.async;
// the dk/dv kernel's fp32 lse and D rows still come by cp.async (plain shared loads read them).
// No per-thread address math or proxy fence per tile, and fewer registers (dk/dv 222 -> 188, dq
// 157 -> 124 at HS = 64): backward 1.20 -> 1.12 ms at GPT-2 shapes (top comment).
template <int NWG_, int BT_, int STAGES_, int MINB_ = 1, int LAG_ = 0, int TMA_ = 0>
struct FahCfg {
    static constexpr int NWG = NWG_, BT = BT_, STAGES = STAGES_, MINB = MINB_, LAG = LAG_, TMA = TMA_;
};

// 4-byte global -> shared copy (cp.async.ca), zero-filled when !valid
__device__ __forceinline__ void fah_cp_async4(uint32_t dst, const void* src, bool valid) {
    const int n = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}

// ---------------------------------------------------------------------------------------------
// dk, dv

template <int HS, class CFG>
static constexpr size_t fah_dkdv_smem() {
    return 1024 + (size_t)(2 * 64 * CFG::NWG + 2 * CFG::STAGES * CFG::BT) * HS * sizeof(fa_bf16) +
           2 * CFG::STAGES * CFG::BT * sizeof(float);
}

// grid (ceil(T / (64 NWG)), B * H), block 128 NWG threads; dynamic smem fah_dkdv_smem<HS, CFG>()
template <int HS, class CFG>
__global__ void __launch_bounds__(CFG::NWG * 128, CFG::MINB)
    fah_backward_dkdv_kernel(fa_bf16* dqkv, const float* delta, const fa_bf16* dout, const fa_bf16* qkv,
                             const float* lse, int T, int H, float scale, const __grid_constant__ CUtensorMap map_qkv,
                             const __grid_constant__ CUtensorMap map_do) {
#ifdef LLMC_WGMMA
    constexpr int NWG = CFG::NWG, BQ = CFG::BT, STAGES = CFG::STAGES, LAG = CFG::LAG;
    static_assert(HS % 64 == 0 && BQ % 64 == 0, "64-column panels, 64-query multiples");
    static_assert(STAGES >= 2 + LAG && (LAG == 0 || LAG == 1), "a stage for the tile in use, one per tile ahead");
    constexpr int AHEAD = STAGES - 1 - LAG;  // tiles in flight ahead of the one in use
    constexpr int BKEYS = 64 * NWG, NT = 128 * NWG;
    constexpr uint32_t KV_BYTES = BKEYS * HS * 2, T_BYTES = BQ * HS * 2;
    extern __shared__ __align__(16) unsigned char fah_smem[];
    const uint32_t base = wgmma_smem_u32(fah_smem);
    const uint32_t k_s = (base + 1023u) & ~1023u;  // the swizzle repeats every 1024 bytes
    const uint32_t v_s = k_s + KV_BYTES;
    const uint32_t qd_s = v_s + KV_BYTES;               // stage st: Q tile at qd_s + 2 st T_BYTES, dO after it
    const uint32_t ld_s = qd_s + 2 * STAGES * T_BYTES;  // stage st: BQ lse at ld_s + 8 st BQ, BQ D after them
    const float* ld_p = reinterpret_cast<const float*>(fah_smem + (ld_s - base));
    __shared__ __align__(8) uint64_t bars[STAGES + 1];  // TMA: one per stage, then K and V's
    const uint32_t bar0 = wgmma_smem_u32(bars), kv_bar = bar0 + 8 * STAGES;
    const bool producer = threadIdx.x == 0;

    const int C = H * HS;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int k0 = blockIdx.x * BKEYS;  // blocks of the first keys (the longest loops) first
    const size_t ld = 3 * (size_t)C;
    const fa_bf16* qg = qkv + (size_t)b * T * ld + (size_t)h * HS;
    const fa_bf16* dog = dout + (size_t)b * T * C + (size_t)h * HS;
    const float* lseg = lse + (size_t)bh * T;
    const float* dg = delta + (size_t)bh * T;
    const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int kw = k0 + wg * 64;  // the warpgroup's first key
    const int qt0 = k0 / BQ, nqt = (T + BQ - 1) / BQ - qt0;
    const float sl2 = scale * FA_LOG2E;

    // copies of query tile qt (Q, dO, lse, D) into stage st
    auto load_stage = [&](int st, int qt) {
        const int i0 = qt * BQ;
        const uint32_t q_st = qd_s + 2 * st * T_BYTES;
        if constexpr (CFG::TMA) {
            if (producer) {
                mbar_expect_tx(bar0 + 8 * st, 2 * T_BYTES);
                fah_tma_tile<BQ, HS>(q_st, &map_qkv, h * HS, b * T + i0, bar0 + 8 * st);
                fah_tma_tile<BQ, HS>(q_st + T_BYTES, &map_do, h * HS, b * T + i0, bar0 + 8 * st);
            }
        } else {
            fah_load_tile<BQ, HS, NT>(q_st, qg, ld, i0, T);
            fah_load_tile<BQ, HS, NT>(q_st + T_BYTES, dog, C, i0, T);
        }
        for (int idx = threadIdx.x; idx < 2 * BQ; idx += NT) {
            const int i = i0 + idx % BQ;
            const bool valid = i < T;
            fah_cp_async4(ld_s + (st * 2 * BQ + idx) * 4, (idx < BQ ? lseg : dg) + (valid ? i : 0), valid);
        }
    };

    if constexpr (CFG::TMA) {
        if (producer) fah_mbar_init_all(bar0, STAGES + 1);
        __syncthreads();
        if (producer) {
            mbar_expect_tx(kv_bar, 2 * KV_BYTES);
            fah_tma_tile<BKEYS, HS>(k_s, &map_qkv, C + h * HS, b * T + k0, kv_bar);
            fah_tma_tile<BKEYS, HS>(v_s, &map_qkv, 2 * C + h * HS, b * T + k0, kv_bar);
        }
    } else {
        fah_load_tile<BKEYS, HS, NT>(k_s, qg + C, ld, k0, T);
        fah_load_tile<BKEYS, HS, NT>(v_s, qg + 2 * C, ld, k0, T);
    }
#pragma unroll
    for (int st = 0; st < AHEAD; st++) {  // commit group st holds tile st (group 0 also K, V)
        if (st < nqt) load_stage(st, qt0 + st);
        fa_cp_async_commit();
    }

    // Accumulators are written by wgmma alone: the first product into each overwrites it (zeroing
    // them with ordinary instructions instead makes ptxas serialize the wgmmas when LAG = 1). A
    // warpgroup with keys before T computes at least its diagonal tile.
    float dk[HS / 2], dv[HS / 2], s[BQ / 2], dp[BQ / 2];
    int acc = 0;  // dK, dV hold a sum

    for (int it = 0; it < nqt; it++) {
        fa_cp_async_wait<AHEAD - 1>();  // this thread's copies of tile it landed
        if constexpr (CFG::TMA) {       // the tiles' bytes arrived (TMA writes through the async proxy)
            if (it == 0) mbar_wait(kv_bar, 0);
            mbar_wait(bar0 + 8 * (it % STAGES), (it / STAGES) & 1);
        } else {
            fence_proxy_async();  // cp.async's writes visible to the tensor cores' (async proxy) reads
        }
        // everyone's copies landed, and stage (it - 1 - LAG) % STAGES is free: every warpgroup
        // waited for its products of tile it - 1 (LAG = 0) or, in tile it - 1, for those of
        // tile it - 2 (LAG = 1)
        __syncthreads();
        const int next = it + AHEAD;
        if (next < nqt) load_stage(next % STAGES, qt0 + next);
        fa_cp_async_commit();  // possibly empty: keeps one group per tile for the wait above

        const int i0 = (qt0 + it) * BQ;
        if (i0 + BQ - 1 < kw || kw >= T) continue;  // every query of the tile is before this warpgroup's keys
        // (skipped tiles all come first: with LAG no product of an earlier tile is still running)
        const int st = it % STAGES;
        const uint32_t q_st = qd_s + 2 * st * T_BYTES, do_st = q_st + T_BYTES;
        const float* lse_st = ld_p + st * 2 * BQ;
        const float* d_st = lse_st + BQ;

        // S^T = K Q^T and dP^T = V dO^T (64 keys x BQ queries per warpgroup), two commit groups
        wgmma_fence();
        fah_issue_abt<HS, BKEYS, BQ>(s, k_s, q_st, wg);
        wgmma_commit();
        fah_issue_abt<HS, BKEYS, BQ>(dp, v_s, do_st, wg);
        wgmma_commit();
        wgmma_wait<1>();  // S^T (and the last tile's products) done, dP^T may still run
        wgmma_pin_all(s);

        // P^T, masked where key > query (and for queries past T) on tiles crossing the diagonal.
        // (P^T and dS^T get arrays of their own: registers that a wgmma accumulates into and that
        // other instructions also write make ptxas serialize the wgmmas.)
        const bool edge = i0 < kw + 63 || i0 + BQ > T;
        float pt[BQ / 2];
#pragma unroll
        for (int j = 0; j < BQ / 8; j++) {
            const float2 l = *reinterpret_cast<const float2*>(lse_st + 8 * j + 2 * t);
            const float nl[2] = {-l.x * FA_LOG2E, -l.y * FA_LOG2E};
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float p = fa_exp2(fmaf(s[4 * j + e], sl2, nl[e & 1]));
                if (edge) {
                    const int i = i0 + 8 * j + 2 * t + (e & 1);
                    const int key = kw + warp * 16 + g + (e >> 1) * 8;
                    if (key > i || i >= T) p = 0.0f;
                }
                pt[4 * j + e] = p;
            }
        }

        // dV += P^T dO, P^T from registers
        uint32_t pa[BQ / 16][4];
#pragma unroll
        for (int kk = 0; kk < BQ / 16; kk++) wgmma_a_frag(pa[kk], pt, kk);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BQ / 16; kk++)
            wgmma_rs<HS>(dv, pa[kk], wgmma_desc_mnmajor(do_st + kk * 16 * 128, BQ * 128), acc | kk);
        wgmma_commit();
        wgmma_wait<1>();  // dP^T done, dV may still run
        wgmma_pin_all(dp);

        // dS^T = P^T (dP^T - D), then dK += dS^T Q
        float dst[BQ / 2];
#pragma unroll
        for (int j = 0; j < BQ / 8; j++) {
            const float2 d = *reinterpret_cast<const float2*>(d_st + 8 * j + 2 * t);
#pragma unroll
            for (int e = 0; e < 4; e++) dst[4 * j + e] = pt[4 * j + e] * (dp[4 * j + e] - ((e & 1) ? d.y : d.x));
        }
        uint32_t da[BQ / 16][4];
#pragma unroll
        for (int kk = 0; kk < BQ / 16; kk++) wgmma_a_frag(da[kk], dst, kk);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BQ / 16; kk++)
            wgmma_rs<HS>(dk, da[kk], wgmma_desc_mnmajor(q_st + kk * 16 * 128, BQ * 128), acc | kk);
        wgmma_commit();
        acc = 1;
        if (LAG == 0) {
            wgmma_wait<0>();  // before the next barrier lets this stage be overwritten
            wgmma_pin_all(dk);
            wgmma_pin_all(dv);
        }
    }
    fa_cp_async_wait<0>();
    wgmma_wait<0>();
    wgmma_pin_all(dk);
    wgmma_pin_all(dv);

#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int j = kw + warp * 16 + g + r * 8;
        if (j < T) {
            fa_bf16* dkrow = dqkv + ((size_t)b * T + j) * ld + C + (size_t)h * HS;
            fa_bf16* dvrow = dkrow + C;
#pragma unroll
            for (int n = 0; n < HS / 8; n++) {
                *reinterpret_cast<uint32_t*>(dkrow + n * 8 + 2 * t) =
                    wgmma_pack_bf16(dk[4 * n + 2 * r] * scale, dk[4 * n + 2 * r + 1] * scale);
                *reinterpret_cast<uint32_t*>(dvrow + n * 8 + 2 * t) =
                    wgmma_pack_bf16(dv[4 * n + 2 * r], dv[4 * n + 2 * r + 1]);
            }
        }
    }
#else
    (void)dqkv, (void)delta, (void)dout, (void)qkv, (void)lse, (void)T, (void)H, (void)scale, (void)map_qkv, (void)map_do;
    __trap();
#endif
}

// ---------------------------------------------------------------------------------------------
// dq

template <int HS, class CFG>
static constexpr size_t fah_dq_smem() {
    return 1024 + (size_t)(2 * 64 * CFG::NWG + 2 * CFG::STAGES * CFG::BT) * HS * sizeof(fa_bf16);
}

// grid (ceil(T / (64 NWG)), B * H), block 128 NWG threads; dynamic smem fah_dq_smem<HS, CFG>()
template <int HS, class CFG>
__global__ void __launch_bounds__(CFG::NWG * 128, CFG::MINB)
    fah_backward_dq_kernel(fa_bf16* dqkv, const float* delta, const fa_bf16* dout, const fa_bf16* qkv,
                           const float* lse, int T, int H, float scale, const __grid_constant__ CUtensorMap map_qkv,
                           const __grid_constant__ CUtensorMap map_do) {
#ifdef LLMC_WGMMA
    constexpr int NWG = CFG::NWG, BK = CFG::BT, STAGES = CFG::STAGES, LAG = CFG::LAG;
    static_assert(HS % 64 == 0 && BK % 64 == 0, "64-column panels, 64-key multiples");
    static_assert(STAGES >= 2 + LAG && (LAG == 0 || LAG == 1), "a stage for the tile in use, one per tile ahead");
    constexpr int AHEAD = STAGES - 1 - LAG;  // tiles in flight ahead of the one in use
    constexpr int BM = 64 * NWG, NT = 128 * NWG;
    constexpr uint32_t Q_BYTES = BM * HS * 2, KV_BYTES = BK * HS * 2;
    extern __shared__ __align__(16) unsigned char fah_smem[];
    const uint32_t q_s = (wgmma_smem_u32(fah_smem) + 1023u) & ~1023u;
    const uint32_t do_s = q_s + Q_BYTES;
    const uint32_t kv_s = do_s + Q_BYTES;  // stage st: K at kv_s + 2 st KV_BYTES, V after it
    __shared__ __align__(8) uint64_t bars[STAGES + 1];  // TMA: one per stage, then Q and dO's
    const uint32_t bar0 = wgmma_smem_u32(bars), qd_bar = bar0 + 8 * STAGES;
    const bool producer = threadIdx.x == 0;

    const int C = H * HS;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * BM;  // blocks of the last rows (the longest loops) first
    const size_t ld = 3 * (size_t)C;
    const fa_bf16* qg = qkv + (size_t)b * T * ld + (size_t)h * HS;
    const fa_bf16* kg = qg + C;
    const fa_bf16* vg = qg + 2 * C;
    const fa_bf16* dog = dout + (size_t)b * T * C + (size_t)h * HS;
    const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int row_lo = q0 + wg * 64;                 // the warpgroup's first row
    const int nkb = (min(q0 + BM, T) - 1) / BK + 1;  // causal: key tiles up to the block's last row
    const float sl2 = scale * FA_LOG2E;

    float nl2[2], dd[2];  // -lse log2(e) and D of the thread's two rows
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int i = row_lo + warp * 16 + g + r * 8;
        nl2[r] = i < T ? -lse[(size_t)bh * T + i] * FA_LOG2E : 0.0f;
        dd[r] = i < T ? delta[(size_t)bh * T + i] : 0.0f;
    }

    auto load_kv = [&](int tile) {  // K, V tile `tile` into its stage
        const uint32_t st = kv_s + 2 * (tile % STAGES) * KV_BYTES;
        if constexpr (CFG::TMA) {
            if (producer) {
                const uint32_t bar = bar0 + 8 * (tile % STAGES);
                mbar_expect_tx(bar, 2 * KV_BYTES);
                fah_tma_tile<BK, HS>(st, &map_qkv, C + h * HS, b * T + tile * BK, bar);
                fah_tma_tile<BK, HS>(st + KV_BYTES, &map_qkv, 2 * C + h * HS, b * T + tile * BK, bar);
            }
        } else {
            fah_load_tile<BK, HS, NT>(st, kg, ld, tile * BK, T);
            fah_load_tile<BK, HS, NT>(st + KV_BYTES, vg, ld, tile * BK, T);
        }
    };
    if constexpr (CFG::TMA) {
        if (producer) fah_mbar_init_all(bar0, STAGES + 1);
        __syncthreads();
        if (producer) {
            mbar_expect_tx(qd_bar, 2 * Q_BYTES);
            fah_tma_tile<BM, HS>(q_s, &map_qkv, h * HS, b * T + q0, qd_bar);
            fah_tma_tile<BM, HS>(do_s, &map_do, h * HS, b * T + q0, qd_bar);
        }
    } else {
        fah_load_tile<BM, HS, NT>(q_s, qg, ld, q0, T);
        fah_load_tile<BM, HS, NT>(do_s, dog, C, q0, T);
    }
#pragma unroll
    for (int st = 0; st < AHEAD; st++) {  // commit group st holds tile st (group 0 also Q, dO)
        if (st < nkb) load_kv(st);
        fa_cp_async_commit();
    }

    // written by wgmma alone (see the dk/dv kernel); a warpgroup with rows before T computes tile 0
    float dq[HS / 2], s[BK / 2], dp[BK / 2];
    int acc = 0;  // dQ holds a sum

    for (int kb = 0; kb < nkb; kb++) {
        if constexpr (CFG::TMA) {
            if (kb == 0) mbar_wait(qd_bar, 0);
            mbar_wait(bar0 + 8 * (kb % STAGES), (kb / STAGES) & 1);
        } else {
            fa_cp_async_wait<AHEAD - 1>();
            fence_proxy_async();
        }
        __syncthreads();  // as in the dk/dv kernel
        const int next = kb + AHEAD;
        if (next < nkb) load_kv(next);
        fa_cp_async_commit();

        const int k0 = kb * BK;
        if (k0 > row_lo + 63 || row_lo >= T) {  // every key is after this warpgroup's rows
            if (LAG) wgmma_wait<0>();  // the last tile's dQ product reads a stage refilled next tile
            continue;
        }
        const uint32_t k_st = kv_s + 2 * (kb % STAGES) * KV_BYTES, v_st = k_st + KV_BYTES;

        // S = Q K^T and dP = dO V^T (64 rows x BK keys per warpgroup), two commit groups
        wgmma_fence();
        fah_issue_abt<HS, BM, BK>(s, q_s, k_st, wg);
        wgmma_commit();
        fah_issue_abt<HS, BM, BK>(dp, do_s, v_st, wg);
        wgmma_commit();
        wgmma_wait<1>();  // S (and the last tile's dQ product) done, dP may still run
        wgmma_pin_all(s);

        // P and dS in arrays of their own (see the dk/dv kernel)
        const bool diag = k0 + BK - 1 > row_lo;  // the tile crosses this warpgroup's diagonal
        float p[BK / 2];
#pragma unroll
        for (int j = 0; j < BK / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float v = fa_exp2(fmaf(s[4 * j + e], sl2, nl2[e >> 1]));
                if (diag && k0 + 8 * j + 2 * t + (e & 1) > row_lo + warp * 16 + g + (e >> 1) * 8) v = 0.0f;
                p[4 * j + e] = v;
            }
        wgmma_wait<0>();
        wgmma_pin_all(dp);
        float ds[BK / 2];
#pragma unroll
        for (int j = 0; j < BK / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) ds[4 * j + e] = p[4 * j + e] * (dp[4 * j + e] - dd[e >> 1]);

        // dQ += dS K, dS from registers
        uint32_t da[BK / 16][4];
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) wgmma_a_frag(da[kk], ds, kk);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++)
            wgmma_rs<HS>(dq, da[kk], wgmma_desc_mnmajor(k_st + kk * 16 * 128, BK * 128), acc | kk);
        wgmma_commit();
        acc = 1;
        if (LAG == 0) {
            wgmma_wait<0>();
            wgmma_pin_all(dq);
        }
    }
    fa_cp_async_wait<0>();
    wgmma_wait<0>();
    wgmma_pin_all(dq);

#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int i = row_lo + warp * 16 + g + r * 8;
        if (i < T) {
            fa_bf16* dqrow = dqkv + ((size_t)b * T + i) * ld + (size_t)h * HS;
#pragma unroll
            for (int n = 0; n < HS / 8; n++)
                *reinterpret_cast<uint32_t*>(dqrow + n * 8 + 2 * t) =
                    wgmma_pack_bf16(dq[4 * n + 2 * r] * scale, dq[4 * n + 2 * r + 1] * scale);
        }
    }
#else
    (void)dqkv, (void)delta, (void)dout, (void)qkv, (void)lse, (void)T, (void)H, (void)scale, (void)map_qkv, (void)map_do;
    __trap();
#endif
}

// ---------------------------------------------------------------------------------------------
// launcher

// The launch configurations per head size (dk/dv kernel, dq kernel), chosen by timing (top
// comment), all with TMA copies. HS = 64: one warpgroup a block, the dk/dv kernel with 3 stages
// and LAG (188 registers), the dq kernel double-buffered (124 registers). HS = 128: one
// warpgroup's dK and dV accumulators alone are 128 registers a thread; the dk/dv kernel with one
// warpgroup spills, with 2 it fits (233 registers; 255 with cp.async). Slower at HS = 128 (ms,
// 2026-11-24): the dq kernel with one warpgroup and LAG (1.28 against 1.17, cp.async), the dk/dv
// kernel with 3 stages and LAG plus that dq kernel (1.22 against 1.17, TMA: 252 registers).
template <int HS>
struct FahBwdConfig {
    typedef FahCfg<1, 64, 3, 1, 1, 1> Dkdv;
    typedef FahCfg<1, 64, 2, 1, 0, 1> Dq;
};
template <>
struct FahBwdConfig<128> {
    typedef FahCfg<2, 64, 2, 1, 0, 1> Dkdv;
    typedef FahCfg<2, 64, 2, 1, 0, 1> Dq;
};

// Same meaning as fa_backward (llmc/attention.cuh): dqkv (B, T, 3C) written, delta (B, H, T)
// scratch. KV, Q: FahCfg of the dk/dv and the dq kernel.
template <int HS, class KV, class Q>
static void fah_backward(fa_bf16* dqkv, float* delta, const fa_bf16* dout, const fa_bf16* out, const fa_bf16* qkv,
                         const float* lse, int B, int T, int H, cudaStream_t stream) {
    const float scale = 1.0f / sqrtf((float)HS);
    const size_t threads = (size_t)B * T * H * (HS / 8);
    fa_backward_preprocess_kernel<HS><<<(unsigned)ceil_div_sz(threads, 256), 256, 0, stream>>>(delta, dout, out, B, T, H);
    cudaCheckLast();
    const size_t smem_kv = fah_dkdv_smem<HS, KV>();
    cudaCheck(cudaFuncSetAttribute(fah_backward_dkdv_kernel<HS, KV>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   (int)smem_kv));
    // TMA descriptors of qkv and dout (64 x 64 boxes); unused (zero) by the cp.async configurations
    CUtensorMap map_qkv = {}, map_do = {};
    if (KV::TMA || Q::TMA) {
        map_qkv = fah_tensor_map(qkv, 3 * (size_t)H * HS, (size_t)B * T, 64);
        map_do = fah_tensor_map(dout, (size_t)H * HS, (size_t)B * T, 64);
    }
    fah_backward_dkdv_kernel<HS, KV><<<dim3(ceil_div(T, 64 * KV::NWG), B * H), KV::NWG * 128, smem_kv, stream>>>(
        dqkv, delta, dout, qkv, lse, T, H, scale, map_qkv, map_do);
    cudaCheckLast();
    const size_t smem_q = fah_dq_smem<HS, Q>();
    cudaCheck(cudaFuncSetAttribute(fah_backward_dq_kernel<HS, Q>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   (int)smem_q));
    fah_backward_dq_kernel<HS, Q><<<dim3(ceil_div(T, 64 * Q::NWG), B * H), Q::NWG * 128, smem_q, stream>>>(
        dqkv, delta, dout, qkv, lse, T, H, scale, map_qkv, map_do);
    cudaCheckLast();
}

// the same configuration with cp.async copies (for tensors TMA cannot address)
template <class CFG>
using FahCfgCpAsync = FahCfg<CFG::NWG, CFG::BT, CFG::STAGES, CFG::MINB, CFG::LAG, 0>;

// the production configuration of head size HS
template <int HS>
static void fah_backward_hs(fa_bf16* dqkv, float* delta, const fa_bf16* dout, const fa_bf16* out, const fa_bf16* qkv,
                            const float* lse, int B, int T, int H, cudaStream_t stream) {
    typedef typename FahBwdConfig<HS>::Dkdv KV;
    typedef typename FahBwdConfig<HS>::Dq Q;
    const size_t C = (size_t)H * HS;
    if (fah_tma_aligned(qkv, 3 * C * sizeof(fa_bf16)) && fah_tma_aligned(dout, C * sizeof(fa_bf16))) {
        fah_backward<HS, KV, Q>(dqkv, delta, dout, out, qkv, lse, B, T, H, stream);
    } else {
        fah_backward<HS, FahCfgCpAsync<KV>, FahCfgCpAsync<Q>>(dqkv, delta, dout, out, qkv, lse, B, T, H, stream);
    }
}

#endif  // LLMC_ATTENTION_HOPPER_BWD_CUH
