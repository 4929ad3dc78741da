/*
Causal multi-head self-attention, fused flash-style forward and backward (no T x T matrix in memory).

Shapes: qkv (B, T, 3C) holds q | k | v along the last axis, head h at columns h*HS .. h*HS+HS-1 of
each (C = H * HS). out (B, T, C) is the attention output before the projection, heads side by side.
lse (B, H, T) fp32 is each query row's log-sum-exp of its scaled scores, saved for the backward.

Forward, per (b, h) and query i, with s_ij = q_i . k_j / sqrt(HS) for j <= i:
    out_i = sum_j softmax_j(s_i) v_j, computed with the online softmax (running max m and sum l,
    rescaling the accumulator when the max grows), so keys stream through shared memory once.
Backward, with P_ij = exp(s_ij - lse_i), D_i = dout_i . out_i:
    dP_ij = dout_i . v_j,  dS_ij = P_ij (dP_ij - D_i)
    dq_i = sum_j dS_ij k_j / sqrt(HS),  dk_j = sum_i dS_ij q_i / sqrt(HS),  dv_j = sum_i P_ij dout_i
dqkv is written (=), not added. Every gradient element is written by one thread after a loop in a
fixed order: no atomics, so the result is bit-identical run after run.

Three implementations: two live here, the third in llmc/attention_hopper.cuh (forward) and
llmc/attention_hopper_bwd.cuh (backward), which this header includes before its dispatchers.

1. The simple kernels (attention_*_simple): one thread owns one row, all arithmetic is scalar fp32
   FMA on CUDA cores, tiles of ATT_TILE rows are staged in shared memory and read as broadcasts.
   Backward: one kernel per query row computes D_i and dq_i, one per key row dk_j and dv_j. They
   serve the fp32 build (LLMC_FP32, the 1e-4 parity path) and are the baseline in
   dev/cuda/attention.cu. Head sizes 16, 32, 64, 128.

2. The flash kernels (fa_*, the bf16 build), FlashAttention-2's scheme on the tensor cores:
   bf16 operands, fp32 accumulation with mma.sync.m16n8k16 (warp-level, inline PTX), fragments
   loaded from shared memory with ldmatrix (.trans for the operands stored the other way round),
   tiles copied global -> shared with cp.async, double-buffered so the next tile's copy overlaps
   the current tile's math. Shared-memory rows are padded by 16 bytes so the 8 row addresses of an
   ldmatrix fall in distinct banks. Each warp owns MT m-tiles of 16 rows (FaCfg: warps, m-tiles,
   streamed tile rows; FaConfig<HS> holds the production choice): with MT = 2 every B fragment
   read from shared memory feeds two tensor-core products, which is what made them faster (with
   MT = 1 the kernels are bound by shared-memory bandwidth).
   - forward (fa_forward_kernel): a block owns 16 * MT * NW query rows, keeps their Q fragments in
     registers and streams 64-key tiles of K and V. S = Q K^T and O += P V run on the tensor cores;
     the online softmax runs in fp32 registers on exp2 of log2(e)-prescaled scores (one FFMA and one
     MUFU.EX2 per score). Causal: key tiles past the block's last row are never loaded, warps skip
     tiles entirely past their rows, and only tiles that cross the diagonal are masked. Blocks are
     launched heaviest (last query rows) first.
   - backward: a preprocess kernel computes D_i = dout_i . out_i; fa_backward_dkdv_kernel owns a
     block of key rows and loops over query tiles (from the diagonal down), accumulating dK and dV
     in registers (S^T = K Q^T, P^T, dV += P^T dO, dP^T = V dO^T, dS^T, dK += dS^T Q);
     fa_backward_dq_kernel owns a block of query rows and loops over key tiles computing
     dQ += dS K. Computing dQ in its own kernel repeats S and dP (7 matrix products instead of
     FlashAttention-2's 5) but needs no atomic adds into dQ, whose order would change the result.
   Head sizes 16, 32, 64 (GPT-2), 128 (any multiple of 16 compiles). Any T >= 1: rows past T are
   zero-filled on load (cp.async with a source size of 0) and never written.
   Measured on an H200 at GPT-2 124M shapes (B*H = 768, T = 1024, HS = 64; dev/cuda/attention.cu):
   forward 0.43 ms, forward + backward 1.91 ms, against cuDNN's 0.32 / 1.61 and PyTorch's
   FlashAttention-2 0.49 / 2.37 in the same run (docs/benchmarks.md).

3. The Hopper kernels (fah_*, sm_90a only): the same algorithm on warpgroup-wide wgmma tensor-core
   instructions, operands read straight from swizzled shared memory, P and dS fed to the next
   product from registers. attention_forward / attention_backward use them for HS = 64 and 128
   when the program carries sm_90a code for the device (attention_use_hopper; the CMake build
   adds it), else the flash kernels above. H200, same shapes: forward 0.32 ms (TMA copies),
   forward + backward 1.52 ms, against cuDNN's 0.33 / 1.47 in the same run (forward 103%, forward
   + backward 97% of its speed).
*/
#ifndef LLMC_ATTENTION_CUH
#define LLMC_ATTENTION_CUH

#include "llmc/cuda_common.cuh"

#define ATT_TILE 32  // rows per block (one per thread) and keys/queries per shared-memory tile

// Loads rows [row0, row0 + ATT_TILE) of one head's slice (column offset col) of a (B, T, 3C) or
// (B, T, C) tensor into a shared (ATT_TILE, HS + pad) fp32 tile; rows past T are zero.
template <int HS, typename T_>
__device__ static inline void load_tile(float* tile, int ld_tile, const T_* src, size_t row_stride, int row0, int T,
                                        size_t base) {
    for (int idx = threadIdx.x; idx < ATT_TILE * HS; idx += blockDim.x) {
        const int r = idx / HS, d = idx % HS;
        const int row = row0 + r;
        tile[r * ld_tile + d] = row < T ? to_float(src[base + (size_t)row * row_stride + d]) : 0.0f;
    }
}

