/*
Encoder: token + position embedding, forward and backward.

Forward:  out[b,t,:] = wte[inp[b,t], :] + wpe[t, :]         out (B,T,C), wte (Vp,C), wpe (maxT,C)
Backward: dwpe[t,:] += sum_b dout[b,t,:]
          dwte[v,:] += sum over the (b,t) with inp[b,t] == v of dout[b,t,:]

All of it is memory-bound: a few additions per value moved. The kernels move V consecutive values
per access, V = X128 (16 bytes: 8 bf16 or 4 fp32) when C is a multiple of X128 and the pointers are
16-byte aligned, else V = 1 (same kernels, one value at a time).

Forward (v3): one warp per (b,t) row. The warp reads the token id once, then each lane adds packets
of the wte row and the wpe row and stores them; the row index is the warp's, so the only index
math is one modulo per row (t = row % T), not a division per element. v4 (the engine's where it
applies, next to it below) issues every load of a warp's row(s) before the first addition, reads
wte and wpe with an L2 evict_last policy and stores out with st.global.cs.

Why the backward needs help from the host: many positions can hold the same token, so a kernel that
scatters dout rows into dwte needs atomics, whose summation order (and so the rounded result)
changes from run to run. Instead the host, which holds the token ids anyway, groups the positions
by token (encoder_backward_plan below): a list of distinct tokens ("buckets"), and for each, its
positions in increasing order. Every sum then has a fixed order: deterministic, bit for bit.

Why the plan is ordered by bucket size: text is skewed. In tinyshakespeare the newline token fills
12% of a 64 x 1024 batch (8,100 positions), "," another 6%. So the plan lists the "split" tokens
(more than ENCODER_COLD_ROWS = 32 positions) first, largest first, then the others, largest first,
and dwte is computed by two kernels (v3, 2026-11-24):
  rows    one warp per item, whole rows (1.5 KB per row at C = 768 bf16, read in one go), one
          row after the other (the loads of 2 or 4 rows in flight measured level or slower). The
          items: the 32-position chunks of the split tokens' positions (which come first in the
          plan, so they are a prefix of `positions`), then one item per other token (<= 32
          positions, summed straight into dwte). A chunk holds the tail of one
          split token and/or the head of the next; each part's fp32 sum goes to its own row of a
          scratch buffer (two rows per chunk: encoder_backward_scratch_floats). So the split
          tokens' rows are spread evenly over warps however skewed the text, and every row of dout
          is read once, whole and contiguous.
  reduce  dwte[token] += the split token's partial rows, in position order (a persistent grid of
          blocks, items (token, 128-column tile); in a block, the warps sum interleaved partials in
          order and one warp adds the warps' sums in order). The partials (<= 12.6 MB at GPT-2
          124M shapes, mostly from L2) are ~1% of the bytes.
The chunk boundaries depend only on the plan, so the result is the same bits run to run.
v4 (2026-11-24 session 5, the engine's rows kernel where it applies) does the same items and sums,
with the rows brought in by bulk copies (llmc/bulk_copy.cuh): each warp is a persistent worker
with a ring of ENCODER_WTE_ROWS_IN_FLIGHT row buffers in shared memory that its lane 0 keeps
filled, across item boundaries, and a bucket's dwte row comes through the ring too. v3 loaded the
rows into registers (109 per thread for one row in flight), which capped the warps per SM; v4 has
60 registers at C = 768 and no register cost per row in flight.
dwpe is a column sum over b: one thread per (t, packet), b in order.

Each gradient needs all of dout, so the backward reads dout twice (once for dwpe, once for dwte):
a single pass would have to reduce every row into two different groupings (by t and by token),
which without atomics needs partial sums the size of dout (or, split by ranges of b so that the
second read hits L2, per-range partial rows of every token seen in two ranges: ~16,000 distinct
tokens, tens of MB of partials at these shapes, as many bytes as the second read of dout saves;
not built). So encoder_backward with both passes tops out near half of the copy bandwidth on the
"dout once" count. The engine therefore sums dwpe where dout's rows are produced (2026-11-24
session 6): layer 0's ln1 layernorm backward writes them, and its teams each own one position t
and keep its sum over b in registers (layernorm_backward_dwpe, llmc/layernorm.cuh); the engine
then calls encoder_backward with dwpe NULL, the dwte pass alone. The pair (that layernorm backward,
then the dwte pass) takes 156.5 us where the layernorm backward and both passes took 180.2 us.

Measured (dev/cuda/encoder.cu, H200, B = 64, T = 1024, C = 768 bf16, 2026-11-24, three runs), the
whole backward: Zipf tokens v2 207.8 / 210.1 / 206.5 us (18%); v3 with 2 rows in flight 91.6 /
91.3 / 92.5 us (40-41%), with 1 row (the engine's then) - / 90.3 / 90.6 us (41.3-41.4%); uniform
tokens v2 109.4 / 110.0 / 109.8 us, v3 2 rows 110.1 / 108.5 / 108.7 us, 1 row - / 108.9 / 108.1 us
(48-49%, unchanged: nearly every token is cold there). The dwte pass alone (Zipf) 180-184 us (v2)
-> 62.7-65.1 us (56-58% on its count: it reads dout plus the touched dwte rows twice), the dwpe
pass 32.2-33.7 us (75-78%). In fp32 the v3 dwte pass runs at 80.0% (91.1 us). What lost: 4 rows in
flight 101.9-103.5 us, 8 rows 136.7 us (the registers cost warps per SM: 168 and 255 per thread
against 109 for 1 row), 8 warps per block with 4 rows 125.7 us (with 2 rows 91.9 us, level);
register caps by __launch_bounds__ (64 or 85 registers) spill and ran at 135-286 us. dwpe with 8
or 16 rows per load batch instead of 4: 34.5 / 34.0 us vs 32.3 us (95 and 168 registers: its 384
blocks no longer fit in one wave).

Measured 2026-11-24 session 5 (two runs, same shapes, timed from an idle GPU as before): the whole
backward, Zipf tokens, v3 92.0 / 91.5 us -> v4 with 2 rows in flight, 4 warps per block (the
engine's) 84.1 / 84.3 us (44.2% of copy), 8 warps per block 84.9 / 86.6 us; uniform tokens 111.5 /
108.6 -> 91.5 / 92.1 us (57%), 8 warps 91.0 / 91.9 us. The dwte pass alone (Zipf) 63.6 / 62.3 ->
58.0 / 56.3 us (63.0-64.6% on its count; 8 warps 56.5 / 58.5 us). More rows in flight per warp was
slower, not faster: 4 rows 58.4-61.4 us, 8 rows 66.0 us, 16 rows 78.8 us (4 warps per block); so
were 2 warps per block (4 rows: 59.4 us). What the rows alone cost: every dout row read once in the
plan's order and nothing else (dev/cuda/encoder.cu's reference row) takes 30.9-32.1 us (76-79% of
copy, Zipf and uniform alike, the same as the dwpe pass's sequential read of dout): gathering rows
by token costs no more than reading them in order, and the dwte pass spends ~25 us beyond its reads
of dout on the dwte rows, the partials and the serial steps of each warp (wait, add, refill). With
dev/cuda's timing that no longer counts the host's launch time (dev/cuda/common.cuh), the final run:
the whole backward 80.6 us Zipf (45.2% of copy; v3 88.0 us), 86.9 us uniform (59.3%; v3 105.4 us);
dwte pass 52.0 us (68.4%), of which ncu puts 8.9 us in the reduce kernel; dwpe pass 29.1 us; the
reference 25.7-26.2 us (91-93%).

Measured 2026-11-24 session 6 (dev/cuda run_all, same shapes): the reduce kernel as a
programmatic dependent launch, dwte pass (Zipf) 50.5-51.8 us against 52.0 us; chunks of 16
positions instead of 32 (twice the partials) 60.5 us, of 8 64.6 us (the partials and their reduce
cost more than the shorter chains of rows save). In training (dwpe summed in layer 0's ln1
backward) the encoder's share of the step is 54.9 us on Zipf tokens (66.2% of copy on the whole
backward's count) and 60.3 us on uniform tokens (85.2%), against 78.6 / 86.8 us before.

Measured 2026-11-24 session 7 (dev/cuda/encoder.cu, two runs each). The launchers now take the
plan's counts (EncoderPlanShape): chunk items for the split positions only, and no reduce kernel
when no token is split (before, 2,048 chunk items and a grid of ~1,000 reduce blocks were launched
whatever the tokens, and on uniform tokens they all found nothing: 1.9 us of the pass). Encoder's
share in training, uniform tokens 58.8 / 58.1 us (88.1 / 89.1% of copy) against 60.3 us; Zipf
54.6-55.4 us (66-67%), the dwte pass 49.7 / 50.1 us against 50.3 / 50.3 us launched as before in
the same runs. The reduce kernel loading 8 or 16 partial rows at once instead of 4: dwte pass 51.1
/ 51.5 and 56.7 / 56.7 us (the registers halve its blocks per SM, and most items have 2-3 partials).
Where the Zipf pass's time goes (a timeline driver stamping each warp with %globaltimer, one run):
the rows kernel spans 41.5 us (45.3 us by events) and the reduce kernel adds 7.1 us (7.9 us alone,
3.7 us of it the launch of an empty grid). The warps that drew a chunk (956) read 43 rows on
average against 14.7 for the others (2,740), finish their chunk at 31 us (median) and end at 39-41
us, while the others end at 23 us (median), 30 us (90%): the round-robin deal of items gives the
chunk warps their share of buckets on top of a chunk; dealing the rounds in alternate order (a
snake) changed nothing (40.9 us). Two ways to use that idle time lost (branch wip/encoder-tree,
measured once): items drawn from a global counter as warps free up, 61.3 us for the pass (one
atomic per item on one address: ~22,000 of them serialize), and the split tokens' partials summed
inside the rows kernel by a fixed binary tree per token (the second of two sibling warps to arrive,
counted by an atomic, adds the other's row and climbs): 64.7 us, 69.5 us with both. The tree's
climbs run when the chunks end, 31-34 us into the kernel, up to 7 levels of store, fence, atomic
and load each, and its code took the kernel from 64 to 90 registers (20 warps per SM instead of 32).
What the Zipf pass could reach at best: the rows kernel moves ~153 MB (dout, the touched dwte rows
read and written, the partials) and the reference's 3.87 TB/s for reading dout in plan order puts
that at ~39.5 us, against 41.5 us measured. With no reduce kernel at all and the rows kernel at
that rate, the encoder's share (which also carries ~5 us of the layernorm backward's dwpe sums)
would be ~47 us, 78% on the whole backward's count: the 85% target is out of reach on Zipf tokens
for this design (every dwte row summed in a fixed order from rows read once). 42.4 us would be 85%.

History (issue 5, dev/cuda/encoder.cu measures every version): before, the forward was one thread
per element with a division per element and 2-byte loads, and dwte was one block per token with
scalar loads, so the newline token above serialized ~8,100 rows on one SM; the plan was in token
order. v2 (2026-11-24) split frequent tokens into column slices as narrow as 64 bytes over up to
24 persistent blocks, and walked a rare token's rows one at a time: 181-184 us for the dwte pass
on Zipf tokens.
*/
#ifndef LLMC_ENCODER_CUH
#define LLMC_ENCODER_CUH

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "llmc/bulk_copy.cuh"
#include "llmc/cuda_common.cuh"

