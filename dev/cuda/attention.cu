/*
Causal self-attention forward and backward (bf16 storage, fp32 accumulation): checks and timings.

What it computes: for qkv (B, T, 3C) with q | k | v side by side and H heads of size HS = C / H,
    out_i = sum_{j <= i} softmax_j(q_i . k_j / sqrt(HS)) v_j        (B, T, C), plus lse (B, H, T)
and the backward dqkv (B, T, 3C) from dout (B, T, C), exactly as llmc/attention.cuh documents.
The production kernels are #included from llmc/attention.cuh (never copied): what is checked and
timed here is what train_gpt2cu runs.

Build and run (on an sm_90 GPU; the wgmma versions need sm_90a code, which the Makefile and the
CMake target add; without it they are skipped and production runs the mma.sync kernels):
    make -C dev/cuda attention && build-dev-cuda/attention          # all versions
    build-dev-cuda/attention 2                                      # one version
With cuDNN (adds version 25; needs cuDNN 9 + cudnn-frontend, see README.md):
    cmake -B build -DLLMC_CUDNN=ON && cmake --build build --target dev_cuda_attention
    build/dev_cuda/attention
Versions (a course from the scalar loop to Hopper's warpgroup tensor cores):
    1  simple: the phase-1 kernels (one thread per row, scalar fp32 FMAs, no tensor cores), the
       fp32 build's kernels, here in bf16
    2  production (attention_forward / attention_backward): on sm_90a the wgmma kernels (the
       warp-specialized persistent forward, FahFwdConfig: 6 stages and 2 Q buffers at HS = 64, 3
       stages and 1 at HS = 128; version 15's backward with 3 stages and TMA copies: FahBwdConfig),
       else version 3
    3  flash mma.sync, FaConfig<HS>: FlashAttention-2 on mma.sync m16n8k16 tensor cores, ldmatrix,
       cp.async double buffering, exp2 online softmax, causal tile skipping, dq in its own kernel
       (deterministic, no atomics). At HS <= 64 each warp owns 2 m-tiles (32 rows): forward
       4 warps / 128 rows / 64-key tiles, dk,dv 4 warps / 128 keys / 32-query tiles, dq 4 warps /
       128 rows / 64-key tiles. The engine's kernels on GPUs without sm_90a code and at HS 16, 32
    4  flash with one m-tile (16 rows) per warp everywhere, 4 warps, 64-row tiles: the first
       tensor-core version; each B fragment read from shared memory feeds one product, so it is
       bound by shared-memory bandwidth (this is what 2 m-tiles fixed: -22% forward, -14% backward)
    5  forward with 8 warps x 2 m-tiles (256 rows per block): fewer, larger blocks; slower at T=1024
    6  dk,dv with 8 warps x 2 m-tiles (256 keys per block): slower
    7  dq with 8 warps x 2 m-tiles (256 rows per block): slower
       Versions 4-7 use one configuration for every head size; at HS = 128 two m-tiles need more
       than 255 registers and spill (slow), which is why FaConfig<128> keeps one m-tile there.
       (Earlier tries, measured 2026-11-23 and dropped: 8 warps x 1 m-tile, 2 m-tiles with 32-key
       forward tiles, dq with 32-key tiles, dk,dv with 64-query tiles: all slower than version 3.)
    8-12 the wgmma forward (llmc/attention_hopper.cuh, sm_90a), each with the production backward:
       S = Q K^T and O += P V as warpgroup-wide wgmma, operands straight from 128-byte-swizzled
       shared memory, P from registers; "Nwg": warpgroups (64 query rows each) per block, "Nk":
       keys per tile, "Nst": shared-memory stages.
    8  2wg 128k 2st: the first one, one product after the other: 0.47 ms at GPT-2 shapes (mma.sync
       0.43); two warpgroups per block wait for each other at every tile's barrier
    9  1wg 128k 2st: one warpgroup per block, so three blocks interleave per SM: 0.37 ms
    10 1wg 64k 2st: smaller tiles, fewer registers: about the same
    11 pipe 128k 3st: FlashAttention-3's intra-warpgroup pipelining (S of the next tile in flight
       while P V of this one runs; fah_forward_pipelined_kernel); with 128-key tiles it needs 203
       registers, two blocks per SM: slower than 9. (Its first form issued the next S under a
       branch and ptxas serialized every wgmma of the kernel, C7520: 0.45-0.53 ms.)
    12 pipe 64k 3st: the pipelined kernel with 64-key tiles (126 registers); with 4 stages it is
       production's forward (FahFwdConfig<64>): 0.357 ms against cuDNN's 0.330-0.340
    13 pipe 64k 4st qreg: Q read into registers once (ldmatrix), S = Q K^T from there: 0-1.5%
       faster than production's forward in three runs (within run-to-run spread at T = 1024)
       (Dropped after one run, 2026-11-24: exponentials partly from a polynomial on the FMA pipe,
       1/4 or 1/2 of them: 0.427 / 0.507 ms against 0.355, the kernel is issue-bound.)
    14-16, 19, 20 the wgmma backward (llmc/attention_hopper_bwd.cuh, sm_90a), each with the production
       forward: a dk,dv kernel ("kv": one warpgroup of 64 keys per block, 64-query tiles streamed)
       and a dq kernel ("q": warpgroups of 64 rows, 64-key tiles streamed), P and dS fed to the
       next product from registers; "lag": a tile's last product runs on into the next tile
       (FahCfg's LAG); "3blk": registers capped for 3 blocks per SM. Production (FahBwdConfig<64>):
       kv 3 stages with lag, q 2 stages, tiles by TMA. Numbers: llmc/attention_hopper_bwd.cuh's
       comment. Versions 14-16 and 19 copy with cp.async: compare them with version 20.
    14 kv 2st, no lag: each tile waits for its last product: 1.40 ms (version 20: 1.20)
    15 kv 4st lag: one more stage, the same time as 3
    16 q lag 3blk: the dq kernel with lag and 3 stages: no gain
    17 tma 64k 4st: version 12's pipelined kernel (4 stages) with its tiles brought in by the TMA
       (the pipelined kernel's TMA option): one thread issues a bulk tensor copy per panel, an mbarrier per
       stage counts the bytes in; no per-thread cp.async, address math or proxy fence per tile.
       0.310-0.321 ms at GPT-2 shapes (cuDNN 0.329-0.332, version 12 with 4 stages 0.355): faster
       than cuDNN; at HS = 128 slower (0.46 ms), so production kept the cp.async kernel there;
       production's forward at HS = 64 until the warp-specialized one (2026-11-24, session 8)
    18 tma 64k 3st: 0.319 ms
    19 128: q as kv: HS = 128's dq kernel with one warpgroup and lag (production uses 2, no lag)
    20 cp.async: production's backward configuration with every thread's cp.async copies instead of
       TMA (production until 2026-11-24): 1.20 ms against production's 1.12 (FahCfg's TMA, as the
       forward's version 17: one thread issues the tiles, fewer registers). (Dropped after one
       run, 2026-11-24, at HS = 128: the dk/dv kernel with 3 stages and lag plus the dq kernel
       of version 19, both on TMA: 1.22 ms against production's 1.17.)
    21-22 the warp-specialized forward (fah_forward_ws_kernel, FlashAttention-3's structure): a
       producer warpgroup (one thread issuing TMA copies, registers handed to the others with
       setmaxnreg) and two consumer warpgroups of 64 query rows sharing 128-key tiles, stages
       handed over by full/empty mbarriers instead of __syncthreads; persistent (one block per
       SM taking 128-row items from a counter, so the next item's Q and tiles load while the last
       one finishes). Session 8 runs (H200, fwd ms; HS 64 at T = 1024 / 4096, then HS 128):
       production's before (versions 17 and 12) 0.315 / 1.046 / 0.350; this kernel one block per
       item 0.402 / 1.084 / 0.289; persistent 0.313 / 1.003 / 0.254; cuDNN 0.331 / 0.918 / 0.229.
       (Dropped after one run: FlashAttention-3's ping-pong, the consumers taking turns at the
       tensor cores through two named barriers: 0.322-0.327 / 1.013 / 0.254, no gain.)
    21 ws block per item: production's configuration with one block per item (no persistence)
    22 ws 4st 1q / 2st 2q: 4 stages and 1 Q buffer at HS = 64; 2 stages, 2 Q buffers at HS = 128
       (0.321 ms there: two stages of 128 keys leave the consumers waiting for copies)
    23-24 the backward in 5 matrix products instead of 7, still deterministic (FahCfg's DQ: the
       dk/dv kernel also computes dQ = dS K and adds it, one 64 x 64 fp32 piece per warpgroup and
       tile, by bulk reduce-adds in a fixed key-block order kept by per-tile counters; a last
       kernel converts to bf16; llmc/attention_hopper_bwd.cuh's comment has the design). 2026-11-24
       session 9 (backward ms at GPT-2 shapes / T = 4096 / HS = 128): 1.396 / 4.419 / 1.105 with
       3 stages at HS = 64 and 2 at HS = 128, 1.512 / 4.963 / 1.032 with 2 and 3; production
       1.111 / 3.791 / 1.148. Faster at HS = 128 only so far: the turns and the conversion cost
       more than the two products saved (0.35 and 0.15 ms at GPT-2 shapes).
    23 fused dq 3st / 2st: 3 stages at HS = 64, 2 at HS = 128
    24 fused dq 2st / 3st: 2 stages at HS = 64, 3 at HS = 128
    25 cuDNN's fused SDPA through llmc/cudnn_attention.h, the engine's backend when built with
       LLMC_CUDNN (only in such a build): the same layouts and stats, deterministic backward
       algorithm; checked and timed like the others, so ours vs cuDNN is one program's ratio. The
       first call at each shape builds cuDNN's graph; the warm-up calls absorb that.
PyTorch's cuDNN and FlashAttention-2 backends at the same shapes, for same-machine ratios:
    python3 dev/cuda/attention_sdpa.py
Checks: every version on fresh random inputs (normal, std 1, so scores have std ~1) at several
shapes, including T not a multiple of any tile (50, 333, 2049), T = 64, 1024, 2049 and the GPT-2
124M shape; outputs are poisoned with NaN before each run and every element must be finite (so
every element was written). The reference is computed on the CPU in double precision from the same
bf16 inputs, for all heads of the small shapes and for a few sampled heads of the large ones. The
error is ||ours - ref|| / ||ref|| per tensor (out, lse, dq, dk, dv) over the checked heads.
Tolerance 2e-2 for bf16: out and the gradients are rounded to bf16 on store (2^-9 relative per
element) and P, dS enter the tensor-core products as bf16 (2^-9 each), which accumulates over
the T keys to a few 1e-3; a wrong mask or a missing tile gives errors of order 1e-1..1. Every
version but the first runs forward and backward twice on the same inputs: both must be bit-identical.
Timing: CUDA events around each call, 3 warm-up calls, median of 20 (5 for the slow version 1),
inputs of 300 MB (larger than the 50 MB L2) at the GPT-2 shapes. TFLOP/s count the causal FLOPs
as half the full ones: forward 4 B H T^2 HS / 2, backward 2.5 x forward (the 5 matrix products
of FlashAttention-2; our dq kernel does 2 more, which are not counted).
*/
#include <algorithm>
#include <cmath>
#include <vector>