// grid (ceil(T / ATT_TILE), B * H), block ATT_TILE threads; dynamic smem 2 * ATT_TILE * HS floats.
template <int HS>
__global__ void attention_forward_kernel(floatX* out, float* lse, const floatX* qkv, int B, int T, int H) {
    extern __shared__ float smem[];
    float* ks = smem;
    float* vs = smem + ATT_TILE * HS;
    const int C = H * HS;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int tile_q = blockIdx.x;
    const int i = tile_q * ATT_TILE + threadIdx.x;
    const size_t stride = 3 * (size_t)C;
    const size_t base = (size_t)b * T * stride + (size_t)h * HS;
    const float scale = 1.0f / sqrtf((float)HS);

    float q[HS], acc[HS];
    if (i < T) {
#pragma unroll
        for (int d = 0; d < HS; d++) q[d] = to_float(qkv[base + (size_t)i * stride + d]) * scale;
    }
#pragma unroll
    for (int d = 0; d < HS; d++) acc[d] = 0.0f;
    float m = -INFINITY, l = 0.0f;

    for (int tile_k = 0; tile_k <= tile_q; tile_k++) {
        __syncthreads();  // previous tile fully used
        load_tile<HS>(ks, HS, qkv, stride, tile_k * ATT_TILE, T, base + C);
        load_tile<HS>(vs, HS, qkv, stride, tile_k * ATT_TILE, T, base + 2 * C);
        __syncthreads();
        if (i >= T) continue;
        const int j_end = min(ATT_TILE, i - tile_k * ATT_TILE + 1);  // causal: keys j <= i
        for (int j = 0; j < j_end; j++) {
            const float* kj = ks + j * HS;
            float s = 0.0f;
#pragma unroll
            for (int d = 0; d < HS; d++) s += q[d] * kj[d];
            if (s > m) {
                const float correction = expf(m - s);
                l *= correction;
#pragma unroll
                for (int d = 0; d < HS; d++) acc[d] *= correction;
                m = s;
            }
            const float p = expf(s - m);
            l += p;
            const float* vj = vs + j * HS;
#pragma unroll
            for (int d = 0; d < HS; d++) acc[d] += p * vj[d];
        }
    }
    if (i < T) {
        const float inv = 1.0f / l;
        floatX* o = out + ((size_t)b * T + i) * C + (size_t)h * HS;
#pragma unroll
        for (int d = 0; d < HS; d++) o[d] = from_float<floatX>(acc[d] * inv);
        lse[(size_t)bh * T + i] = m + logf(l);
    }
}

// dq and D. grid (ceil(T / ATT_TILE), B * H), block ATT_TILE. Dynamic smem: own q and dout rows
// (padded to HS + 1 so the per-thread rows do not collide in banks) and a k tile and a v tile.
template <int HS>
__global__ void attention_backward_dq_kernel(floatX* dqkv, float* delta, const floatX* dout, const floatX* out,
                                             const floatX* qkv, const float* lse, int B, int T, int H) {
    extern __shared__ float smem[];
    const int ld_own = HS + 1;
    float* q_own = smem;                         // (ATT_TILE, HS + 1)
    float* do_own = q_own + ATT_TILE * ld_own;   // (ATT_TILE, HS + 1)
    float* ks = do_own + ATT_TILE * ld_own;      // (ATT_TILE, HS)
    float* vs = ks + ATT_TILE * HS;              // (ATT_TILE, HS)
    const int C = H * HS;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int tile_q = blockIdx.x;
    const int r = threadIdx.x;
    const int i = tile_q * ATT_TILE + r;
    const size_t stride = 3 * (size_t)C;
    const size_t base = (size_t)b * T * stride + (size_t)h * HS;
    const size_t base_o = (size_t)b * T * C + (size_t)h * HS;
    const float scale = 1.0f / sqrtf((float)HS);

    float* qi = q_own + r * ld_own;
    float* doi = do_own + r * ld_own;
    float D = 0.0f, L = 0.0f;
    if (i < T) {
        for (int d = 0; d < HS; d++) {
            qi[d] = to_float(qkv[base + (size_t)i * stride + d]) * scale;
            const float g = to_float(dout[base_o + (size_t)i * C + d]);
            doi[d] = g;
            D += g * to_float(out[base_o + (size_t)i * C + d]);
        }
        L = lse[(size_t)bh * T + i];
        delta[(size_t)bh * T + i] = D;
    }
    float dq[HS];
#pragma unroll
    for (int d = 0; d < HS; d++) dq[d] = 0.0f;

    for (int tile_k = 0; tile_k <= tile_q; tile_k++) {
        __syncthreads();
        load_tile<HS>(ks, HS, qkv, stride, tile_k * ATT_TILE, T, base + C);
        load_tile<HS>(vs, HS, qkv, stride, tile_k * ATT_TILE, T, base + 2 * C);
        __syncthreads();
        if (i >= T) continue;
        const int j_end = min(ATT_TILE, i - tile_k * ATT_TILE + 1);
        for (int j = 0; j < j_end; j++) {
            const float* kj = ks + j * HS;
            const float* vj = vs + j * HS;
            float s = 0.0f, dp = 0.0f;
#pragma unroll
            for (int d = 0; d < HS; d++) {
                s += qi[d] * kj[d];
                dp += doi[d] * vj[d];
            }
            const float p = expf(s - L);
            const float ds = p * (dp - D);
#pragma unroll
            for (int d = 0; d < HS; d++) dq[d] += ds * kj[d];
        }
    }
    if (i < T) {
        floatX* o = dqkv + base + (size_t)i * stride;
#pragma unroll
        for (int d = 0; d < HS; d++) o[d] = from_float<floatX>(dq[d] * scale);
    }
}

