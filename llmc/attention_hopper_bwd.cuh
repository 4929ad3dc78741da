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

Five products, deterministically (FahCfg's DQ, dev/cuda/attention versions 23-24, not production
yet; 2026-11-24 session 9). The dk/dv kernel also computes dQ = dS K per tile: each warpgroup
stores its dS^T transposed (stmatrix .trans) into a K-major panel, and warpgroup w multiplies the
block's panels by K's dims 64w .. 64w + 63 (A and B from shared memory, B MN-major). The dQ of
query tile qt gets one 64 x 64 fp32 piece per warpgroup from every key block 0 .. kbd (kbd: the
block holding qt's diagonal), summed in the fixed order kbd, kbd - 1, .., 0: staged in shared
memory, then one bulk copy (the first) or bulk reduce-add (the others; fp32 adds at L2) into a
scratch, each issued only when the tile's counter shows the previous contribution completed. A
block lags the one after it by BKEYS / 64 tiles in that order, so in steady state its turn has
come. Blocks take (head, key block) items from a counter, each head's shortest loop first: a
block only waits for items taken before its own, which are running, so no launch order can
deadlock it. A last kernel converts the sums to bf16 dQ and zeroes the counters.
Measured (H200, dev/cuda/attention, backward ms; production's 7 products 1.111 / 3.791 / 1.148 at
GPT-2 shapes / T = 4096 / HS = 128 in the same runs; cuDNN 1.171 / 3.507 / 0.808 in the first):
1.396 / 4.419 / 1.027 (HS = 64 with 3 stages, HS = 128 with 3): faster than production at
HS = 128 only. Where the time goes, each part removed in turn (wrong results, timing only), at
GPT-2 shapes / HS = 128: the waits for the turn 0.35 / 0.05 ms, the conversion kernel (300 MB at
these shapes) 0.15 / 0.10, the bulk copies ~0.1 / ~0.05; with no dQ written at all the loop takes
0.987 / 0.628 ms (cuDNN's whole backward: 1.171 / 0.808). What the first form cost (per-thread
red.global.add.v2.f32 from registers and a __threadfence before each arrival): 1.72 / 1.25 ms.
Next: a dQ-writer warp (FlashAttention-3's layout) so that no math warp waits for a turn or a
copy, and the conversion folded into key block 0's contribution.
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
// DQ = 1 (dk/dv kernel only, with TMA, no LAG, HS = 64 NWG): the kernel also computes dQ, the
// fifth product, and adds it into an fp32 scratch in a fixed order (fah_backward_dkdv_kernel's
// comment); no dq kernel runs.
template <int NWG_, int BT_, int STAGES_, int MINB_ = 1, int LAG_ = 0, int TMA_ = 0, int DQ_ = 0>
struct FahCfg {
    static constexpr int NWG = NWG_, BT = BT_, STAGES = STAGES_, MINB = MINB_, LAG = LAG_, TMA = TMA_, DQ = DQ_;
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
           (size_t)CFG::DQ * CFG::NWG * (CFG::BT * 64 * sizeof(fa_bf16) + 64 * 64 * sizeof(float)) +
           2 * CFG::STAGES * CFG::BT * sizeof(float);
}

// DQ: [0] items handed out, [1] blocks finished (the last one resets both)
static __device__ int fah_bwd_counters[2];

// A warp's 16 x 16 block of dS^T (rows: keys, columns: queries 16 kk ..; m16n8k16 A fragment
// layout, wgmma_a_frag) stored transposed (queries as rows) into a K-major 64-key panel of the
// 128-byte-swizzled layout: each of the four 8 x 8 matrices is one stmatrix .trans row block.
__device__ __forceinline__ void fah_store_ds(uint32_t panel, const uint32_t (&a)[4], int kk) {
    const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, m = lane / 8;
    const int q = 16 * kk + (m >> 1) * 8 + lane % 8, chunk = 2 * warp + (m & 1);
    const uint32_t addr = panel + q * 128 + ((chunk ^ (q & 7)) << 4);
    asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(a[0]),
                 "r"(a[1]), "r"(a[2]), "r"(a[3])
                 : "memory");
}

__device__ __forceinline__ int fah_ld_acquire(const int* p) {
    int v;
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// A warpgroup's 64 x 64 fp32 dQ piece is stored in its accumulator's fragment order: thread
// (warp, lane)'s four values of column block n (rows 16 warp + g and + 8, columns 8n + 2t, + 1) are
// the 16 bytes at float offset fah_dq_piece(warp, n, lane), so a warp's stores are 512 contiguous
// bytes (no bank conflicts) and the piece goes to global memory as one 16 KB bulk copy.
__device__ __forceinline__ int fah_dq_piece(int warp, int n, int lane) { return ((warp * 8 + n) * 32 + lane) * 4; }

__device__ __forceinline__ void fah_st_shared4(uint32_t addr, float a, float b, float c, float d) {
    asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "f"(a), "f"(b), "f"(c), "f"(d) : "memory");
}

// the 128 threads of warpgroup wg of NWG <= 2 (named barrier 1 + wg; immediate ids, as a register id
// makes ptxas reserve all 16 barriers, which leaves one block per multiprocessor)
template <int NWG>
__device__ __forceinline__ void fah_bar_wg(int wg) {
    static_assert(NWG == 1 || NWG == 2, "one or two warpgroups");
    if (NWG == 1 || wg == 0) {
        asm volatile("bar.sync 1, 128;\n" ::: "memory");
    } else {
        asm volatile("bar.sync 2, 128;\n" ::: "memory");
    }
}

// DQ's last step: dQ (bf16, times scale) from the summed pieces, and the counters reset to zero
// for the next launch. grid (ceil(T / 64) NWG pieces, B H), 256 threads.
template <int HS>
__global__ void __launch_bounds__(256) fah_backward_dq_finish_kernel(fa_bf16* dqkv, const float* dq_acc, int* dq_sems,
                                                                     int T, int H, float scale) {
    constexpr int NWG = HS / 64;
    __shared__ float tile[64][64 + 1];
    const int piece = blockIdx.x, qt = piece / NWG, w = piece % NWG, bh = blockIdx.y, b = bh / H, h = bh % H;
    const int nqt = ceil_div(T, 64);
    const float4* src = reinterpret_cast<const float4*>(dq_acc + ((size_t)bh * nqt * NWG + piece) * 4096);
    for (int f = threadIdx.x; f < 1024; f += 256) {
        const float4 v = __ldcs(src + f);
        const int lane = f % 32, n = (f / 32) % 8, warp = f / 256, g = lane / 4, t = lane % 4;
        const int r = warp * 16 + g, c = 8 * n + 2 * t;
        tile[r][c] = v.x, tile[r][c + 1] = v.y, tile[r + 8][c] = v.z, tile[r + 8][c + 1] = v.w;
    }
    __syncthreads();
    for (int chunk = threadIdx.x; chunk < 64 * 8; chunk += 256) {
        const int r = chunk / 8, c = 8 * (chunk % 8), i = qt * 64 + r;
        if (i >= T) continue;
        alignas(16) __nv_bfloat162 packed[4];
        for (int k = 0; k < 4; k++) packed[k] = __floats2bfloat162_rn(tile[r][c + 2 * k] * scale, tile[r][c + 2 * k + 1] * scale);
        *reinterpret_cast<uint4*>(dqkv + ((size_t)b * T + i) * 3 * H * HS + h * HS + w * 64 + c) =
            *reinterpret_cast<const uint4*>(packed);
    }
    if (threadIdx.x == 0 && w == 0) dq_sems[(size_t)bh * nqt + qt] = 0;
}

// grid (ceil(T / (64 NWG)), B * H), block 128 NWG threads; dynamic smem fah_dkdv_smem<HS, CFG>()
template <int HS, class CFG>
__global__ void __launch_bounds__(CFG::NWG * 128, CFG::MINB)
    fah_backward_dkdv_kernel(fa_bf16* dqkv, const float* delta, const fa_bf16* dout, const fa_bf16* qkv,
                             const float* lse, int T, int H, float scale, const __grid_constant__ CUtensorMap map_qkv,
                             const __grid_constant__ CUtensorMap map_do, float* dq_acc, int* dq_sems) {
#ifdef LLMC_WGMMA
    constexpr int NWG = CFG::NWG, BQ = CFG::BT, STAGES = CFG::STAGES, LAG = CFG::LAG;
    constexpr bool DQ = CFG::DQ;
    static_assert(HS % 64 == 0 && BQ % 64 == 0, "64-column panels, 64-query multiples");
    static_assert(!DQ || (CFG::TMA && LAG == 0 && HS == 64 * NWG && BQ == 64), "DQ: TMA, no lag, 64 dims per warpgroup");
    static_assert(STAGES >= 2 + LAG && (LAG == 0 || LAG == 1), "a stage for the tile in use, one per tile ahead");
    constexpr int AHEAD = STAGES - 1 - LAG;  // tiles in flight ahead of the one in use
    constexpr int BKEYS = 64 * NWG, NT = 128 * NWG;
    constexpr uint32_t KV_BYTES = BKEYS * HS * 2, T_BYTES = BQ * HS * 2;
    extern __shared__ __align__(16) unsigned char fah_smem[];
    const uint32_t base = wgmma_smem_u32(fah_smem);
    const uint32_t k_s = (base + 1023u) & ~1023u;  // the swizzle repeats every 1024 bytes
    const uint32_t v_s = k_s + KV_BYTES;
    const uint32_t qd_s = v_s + KV_BYTES;               // stage st: Q tile at qd_s + 2 st T_BYTES, dO after it
    const uint32_t ds_s = qd_s + 2 * STAGES * T_BYTES;  // DQ: dS, a BQ x 64 panel per warpgroup
    const uint32_t dq_s = ds_s + DQ * NWG * BQ * 128;   // DQ: a 64 x 64 fp32 dQ piece per warpgroup
    const uint32_t ld_s = dq_s + DQ * NWG * 16384;      // stage st: BQ lse at ld_s + 8 st BQ, BQ D after them
    const float* ld_p = reinterpret_cast<const float*>(fah_smem + (ld_s - base));
    __shared__ __align__(8) uint64_t bars[STAGES + 1];  // TMA: one per stage, then K and V's
    const uint32_t bar0 = wgmma_smem_u32(bars), kv_bar = bar0 + 8 * STAGES;
    const bool producer = threadIdx.x == 0;

    const int C = H * HS;
    const int nkb = ceil_div(T, BKEYS), nqt_all = ceil_div(T, BQ);
    // DQ: blocks take (head, key block) items from a counter, a head's last key block (the shortest
    // loop) first, so the blocks a dQ sum waits for were taken earlier and are running (above)
    __shared__ int item_s;
    if constexpr (DQ) {
        if (threadIdx.x == 0) item_s = atomicAdd(&fah_bwd_counters[0], 1);
        __syncthreads();
    }
    const int bh = DQ ? item_s / nkb : blockIdx.y, b = bh / H, h = bh % H;
    const int kb = DQ ? nkb - 1 - item_s % nkb : blockIdx.x;  // else blocks of the first keys (the longest loops) first
    const int k0 = kb * BKEYS;
    const size_t ld = 3 * (size_t)C;
    const fa_bf16* qg = qkv + (size_t)b * T * ld + (size_t)h * HS;
    const fa_bf16* dog = dout + (size_t)b * T * C + (size_t)h * HS;
    const float* lseg = lse + (size_t)bh * T;
    const float* dg = delta + (size_t)bh * T;
    const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int kw = k0 + wg * 64;  // the warpgroup's first key
    const int qt0 = k0 / BQ, nqt = nqt_all - qt0;
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
    float dq[DQ ? 32 : 1];  // DQ: this tile's dQ, the warpgroup's 64 dims
    int acc = 0;  // dK, dV hold a sum
    int* pending = NULL;  // DQ, a warpgroup's leader: the counter to arrive at once the last bulk copy completed
    const bool leader = threadIdx.x % 128 == 0;

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
        // every query of the tile is before this warpgroup's keys: skipped (they all come first: with
        // LAG no product of an earlier tile is still running); DQ computes them (P = 0 there), as the
        // block's dQ sum needs every warpgroup
        if (!DQ && (i0 + BQ - 1 < kw || kw >= T)) continue;
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
        if (DQ && leader && pending != NULL) {  // DQ: the last tile's copy has completed (and freed its buffer)
            bulk_wait<0>();
            __threadfence();
            atomicAdd(pending, 1);
            pending = NULL;
        }
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
        if (LAG == 0 && !DQ) {
            wgmma_wait<0>();  // before the next barrier lets this stage be overwritten
            wgmma_pin_all(dk);
            wgmma_pin_all(dv);
        }
        if constexpr (DQ) {
            // dQ (BQ x HS) of this tile from the block's keys = dS K; dS is every warpgroup's dS^T,
            // transposed into its 64-key panel; warpgroup w computes dims 64w .. 64w + 63
#pragma unroll
            for (int kk = 0; kk < BQ / 16; kk++) fah_store_ds(ds_s + wg * BQ * 128, da[kk], kk);
            fence_proxy_async();
            __syncthreads();
            wgmma_fence();
#pragma unroll
            for (int p = 0; p < NWG; p++)
#pragma unroll
                for (int kk = 0; kk < 4; kk++)
                    wgmma_ss_mnb<64>(dq, wgmma_desc_kmajor(ds_s + p * BQ * 128 + kk * 32),
                                     wgmma_desc_mnmajor(k_s + wg * BKEYS * 128 + (p * 64 + kk * 16) * 128, BKEYS * 128),
                                     p > 0 || kk > 0);
            wgmma_commit();
            // Query tile qt's dQ is summed over key blocks kbd (its diagonal), kbd - 1, .., 0 in that
            // order, a 64 x 64 fp32 piece per warpgroup in dq_acc (in the accumulator's fragment
            // order: fah_dq_piece): the first contribution is stored, the others added by bulk
            // reduce-adds at L2, each after the one before has completed: a warpgroup's leader waits
            // until the tile's counter shows turn x NWG arrivals, and arrives once its own bulk copy
            // has completed, which it checks in the next tile once S^T and dP^T are issued (the copy
            // runs behind them). fah_backward_dq_finish_kernel converts the sums to bf16 dQ.
            const int qt = qt0 + it;
            const int turn = min((i0 + BQ - 1) / BKEYS, nkb - 1) - kb;
            const uint32_t stage = dq_s + wg * 16384;
            wgmma_wait<0>();
            wgmma_pin_all(dq);
            wgmma_pin_all(dk);
            wgmma_pin_all(dv);
            fah_bar_wg<NWG>(wg);  // the staging buffer is free
#pragma unroll
            for (int n = 0; n < 8; n++)
                fah_st_shared4(stage + fah_dq_piece(warp, n, lane) * 4, dq[4 * n], dq[4 * n + 1], dq[4 * n + 2], dq[4 * n + 3]);
            fence_proxy_async();
            fah_bar_wg<NWG>(wg);  // the piece is staged
            if (leader) {
                int* sem = dq_sems + (size_t)bh * nqt_all + qt;
                if (turn > 0)
                    while (fah_ld_acquire(sem) < turn * NWG) {
                    }
                float* dst = dq_acc + (((size_t)bh * nqt_all + qt) * NWG + wg) * 4096;
                if (turn == 0) {
                    bulk_store_s2g(dst, stage, 16384);
                } else {
                    bulk_reduce_add_f32_s2g(dst, stage, 16384);
                }
                bulk_commit();
                pending = sem;
            }
        }
    }
    if (DQ && leader && pending != NULL) {  // the last copy completes before the block (and its shared memory) ends
        bulk_wait<0>();
        __threadfence();
        atomicAdd(pending, 1);
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
    if constexpr (DQ) {
        if (threadIdx.x == 0 && atomicAdd(&fah_bwd_counters[1], 1) == (int)gridDim.x - 1) {  // every item taken
            fah_bwd_counters[0] = 0;
            fah_bwd_counters[1] = 0;
        }
    }
#else
    (void)dqkv, (void)delta, (void)dout, (void)qkv, (void)lse, (void)T, (void)H, (void)scale, (void)map_qkv, (void)map_do;
    (void)dq_acc, (void)dq_sems;
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

// DQ's scratch: dQ's fp32 partial sums in whole 64-row tiles (B H ceil(T / 64) 64 HS floats) and one
// arrival counter per tile (B H ceil(T / 64) ints, zero between launches: the finish kernel resets
// them). Kept across calls, grown (and the counters zeroed) when a larger shape comes.
struct FahDqScratch {
    float* acc;
    int* sems;
};
static FahDqScratch fah_dq_scratch(size_t acc_floats, size_t sems) {
    static FahDqScratch s = {NULL, NULL};
    static size_t acc_cap = 0, sems_cap = 0;
    if (acc_floats > acc_cap) {
        cudaCheck(cudaFree(s.acc));
        cudaCheck(cudaMalloc(&s.acc, acc_floats * sizeof(float)));
        acc_cap = acc_floats;
    }
    if (sems > sems_cap) {
        cudaCheck(cudaFree(s.sems));
        cudaCheck(cudaMalloc(&s.sems, sems * sizeof(int)));
        cudaCheck(cudaMemset(s.sems, 0, sems * sizeof(int)));
        sems_cap = sems;
    }
    return s;
}

// Same meaning as fa_backward (llmc/attention.cuh): dqkv (B, T, 3C) written, delta (B, H, T)
// scratch. KV, Q: FahCfg of the dk/dv and the dq kernel (Q unused when KV::DQ).
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
    if constexpr (KV::DQ) {
        const size_t tiles = (size_t)B * H * ceil_div(T, KV::BT);
        const FahDqScratch scratch = fah_dq_scratch(tiles * KV::BT * HS, tiles);
        const unsigned blocks = (unsigned)(ceil_div(T, 64 * KV::NWG) * B * H);
        fah_backward_dkdv_kernel<HS, KV><<<blocks, KV::NWG * 128, smem_kv, stream>>>(
            dqkv, delta, dout, qkv, lse, T, H, scale, map_qkv, map_do, scratch.acc, scratch.sems);
        cudaCheckLast();
        fah_backward_dq_finish_kernel<HS><<<dim3(ceil_div(T, 64) * KV::NWG, B * H), 256, 0, stream>>>(
            dqkv, scratch.acc, scratch.sems, T, H, scale);
        cudaCheckLast();
        return;
    }
    fah_backward_dkdv_kernel<HS, KV><<<dim3(ceil_div(T, 64 * KV::NWG), B * H), KV::NWG * 128, smem_kv, stream>>>(
        dqkv, delta, dout, qkv, lse, T, H, scale, map_qkv, map_do, NULL, NULL);
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
using FahCfgCpAsync = FahCfg<CFG::NWG, CFG::BT, CFG::STAGES, CFG::MINB, CFG::LAG, 0, 0>;

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