#include "llmc/attention.cuh"  // defines: attention_forward/backward, the mma.sync and (via
                                //   attention_hopper*.cuh) the wgmma kernels
#ifdef LLMC_CUDNN
#include "llmc/cudnn_attention.h"  // defines: cudnn_attention_forward/backward (version 23)
#endif

#ifdef LLMC_FP32
#error "dev/cuda/attention.cu benchmarks the bf16 kernels; build it without LLMC_FP32"
#endif

typedef __nv_bfloat16 bf16;

// ---------------------------------------------------------------------------------------------
// versions

typedef void (*fwd_fn)(bf16*, float*, const bf16*, int, int, int, int, cudaStream_t);
typedef void (*bwd_fn)(bf16*, float*, const bf16*, const bf16*, const bf16*, const float*, int, int, int, int,
                       cudaStream_t);

template <class CFG>
static void flash_fwd(bf16* out, float* lse, const bf16* qkv, int B, int T, int C, int H, cudaStream_t s) {
    switch (C / H) {
        case 64: fa_forward<64, CFG>(out, lse, qkv, B, T, H, s); break;
        case 128: fa_forward<128, CFG>(out, lse, qkv, B, T, H, s); break;
        default: fprintf(stderr, "flash_fwd: head size %d not instantiated\n", C / H); exit(1);
    }
}

