/*
Encoder: token + position embedding, forward and backward.

Forward:  out[b,t,:] = wte[inp[b,t], :] + wpe[t, :]         out (B,T,C), wte (Vp,C), wpe (maxT,C)
Backward: dwpe[t,:] += sum_b dout[b,t,:]
          dwte[v,:] += sum over the (b,t) with inp[b,t] == v of dout[b,t,:]

Why the backward needs help from the host: many positions can hold the same token, so a kernel that
scatters dout rows into dwte needs atomics, whose summation order (and so the rounded result)
changes from run to run. Instead the host, which holds the token ids anyway, groups the positions
by token (encoder_backward_plan below): a list of distinct tokens, and for each, its positions in
increasing order. One block per distinct token then sums its rows in that fixed order. dwpe is a
plain column sum over b. Both are deterministic and touch each gradient row from one block only.
*/
#ifndef LLMC_ENCODER_CUH
#define LLMC_ENCODER_CUH

#include <stdlib.h>
#include <string.h>

#include "llmc/cuda_common.cuh"

__global__ void encoder_forward_kernel(floatX* out, const int* inp, const floatX* wte, const floatX* wpe,
                                       int B, int T, int C) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t total = (size_t)B * T * C;
    if (idx >= total) return;
    const int c = (int)(idx % C);
    const size_t bt = idx / C;
    const int t = (int)(bt % T);
    const int token = inp[bt];
    out[idx] = from_float<floatX>(to_float(wte[(size_t)token * C + c]) + to_float(wpe[(size_t)t * C + c]));
}

static void encoder_forward(floatX* out, const int* inp, const floatX* wte, const floatX* wpe, int B, int T,
                            int C, cudaStream_t stream) {
    const size_t total = (size_t)B * T * C;
    const int block = 256;
    encoder_forward_kernel<<<(unsigned)ceil_div_sz(total, block), block, 0, stream>>>(out, inp, wte, wpe, B, T, C);
    cudaCheckLast();
}

// dwpe[t, c] += sum_b dout[b, t, c]: one thread per (t, c), b in order.
__global__ void encoder_backward_wpe_kernel(floatX* dwpe, const floatX* dout, int B, int T, int C) {
    const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)T * C) return;
    float acc = to_float(dwpe[idx]);
    float sum = 0.0f;
    for (int b = 0; b < B; b++) sum += to_float(dout[(size_t)b * T * C + idx]);
    dwpe[idx] = from_float<floatX>(acc + sum);
}

// One block per distinct token: dwte[token, :] += sum of dout rows at that token's positions.
// bucket_tokens[k] is the k-th distinct token, its positions are positions[bucket_start[k] ..
// bucket_start[k+1]) in increasing order.
__global__ void encoder_backward_wte_kernel(floatX* dwte, const floatX* dout, const int* bucket_tokens,
                                            const int* bucket_start, const int* positions, int C) {
    const int k = blockIdx.x;
    const int token = bucket_tokens[k];
    const int begin = bucket_start[k], end = bucket_start[k + 1];
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float sum = 0.0f;
        for (int i = begin; i < end; i++) sum += to_float(dout[(size_t)positions[i] * C + c]);
        floatX* g = dwte + (size_t)token * C + c;
        *g = from_float<floatX>(to_float(*g) + sum);
    }
}

// Host-side grouping of positions by token. Buffers are sized for B*T positions; `plan` is an int
// array of 3*B*T + 1 entries laid out as [tokens (n) | starts (n+1) | positions (B*T)] where n is the
// number of distinct tokens, returned. Counting sort by token id: O(B*T + V) and stable, so positions
// within a token are increasing.
typedef struct {
    int* counts;  // (V) scratch
    int vocab_size;
} EncoderPlanner;

static int encoder_backward_plan(EncoderPlanner* p, const int* inputs, int BT, int* plan) {
    memset(p->counts, 0, sizeof(int) * (size_t)p->vocab_size);
    for (int i = 0; i < BT; i++) p->counts[inputs[i]]++;
    int* tokens = plan;
    int n = 0;
    for (int v = 0; v < p->vocab_size; v++)
        if (p->counts[v] > 0) tokens[n++] = v;
    int* starts = plan + n;
    int* positions = plan + 2 * n + 1;
    // starts, and reuse counts as the running write offset of each token
    int offset = 0;
    for (int k = 0; k < n; k++) {
        starts[k] = offset;
        const int v = tokens[k];
        const int count = p->counts[v];
        p->counts[v] = offset;
        offset += count;
    }
    starts[n] = offset;
    for (int i = 0; i < BT; i++) positions[p->counts[inputs[i]]++] = i;
    return n;
}

// plan_device: the plan copied to the device (same layout), n distinct tokens.
static void encoder_backward(floatX* dwte, floatX* dwpe, const floatX* dout, const int* plan_device, int n,
                             int B, int T, int C, cudaStream_t stream) {
    const int block = 256;
    encoder_backward_wpe_kernel<<<ceil_div(T * C, block), block, 0, stream>>>(dwpe, dout, B, T, C);
    cudaCheckLast();
    const int* tokens = plan_device;
    const int* starts = plan_device + n;
    const int* positions = plan_device + 2 * n + 1;
    encoder_backward_wte_kernel<<<n, 256, 0, stream>>>(dwte, dout, tokens, starts, positions, C);
    cudaCheckLast();
}

#endif  // LLMC_ENCODER_CUH
