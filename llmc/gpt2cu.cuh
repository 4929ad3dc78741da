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

A training micro-step is gpt2cu_forward(mode TRAIN) then gpt2cu_backward(); the loss of a whole
step accumulates on the device and is read once (gpt2cu_read_mean_loss), the only host
synchronization of a step. Everything runs on one stream, in order.
*/
#ifndef LLMC_GPT2CU_CUH
#define LLMC_GPT2CU_CUH

#include <math.h>
#include <string.h>

#include "llmc/adamw.cuh"             // defines: adamw_update, AdamWParams
#include "llmc/attention.cuh"         // defines: attention_forward, attention_backward
#include "llmc/cuda_common.cuh"       // defines: floatX, cudaCheck, column_sum
#include "llmc/encoder.cuh"           // defines: encoder_forward, encoder_backward(_plan)
#include "llmc/error.h"               // defines: llmc_error
#include "llmc/fused_classifier.cuh"  // defines: fused_classifier
#include "llmc/global_norm.cuh"       // defines: global_norm
#include "llmc/gpt2_cpu.h"            // defines: GPT2Config, GPT2 (host-side build and save)
#include "llmc/layernorm.cuh"         // defines: layernorm_forward/backward, fused residual
#include "llmc/matmul.cuh"            // defines: matmul_forward/backward, matmul_init
#include "llmc/rand.h"                // defines: Rng

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
    float* att_delta;   // (B, H, T)
    float* scratch;     // reductions (column sums, LayerNorm weight grads, global norm)
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
    int plan_n;
    EncoderPlanner planner;
    float* losses_h;  // (B, T) host copy for the mean
    float* norm_d;    // [0] grad norm, [1] grad scale (clipping)
    float* one_d;     // a device 1.0f, the grad scale when no clipping is asked
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
        floatX* tmp = (floatX*)malloc(n * sizeof(floatX));
        if (tmp == NULL) {
            fprintf(stderr, "out of host memory converting %zu parameters\n", n);
            exit(1);
        }
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
    model->planner.counts = (int*)malloc(sizeof(int) * (size_t)model->config.vocab_size);
    if (model->planner.counts == NULL) {
        fprintf(stderr, "out of host memory\n");
        exit(1);
    }
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
    ActsCU* a = &model->acts;
    a->encoded = gpt2cu_alloc<floatX>(model, BT * C);
    a->ln1 = gpt2cu_alloc<floatX>(model, L * BT * C);
    a->ln1_mean = gpt2cu_alloc<float>(model, L * BT);
    a->ln1_rstd = gpt2cu_alloc<float>(model, L * BT);
    a->qkv = gpt2cu_alloc<floatX>(model, L * BT * 3 * C);
    a->atty = gpt2cu_alloc<floatX>(model, L * BT * C);
    a->att_lse = gpt2cu_alloc<float>(model, L * BT * H);
    a->residual2 = gpt2cu_alloc<floatX>(model, L * BT * C);
    a->ln2 = gpt2cu_alloc<floatX>(model, L * BT * C);
    a->ln2_mean = gpt2cu_alloc<float>(model, L * BT);
    a->ln2_rstd = gpt2cu_alloc<float>(model, L * BT);
    a->fch = gpt2cu_alloc<floatX>(model, L * BT * 4 * C);
    a->fch_gelu = gpt2cu_alloc<floatX>(model, L * BT * 4 * C);
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
    a->att_delta = gpt2cu_alloc<float>(model, BT * H);
    size_t scratch = column_sum_scratch_floats((int)BT, (int)(4 * C));
    const size_t ln_scratch = layernorm_backward_scratch_floats((int)BT, (int)C);
    if (ln_scratch > scratch) scratch = ln_scratch;
    if (scratch < NORM_BLOCKS) scratch = NORM_BLOCKS;
    a->scratch = gpt2cu_alloc<float>(model, scratch);
    cudaCheck(cudaMemset(a->losses, 0, BT * sizeof(float)));
    cudaCheck(cudaMalloc(&model->inputs_d, BT * sizeof(int)));
    cudaCheck(cudaMalloc(&model->targets_d, BT * sizeof(int)));
    cudaCheck(cudaMalloc(&model->plan_d, (3 * BT + 1) * sizeof(int)));
    cudaCheck(cudaMallocHost(&model->plan_h, (3 * BT + 1) * sizeof(int)));
    cudaCheck(cudaMallocHost(&model->inputs_h, BT * sizeof(int)));
    cudaCheck(cudaMallocHost(&model->targets_h, BT * sizeof(int)));
    model->losses_h = (float*)malloc(BT * sizeof(float));
    if (model->losses_h == NULL) {
        fprintf(stderr, "out of host memory for a batch of %d x %d\n", B, T);
        exit(1);
    }
    model->B = B;
    model->T = T;
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
        model->plan_n = encoder_backward_plan(&model->planner, inputs, BT, model->plan_h);
        cudaCheck(cudaMemcpyAsync(model->plan_d, model->plan_h, (2 * model->plan_n + 1 + BT) * sizeof(int),
                                  cudaMemcpyHostToDevice, s));
    }
    cudaCheck(cudaEventRecord(model->upload_done, s));
    model->upload_pending = 1;

    encoder_forward(a->encoded, model->inputs_d, p->wte, p->wpe, B, T, C, s);
    layernorm_forward(a->ln1, a->ln1_mean, a->ln1_rstd, a->encoded, p->ln1w, p->ln1b, BT, C, s);
    for (int l = 0; l < L; l++) {
        const size_t btc = (size_t)BT * C;
        const floatX* residual = l == 0 ? a->encoded : a->residual3 + (l - 1) * btc;
        floatX* ln1 = a->ln1 + l * btc;
        floatX* qkv = a->qkv + l * 3 * btc;
        floatX* atty = a->atty + l * btc;
        floatX* residual2 = a->residual2 + l * btc;
        floatX* ln2 = a->ln2 + l * btc;
        floatX* fch = a->fch + l * 4 * btc;
        floatX* fch_gelu = a->fch_gelu + l * 4 * btc;
        floatX* residual3 = a->residual3 + l * btc;
        matmul_forward(qkv, NULL, ln1, p->qkvw + (size_t)l * 3 * C * C, p->qkvb + (size_t)l * 3 * C, BT, C, 3 * C, s);
        attention_forward(atty, a->att_lse + (size_t)l * BT * H, qkv, B, T, C, H, s);
        matmul_forward(a->proj, NULL, atty, p->attprojw + (size_t)l * C * C, p->attprojb + (size_t)l * C, BT, C, C, s);
        fused_residual_layernorm_forward(residual2, ln2, a->ln2_mean + (size_t)l * BT, a->ln2_rstd + (size_t)l * BT,
                                         residual, a->proj, p->ln2w + (size_t)l * C, p->ln2b + (size_t)l * C, BT, C, s);
        matmul_forward(fch_gelu, fch, ln2, p->fcw + (size_t)l * 4 * C * C, p->fcb + (size_t)l * 4 * C, BT, C, 4 * C, s);
        matmul_forward(a->proj, NULL, fch_gelu, p->fcprojw + (size_t)l * 4 * C * C, p->fcprojb + (size_t)l * C, BT,
                       4 * C, C, s);
        if (l + 1 < L) {
            fused_residual_layernorm_forward(residual3, a->ln1 + (l + 1) * btc, a->ln1_mean + (size_t)(l + 1) * BT,
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
    for (int l = L - 1; l >= 0; l--) {
        const floatX* residual = l == 0 ? a->encoded : a->residual3 + (l - 1) * btc;
        const size_t lc = (size_t)l * C;
        // MLP: residual3 = residual2 + fcproj(gelu(fc(ln2(residual2))))
        matmul_backward(a->dfch, g->fcprojw + lc * 4 * C, g->fcprojb + lc, a->dresidual, a->fch_gelu + l * 4 * btc,
                        p->fcprojw + lc * 4 * C, a->fch + l * 4 * btc, a->scratch, BT, 4 * C, C, s);
        matmul_backward(a->dbtc, g->fcw + lc * 4 * C, g->fcb + lc * 4, a->dfch, a->ln2 + l * btc, p->fcw + lc * 4 * C,
                        NULL, a->scratch, BT, C, 4 * C, s);
        layernorm_backward(a->dresidual, g->ln2w + lc, g->ln2b + lc, a->scratch, a->dbtc, a->residual2 + l * btc,
                           p->ln2w + lc, a->ln2_mean + (size_t)l * BT, a->ln2_rstd + (size_t)l * BT, BT, C, s);
        // attention: residual2 = residual + attproj(attention(qkv(ln1(residual))))
        matmul_backward(a->dbtc, g->attprojw + lc * C, g->attprojb + lc, a->dresidual, a->atty + l * btc,
                        p->attprojw + lc * C, NULL, a->scratch, BT, C, C, s);
        attention_backward(a->dqkv, a->att_delta, a->dbtc, a->atty + l * btc, a->qkv + l * 3 * btc,
                           a->att_lse + (size_t)l * BT * H, B, T, C, H, s);
        matmul_backward(a->dbtc, g->qkvw + lc * 3 * C, g->qkvb + lc * 3, a->dqkv, a->ln1 + l * btc,
                        p->qkvw + lc * 3 * C, NULL, a->scratch, BT, C, 3 * C, s);
        layernorm_backward(a->dresidual, g->ln1w + lc, g->ln1b + lc, a->scratch, a->dbtc, residual, p->ln1w + lc,
                           a->ln1_mean + (size_t)l * BT, a->ln1_rstd + (size_t)l * BT, BT, C, s);
    }
    encoder_backward(g->wte, g->wpe, a->dresidual, model->plan_d, model->plan_n, B, T, C, s);
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

// One AdamW step (step counts from 1) with the gradients scaled by norm_d[1] when use_clip, else 1.
// Call gpt2cu_compute_grad_norm first when use_clip.
static void gpt2cu_update(GPT2CU* model, const AdamWParams* settings, int step, int use_clip) {
    const size_t n = model->num_parameters;
    if (model->m_memory == NULL) {
        cudaCheck(cudaMalloc(&model->m_memory, n * sizeof(float)));
        cudaCheck(cudaMalloc(&model->v_memory, n * sizeof(float)));
        cudaCheck(cudaMemsetAsync(model->m_memory, 0, n * sizeof(float), model->stream));
        cudaCheck(cudaMemsetAsync(model->v_memory, 0, n * sizeof(float), model->stream));
    }
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
    floatX* tmp = (floatX*)malloc(count * sizeof(floatX));
    if (tmp == NULL) {
        fprintf(stderr, "out of host memory copying %zu values\n", count);
        exit(1);
    }
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

#endif  // LLMC_GPT2CU_CUH