template <class KV, class Q>
static void flash_bwd(bf16* dqkv, float* delta, const bf16* dout, const bf16* out, const bf16* qkv, const float* lse,
                      int B, int T, int C, int H, cudaStream_t s) {
    switch (C / H) {
        case 64: fa_backward<64, KV, Q>(dqkv, delta, dout, out, qkv, lse, B, T, H, s); break;
        case 128: fa_backward<128, KV, Q>(dqkv, delta, dout, out, qkv, lse, B, T, H, s); break;
        default: fprintf(stderr, "flash_bwd: head size %d not instantiated\n", C / H); exit(1);
    }
}

// the wgmma forward (llmc/attention_hopper.cuh): NWG warpgroups of 64 query rows, BN-key tiles,
// STAGES shared-memory stages; at HS = 128 the key tiles are halved (registers)
template <int NWG, int BN, int STAGES, bool PIPELINED, bool QREG = false, bool TMA = false>
static void hopper_fwd(bf16* out, float* lse, const bf16* qkv, int B, int T, int C, int H, cudaStream_t s) {
    switch (C / H) {
        case 64: fah_forward<64, NWG, BN, STAGES, PIPELINED, QREG, TMA>(out, lse, qkv, B, T, H, s); break;
        case 128:
            fah_forward<128, NWG, (BN > 64 ? BN / 2 : BN), (STAGES > 3 ? 3 : STAGES), PIPELINED, QREG, TMA>(
                out, lse, qkv, B, T, H, s);
            break;
        default: fprintf(stderr, "hopper_fwd: head size %d not instantiated\n", C / H); exit(1);
    }
}