#define ENCODER_COLD_ROWS 32    // a token with at most this many positions: one warp; more: split in chunks
#define ENCODER_WARP_PACKETS 4  // dwte rows kernel: packets per lane and pass (a row of up to 1024 bf16)
#ifndef ENCODER_REDUCE_PDL
#define ENCODER_REDUCE_PDL true  // the reduce kernel as a programmatic dependent launch (-D to time without)
#endif
#ifndef ENCODER_REDUCE_BATCH
#define ENCODER_REDUCE_BATCH 4  // dwte reduce kernel: partial rows each thread loads before adding them
#endif

// V consecutive values of floatX, read or written as one access (16 bytes when V == X128)
template <int V>
struct alignas(V * sizeof(floatX)) EncoderPack {
    floatX v[V];
};
template <int V>
__device__ static inline EncoderPack<V> encoder_load(const floatX* p) {
    return *reinterpret_cast<const EncoderPack<V>*>(p);
}
template <int V>
__device__ static inline void encoder_store(floatX* p, const EncoderPack<V>& x) {
    *reinterpret_cast<EncoderPack<V>*>(p) = x;
}

// true when the kernels can use 16-byte accesses on these row-major (rows, C) tensors
static inline bool encoder_can_vectorize(int C, const void* a, const void* b, const void* c) {
    const uintptr_t misaligned = ((uintptr_t)a | (uintptr_t)b | (uintptr_t)c) % 16;
    return C % X128 == 0 && misaligned == 0;
}

// ---- forward ------------------------------------------------------------------------------------

// v3: one warp per (b,t) row
template <int V>
__global__ void encoder_forward_kernel(floatX* __restrict__ out, const int* __restrict__ inp,
                                       const floatX* __restrict__ wte, const floatX* __restrict__ wpe, int BT,
                                       int T, int C) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= BT) return;
    const int lane = threadIdx.x % 32;
    const floatX* w = wte + (size_t)inp[row] * C;
    const floatX* p = wpe + (size_t)(row % T) * C;
    floatX* o = out + (size_t)row * C;
    for (int c = lane * V; c < C; c += 32 * V) {
        const EncoderPack<V> a = encoder_load<V>(w + c), b = encoder_load<V>(p + c);
        EncoderPack<V> r;
        for (int k = 0; k < V; k++) r.v[k] = from_float<floatX>(to_float(a.v[k]) + to_float(b.v[k]));
        encoder_store<V>(o + c, r);
    }
}

static void encoder_forward_v3(floatX* out, const int* inp, const floatX* wte, const floatX* wpe, int B, int T,
                               int C, cudaStream_t stream) {
    const int BT = B * T, block = 256, grid = ceil_div(BT, block / 32);
    if (encoder_can_vectorize(C, out, wte, wpe)) {
        encoder_forward_kernel<X128><<<grid, block, 0, stream>>>(out, inp, wte, wpe, BT, T, C);
    } else {
        encoder_forward_kernel<1><<<grid, block, 0, stream>>>(out, inp, wte, wpe, BT, T, C);
    }
    cudaCheckLast();
}

