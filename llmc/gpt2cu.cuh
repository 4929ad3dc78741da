/*
GPT-2 on the GPU: parameters, activations, forward, backward and AdamW, shared by train_gpt2cu and
test_gpt2cu (and later the Python module). The model is the one of ../shared/DESIGN.md section 3,
the same as the CPU reference engine (llmc/gpt2_cpu.h), whose build functions create the initial
weights on the host: `-e d12` with a seed gives bit-identical initial weights in both engines, and
model files are read by one reader (gpt2_build_from_checkpoint).

Memory (all on the device, floatX = bf16 or fp32, see cuda_common.cuh):
  params, grads       floatX, one buffer each in the on-disk tensor order
  master, m, v        fp32 (master only in the bf16 build), for AdamW
  activations         floatX per layer (ln1, qkv, atty, residual2, ln2, fch, fch_gelu, residual3),
                      fp32 LayerNorm statistics and attention log-sum-exp, logits (B*T, Vp)
  backward buffers    one layer's worth (dresidual, dqkv, dfch, one (B*T, C) buffer), reused
Gradients of parameters accumulate (+=) across micro-batches; activation gradients are written (=).

Recompute (gpt2cu_set_recompute, llm.c's -r): level 1 keeps one layer's GELU output instead of L
(the forward writes the pre-GELU matmul output, then the GELU kernel; the backward runs the same
kernel again on the stored pre-GELU values), level 2 also keeps one layer's ln1 and ln2 outputs and
recomputes them in the backward from the stored residual stream, mean and rstd. The recomputed
values are bit-identical to the forward's (same kernels on the same inputs), so levels 1 and 2 give
the same results; level 0 differs from them in the last bits because there the GELU is fused into
the matmul's epilogue (applied to the fp32 accumulator before rounding).

A training micro-step is gpt2cu_forward(mode TRAIN) then gpt2cu_backward(); the loss of a whole
step accumulates on the device and is read once (gpt2cu_read_mean_loss), the only host
synchronization of a step. Everything runs on one stream, in order.
*/
#ifndef LLMC_GPT2CU_CUH
#define LLMC_GPT2CU_CUH

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "llmc/adamw.cuh"             // defines: adamw_update, AdamWParams
#include "llmc/attention.cuh"         // defines: attention_forward, attention_backward
#include "llmc/cuda_common.cuh"       // defines: floatX, cudaCheck, column_sum
#include "llmc/encoder.cuh"           // defines: encoder_forward, encoder_backward(_plan)
#include "llmc/error.h"               // defines: llmc_error
#include "llmc/fused_classifier.cuh"  // defines: fused_classifier
#include "llmc/gelu.cuh"              // defines: gelu_forward (recompute)
#include "llmc/global_norm.cuh"       // defines: global_norm
#include "llmc/gpt2_cpu.h"            // defines: GPT2Config, GPT2 (host-side build and save)
#include "llmc/layernorm.cuh"         // defines: layernorm_forward/backward, fused residual
#include "llmc/matmul.cuh"            // defines: matmul_forward/backward, matmul_init
#include "llmc/rand.h"                // defines: Rng

// Attention backend, fixed at compile time: the flash kernels of llmc/attention.cuh (the simple ones
// in the fp32 build), or cuDNN's fused SDPA in a bf16 build with -DLLMC_CUDNN (CMake LLMC_CUDNN=ON).
// Both keep the same natural-log LSE (B, H, T) in att_lse for their own backward; cuDNN's needs no
// att_delta scratch.
#if defined(LLMC_CUDNN) && !defined(LLMC_FP32)
#define GPT2CU_CUDNN_ATTENTION 1
#include "llmc/cudnn_attention.h"     // defines: cudnn_attention_forward/backward/describe
#endif

// The attention backend of this build, for config tables and logs.
static const char* gpt2cu_attention_backend(void) {
#ifdef GPT2CU_CUDNN_ATTENTION
    return cudnn_attention_describe();
#elif defined(LLMC_FP32)
    return "llmc simple kernels (fp32, llmc/attention.cuh)";
#else
    return wgmma_compiled() ? "llmc wgmma flash kernels (sm_90a, llmc/attention_hopper*.cuh; mma.sync at HS 16, 32)"
                            : "llmc mma.sync flash kernels (llmc/attention.cuh; no sm_90a code for this GPU)";
#endif
}

// ----------------------------------------------------------------------------------------------
// structs

typedef struct {
    floatX* wte;       // (Vp, C)
    floatX* wpe;       // (maxT, C)
    floatX* ln1w;      // (L, C)
    floatX* ln1b;      // (L, C)
    floatX* qkvw;      // (L, 3C, C)
    floatX* qkvb;      // (L, 3C)
    floatX* attprojw;  // (L, C, C)
    floatX* attprojb;  // (L, C)
    floatX* ln2w;      // (L, C)
    floatX* ln2b;      // (L, C)
    floatX* fcw;       // (L, 4C, C)
    floatX* fcb;       // (L, 4C)
    floatX* fcprojw;   // (L, C, 4C)
    floatX* fcprojb;   // (L, C)
    floatX* lnfw;      // (C)
    floatX* lnfb;      // (C)
} ParamsCU;

// which tensors get weight decay (the 2-D weights), in parameter order
static const int PARAM_DECAYED[GPT2_NUM_PARAMETER_TENSORS] = {1, 1, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0};