// the warp-specialized forward (llmc/attention_hopper.cuh, fah_forward_ws_kernel): stages and Q
// buffers per head size (ST64, QB64 at HS = 64; ST128, QB128 at HS = 128); PERSISTENT: one block
// per multiprocessor, else one per item
template <int ST64, int QB64, int ST128, int QB128, bool PERSISTENT>
static void hopper_fwd_ws(bf16* out, float* lse, const bf16* qkv, int B, int T, int C, int H, cudaStream_t s) {
    switch (C / H) {
        case 64: fah_forward_ws<64, ST64, QB64, PERSISTENT>(out, lse, qkv, B, T, H, s); break;
        case 128: fah_forward_ws<128, ST128, QB128, PERSISTENT>(out, lse, qkv, B, T, H, s); break;
        default: fprintf(stderr, "hopper_fwd_ws: head size %d not instantiated\n", C / H); exit(1);
    }
}

// the wgmma backward (llmc/attention_hopper_bwd.cuh): KV, Q = FahCfg of the dk/dv and dq kernels at
// HS = 64, KV128, Q128 at HS = 128 (by default its production configuration, FahBwdConfig<128>)
template <class KV, class Q, class KV128 = FahBwdConfig<128>::Dkdv, class Q128 = FahBwdConfig<128>::Dq>
static void hopper_bwd(bf16* dqkv, float* delta, const bf16* dout, const bf16* out, const bf16* qkv, const float* lse,
                       int B, int T, int C, int H, cudaStream_t s) {
    switch (C / H) {
        case 64: fah_backward<64, KV, Q>(dqkv, delta, dout, out, qkv, lse, B, T, H, s); break;
        case 128: fah_backward<128, KV128, Q128>(dqkv, delta, dout, out, qkv, lse, B, T, H, s); break;
        default: fprintf(stderr, "hopper_bwd: head size %d not instantiated\n", C / H); exit(1);
    }
}

#ifdef LLMC_CUDNN
static void cudnn_fwd(bf16* out, float* lse, const bf16* qkv, int B, int T, int C, int H, cudaStream_t s) {
    cudnn_attention_forward(out, lse, qkv, B, T, C, H, 1, s);
}

static void cudnn_bwd(bf16* dqkv, float*, const bf16* dout, const bf16* out, const bf16* qkv, const float* lse,
                      int B, int T, int C, int H, cudaStream_t s) {
    cudnn_attention_backward(dqkv, dout, out, qkv, lse, B, T, C, H, s);
}
#endif

struct Version {
    const char* name;
    fwd_fn fwd;
    bwd_fn bwd;
    bool all_head_sizes;  // also 16 and 32 (else 64 and 128 only)
    int timing_reps;
    bool wgmma;  // needs sm_90a code (skipped when the build has none)
};

static const Version versions[] = {
    {"simple (phase 1)", attention_forward_simple, attention_backward_simple, true, 5, false},
    {"production (engine)", attention_forward, attention_backward, true, 20, false},
    {"flash mma.sync (FaConfig)", attention_forward_flash, attention_backward_flash, true, 20, false},
    {"flash 4w x 1mt everywhere", flash_fwd<FaCfg<4, 1, 64>>, flash_bwd<FaCfg<4, 1, 64>, FaCfg<4, 1, 64>>, false, 20, false},
    {"fwd 8w x 2mt, 64-key tiles", flash_fwd<FaCfg<8, 2, 64>>, attention_backward_flash, false, 20, false},
    {"dkdv 8w x 2mt, 32-q tiles", attention_forward_flash, flash_bwd<FaCfg<8, 2, 32>, FaConfig<64>::Dq>, false, 20, false},
    {"dq 8w x 2mt, 64-key tiles", attention_forward_flash, flash_bwd<FaConfig<64>::Dkdv, FaCfg<8, 2, 64>>, false, 20, false},
    {"wgmma fwd 2wg 128k 2st", hopper_fwd<2, 128, 2, false>, attention_backward, false, 20, true},
    {"wgmma fwd 1wg 128k 2st", hopper_fwd<1, 128, 2, false>, attention_backward, false, 20, true},
    {"wgmma fwd 1wg 64k 2st", hopper_fwd<1, 64, 2, false>, attention_backward, false, 20, true},
    {"wgmma fwd pipe 128k 3st", hopper_fwd<1, 128, 3, true>, attention_backward, false, 20, true},
    {"wgmma fwd pipe 64k 3st", hopper_fwd<1, 64, 3, true>, attention_backward, false, 20, true},
    {"wgmma fwd pipe 64k 4st qreg", hopper_fwd<1, 64, 4, true, true>, attention_backward, false, 20, true},
    {"wgmma bwd kv 2st, no lag", attention_forward, hopper_bwd<FahCfg<1, 64, 2>, FahCfg<1, 64, 2>>, false, 20, true},
    {"wgmma bwd kv 4st lag", attention_forward, hopper_bwd<FahCfg<1, 64, 4, 1, 1>, FahCfg<1, 64, 2>>, false, 20, true},
    {"wgmma bwd q lag 3blk", attention_forward, hopper_bwd<FahCfg<1, 64, 3, 1, 1>, FahCfg<1, 64, 3, 3, 1>>, false, 20,
     true},
    {"wgmma fwd tma 64k 4st", hopper_fwd<1, 64, 4, true, false, true>, attention_backward, false, 20, true},
    {"wgmma fwd tma 64k 3st", hopper_fwd<1, 64, 3, true, false, true>, attention_backward, false, 20, true},
    {"wgmma bwd 128: q as kv", attention_forward,
     hopper_bwd<FahCfg<1, 64, 3, 1, 1>, FahCfg<1, 64, 2>, FahBwdConfig<128>::Dkdv, FahCfg<1, 64, 3, 1, 1>>, false, 20,
     true},
    {"wgmma bwd cp.async", attention_forward,
     hopper_bwd<FahCfgCpAsync<FahBwdConfig<64>::Dkdv>, FahCfgCpAsync<FahBwdConfig<64>::Dq>,
                FahCfgCpAsync<FahBwdConfig<128>::Dkdv>, FahCfgCpAsync<FahBwdConfig<128>::Dq>>,
     false, 20, true},
    {"wgmma fwd ws block per item", hopper_fwd_ws<6, 2, 3, 1, false>, attention_backward, false, 20, true},
    {"wgmma fwd ws 4st 1q / 2st 2q", hopper_fwd_ws<4, 1, 2, 2, true>, attention_backward, false, 20, true},
    {"wgmma bwd fused dq 3st / 2st", attention_forward,
     hopper_bwd<FahCfg<1, 64, 3, 1, 0, 1, 1>, FahBwdConfig<64>::Dq, FahCfg<2, 64, 2, 1, 0, 1, 1>>, false, 20, true},
    {"wgmma bwd fused dq 2st / 3st", attention_forward,
     hopper_bwd<FahCfg<1, 64, 2, 1, 0, 1, 1>, FahBwdConfig<64>::Dq, FahCfg<2, 64, 3, 1, 0, 1, 1>>, false, 20, true},
#ifdef LLMC_CUDNN
    {"cuDNN (LLMC_CUDNN)", cudnn_fwd, cudnn_bwd, true, 20, false},
#endif
};
static const int num_versions = (int)(sizeof(versions) / sizeof(versions[0]));