// dk and dv. grid (ceil(T / ATT_TILE), B * H), block ATT_TILE (one thread per key row). Dynamic
// smem: own k and v rows (padded) and tiles of q and dout, plus lse and D of the query tile.
template <int HS>
__global__ void attention_backward_dkdv_kernel(floatX* dqkv, const float* delta, const floatX* dout,
                                               const floatX* qkv, const float* lse, int B, int T, int H) {
    extern __shared__ float smem[];
    const int ld_own = HS + 1;
    float* k_own = smem;
    float* v_own = k_own + ATT_TILE * ld_own;
    float* qs = v_own + ATT_TILE * ld_own;  // (ATT_TILE, HS), pre-scaled by 1/sqrt(HS)
    float* dos = qs + ATT_TILE * HS;        // (ATT_TILE, HS)
    float* ls = dos + ATT_TILE * HS;        // (ATT_TILE)
    float* ds_ = ls + ATT_TILE;             // (ATT_TILE)
    const int C = H * HS;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int tile_k = blockIdx.x;
    const int r = threadIdx.x;
    const int j = tile_k * ATT_TILE + r;
    const size_t stride = 3 * (size_t)C;
    const size_t base = (size_t)b * T * stride + (size_t)h * HS;
    const size_t base_o = (size_t)b * T * C + (size_t)h * HS;
    const float scale = 1.0f / sqrtf((float)HS);

    float* kj = k_own + r * ld_own;
    float* vj = v_own + r * ld_own;
    if (j < T) {
        for (int d = 0; d < HS; d++) {
            kj[d] = to_float(qkv[base + C + (size_t)j * stride + d]);
            vj[d] = to_float(qkv[base + 2 * C + (size_t)j * stride + d]);
        }
    }
    float dk[HS], dv[HS];
#pragma unroll
    for (int d = 0; d < HS; d++) {
        dk[d] = 0.0f;
        dv[d] = 0.0f;
    }
    const int num_tiles = ceil_div(T, ATT_TILE);
    for (int tile_q = tile_k; tile_q < num_tiles; tile_q++) {
        __syncthreads();
        load_tile<HS>(qs, HS, qkv, stride, tile_q * ATT_TILE, T, base);
        load_tile<HS>(dos, HS, dout, C, tile_q * ATT_TILE, T, base_o);
        for (int idx = threadIdx.x; idx < ATT_TILE * HS; idx += blockDim.x) qs[idx] *= scale;
        {
            const int i = tile_q * ATT_TILE + threadIdx.x;
            ls[threadIdx.x] = i < T ? lse[(size_t)bh * T + i] : 0.0f;
            ds_[threadIdx.x] = i < T ? delta[(size_t)bh * T + i] : 0.0f;
        }
        __syncthreads();
        if (j >= T) continue;
        const int i_begin = max(0, j - tile_q * ATT_TILE);  // causal: queries i >= j
        const int i_end = min(ATT_TILE, T - tile_q * ATT_TILE);
        for (int ii = i_begin; ii < i_end; ii++) {
            const float* qi = qs + ii * HS;
            const float* doi = dos + ii * HS;
            float s = 0.0f, dp = 0.0f;
#pragma unroll
            for (int d = 0; d < HS; d++) {
                s += qi[d] * kj[d];
                dp += doi[d] * vj[d];
            }
            const float p = expf(s - ls[ii]);
            const float dsv = p * (dp - ds_[ii]);
#pragma unroll
            for (int d = 0; d < HS; d++) {
                dk[d] += dsv * qi[d];
                dv[d] += p * doi[d];
            }
        }
    }
    if (j < T) {
        floatX* ok = dqkv + base + C + (size_t)j * stride;
        floatX* ov = dqkv + base + 2 * C + (size_t)j * stride;
        // qs was pre-scaled, so dk already carries the 1/sqrt(HS) of s = q.k / sqrt(HS)
#pragma unroll
        for (int d = 0; d < HS; d++) {
            ok[d] = from_float<floatX>(dk[d]);
            ov[d] = from_float<floatX>(dv[d]);
        }
    }
}