// v4: a warp takes ROWS consecutive rows and issues every load of them before the first addition.
// What it changes from v3 and why: v3's loop over a row's packets is not unrolled (C is a runtime
// value), so a warp has one packet of wte and one of wpe per lane in flight (1 KB), behind a first
// load of the token id; here lanes 0..ROWS-1 read the ROWS token ids at once and every lane then
// has ROWS * VPL packets of each table in flight (VPL = packets per lane, a template: 3 at C = 768
// bf16). STREAM stores out with st.global.cs (evict first), which leaves more of L2 to the wte rows
// of frequent tokens (out, 100 MB, does not fit in L2 anyway). KEEP reads wte and wpe with an L2
// evict_last policy; the block size is the launcher's. Measured (dev/cuda/encoder.cu, B = 64,
// T = 1024, C = 768, Zipf tokens, 2026-11-24, three runs, the last two sharing the host with a
// compile): one row per warp, 8 warps per block 75.6% / 72.8% / 73.5%, with cs stores 78.6% /
// 75.9% / 75.4%; cs stores with 4 warps 77.0% / 76.4%, 2 warps 76.6% / 75.8%; with evict_last
// loads too, 2 warps 77.6% / 77.0%, 8 warps 77.3% / 70.9%; v3 75.7% / 73.2% / 71.1%. More rows per
// warp cost warps per SM and were slower (2 rows 67.8-71.9%; 4 rows 49.9-52.4%: 185 registers),
// and so was a register cap for 64 warps per SM (32 registers: 30.0-42.9%). The engine's then:
// one row, 4 warps per block, cs stores, plain loads. Later runs the same day (four, during the
// backward work): cs stores 4 warps 78.1% / 80.2% / 80.1% / 79.2%, with evict_last 82.3% / 82.3%
// / 82.3% / 79.9% (8 warps 81.7% / 80.0% / 79.6%, 2 warps 81.8% / 80.3% / 82.4%): evict_last is
// ahead in each run, by 2 points on average, under 1 us of a step. v5 (a warp takes one t for 2-8
// batch rows, sharing the wpe row) and v6 (persistent grid, next row prefetched) lost (73-78% and
// 66-69%); so did v7 and v8 (dev/cuda/encoder.cu). Session 5 found what held every version back
// on the target's count: the timing itself. Timed from an idle GPU, each call counted the host's
// 3-5 us to launch it (ncu: 34.5 us for the kernel the events said took 39 us); dev/cuda now times
// each call behind a spin kernel (dev/cuda/common.cuh), and, three runs each: plain loads, 4 warps
// 85.0% / 84.6% / 84.0%, 2 warps 84.8% / 83.4% / 84.9%; evict_last, 4 warps 85.5% / - / 85.9%, 2
// warps 86.3% / 85.9% / 86.2%. What evict_last might cost the kernels after it, which keep the
// touched wte rows (25 MB of distinct rows at these shapes, up to 77 MB) at the top of L2's keep
// order: the engine's next kernel, layer 0's layernorm forward on out, was timed behind each
// (dev/cuda/encoder.cu, "then layernorm forward", one run): the pair took 91.1 us with plain loads
// and 90.2 us with evict_last at 4 warps (88.8 and 90.3 us at 2 warps). So the engine's: one row, 4
// warps per block, cs stores, evict_last loads (ENCODER_FWD_KEEP). The matmuls after that
// layernorm are compute-bound and were not timed behind it.
#define ENCODER_V4_MAX_VPL 4  // packets per lane v4 handles (C <= 4 * 32 * X128, 1024 bf16), else v3

__device__ static inline void encoder_store128cs(floatX* p, const x128& x) {
    __stcs(reinterpret_cast<int4*>(p), *reinterpret_cast<const int4*>(&x));
}
// a 16-byte load with an L2 cache policy (from createpolicy)
__device__ static inline x128 encoder_load128_policy(const floatX* p, uint64_t policy) {
    int4 r;
    asm("ld.global.nc.L2::cache_hint.v4.s32 {%0, %1, %2, %3}, [%4], %5;"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p), "l"(policy));
    return *reinterpret_cast<const x128*>(&r);
}

