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
applies, next to it below) issues every load of a warp's row(s) before the first addition and
stores out with st.global.cs.

Why the backward needs help from the host: many positions can hold the same token, so a kernel that
scatters dout rows into dwte needs atomics, whose summation order (and so the rounded result)
changes from run to run. Instead the host, which holds the token ids anyway, groups the positions
by token (encoder_backward_plan below): a list of distinct tokens ("buckets"), and for each, its
positions in increasing order. Each dwte element is then summed by one thread, over its token's
positions in that fixed order: deterministic, and no partial sums in global memory.

Why the plan is ordered by bucket size: text is skewed. In tinyshakespeare the newline token fills
12% of a 64 x 1024 batch (8,100 positions), "," another 6%. A single block summing such a token
alone would take milliseconds while the rest is done in tens of microseconds. So the plan lists
the "hot" tokens (more than ENCODER_COLD_ROWS positions) first, largest first, then the others,
largest first, and dwte is computed by two kernels:
  cold  (<= ENCODER_COLD_ROWS positions) one warp per token, the whole row; the large ones start
        first, the many single-position tokens fill in behind them.
  hot   split by columns, not by rows: a token gets as many column slices as it takes for each of
        a block's 512 threads to sum about ENCODER_ROWS_PER_LANE positions (one slice, the whole
        row, for a token just above the cold limit; 24 slices of 64 bytes for the newline token
        above). In a block, each row-lane sums every lanes-th position in order, and the row-lanes
        are added in a fixed order through shared memory. Every dwte element still has one owner,
        so no atomics and no scratch. A persistent grid (what fits on the GPU at once) walks the
        (token, slice) items, largest token first, and stops at the first cold token.
dwpe is a column sum over b: one thread per (t, packet), b in order.

Each gradient needs all of dout, so the backward reads dout twice (once for dwpe, once for dwte):
a single pass would have to reduce every row into two different groupings (by t and by token),
which without atomics needs partial sums the size of dout.

History (issue 5, dev/cuda/encoder.cu measures both): before, the forward was one thread per
element with a division per element and 2-byte loads, and dwte was one block per token with scalar
loads, so the newline token above serialized ~8,100 rows on one SM; the plan was in token order.
*/
#ifndef LLMC_ENCODER_CUH
#define LLMC_ENCODER_CUH

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "llmc/cuda_common.cuh"

#define ENCODER_COLD_ROWS 32        // a token with at most this many positions: one warp (cold kernel)
#define ENCODER_WARP_PACKETS 4      // cold kernel: packets per lane in flight (a row of up to 1024 bf16)
#define ENCODER_BATCH 4             // dwpe and hot kernels: rows each thread loads before adding them
#define ENCODER_HOT_THREADS 512     // hot kernel: block size
#define ENCODER_ROWS_PER_LANE 32    // hot kernel: positions per row-lane it aims for (sets the slices)
#define ENCODER_MIN_SLICE 4         // hot kernel: narrowest column slice, in packets (64 bytes for V = X128)

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
// and so was a register cap for 64 warps per SM (32 registers: 30.0-42.9%). The engine: one row,
// 4 warps per block, cs stores. Not evict_last: it gained about a point, within the runs' spread,
// and leaves the wte rows it touched (up to 77 MB) at the top of L2's keep order for the kernels
// that follow. None reaches the 85%-of-copy target. A likely reason, not measured: on the count
// of bytes used here (distinct wte rows, wpe, out) the kernel moves 127 MB in ~40 us, so what a
// launch costs whatever its size (start, ramp-up, the last blocks) weighs more than in the larger
// kernels (the layernorm forward moves 201 MB: 86.8%, its fused form 402 MB: 92%).
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

// The engine's forward: v4 with these launch options where it applies (else v3); ENCODER_FWD_ROWS
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
#define ENCODER_FWD_KEEP false
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
// [tokens (n) | starts (n+1) | positions (B*T)] where n, the number of distinct tokens, is returned:
// bucket k is token tokens[k] at positions[starts[k] .. starts[k+1]), increasing. Buckets are ordered
// hot (more than ENCODER_COLD_ROWS positions) first, then by decreasing count, ties by increasing
// token id: the kernels rely on the hot ones coming first. O(B*T + V) plus an insertion sort of
// the hot tokens, at most B*T / (ENCODER_COLD_ROWS + 1) of them.
typedef struct {
    int* counts;  // (V) scratch
    int vocab_size;
} EncoderPlanner;