typedef struct {
    floatX* encoded;    // (B, T, C)
    floatX* ln1;        // (L, B, T, C)
    float* ln1_mean;    // (L, B, T)
    float* ln1_rstd;    // (L, B, T)
    floatX* qkv;        // (L, B, T, 3C)
    floatX* atty;       // (L, B, T, C)
    float* att_lse;     // (L, B, H, T)
    floatX* residual2;  // (L, B, T, C)
    floatX* ln2;        // (L, B, T, C)
    float* ln2_mean;    // (L, B, T)
    float* ln2_rstd;    // (L, B, T)
    floatX* fch;        // (L, B, T, 4C) before GELU
    floatX* fch_gelu;   // (L, B, T, 4C)
    floatX* residual3;  // (L, B, T, C)
    floatX* lnf;        // (B, T, C)
    float* lnf_mean;    // (B, T)
    float* lnf_rstd;    // (B, T)
    floatX* logits;     // (B, T, Vp); after a TRAIN forward it holds dlogits
    float* losses;      // (B, T) per-position losses (accumulated over a step's micro-batches)
    floatX* proj;       // (B, T, C) output of a projection before the residual add
    // backward, one layer at a time
    floatX* dresidual;  // (B, T, C) gradient of the residual stream
    floatX* dbtc;       // (B, T, C) dlnf / dln2 / datty / dln1
    floatX* dqkv;       // (B, T, 3C)
    floatX* dfch;       // (B, T, 4C)
    float* att_delta;   // (B, H, T) (NULL with cuDNN attention)
    float* scratch;     // reductions (column sums, LayerNorm weight grads, global norm), encoder backward partials
} ActsCU;

typedef enum {
    FORWARD_LOGITS = 0,  // logits only
    FORWARD_LOSS = 1,    // logits kept, per-position losses written
    FORWARD_TRAIN = 2,   // losses accumulated, logits replaced by dlogits for gpt2cu_backward
} ForwardMode;

typedef struct {
    GPT2Config config;
    size_t param_sizes[GPT2_NUM_PARAMETER_TENSORS];
    size_t num_parameters;
    floatX* params_memory;
    ParamsCU params;
    floatX* grads_memory;
    ParamsCU grads;
    float* master_memory;  // bf16 build only (NULL in fp32)
    float* m_memory;       // AdamW state, allocated at the first update
    float* v_memory;
    // activations for batch B x T (allocated on the first forward)
    ActsCU acts;
    int B, T;
    size_t activation_bytes;
    int* inputs_d;   // (B, T)
    int* targets_d;  // (B, T)
    int* plan_d;     // encoder backward plan (3*B*T + 1)
    int* plan_h;     // pinned host memory, like inputs_h and targets_h: asynchronous copies
    int* inputs_h;   // (B, T) pinned staging of the inputs
    int* targets_h;  // (B, T) pinned staging of the targets
    cudaEvent_t upload_done;  // the last upload from the pinned buffers has completed
    int upload_pending;       // upload_done was recorded and not yet waited for
    EncoderPlanShape plan_shape;  // the plan's counts (distinct tokens, split ones)
    EncoderPlanner planner;
    float* losses_h;  // (B, T) host copy for the mean
    float* norm_d;    // [0] grad norm, [1] grad scale (clipping)
    float* one_d;     // a device 1.0f, the grad scale when no clipping is asked
    int recompute;    // 0: store every activation; 1: recompute the GELU output; 2: also ln1/ln2
    int last_mode;    // ForwardMode of the last forward
    float loss_weight_accum;  // sum of the loss weights accumulated since gpt2cu_zero_grad
    Rng rng;          // seeds of stochastic rounding
    cudaStream_t stream;
} GPT2CU;

// ----------------------------------------------------------------------------------------------
// build / free

static void gpt2cu_point_params(ParamsCU* p, floatX* memory, const size_t* sizes) {
    floatX** ptrs[GPT2_NUM_PARAMETER_TENSORS] = {&p->wte,  &p->wpe,      &p->ln1w,     &p->ln1b,
                                                 &p->qkvw, &p->qkvb,     &p->attprojw, &p->attprojb,
                                                 &p->ln2w, &p->ln2b,     &p->fcw,      &p->fcb,
                                                 &p->fcprojw, &p->fcprojb, &p->lnfw,   &p->lnfb};
    for (int i = 0; i < GPT2_NUM_PARAMETER_TENSORS; i++) {
        *ptrs[i] = memory;
        memory += sizes[i];
    }
}

// Copies a host model's fp32 parameters to the device (converted to floatX; fp32 masters kept).
static void gpt2cu_build_from_host(GPT2CU* model, const GPT2* host, uint64_t seed) {
    memset(model, 0, sizeof(*model));
    model->config = host->config;
    memcpy(model->param_sizes, host->param_sizes, sizeof(model->param_sizes));
    model->num_parameters = host->num_parameters;
    const size_t n = model->num_parameters;
    cudaCheck(cudaStreamCreate(&model->stream));
    cudaCheck(cudaEventCreateWithFlags(&model->upload_done, cudaEventDisableTiming));
    cudaCheck(cudaMalloc(&model->params_memory, n * sizeof(floatX)));
    cudaCheck(cudaMalloc(&model->grads_memory, n * sizeof(floatX)));
    cudaCheck(cudaMemset(model->grads_memory, 0, n * sizeof(floatX)));
    gpt2cu_point_params(&model->params, model->params_memory, model->param_sizes);
    gpt2cu_point_params(&model->grads, model->grads_memory, model->param_sizes);
#ifdef LLMC_FP32
    cudaCheck(cudaMemcpy(model->params_memory, host->params_memory, n * sizeof(float), cudaMemcpyHostToDevice));
#else
    cudaCheck(cudaMalloc(&model->master_memory, n * sizeof(float)));
    cudaCheck(cudaMemcpy(model->master_memory, host->params_memory, n * sizeof(float), cudaMemcpyHostToDevice));
    {
        floatX* tmp = (floatX*)mallocCheck(n * sizeof(floatX));
        for (size_t i = 0; i < n; i++) tmp[i] = __float2bfloat16_rn(host->params_memory[i]);
        cudaCheck(cudaMemcpy(model->params_memory, tmp, n * sizeof(floatX), cudaMemcpyHostToDevice));
        free(tmp);
    }
#endif
    cudaCheck(cudaMalloc(&model->norm_d, 2 * sizeof(float)));
    cudaCheck(cudaMalloc(&model->one_d, sizeof(float)));
    const float one = 1.0f;
    cudaCheck(cudaMemcpy(model->one_d, &one, sizeof(float), cudaMemcpyHostToDevice));
    model->planner.vocab_size = model->config.vocab_size;
    model->planner.counts = (int*)mallocCheck(sizeof(int) * (size_t)model->config.vocab_size);
    rng_init(&model->rng, seed ^ 0x5EED5EEDull);
    model->last_mode = -1;
}