template <int VPL, int ROWS, bool STREAM, bool KEEP>
__global__ void __launch_bounds__(256) encoder_forward_v4_kernel(floatX* __restrict__ out, const int* __restrict__ inp,
                                                                  const floatX* __restrict__ wte,
                                                                  const floatX* __restrict__ wpe, int BT, int T,
                                                                  int C) {
    static_assert(ROWS >= 1 && ROWS <= 32, "one token id per lane");
    const int lane = threadIdx.x % 32;
    const int row0 = (blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) * ROWS;
    if (row0 >= BT) return;  // uniform across the warp
    uint64_t policy = 0;
    if (KEEP) asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(policy));
    const int my_token = lane < ROWS && row0 + lane < BT ? inp[row0 + lane] : 0;
    const int t0 = row0 % T;
    x128 a[ROWS][VPL], b[ROWS][VPL];
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const int token = __shfl_sync(0xFFFFFFFFu, my_token, r);
        const int t = (t0 + r) % T;
        if (row0 + r < BT) {
            const floatX* w = wte + (size_t)token * C;
            const floatX* p = wpe + (size_t)t * C;
#pragma unroll
            for (int i = 0; i < VPL; i++) {
                const int c = (i * 32 + lane) * X128;
                if (c < C) {
                    a[r][i] = KEEP ? encoder_load128_policy(w + c, policy) : load128(w + c);
                    b[r][i] = KEEP ? encoder_load128_policy(p + c, policy) : load128(p + c);
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        if (row0 + r >= BT) break;
        floatX* o = out + (size_t)(row0 + r) * C;
#pragma unroll
        for (int i = 0; i < VPL; i++) {
            const int c = (i * 32 + lane) * X128;
            if (c < C) {
                x128 s;
#pragma unroll
                for (int k = 0; k < X128; k++) {
                    s.v[k] = from_float<floatX>(to_float(a[r][i].v[k]) + to_float(b[r][i].v[k]));
                }
                if (STREAM) encoder_store128cs(o + c, s);
                else store128(o + c, s);
            }
        }
    }
}

// v4 where it applies (16-byte accesses, C <= ENCODER_V4_MAX_VPL * 32 * X128), else v3; warps per
// block 1..8
template <int ROWS, bool STREAM, bool KEEP>
static void encoder_forward_v4(floatX* out, const int* inp, const floatX* wte, const floatX* wpe, int B, int T,
                               int C, cudaStream_t stream, int warps) {
    const int vpl = ceil_div(C, 32 * X128);
    if (!encoder_can_vectorize(C, out, wte, wpe) || vpl > ENCODER_V4_MAX_VPL) {
        encoder_forward_v3(out, inp, wte, wpe, B, T, C, stream);
        return;
    }
    if (warps < 1 || warps > 8) {
        fprintf(stderr, "encoder_forward_v4: %d warps per block not supported\n", warps);
        exit(1);
    }
    const int BT = B * T, grid = ceil_div(BT, warps * ROWS);
    switch (vpl) {
#define LLMC_ENCODER_V4_CASE(V)                                                                           \
    case V:                                                                                               \
        encoder_forward_v4_kernel<V, ROWS, STREAM, KEEP><<<grid, 32 * warps, 0, stream>>>(out, inp, wte, wpe, BT, \
                                                                                          T, C);               \
        break;
        LLMC_ENCODER_V4_CASE(1)
        LLMC_ENCODER_V4_CASE(2)
        LLMC_ENCODER_V4_CASE(3)
        LLMC_ENCODER_V4_CASE(4)
#undef LLMC_ENCODER_V4_CASE
    }
    cudaCheckLast();
}

// The engine's forward: v4 with these launch options where it applies (else v3: 16-byte accesses and
// C <= 1024 bf16 / 512 fp32 needed); ENCODER_FWD_ROWS
// 0 runs v3 everywhere. Each can be set with -D at build time, to measure another one as the
// engine's.
#ifndef ENCODER_FWD_ROWS
#define ENCODER_FWD_ROWS 1
#endif
#ifndef ENCODER_FWD_WARPS
#define ENCODER_FWD_WARPS 4
#endif
#ifndef ENCODER_FWD_STREAM
#define ENCODER_FWD_STREAM true
#endif
#ifndef ENCODER_FWD_KEEP
#define ENCODER_FWD_KEEP true
#endif
static void encoder_forward(floatX* out, const int* inp, const floatX* wte, const floatX* wpe, int B, int T,
                            int C, cudaStream_t stream) {
    if (ENCODER_FWD_ROWS == 0) {
        encoder_forward_v3(out, inp, wte, wpe, B, T, C, stream);
    } else {
        encoder_forward_v4<ENCODER_FWD_ROWS == 0 ? 1 : ENCODER_FWD_ROWS, ENCODER_FWD_STREAM, ENCODER_FWD_KEEP>(
            out, inp, wte, wpe, B, T, C, stream, ENCODER_FWD_WARPS);
    }
}

// ---- backward plan (host) -------------------------------------------------------------------

// Host-side grouping of positions by token. `plan` is an int array of 3*B*T + 1 entries laid out as
// [tokens (n) | starts (n+1) | positions (B*T)] where n is the number of distinct tokens: bucket k is
// token tokens[k] at positions[starts[k] .. starts[k+1]), increasing. Buckets are ordered split
// (more than ENCODER_COLD_ROWS positions) first, then by decreasing count, ties by increasing token
// id: the kernels rely on the split ones coming first. The positions of a split token carry flags in
// their top bits (positions are < 2^29 where the plan fits in an int: 3*B*T + 1 < 2^31):
// ENCODER_SPLIT_FLAG on each of them, ENCODER_FIRST_FLAG also on its first one; the kernels mask
// them off with ENCODER_POSITION_MASK. The split positions are so a prefix of `positions`, and a
// 32-position chunk of it holds at most one first position (a split token has more than 32). Returns
// the plan's counts (EncoderPlanShape), which the launchers take with it: from them they launch chunk
// items for the split positions only and no reduce kernel when no token is split.
// O(B*T + V) plus an insertion sort of the split tokens, at most B*T / (ENCODER_COLD_ROWS + 1).
#define ENCODER_SPLIT_FLAG 0x40000000
#define ENCODER_FIRST_FLAG ((int)0x80000000u)
#define ENCODER_POSITION_MASK 0x3FFFFFFF
typedef struct {
    int* counts;  // (V) scratch
    int vocab_size;
} EncoderPlanner;
// what the launchers need to know of a plan besides the plan itself
typedef struct {
    int n;                // distinct tokens (buckets)
    int splits;           // split buckets (the first ones)
    int split_positions;  // their positions (a prefix of positions): starts[splits]
} EncoderPlanShape;

static EncoderPlanShape encoder_backward_plan(EncoderPlanner* p, const int* inputs, int BT, int* plan) {
    int* counts = p->counts;
    memset(counts, 0, sizeof(int) * (size_t)p->vocab_size);
    for (int i = 0; i < BT; i++) counts[inputs[i]]++;
    // class of a token: its count, capped at SPLIT = ENCODER_COLD_ROWS + 1 for all the split ones
    enum { SPLIT = ENCODER_COLD_ROWS + 1 };
    int per_class[SPLIT + 1] = {0};
    for (int v = 0; v < p->vocab_size; v++)
        if (counts[v] > 0) per_class[counts[v] < SPLIT ? counts[v] : SPLIT]++;
    int first[SPLIT + 1];  // where each class starts in `tokens`: SPLIT, then SPLIT-1, ..., 1
    int n = 0;
    for (int c = SPLIT; c >= 1; c--) {
        first[c] = n;
        n += per_class[c];
    }
    int* tokens = plan;
    for (int v = 0; v < p->vocab_size; v++)
        if (counts[v] > 0) tokens[first[counts[v] < SPLIT ? counts[v] : SPLIT]++] = v;
    // the split ones by decreasing count (insertion sort, stable: ties keep increasing token id)
    for (int i = 1; i < per_class[SPLIT]; i++) {
        const int v = tokens[i];
        int j = i;
        for (; j > 0 && counts[tokens[j - 1]] < counts[v]; j--) tokens[j] = tokens[j - 1];
        tokens[j] = v;
    }
    int* starts = plan + n;
    int* positions = plan + 2 * n + 1;
    // starts, and reuse counts as the running write offset of each token
    int offset = 0;
    for (int k = 0; k < n; k++) {
        starts[k] = offset;
        const int v = tokens[k];
        const int count = counts[v];
        counts[v] = offset;
        offset += count;
    }
    starts[n] = offset;
    for (int i = 0; i < BT; i++) positions[counts[inputs[i]]++] = i;
    for (int k = 0; k < per_class[SPLIT]; k++) {
        for (int i = starts[k]; i < starts[k + 1]; i++) positions[i] |= ENCODER_SPLIT_FLAG;
        positions[starts[k]] |= ENCODER_FIRST_FLAG;
    }
    const EncoderPlanShape shape = {n, per_class[SPLIT], starts[per_class[SPLIT]]};
    return shape;
}

// ---- backward kernels -----------------------------------------------------------------------

// dwpe[t, :] += sum_b dout[b, t, :]: one thread per (t, packet), b in order, BATCH rows loaded
// before they are added (the engine's v2 had BATCH = 4: 16 round trips to memory per thread at
// B = 64, and only 384 blocks of 256 threads at GPT-2 124M shapes, so few bytes in flight)
template <int V, int BATCH>
__global__ void encoder_backward_wpe_kernel(floatX* __restrict__ dwpe, const floatX* __restrict__ dout, int B,
                                            int T, int C) {
    const int packets = C / V;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= T * packets) return;
    const size_t offset = (size_t)(idx / packets) * C + (size_t)(idx % packets) * V;  // (t, c)
    const size_t stride = (size_t)T * C;                                              // from b to b + 1
    float acc[V] = {};
    for (int b0 = 0; b0 < B; b0 += BATCH) {
        EncoderPack<V> x[BATCH];
#pragma unroll
        for (int j = 0; j < BATCH; j++)
            if (b0 + j < B) x[j] = encoder_load<V>(dout + (size_t)(b0 + j) * stride + offset);
#pragma unroll
        for (int j = 0; j < BATCH; j++)
            if (b0 + j < B)
                for (int k = 0; k < V; k++) acc[k] += to_float(x[j].v[k]);
    }
    EncoderPack<V> g = encoder_load<V>(dwpe + offset);
    for (int k = 0; k < V; k++) g.v[k] = from_float<floatX>(to_float(g.v[k]) + acc[k]);
    encoder_store<V>(dwpe + offset, g);
}