static int encoder_backward_plan(EncoderPlanner* p, const int* inputs, int BT, int* plan) {
    int* counts = p->counts;
    memset(counts, 0, sizeof(int) * (size_t)p->vocab_size);
    for (int i = 0; i < BT; i++) counts[inputs[i]]++;
    // class of a token: its count, capped at HOT = ENCODER_COLD_ROWS + 1 for all the hot ones
    enum { HOT = ENCODER_COLD_ROWS + 1 };
    int per_class[HOT + 1] = {0};
    for (int v = 0; v < p->vocab_size; v++)
        if (counts[v] > 0) per_class[counts[v] < HOT ? counts[v] : HOT]++;
    int first[HOT + 1];  // where each class starts in `tokens`: HOT, then HOT-1, ..., 1
    int n = 0;
    for (int c = HOT; c >= 1; c--) {
        first[c] = n;
        n += per_class[c];
    }
    int* tokens = plan;
    for (int v = 0; v < p->vocab_size; v++)
        if (counts[v] > 0) tokens[first[counts[v] < HOT ? counts[v] : HOT]++] = v;
    // the hot ones by decreasing count (insertion sort, stable: ties keep increasing token id)
    for (int i = 1; i < per_class[HOT]; i++) {
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
    return n;
}

// ---- backward kernels -----------------------------------------------------------------------

// dwpe[t, :] += sum_b dout[b, t, :]: one thread per (t, packet), b in order, ENCODER_BATCH rows
// loaded before they are added
template <int V>
__global__ void encoder_backward_wpe_kernel(floatX* __restrict__ dwpe, const floatX* __restrict__ dout, int B,
                                            int T, int C) {
    const int packets = C / V;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= T * packets) return;
    const size_t offset = (size_t)(idx / packets) * C + (size_t)(idx % packets) * V;  // (t, c)
    const size_t stride = (size_t)T * C;                                              // from b to b + 1
    float acc[V] = {};
    for (int b0 = 0; b0 < B; b0 += ENCODER_BATCH) {
        EncoderPack<V> x[ENCODER_BATCH];
#pragma unroll
        for (int j = 0; j < ENCODER_BATCH; j++)
            if (b0 + j < B) x[j] = encoder_load<V>(dout + (size_t)(b0 + j) * stride + offset);
#pragma unroll
        for (int j = 0; j < ENCODER_BATCH; j++)
            if (b0 + j < B)
                for (int k = 0; k < V; k++) acc[k] += to_float(x[j].v[k]);
    }
    EncoderPack<V> g = encoder_load<V>(dwpe + offset);
    for (int k = 0; k < V; k++) g.v[k] = from_float<floatX>(to_float(g.v[k]) + acc[k]);
    encoder_store<V>(dwpe + offset, g);
}