// From a model file (v3 fp32 or v5 bf16) or a descriptor ("d12"): LLMC_OK or LLMC_ERR.
static int gpt2cu_build(GPT2CU* model, const char* model_or_descriptor, uint64_t seed) {
    GPT2 host;
    if (model_or_descriptor[0] == 'd' && strchr(model_or_descriptor, '.') == NULL &&
        strchr(model_or_descriptor, '/') == NULL) {
        GPT2Config config;
        if (gpt2_config_from_descriptor(&config, model_or_descriptor) != LLMC_OK) return LLMC_ERR;
        if (gpt2_build_from_config(&host, &config, seed) != LLMC_OK) return LLMC_ERR;
    } else if (gpt2_build_from_checkpoint(&host, model_or_descriptor) != LLMC_OK) {
        return LLMC_ERR;
    }
    const int hs = host.config.channels / host.config.num_heads;
    if (!attention_head_size_supported(hs)) {
        gpt2_free(&host);
        return llmc_set_error("%s: head size %d is not supported by the CUDA attention (16, 32, 64, 128)",
                              model_or_descriptor, hs);
    }
    gpt2cu_build_from_host(model, &host, seed);
    gpt2_free(&host);
    return LLMC_OK;
}

static void gpt2cu_free_activations(GPT2CU* model) {
    void** ptrs = (void**)&model->acts;
    for (size_t i = 0; i < sizeof(ActsCU) / sizeof(void*); i++) {
        if (ptrs[i] != NULL) cudaCheck(cudaFree(ptrs[i]));
        ptrs[i] = NULL;
    }
    if (model->inputs_d) cudaCheck(cudaFree(model->inputs_d));
    if (model->targets_d) cudaCheck(cudaFree(model->targets_d));
    if (model->plan_d) cudaCheck(cudaFree(model->plan_d));
    if (model->upload_pending) cudaCheck(cudaEventSynchronize(model->upload_done));
    model->upload_pending = 0;
    if (model->plan_h) cudaCheck(cudaFreeHost(model->plan_h));
    if (model->inputs_h) cudaCheck(cudaFreeHost(model->inputs_h));
    if (model->targets_h) cudaCheck(cudaFreeHost(model->targets_h));
    free(model->losses_h);
    model->inputs_d = model->targets_d = model->plan_d = NULL;
    model->plan_h = model->inputs_h = model->targets_h = NULL;
    model->losses_h = NULL;
    model->B = model->T = 0;
}

static void gpt2cu_free(GPT2CU* model) {
    gpt2cu_free_activations(model);
    cudaCheck(cudaFree(model->params_memory));
    cudaCheck(cudaFree(model->grads_memory));
    if (model->master_memory) cudaCheck(cudaFree(model->master_memory));
    if (model->m_memory) cudaCheck(cudaFree(model->m_memory));
    if (model->v_memory) cudaCheck(cudaFree(model->v_memory));
    cudaCheck(cudaFree(model->norm_d));
    cudaCheck(cudaFree(model->one_d));
    free(model->planner.counts);
    cudaCheck(cudaEventDestroy(model->upload_done));
    cudaCheck(cudaStreamDestroy(model->stream));
    memset(model, 0, sizeof(*model));
}

template <typename T_>
static T_* gpt2cu_alloc(GPT2CU* model, size_t count) {
    T_* p = NULL;
    cudaCheck(cudaMalloc(&p, count * sizeof(T_)));
    model->activation_bytes += count * sizeof(T_);
    return p;
}

