/*
Causal multi-head self-attention through cuDNN's fused SDPA (scaled dot-product attention), the
optional attention backend of the bf16 CUDA engine (CMake -DLLMC_CUDNN=ON; never required).
It computes what llmc/attention.cuh computes, with the same tensors, so the engine swaps one call
for the other at its two attention call sites (llmc/gpt2cu.cuh) and the fp32 build never sees it.

Shapes and layouts (the engine's, untouched; no transposes or copies):
  qkv   (B, T, 3, H, HS) bf16: the qkv matmul's output (B, T, 3C) read as q | k | v, each split into
        H heads of HS = C / H. cuDNN sees Q, K, V as (B, H, T, HS) tensors with strides
        (3 C T, HS, 3 C, 1) at offsets 0, C and 2 C: the head and time axes are strided views.
  out   (B, T, H * HS) bf16: (B, H, T, HS) with strides (C T, HS, C, 1).
  stats (B, H, T) fp32: log-sum-exp of each query row's scaled scores, natural log
        (max_j s_ij + log sum_j exp(s_ij - max), s_ij = q_i . k_j / sqrt(HS)): the same quantity and
        layout as llmc/attention.cuh's lse, so the engine's att_lse buffer serves either backend.
        Written only by a training forward; the backward reads it.
  dqkv  (B, T, 3C) bf16, written (=) with qkv's strides; dout (B, T, C) with out's.
Scores are scaled by 1 / sqrt(HS); the mask is causal (key j <= query i); bf16 inputs and outputs,
fp32 softmax and accumulation. The backward asks cuDNN for its deterministic algorithm (on Hopper
that is a dP workspace of about B * H * T^2 * 2 bytes instead of atomic dQ accumulation), because
the engine promises bit-identical runs.

Measured on an H200 with cuDNN 9.14 / frontend 1.32 (2026-11-24, one call): dev/cuda/attention.cu at
GPT-2 124M shapes (B*H = 768, T = 1024, HS = 64) forward 0.342 ms, forward + backward 1.472 ms
against 0.435 / 1.905 ms for llmc's flash kernels; train_gpt2cu d12 (B = 64, T = 1024, 524288
tokens per step) 894.6 ms per step against 932.7 ms, with 1.5 GiB more peak memory (the workspace).

State (process-wide, like cuBLASLt's plan cache in llmc/matmul.cuh): one cuDNN handle, a cache of
built graphs keyed by (B, T, H, HS, training) for the forward and (B, T, H, HS) for the backward,
and one workspace allocated at the first call and grown when a new graph needs more. The first call
at a new shape builds its graph (cuDNN heuristics + plan compilation, tens to hundreds of
milliseconds); later calls only bind pointers and launch. cudnn_attention_free releases all of it
(optional: the next call creates it again).

Errors: every cuDNN, cudnn-frontend and CUDA call is checked; a failure names what failed and the
shape. Programs print it and exit 1; built with LLMC_CUDA_THROW (the Python module) it throws
std::runtime_error instead, like llmc/cuda_common.cuh. CMake compiles csrc/cudnn_attention.cpp once
for each policy.

Why a separate translation unit (csrc/cudnn_attention.cpp, host C++ compiled by the C++ compiler):
cudnn-frontend is a large header-only C++17 library (graph API, JSON serialization) that would add
tens of seconds to every nvcc compile of the engine and bring its warnings with it; behind this
small C-style header, cuDNN's headers and library are needed only when LLMC_CUDNN is on, and the
.cu files include nothing from cuDNN.
*/
#ifndef LLMC_CUDNN_ATTENTION_H
#define LLMC_CUDNN_ATTENTION_H

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <stddef.h>

// out (B, T, C) and, when training, stats (B, H, T) from qkv (B, T, 3C); C = H * HS.
void cudnn_attention_forward(__nv_bfloat16* out, float* stats, const __nv_bfloat16* qkv, int B, int T, int C,
                             int H, int training, cudaStream_t stream);

// dqkv (B, T, 3C) (=) from dout (B, T, C), the forward's out and stats, and qkv.
void cudnn_attention_backward(__nv_bfloat16* dqkv, const __nv_bfloat16* dout, const __nv_bfloat16* out,
                              const __nv_bfloat16* qkv, const float* stats, int B, int T, int C, int H,
                              cudaStream_t stream);

// "cuDNN <runtime version> (frontend <version>)", for logs and config tables.
const char* cudnn_attention_describe(void);

// Bytes of the workspace allocated so far (the largest any built graph asked for).
size_t cudnn_attention_workspace_bytes(void);

// Frees the graphs, the workspace and the handle (synchronizes the device).
void cudnn_attention_free(void);

#endif  // LLMC_CUDNN_ATTENTION_H