// Sums rows r0 .. r1-1 of a warp's list of dout rows into acc, in order; lane r holds the position
// of row r (so r1 <= 32), each lane sums the columns c0 + j * 32 * V (j < P, masked past C). The
// loads of U rows are issued before the first of them is added: a warp of the engine's v2 cold
// kernel walked its up to 32 rows one at a time, one round trip to memory each.
template <int V, int P, int U>
__device__ static inline void encoder_sum_rows(float (&acc)[P][V], const floatX* __restrict__ dout, int my_position,
                                               int r0, int r1, int c0, int C) {
    const int step = 32 * V;
    for (int i = r0; i < r1; i += U) {  // warp-uniform: every lane takes part in the shuffles
        EncoderPack<V> x[U][P];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int position = __shfl_sync(0xFFFFFFFFu, my_position, (i + u) & 31);
            if (i + u < r1) {
                const floatX* d = dout + (size_t)position * C;
#pragma unroll
                for (int j = 0; j < P; j++)
                    if (c0 + j * step < C) x[u][j] = encoder_load<V>(d + c0 + j * step);
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (i + u < r1) {
#pragma unroll
                for (int j = 0; j < P; j++)
                    if (c0 + j * step < C)
                        for (int e = 0; e < V; e++) acc[j][e] += to_float(x[u][j].v[e]);
            }
        }
    }
}

// stores a lane's P packets of fp32 sums into an fp32 scratch row
template <int V, int P>
__device__ static inline void encoder_store_partial(float* __restrict__ row, const float (&acc)[P][V], int c0,
                                                    int C) {
#pragma unroll
    for (int j = 0; j < P; j++) {
        const int c = c0 + j * 32 * V;
        if (c >= C) continue;
        if (V % 4 == 0) {
            for (int e = 0; e < V; e += 4)
                *reinterpret_cast<float4*>(row + c + e) =
                    make_float4(acc[j][e], acc[j][e + 1], acc[j][e + 2], acc[j][e + 3]);
        } else {
            for (int e = 0; e < V; e++) row[c + e] = acc[j][e];
        }
    }
}

// v3 dwte, first kernel: one warp per item, whole rows (a lane reads P 16-byte packets of each row,
// so a warp reads a row's 1.5 KB at C = 768 bf16 in one go), U rows in flight. Items: warps
// 0 .. chunks-1 take the 32-position chunks of the split prefix of `positions` (chunk w: positions
// 32w .. 32w+31), the others one bucket each (a token of at most ENCODER_COLD_ROWS positions,
// summed straight into dwte; the split buckets, first, are skipped). A chunk holds the tail of one
// split token and/or the head of the next (at most one starts in it): rows before the first
// position go to scratch row 2w, rows from it on to row 2w+1, as fp32 sums. So every row of dout
// is read once, whole, and the split tokens' work is spread evenly over warps however skewed the
// tokens are; the reduce kernel below adds each split token's partial rows. Chunks are numbered
// before buckets, so the large items start first and the single-position buckets fill in behind.
template <int V, int P, int U>
__global__ void __launch_bounds__(256) encoder_backward_wte_rows_kernel(
    floatX* __restrict__ dwte, float* __restrict__ scratch, const floatX* __restrict__ dout,
    const int* __restrict__ tokens, const int* __restrict__ starts, const int* __restrict__ positions, int n,
    int BT, int chunks, int C) {
    const int w = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int step = 32 * V;
    if (w < chunks) {
        const int raw = 32 * w + lane < BT ? positions[32 * w + lane] : 0;
        const unsigned split = __ballot_sync(0xFFFFFFFFu, (raw & ENCODER_SPLIT_FLAG) != 0);
        if (!(split & 1u)) return;  // the chunk starts past the split tokens
        const int m = __popc(split);  // split positions are a prefix: rows 0 .. m-1
        const unsigned firsts = __ballot_sync(0xFFFFFFFFu, (raw & ENCODER_FIRST_FLAG) != 0) & split;
        const int boundary = firsts ? __ffs(firsts) - 1 : m;
        const int my_position = raw & ENCODER_POSITION_MASK;
        for (int base = 0; base < C; base += P * step) {
            const int c0 = base + lane * V;
            if (boundary > 0) {  // the tail of the token started in an earlier chunk
                float acc[P][V] = {};
                encoder_sum_rows<V, P, U>(acc, dout, my_position, 0, boundary, c0, C);
                encoder_store_partial<V, P>(scratch + (size_t)(2 * w) * C, acc, c0, C);
            }
            if (boundary < m) {  // the head of the token starting here
                float acc[P][V] = {};
                encoder_sum_rows<V, P, U>(acc, dout, my_position, boundary, m, c0, C);
                encoder_store_partial<V, P>(scratch + (size_t)(2 * w + 1) * C, acc, c0, C);
            }
        }
        return;
    }
    const int k = w - chunks;
    if (k >= n) return;
    const int begin = starts[k], count = starts[k + 1] - begin;
    if (count > ENCODER_COLD_ROWS) return;  // split: the chunks' and the reduce kernel's
    const int my_position = lane < count ? positions[begin + lane] & ENCODER_POSITION_MASK : 0;
    floatX* g = dwte + (size_t)tokens[k] * C;
    for (int base = 0; base < C; base += P * step) {
        const int c0 = base + lane * V;
        EncoderPack<V> old[P];
#pragma unroll
        for (int j = 0; j < P; j++)
            if (c0 + j * step < C) old[j] = encoder_load<V>(g + c0 + j * step);
        float acc[P][V] = {};
        encoder_sum_rows<V, P, U>(acc, dout, my_position, 0, count, c0, C);
#pragma unroll
        for (int j = 0; j < P; j++) {
            if (c0 + j * step < C) {
                for (int e = 0; e < V; e++) old[j].v[e] = from_float<floatX>(to_float(old[j].v[e]) + acc[j][e]);
                encoder_store<V>(g + c0 + j * step, old[j]);
            }
        }
    }
}