template <int HS>
static void attention_forward_simple_hs(floatX* out, float* lse, const floatX* qkv, int B, int T, int H, cudaStream_t stream) {
    const size_t smem = 2 * ATT_TILE * HS * sizeof(float);
    cudaCheck(cudaFuncSetAttribute(attention_forward_kernel<HS>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    dim3 grid(ceil_div(T, ATT_TILE), B * H);
    attention_forward_kernel<HS><<<grid, ATT_TILE, smem, stream>>>(out, lse, qkv, B, T, H);
    cudaCheckLast();
}

template <int HS>
static void attention_backward_simple_hs(floatX* dqkv, float* delta, const floatX* dout, const floatX* out,
                                  const floatX* qkv, const float* lse, int B, int T, int H, cudaStream_t stream) {
    dim3 grid(ceil_div(T, ATT_TILE), B * H);
    const size_t smem_dq = (2 * ATT_TILE * (HS + 1) + 2 * ATT_TILE * HS) * sizeof(float);
    cudaCheck(cudaFuncSetAttribute(attention_backward_dq_kernel<HS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   (int)smem_dq));
    attention_backward_dq_kernel<HS><<<grid, ATT_TILE, smem_dq, stream>>>(dqkv, delta, dout, out, qkv, lse, B, T, H);
    cudaCheckLast();
    const size_t smem_dkdv = (2 * ATT_TILE * (HS + 1) + 2 * ATT_TILE * HS + 2 * ATT_TILE) * sizeof(float);
    cudaCheck(cudaFuncSetAttribute(attention_backward_dkdv_kernel<HS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   (int)smem_dkdv));
    attention_backward_dkdv_kernel<HS><<<grid, ATT_TILE, smem_dkdv, stream>>>(dqkv, delta, dout, qkv, lse, B, T, H);
    cudaCheckLast();
}


static void attention_forward_simple(floatX* out, float* lse, const floatX* qkv, int B, int T, int C, int H,
                                     cudaStream_t stream) {
    switch (C / H) {
        case 16: attention_forward_simple_hs<16>(out, lse, qkv, B, T, H, stream); break;
        case 32: attention_forward_simple_hs<32>(out, lse, qkv, B, T, H, stream); break;
        case 64: attention_forward_simple_hs<64>(out, lse, qkv, B, T, H, stream); break;
        case 128: attention_forward_simple_hs<128>(out, lse, qkv, B, T, H, stream); break;
        default: fprintf(stderr, "attention: head size %d not supported (16, 32, 64, 128)\n", C / H); exit(1);
    }
}

static void attention_backward_simple(floatX* dqkv, float* delta, const floatX* dout, const floatX* out,
                                      const floatX* qkv, const float* lse, int B, int T, int C, int H,
                                      cudaStream_t stream) {
    switch (C / H) {
        case 16: attention_backward_simple_hs<16>(dqkv, delta, dout, out, qkv, lse, B, T, H, stream); break;
        case 32: attention_backward_simple_hs<32>(dqkv, delta, dout, out, qkv, lse, B, T, H, stream); break;
        case 64: attention_backward_simple_hs<64>(dqkv, delta, dout, out, qkv, lse, B, T, H, stream); break;
        case 128: attention_backward_simple_hs<128>(dqkv, delta, dout, out, qkv, lse, B, T, H, stream); break;
        default: fprintf(stderr, "attention: head size %d not supported (16, 32, 64, 128)\n", C / H); exit(1);
    }
}

// ==============================================================================================
// Flash kernels (bf16 operands, tensor cores). Fragment layouts of mma.m16n8k16 (lane = 4 * g + t):
//   A (16 x 16, row-major): a[0] = (row g, cols 2t, 2t+1), a[1] = (row g+8, same cols),
//                           a[2] = (row g, cols 2t+8, 2t+9), a[3] = (row g+8, cols 2t+8, 2t+9)
//   B (16 x 8, "col": stored n-major): b[0] = (k 2t, 2t+1; n g), b[1] = (k 2t+8, 2t+9; n g)
//   C (16 x 8 fp32): c[0], c[1] = (row g, cols 2t, 2t+1), c[2], c[3] = (row g+8, same cols)
// So a C tile pair (16 x 16 fp32) repacked into bf16 pairs is directly the A operand of the next
// product (P -> P V, dS -> dS K), with no trip through shared memory.

typedef __nv_bfloat16 fa_bf16;
#define FA_LOG2E 1.4426950408889634f
#define FA_BK 64  // rows of the streamed tile (keys in forward and dq, queries in dk/dv)

__device__ __forceinline__ uint32_t fa_smem_addr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

// 16-byte global -> shared copy; when !valid the 16 shared bytes are zero-filled and nothing is read
__device__ __forceinline__ void fa_cp_async16(uint32_t dst, const void* src, bool valid) {
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void fa_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void fa_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void fa_ldmatrix_x4(uint32_t* r, uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void fa_ldmatrix_x4_trans(uint32_t* r, uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// c (16 x 8 fp32) += a (16 x 16 bf16) * b (16 x 8 bf16)
__device__ __forceinline__ void fa_mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t fa_pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
    return *reinterpret_cast<uint32_t*>(&v);
}

// 2^x on the special-function unit (relative error ~2^-22, far below bf16's 2^-8); 2^-inf = 0
__device__ __forceinline__ float fa_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Starts the copy of rows [row0, row0 + ROWS) of one head's slice into a shared tile of row stride
// HS + 8. src points at (row 0, column 0) of the slice, ld is the global row stride in elements.
template <int ROWS, int HS, int NT>
__device__ __forceinline__ void fa_load_tile(fa_bf16* dst, const fa_bf16* src, size_t ld, int row0, int T) {
    constexpr int CPR = HS / 8;  // 16-byte chunks per row
    constexpr int LDS = HS + 8;
#pragma unroll
    for (int it = 0; it < (ROWS * CPR + NT - 1) / NT; it++) {
        const int idx = it * NT + threadIdx.x;
        if ((ROWS * CPR) % NT == 0 || idx < ROWS * CPR) {
            const int r = idx / CPR, c = idx % CPR;
            const int row = row0 + r;
            const bool valid = row < T;
            fa_cp_async16(fa_smem_addr(dst + r * LDS + c * 8), src + (size_t)(valid ? row : 0) * ld + c * 8, valid);
        }
    }
}

// ldmatrix addresses (per lane) for the three operand shapes, tiles with row stride LDS:
// A operand, rows r0 .. r0+15, k columns k0 .. k0+15
template <int LDS>
__device__ __forceinline__ uint32_t fa_addr_a(const fa_bf16* tile, int r0, int k0, int lane) {
    return fa_smem_addr(tile + (r0 + (lane & 15)) * LDS + k0 + (lane >> 4) * 8);
}
// B operands of two n-blocks (n0 .. n0+15) for k0 .. k0+15, from a tile stored n-major ([n][k])
template <int LDS>
__device__ __forceinline__ uint32_t fa_addr_b(const fa_bf16* tile, int n0, int k0, int lane) {
    return fa_smem_addr(tile + (n0 + (lane & 7) + (lane >> 4) * 8) * LDS + k0 + ((lane >> 3) & 1) * 8);
}
// the same from a tile stored k-major ([k][n]), read with ldmatrix.trans
template <int LDS>
__device__ __forceinline__ uint32_t fa_addr_bt(const fa_bf16* tile, int n0, int k0, int lane) {
    return fa_smem_addr(tile + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS + n0 + (lane >> 4) * 8);
}

// acc[MT][NN][4] (16*MT x 8*NN) += A (16*MT x 16*KS: rows r0 .. of tile a, read from shared memory)
// times B^T (B = rows n 0 .. 8*NN of tile b, stored [n][k]). Each B fragment feeds MT products.
template <int MT, int NN, int KS, int LDS>
__device__ __forceinline__ void fa_gemm_abt(float (*acc)[NN][4], const fa_bf16* a, int r0, const fa_bf16* b,
                                            int lane) {
#pragma unroll
    for (int kk = 0; kk < KS; kk++) {
        uint32_t af[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) fa_ldmatrix_x4(af[mt], fa_addr_a<LDS>(a, r0 + mt * 16, kk * 16, lane));
#pragma unroll
        for (int nb = 0; nb < NN; nb += 2) {
            uint32_t bf[4];
            fa_ldmatrix_x4(bf, fa_addr_b<LDS>(b, nb * 8, kk * 16, lane));
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                fa_mma(acc[mt][nb], af[mt], bf[0], bf[1]);
                fa_mma(acc[mt][nb + 1], af[mt], bf[2], bf[3]);
            }
        }
    }
}

// acc[MT][ND][4] (16*MT x 8*ND) += P (16*MT x 16*KP, fp32 C-fragments p[MT][2*KP][4], rounded to
// bf16) times B (rows k 0 .. 16*KP of tile b, stored [k][n], n = 0 .. 8*ND)
template <int MT, int ND, int KP, int LDS>
__device__ __forceinline__ void fa_gemm_pb(float (*acc)[ND][4], const float (*p)[2 * KP][4], const fa_bf16* b,
                                           int lane) {
#pragma unroll
    for (int kk = 0; kk < KP; kk++) {
        uint32_t pa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            pa[mt][0] = fa_pack(p[mt][2 * kk][0], p[mt][2 * kk][1]);
            pa[mt][1] = fa_pack(p[mt][2 * kk][2], p[mt][2 * kk][3]);
            pa[mt][2] = fa_pack(p[mt][2 * kk + 1][0], p[mt][2 * kk + 1][1]);
            pa[mt][3] = fa_pack(p[mt][2 * kk + 1][2], p[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int nd = 0; nd < ND; nd += 2) {
            uint32_t bf[4];
            fa_ldmatrix_x4_trans(bf, fa_addr_bt<LDS>(b, nd * 8, kk * 16, lane));
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                fa_mma(acc[mt][nd], pa[mt], bf[0], bf[1]);
                fa_mma(acc[mt][nd + 1], pa[mt], bf[2], bf[3]);
            }
        }
    }
}

template <int MT, int N>
__device__ __forceinline__ void fa_zero(float (*acc)[N][4]) {
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int n = 0; n < N; n++) acc[mt][n][0] = acc[mt][n][1] = acc[mt][n][2] = acc[mt][n][3] = 0.0f;
}

// A launch configuration of one flash kernel: NW warps per block, each owning MT m-tiles of 16 rows
// (the block owns 16 * MT * NW rows), streaming tiles of BK rows of the other operand.
template <int NW_, int MT_, int BK_>
struct FaCfg {
    static constexpr int NW = NW_, MT = MT_, BK = BK_, ROWS = 16 * MT_ * NW_;
};

template <int HS, class CFG>
static constexpr size_t fa_forward_smem() {
    return (size_t)(CFG::ROWS + 4 * CFG::BK) * (HS + 8) * sizeof(fa_bf16);
}

// grid (ceil(T / ROWS), B * H), block NW warps; dynamic smem fa_forward_smem<HS, CFG>()
template <int HS, class CFG>
__global__ void __launch_bounds__(CFG::NW * 32) fa_forward_kernel(fa_bf16* out, float* lse, const fa_bf16* qkv,
                                                                  int T, int H, float scale) {
    constexpr int NW = CFG::NW, MT = CFG::MT, BR = CFG::ROWS, BC = CFG::BK, LDS = HS + 8, NT = NW * 32;
    constexpr int KS = HS / 16, NB = BC / 8, ND = HS / 8;
    extern __shared__ __align__(16) unsigned char fa_smem[];
    fa_bf16* qs = reinterpret_cast<fa_bf16*>(fa_smem);
    fa_bf16* ks = qs + BR * LDS;      // 2 buffers
    fa_bf16* vs = ks + 2 * BC * LDS;  // 2 buffers
    const int C = H * HS;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * BR;  // heaviest blocks first
    const size_t ld = 3 * (size_t)C;
    const fa_bf16* qg = qkv + (size_t)b * T * ld + (size_t)h * HS;
    const fa_bf16* kg = qg + C;
    const fa_bf16* vg = qg + 2 * C;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int nkb = (min(q0 + BR, T) - 1) / BC + 1;  // causal: key tiles up to the last row
    const int wr0 = warp * 16 * MT;                  // the warp's first row in the block
    const float sl2 = scale * FA_LOG2E;

    fa_load_tile<BR, HS, NT>(qs, qg, ld, q0, T);
    fa_load_tile<BC, HS, NT>(ks, kg, ld, 0, T);
    fa_load_tile<BC, HS, NT>(vs, vg, ld, 0, T);
    fa_cp_async_commit();

    uint32_t qf[MT][KS][4];
    float o[MT][ND][4];
    fa_zero<MT, ND>(o);
    float m[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) m[mt][0] = m[mt][1] = -INFINITY, l[mt][0] = l[mt][1] = 0.0f;

    for (int kb = 0; kb < nkb; kb++) {
        const int buf = kb & 1;
        if (kb + 1 < nkb) {  // prefetch the next K, V tiles into the other buffer
            fa_load_tile<BC, HS, NT>(ks + (buf ^ 1) * BC * LDS, kg, ld, (kb + 1) * BC, T);
            fa_load_tile<BC, HS, NT>(vs + (buf ^ 1) * BC * LDS, vg, ld, (kb + 1) * BC, T);
            fa_cp_async_commit();
            fa_cp_async_wait<1>();
        } else {
            fa_cp_async_wait<0>();
        }
        __syncthreads();
        if (kb == 0) {
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int kk = 0; kk < KS; kk++)
                    fa_ldmatrix_x4(qf[mt][kk], fa_addr_a<LDS>(qs, wr0 + mt * 16, kk * 16, lane));
        }
        const fa_bf16* kt = ks + buf * BC * LDS;
        const fa_bf16* vt = vs + buf * BC * LDS;
        const int k0 = kb * BC;
        if (k0 > q0 + wr0 + 16 * MT - 1) {  // every key of the tile is after this warp's rows
            __syncthreads();
            continue;
        }

        float s[MT][NB][4];
        fa_zero<MT, NB>(s);
#pragma unroll
        for (int kk = 0; kk < KS; kk++) {
#pragma unroll
            for (int nb = 0; nb < NB; nb += 2) {
                uint32_t bf[4];
                fa_ldmatrix_x4(bf, fa_addr_b<LDS>(kt, nb * 8, kk * 16, lane));
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    fa_mma(s[mt][nb], qf[mt][kk], bf[0], bf[1]);
                    fa_mma(s[mt][nb + 1], qf[mt][kk], bf[2], bf[3]);
                }
            }
        }
        if (k0 + BC - 1 > q0 + wr0) {  // the tile crosses this warp's diagonal: mask keys j > i
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int nb = 0; nb < NB; nb++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int j = k0 + nb * 8 + 2 * t + (e & 1);
                        const int i = q0 + wr0 + mt * 16 + g + (e >> 1) * 8;
                        if (j > i) s[mt][nb][e] = -INFINITY;
                    }
        }
        // online softmax, per row (the 4 lanes t = 0..3 of a group share a row)
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
#pragma unroll
            for (int r = 0; r < 2; r++) {
                float mx = m[mt][r];
#pragma unroll
                for (int nb = 0; nb < NB; nb++) mx = fmaxf(mx, fmaxf(s[mt][nb][2 * r], s[mt][nb][2 * r + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float mref = mx == -INFINITY ? 0.0f : mx * sl2;  // a row with no key yet stays at 0
                const float corr = fa_exp2(m[mt][r] * sl2 - mref);
                m[mt][r] = mx;
                l[mt][r] *= corr;
#pragma unroll
                for (int nd = 0; nd < ND; nd++) {
                    o[mt][nd][2 * r] *= corr;
                    o[mt][nd][2 * r + 1] *= corr;
                }
#pragma unroll
                for (int nb = 0; nb < NB; nb++) {
                    s[mt][nb][2 * r] = fa_exp2(fmaf(s[mt][nb][2 * r], sl2, -mref));
                    s[mt][nb][2 * r + 1] = fa_exp2(fmaf(s[mt][nb][2 * r + 1], sl2, -mref));
                    l[mt][r] += s[mt][nb][2 * r] + s[mt][nb][2 * r + 1];  // this lane's part
                }
            }
        }
        fa_gemm_pb<MT, ND, BC / 16, LDS>(o, s, vt, lane);
        __syncthreads();  // all warps are done with this buffer before it is refilled
    }

#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float lr = l[mt][r];
            lr += __shfl_xor_sync(0xffffffffu, lr, 1);
            lr += __shfl_xor_sync(0xffffffffu, lr, 2);
            const int i = q0 + wr0 + mt * 16 + g + r * 8;
            if (i < T) {
                const float inv = 1.0f / lr;
                fa_bf16* orow = out + ((size_t)b * T + i) * C + (size_t)h * HS;
#pragma unroll
                for (int nd = 0; nd < ND; nd++)
                    *reinterpret_cast<uint32_t*>(orow + nd * 8 + 2 * t) =
                        fa_pack(o[mt][nd][2 * r] * inv, o[mt][nd][2 * r + 1] * inv);
                if (t == 0) lse[(size_t)bh * T + i] = m[mt][r] * scale + logf(lr);
            }
        }
    }
}