static void gpt2cu_allocate_activations(GPT2CU* model, int B, int T) {
    gpt2cu_free_activations(model);
    model->activation_bytes = 0;
    const GPT2Config* c = &model->config;
    const size_t L = c->num_layers, C = c->channels, H = c->num_heads, Vp = c->padded_vocab_size;
    const size_t BT = (size_t)B * T;
    const size_t L_ln = model->recompute >= 2 ? 1 : L, L_gelu = model->recompute >= 1 ? 1 : L;
    ActsCU* a = &model->acts;
    a->encoded = gpt2cu_alloc<floatX>(model, BT * C);
    a->ln1 = gpt2cu_alloc<floatX>(model, L_ln * BT * C);
    a->ln1_mean = gpt2cu_alloc<float>(model, L * BT);
    a->ln1_rstd = gpt2cu_alloc<float>(model, L * BT);
    a->qkv = gpt2cu_alloc<floatX>(model, L * BT * 3 * C);
    a->atty = gpt2cu_alloc<floatX>(model, L * BT * C);
    a->att_lse = gpt2cu_alloc<float>(model, L * BT * H);
    a->residual2 = gpt2cu_alloc<floatX>(model, L * BT * C);
    a->ln2 = gpt2cu_alloc<floatX>(model, L_ln * BT * C);
    a->ln2_mean = gpt2cu_alloc<float>(model, L * BT);
    a->ln2_rstd = gpt2cu_alloc<float>(model, L * BT);
    a->fch = gpt2cu_alloc<floatX>(model, L * BT * 4 * C);
    a->fch_gelu = gpt2cu_alloc<floatX>(model, L_gelu * BT * 4 * C);
    a->residual3 = gpt2cu_alloc<floatX>(model, L * BT * C);
    a->lnf = gpt2cu_alloc<floatX>(model, BT * C);
    a->lnf_mean = gpt2cu_alloc<float>(model, BT);
    a->lnf_rstd = gpt2cu_alloc<float>(model, BT);
    a->logits = gpt2cu_alloc<floatX>(model, BT * Vp);
    a->losses = gpt2cu_alloc<float>(model, BT);
    a->proj = gpt2cu_alloc<floatX>(model, BT * C);
    a->dresidual = gpt2cu_alloc<floatX>(model, BT * C);
    a->dbtc = gpt2cu_alloc<floatX>(model, BT * C);
    a->dqkv = gpt2cu_alloc<floatX>(model, BT * 3 * C);
    a->dfch = gpt2cu_alloc<floatX>(model, BT * 4 * C);
#ifndef GPT2CU_CUDNN_ATTENTION
    a->att_delta = gpt2cu_alloc<float>(model, BT * H);
#endif
    size_t scratch = column_sum_scratch_floats((int)BT, (int)(4 * C));
    const size_t ln_scratch = layernorm_backward_scratch_floats((int)BT, (int)C);
    if (ln_scratch > scratch) scratch = ln_scratch;
    const size_t ln_dwpe_scratch = layernorm_backward_dwpe_scratch_floats((int)BT, (int)C, (int)T);
    if (ln_dwpe_scratch > scratch) scratch = ln_dwpe_scratch;
    const size_t encoder_scratch = encoder_backward_scratch_floats((int)BT, (int)C);
    if (encoder_scratch > scratch) scratch = encoder_scratch;
    if (scratch < NORM_BLOCKS) scratch = NORM_BLOCKS;
    a->scratch = gpt2cu_alloc<float>(model, scratch);
    cudaCheck(cudaMemset(a->losses, 0, BT * sizeof(float)));
    cudaCheck(cudaMalloc(&model->inputs_d, BT * sizeof(int)));
    cudaCheck(cudaMalloc(&model->targets_d, BT * sizeof(int)));
    cudaCheck(cudaMalloc(&model->plan_d, (3 * BT + 1) * sizeof(int)));
    cudaCheck(cudaMallocHost(&model->plan_h, (3 * BT + 1) * sizeof(int)));
    cudaCheck(cudaMallocHost(&model->inputs_h, BT * sizeof(int)));
    cudaCheck(cudaMallocHost(&model->targets_h, BT * sizeof(int)));
    model->losses_h = (float*)mallocCheck(BT * sizeof(float));
    model->B = B;
    model->T = T;
}

// Sets the recompute level (0, 1 or 2; see the top of this file). Activations are reallocated at
// the next forward.
static int gpt2cu_set_recompute(GPT2CU* model, int level) {
    if (level < 0 || level > 2) return llmc_set_error("gpt2cu_set_recompute: level %d is not 0, 1 or 2", level);
    if (level != model->recompute) gpt2cu_free_activations(model);
    model->recompute = level;
    return LLMC_OK;
}

// ----------------------------------------------------------------------------------------------
// forward, backward, update