// ---------------------------------------------------------------------------------------------
// inputs and buffers

__global__ void fill_normal_kernel(bf16* p, size_t n, uint64_t seed) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        // two uniform numbers from a SplitMix64-style hash of (seed, i), then Box-Muller
        uint64_t z = seed + 0x9E3779B97F4A7C15ull * (i + 1);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        const float u1 = ((uint32_t)(z >> 40) + 1.0f) / 16777217.0f;  // (0, 1]
        const float u2 = (uint32_t)(z & 0xFFFFFF) / 16777216.0f;
        p[i] = __float2bfloat16(sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2));
    }
}

static void fill_normal(bf16* p, size_t n, uint64_t seed) {
    fill_normal_kernel<<<1024, 256>>>(p, n, seed);
    cudaCheckLast();
}

struct Buffers {
    int B, T, C, H;
    bf16 *qkv, *out, *dout, *dqkv;
    float *lse, *delta;
    void alloc(int B_, int T_, int C_, int H_) {
        B = B_, T = T_, C = C_, H = H_;
        const size_t btc = (size_t)B * T * C;
        cudaCheck(cudaMalloc(&qkv, 3 * btc * sizeof(bf16)));
        cudaCheck(cudaMalloc(&dqkv, 3 * btc * sizeof(bf16)));
        cudaCheck(cudaMalloc(&out, btc * sizeof(bf16)));
        cudaCheck(cudaMalloc(&dout, btc * sizeof(bf16)));
        cudaCheck(cudaMalloc(&lse, (size_t)B * H * T * sizeof(float)));
        cudaCheck(cudaMalloc(&delta, (size_t)B * H * T * sizeof(float)));
    }
    void release() {
        cudaCheck(cudaFree(qkv));
        cudaCheck(cudaFree(dqkv));
        cudaCheck(cudaFree(out));
        cudaCheck(cudaFree(dout));
        cudaCheck(cudaFree(lse));
        cudaCheck(cudaFree(delta));
    }
    void poison() {  // 0xFF bytes: NaN in bf16 and fp32
        const size_t btc = (size_t)B * T * C;
        cudaCheck(cudaMemset(out, 0xFF, btc * sizeof(bf16)));
        cudaCheck(cudaMemset(dqkv, 0xFF, 3 * btc * sizeof(bf16)));
        cudaCheck(cudaMemset(lse, 0xFF, (size_t)B * H * T * sizeof(float)));
        cudaCheck(cudaMemset(delta, 0xFF, (size_t)B * H * T * sizeof(float)));
    }
};

static std::vector<float> to_host(const bf16* d, size_t n) {
    std::vector<bf16> h(n);
    cudaCheck(cudaMemcpy(h.data(), d, n * sizeof(bf16), cudaMemcpyDeviceToHost));
    std::vector<float> f(n);
    for (size_t i = 0; i < n; i++) f[i] = __bfloat162float(h[i]);
    return f;
}