// delta (B, H, T) = rowsum(dout * out) per head. HS / 8 consecutive threads own one (b, t, h) row,
// each a 16-byte chunk, summed by shuffles in a fixed order.
template <int HS>
__global__ void fa_backward_preprocess_kernel(float* delta, const fa_bf16* dout, const fa_bf16* out, int B, int T,
                                              int H) {
    constexpr int TPR = HS / 8;
    const size_t gid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t row = gid / TPR, nrows = (size_t)B * T * H;
    const int c = (int)(gid % TPR);
    float acc = 0.0f;
    if (row < nrows) {
        const uint4 a = *reinterpret_cast<const uint4*>(dout + row * HS + c * 8);
        const uint4 o = *reinterpret_cast<const uint4*>(out + row * HS + c * 8);
        const __nv_bfloat162* a2 = reinterpret_cast<const __nv_bfloat162*>(&a);
        const __nv_bfloat162* o2 = reinterpret_cast<const __nv_bfloat162*>(&o);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const float2 af = __bfloat1622float2(a2[k]), of = __bfloat1622float2(o2[k]);
            acc += af.x * of.x + af.y * of.y;
        }
    }
#pragma unroll
    for (int off = TPR / 2; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (row < nrows && c == 0) {
        const size_t bt = row / H;
        const int h = (int)(row % H), tt = (int)(bt % T), b = (int)(bt / T);
        delta[((size_t)b * H + h) * T + tt] = acc;
    }
}