// Runs the model on inputs (B, T) (host ids, validated by the caller to be < V). targets may be
// NULL for FORWARD_LOGITS. In FORWARD_TRAIN the per-position losses are added with weight
// loss_weight (1 / grad_accum_steps) and the logits are replaced by the gradient of
// loss_weight * mean loss. Returns LLMC_ERR on bad sizes.
static int gpt2cu_forward(GPT2CU* model, const int* inputs, const int* targets, int B, int T, ForwardMode mode,
                          float loss_weight) {
    const GPT2Config* cfg = &model->config;
    if (B <= 0 || T <= 0 || T > cfg->max_seq_len) {
        return llmc_set_error("gpt2cu_forward: bad batch %d x %d (T must be in 1..%d)", B, T, cfg->max_seq_len);
    }
    if (mode != FORWARD_LOGITS && targets == NULL) return llmc_set_error("gpt2cu_forward: targets needed");
    if (model->B != B || model->T != T) gpt2cu_allocate_activations(model, B, T);
    const int L = cfg->num_layers, C = cfg->channels, H = cfg->num_heads, Vp = cfg->padded_vocab_size;
    const int BT = B * T;
    cudaStream_t s = model->stream;
    ActsCU* a = &model->acts;
    ParamsCU* p = &model->params;

    // Uploads go through pinned staging buffers, so they are truly asynchronous (a pageable copy
    // can stall the host until the GPU catches up). Before the host rewrites the buffers it waits
    // for the previous upload only: the host stays at most one micro-batch ahead of the GPU.
    if (model->upload_pending) cudaCheck(cudaEventSynchronize(model->upload_done));
    memcpy(model->inputs_h, inputs, BT * sizeof(int));
    cudaCheck(cudaMemcpyAsync(model->inputs_d, model->inputs_h, BT * sizeof(int), cudaMemcpyHostToDevice, s));
    if (targets != NULL) {
        memcpy(model->targets_h, targets, BT * sizeof(int));
        cudaCheck(cudaMemcpyAsync(model->targets_d, model->targets_h, BT * sizeof(int), cudaMemcpyHostToDevice, s));
    }
    if (mode == FORWARD_TRAIN) {
        model->plan_shape = encoder_backward_plan(&model->planner, inputs, BT, model->plan_h);
        cudaCheck(cudaMemcpyAsync(model->plan_d, model->plan_h, (2 * model->plan_shape.n + 1 + BT) * sizeof(int),
                                  cudaMemcpyHostToDevice, s));
    }
    cudaCheck(cudaEventRecord(model->upload_done, s));
    model->upload_pending = 1;

    encoder_forward(a->encoded, model->inputs_d, p->wte, p->wpe, B, T, C, s);
    layernorm_forward(a->ln1, a->ln1_mean, a->ln1_rstd, a->encoded, p->ln1w, p->ln1b, BT, C, s);
    const int r_ln = model->recompute >= 2, r_gelu = model->recompute >= 1;
    for (int l = 0; l < L; l++) {
        const size_t btc = (size_t)BT * C;
        const floatX* residual = l == 0 ? a->encoded : a->residual3 + (l - 1) * btc;
        floatX* ln1 = a->ln1 + (r_ln ? 0 : l * btc);
        floatX* qkv = a->qkv + l * 3 * btc;
        floatX* atty = a->atty + l * btc;
        floatX* residual2 = a->residual2 + l * btc;
        floatX* ln2 = a->ln2 + (r_ln ? 0 : l * btc);
        floatX* fch = a->fch + l * 4 * btc;
        floatX* fch_gelu = a->fch_gelu + (r_gelu ? 0 : l * 4 * btc);
        floatX* residual3 = a->residual3 + l * btc;
        matmul_forward(qkv, NULL, ln1, p->qkvw + (size_t)l * 3 * C * C, p->qkvb + (size_t)l * 3 * C, BT, C, 3 * C, s);
#ifdef GPT2CU_CUDNN_ATTENTION  // stats in every mode: the Python module's backward follows a FORWARD_LOSS
        cudnn_attention_forward(atty, a->att_lse + (size_t)l * BT * H, qkv, B, T, C, H, 1, s);
#else
        attention_forward(atty, a->att_lse + (size_t)l * BT * H, qkv, B, T, C, H, s);
#endif
        matmul_forward(a->proj, NULL, atty, p->attprojw + (size_t)l * C * C, p->attprojb + (size_t)l * C, BT, C, C, s);
        fused_residual_layernorm_forward(residual2, ln2, a->ln2_mean + (size_t)l * BT, a->ln2_rstd + (size_t)l * BT,
                                         residual, a->proj, p->ln2w + (size_t)l * C, p->ln2b + (size_t)l * C, BT, C, s);
        if (r_gelu) {  // the same GELU kernel as the backward's recomputation
            matmul_forward(fch, NULL, ln2, p->fcw + (size_t)l * 4 * C * C, p->fcb + (size_t)l * 4 * C, BT, C, 4 * C, s);
            gelu_forward(fch_gelu, fch, (size_t)BT * 4 * C, s);
        } else {
            matmul_forward(fch_gelu, fch, ln2, p->fcw + (size_t)l * 4 * C * C, p->fcb + (size_t)l * 4 * C, BT, C,
                           4 * C, s);
        }
        matmul_forward(a->proj, NULL, fch_gelu, p->fcprojw + (size_t)l * 4 * C * C, p->fcprojb + (size_t)l * C, BT,
                       4 * C, C, s);
        if (l + 1 < L) {
            fused_residual_layernorm_forward(residual3, a->ln1 + (r_ln ? 0 : (l + 1) * btc), a->ln1_mean + (size_t)(l + 1) * BT,
                                             a->ln1_rstd + (size_t)(l + 1) * BT, residual2, a->proj,
                                             p->ln1w + (size_t)(l + 1) * C, p->ln1b + (size_t)(l + 1) * C, BT, C, s);
        } else {
            fused_residual_layernorm_forward(residual3, a->lnf, a->lnf_mean, a->lnf_rstd, residual2, a->proj, p->lnfw,
                                             p->lnfb, BT, C, s);
        }
    }
    matmul_forward(a->logits, NULL, a->lnf, p->wte, NULL, BT, C, Vp, s);
    if (mode == FORWARD_LOSS) {
        fused_classifier(a->logits, a->losses, model->targets_d, BT, cfg->vocab_size, Vp, 0.0f, 1.0f, 0, 0, s);
    } else if (mode == FORWARD_TRAIN) {
        const float dloss = loss_weight / (float)BT;
        fused_classifier(a->logits, a->losses, model->targets_d, BT, cfg->vocab_size, Vp, dloss, loss_weight, 1, 1, s);
        model->loss_weight_accum += loss_weight;
    }
    model->last_mode = mode;
    return LLMC_OK;
}

// Zeroes the parameter gradients and the step's loss accumulator.
static void gpt2cu_zero_grad(GPT2CU* model) {
    cudaCheck(cudaMemsetAsync(model->grads_memory, 0, model->num_parameters * sizeof(floatX), model->stream));
    if (model->acts.losses != NULL) {
        cudaCheck(cudaMemsetAsync(model->acts.losses, 0, (size_t)model->B * model->T * sizeof(float), model->stream));
    }
    model->loss_weight_accum = 0.0f;
}