static std::vector<float> to_host(const float* d, size_t n) {
    std::vector<float> h(n);
    cudaCheck(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost));
    return h;
}

// ---------------------------------------------------------------------------------------------
// double-precision CPU reference for one head (b, h)

struct HeadRef {
    std::vector<double> out, lse, dq, dk, dv;  // (T, HS) each, lse (T)
};

static HeadRef reference_head(const std::vector<float>& qkv, const std::vector<float>& dout, int b, int h, int T,
                              int C, int H) {
    const int HS = C / H;
    const double scale = 1.0 / std::sqrt((double)HS);
    auto q = [&](int i, int d) { return (double)qkv[((size_t)b * T + i) * 3 * C + (size_t)h * HS + d]; };
    auto k = [&](int i, int d) { return (double)qkv[((size_t)b * T + i) * 3 * C + C + (size_t)h * HS + d]; };
    auto v = [&](int i, int d) { return (double)qkv[((size_t)b * T + i) * 3 * C + 2 * C + (size_t)h * HS + d]; };
    auto g = [&](int i, int d) { return (double)dout[((size_t)b * T + i) * C + (size_t)h * HS + d]; };
    HeadRef r;
    r.out.assign((size_t)T * HS, 0.0);
    r.lse.assign(T, 0.0);
    r.dq.assign((size_t)T * HS, 0.0);
    r.dk.assign((size_t)T * HS, 0.0);
    r.dv.assign((size_t)T * HS, 0.0);
    std::vector<double> s(T), p(T), dp(T);
    for (int i = 0; i < T; i++) {
        double m = -INFINITY;
        for (int j = 0; j <= i; j++) {
            double acc = 0.0;
            for (int d = 0; d < HS; d++) acc += q(i, d) * k(j, d);
            s[j] = acc * scale;
            m = std::max(m, s[j]);
        }
        double l = 0.0;
        for (int j = 0; j <= i; j++) l += (p[j] = std::exp(s[j] - m));
        for (int j = 0; j <= i; j++) p[j] /= l;
        r.lse[i] = m + std::log(l);
        for (int j = 0; j <= i; j++)
            for (int d = 0; d < HS; d++) r.out[(size_t)i * HS + d] += p[j] * v(j, d);
        double D = 0.0;
        for (int d = 0; d < HS; d++) D += g(i, d) * r.out[(size_t)i * HS + d];
        for (int j = 0; j <= i; j++) {
            double acc = 0.0;
            for (int d = 0; d < HS; d++) acc += g(i, d) * v(j, d);
            const double ds = p[j] * (acc - D);
            for (int d = 0; d < HS; d++) {
                r.dq[(size_t)i * HS + d] += ds * k(j, d) * scale;
                r.dk[(size_t)j * HS + d] += ds * q(i, d) * scale;
                r.dv[(size_t)j * HS + d] += p[j] * g(i, d);
            }
        }
    }
    return r;
}

// ---------------------------------------------------------------------------------------------
// checks

struct ErrAcc {
    double num = 0.0, den = 0.0;
    void add(double ours, double ref) {
        num += (ours - ref) * (ours - ref);
        den += ref * ref;
    }
    double rel() const { return std::sqrt(num / (den > 0 ? den : 1.0)); }
};

static size_t count_nonfinite(const std::vector<float>& x) {
    size_t n = 0;
    for (float f : x) n += !std::isfinite(f);
    return n;
}

static const double TOL = 2e-2;