template <int HS, class CFG>
static constexpr size_t fa_dkdv_smem() {
    return (size_t)(2 * CFG::ROWS + 4 * CFG::BK) * (HS + 8) * sizeof(fa_bf16) + 4 * CFG::BK * sizeof(float);
}

// dk, dv. grid (ceil(T / ROWS), B * H): a block owns ROWS keys and streams BK-query tiles from the
// diagonal down; dynamic smem fa_dkdv_smem<HS, CFG>()
template <int HS, class CFG>
__global__ void __launch_bounds__(CFG::NW * 32) fa_backward_dkdv_kernel(fa_bf16* dqkv, const float* delta,
                                                                        const fa_bf16* dout, const fa_bf16* qkv,
                                                                        const float* lse, int T, int H, float scale) {
    constexpr int NW = CFG::NW, MT = CFG::MT, BC = CFG::ROWS, BR = CFG::BK, LDS = HS + 8, NT = NW * 32;
    constexpr int KS = HS / 16, NQ = BR / 8, ND = HS / 8;
    extern __shared__ __align__(16) unsigned char fa_smem[];
    fa_bf16* kt = reinterpret_cast<fa_bf16*>(fa_smem);
    fa_bf16* vt = kt + BC * LDS;
    fa_bf16* qs = vt + BC * LDS;       // 2 buffers
    fa_bf16* dos = qs + 2 * BR * LDS;  // 2 buffers
    float* lse2s = reinterpret_cast<float*>(dos + 2 * BR * LDS);  // 2 buffers, lse * log2(e)
    float* dls = lse2s + 2 * BR;                                   // 2 buffers, D
    const int C = H * HS;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int k0 = blockIdx.x * BC;  // heaviest (first keys) first
    const size_t ld = 3 * (size_t)C;
    const fa_bf16* qg = qkv + (size_t)b * T * ld + (size_t)h * HS;
    const fa_bf16* dog = dout + (size_t)b * T * C + (size_t)h * HS;
    const float* lseg = lse + (size_t)bh * T;
    const float* dg = delta + (size_t)bh * T;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int qt0 = k0 / BR, nqt = (T + BR - 1) / BR;
    const int wk0 = warp * 16 * MT;  // the warp's first key in the block
    const float sl2 = scale * FA_LOG2E;

    fa_load_tile<BC, HS, NT>(kt, qg + C, ld, k0, T);
    fa_load_tile<BC, HS, NT>(vt, qg + 2 * C, ld, k0, T);
    fa_load_tile<BR, HS, NT>(qs, qg, ld, qt0 * BR, T);
    fa_load_tile<BR, HS, NT>(dos, dog, C, qt0 * BR, T);
    fa_cp_async_commit();
    for (int idx = threadIdx.x; idx < BR; idx += NT) {
        const int i = qt0 * BR + idx;
        lse2s[idx] = i < T ? lseg[i] * FA_LOG2E : 0.0f;
        dls[idx] = i < T ? dg[i] : 0.0f;
    }

    float dk[MT][ND][4], dv[MT][ND][4];
    fa_zero<MT, ND>(dk);
    fa_zero<MT, ND>(dv);

    for (int qt = qt0; qt < nqt; qt++) {
        const int buf = (qt - qt0) & 1;
        if (qt + 1 < nqt) {
            const int nb = buf ^ 1, i1 = (qt + 1) * BR;
            fa_load_tile<BR, HS, NT>(qs + nb * BR * LDS, qg, ld, i1, T);
            fa_load_tile<BR, HS, NT>(dos + nb * BR * LDS, dog, C, i1, T);
            fa_cp_async_commit();
            for (int idx = threadIdx.x; idx < BR; idx += NT) {
                const int i = i1 + idx;
                lse2s[nb * BR + idx] = i < T ? lseg[i] * FA_LOG2E : 0.0f;
                dls[nb * BR + idx] = i < T ? dg[i] : 0.0f;
            }
            fa_cp_async_wait<1>();
        } else {
            fa_cp_async_wait<0>();
        }
        __syncthreads();
        const fa_bf16* qb = qs + buf * BR * LDS;
        const fa_bf16* dob = dos + buf * BR * LDS;
        const float* l2 = lse2s + buf * BR;
        const float* dl = dls + buf * BR;
        const int i0 = qt * BR;
        if (i0 + BR - 1 >= k0 + wk0) {  // else every query of the tile is before this warp's keys
            // P^T = exp(K Q^T * scale - lse): 16*MT keys x BR queries per warp
            float pt[MT][NQ][4];
            fa_zero<MT, NQ>(pt);
            fa_gemm_abt<MT, NQ, KS, LDS>(pt, kt, wk0, qb, lane);
            const bool edge = i0 < k0 + wk0 + 16 * MT - 1 || i0 + BR > T;  // crosses the diagonal or T
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int n = 0; n < NQ; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int iq = n * 8 + 2 * t + (e & 1);
                        float p = fa_exp2(fmaf(pt[mt][n][e], sl2, -l2[iq]));
                        if (edge) {
                            const int j = k0 + wk0 + mt * 16 + g + (e >> 1) * 8;
                            if (i0 + iq < j || i0 + iq >= T) p = 0.0f;
                        }
                        pt[mt][n][e] = p;
                    }
            // dV += P^T dO
            fa_gemm_pb<MT, ND, BR / 16, LDS>(dv, pt, dob, lane);
            // dP^T = V dO^T, then dS^T = P^T (dP^T - D)
            float dst[MT][NQ][4];
            fa_zero<MT, NQ>(dst);
            fa_gemm_abt<MT, NQ, KS, LDS>(dst, vt, wk0, dob, lane);
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int n = 0; n < NQ; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        dst[mt][n][e] = pt[mt][n][e] * (dst[mt][n][e] - dl[n * 8 + 2 * t + (e & 1)]);
            // dK += dS^T Q
            fa_gemm_pb<MT, ND, BR / 16, LDS>(dk, dst, qb, lane);
        }
        __syncthreads();
    }