// Backward pass of the last forward (which must be FORWARD_TRAIN); adds to the parameter gradients.
static int gpt2cu_backward(GPT2CU* model) {
    if (model->last_mode != FORWARD_TRAIN) {
        return llmc_set_error("gpt2cu_backward: the last forward was not a training forward");
    }
    const GPT2Config* cfg = &model->config;
    const int B = model->B, T = model->T;
    const int L = cfg->num_layers, C = cfg->channels, H = cfg->num_heads, Vp = cfg->padded_vocab_size;
    const int BT = B * T;
    const size_t btc = (size_t)BT * C;
    cudaStream_t s = model->stream;
    ActsCU* a = &model->acts;
    ParamsCU* p = &model->params;
    ParamsCU* g = &model->grads;

    cudaCheck(cudaMemsetAsync(a->dresidual, 0, btc * sizeof(floatX), s));
    // classifier (tied to wte): logits now hold dlogits
    matmul_backward(a->dbtc, g->wte, NULL, a->logits, a->lnf, p->wte, NULL, a->scratch, BT, C, Vp, s);
    layernorm_backward(a->dresidual, g->lnfw, g->lnfb, a->scratch, a->dbtc, a->residual3 + (L - 1) * btc, p->lnfw,
                       a->lnf_mean, a->lnf_rstd, BT, C, s);
    const int r_ln = model->recompute >= 2, r_gelu = model->recompute >= 1;
    bool dwpe_pending = false;  // layer 0's ln1 backward could not sum dwpe: the encoder's pass does
    for (int l = L - 1; l >= 0; l--) {
        const floatX* residual = l == 0 ? a->encoded : a->residual3 + (l - 1) * btc;
        const size_t lc = (size_t)l * C;
        floatX* fch_gelu = a->fch_gelu + (r_gelu ? 0 : l * 4 * btc);
        floatX* ln2 = a->ln2 + (r_ln ? 0 : l * btc);
        floatX* ln1 = a->ln1 + (r_ln ? 0 : l * btc);
        if (r_gelu) gelu_forward(fch_gelu, a->fch + l * 4 * btc, (size_t)BT * 4 * C, s);
        if (r_ln) {  // mean and rstd are rewritten with the values they hold
            layernorm_forward(ln2, a->ln2_mean + (size_t)l * BT, a->ln2_rstd + (size_t)l * BT, a->residual2 + l * btc,
                              p->ln2w + lc, p->ln2b + lc, BT, C, s);
        }
        // MLP: residual3 = residual2 + fcproj(gelu(fc(ln2(residual2))))
        matmul_backward(a->dfch, g->fcprojw + lc * 4 * C, g->fcprojb + lc, a->dresidual, fch_gelu,
                        p->fcprojw + lc * 4 * C, a->fch + l * 4 * btc, a->scratch, BT, 4 * C, C, s);
        matmul_backward(a->dbtc, g->fcw + lc * 4 * C, g->fcb + lc * 4, a->dfch, ln2, p->fcw + lc * 4 * C, NULL,
                        a->scratch, BT, C, 4 * C, s);
        layernorm_backward(a->dresidual, g->ln2w + lc, g->ln2b + lc, a->scratch, a->dbtc, a->residual2 + l * btc,
                           p->ln2w + lc, a->ln2_mean + (size_t)l * BT, a->ln2_rstd + (size_t)l * BT, BT, C, s);
        // attention: residual2 = residual + attproj(attention(qkv(ln1(residual))))
        matmul_backward(a->dbtc, g->attprojw + lc * C, g->attprojb + lc, a->dresidual, a->atty + l * btc,
                        p->attprojw + lc * C, NULL, a->scratch, BT, C, C, s);
#ifdef GPT2CU_CUDNN_ATTENTION
        cudnn_attention_backward(a->dqkv, a->dbtc, a->atty + l * btc, a->qkv + l * 3 * btc,
                                 a->att_lse + (size_t)l * BT * H, B, T, C, H, s);
#else
        attention_backward(a->dqkv, a->att_delta, a->dbtc, a->atty + l * btc, a->qkv + l * 3 * btc,
                           a->att_lse + (size_t)l * BT * H, B, T, C, H, s);
#endif
        if (r_ln) {
            layernorm_forward(ln1, a->ln1_mean + (size_t)l * BT, a->ln1_rstd + (size_t)l * BT, residual, p->ln1w + lc,
                              p->ln1b + lc, BT, C, s);
        }
        matmul_backward(a->dbtc, g->qkvw + lc * 3 * C, g->qkvb + lc * 3, a->dqkv, ln1, p->qkvw + lc * 3 * C, NULL,
                        a->scratch, BT, C, 3 * C, s);
        // layer 0's writes the encoder's dout, and sums dwpe from it where it can
        if (l > 0 || !layernorm_backward_dwpe(a->dresidual, g->ln1w + lc, g->ln1b + lc, g->wpe, a->scratch, a->dbtc,
                                              residual, p->ln1w + lc, a->ln1_mean, a->ln1_rstd, BT, C, T, s)) {
            layernorm_backward(a->dresidual, g->ln1w + lc, g->ln1b + lc, a->scratch, a->dbtc, residual, p->ln1w + lc,
                               a->ln1_mean + (size_t)l * BT, a->ln1_rstd + (size_t)l * BT, BT, C, s);
            if (l == 0) dwpe_pending = true;
        }
    }
    encoder_backward(g->wte, dwpe_pending ? g->wpe : NULL, a->scratch, a->dresidual, model->plan_d, model->plan_shape,
                     B, T, C, s);
    model->last_mode = -1;  // dlogits consumed
    return LLMC_OK;
}