// dwte of the cold tokens: one warp per bucket. Lane i holds the bucket's i-th position (a cold
// bucket has at most 32); each lane reads its dwte packets (up to ENCODER_WARP_PACKETS of them, a
// second pass when C is wider), then adds the bucket's rows in order, all its packets of a row in
// flight together.
static_assert(ENCODER_COLD_ROWS <= 32, "the cold kernel keeps one position per lane");
template <int V>
__global__ void encoder_backward_wte_cold_kernel(floatX* __restrict__ dwte, const floatX* __restrict__ dout,
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
    // every lane runs every pass (the shuffle below needs the whole warp), masked past C
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
// for each of a block's row-lanes to sum at most ~ENCODER_ROWS_PER_LANE positions (one slice, the
// whole row, for a token just above ENCODER_COLD_ROWS; up to P / ENCODER_MIN_SLICE for the largest).
// Items (bucket k, slice s) are numbered k * max_slices + s whatever the bucket's own slice count,
// so no prefix sum is needed: a block walks items blockIdx.x, + gridDim.x, ... and skips the empty
// ones. For an item of `width` packets, thread (row-lane r, packet q) sums packet q over positions
// r, r + lanes, ... in order; then the row-lanes' sums go through shared memory and one thread per
// column adds them in row-lane order and updates dwte.
template <int V>
__global__ void __launch_bounds__(ENCODER_HOT_THREADS)
    encoder_backward_wte_hot_kernel(floatX* __restrict__ dwte, const floatX* __restrict__ dout,
                                    const int* __restrict__ tokens, const int* __restrict__ starts,
                                    const int* __restrict__ positions, int n, int C) {
    __shared__ float lane_sums[ENCODER_HOT_THREADS * V];  // [row-lane][packet q][V], the current item
    const int P = C / V;                                 // packets per row
    const int max_slices = ceil_div(P, ENCODER_MIN_SLICE);
    for (int item = blockIdx.x;; item += gridDim.x) {
        const int k = item / max_slices, s = item % max_slices;
        if (k >= n) break;
        const int begin = starts[k], end = starts[k + 1];
        if (end - begin <= ENCODER_COLD_ROWS) break;  // hot buckets come first: the rest are cold
        // slices: ~ENCODER_ROWS_PER_LANE positions per row-lane, at least one row-lane per slice
        long long slices = ((long long)P * (end - begin) + ENCODER_HOT_THREADS * ENCODER_ROWS_PER_LANE - 1) /
                           (ENCODER_HOT_THREADS * ENCODER_ROWS_PER_LANE);
        if (slices < ceil_div(P, ENCODER_HOT_THREADS)) slices = ceil_div(P, ENCODER_HOT_THREADS);
        if (slices > max_slices) slices = max_slices;
        const int width = ceil_div(P, (int)slices);  // packets per slice, <= ENCODER_HOT_THREADS
        const int p0 = s * width;  // first packet of this slice
        if (p0 >= P) continue;     // an empty item: this bucket has fewer slices
        const int lanes = ENCODER_HOT_THREADS / width;
        const int q = threadIdx.x % width, r = threadIdx.x / width;
        const size_t c = (size_t)(p0 + q) * V;
        float acc[V] = {};
        if (r < lanes && p0 + q < P) {
            for (int i0 = begin + r; i0 < end; i0 += ENCODER_BATCH * lanes) {
                EncoderPack<V> x[ENCODER_BATCH];
#pragma unroll
                for (int j = 0; j < ENCODER_BATCH; j++)
                    if (i0 + j * lanes < end) x[j] = encoder_load<V>(dout + (size_t)positions[i0 + j * lanes] * C + c);
#pragma unroll
                for (int j = 0; j < ENCODER_BATCH; j++)
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

// ---- backward launchers ---------------------------------------------------------------------

// dwpe pass alone (encoder_backward runs it; dev/cuda/encoder.cu times it on its own)
static void encoder_backward_wpe(floatX* dwpe, const floatX* dout, int B, int T, int C, cudaStream_t stream) {
    const int block = 256;
    if (encoder_can_vectorize(C, dwpe, dout, dout)) {
        encoder_backward_wpe_kernel<X128><<<ceil_div(T * (C / X128), block), block, 0, stream>>>(dwpe, dout, B, T, C);
    } else {
        encoder_backward_wpe_kernel<1><<<ceil_div(T * C, block), block, 0, stream>>>(dwpe, dout, B, T, C);
    }
    cudaCheckLast();
}

// dwte pass alone: the cold kernel, then the hot one (plan_device: the plan on the device, n buckets)
template <int V>
static void encoder_backward_wte_launch(floatX* dwte, const floatX* dout, const int* plan_device, int n, int BT,
                                        int C, cudaStream_t stream) {
    const int* tokens = plan_device;
    const int* starts = plan_device + n;
    const int* positions = plan_device + 2 * n + 1;
    if (n <= 0) return;
    const int block = 256;
    encoder_backward_wte_cold_kernel<V><<<ceil_div(n, block / 32), block, 0, stream>>>(dwte, dout, tokens, starts,
                                                                                      positions, n, C);
    cudaCheckLast();
    // at most BT / (ENCODER_COLD_ROWS + 1) hot buckets; a grid that fills the GPU once, each block
    // walking the items
    const int max_hot = BT / (ENCODER_COLD_ROWS + 1) < n ? BT / (ENCODER_COLD_ROWS + 1) : n;
    if (max_hot == 0) return;
    int device = 0, sms = 0, per_sm = 0;
    cudaCheck(cudaGetDevice(&device));
    cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    cudaCheck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, encoder_backward_wte_hot_kernel<V>,
                                                            ENCODER_HOT_THREADS, 0));
    const long long items = (long long)max_hot * ceil_div(C / V, ENCODER_MIN_SLICE);
    const long long resident = (long long)sms * (per_sm > 0 ? per_sm : 1);
    const int grid = (int)(items < resident ? items : resident);
    encoder_backward_wte_hot_kernel<V><<<grid, ENCODER_HOT_THREADS, 0, stream>>>(dwte, dout, tokens, starts,
                                                                                positions, n, C);
    cudaCheckLast();
}

static void encoder_backward_wte(floatX* dwte, const floatX* dout, const int* plan_device, int n, int BT, int C,
                                 cudaStream_t stream) {
    if (encoder_can_vectorize(C, dwte, dout, dout)) {
        encoder_backward_wte_launch<X128>(dwte, dout, plan_device, n, BT, C, stream);
    } else {
        encoder_backward_wte_launch<1>(dwte, dout, plan_device, n, BT, C, stream);
    }
}

// plan_device: the plan copied to the device (same layout), n distinct tokens.
static void encoder_backward(floatX* dwte, floatX* dwpe, const floatX* dout, const int* plan_device, int n,
                             int B, int T, int C, cudaStream_t stream) {
    encoder_backward_wpe(dwpe, dout, B, T, C, stream);
    encoder_backward_wte(dwte, dout, plan_device, n, B * T, C, stream);
}

#endif  // LLMC_ENCODER_CUH
