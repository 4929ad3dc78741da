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
Two kernels: one thread per query row computes D_i and dq_i (looping over keys), then one thread
per key row computes dk_j and dv_j (looping over queries). Each gradient element is written by one
thread, so there are no atomics and the result is deterministic. dqkv is written (=), not added.

Phase 1 design, stated plainly: this is the simple, correct version. One thread owns one row, all
arithmetic is scalar fp32 FMA on CUDA cores (no tensor cores), tiles of ATT_TILE rows are staged in
shared memory and read as broadcasts. At GPT-2 124M shapes it is several times slower than cuDNN
or FlashAttention-2; the tensor-core (wgmma) version is the dev/cuda attention task. Head sizes 16,
32, 64 and 128 are instantiated (GPT-2 uses 64; 128 spills registers in this version).
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
static void attention_forward_hs(floatX* out, float* lse, const floatX* qkv, int B, int T, int H, cudaStream_t stream) {
    const size_t smem = 2 * ATT_TILE * HS * sizeof(float);
    cudaCheck(cudaFuncSetAttribute(attention_forward_kernel<HS>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    dim3 grid(ceil_div(T, ATT_TILE), B * H);
    attention_forward_kernel<HS><<<grid, ATT_TILE, smem, stream>>>(out, lse, qkv, B, T, H);
    cudaCheckLast();
}

template <int HS>
static void attention_backward_hs(floatX* dqkv, float* delta, const floatX* dout, const floatX* out,
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

static int attention_head_size_supported(int hs) { return hs == 16 || hs == 32 || hs == 64 || hs == 128; }

// out (B, T, C), lse (B, H, T) from qkv (B, T, 3C).
static void attention_forward(floatX* out, float* lse, const floatX* qkv, int B, int T, int C, int H,
                              cudaStream_t stream) {
    switch (C / H) {
        case 16: attention_forward_hs<16>(out, lse, qkv, B, T, H, stream); break;
        case 32: attention_forward_hs<32>(out, lse, qkv, B, T, H, stream); break;
        case 64: attention_forward_hs<64>(out, lse, qkv, B, T, H, stream); break;
        case 128: attention_forward_hs<128>(out, lse, qkv, B, T, H, stream); break;
        default: fprintf(stderr, "attention: head size %d not supported (16, 32, 64, 128)\n", C / H); exit(1);
    }
}

// dqkv (B, T, 3C) = gradient of the attention given dout (B, T, C); delta: (B, H, T) fp32 scratch.
static void attention_backward(floatX* dqkv, float* delta, const floatX* dout, const floatX* out, const floatX* qkv,
                               const float* lse, int B, int T, int C, int H, cudaStream_t stream) {
    switch (C / H) {
        case 16: attention_backward_hs<16>(dqkv, delta, dout, out, qkv, lse, B, T, H, stream); break;
        case 32: attention_backward_hs<32>(dqkv, delta, dout, out, qkv, lse, B, T, H, stream); break;
        case 64: attention_backward_hs<64>(dqkv, delta, dout, out, qkv, lse, B, T, H, stream); break;
        case 128: attention_backward_hs<128>(dqkv, delta, dout, out, qkv, lse, B, T, H, stream); break;
        default: fprintf(stderr, "attention: head size %d not supported (16, 32, 64, 128)\n", C / H); exit(1);
    }
}

#endif  // LLMC_ATTENTION_CUH