// Runs version v forward and backward at (B, T, C, H) on fresh inputs and compares with the
// reference on nheads heads (all when nheads >= B * H). Returns 1 when every check passes.
static int check_version(int v, int B, int T, int C, int H, int nheads, uint64_t seed) {
    const Version& ver = versions[v];
    Buffers buf;
    buf.alloc(B, T, C, H);
    const size_t btc = (size_t)B * T * C;
    fill_normal(buf.qkv, 3 * btc, seed);
    fill_normal(buf.dout, btc, seed ^ 0xABCDEFull);
    buf.poison();
    ver.fwd(buf.out, buf.lse, buf.qkv, B, T, C, H, 0);
    ver.bwd(buf.dqkv, buf.delta, buf.dout, buf.out, buf.qkv, buf.lse, B, T, C, H, 0);
    cudaCheck(cudaDeviceSynchronize());
    std::vector<float> qkv = to_host(buf.qkv, 3 * btc), dout = to_host(buf.dout, btc);
    std::vector<float> out = to_host(buf.out, btc), dqkv = to_host(buf.dqkv, 3 * btc);
    std::vector<float> lse = to_host(buf.lse, (size_t)B * H * T);
    const size_t bad = count_nonfinite(out) + count_nonfinite(dqkv) + count_nonfinite(lse);

    // determinism: the forward and the backward again on the same inputs, bit for bit
    int deterministic = 1;
    if (v != 0) {
        std::vector<bf16> out_first(btc), out_second(btc);
        cudaCheck(cudaMemcpy(out_first.data(), buf.out, btc * sizeof(bf16), cudaMemcpyDeviceToHost));
        cudaCheck(cudaMemset(buf.out, 0xFF, btc * sizeof(bf16)));
        ver.fwd(buf.out, buf.lse, buf.qkv, B, T, C, H, 0);
        cudaCheck(cudaMemcpy(out_second.data(), buf.out, btc * sizeof(bf16), cudaMemcpyDeviceToHost));
        deterministic = memcmp(out_first.data(), out_second.data(), btc * sizeof(bf16)) == 0;
        std::vector<bf16> first(3 * btc), second(3 * btc);
        cudaCheck(cudaMemcpy(first.data(), buf.dqkv, 3 * btc * sizeof(bf16), cudaMemcpyDeviceToHost));
        cudaCheck(cudaMemset(buf.dqkv, 0xFF, 3 * btc * sizeof(bf16)));
        ver.bwd(buf.dqkv, buf.delta, buf.dout, buf.out, buf.qkv, buf.lse, B, T, C, H, 0);
        cudaCheck(cudaMemcpy(second.data(), buf.dqkv, 3 * btc * sizeof(bf16), cudaMemcpyDeviceToHost));
        deterministic = deterministic && memcmp(first.data(), second.data(), 3 * btc * sizeof(bf16)) == 0;
    }
    buf.release();

    const int HS = C / H;
    ErrAcc e_out, e_lse, e_dq, e_dk, e_dv;
    const int total = B * H;
    const int n = std::min(nheads, total);
    for (int s = 0; s < n; s++) {
        const int bh = n == total ? s : (int)((s * 7919ull + seed) % total);  // sampled heads
        const int b = bh / H, h = bh % H;
        HeadRef r = reference_head(qkv, dout, b, h, T, C, H);
        for (int i = 0; i < T; i++) {
            e_lse.add(lse[(size_t)bh * T + i], r.lse[i]);
            for (int d = 0; d < HS; d++) {
                const size_t row = (size_t)b * T + i, col = (size_t)h * HS + d;
                e_out.add(out[row * C + col], r.out[(size_t)i * HS + d]);
                e_dq.add(dqkv[row * 3 * C + col], r.dq[(size_t)i * HS + d]);
                e_dk.add(dqkv[row * 3 * C + C + col], r.dk[(size_t)i * HS + d]);
                e_dv.add(dqkv[row * 3 * C + 2 * C + col], r.dv[(size_t)i * HS + d]);
            }
        }
    }
    const double errs[5] = {e_out.rel(), e_lse.rel(), e_dq.rel(), e_dk.rel(), e_dv.rel()};
    int ok = bad == 0 && deterministic;
    for (double e : errs) ok = ok && std::isfinite(e) && e < TOL;
    printf("  v%d %-26s B=%-3d T=%-5d H=%-3d HS=%-3d heads %3d | out %.1e lse %.1e dq %.1e dk %.1e dv %.1e | "
           "non-finite %zu | %s | %s\n",
           v + 1, ver.name, B, T, H, HS, n, errs[0], errs[1], errs[2], errs[3], errs[4], bad,
           v == 0 ? "-" : (deterministic ? "bit-identical" : "NOT DETERMINISTIC"), ok ? "PASS" : "FAIL");
    return ok;
}

// ---------------------------------------------------------------------------------------------
// timing

static float median(std::vector<float> x) {
    std::sort(x.begin(), x.end());
    return x[x.size() / 2];
}

struct Timing {
    float fwd, bwd, both;
};

static Timing time_version(int v, int B, int T, int C, int H) {
    const Version& ver = versions[v];
    Buffers buf;
    buf.alloc(B, T, C, H);
    const size_t btc = (size_t)B * T * C;
    fill_normal(buf.qkv, 3 * btc, 1234 + v);
    fill_normal(buf.dout, btc, 5678 + v);
    cudaEvent_t start, stop;
    cudaCheck(cudaEventCreate(&start));
    cudaCheck(cudaEventCreate(&stop));
    const int reps = ver.timing_reps;
    std::vector<float> tf, tb, tfb;
    for (int it = 0; it < 3 + reps; it++) {
        float ms;
        cudaCheck(cudaEventRecord(start));
        ver.fwd(buf.out, buf.lse, buf.qkv, B, T, C, H, 0);
        cudaCheck(cudaEventRecord(stop));
        cudaCheck(cudaEventSynchronize(stop));
        cudaCheck(cudaEventElapsedTime(&ms, start, stop));
        if (it >= 3) tf.push_back(ms);
        cudaCheck(cudaEventRecord(start));
        ver.bwd(buf.dqkv, buf.delta, buf.dout, buf.out, buf.qkv, buf.lse, B, T, C, H, 0);
        cudaCheck(cudaEventRecord(stop));
        cudaCheck(cudaEventSynchronize(stop));
        cudaCheck(cudaEventElapsedTime(&ms, start, stop));
        if (it >= 3) tb.push_back(ms);
        cudaCheck(cudaEventRecord(start));
        ver.fwd(buf.out, buf.lse, buf.qkv, B, T, C, H, 0);
        ver.bwd(buf.dqkv, buf.delta, buf.dout, buf.out, buf.qkv, buf.lse, B, T, C, H, 0);
        cudaCheck(cudaEventRecord(stop));
        cudaCheck(cudaEventSynchronize(stop));
        cudaCheck(cudaEventElapsedTime(&ms, start, stop));
        if (it >= 3) tfb.push_back(ms);
    }
    cudaCheck(cudaEventDestroy(start));
    cudaCheck(cudaEventDestroy(stop));
    buf.release();
    return {median(tf), median(tb), median(tfb)};
}