// v3 dwte, second kernel: dwte[token] += the partial rows of each split token, in position order
// (the head in its first chunk's row 2 i0 + 1, then row 2 i of each later chunk i up to its last).
// Items (split bucket j, tile of 32 W columns), numbered j * tiles + tile; a persistent grid walks
// them. In a block, warp g sums the partials g, g + warps, ... in order (BATCH loads in flight),
// then one warp adds the warps' sums in warp order and updates dwte, whose values it loads first.
// W = 4 floats per lane when C % 4 == 0, else 1. Launched as a programmatic dependent launch of the
// rows kernel (sm_90): its blocks take the SMs as the rows kernel's leave them, and wait here until
// that kernel has finished and its writes are visible.
#define ENCODER_REDUCE_THREADS 256
template <int W, int BATCH>
__global__ void __launch_bounds__(ENCODER_REDUCE_THREADS)
    encoder_backward_wte_reduce_kernel(floatX* __restrict__ dwte, const float* __restrict__ scratch,
                                       const int* __restrict__ tokens, const int* __restrict__ starts, int splits,
                                       int C, int chunk) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
    __shared__ float warp_sums[ENCODER_REDUCE_THREADS * W];  // [warp][lane][W]
    const int warps = blockDim.x / 32, g = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int tiles = ceil_div(C, 32 * W);
    for (int item = blockIdx.x;; item += gridDim.x) {
        const int j = item / tiles, tile = item % tiles;
        if (j >= splits) break;
        const int p0 = starts[j], p1 = starts[j + 1];
        if (p1 - p0 <= ENCODER_COLD_ROWS) break;  // not split (splits was too large): the rows kernel's
        const int i0 = p0 / chunk, parts = (p1 - 1) / chunk - i0 + 1;
        const int c = tile * 32 * W + lane * W;  // c < C implies c + W - 1 < C
        floatX* out = dwte + (size_t)tokens[j] * C + c;
        float old[W];
        if (g == 0 && c < C)
            for (int e = 0; e < W; e++) old[e] = to_float(out[e]);
        float acc[W] = {};
        if (c < C) {
            for (int q0 = g; q0 < parts; q0 += BATCH * warps) {
                float x[BATCH][W];
#pragma unroll
                for (int b = 0; b < BATCH; b++) {
                    const int q = q0 + b * warps;
                    if (q < parts) {
                        const float* row = scratch + (size_t)(q == 0 ? 2 * i0 + 1 : 2 * (i0 + q)) * C + c;
                        if (W == 4) {
                            const float4 f = *reinterpret_cast<const float4*>(row);
                            const float fv[4] = {f.x, f.y, f.z, f.w};
                            for (int e = 0; e < W; e++) x[b][e] = fv[e];
                        } else {
                            for (int e = 0; e < W; e++) x[b][e] = row[e];
                        }
                    }
                }
#pragma unroll
                for (int b = 0; b < BATCH; b++)
                    if (q0 + b * warps < parts)
                        for (int e = 0; e < W; e++) acc[e] += x[b][e];
            }
        }
        for (int e = 0; e < W; e++) warp_sums[threadIdx.x * W + e] = acc[e];
        __syncthreads();
        if (g == 0 && c < C) {
            for (int e = 0; e < W; e++) {
                float sum = 0.0f;
                for (int gg = 0; gg < warps; gg++) sum += warp_sums[(gg * 32 + lane) * W + e];
                out[e] = from_float<floatX>(old[e] + sum);
            }
        }
        __syncthreads();  // warp_sums is rewritten by the next item
    }
}

// ---- dwte by bulk copies (v4) ----------------------------------------------------------------
// One bulk copy (cp.async.bulk, Hopper's TMA engine without a tensor map) moves a whole row of
// global memory into shared memory and signals an mbarrier with its byte count when it lands: one
// instruction of one lane per row, and no registers held while it is in flight. So a warp can keep
// S rows in flight at no register cost (v3's loads into registers cost 109 registers for one row
// in flight, 168 for four).

// One item of the dwte work, as v3 numbers them (chunks of the split prefix, then buckets): the
// rows of its stream (a bucket's: its dwte row, then its dout rows; a chunk's: its dout rows), where
// its positions start, the chunk's boundary (v3's rows kernel) and the bucket's token. len 0: no
// work (a chunk past the split prefix, a split bucket, or past the end). Warp-collective.
struct EncoderItem {
    int len, base, boundary, token;
};
__device__ static inline EncoderItem encoder_item(int item, const int* __restrict__ tokens,
                                                  const int* __restrict__ starts, const int* __restrict__ positions,
                                                  int n, int BT, int chunks, int chunk, int lane) {
    EncoderItem it = {0, 0, 0, -1};
    if (item < chunks) {
        const int raw = lane < chunk && chunk * item + lane < BT ? positions[chunk * item + lane] : 0;
        const unsigned split = __ballot_sync(0xFFFFFFFFu, (raw & ENCODER_SPLIT_FLAG) != 0);
        if (!(split & 1u)) return it;
        const unsigned firsts = __ballot_sync(0xFFFFFFFFu, (raw & ENCODER_FIRST_FLAG) != 0) & split;
        it.len = __popc(split);
        it.base = chunk * item;
        it.boundary = firsts ? __ffs(firsts) - 1 : it.len;
        return it;
    }
    const int k = item - chunks;
    if (k >= n) return it;
    const int begin = starts[k], count = starts[k + 1] - begin;
    if (count > ENCODER_COLD_ROWS) return it;
    it.len = count + 1;
    it.base = begin;
    it.boundary = count;
    it.token = tokens[k];
    return it;
}

// v4 dwte rows kernel: v3's items and sums, each warp a persistent worker (items w, w + W, ...)
// with a ring of S row buffers in shared memory that lane 0 keeps filled by bulk copies, S rows
// ahead of the row being summed, across item boundaries. A bucket's dwte row comes through the
// ring too (the sum starts from it). P packets per lane cover a row (C <= 32 * P * V).
template <int P, int S>
__global__ void __launch_bounds__(256) encoder_backward_wte_bulk_kernel(
    floatX* __restrict__ dwte, float* __restrict__ scratch, const floatX* __restrict__ dout,
    const int* __restrict__ tokens, const int* __restrict__ starts, const int* __restrict__ positions, int n,
    int BT, int chunks, int chunk, int C) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr int V = X128;
    extern __shared__ __align__(128) unsigned char encoder_smem[];
    const int warps = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const uint32_t row_bytes = (uint32_t)(C * sizeof(floatX));
    unsigned char* ring = encoder_smem + (size_t)warp * S * row_bytes;
    const uint32_t ring_s = smem_addr(ring);
    const uint32_t bar0 = smem_addr(encoder_smem + (size_t)warps * S * row_bytes) +
                          8u * (uint32_t)(warp * S);
    if (lane == 0) {
        for (int s = 0; s < S; s++) mbar_init(bar0 + 8 * s, 1);
        mbar_init_fence();
    }
    __syncwarp();
    const int W = gridDim.x * warps, items = chunks + n;
    // the issuer: the item and row of the next copy
    int issue_item = blockIdx.x * warps + warp, issue_e = 0;
    EncoderItem issue = encoder_item(issue_item, tokens, starts, positions, n, BT, chunks, chunk, lane);
    unsigned issued = 0;
    auto issue_next = [&]() {  // warp-uniform
        while (issue.len == 0 && issue_item < items) {
            issue_item += W;
            issue = encoder_item(issue_item, tokens, starts, positions, n, BT, chunks, chunk, lane);
        }
        if (issue_item >= items) return;
        if (lane == 0) {
            const floatX* src;
            if (issue.token >= 0 && issue_e == 0) {
                src = dwte + (size_t)issue.token * C;
            } else {
                const int r = issue_e - (issue.token >= 0 ? 1 : 0);
                src = dout + (size_t)(positions[issue.base + r] & ENCODER_POSITION_MASK) * C;
            }
            const int slot = issued % S;
            mbar_expect_tx(bar0 + 8 * slot, row_bytes);
            bulk_copy_g2s(ring_s + slot * row_bytes, src, row_bytes, bar0 + 8 * slot);
        }
        issued++;
        if (++issue_e == issue.len) {
            issue_e = 0;
            issue.len = 0;  // moves on at the next call
        }
    };