#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int j = k0 + wk0 + mt * 16 + g + r * 8;
            if (j < T) {
                fa_bf16* dkrow = dqkv + ((size_t)b * T + j) * ld + C + (size_t)h * HS;
                fa_bf16* dvrow = dkrow + C;
#pragma unroll
                for (int nd = 0; nd < ND; nd++) {
                    *reinterpret_cast<uint32_t*>(dkrow + nd * 8 + 2 * t) =
                        fa_pack(dk[mt][nd][2 * r] * scale, dk[mt][nd][2 * r + 1] * scale);
                    *reinterpret_cast<uint32_t*>(dvrow + nd * 8 + 2 * t) =
                        fa_pack(dv[mt][nd][2 * r], dv[mt][nd][2 * r + 1]);
                }
            }
        }
    }
}

template <int HS, class CFG>
static constexpr size_t fa_dq_smem() {
    return (size_t)(2 * CFG::ROWS + 4 * CFG::BK) * (HS + 8) * sizeof(fa_bf16);
}

// dq. grid (ceil(T / ROWS), B * H): a block owns ROWS queries and streams BK-key tiles up to the
// diagonal; dynamic smem fa_dq_smem<HS, CFG>()
template <int HS, class CFG>
__global__ void __launch_bounds__(CFG::NW * 32) fa_backward_dq_kernel(fa_bf16* dqkv, const float* delta,
                                                                      const fa_bf16* dout, const fa_bf16* qkv,
                                                                      const float* lse, int T, int H, float scale) {
    constexpr int NW = CFG::NW, MT = CFG::MT, BR = CFG::ROWS, BC = CFG::BK, LDS = HS + 8, NT = NW * 32;
    constexpr int KS = HS / 16, NB = BC / 8, ND = HS / 8;
    extern __shared__ __align__(16) unsigned char fa_smem[];
    fa_bf16* qs = reinterpret_cast<fa_bf16*>(fa_smem);
    fa_bf16* dos = qs + BR * LDS;
    fa_bf16* ks = dos + BR * LDS;     // 2 buffers
    fa_bf16* vs = ks + 2 * BC * LDS;  // 2 buffers
    const int C = H * HS;
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * BR;
    const size_t ld = 3 * (size_t)C;
    const fa_bf16* qg = qkv + (size_t)b * T * ld + (size_t)h * HS;
    const fa_bf16* kg = qg + C;
    const fa_bf16* vg = qg + 2 * C;
    const fa_bf16* dog = dout + (size_t)b * T * C + (size_t)h * HS;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int nkb = (min(q0 + BR, T) - 1) / BC + 1;
    const int wr0 = warp * 16 * MT;
    const float sl2 = scale * FA_LOG2E;
    float l2[MT][2], dd[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int i = q0 + wr0 + mt * 16 + g + r * 8;
            l2[mt][r] = i < T ? lse[(size_t)bh * T + i] * FA_LOG2E : 0.0f;
            dd[mt][r] = i < T ? delta[(size_t)bh * T + i] : 0.0f;
        }

    fa_load_tile<BR, HS, NT>(qs, qg, ld, q0, T);
    fa_load_tile<BR, HS, NT>(dos, dog, C, q0, T);
    fa_load_tile<BC, HS, NT>(ks, kg, ld, 0, T);
    fa_load_tile<BC, HS, NT>(vs, vg, ld, 0, T);
    fa_cp_async_commit();

    float dq[MT][ND][4];
    fa_zero<MT, ND>(dq);

    for (int kb = 0; kb < nkb; kb++) {
        const int buf = kb & 1;
        if (kb + 1 < nkb) {
            fa_load_tile<BC, HS, NT>(ks + (buf ^ 1) * BC * LDS, kg, ld, (kb + 1) * BC, T);
            fa_load_tile<BC, HS, NT>(vs + (buf ^ 1) * BC * LDS, vg, ld, (kb + 1) * BC, T);
            fa_cp_async_commit();
            fa_cp_async_wait<1>();
        } else {
            fa_cp_async_wait<0>();
        }
        __syncthreads();
        const fa_bf16* kt = ks + buf * BC * LDS;
        const fa_bf16* vt = vs + buf * BC * LDS;
        const int k0 = kb * BC;
        if (k0 <= q0 + wr0 + 16 * MT - 1) {  // else every key of the tile is after this warp's rows
            float p[MT][NB][4];
            fa_zero<MT, NB>(p);
            fa_gemm_abt<MT, NB, KS, LDS>(p, qs, wr0, kt, lane);
            const bool diag = k0 + BC - 1 > q0 + wr0;
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int n = 0; n < NB; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        float v = fa_exp2(fmaf(p[mt][n][e], sl2, -l2[mt][e >> 1]));
                        if (diag && k0 + n * 8 + 2 * t + (e & 1) > q0 + wr0 + mt * 16 + g + (e >> 1) * 8) v = 0.0f;
                        p[mt][n][e] = v;
                    }
            float ds[MT][NB][4];
            fa_zero<MT, NB>(ds);
            fa_gemm_abt<MT, NB, KS, LDS>(ds, dos, wr0, vt, lane);
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int n = 0; n < NB; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) ds[mt][n][e] = p[mt][n][e] * (ds[mt][n][e] - dd[mt][e >> 1]);
            fa_gemm_pb<MT, ND, BC / 16, LDS>(dq, ds, kt, lane);
        }
        __syncthreads();
    }

#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int i = q0 + wr0 + mt * 16 + g + r * 8;
            if (i < T) {
                fa_bf16* dqrow = dqkv + ((size_t)b * T + i) * ld + (size_t)h * HS;
#pragma unroll
                for (int nd = 0; nd < ND; nd++)
                    *reinterpret_cast<uint32_t*>(dqrow + nd * 8 + 2 * t) =
                        fa_pack(dq[mt][nd][2 * r] * scale, dq[mt][nd][2 * r + 1] * scale);
            }
        }
    }
}