int main(int argc, char** argv) {
    int only = 0;
    if (argc > 1) {
        only = atoi(argv[1]);
        if (only < 1 || only > num_versions) {
            fprintf(stderr, "usage: %s [version 1..%d]\n", argv[0], num_versions);
            return 1;
        }
    }
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
#ifdef LLMC_CUDNN
    printf("version %d: %s\n", num_versions, cudnn_attention_describe());
#endif

    struct Shape {
        int B, T, H, HS, nheads;
    };
    const Shape checks[] = {
        {2, 50, 3, 64, 99},  {2, 64, 2, 64, 99},   {1, 1024, 2, 64, 99}, {1, 2049, 1, 64, 99},
        {64, 1024, 12, 64, 2}, {2, 333, 2, 128, 99}, {1, 1024, 2, 128, 99}, {2, 77, 2, 32, 99},
        {2, 40, 2, 16, 99},
    };
    printf("correctness (relative error vs a float64 CPU reference, tolerance %.0e):\n", TOL);
    int all_ok = 1;
    uint64_t seed = 42;
    const bool have_wgmma = wgmma_compiled();
    if (!have_wgmma) printf("wgmma versions skipped: this build has no sm_90a code for this device\n");
    for (int v = 0; v < num_versions; v++) {
        if (only && v + 1 != only) continue;
        if (versions[v].wgmma && !have_wgmma) continue;
        for (const Shape& s : checks) {
            if (!versions[v].all_head_sizes && s.HS != 64 && s.HS != 128) continue;
            all_ok &= check_version(v, s.B, s.T, s.H * s.HS, s.H, s.nheads, seed++);
        }
    }

    const Shape timed[] = {{64, 1024, 12, 64, 0}, {32, 2048, 12, 64, 0}, {16, 4096, 12, 64, 0}, {64, 1024, 6, 128, 0}};
    struct Row {
        int v;
        Shape s;
        Timing t;
    };
    std::vector<Row> rows;
    for (const Shape& s : timed) {
        for (int v = 0; v < num_versions; v++) {
            if (only && v + 1 != only) continue;
            if (versions[v].wgmma && !have_wgmma) continue;
            if (v == 0 && s.T > 1024) continue;  // minutes per call
            rows.push_back({v, s, time_version(v, s.B, s.T, s.H * s.HS, s.H)});
        }
    }
    printf("\ntimings (median, ms; TFLOP/s with causal FLOPs counted as half; cuDNN at B*H=768 T=1024 HS=64 "
           "on this machine kind: fwd 0.325 ms, fwd+bwd 1.388 ms):\n");
    printf("%-26s %4s %5s %4s %4s | %8s %7s | %8s %7s | %8s %7s | %9s\n", "version", "B", "T", "H", "HS", "fwd ms",
           "TFLOP/s", "bwd ms", "TFLOP/s", "f+b ms", "TFLOP/s", "vs simple");
    for (const Row& r : rows) {
        const double fwd_flop = 4.0 * r.s.B * r.s.H * (double)r.s.T * r.s.T * r.s.HS / 2.0;
        double simple = 0.0;
        for (const Row& o : rows)
            if (o.v == 0 && o.s.B == r.s.B && o.s.T == r.s.T && o.s.HS == r.s.HS) simple = o.t.both;
        char ratio[32] = "-";
        if (simple > 0) snprintf(ratio, sizeof(ratio), "%.1fx", simple / r.t.both);
        printf("%-26s %4d %5d %4d %4d | %8.3f %7.1f | %8.3f %7.1f | %8.3f %7.1f | %9s\n", versions[r.v].name, r.s.B,
               r.s.T, r.s.H, r.s.HS, r.t.fwd, fwd_flop / r.t.fwd * 1e-9, r.t.bwd, 2.5 * fwd_flop / r.t.bwd * 1e-9,
               r.t.both, 3.5 * fwd_flop / r.t.both * 1e-9, ratio);
    }
#ifdef LLMC_CUDNN
    printf("\ncuDNN workspace (largest graph above): %.1f MiB\n", cudnn_attention_workspace_bytes() / 1048576.0);
    cudnn_attention_free();
#endif
    printf("\n%s\n", all_ok ? "all checks PASS" : "SOME CHECKS FAILED");
    return all_ok ? 0 : 1;
}