#pragma unroll 1
    for (int s = 0; s < S; s++) issue_next();

    unsigned consumed = 0;
    for (int item = blockIdx.x * warps + warp; item < items; item += W) {
        const EncoderItem it = encoder_item(item, tokens, starts, positions, n, BT, chunks, chunk, lane);
        if (it.len == 0) continue;
        float acc[P][V];
#pragma unroll
        for (int j = 0; j < P; j++)
#pragma unroll
            for (int e = 0; e < V; e++) acc[j][e] = 0.0f;
#pragma unroll 1
        for (int e = 0; e < it.len; e++) {
            const int slot = consumed % S;
            mbar_wait(bar0 + 8 * slot, (consumed / S) & 1);
            const unsigned char* row = ring + (size_t)slot * row_bytes;
#pragma unroll
            for (int j = 0; j < P; j++) {
                const int c = (j * 32 + lane) * V;
                if (c < C) {
                    const x128 x = *reinterpret_cast<const x128*>(row + (size_t)c * sizeof(floatX));
#pragma unroll
                    for (int k = 0; k < V; k++) acc[j][k] += to_float(x.v[k]);
                }
            }
            __syncwarp();  // every lane has read the slot: it can be refilled
            consumed++;
            issue_next();
            if (it.token < 0 && it.boundary > 0 && e + 1 == it.boundary) {  // a chunk's tail ends here
                encoder_store_partial<V, P>(scratch + (size_t)(2 * item) * C, acc, lane * V, C);
#pragma unroll
                for (int j = 0; j < P; j++)
#pragma unroll
                    for (int k = 0; k < V; k++) acc[j][k] = 0.0f;
            }
        }
        if (it.token >= 0) {
            floatX* g = dwte + (size_t)it.token * C;
#pragma unroll
            for (int j = 0; j < P; j++) {
                const int c = (j * 32 + lane) * V;
                if (c < C) {
                    x128 o;
#pragma unroll
                    for (int k = 0; k < V; k++) o.v[k] = from_float<floatX>(acc[j][k]);
                    store128(g + c, o);
                }
            }
        } else if (it.boundary < it.len) {  // a chunk's head
            encoder_store_partial<V, P>(scratch + (size_t)(2 * item + 1) * C, acc, lane * V, C);
        }
    }
#else
    __trap();  // built for sm_90 and later only (the launcher checks)
#endif
}

// ---- backward launchers ---------------------------------------------------------------------

// fp32 values of scratch the dwte pass needs with chunks of `chunk` positions: two partial rows per
// chunk; encoder_backward needs it for the engine's chunk (ENCODER_WTE_CHUNK, below)
static inline size_t encoder_wte_scratch_floats(int BT, int C, int chunk) {
    return (size_t)2 * ceil_div(BT, chunk) * C;
}

// dwpe pass alone (encoder_backward runs it; dev/cuda/encoder.cu times it on its own)
template <int BATCH>
static void encoder_backward_wpe_launch(floatX* dwpe, const floatX* dout, int B, int T, int C, cudaStream_t stream) {
    const int block = 256;
    if (encoder_can_vectorize(C, dwpe, dout, dout)) {
        encoder_backward_wpe_kernel<X128, BATCH>
            <<<ceil_div(T * (C / X128), block), block, 0, stream>>>(dwpe, dout, B, T, C);
    } else {
        encoder_backward_wpe_kernel<1, BATCH><<<ceil_div(T * C, block), block, 0, stream>>>(dwpe, dout, B, T, C);
    }
    cudaCheckLast();
}

// the dwte reduce kernel after a rows kernel (v3 or v4): a persistent grid over the split tokens'
// (bucket, column tile) items, not launched when no token is split; BATCH partial rows loaded at
// once by each thread
template <int BATCH>
static void encoder_backward_wte_reduce(floatX* dwte, const float* scratch, const int* plan_device,
                                        const EncoderPlanShape& shape, int C, int chunk, cudaStream_t stream) {
    const int* tokens = plan_device;
    const int* starts = plan_device + shape.n;
    if (shape.splits == 0) return;
    const int W = C % 4 == 0 ? 4 : 1;
    int device = 0, sms = 0, per_sm = 0;
    cudaCheck(cudaGetDevice(&device));
    cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    if (W == 4) {
        cudaCheck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, encoder_backward_wte_reduce_kernel<4, BATCH>,
                                                                ENCODER_REDUCE_THREADS, 0));
    } else {
        cudaCheck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, encoder_backward_wte_reduce_kernel<1, BATCH>,
                                                                ENCODER_REDUCE_THREADS, 0));
    }
    const long long items = (long long)shape.splits * ceil_div(C, 32 * W);
    const long long resident = (long long)sms * (per_sm > 0 ? per_sm : 1);
    auto kernel = W == 4 ? encoder_backward_wte_reduce_kernel<4, BATCH> : encoder_backward_wte_reduce_kernel<1, BATCH>;
    launch_dependent(kernel, dim3((unsigned)(items < resident ? items : resident)), dim3(ENCODER_REDUCE_THREADS),
                     stream, ENCODER_REDUCE_PDL, dwte, scratch, tokens, starts, shape.splits, C, chunk);
}

// dwte pass alone: the rows kernel, then the reduce kernel (plan_device: the plan on the device,
// shape its counts; scratch: encoder_backward_scratch_floats(BT, C) floats). U rows in flight per
// warp.
template <int V, int P, int U>
static void encoder_backward_wte_v3_launch(floatX* dwte, float* scratch, const floatX* dout, const int* plan_device,
                                           const EncoderPlanShape& shape, int BT, int C, int warps,
                                           cudaStream_t stream) {
    const int n = shape.n;
    const int* tokens = plan_device;
    const int* starts = plan_device + n;
    const int* positions = plan_device + 2 * n + 1;
    if (n <= 0) return;
    const int chunks = ceil_div(shape.split_positions, 32);
    encoder_backward_wte_rows_kernel<V, P, U><<<ceil_div(chunks + n, warps), 32 * warps, 0, stream>>>(
        dwte, scratch, dout, tokens, starts, positions, n, BT, chunks, C);
    cudaCheckLast();
    encoder_backward_wte_reduce<ENCODER_REDUCE_BATCH>(dwte, scratch, plan_device, shape, C, 32, stream);
}

// v3 with U rows in flight and `warps` per block of the rows kernel; P (packets per lane and pass)
// is the smallest that covers C, at most ENCODER_WARP_PACKETS (wider rows take several passes)
template <int U>
static void encoder_backward_wte_v3(floatX* dwte, float* scratch, const floatX* dout, const int* plan_device,
                                    const EncoderPlanShape& shape, int BT, int C, int warps, cudaStream_t stream) {
    if (warps < 1 || warps > 8) {
        fprintf(stderr, "encoder_backward_wte_v3: %d warps per block not supported\n", warps);
        exit(1);
    }
    if (encoder_can_vectorize(C, dwte, dout, scratch)) {
        int P = ceil_div(C, 32 * X128);
        if (P > ENCODER_WARP_PACKETS) P = ENCODER_WARP_PACKETS;
        switch (P) {
            case 1:
                encoder_backward_wte_v3_launch<X128, 1, U>(dwte, scratch, dout, plan_device, shape, BT, C, warps,
                                                          stream);
                break;
            case 2:
                encoder_backward_wte_v3_launch<X128, 2, U>(dwte, scratch, dout, plan_device, shape, BT, C, warps,
                                                          stream);
                break;
            case 3:
                encoder_backward_wte_v3_launch<X128, 3, U>(dwte, scratch, dout, plan_device, shape, BT, C, warps,
                                                          stream);
                break;
            default:
                encoder_backward_wte_v3_launch<X128, 4, U>(dwte, scratch, dout, plan_device, shape, BT, C, warps,
                                                          stream);
                break;
        }
    } else {
        encoder_backward_wte_v3_launch<1, ENCODER_WARP_PACKETS, U>(dwte, scratch, dout, plan_device, shape, BT, C,
                                                                   warps, stream);
    }
}