template <int HS, class CFG>
static void fa_forward(fa_bf16* out, float* lse, const fa_bf16* qkv, int B, int T, int H, cudaStream_t stream) {
    const size_t smem = fa_forward_smem<HS, CFG>();
    cudaCheck(cudaFuncSetAttribute(fa_forward_kernel<HS, CFG>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    dim3 grid(ceil_div(T, CFG::ROWS), B * H);
    fa_forward_kernel<HS, CFG><<<grid, CFG::NW * 32, smem, stream>>>(out, lse, qkv, T, H, 1.0f / sqrtf((float)HS));
    cudaCheckLast();
}

template <int HS, class KV, class Q>
static void fa_backward(fa_bf16* dqkv, float* delta, const fa_bf16* dout, const fa_bf16* out, const fa_bf16* qkv,
                        const float* lse, int B, int T, int H, cudaStream_t stream) {
    const float scale = 1.0f / sqrtf((float)HS);
    const size_t threads = (size_t)B * T * H * (HS / 8);
    fa_backward_preprocess_kernel<HS><<<(unsigned)ceil_div_sz(threads, 256), 256, 0, stream>>>(delta, dout, out, B, T, H);
    cudaCheckLast();
    const size_t smem_kv = fa_dkdv_smem<HS, KV>();
    cudaCheck(cudaFuncSetAttribute(fa_backward_dkdv_kernel<HS, KV>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   (int)smem_kv));
    fa_backward_dkdv_kernel<HS, KV><<<dim3(ceil_div(T, KV::ROWS), B * H), KV::NW * 32, smem_kv, stream>>>(
        dqkv, delta, dout, qkv, lse, T, H, scale);
    cudaCheckLast();
    const size_t smem_q = fa_dq_smem<HS, Q>();
    cudaCheck(cudaFuncSetAttribute(fa_backward_dq_kernel<HS, Q>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   (int)smem_q));
    fa_backward_dq_kernel<HS, Q><<<dim3(ceil_div(T, Q::ROWS), B * H), Q::NW * 32, smem_q, stream>>>(
        dqkv, delta, dout, qkv, lse, T, H, scale);
    cudaCheckLast();
}

// The production launch configurations per head size, chosen by timing in dev/cuda/attention.cu
// (H200, B*H = 768, T = 1024). Up to HS = 64 each warp owns two m-tiles (32 rows), so every B
// fragment read from shared memory feeds two tensor-core products (one m-tile per warp is
// shared-memory-bound): forward 0.55 -> 0.43 ms, backward 1.72 -> 1.48 ms. At HS = 128 two m-tiles
// need more than 255 registers and spill, so the forward and dk/dv keep one.
template <int HS>
struct FaConfig {
    typedef FaCfg<4, 2, 64> Fwd;
    typedef FaCfg<4, 2, 32> Dkdv;
    typedef FaCfg<4, 2, 64> Dq;
};
template <>
struct FaConfig<128> {
    typedef FaCfg<4, 1, 64> Fwd;
    typedef FaCfg<4, 1, 64> Dkdv;
    typedef FaCfg<4, 2, 32> Dq;
};

// the production configuration of head size HS
template <int HS>
static void fa_forward_hs(fa_bf16* out, float* lse, const fa_bf16* qkv, int B, int T, int H, cudaStream_t stream) {
    fa_forward<HS, typename FaConfig<HS>::Fwd>(out, lse, qkv, B, T, H, stream);
}
template <int HS>
static void fa_backward_hs(fa_bf16* dqkv, float* delta, const fa_bf16* dout, const fa_bf16* out, const fa_bf16* qkv,
                           const float* lse, int B, int T, int H, cudaStream_t stream) {
    fa_backward<HS, typename FaConfig<HS>::Dkdv, typename FaConfig<HS>::Dq>(dqkv, delta, dout, out, qkv, lse, B, T, H,
                                                                            stream);
}

// The Hopper kernels (wgmma, llmc/attention_hopper*.cuh): compiled in sm_90a device passes, used
// for head sizes 64 and 128 when the program carries sm_90a code for the device it runs on.
#include "llmc/attention_hopper_bwd.cuh"

static inline bool attention_use_hopper(int hs) { return (hs == 64 || hs == 128) && wgmma_compiled(); }


static int attention_head_size_supported(int hs) { return hs == 16 || hs == 32 || hs == 64 || hs == 128; }

// The mma.sync flash kernels in their production configuration (FaConfig) for any supported head
// size: what the engine runs without sm_90a code and at head sizes 16 and 32.
static void attention_forward_flash(fa_bf16* out, float* lse, const fa_bf16* qkv, int B, int T, int C, int H,
                                    cudaStream_t stream) {
    switch (C / H) {
        case 16: fa_forward_hs<16>(out, lse, qkv, B, T, H, stream); break;
        case 32: fa_forward_hs<32>(out, lse, qkv, B, T, H, stream); break;
        case 64: fa_forward_hs<64>(out, lse, qkv, B, T, H, stream); break;
        case 128: fa_forward_hs<128>(out, lse, qkv, B, T, H, stream); break;
        default: fprintf(stderr, "attention: head size %d not supported (16, 32, 64, 128)\n", C / H); exit(1);
    }
}

static void attention_backward_flash(fa_bf16* dqkv, float* delta, const fa_bf16* dout, const fa_bf16* out,
                                     const fa_bf16* qkv, const float* lse, int B, int T, int C, int H,
                                     cudaStream_t stream) {
    switch (C / H) {
        case 16: fa_backward_hs<16>(dqkv, delta, dout, out, qkv, lse, B, T, H, stream); break;
        case 32: fa_backward_hs<32>(dqkv, delta, dout, out, qkv, lse, B, T, H, stream); break;
        case 64: fa_backward_hs<64>(dqkv, delta, dout, out, qkv, lse, B, T, H, stream); break;
        case 128: fa_backward_hs<128>(dqkv, delta, dout, out, qkv, lse, B, T, H, stream); break;
        default: fprintf(stderr, "attention: head size %d not supported (16, 32, 64, 128)\n", C / H); exit(1);
    }
}

// out (B, T, C), lse (B, H, T) from qkv (B, T, 3C). The bf16 build runs the Hopper kernels where
// attention_use_hopper says so, else the flash kernels; the fp32 build the simple ones.
static void attention_forward(floatX* out, float* lse, const floatX* qkv, int B, int T, int C, int H,
                              cudaStream_t stream) {
#ifdef LLMC_FP32
    attention_forward_simple(out, lse, qkv, B, T, C, H, stream);
#else
    if (!attention_use_hopper(C / H)) {
        attention_forward_flash(out, lse, qkv, B, T, C, H, stream);
    } else if (C / H == 64) {
        fah_forward_hs<64>(out, lse, qkv, B, T, H, stream);
    } else {
        fah_forward_hs<128>(out, lse, qkv, B, T, H, stream);
    }
#endif
}

// dqkv (B, T, 3C) = gradient of the attention given dout (B, T, C); delta: (B, H, T) fp32 scratch.
static void attention_backward(floatX* dqkv, float* delta, const floatX* dout, const floatX* out, const floatX* qkv,
                               const float* lse, int B, int T, int C, int H, cudaStream_t stream) {
#ifdef LLMC_FP32
    attention_backward_simple(dqkv, delta, dout, out, qkv, lse, B, T, C, H, stream);
#else
    if (!attention_use_hopper(C / H)) {
        attention_backward_flash(dqkv, delta, dout, out, qkv, lse, B, T, C, H, stream);
    } else if (C / H == 64) {
        fah_backward_hs<64>(dqkv, delta, dout, out, qkv, lse, B, T, H, stream);
    } else {
        fah_backward_hs<128>(dqkv, delta, dout, out, qkv, lse, B, T, H, stream);
    }
#endif
}

#endif  // LLMC_ATTENTION_CUH