// Mean loss of the last FORWARD_LOSS, or of the micro-batches accumulated since gpt2cu_zero_grad.
// Synchronizes with the device (the one host sync of a training step).
static float gpt2cu_read_mean_loss(GPT2CU* model) {
    const size_t BT = (size_t)model->B * model->T;
    cudaCheck(cudaMemcpyAsync(model->losses_h, model->acts.losses, BT * sizeof(float), cudaMemcpyDeviceToHost,
                              model->stream));
    cudaCheck(cudaStreamSynchronize(model->stream));
    double sum = 0.0;
    for (size_t i = 0; i < BT; i++) sum += model->losses_h[i];
    return (float)(sum / (double)BT);
}

// Global gradient norm into norm_d[0] and the clip scale into norm_d[1] (clip <= 0: no clipping).
static void gpt2cu_compute_grad_norm(GPT2CU* model, float clip) {
    global_norm(model->norm_d, model->acts.scratch, model->grads_memory, model->num_parameters, clip, model->stream);
}

// AdamW's m and v (zero), unless they exist.
static void gpt2cu_allocate_optimizer(GPT2CU* model) {
    if (model->m_memory != NULL) return;
    const size_t n = model->num_parameters;
    cudaCheck(cudaMalloc(&model->m_memory, n * sizeof(float)));
    cudaCheck(cudaMalloc(&model->v_memory, n * sizeof(float)));
    cudaCheck(cudaMemsetAsync(model->m_memory, 0, n * sizeof(float), model->stream));
    cudaCheck(cudaMemsetAsync(model->v_memory, 0, n * sizeof(float), model->stream));
}

// One AdamW step (step counts from 1) with the gradients scaled by norm_d[1] when use_clip, else 1.
// Call gpt2cu_compute_grad_norm first when use_clip.
static void gpt2cu_update(GPT2CU* model, const AdamWParams* settings, int step, int use_clip) {
    gpt2cu_allocate_optimizer(model);
    const float* scale = use_clip ? model->norm_d + 1 : model->one_d;
    size_t offset = 0;
    for (int i = 0; i < GPT2_NUM_PARAMETER_TENSORS; i++) {
        const size_t count = model->param_sizes[i];
        const float wd = PARAM_DECAYED[i] ? settings->weight_decay : 0.0f;
        const uint32_t seed = rng_next_u32(&model->rng);
        adamw_update(model->params_memory + offset, model->master_memory ? model->master_memory + offset : NULL,
                     model->grads_memory + offset, model->m_memory + offset, model->v_memory + offset, count,
                     settings, wd, step, scale, seed, model->stream);
        offset += count;
    }
}

// Copies `count` values of a device floatX buffer into host fp32.
static void gpt2cu_download(float* out, const floatX* src, size_t count, cudaStream_t stream) {
#ifdef LLMC_FP32
    cudaCheck(cudaMemcpyAsync(out, src, count * sizeof(float), cudaMemcpyDeviceToHost, stream));
    cudaCheck(cudaStreamSynchronize(stream));
#else
    floatX* tmp = (floatX*)mallocCheck(count * sizeof(floatX));
    cudaCheck(cudaMemcpyAsync(tmp, src, count * sizeof(floatX), cudaMemcpyDeviceToHost, stream));
    cudaCheck(cudaStreamSynchronize(stream));
    for (size_t i = 0; i < count; i++) out[i] = __bfloat162float(tmp[i]);
    free(tmp);
#endif
}

// Writes the parameters as a model file (version 3 fp32 or 5 bf16) through the CPU engine's writer.
static int gpt2cu_save_checkpoint(GPT2CU* model, const char* path, int version) {
    GPT2 host;
    if (gpt2_build_from_config(&host, &model->config, 0) != LLMC_OK) return LLMC_ERR;
    gpt2cu_download(host.params_memory, model->params_memory, model->num_parameters, model->stream);
    const int rc = gpt2_save_checkpoint(&host, path, version);
    gpt2_free(&host);
    return rc;
}

// ----------------------------------------------------------------------------------------------
// optimizer state files (../shared/DESIGN.md section 4): what a checkpoint needs besides the model
// file to continue a run exactly. Header (256 x int32): [0] 20240527, [1] 1, [2] processes, [3] rank,
// [4] master weights?, [5] shuffle?, [10] step, [20..21] the stochastic-rounding RNG state and
// [22..23] the trainer's sampling RNG state (uint64 each, low word first), [30..31] shard index,
// [32..33] sample index of the training dataloader. Body: m, v (fp32), the fp32 master weights when
// [4] is set (bf16 build), then, when [5] is set, the dataloader's state: its shuffle seed (uint64;
// the loader derives every permutation from the seed and the position, so that is all it needs).

#define OPTIMIZER_STATE_MAGIC 20240527
#define OPTIMIZER_STATE_VERSION 1

typedef struct {
    int step;                  // optimizer steps taken
    uint64_t sample_rng;       // the trainer's sampling RNG state
    uint64_t shard_index;      // training dataloader position
    uint64_t sample_index;
    int shuffle;               // the dataloader shuffles ...
    uint64_t shuffle_seed;     // ... from this seed
} TrainState;