// v4 (bulk copies): the rows kernel with S rows in flight per warp and `warps` per block, as many
// blocks as fit on the GPU at once, then v3's reduce kernel. Where it does not apply (16-byte
// accesses needed, C <= 32 * 8 * X128, an sm_90 GPU) v3 with one row in flight runs instead.
#define ENCODER_BULK_MAX_P 8
static inline int encoder_bulk_packets(int C) {
    const int p = ceil_div(C, 32 * X128);
    return p <= 4 ? p : (p <= ENCODER_BULK_MAX_P ? ENCODER_BULK_MAX_P : 0);
}
static inline size_t encoder_bulk_smem(int C, int warps, int S) {
    return (size_t)warps * S * (C * sizeof(floatX) + 8);
}
static inline bool encoder_backward_wte_v4_supported(int C, const void* dwte, const void* dout, const void* scratch,
                                                     int warps, int S) {
    int device = 0, major = 0;
    cudaCheck(cudaGetDevice(&device));
    cudaCheck(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    return major >= 9 && encoder_can_vectorize(C, dwte, dout, scratch) && encoder_bulk_packets(C) > 0 &&
           encoder_bulk_smem(C, warps, S) <= 200 * 1024;
}

template <int P, int S, int BATCH>
static void encoder_backward_wte_v4_launch(floatX* dwte, float* scratch, const floatX* dout, const int* plan_device,
                                           const EncoderPlanShape& shape, int BT, int C, int warps, int chunk,
                                           cudaStream_t stream) {
    const int n = shape.n;
    const int* tokens = plan_device;
    const int* starts = plan_device + n;
    const int* positions = plan_device + 2 * n + 1;
    const int chunks = ceil_div(shape.split_positions, chunk);
    const size_t smem = encoder_bulk_smem(C, warps, S);
    auto kernel = encoder_backward_wte_bulk_kernel<P, S>;
    int device = 0, sms = 0, per_sm = 0;
    cudaCheck(cudaGetDevice(&device));
    cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    cudaCheck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 32 * warps, smem));
    const int work = ceil_div(chunks + n, warps);
    const int resident = sms * (per_sm > 0 ? per_sm : 1);
    kernel<<<work < resident ? work : resident, 32 * warps, smem, stream>>>(dwte, scratch, dout, tokens, starts,
                                                                            positions, n, BT, chunks, chunk, C);
    cudaCheckLast();
    encoder_backward_wte_reduce<BATCH>(dwte, scratch, plan_device, shape, C, chunk, stream);
}

template <int S, int BATCH>
static void encoder_backward_wte_v4(floatX* dwte, float* scratch, const floatX* dout, const int* plan_device,
                                    const EncoderPlanShape& shape, int BT, int C, int warps, int chunk,
                                    cudaStream_t stream) {
    if (shape.n <= 0) return;
    if (warps < 1 || warps > 8 || chunk < 1 || chunk > 32) {
        fprintf(stderr, "encoder_backward_wte_v4: %d warps per block, chunks of %d not supported\n", warps, chunk);
        exit(1);
    }
    if (!encoder_backward_wte_v4_supported(C, dwte, dout, scratch, warps, S)) {
        encoder_backward_wte_v3<1>(dwte, scratch, dout, plan_device, shape, BT, C, warps, stream);
        return;
    }
    switch (encoder_bulk_packets(C)) {
#define LLMC_ENCODER_V4_CASE(PACKETS)                                                                       \
    case PACKETS:                                                                                           \
        encoder_backward_wte_v4_launch<PACKETS, S, BATCH>(dwte, scratch, dout, plan_device, shape, BT, C, warps, \
                                                          chunk, stream);                                   \
        break;
        LLMC_ENCODER_V4_CASE(1)
        LLMC_ENCODER_V4_CASE(2)
        LLMC_ENCODER_V4_CASE(3)
        LLMC_ENCODER_V4_CASE(4)
        LLMC_ENCODER_V4_CASE(ENCODER_BULK_MAX_P)
#undef LLMC_ENCODER_V4_CASE
    }
}

// The engine's backward: dwte by v4 (where it applies, else v3 with one row in flight) with these
// options; each can be set with -D at build time, to measure another one as the engine's.
#ifndef ENCODER_WTE_ROWS_IN_FLIGHT
#define ENCODER_WTE_ROWS_IN_FLIGHT 2  // rows each warp keeps in flight (its ring of bulk copies)
#endif
#ifndef ENCODER_WTE_WARPS
#define ENCODER_WTE_WARPS 4
#endif
#ifndef ENCODER_WTE_CHUNK
#define ENCODER_WTE_CHUNK 32  // positions of a split token's chunk (one warp's item), at most 32
#endif

static inline size_t encoder_backward_scratch_floats(int BT, int C) {
    return encoder_wte_scratch_floats(BT, C, ENCODER_WTE_CHUNK < 32 ? ENCODER_WTE_CHUNK : 32);
}

static void encoder_backward_wpe(floatX* dwpe, const floatX* dout, int B, int T, int C, cudaStream_t stream) {
    encoder_backward_wpe_launch<4>(dwpe, dout, B, T, C, stream);
}

static void encoder_backward_wte(floatX* dwte, float* scratch, const floatX* dout, const int* plan_device,
                                 const EncoderPlanShape& shape, int BT, int C, cudaStream_t stream) {
    encoder_backward_wte_v4<ENCODER_WTE_ROWS_IN_FLIGHT, ENCODER_REDUCE_BATCH>(
        dwte, scratch, dout, plan_device, shape, BT, C, ENCODER_WTE_WARPS, ENCODER_WTE_CHUNK, stream);
}

// plan_device: the plan copied to the device (same layout), shape: its counts (what
// encoder_backward_plan returned); scratch: encoder_backward_scratch_floats(B * T, C) floats, free for
// the duration of the call. dwpe NULL: summed elsewhere (the engine sums it in layer 0's ln1
// backward, layernorm_backward_dwpe, which writes this dout: that saves reading dout a second time
// here).
static void encoder_backward(floatX* dwte, floatX* dwpe, float* scratch, const floatX* dout, const int* plan_device,
                             const EncoderPlanShape& shape, int B, int T, int C, cudaStream_t stream) {
    if (dwpe != NULL) encoder_backward_wpe(dwpe, dout, B, T, C, stream);
    encoder_backward_wte(dwte, scratch, dout, plan_device, shape, B * T, C, stream);
}

#endif  // LLMC_ENCODER_CUH
