/*
Encoder (token + position embedding), forward and backward: check and benchmark.

What it computes (llmc/encoder.cuh has the details):
  forward   out[b,t,:] = wte[inp[b,t],:] + wpe[t,:]
  backward  dwpe[t,:] += sum_b dout[b,t,:]
            dwte[v,:] += sum of dout[b,t,:] over the (b,t) with inp[b,t] == v
Shapes: B = 64, T = 1024, C = 768 by default (GPT-2 124M); vocabulary V = 50,257 in a wte of
Vp = 50,304 rows, wpe of T rows. out and dout are 100 MB in bf16, wte 77 MB: more than the 50 MB L2.

Tokens. The backward's speed depends on how skewed the tokens are (how many positions share the
most frequent token), so the timed inputs are drawn like text: the k-th most frequent token with
probability proportional to 1/(k+1) (a Zipf law: the first one takes ~5% of the positions, ~16,000
distinct tokens in 65,536 positions; tinyshakespeare's newline takes 12%), ranks mapped to random
token ids. The backward is also timed on uniform tokens (no token has more than ~10 positions).

Build and run (from this folder; `make` builds every program here):
    nvcc -O3 -std=c++17 -gencode arch=compute_90,code=sm_90 -I../.. encoder.cu -o encoder
    ./encoder [B T C]            bf16 (the engine's storage type)
    add -DLLMC_FP32 for the fp32 build of the same kernels

Versions, forward:
  v1           one thread per element (the engine's kernel before issue 5): 2-byte loads and
               stores, and an integer division and modulo per element to find (b, t, c) (GPUs
               have no integer divider: ~20 instructions each while the values fit in 32 bits).
  v2           one thread per 16-byte packet (8 bf16): 8x fewer and wider accesses, the index math
               once per packet. Needs C % 8 == 0 (bf16).
  v3           llmc/encoder.cuh (the engine's before 2026-11-24's later runs): one warp per (b,t)
               row, so the token id is read once per row and the only index math is one modulo per
               row. Its loop over the row's packets is not unrolled (C is a runtime value): one wte
               and one wpe packet per lane in flight.
  v4           llmc/encoder.cuh (the engine's, with the launch options its ENCODER_FWD_* defines
               name; -D can set them to time another as the engine's): a warp takes 1 or 2
               consecutive rows, their token ids read at once (one per lane), and issues every wte
               and wpe load of them before the first addition (VPL packets per lane a template: 3
               at C = 768 bf16). Launch options: warps per block; "cs stores" writes out with
               st.global.cs (evict first); "L2 evict_last loads" reads wte and wpe with an L2
               evict_last cache policy. Falls back to v3 where 16-byte accesses do not apply or
               C > 4 * 32 * X128. The engine's: 1 row, 4 warps per block, cs stores, evict_last
               loads (85.5% / 85.9% in session 5's runs, plain loads 84.0-85.0%; the pair with the
               layernorm forward after it, below, was no slower; every variant's numbers are in
               llmc/encoder.cuh). Dropped after the 2026-11-24 runs: 4 rows per warp (50-52%, 185
               registers) and a register cap for 64 warps per SM (32 registers: 30-43%).
  v5           a warp takes one position t for NB = 2, 4 or 8 consecutive batch rows and loads the
               wpe row once for them (v4 loads a wpe row per out row: half of its L2 loads), cs
               stores. 2026-11-24, two runs: NB = 2 78.0% / 76.5% (8 warps 75.7% / 75.6%), NB = 4
               58.6% / 59.1%, NB = 8 50.6% / 50.6% (133 and 240 registers: fewer warps per SM).
               The L2 loads were not what held v4 back.
  v6           persistent grid (what fits on the GPU), each warp walks rows w, w + W, ... and
               loads the next row before it adds and stores the current one; cs stores.
               2026-11-24: 68.8% / 67.4% (4 warps), 68.1% / 69.2% (8 warps): the launch ramp of
               v4's 16,384 blocks costs less than the loop does.
  (Dropped after one run, 2026-11-24 session 4: a block per position t with its wpe row in
  shared memory, warps walking the batch rows b, 1 or 2 at a time: 72.5% / 72.7% with 8 warps,
  68.5% with 4, against v4's 79.1% in the same run. It reads wpe from L2 once per 64 rows, so, as
  v5 showed, L2 loads are not the limit; the difference is that v4 writes consecutive rows while
  this one writes rows T apart.)
  (Dropped after two runs, 2026-11-24 session 5: v7, v4's kernel taking the rows in the backward
  plan's order, so that a token's rows follow each other and its wte row comes from DRAM once:
  72.6-75.5% with 4 warps against the engine's 75.9-79.4% in the same runs, uniform tokens 76.8 /
  78.2% against 76.0 / 75.5%; the writes, scattered, cost what the reads save. v8, bulk copies both
  ways, a persistent block walking tiles of R consecutive rows through a ring of shared-memory
  stages, thread 0 gathering the wte rows and the tile's wpe rows by bulk copies and writing the
  tile's out rows with one bulk store (L2 evict_first): R = 8 41.8-44.9%, R = 4 43.1%, R = 16
  31.4%, and with one token everywhere 36-38%: the bulk stores, issued by one thread per block that
  must wait for each to have read its stage, are slower than every lane's 16-byte stores.)
  Reference rows: cudaMemset of out, a stream of writes only, reaches 95.3-95.5% of copy (25.0 us
  for 100 MB; session 5's timing, below; 85-91% timed from an idle GPU). The engine's forward is
  also timed on uniform tokens (~36,000 distinct wte rows: 78.8-78.9%) and with one token at every
  position (its wte row always cached: 89.6-89.7%), and behind it, layer 0's layernorm forward
  (what the engine runs next) with each L2 policy, to see what evict_last costs the next kernel.
  The engine entry point (encoder_forward) is also checked on every shape.
Versions, backward (all deterministic: the host groups positions by token, encoder_backward_plan):
  v1           naive: dwpe one thread per (t, c) summing over b; dwte one block per distinct token,
               one thread per column, scalar loads over the token's positions (the engine's kernel
               before issue 5). A frequent token is summed by one block: thousands of serial rows.
  v2           the engine's until 2026-11-24, kept here: 16-byte packets; dwpe one thread per
               (t, packet) (the engine's still); dwte of rare tokens one warp each, walking the
               rows one at a time; frequent tokens split into column slices (as narrow as 64 bytes
               of each row) over persistent blocks, so a frequent token is spread over up to 24
               blocks, each reading a thin slice of thousands of rows.
  v3           llmc/encoder.cuh (the engine's until 2026-11-24 session 5): dwpe as v2; dwte by
               whole rows: tokens of more than 32 positions are cut into 32-position chunks, one
               warp each, whose fp32 sums go to a scratch buffer and are added in chunk order by a
               second kernel; the other tokens one warp each; U rows in flight per warp (loads into
               registers), warps per block. Zipf tokens: 207-210 us (v2) -> 90-92 us; uniform
               tokens level (108-110 us); the numbers of every variant (and the register caps that
               lost) are in llmc/encoder.cuh.
  v4           llmc/encoder.cuh (the engine's with the ENCODER_WTE_* defines, -D can set them):
               v3's items and sums, the rows brought in by bulk copies: each warp a persistent
               worker whose lane 0 keeps a ring of S row buffers in shared memory filled across
               item boundaries (S rows in flight at no register cost: 60 registers against v3's
               109); the reduce kernel as a programmatic dependent launch (session 6). Session
               6's runs: Zipf 79.4-80.2 us, uniform 84.5-85.6 us with S = 2 and 4 warps per
               block (the engine's; 8 warps level); more rows in flight was slower; chunks of 16
               positions 88.4 us Zipf, of 8 94.3 us (dropped): the partials cost more than the
               shorter chains save (llmc/encoder.cuh has the numbers). Session 7: the launchers
               take the plan's counts (chunk items for the split positions only, no reduce kernel
               when no token is split; the variant "launched as in session 6" does without them):
               uniform tokens 83.7-84.1 us against 85.7-85.9 us; and the reduce kernel's partial
               rows loaded at once per thread are a parameter (4, the engine's; 8 slower, and 16,
               dropped: 56.7 us for the Zipf dwte pass against 50).
               Items drawn from a counter as warps free up, and the split tokens' partials summed
               by a tree inside the rows kernel, lost (61-70 us for the dwte pass against 50 us:
               branch wip/encoder-tree, numbers in llmc/encoder.cuh).
  Reference row: every dout row read once in the plan's order, nothing computed or written (bulk
  copies, 2 or 4 rows in flight per warp): 25.6-26.2 us, 91-93% of copy, Zipf and uniform alike.
  What a deterministic dwte pass must at least read. The engine's two passes (dwpe, dwte) are also
  timed alone.
  In training (backward_in_training): the engine sums dwpe in layer 0's ln1 layernorm backward,
  which writes dout (llmc/layernorm.cuh, checked in dev/cuda/layernorm.cu), and runs the dwte pass
  alone. These rows time that pair, the layernorm backward alone, and the pair as it was before
  (plain layernorm backward, then both passes), on the same data; the encoder's share is the pair
  less the layernorm backward: 54.5-54.9 us Zipf (66-67% of copy on the whole backward's count),
  60.2-60.6 us uniform (85%), against 78.1-78.6 / 86.8-87.0 us before (session 6); session 7
  (the plan's counts) Zipf 54.6-55.4 us (66-67%), uniform 58.1-58.8 us (88-89%).

Checks: every version against a double-precision CPU reference on fresh random inputs per version
and shape (values uniform in [-1, 1): the encoder only adds, so their distribution does not matter,
and they are 10x faster to draw than normal ones at 50M values), at the full shape and at odd ones
(C = 100 runs the kernels' one-value-at-a-time path; one token at every position, also with B*T
not a multiple of 32; C = 1600 takes two passes over each row in v3's dwte rows kernel and 7 of
v4's 8 packets per lane). The forward's output is poisoned with NaN first. The backward accumulates (+=) into random dwte/dwpe; the whole of
dwte is compared (an untouched row must keep its value), then the backward is run again from the
same state and must give the same bits.
Timing (dev/cuda/common.cuh): 3 warm-up calls, median of 30, each call behind a spin kernel so the
host's time to launch it is not counted; GB/s over the bytes that must move and % of the
device-to-device copy bandwidth measured in the same run:
  forward   the distinct wte rows the tokens use (repeats can come from L2), T wpe rows, the out
            rows, and the token ids: (n_distinct + T + B*T) C values + 4 B*T bytes.
  backward  dout once, the touched dwte rows read and written, dwpe read and written, the plan:
            (B*T + 2 n_distinct + 2 T) C values + 4 (B*T + 2 n_distinct + 1) bytes. Each gradient
            needs all of dout and, without atomics or a scratch buffer the size of dout, they
            cannot share one read (llmc/encoder.cuh), so encoder_backward with both passes reads
            dout twice and tops out near half of copy on this count (hence the in-training rows,
            whose dwpe comes from the layernorm backward). The pass rows count dout once per pass:
            dwpe pass (B*T + 2 T) C values; dwte pass (B*T + 2 n_distinct) C values + the plan.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <string>
#include <vector>

#include "llmc/encoder.cuh"
#include "llmc/layernorm.cuh"  // the kernel after the forward in the engine (forward_then_layernorm)
#include "common.cuh"

#ifdef LLMC_FP32
static const double TOL = 1e-5;  // fp32 storage: summation order only
#else
static const double TOL = 5e-3;  // bf16 storage: one rounding of each output (2^-9 relative)
#endif

static const int VOCAB = 50257, PADDED_VOCAB = 50304;

// ---- versions written here ------------------------------------------------------------------

// forward v1: one thread per element
__global__ void encoder_forward_v1_kernel(floatX* out, const int* inp, const floatX* wte, const floatX* wpe, int B,
                                          int T, int C) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * T * C) return;
    const size_t bt = idx / C;  // 64-bit division and modulo, once per element
    const int c = (int)(idx % C), t = (int)(bt % T);
    out[idx] = from_float<floatX>(to_float(wte[(size_t)inp[bt] * C + c]) + to_float(wpe[(size_t)t * C + c]));
}

// forward v2: one thread per 16-byte packet (C % X128 == 0)
__global__ void encoder_forward_v2_kernel(floatX* out, const int* inp, const floatX* wte, const floatX* wpe, int B,
                                          int T, int C) {
    const size_t idx = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * X128;  // first element of the packet
    if (idx >= (size_t)B * T * C) return;
    const size_t bt = idx / C;
    const int c = (int)(idx % C), t = (int)(bt % T);
    const x128 a = load128(wte + (size_t)inp[bt] * C + c), b = load128(wpe + (size_t)t * C + c);
    x128 r;
    for (int k = 0; k < X128; k++) r.v[k] = from_float<floatX>(to_float(a.v[k]) + to_float(b.v[k]));
    store128(out + idx, r);
}

// backward v1, dwpe: one thread per (t, c), b in order
__global__ void encoder_backward_wpe_v1_kernel(floatX* dwpe, const floatX* dout, int B, int T, int C) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)T * C) return;
    float sum = 0.0f;
    for (int b = 0; b < B; b++) sum += to_float(dout[(size_t)b * T * C + idx]);
    dwpe[idx] = from_float<floatX>(to_float(dwpe[idx]) + sum);
}

// backward v1, dwte: one block per bucket (distinct token), one thread per column
__global__ void encoder_backward_wte_v1_kernel(floatX* dwte, const floatX* dout, const int* tokens,
                                               const int* starts, const int* positions, int C) {
    const int k = blockIdx.x;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float sum = 0.0f;
        for (int i = starts[k]; i < starts[k + 1]; i++) sum += to_float(dout[(size_t)positions[i] * C + c]);
        floatX* g = dwte + (size_t)tokens[k] * C + c;
        *g = from_float<floatX>(to_float(*g) + sum);
    }
}

static void encoder_backward_wpe_v1(floatX* dwpe, const floatX* dout, int B, int T, int C) {
    encoder_backward_wpe_v1_kernel<<<ceil_div(T * C, 256), 256>>>(dwpe, dout, B, T, C);
    cudaCheckLast();
}

static void encoder_backward_wte_v1(floatX* dwte, const floatX* dout, const int* plan, int n, int C) {
    encoder_backward_wte_v1_kernel<<<n, 256>>>(dwte, dout, plan, plan + n, plan + 2 * n + 1, C);
    cudaCheckLast();
}

// out row o = a + p, packet i of the row at (i * 32 + lane) * X128, stored with st.global.cs (v5, v6)
template <int VPL>
__device__ static inline void encoder_store_sum_cs(floatX* o, const x128 (&a)[VPL], const x128 (&p)[VPL], int lane,
                                                   int C) {
#pragma unroll
    for (int i = 0; i < VPL; i++) {
        const int c = (i * 32 + lane) * X128;
        if (c < C) {
            x128 s;
#pragma unroll
            for (int k = 0; k < X128; k++) s.v[k] = from_float<floatX>(to_float(a[i].v[k]) + to_float(p[i].v[k]));
            encoder_store128cs(o + c, s);
        }
    }
}

// forward v5: a warp takes one position t and NB consecutive batch rows b0 .. b0+NB-1 (rows
// b T + t): it loads the wpe row once for the NB rows (v4 loads one wpe row per out row, so half of
// its loads from L2 are wpe), then the NB wte rows, all before the first addition; cs stores.
// Warps are numbered t fastest, so a block's rows are consecutive positions of the same b.
template <int VPL, int NB>
__global__ void __launch_bounds__(256) encoder_forward_v5_kernel(floatX* __restrict__ out, const int* __restrict__ inp,
                                                                  const floatX* __restrict__ wte,
                                                                  const floatX* __restrict__ wpe, int B, int T, int C) {
    static_assert(NB >= 1 && NB <= 32, "one token id per lane");
    const int warp = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (warp >= T * ceil_div(B, NB)) return;  // uniform across the warp
    const int lane = threadIdx.x % 32;
    const int t = warp % T, b0 = (warp / T) * NB;
    const int my_token = lane < NB && b0 + lane < B ? inp[(size_t)(b0 + lane) * T + t] : 0;
    x128 p[VPL], a[NB][VPL];
#pragma unroll
    for (int i = 0; i < VPL; i++) {
        const int c = (i * 32 + lane) * X128;
        if (c < C) p[i] = load128(wpe + (size_t)t * C + c);
    }
#pragma unroll
    for (int r = 0; r < NB; r++) {
        const int token = __shfl_sync(0xFFFFFFFFu, my_token, r);
        if (b0 + r < B) {
#pragma unroll
            for (int i = 0; i < VPL; i++) {
                const int c = (i * 32 + lane) * X128;
                if (c < C) a[r][i] = load128(wte + (size_t)token * C + c);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < NB; r++) {
        if (b0 + r >= B) break;
        encoder_store_sum_cs<VPL>(out + ((size_t)(b0 + r) * T + t) * C, a[r], p, lane, C);
    }
}

// forward v6: persistent (a grid that fits on the GPU at once), warp w takes rows w, w + W, ...
// (W warps in all) and loads the next row's packets before it adds and stores the current one
// (software pipelining: one row's loads always in flight); the token ids of its next 32 rows are
// read at once, one per lane; cs stores. Fewer blocks: no launch ramp of 16,384 blocks.
template <int VPL>
__global__ void __launch_bounds__(256)
    encoder_forward_v6_kernel(floatX* __restrict__ out, const int* __restrict__ inp, const floatX* __restrict__ wte,
                              const floatX* __restrict__ wpe, int BT, int T, int C) {
    const long long W = (long long)gridDim.x * (blockDim.x / 32);
    long long row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= BT) return;
    const int lane = threadIdx.x % 32;
    int my_token = row + lane * W < BT ? inp[row + lane * W] : 0;
    int it = 0;  // index of the current row among the 32 whose token ids the lanes hold
    x128 a[VPL], b[VPL];
    {
        const int token = __shfl_sync(0xFFFFFFFFu, my_token, 0);
#pragma unroll
        for (int i = 0; i < VPL; i++) {
            const int c = (i * 32 + lane) * X128;
            if (c < C) {
                a[i] = load128(wte + (size_t)token * C + c);
                b[i] = load128(wpe + (size_t)(row % T) * C + c);
            }
        }
    }
    for (;;) {
        const long long next = row + W;
        const bool has_next = next < BT;  // uniform across the warp
        if (++it == 32) {
            my_token = next + lane * W < BT ? inp[next + lane * W] : 0;
            it = 0;
        }
        x128 na[VPL], nb[VPL];
        const int token = __shfl_sync(0xFFFFFFFFu, my_token, it);
        if (has_next) {
#pragma unroll
            for (int i = 0; i < VPL; i++) {
                const int c = (i * 32 + lane) * X128;
                if (c < C) {
                    na[i] = load128(wte + (size_t)token * C + c);
                    nb[i] = load128(wpe + (size_t)(next % T) * C + c);
                }
            }
        }
        encoder_store_sum_cs<VPL>(out + (size_t)row * C, a, b, lane, C);
        if (!has_next) break;
#pragma unroll
        for (int i = 0; i < VPL; i++) {
            a[i] = na[i];
            b[i] = nb[i];
        }
        row = next;
    }
}

// v5 / v6 where they apply (as v4: 16-byte accesses, C <= ENCODER_V4_MAX_VPL * 32 * X128), else v3
template <int NB>
static void encoder_forward_v5(floatX* out, const int* inp, const floatX* wte, const floatX* wpe, int B, int T, int C,
                               int warps) {
    const int vpl = ceil_div(C, 32 * X128);
    if (!encoder_can_vectorize(C, out, wte, wpe) || vpl > ENCODER_V4_MAX_VPL) {
        encoder_forward_v3(out, inp, wte, wpe, B, T, C, 0);
        return;
    }
    const int grid = ceil_div(T * ceil_div(B, NB), warps);
    switch (vpl) {
        case 1: encoder_forward_v5_kernel<1, NB><<<grid, 32 * warps>>>(out, inp, wte, wpe, B, T, C); break;
        case 2: encoder_forward_v5_kernel<2, NB><<<grid, 32 * warps>>>(out, inp, wte, wpe, B, T, C); break;
        case 3: encoder_forward_v5_kernel<3, NB><<<grid, 32 * warps>>>(out, inp, wte, wpe, B, T, C); break;
        default: encoder_forward_v5_kernel<4, NB><<<grid, 32 * warps>>>(out, inp, wte, wpe, B, T, C); break;
    }
    cudaCheckLast();
}

template <int VPL>
static int encoder_forward_v6_grid(int warps, int BT) {
    int device = 0, sms = 0, per_sm = 0;
    cudaCheck(cudaGetDevice(&device));
    cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    cudaCheck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, encoder_forward_v6_kernel<VPL>, 32 * warps, 0));
    const int resident = sms * (per_sm > 0 ? per_sm : 1);
    const int needed = ceil_div(BT, warps);
    return needed < resident ? needed : resident;
}

static void encoder_forward_v6(floatX* out, const int* inp, const floatX* wte, const floatX* wpe, int B, int T, int C,
                               int warps) {
    const int vpl = ceil_div(C, 32 * X128), BT = B * T;
    if (!encoder_can_vectorize(C, out, wte, wpe) || vpl > ENCODER_V4_MAX_VPL) {
        encoder_forward_v3(out, inp, wte, wpe, B, T, C, 0);
        return;
    }
    switch (vpl) {
#define LLMC_ENC_V6_CASE(V)                                                                                   \
    case V:                                                                                                   \
        encoder_forward_v6_kernel<V><<<encoder_forward_v6_grid<V>(warps, BT), 32 * warps>>>(out, inp, wte, wpe, \
                                                                                             BT, T, C);       \
        break;
        LLMC_ENC_V6_CASE(1)
        LLMC_ENC_V6_CASE(2)
        LLMC_ENC_V6_CASE(3)
        LLMC_ENC_V6_CASE(4)
#undef LLMC_ENC_V6_CASE
    }
    cudaCheckLast();
}

// Backward reference: every dout row read once in the plan's order (grouped by token), nothing
// computed or written: what a deterministic dwte pass, which must gather the rows of each token,
// costs in reads alone. Persistent warps take 32 consecutive plan entries at a time, lane 0 keeps
// S rows in flight by bulk copies (as the engine's v4 dwte kernel does).
template <int S>
__global__ void __launch_bounds__(256) encoder_gather_reference_kernel(const floatX* __restrict__ dout,
                                                                        const int* __restrict__ positions, int BT,
                                                                        int C) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    extern __shared__ __align__(128) unsigned char gather_smem[];
    const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const uint32_t row_bytes = (uint32_t)(C * sizeof(floatX));
    const uint32_t ring = smem_addr(gather_smem) + warp * S * row_bytes;
    const uint32_t bar0 = smem_addr(gather_smem) + warps * S * row_bytes + 8 * warp * S;
    if (lane != 0) return;
    for (int s = 0; s < S; s++) mbar_init(bar0 + 8 * s, 1);
    mbar_init_fence();
    const int W = gridDim.x * warps;
    // the warp's rows: entries 32 g .. 32 g + 31 of positions for g = w, w + W, ...
    auto entry = [&](int j) { return 32 * (blockIdx.x * warps + warp + (j / 32) * W) + j % 32; };
    auto load = [&](int j) {
        const uint32_t bar = bar0 + 8 * (j % S);
        mbar_expect_tx(bar, row_bytes);
        bulk_copy_g2s(ring + (j % S) * row_bytes, dout + (size_t)(positions[entry(j)] & ENCODER_POSITION_MASK) * C,
                      row_bytes, bar);
    };
    int issued = 0;
    for (; issued < S && entry(issued) < BT; issued++) load(issued);
    for (int j = 0; entry(j) < BT; j++) {
        mbar_wait(bar0 + 8 * (j % S), (j / S) & 1);
        if (entry(issued) < BT) load(issued++);
    }
#else
    __trap();
#endif
}

template <int S>
static void encoder_gather_reference(const floatX* dout, const int* positions, int BT, int C, int warps) {
    const size_t smem = (size_t)warps * S * (C * sizeof(floatX) + 8);
    auto kernel = encoder_gather_reference_kernel<S>;
    int device = 0, sms = 0, per_sm = 0;
    cudaCheck(cudaGetDevice(&device));
    cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    cudaCheck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 32 * warps, smem));
    const int groups = ceil_div(ceil_div(BT, 32), warps), resident = sms * (per_sm > 0 ? per_sm : 1);
    kernel<<<groups < resident ? groups : resident, 32 * warps, smem>>>(dout, positions, BT, C);
    cudaCheckLast();
}

// ---- backward v2 (the engine's before 2026-11-24): cold kernel, column-sliced hot kernel ------
// It reads the plan without the split flags (backward_data clears them for it). The hot tokens are
// those of more than ENCODER_COLD_ROWS positions, as for v3's split ones.
#define V2_HOT_THREADS 512   // hot kernel: block size
#define V2_ROWS_PER_LANE 32  // hot kernel: positions per row-lane it aims for (sets the slices)
#define V2_MIN_SLICE 4       // hot kernel: narrowest column slice, in packets (64 bytes for V = X128)
#define V2_BATCH 4           // hot kernel: rows each thread loads before adding them

// dwte of the cold tokens: one warp per bucket. Lane i holds the bucket's i-th position (a cold
// bucket has at most 32); each lane reads its dwte packets (up to ENCODER_WARP_PACKETS of them, a
// second pass when C is wider), then adds the bucket's rows in order, one row at a time, all its
// packets of a row in flight together.
template <int V>
__global__ void encoder_backward_wte_cold_v2_kernel(floatX* __restrict__ dwte, const floatX* __restrict__ dout,
                                                    const int* __restrict__ tokens, const int* __restrict__ starts,
                                                    const int* __restrict__ positions, int n, int C) {
    const int k = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (k >= n) return;
    const int begin = starts[k], count = starts[k + 1] - begin;
    if (count > ENCODER_COLD_ROWS) return;  // the hot kernel's
    const int lane = threadIdx.x % 32;
    const int my_position = lane < count ? positions[begin + lane] : 0;
    floatX* g = dwte + (size_t)tokens[k] * C;
    const int step = 32 * V;  // columns between a lane's packets
    for (int base = 0; base < C; base += ENCODER_WARP_PACKETS * step) {
        const int c0 = base + lane * V;
        EncoderPack<V> old[ENCODER_WARP_PACKETS];
#pragma unroll
        for (int j = 0; j < ENCODER_WARP_PACKETS; j++)
            if (c0 + j * step < C) old[j] = encoder_load<V>(g + c0 + j * step);
        float acc[ENCODER_WARP_PACKETS][V] = {};
#pragma unroll 1
        for (int i = 0; i < count; i++) {
            const floatX* d = dout + (size_t)__shfl_sync(0xFFFFFFFFu, my_position, i) * C;
            EncoderPack<V> x[ENCODER_WARP_PACKETS];
#pragma unroll
            for (int j = 0; j < ENCODER_WARP_PACKETS; j++)
                if (c0 + j * step < C) x[j] = encoder_load<V>(d + c0 + j * step);
#pragma unroll
            for (int j = 0; j < ENCODER_WARP_PACKETS; j++)
                if (c0 + j * step < C)
                    for (int e = 0; e < V; e++) acc[j][e] += to_float(x[j].v[e]);
        }
#pragma unroll
        for (int j = 0; j < ENCODER_WARP_PACKETS; j++) {
            if (c0 + j * step < C) {
                for (int e = 0; e < V; e++) old[j].v[e] = from_float<floatX>(to_float(old[j].v[e]) + acc[j][e]);
                encoder_store<V>(g + c0 + j * step, old[j]);
            }
        }
    }
}

// dwte of the hot tokens. A hot bucket is split into `slices` column slices, as many as it takes
// for each of a block's row-lanes to sum at most ~V2_ROWS_PER_LANE positions (up to P /
// V2_MIN_SLICE slices for the largest: 64-byte slices of each row). Items (bucket k, slice s) are
// numbered k * max_slices + s; a persistent grid walks them and skips the empty ones. For an item
// of `width` packets, thread (row-lane r, packet q) sums packet q over positions r, r + lanes, ...
// in order; the row-lanes' sums go through shared memory and one thread per column adds them in
// row-lane order and updates dwte.
template <int V>
__global__ void __launch_bounds__(V2_HOT_THREADS)
    encoder_backward_wte_hot_v2_kernel(floatX* __restrict__ dwte, const floatX* __restrict__ dout,
                                       const int* __restrict__ tokens, const int* __restrict__ starts,
                                       const int* __restrict__ positions, int n, int C) {
    __shared__ float lane_sums[V2_HOT_THREADS * V];  // [row-lane][packet q][V], the current item
    const int P = C / V;                            // packets per row
    const int max_slices = ceil_div(P, V2_MIN_SLICE);
    for (int item = blockIdx.x;; item += gridDim.x) {
        const int k = item / max_slices, s = item % max_slices;
        if (k >= n) break;
        const int begin = starts[k], end = starts[k + 1];
        if (end - begin <= ENCODER_COLD_ROWS) break;  // hot buckets come first: the rest are cold
        long long slices =
            ((long long)P * (end - begin) + V2_HOT_THREADS * V2_ROWS_PER_LANE - 1) /
            (V2_HOT_THREADS * V2_ROWS_PER_LANE);
        if (slices < ceil_div(P, V2_HOT_THREADS)) slices = ceil_div(P, V2_HOT_THREADS);
        if (slices > max_slices) slices = max_slices;
        const int width = ceil_div(P, (int)slices);  // packets per slice, <= V2_HOT_THREADS
        const int p0 = s * width;                    // first packet of this slice
        if (p0 >= P) continue;                       // an empty item: this bucket has fewer slices
        const int lanes = V2_HOT_THREADS / width;
        const int q = threadIdx.x % width, r = threadIdx.x / width;
        const size_t c = (size_t)(p0 + q) * V;
        float acc[V] = {};
        if (r < lanes && p0 + q < P) {
            for (int i0 = begin + r; i0 < end; i0 += V2_BATCH * lanes) {
                EncoderPack<V> x[V2_BATCH];
#pragma unroll
                for (int j = 0; j < V2_BATCH; j++)
                    if (i0 + j * lanes < end) x[j] = encoder_load<V>(dout + (size_t)positions[i0 + j * lanes] * C + c);
#pragma unroll
                for (int j = 0; j < V2_BATCH; j++)
                    if (i0 + j * lanes < end)
                        for (int e = 0; e < V; e++) acc[e] += to_float(x[j].v[e]);
            }
        }
        for (int e = 0; e < V; e++) lane_sums[threadIdx.x * V + e] = acc[e];  // = [r][q][e]
        __syncthreads();
        const int columns = ((P - p0 < width) ? P - p0 : width) * V;
        floatX* g = dwte + (size_t)tokens[k] * C + (size_t)p0 * V;
        for (int col = threadIdx.x; col < columns; col += blockDim.x) {
            float sum = 0.0f;
            for (int rr = 0; rr < lanes; rr++) sum += lane_sums[rr * width * V + col];
            g[col] = from_float<floatX>(to_float(g[col]) + sum);
        }
        __syncthreads();  // lane_sums is rewritten by the next item
    }
}

template <int V>
static void encoder_backward_wte_v2_launch(floatX* dwte, const floatX* dout, const int* plan_device, int n, int BT,
                                           int C) {
    const int* tokens = plan_device;
    const int* starts = plan_device + n;
    const int* positions = plan_device + 2 * n + 1;
    if (n <= 0) return;
    encoder_backward_wte_cold_v2_kernel<V><<<ceil_div(n, 8), 256>>>(dwte, dout, tokens, starts, positions, n, C);
    cudaCheckLast();
    const int max_hot = BT / (ENCODER_COLD_ROWS + 1) < n ? BT / (ENCODER_COLD_ROWS + 1) : n;
    if (max_hot == 0) return;
    int device = 0, sms = 0, per_sm = 0;
    cudaCheck(cudaGetDevice(&device));
    cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    cudaCheck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, encoder_backward_wte_hot_v2_kernel<V>,
                                                            V2_HOT_THREADS, 0));
    const long long items = (long long)max_hot * ceil_div(C / V, V2_MIN_SLICE);
    const long long resident = (long long)sms * (per_sm > 0 ? per_sm : 1);
    const int grid = (int)(items < resident ? items : resident);
    encoder_backward_wte_hot_v2_kernel<V><<<grid, V2_HOT_THREADS>>>(dwte, dout, tokens, starts, positions, n, C);
    cudaCheckLast();
}

static void encoder_backward_wte_v2(floatX* dwte, const floatX* dout, const int* plan_device, int n, int BT, int C) {
    if (encoder_can_vectorize(C, dwte, dout, dout)) {
        encoder_backward_wte_v2_launch<X128>(dwte, dout, plan_device, n, BT, C);
    } else {
        encoder_backward_wte_v2_launch<1>(dwte, dout, plan_device, n, BT, C);
    }
}

// ---- inputs -----------------------------------------------------------------------------------

enum TokenLaw { ZIPF, UNIFORM, ONE_TOKEN };
static const char* law_name(TokenLaw law) {
    return law == ZIPF ? "zipf tokens" : law == UNIFORM ? "uniform tokens" : "one token";
}

// n values uniform in [-1, 1), rounded to floatX
static std::vector<floatX> random_values(Rng* rng, size_t n) {
    std::vector<floatX> out(n);
    for (size_t i = 0; i < n; i++) out[i] = from_float<floatX>((float)(2.0 * rng_uniform(rng) - 1.0));
    return out;
}

static std::vector<int> random_tokens(Rng* rng, int BT, TokenLaw law) {
    std::vector<int> tokens(BT);
    if (law == UNIFORM) {
        for (int i = 0; i < BT; i++) tokens[i] = (int)rng_below(rng, VOCAB);
    } else if (law == ONE_TOKEN) {
        const int token = (int)rng_below(rng, VOCAB);
        for (int i = 0; i < BT; i++) tokens[i] = token;
    } else {
        // rank k (0-based) has weight 1 / (k + 2); ranks go to random token ids
        std::vector<double> cdf(VOCAB);
        double total = 0.0;
        for (int k = 0; k < VOCAB; k++) cdf[k] = (total += 1.0 / (k + 2.0));
        std::vector<uint32_t> id(VOCAB);
        for (int k = 0; k < VOCAB; k++) id[k] = (uint32_t)k;
        rng_shuffle_u32(rng, id.data(), VOCAB);
        for (int i = 0; i < BT; i++) {
            const double u = rng_uniform(rng) * total;
            const int k = (int)(std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
            tokens[i] = (int)id[std::min(k, VOCAB - 1)];
        }
    }
    return tokens;
}

static int distinct_tokens(const std::vector<int>& tokens) {
    std::vector<char> seen(VOCAB, 0);
    int n = 0;
    for (int v : tokens) {
        if (!seen[v]) n++;
        seen[v] = 1;
    }
    return n;
}

// ---- forward --------------------------------------------------------------------------------

struct Shape {
    int B, T, C;
};

static std::string shape_name(const Shape& s) {
    char buf[64];
    snprintf(buf, sizeof(buf), "B=%d T=%d C=%d", s.B, s.T, s.C);
    return buf;
}

// version 0 is the engine's entry point, encoder_forward (checked, not timed: it runs one of the
// others); v4 with `rows` per warp, `warps` per block, `stream` (st.global.cs stores) and `keep`
// (L2 evict_last loads)
struct FwdVersion {
    int version, rows, warps;
    bool stream, keep;
};
static const FwdVersion FORWARD_VERSIONS[] = {
    {1, 0, 0, false, false}, {2, 0, 0, false, false}, {3, 0, 0, false, false}, {4, 1, 8, false, false},
    {4, 1, 8, true, false},  {4, 2, 8, true, false},  {4, 1, 4, true, false},  {4, 1, 2, true, false},
    {4, 1, 8, true, true},   {4, 1, 4, true, true},   {4, 1, 2, true, true},   {5, 2, 4, true, false},
    {5, 4, 4, true, false},  {5, 2, 8, true, false},  {5, 8, 4, true, false},  {6, 1, 4, true, false},
    {6, 1, 8, true, false}};
static const FwdVersion FORWARD_ENTRY = {0, 0, 0, false, false};

static bool forward_is_engine(const FwdVersion& v) {
    if (v.version == 3) return ENCODER_FWD_ROWS == 0;
    return v.version == 4 && v.rows == ENCODER_FWD_ROWS && v.warps == ENCODER_FWD_WARPS &&
           v.stream == ENCODER_FWD_STREAM && v.keep == ENCODER_FWD_KEEP;
}
static std::string forward_name(const FwdVersion& v) {
    if (v.version == 0) return "engine entry";
    std::string name = "v" + std::to_string(v.version);
    if (v.version == 4) {
        name += " (" + std::to_string(v.rows) + (v.rows == 1 ? " row" : " rows") + " per warp, " +
                std::to_string(v.warps) + " warps per block";
        if (v.stream) name += ", cs stores";
        if (v.keep) name += ", L2 evict_last loads";
        name += ")";
    } else if (v.version == 5) {
        name += " (" + std::to_string(v.rows) + " batch rows per warp share a wpe row, " + std::to_string(v.warps) +
                " warps per block, cs stores)";
    } else if (v.version == 6) {
        name += " (persistent, next row prefetched, " + std::to_string(v.warps) + " warps per block, cs stores)";
    }
    if (forward_is_engine(v)) name += " (engine)";
    return name;
}

static void forward_call(const FwdVersion& v, floatX* out, const int* inp, const floatX* wte, const floatX* wpe,
                         const Shape& s) {
    const size_t total = (size_t)s.B * s.T * s.C;
    if (v.version == 1) {
        encoder_forward_v1_kernel<<<(unsigned)ceil_div_sz(total, 256), 256>>>(out, inp, wte, wpe, s.B, s.T, s.C);
        cudaCheckLast();
    } else if (v.version == 2) {
        encoder_forward_v2_kernel<<<(unsigned)ceil_div_sz(total / X128, 256), 256>>>(out, inp, wte, wpe, s.B, s.T,
                                                                                     s.C);
        cudaCheckLast();
    } else if (v.version == 3) {
        encoder_forward_v3(out, inp, wte, wpe, s.B, s.T, s.C, 0);
    } else if (v.version == 4) {
        // the instances the table above names
        const int key = v.rows * 100 + (v.stream ? 10 : 0) + (v.keep ? 1 : 0);
        switch (key) {
#define LLMC_ENC_RUN_CASE(R, S, K)                                                                \
    case R * 100 + S * 10 + K:                                                                    \
        encoder_forward_v4<R, S == 1, K == 1>(out, inp, wte, wpe, s.B, s.T, s.C, 0, v.warps); \
        break;
            LLMC_ENC_RUN_CASE(1, 0, 0)
            LLMC_ENC_RUN_CASE(1, 1, 0)
            LLMC_ENC_RUN_CASE(2, 1, 0)
            LLMC_ENC_RUN_CASE(1, 1, 1)
#undef LLMC_ENC_RUN_CASE
            default:
                fprintf(stderr, "forward_call: no v4 instance with %d rows, cs stores %d, evict_last %d\n", v.rows,
                        (int)v.stream, (int)v.keep);
                exit(1);
        }
    } else if (v.version == 5) {
        switch (v.rows) {
            case 2: encoder_forward_v5<2>(out, inp, wte, wpe, s.B, s.T, s.C, v.warps); break;
            case 4: encoder_forward_v5<4>(out, inp, wte, wpe, s.B, s.T, s.C, v.warps); break;
            case 8: encoder_forward_v5<8>(out, inp, wte, wpe, s.B, s.T, s.C, v.warps); break;
            default:
                fprintf(stderr, "forward_call: no v5 instance with %d batch rows\n", v.rows);
                exit(1);
        }
    } else if (v.version == 6) {
        encoder_forward_v6(out, inp, wte, wpe, s.B, s.T, s.C, v.warps);
    } else {
        encoder_forward(out, inp, wte, wpe, s.B, s.T, s.C, 0);
    }
}

// The forward writes B*T*C values and reads a fifth as many (distinct wte rows, wpe), so what a
// write-only stream reaches on this GPU bounds it more tightly than the copy does: cudaMemset of
// out, timed like the versions and printed as a reference row (no check, not a version).
static void forward_write_reference(const Shape& s, double copy_gbs) {
    const size_t bytes = (size_t)s.B * s.T * s.C * sizeof(floatX);
    floatX* d_out = bench::device_alloc<floatX>(bytes / sizeof(floatX));
    const double ms = bench::time_ms([&] { cudaCheck(cudaMemsetAsync(d_out, 0, bytes)); });
    bench::report_memory("encoder forward (" + shape_name(s) + ")", "reference: cudaMemset of out (writes only)",
                         -1.0, TOL, ms, (double)bytes, copy_gbs);
    cudaCheck(cudaFree(d_out));
}

// What the forward's L2 policy costs the kernel after it: the engine's next kernel is layer 0's
// layernorm forward on `out` (llmc/gpt2cu.cuh), so the pair is timed with the forward's wte and wpe
// loads plain or evict_last (cs stores, 4 or 2 warps per block). Rows of the pair (no check: both
// kernels are checked on their own), bytes of both kernels' counts.
static void forward_then_layernorm(const Shape& s, uint64_t seed, double copy_gbs) {
    const int BT = s.B * s.T;
    const size_t n_out = (size_t)BT * s.C;
    Rng rng;
    rng_init(&rng, seed);
    const std::vector<int> tokens = random_tokens(&rng, BT, ZIPF);
    floatX* d_wte = bench::to_device(random_values(&rng, (size_t)PADDED_VOCAB * s.C));
    floatX* d_wpe = bench::to_device(random_values(&rng, (size_t)s.T * s.C));
    floatX* d_weight = bench::to_device(random_values(&rng, (size_t)s.C));
    floatX* d_bias = bench::to_device(random_values(&rng, (size_t)s.C));
    int* d_inp = bench::to_device(tokens);
    floatX* d_out = bench::device_alloc<floatX>(n_out);
    floatX* d_ln = bench::device_alloc<floatX>(n_out);
    float* d_stats = bench::device_alloc<float>(2 * (size_t)BT);
    const double enc_bytes = ((double)distinct_tokens(tokens) + s.T + BT) * s.C * sizeof(floatX) + 4.0 * BT;
    const double ln_bytes = 2.0 * n_out * sizeof(floatX) + 8.0 * BT;
    for (int warps : {4, 2}) {
        for (bool keep : {false, true}) {
            const double ms = bench::time_ms([&] {
                if (keep) encoder_forward_v4<1, true, true>(d_out, d_inp, d_wte, d_wpe, s.B, s.T, s.C, 0, warps);
                else encoder_forward_v4<1, true, false>(d_out, d_inp, d_wte, d_wpe, s.B, s.T, s.C, 0, warps);
                layernorm_forward(d_ln, d_stats, d_stats + BT, d_out, d_weight, d_bias, BT, s.C, 0);
            });
            bench::report_memory("encoder forward, then layernorm forward (" + shape_name(s) + ")",
                                 "v4 (1 row per warp, " + std::to_string(warps) + " warps per block, cs stores" +
                                     (keep ? ", L2 evict_last loads" : "") + ") + engine layernorm",
                                 -1.0, TOL, ms, enc_bytes + ln_bytes, copy_gbs);
        }
    }
    for (void* p : {(void*)d_wte, (void*)d_wpe, (void*)d_weight, (void*)d_bias, (void*)d_inp, (void*)d_out,
                    (void*)d_ln, (void*)d_stats})
        cudaCheck(cudaFree(p));
}

// checks one version at one shape on fresh inputs; with copy_gbs > 0 also times it (on those inputs)
static void forward_case(const FwdVersion& v, const Shape& s, uint64_t seed, double copy_gbs, TokenLaw law = ZIPF) {
    const std::string name = forward_name(v);
    const int BT = s.B * s.T;
    const size_t n_out = (size_t)BT * s.C;
    if (v.version == 2 && s.C % X128 != 0) {
        printf("forward %s %s: skipped (needs C %% %d == 0)\n", name.c_str(), shape_name(s).c_str(), X128);
        return;
    }
    Rng rng;
    rng_init(&rng, seed);
    const std::vector<floatX> wte = random_values(&rng, (size_t)PADDED_VOCAB * s.C);
    const std::vector<floatX> wpe = random_values(&rng, (size_t)s.T * s.C);
    const std::vector<int> tokens = random_tokens(&rng, BT, law);
    floatX *d_wte = bench::to_device(wte), *d_wpe = bench::to_device(wpe);
    int* d_inp = bench::to_device(tokens);
    floatX* d_out = bench::device_alloc<floatX>(n_out);

    std::vector<double> ref(n_out);
    for (int bt = 0; bt < BT; bt++) {
        const floatX* w = &wte[(size_t)tokens[bt] * s.C];
        const floatX* p = &wpe[(size_t)(bt % s.T) * s.C];
        for (int c = 0; c < s.C; c++) ref[(size_t)bt * s.C + c] = (double)to_float(w[c]) + (double)to_float(p[c]);
    }
    bench::poison(d_out, n_out);
    forward_call(v, d_out, d_inp, d_wte, d_wpe, s);
    cudaCheck(cudaDeviceSynchronize());
    const double err = bench::rel_error(bench::to_host(d_out, n_out), ref);

    const std::string kernel =
        "encoder forward (" + shape_name(s) + (law == ZIPF ? "" : std::string(", ") + law_name(law)) + ")";
    if (copy_gbs > 0.0 && v.version != 0) {
        const double ms = bench::time_ms([&] { forward_call(v, d_out, d_inp, d_wte, d_wpe, s); });
        const double bytes =
            ((double)distinct_tokens(tokens) + s.T + BT) * s.C * sizeof(floatX) + 4.0 * BT;
        bench::report_memory(kernel, name, err, TOL, ms, bytes, copy_gbs);
    } else {
        bench::check((kernel + " " + name).c_str(), err, TOL);
    }
    cudaCheck(cudaFree(d_wte));
    cudaCheck(cudaFree(d_wpe));
    cudaCheck(cudaFree(d_inp));
    cudaCheck(cudaFree(d_out));
}

// ---- backward -------------------------------------------------------------------------------

// v3 and v4: the dwte rows kernel's rows in flight per warp and its warps per block; v4 also the
// positions of a split token's chunk (v3's are 32), the partial rows each thread of the reduce
// kernel loads at once, and whether it launches as in session 6, without the plan's counts: chunk
// items over every position and a reduce grid over every token that could be split
struct BwdVersion {
    int version, rows_in_flight, warps, chunk, reduce_batch;
    bool session6;
};
static const BwdVersion BACKWARD_VERSIONS[] = {
    {1, 0, 0, 0, 0, false},   {2, 0, 0, 0, 0, false},   {3, 1, 4, 32, 4, false},  {3, 2, 4, 32, 4, false},
    {4, 2, 4, 32, 4, true},   {4, 2, 4, 32, 4, false},  {4, 2, 4, 32, 8, false},
    {4, 2, 8, 32, ENCODER_REDUCE_BATCH, false}, {4, 4, 4, 32, ENCODER_REDUCE_BATCH, false},
    {4, 2, 4, 16, ENCODER_REDUCE_BATCH, false}};
static const int MIN_CHUNK = 16;  // the scratch is sized for the smallest chunk above

static bool backward_is_engine(const BwdVersion& v) {
    return v.version == 4 && v.rows_in_flight == ENCODER_WTE_ROWS_IN_FLIGHT && v.warps == ENCODER_WTE_WARPS &&
           v.chunk == ENCODER_WTE_CHUNK && v.reduce_batch == ENCODER_REDUCE_BATCH && !v.session6;
}
static std::string backward_name(const BwdVersion& v) {
    std::string name = "v" + std::to_string(v.version);
    if (v.version == 3) {
        name += " (dwte " + std::to_string(v.rows_in_flight) +
                (v.rows_in_flight == 1 ? " row" : " rows") + " in flight, " + std::to_string(v.warps) +
                " warps per block";
        name += ")";
    } else if (v.version == 4) {
        name += " (dwte bulk copies, " + std::to_string(v.rows_in_flight) + " rows in flight, " +
                std::to_string(v.warps) + " warps per block" +
                (v.chunk == 32 ? "" : ", chunks of " + std::to_string(v.chunk)) + ", reduce loads " +
                std::to_string(v.reduce_batch) + " partials at once" +
                (v.session6 ? ", launched as in session 6" : "") + ")";
    }
    if (backward_is_engine(v)) name += " (engine)";
    return name;
}

struct BackwardData {
    Shape s;
    int n;                   // distinct tokens (buckets)
    EncoderPlanShape shape;  // the plan's counts (shape.n == n)
    std::vector<int> tokens;
    std::vector<floatX> dout, dwte0, dwpe0;  // host copies of the inputs
    floatX *d_dout, *d_dwte, *d_dwpe;
    int* d_plan;     // the engine's plan
    int* d_plan_v2;  // the same without the split flags (v1 and v2 read positions as they are)
    float* d_scratch;
};

// fresh inputs, the engine's host-side plan, and their device copies
static void backward_data(BackwardData* d, const Shape& s, TokenLaw law, uint64_t seed) {
    const int BT = s.B * s.T;
    Rng rng;
    rng_init(&rng, seed);
    d->s = s;
    d->dout = random_values(&rng, (size_t)BT * s.C);
    d->dwte0 = random_values(&rng, (size_t)PADDED_VOCAB * s.C);
    d->dwpe0 = random_values(&rng, (size_t)s.T * s.C);
    d->tokens = random_tokens(&rng, BT, law);
    std::vector<int> counts(VOCAB), plan(3 * (size_t)BT + 1);
    EncoderPlanner planner = {counts.data(), VOCAB};
    d->shape = encoder_backward_plan(&planner, d->tokens.data(), BT, plan.data());
    d->n = d->shape.n;
    d->d_dout = bench::to_device(d->dout);
    d->d_dwte = bench::to_device(d->dwte0);
    d->d_dwpe = bench::to_device(d->dwpe0);
    d->d_plan = bench::to_device(plan);
    for (int i = 2 * d->n + 1; i < 3 * BT + 1; i++) plan[i] &= ENCODER_POSITION_MASK;
    d->d_plan_v2 = bench::to_device(plan);
    d->d_scratch = bench::device_alloc<float>(
        std::max(encoder_backward_scratch_floats(BT, s.C), encoder_wte_scratch_floats(BT, s.C, MIN_CHUNK)));
}

static void backward_free(BackwardData* d) {
    cudaCheck(cudaFree(d->d_dout));
    cudaCheck(cudaFree(d->d_dwte));
    cudaCheck(cudaFree(d->d_dwpe));
    cudaCheck(cudaFree(d->d_plan));
    cudaCheck(cudaFree(d->d_plan_v2));
    cudaCheck(cudaFree(d->d_scratch));
}

// v4's dwte pass with its compile-time options
template <int S, int BATCH>
static void backward_v4_call(const BwdVersion& v, const BackwardData& d, const EncoderPlanShape& shape) {
    encoder_backward_wte_v4<S, BATCH>(d.d_dwte, d.d_scratch, d.d_dout, d.d_plan, shape, d.s.B * d.s.T, d.s.C, v.warps,
                                      v.chunk, 0);
}

// pass: 0 both (the version's whole backward), 1 dwpe only, 2 dwte only
// (the engine's entry point, encoder_backward, is called as such for the version marked "(engine)")
static void backward_call(const BwdVersion& v, const BackwardData& d, int pass = 0) {
    const Shape& s = d.s;
    const int BT = s.B * s.T;
    if (v.version == 1) {
        if (pass != 2) encoder_backward_wpe_v1(d.d_dwpe, d.d_dout, s.B, s.T, s.C);
        if (pass != 1) encoder_backward_wte_v1(d.d_dwte, d.d_dout, d.d_plan_v2, d.n, s.C);
        return;
    }
    if (v.version == 2) {
        if (pass != 2) encoder_backward_wpe_launch<4>(d.d_dwpe, d.d_dout, s.B, s.T, s.C, 0);
        if (pass != 1) encoder_backward_wte_v2(d.d_dwte, d.d_dout, d.d_plan_v2, d.n, BT, s.C);
        return;
    }
    if (pass == 0 && backward_is_engine(v)) {
        encoder_backward(d.d_dwte, d.d_dwpe, d.d_scratch, d.d_dout, d.d_plan, d.shape, s.B, s.T, s.C, 0);
        return;
    }
    if (pass != 2) {
        encoder_backward_wpe(d.d_dwpe, d.d_dout, s.B, s.T, s.C, 0);
    }
    if (pass != 1 && v.version == 4) {
        EncoderPlanShape shape = d.shape;
        if (v.session6) {  // the counts the launchers assumed before they were given the plan's
            const int max_split = BT / (ENCODER_COLD_ROWS + 1);
            shape.splits = max_split < d.n ? max_split : d.n;
            shape.split_positions = max_split > 0 ? BT : 0;
        }
        if (v.rows_in_flight == 2 && v.reduce_batch == 4) backward_v4_call<2, 4>(v, d, shape);
        else if (v.rows_in_flight == 2 && v.reduce_batch == 8) backward_v4_call<2, 8>(v, d, shape);
        else if (v.rows_in_flight == 4 && v.reduce_batch == ENCODER_REDUCE_BATCH)
            backward_v4_call<4, ENCODER_REDUCE_BATCH>(v, d, shape);
        else {
            fprintf(stderr, "backward_call: no v4 instance for %s\n", backward_name(v).c_str());
            exit(1);
        }
    } else if (pass != 1) {
        switch (v.rows_in_flight) {
            case 1:
                encoder_backward_wte_v3<1>(d.d_dwte, d.d_scratch, d.d_dout, d.d_plan, d.shape, BT, s.C, v.warps, 0);
                break;
            case 2:
                encoder_backward_wte_v3<2>(d.d_dwte, d.d_scratch, d.d_dout, d.d_plan, d.shape, BT, s.C, v.warps, 0);
                break;
            default:
                fprintf(stderr, "backward_call: no dwte instance with %d rows in flight\n", v.rows_in_flight);
                exit(1);
        }
    }
}

static std::string backward_kernel(const char* what, const Shape& s, TokenLaw law) {
    return std::string("encoder backward") + what + " (" + shape_name(s) + ", " + law_name(law) + ")";
}

// checks one version at one shape on fresh inputs (twice: same bits); with copy_gbs > 0 also times it
static void backward_case(const BwdVersion& version, const Shape& s, TokenLaw law, uint64_t seed, double copy_gbs) {
    const std::string name = backward_name(version);
    const int BT = s.B * s.T;
    const size_t n_dwte = (size_t)PADDED_VOCAB * s.C, n_dwpe = (size_t)s.T * s.C;
    BackwardData d;
    backward_data(&d, s, law, seed);

    std::vector<double> ref_dwte = bench::to_double(d.dwte0), ref_dwpe = bench::to_double(d.dwpe0);
    for (int bt = 0; bt < BT; bt++) {
        const floatX* row = &d.dout[(size_t)bt * s.C];
        double* gw = &ref_dwte[(size_t)d.tokens[bt] * s.C];
        double* gp = &ref_dwpe[(size_t)(bt % s.T) * s.C];
        for (int c = 0; c < s.C; c++) {
            gw[c] += to_float(row[c]);
            gp[c] += to_float(row[c]);
        }
    }
    backward_call(version, d);
    cudaCheck(cudaDeviceSynchronize());
    const std::vector<floatX> dwte1 = bench::to_host(d.d_dwte, n_dwte), dwpe1 = bench::to_host(d.d_dwpe, n_dwpe);
    double err = std::max(bench::rel_error(dwte1, ref_dwte), bench::rel_error(dwpe1, ref_dwpe));
    // determinism: from the same state again, the same bits
    bench::copy_to_device(d.d_dwte, d.dwte0);
    bench::copy_to_device(d.d_dwpe, d.dwpe0);
    backward_call(version, d);
    cudaCheck(cudaDeviceSynchronize());
    if (!bench::same_bits(dwte1, bench::to_host(d.d_dwte, n_dwte)) ||
        !bench::same_bits(dwpe1, bench::to_host(d.d_dwpe, n_dwpe))) {
        printf("backward %s %s: a second run from the same state gave different bits\n", name.c_str(),
               shape_name(s).c_str());
        err = INFINITY;
    }

    const std::string kernel = backward_kernel("", s, law);
    if (copy_gbs > 0.0) {
        const double ms = bench::time_ms([&] { backward_call(version, d); });
        const double bytes =
            ((double)BT + 2.0 * d.n + 2.0 * s.T) * s.C * sizeof(floatX) + 4.0 * (BT + 2.0 * d.n + 1);
        bench::report_memory(kernel, name, err, TOL, ms, bytes, copy_gbs);
    } else {
        bench::check((kernel + " " + name).c_str(), err, TOL);
    }
    backward_free(&d);
}

// times one version's two passes alone (checked as a whole by backward_case)
static void backward_passes(const BwdVersion& version, const Shape& s, TokenLaw law, uint64_t seed,
                            double copy_gbs) {
    const std::string name = backward_name(version);
    const int BT = s.B * s.T;
    BackwardData d;
    backward_data(&d, s, law, seed);
    const double ms_wpe = bench::time_ms([&] { backward_call(version, d, 1); });
    const double ms_wte = bench::time_ms([&] { backward_call(version, d, 2); });
    bench::report_memory("encoder backward, dwpe pass (" + shape_name(s) + ")", name, -1.0, TOL, ms_wpe,
                         ((double)BT + 2.0 * s.T) * s.C * sizeof(floatX), copy_gbs);
    bench::report_memory(backward_kernel(", dwte pass", s, law), name, -1.0, TOL, ms_wte,
                         ((double)BT + 2.0 * d.n) * s.C * sizeof(floatX) + 4.0 * (BT + 2.0 * d.n + 1), copy_gbs);
    backward_free(&d);
}

// the gather reference rows: dout read once in the plan's order (no check, not a version)
static void backward_gather_reference(const Shape& s, TokenLaw law, uint64_t seed, double copy_gbs) {
    const int BT = s.B * s.T;
    if (!encoder_backward_wte_v4_supported(s.C, NULL, NULL, NULL, 4, 4)) return;
    BackwardData d;
    backward_data(&d, s, law, seed);
    const int* positions = d.d_plan + 2 * d.n + 1;
    for (int S : {2, 4}) {
        const double ms = bench::time_ms([&] {
            if (S == 2) encoder_gather_reference<2>(d.d_dout, positions, BT, s.C, 4);
            else encoder_gather_reference<4>(d.d_dout, positions, BT, s.C, 4);
        });
        bench::report_memory(backward_kernel(", dwte pass", s, law),
                             "reference: dout rows gathered in plan order, reads only (" + std::to_string(S) +
                                 " rows in flight per warp, 4 warps per block)",
                             -1.0, TOL, ms, (double)BT * s.C * sizeof(floatX), copy_gbs);
    }
    backward_free(&d);
}

// The encoder backward as the engine runs it in training: layer 0's ln1 backward writes dout (as
// its dinp) and sums dwpe from it on the way (layernorm_backward_dwpe, checked in
// dev/cuda/layernorm.cu), then the encoder backward is the dwte pass alone (encoder_backward with
// dwpe NULL). Timed here, on the same dout: that layernorm backward alone, the pair as the engine
// runs it, and the pair as the engine ran it before (plain layernorm backward, then both of the
// encoder's passes). The encoder's share is the pair's time less the layernorm backward's alone,
// reported on the whole backward's count of bytes (dout once, dwte and dwpe rows, the plan).
static void backward_in_training(const Shape& s, TokenLaw law, uint64_t seed, double copy_gbs) {
    const int BT = s.B * s.T, C = s.C;
    if (layernorm_backward_dwpe_scratch_floats(BT, C, s.T) == 0) {
        printf("encoder backward in training (%s): layer 0's ln1 backward cannot sum dwpe at this shape\n",
               shape_name(s).c_str());
        return;
    }
    BackwardData d;
    backward_data(&d, s, law, seed);
    Rng rng;
    rng_init(&rng, seed + 1);
    floatX* ln_dout = bench::to_device(random_values(&rng, (size_t)BT * C));
    floatX* ln_inp = bench::to_device(random_values(&rng, (size_t)BT * C));
    floatX* ln_weight = bench::to_device(random_values(&rng, (size_t)C));
    floatX* dweight = bench::to_device(random_values(&rng, (size_t)C));
    floatX* dbias = bench::to_device(random_values(&rng, (size_t)C));
    std::vector<float> stats(BT);
    for (float& x : stats) x = 0.5f + 0.5f * (float)rng_uniform(&rng);
    float* mean = bench::to_device(stats);
    float* rstd = bench::to_device(stats);
    const size_t ln_floats = std::max(layernorm_backward_scratch_floats(BT, C),
                                      layernorm_backward_dwpe_scratch_floats(BT, C, s.T));
    float* ln_scratch = bench::device_alloc<float>(ln_floats);
    auto ln = [&] {
        layernorm_backward(d.d_dout, dweight, dbias, ln_scratch, ln_dout, ln_inp, ln_weight, mean, rstd, BT, C, 0);
    };
    const double ms_ln = bench::time_ms(ln);
    const double ms_now = bench::time_ms([&] {
        layernorm_backward_dwpe(d.d_dout, dweight, dbias, d.d_dwpe, ln_scratch, ln_dout, ln_inp, ln_weight, mean, rstd,
                                BT, C, s.T, 0);
        encoder_backward(d.d_dwte, NULL, d.d_scratch, d.d_dout, d.d_plan, d.shape, s.B, s.T, C, 0);
    });
    const double ms_before = bench::time_ms([&] {
        ln();
        encoder_backward(d.d_dwte, d.d_dwpe, d.d_scratch, d.d_dout, d.d_plan, d.shape, s.B, s.T, C, 0);
    });
    const double ln_bytes = 4.0 * BT * C * sizeof(floatX) + 8.0 * BT;
    const double enc_bytes = ((double)BT + 2.0 * d.n + 2.0 * s.T) * C * sizeof(floatX) + 4.0 * (BT + 2.0 * d.n + 1);
    const std::string kernel = backward_kernel(" in training", s, law);
    bench::report_memory(kernel, "layer 0's ln1 backward alone (engine)", -1.0, TOL, ms_ln, ln_bytes, copy_gbs);
    bench::report_memory(kernel, "ln1 backward with dwpe, then the dwte pass (engine)", -1.0, TOL, ms_now,
                         ln_bytes + enc_bytes, copy_gbs);
    bench::report_memory(kernel, "ln1 backward, then both encoder passes (engine before session 6)", -1.0, TOL,
                         ms_before, ln_bytes + enc_bytes, copy_gbs);
    bench::report_memory(kernel, "the encoder's share: the pair less the ln1 backward alone (engine)", -1.0, TOL,
                         ms_now - ms_ln, enc_bytes, copy_gbs);
    for (void* ptr : {(void*)ln_dout, (void*)ln_inp, (void*)ln_weight, (void*)dweight, (void*)dbias, (void*)mean,
                      (void*)rstd, (void*)ln_scratch})
        cudaCheck(cudaFree(ptr));
    backward_free(&d);
}

// ---- main -----------------------------------------------------------------------------------

int main(int argc, char** argv) {
    Shape full = {64, 1024, 768};
    if (argc == 4) {
        full = {atoi(argv[1]), atoi(argv[2]), atoi(argv[3])};
    } else if (argc != 1) {
        fprintf(stderr, "usage: %s [B T C]   (default 64 1024 768)\n", argv[0]);
        return 1;
    }
    if (full.B <= 0 || full.T <= 0 || full.C <= 0 || (long long)full.B * full.T * 3 + 1 > 2147483647LL) {
        fprintf(stderr, "error: B, T, C must be positive and 3*B*T + 1 must fit in an int\n");
        return 1;
    }
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    printf("encoder: B=%d T=%d C=%d, V=%d (Vp=%d), %s storage, %s\n", full.B, full.T, full.C, VOCAB, PADDED_VOCAB,
           LLMC_PRECISION_NAME, prop.name);
    const double copy_gbs = bench::copy_bandwidth_gbs();

    // odd shapes: C = 100 is not a multiple of X128 (the kernels' one-value path), C = 72 leaves
    // lanes idle, frequent tokens at C = 100 and 72 take the hot kernel with odd slices, one token
    // everywhere is the most skewed case; the full shape is checked and timed
    // (forward v4: C = 776 in bf16 is 97 packets, 4 per lane with one lane busy in the last, B*T = 37 and
    // 35 are no multiple of its rows per warp; T = 7 wraps t within a warp's 4 rows)
    const Shape odd[] = {{3, 37, 100}, {2, 64, 72}, {1, 37, 776}, {5, 7, 384}};
    uint64_t seed = 1;
    for (const FwdVersion& v : FORWARD_VERSIONS) {
        for (const Shape& s : odd) forward_case(v, s, seed++, 0.0);
        forward_case(v, full, seed++, copy_gbs);
    }
    for (const Shape& s : odd) forward_case(FORWARD_ENTRY, s, seed++, 0.0);
    forward_case(FORWARD_ENTRY, full, seed++, 0.0);
    forward_write_reference(full, copy_gbs);
    for (TokenLaw law : {UNIFORM, ONE_TOKEN})
        for (const FwdVersion& v : FORWARD_VERSIONS)
            if (forward_is_engine(v)) forward_case(v, full, seed++, copy_gbs, law);
    forward_then_layernorm(full, seed++, copy_gbs);

    struct {
        Shape s;
        TokenLaw law;
    } const odd_bwd[] = {
        {{3, 37, 100}, UNIFORM}, {{8, 512, 100}, ZIPF},       {{4, 256, 72}, ZIPF},
        {{2, 1024, 768}, ONE_TOKEN}, {{3, 37, 100}, ONE_TOKEN}, {{4, 300, 1600}, ZIPF}};
    for (const BwdVersion& v : BACKWARD_VERSIONS)
        for (const auto& c : odd_bwd) backward_case(v, c.s, c.law, seed++, 0.0);
    for (TokenLaw law : {ZIPF, UNIFORM})
        for (const BwdVersion& v : BACKWARD_VERSIONS) backward_case(v, full, law, seed++, copy_gbs);
    for (const BwdVersion& v : BACKWARD_VERSIONS) backward_passes(v, full, ZIPF, seed++, copy_gbs);
    for (TokenLaw law : {ZIPF, UNIFORM}) backward_gather_reference(full, law, seed++, copy_gbs);
    for (TokenLaw law : {ZIPF, UNIFORM}) backward_in_training(full, law, seed++, copy_gbs);
    return bench::finish();
}