// Writes m, v, the master weights (if any) and ts to path, through path.tmp and a rename.
static int gpt2cu_save_state(GPT2CU* model, const char* path, const TrainState* ts) {
    gpt2cu_allocate_optimizer(model);
    const size_t n = model->num_parameters;
    uint32_t header[256];
    memset(header, 0, sizeof(header));
    header[0] = OPTIMIZER_STATE_MAGIC;
    header[1] = OPTIMIZER_STATE_VERSION;
    header[2] = 1;
    header[3] = 0;
    header[4] = model->master_memory != NULL;
    header[5] = ts->shuffle != 0;
    header[10] = (uint32_t)ts->step;
    const uint64_t pairs[4] = {model->rng.state, ts->sample_rng, ts->shard_index, ts->sample_index};
    const int slots[4] = {20, 22, 30, 32};
    for (int i = 0; i < 4; i++) {
        header[slots[i]] = (uint32_t)(pairs[i] & 0xFFFFFFFFull);
        header[slots[i] + 1] = (uint32_t)(pairs[i] >> 32);
    }
    char tmp_path[4200];
    if (snprintf(tmp_path, sizeof(tmp_path), "%s.tmp", path) >= (int)sizeof(tmp_path)) {
        return llmc_set_error("%s: path too long", path);
    }
    float* host = (float*)malloc(n * sizeof(float));
    if (host == NULL) return llmc_set_error("%s: out of host memory for %zu values", path, n);
    FILE* f = fopen(tmp_path, "wb");
    if (f == NULL) {
        free(host);
        return llmc_set_error("%s: cannot open for writing", tmp_path);
    }
    int ok = fwrite(header, sizeof(header), 1, f) == 1;
    const float* arrays[3] = {model->m_memory, model->v_memory, model->master_memory};
    for (int i = 0; i < 3 && ok; i++) {
        if (arrays[i] == NULL) continue;
        cudaCheck(cudaMemcpyAsync(host, arrays[i], n * sizeof(float), cudaMemcpyDeviceToHost, model->stream));
        cudaCheck(cudaStreamSynchronize(model->stream));
        ok = fwrite(host, sizeof(float), n, f) == n;
    }
    if (ok && ts->shuffle) ok = fwrite(&ts->shuffle_seed, sizeof(uint64_t), 1, f) == 1;
    free(host);
    if (fclose(f) != 0) ok = 0;
    if (!ok || rename(tmp_path, path) != 0) {
        remove(tmp_path);
        return llmc_set_error("%s: cannot write the optimizer state", path);
    }
    return LLMC_OK;
}

// Reads an optimizer state file written for this model (same parameter count and precision) into
// the device (m, v, master weights, the stochastic-rounding RNG) and ts. Every inconsistency is an
// error naming the file; the caller checks ts against its own settings.
static int gpt2cu_load_state(GPT2CU* model, const char* path, TrainState* ts) {
    const size_t n = model->num_parameters;
    FILE* f = fopen(path, "rb");
    if (f == NULL) return llmc_set_error("%s: cannot open the optimizer state", path);
    uint32_t header[256];
    if (fread(header, sizeof(header), 1, f) != 1) {
        fclose(f);
        return llmc_set_error("%s: optimizer state file is truncated (no full 1024-byte header)", path);
    }
    const char* bad = NULL;
    if (header[0] != OPTIMIZER_STATE_MAGIC) {
        bad = "bad magic (not an optimizer state file)";
    } else if (header[1] != OPTIMIZER_STATE_VERSION) {
        bad = "unsupported version";
    } else if (header[2] != 1 || header[3] != 0) {
        bad = "written by a multi-process run (this run is one process, rank 0)";
    } else if (header[4] != (model->master_memory != NULL)) {
        bad = model->master_memory != NULL ? "has no master weights (written by the fp32 build?)"
                                           : "has master weights (written by the bf16 build?)";
    } else if (header[5] > 1 || header[10] > INT32_MAX) {
        bad = "bad header fields";
    }
    if (bad != NULL) {
        fclose(f);
        return llmc_set_error("%s: optimizer state: %s", path, bad);
    }
    ts->step = (int)header[10];
    model->rng.state = (uint64_t)header[20] | ((uint64_t)header[21] << 32);
    ts->sample_rng = (uint64_t)header[22] | ((uint64_t)header[23] << 32);
    ts->shard_index = (uint64_t)header[30] | ((uint64_t)header[31] << 32);
    ts->sample_index = (uint64_t)header[32] | ((uint64_t)header[33] << 32);
    ts->shuffle = (int)header[5];
    ts->shuffle_seed = 0;
    const size_t arrays = header[4] ? 3 : 2;
    const long long expected = (long long)sizeof(header) + (long long)(arrays * n * sizeof(float)) +
                               (ts->shuffle ? (long long)sizeof(uint64_t) : 0);
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return llmc_set_error("%s: cannot seek", path);
    }
    const long long size = (long long)ftell(f);
    if (size != expected) {
        fclose(f);
        return llmc_set_error("%s: optimizer state file has %lld bytes, expected %lld for %zu parameters "
                              "(truncated, or written for another model)",
                              path, size, expected, n);
    }
    fseek(f, (long)sizeof(header), SEEK_SET);
    float* host = (float*)malloc(n * sizeof(float));
    if (host == NULL) {
        fclose(f);
        return llmc_set_error("%s: out of host memory for %zu values", path, n);
    }
    gpt2cu_allocate_optimizer(model);
    float* targets[3] = {model->m_memory, model->v_memory, model->master_memory};
    int ok = 1;
    for (size_t i = 0; i < arrays && ok; i++) {
        ok = fread(host, sizeof(float), n, f) == n;
        if (ok) cudaCheck(cudaMemcpy(targets[i], host, n * sizeof(float), cudaMemcpyHostToDevice));
    }
    if (ok && ts->shuffle) ok = fread(&ts->shuffle_seed, sizeof(uint64_t), 1, f) == 1;
    free(host);
    fclose(f);
    if (!ok) return llmc_set_error("%s: cannot read the optimizer state body", path);
    return LLMC_OK;
}

#endif  // LLMC_GPT2CU_CUH
