/*
GPT-2 on the CPU in fp32: the reference engine (API and model description in llmc/gpt2_cpu.h).

The file reads top to bottom in the order a reader needs it:
  1. the layers, each a forward and a backward function over plain arrays;
  2. the model: sizes, memory, init, checkpoints;
  3. forward, backward, AdamW.
Conventions of the layers: activations are written with `=`, parameter and activation gradients are
accumulated with `+=` (a tensor can feed several consumers, e.g. the residual stream, and gradient
accumulation over micro-batches sums into the same buffers). Matmuls go through sgemm
(llmc/matmul_cpu.h); everything else is plain loops, parallel with OpenMP over independent rows or
channels so that every reduction runs in a fixed order: results do not depend on the thread count.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llmc/error.h"
#include "llmc/gpt2_cpu.h"
#include "llmc/matmul_cpu.h"
#include "llmc/rand.h"

#define LAYERNORM_EPS 1e-5f
#define INIT_STD 0.02f
// Upper bounds that reject absurd headers before anything is allocated from them.
#define MAX_DIMENSION (1 << 20)
#define MAX_LAYERS 4096

// ----------------------------------------------------------------------------------------------
// 1. Layers

// out[b,t,:] = wte[inp[b,t],:] + wpe[t,:]
static void encoder_forward(float* out, const int* inp, const float* wte, const float* wpe, int B,
                            int T, int C) {
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            float* out_bt = out + ((size_t)b * T + t) * C;
            const float* wte_row = wte + (size_t)inp[b * T + t] * C;
            const float* wpe_row = wpe + (size_t)t * C;
            for (int c = 0; c < C; c++) out_bt[c] = wte_row[c] + wpe_row[c];
        }
    }
}

// Scatter-add into the embedding rows. Several positions can hit the same wte row, so this runs
// in a fixed (b, t) order, parallel over channels only.
static void encoder_backward(float* dwte, float* dwpe, const float* dout, const int* inp, int B,
                             int T, int C) {
#pragma omp parallel for
    for (int c = 0; c < C; c++) {
        for (int b = 0; b < B; b++) {
            for (int t = 0; t < T; t++) {
                float d = dout[((size_t)b * T + t) * C + c];
                dwte[(size_t)inp[b * T + t] * C + c] += d;
                dwpe[(size_t)t * C + c] += d;
            }
        }
    }
}

// Normalizes each of the N rows of inp (N, C) to zero mean and unit variance (biased, eps 1e-5),
// then scales and shifts per channel. Saves mean and 1/std per row for the backward pass.
static void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                              const float* weight, const float* bias, int N, int C) {
#pragma omp parallel for
    for (int i = 0; i < N; i++) {
        const float* x = inp + (size_t)i * C;
        double sum = 0.0;
        for (int c = 0; c < C; c++) sum += x[c];
        float m = (float)(sum / C);
        double sum_sq = 0.0;
        for (int c = 0; c < C; c++) {
            float d = x[c] - m;
            sum_sq += (double)d * d;
        }
        float s = 1.0f / sqrtf((float)(sum_sq / C) + LAYERNORM_EPS);
        float* y = out + (size_t)i * C;
        for (int c = 0; c < C; c++) y[c] = (x[c] - m) * s * weight[c] + bias[c];
        mean[i] = m;
        rstd[i] = s;
    }
}

// With xhat = (x - mean) * rstd and dxhat = dout * weight:
//   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
//   dweight += sum over rows of dout * xhat,  dbias += sum over rows of dout
static void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                               const float* inp, const float* weight, const float* mean,
                               const float* rstd, int N, int C) {
#pragma omp parallel for
    for (int i = 0; i < N; i++) {
        const float* x = inp + (size_t)i * C;
        const float* dy = dout + (size_t)i * C;
        float m = mean[i], s = rstd[i];
        double sum_dxhat = 0.0, sum_dxhat_xhat = 0.0;
        for (int c = 0; c < C; c++) {
            float xhat = (x[c] - m) * s;
            float dxhat = dy[c] * weight[c];
            sum_dxhat += dxhat;
            sum_dxhat_xhat += (double)dxhat * xhat;
        }
        float mean_dxhat = (float)(sum_dxhat / C);
        float mean_dxhat_xhat = (float)(sum_dxhat_xhat / C);
        float* dx = dinp + (size_t)i * C;
        for (int c = 0; c < C; c++) {
            float xhat = (x[c] - m) * s;
            float dxhat = dy[c] * weight[c];
            dx[c] += s * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
        }
    }
    // parameter gradients: a reduction over rows, so parallel over channels
#pragma omp parallel for
    for (int c = 0; c < C; c++) {
        float dw = 0.0f, db = 0.0f;
        for (int i = 0; i < N; i++) {
            float dy = dout[(size_t)i * C + c];
            dw += dy * (inp[(size_t)i * C + c] - mean[i]) * rstd[i];
            db += dy;
        }
        dweight[c] += dw;
        dbias[c] += db;
    }
}

// out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias (OC); bias may be NULL.
static void matmul_forward(float* out, const float* inp, const float* weight, const float* bias,
                           int N, int C, int OC) {
    sgemm(0, 1, N, OC, C, inp, C, weight, C, 0.0f, out, OC);
    if (bias == NULL) return;
#pragma omp parallel for
    for (int i = 0; i < N; i++) {
        float* row = out + (size_t)i * OC;
        for (int o = 0; o < OC; o++) row[o] += bias[o];
    }
}

// dinp += dout @ weight;  dweight += dout^T @ inp;  dbias += column sums of dout (if bias used).
static void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                            const float* inp, const float* weight, int N, int C, int OC) {
    sgemm(0, 0, N, C, OC, dout, OC, weight, C, 1.0f, dinp, C);
    sgemm(1, 0, OC, C, N, dout, OC, inp, C, 1.0f, dweight, C);
    if (dbias == NULL) return;
#pragma omp parallel for
    for (int o = 0; o < OC; o++) {
        float sum = 0.0f;
        for (int i = 0; i < N; i++) sum += dout[(size_t)i * OC + o];
        dbias[o] += sum;
    }
}

// Causal self-attention over qkv (B, T, 3C) laid out as [q | k | v], each split into NH heads of
// hs = C / NH contiguous channels. For each (b, t, h):
//   preatt[t2] = q_t . k_t2 / sqrt(hs) for t2 <= t;  att = softmax(preatt);  out = sum att[t2] v_t2
// preatt and att (B, NH, T, T) are kept for the backward pass; entries t2 > t stay 0.
static void attention_forward(float* out, float* preatt, float* att, const float* qkv, int B,
                              int T, int C, int NH) {
    int C3 = 3 * C;
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for collapse(3)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            for (int h = 0; h < NH; h++) {
                const float* q = qkv + ((size_t)b * T + t) * C3 + h * hs;
                float* preatt_row = preatt + (((size_t)b * NH + h) * T + t) * T;
                float* att_row = att + (((size_t)b * NH + h) * T + t) * T;
                float max_score = -INFINITY;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float* k = qkv + ((size_t)b * T + t2) * C3 + C + h * hs;
                    float dot = 0.0f;
                    for (int i = 0; i < hs; i++) dot += q[i] * k[i];
                    dot *= scale;
                    preatt_row[t2] = dot;
                    if (dot > max_score) max_score = dot;
                }
                float sum = 0.0f;
                for (int t2 = 0; t2 <= t; t2++) {
                    float e = expf(preatt_row[t2] - max_score);
                    att_row[t2] = e;
                    sum += e;
                }
                float inv_sum = 1.0f / sum;
                for (int t2 = 0; t2 <= t; t2++) att_row[t2] *= inv_sum;
                for (int t2 = t + 1; t2 < T; t2++) {
                    preatt_row[t2] = 0.0f;
                    att_row[t2] = 0.0f;
                }
                float* out_bth = out + ((size_t)b * T + t) * C + h * hs;
                for (int i = 0; i < hs; i++) out_bth[i] = 0.0f;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float* v = qkv + ((size_t)b * T + t2) * C3 + 2 * C + h * hs;
                    float a = att_row[t2];
                    for (int i = 0; i < hs; i++) out_bth[i] += a * v[i];
                }
            }
        }
    }
}

// Backward of attention_forward. A key/value position receives gradient from every later query,
// so the work is split over (b, h) pairs only and each pair walks t in order: no two threads ever
// add into the same dk or dv, and the summation order is fixed.
static void attention_backward(float* dqkv, float* dpreatt, float* datt, const float* dout,
                               const float* qkv, const float* att, int B, int T, int C, int NH) {
    int C3 = 3 * C;
    int hs = C / NH;
    float scale = 1.0f / sqrtf((float)hs);
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            for (int t = 0; t < T; t++) {
                const float* att_row = att + (((size_t)b * NH + h) * T + t) * T;
                float* datt_row = datt + (((size_t)b * NH + h) * T + t) * T;
                float* dpreatt_row = dpreatt + (((size_t)b * NH + h) * T + t) * T;
                const float* dout_bth = dout + ((size_t)b * T + t) * C + h * hs;
                const float* q = qkv + ((size_t)b * T + t) * C3 + h * hs;
                float* dq = dqkv + ((size_t)b * T + t) * C3 + h * hs;
                // out = sum att[t2] v[t2]
                for (int t2 = 0; t2 <= t; t2++) {
                    const float* v = qkv + ((size_t)b * T + t2) * C3 + 2 * C + h * hs;
                    float* dv = dqkv + ((size_t)b * T + t2) * C3 + 2 * C + h * hs;
                    float d = 0.0f;
                    for (int i = 0; i < hs; i++) {
                        d += v[i] * dout_bth[i];
                        dv[i] += att_row[t2] * dout_bth[i];
                    }
                    datt_row[t2] = d;
                }
                // softmax: dpreatt = att * (datt - sum(att * datt))
                float dot = 0.0f;
                for (int t2 = 0; t2 <= t; t2++) dot += att_row[t2] * datt_row[t2];
                for (int t2 = 0; t2 <= t; t2++) {
                    dpreatt_row[t2] = att_row[t2] * (datt_row[t2] - dot);
                }
                // preatt = q . k * scale
                for (int t2 = 0; t2 <= t; t2++) {
                    const float* k = qkv + ((size_t)b * T + t2) * C3 + C + h * hs;
                    float* dk = dqkv + ((size_t)b * T + t2) * C3 + C + h * hs;
                    float d = dpreatt_row[t2] * scale;
                    for (int i = 0; i < hs; i++) {
                        dq[i] += k[i] * d;
                        dk[i] += q[i] * d;
                    }
                }
            }
        }
    }
}

#define GELU_SCALING_FACTOR 0.7978845608028654f  // sqrt(2 / pi)

// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
static void gelu_forward(float* out, const float* inp, size_t N) {
#pragma omp parallel for
    for (size_t i = 0; i < N; i++) {
        float x = inp[i];
        float cube = 0.044715f * x * x * x;
        out[i] = 0.5f * x * (1.0f + tanhf(GELU_SCALING_FACTOR * (x + cube)));
    }
}

static void gelu_backward(float* dinp, const float* inp, const float* dout, size_t N) {
#pragma omp parallel for
    for (size_t i = 0; i < N; i++) {
        float x = inp[i];
        float cube = 0.044715f * x * x * x;
        float tanh_out = tanhf(GELU_SCALING_FACTOR * (x + cube));
        float sech_sq = 1.0f - tanh_out * tanh_out;
        float local_grad = 0.5f * (1.0f + tanh_out) +
                           0.5f * x * sech_sq * GELU_SCALING_FACTOR * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] += local_grad * dout[i];
    }
}

static void residual_forward(float* out, const float* a, const float* b, size_t N) {
#pragma omp parallel for
    for (size_t i = 0; i < N; i++) out[i] = a[i] + b[i];
}

static void residual_backward(float* da, float* db, const float* dout, size_t N) {
#pragma omp parallel for
    for (size_t i = 0; i < N; i++) {
        da[i] += dout[i];
        db[i] += dout[i];
    }
}

// Per row of logits (N, Vp): probabilities over the first V entries (padding gets 0) and, when
// targets are given, the loss -log p[target] computed as logsumexp - logit[target] so that it
// stays accurate when p[target] underflows.
static void softmax_crossentropy_forward(float* probs, float* losses, const float* logits,
                                         const int* targets, int N, int V, int Vp) {
#pragma omp parallel for
    for (int i = 0; i < N; i++) {
        const float* logits_row = logits + (size_t)i * Vp;
        float* probs_row = probs + (size_t)i * Vp;
        float max_logit = -INFINITY;
        for (int v = 0; v < V; v++) {
            if (logits_row[v] > max_logit) max_logit = logits_row[v];
        }
        double sum = 0.0;
        for (int v = 0; v < V; v++) {
            float e = expf(logits_row[v] - max_logit);
            probs_row[v] = e;
            sum += e;
        }
        float inv_sum = (float)(1.0 / sum);
        for (int v = 0; v < V; v++) probs_row[v] *= inv_sum;
        for (int v = V; v < Vp; v++) probs_row[v] = 0.0f;
        if (targets != NULL) {
            losses[i] = (float)(log(sum) + max_logit - logits_row[targets[i]]);
        }
    }
}

// dlogits = (probs - onehot(target)) * dloss for the first V columns; padding columns get 0.
static void softmax_crossentropy_backward(float* dlogits, const float* probs, const int* targets,
                                          float dloss, int N, int V, int Vp) {
#pragma omp parallel for
    for (int i = 0; i < N; i++) {
        float* dlogits_row = dlogits + (size_t)i * Vp;
        const float* probs_row = probs + (size_t)i * Vp;
        for (int v = 0; v < V; v++) dlogits_row[v] = probs_row[v] * dloss;
        dlogits_row[targets[i]] -= dloss;
        for (int v = V; v < Vp; v++) dlogits_row[v] = 0.0f;
    }
}

// ----------------------------------------------------------------------------------------------
// 2. The model: sizes, memory, init, checkpoints

// Points every tensor of *tensors into one buffer laid out in the on-disk order.
static void point_parameters(ParameterTensors* t, float* memory, const size_t* sizes) {
    float** ptrs[GPT2_NUM_PARAMETER_TENSORS] = {
        &t->wte,  &t->wpe,  &t->ln1w, &t->ln1b, &t->qkvw,    &t->qkvb,    &t->attprojw, &t->attprojb,
        &t->ln2w, &t->ln2b, &t->fcw,  &t->fcb,  &t->fcprojw, &t->fcprojb, &t->lnfw,     &t->lnfb};
    for (int i = 0; i < GPT2_NUM_PARAMETER_TENSORS; i++) {
        *ptrs[i] = memory;
        memory += sizes[i];
    }
}

static void fill_parameter_sizes(size_t* sizes, const GPT2Config* cfg) {
    size_t Vp = cfg->padded_vocab_size, C = cfg->channels, maxT = cfg->max_seq_len;
    size_t L = cfg->num_layers;
    sizes[0] = Vp * C;          // wte
    sizes[1] = maxT * C;        // wpe
    sizes[2] = L * C;           // ln1w
    sizes[3] = L * C;           // ln1b
    sizes[4] = L * 3 * C * C;   // qkvw
    sizes[5] = L * 3 * C;       // qkvb
    sizes[6] = L * C * C;       // attprojw
    sizes[7] = L * C;           // attprojb
    sizes[8] = L * C;           // ln2w
    sizes[9] = L * C;           // ln2b
    sizes[10] = L * 4 * C * C;  // fcw
    sizes[11] = L * 4 * C;      // fcb
    sizes[12] = L * C * 4 * C;  // fcprojw
    sizes[13] = L * C;          // fcprojb
    sizes[14] = C;              // lnfw
    sizes[15] = C;              // lnfb
}

// The 2-D weights, which get weight decay: wte, wpe, qkvw, attprojw, fcw, fcprojw.
static const int PARAMETER_IS_DECAYED[GPT2_NUM_PARAMETER_TENSORS] = {1, 1, 0, 0, 1, 0, 1, 0,
                                                                      0, 0, 1, 0, 1, 0, 0, 0};

static float* alloc_floats(size_t count, const char* what) {
    float* memory = (float*)calloc(count, sizeof(float));
    if (memory == NULL) {
        llmc_set_error("out of memory allocating %zu floats for %s", count, what);
    }
    return memory;
}

int gpt2_validate_config(const GPT2Config* c, const char* origin) {
    if (c->max_seq_len <= 0 || c->vocab_size <= 0 || c->padded_vocab_size <= 0 ||
        c->num_layers <= 0 || c->num_heads <= 0 || c->channels <= 0) {
        return llmc_set_error(
            "%s: model sizes must be positive (maxT=%d V=%d Vp=%d L=%d H=%d C=%d)", origin,
            c->max_seq_len, c->vocab_size, c->padded_vocab_size, c->num_layers, c->num_heads,
            c->channels);
    }
    if (c->max_seq_len > MAX_DIMENSION || c->vocab_size > MAX_DIMENSION ||
        c->padded_vocab_size > MAX_DIMENSION || c->channels > MAX_DIMENSION ||
        c->num_heads > c->channels || c->num_layers > MAX_LAYERS) {
        return llmc_set_error(
            "%s: model sizes out of range (maxT=%d V=%d Vp=%d L=%d H=%d C=%d; limits %d, L <= %d)",
            origin, c->max_seq_len, c->vocab_size, c->padded_vocab_size, c->num_layers,
            c->num_heads, c->channels, MAX_DIMENSION, MAX_LAYERS);
    }
    if (c->channels % c->num_heads != 0) {
        return llmc_set_error("%s: channels C=%d is not divisible by the number of heads H=%d",
                              origin, c->channels, c->num_heads);
    }
    if (c->padded_vocab_size < c->vocab_size) {
        return llmc_set_error("%s: padded vocab size Vp=%d is smaller than the vocab size V=%d",
                              origin, c->padded_vocab_size, c->vocab_size);
    }
    return LLMC_OK;
}

int gpt2_config_from_descriptor(GPT2Config* config, const char* descriptor) {
    static const struct {
        int depth, channels, heads;
    } widths[] = {{6, 384, 6},    {12, 768, 12},  {24, 1024, 16}, {36, 1280, 20},
                  {48, 1600, 25}, {60, 1920, 30}, {72, 2880, 30}, {84, 3456, 36}};
    int depth = 0;
    char trailing;
    if (descriptor == NULL || sscanf(descriptor, "d%d%c", &depth, &trailing) != 1) {
        return llmc_set_error("model descriptor '%s': expected d<depth>, e.g. d12",
                              descriptor ? descriptor : "(null)");
    }
    for (size_t i = 0; i < sizeof(widths) / sizeof(widths[0]); i++) {
        if (widths[i].depth == depth) {
            config->max_seq_len = 1024;
            config->vocab_size = 50257;
            config->padded_vocab_size = 50304;
            config->num_layers = depth;
            config->num_heads = widths[i].heads;
            config->channels = widths[i].channels;
            return LLMC_OK;
        }
    }
    return llmc_set_error(
        "model descriptor '%s': unknown depth (known: d6 d12 d24 d36 d48 d60 d72 d84)", descriptor);
}

// Zeroes *model, takes the config and allocates the parameter buffer.
static int gpt2_allocate(GPT2* model, const GPT2Config* config) {
    memset(model, 0, sizeof(*model));
    model->config = *config;
    model->mean_loss = -1.0f;
    fill_parameter_sizes(model->param_sizes, config);
    size_t total = 0;
    for (int i = 0; i < GPT2_NUM_PARAMETER_TENSORS; i++) total += model->param_sizes[i];
    model->num_parameters = total;
    model->params_memory = alloc_floats(total, "the model parameters");
    if (model->params_memory == NULL) return LLMC_ERR;
    point_parameters(&model->params, model->params_memory, model->param_sizes);
    return LLMC_OK;
}

int gpt2_build_from_config(GPT2* model, const GPT2Config* config, uint64_t seed) {
    if (gpt2_validate_config(config, "model config") != LLMC_OK) return LLMC_ERR;
    if (gpt2_allocate(model, config) != LLMC_OK) return LLMC_ERR;
    int L = config->num_layers;
    size_t C = config->channels;
    float residual_std = INIT_STD / sqrtf(2.0f * L);
    Rng rng;
    rng_init(&rng, seed);
    ParameterTensors* p = &model->params;
    // every tensor is drawn in the on-disk order from one stream, so a seed fixes all weights
    rng_normal_fill(&rng, p->wte, (size_t)config->vocab_size * C, 0.0f, INIT_STD);  // pad rows: 0
    rng_normal_fill(&rng, p->wpe, model->param_sizes[1], 0.0f, INIT_STD);
    for (size_t i = 0; i < model->param_sizes[2]; i++) p->ln1w[i] = 1.0f;
    rng_normal_fill(&rng, p->qkvw, model->param_sizes[4], 0.0f, INIT_STD);
    rng_normal_fill(&rng, p->attprojw, model->param_sizes[6], 0.0f, residual_std);
    for (size_t i = 0; i < model->param_sizes[8]; i++) p->ln2w[i] = 1.0f;
    rng_normal_fill(&rng, p->fcw, model->param_sizes[10], 0.0f, INIT_STD);
    rng_normal_fill(&rng, p->fcprojw, model->param_sizes[12], 0.0f, residual_std);
    for (size_t i = 0; i < C; i++) p->lnfw[i] = 1.0f;
    return LLMC_OK;
}

static float bf16_to_float(uint16_t bits) {
    uint32_t wide = (uint32_t)bits << 16;
    float value;
    memcpy(&value, &wide, sizeof(value));
    return value;
}

// Round to nearest even; NaN stays a (quiet) NaN.
static uint16_t float_to_bf16(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof(bits));
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x0040u);
    uint32_t rounding_bias = 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)((bits + rounding_bias) >> 16);
}

#define CHECKPOINT_CHUNK 65536

int gpt2_build_from_checkpoint(GPT2* model, const char* path) {
    memset(model, 0, sizeof(*model));
    FILE* file = fopen(path, "rb");
    if (file == NULL) return llmc_set_error("%s: cannot open model file", path);
    int header[256];
    if (fread(header, sizeof(int), 256, file) != 256) {
        fclose(file);
        return llmc_set_error("%s: truncated header (a model file starts with 1024 bytes)", path);
    }
    if (header[0] != GPT2_MODEL_MAGIC) {
        fclose(file);
        return llmc_set_error("%s: bad magic %d (expected %d): not a GPT-2 model file", path,
                              header[0], GPT2_MODEL_MAGIC);
    }
    int version = header[1];
    if (version != GPT2_MODEL_VERSION_FP32 && version != GPT2_MODEL_VERSION_BF16) {
        fclose(file);
        return llmc_set_error("%s: unsupported model version %d (expected 3 = fp32 or 5 = bf16)",
                              path, version);
    }
    GPT2Config config = {.max_seq_len = header[2],
                         .vocab_size = header[3],
                         .num_layers = header[4],
                         .num_heads = header[5],
                         .channels = header[6],
                         .padded_vocab_size = header[7]};
    if (gpt2_validate_config(&config, path) != LLMC_OK) {
        fclose(file);
        return LLMC_ERR;
    }
    // check the body length before allocating anything sized by the header
    size_t num_parameters = 0;
    size_t sizes[GPT2_NUM_PARAMETER_TENSORS];
    fill_parameter_sizes(sizes, &config);
    for (int i = 0; i < GPT2_NUM_PARAMETER_TENSORS; i++) num_parameters += sizes[i];
    size_t element_size = version == GPT2_MODEL_VERSION_FP32 ? 4 : 2;
    long expected_bytes = (long)(256 * sizeof(int) + num_parameters * element_size);
    if (fseek(file, 0, SEEK_END) != 0) {
        fclose(file);
        return llmc_set_error("%s: cannot seek", path);
    }
    long file_bytes = ftell(file);
    if (file_bytes != expected_bytes) {
        fclose(file);
        return llmc_set_error(
            "%s: file is %ld bytes but the header (L=%d H=%d C=%d Vp=%d maxT=%d, %s) implies %ld",
            path, file_bytes, config.num_layers, config.num_heads, config.channels,
            config.padded_vocab_size, config.max_seq_len, version == 3 ? "fp32" : "bf16",
            expected_bytes);
    }
    fseek(file, 256 * sizeof(int), SEEK_SET);
    if (gpt2_allocate(model, &config) != LLMC_OK) {
        fclose(file);
        return LLMC_ERR;
    }
    size_t read_count = 0;
    if (version == GPT2_MODEL_VERSION_FP32) {
        read_count = fread(model->params_memory, sizeof(float), num_parameters, file);
    } else {
        uint16_t* chunk = (uint16_t*)malloc(CHECKPOINT_CHUNK * sizeof(uint16_t));
        if (chunk == NULL) {
            fclose(file);
            gpt2_free(model);
            return llmc_set_error("%s: out of memory", path);
        }
        while (read_count < num_parameters) {
            size_t want = num_parameters - read_count;
            if (want > CHECKPOINT_CHUNK) want = CHECKPOINT_CHUNK;
            size_t got = fread(chunk, sizeof(uint16_t), want, file);
            for (size_t i = 0; i < got; i++) {
                model->params_memory[read_count + i] = bf16_to_float(chunk[i]);
            }
            read_count += got;
            if (got < want) break;
        }
        free(chunk);
    }
    fclose(file);
    if (read_count != num_parameters) {
        gpt2_free(model);
        return llmc_set_error("%s: read %zu of %zu parameters", path, read_count, num_parameters);
    }
    return LLMC_OK;
}

int gpt2_save_checkpoint(const GPT2* model, const char* path, int version) {
    if (version != GPT2_MODEL_VERSION_FP32 && version != GPT2_MODEL_VERSION_BF16) {
        return llmc_set_error("%s: cannot save model version %d (use 3 = fp32 or 5 = bf16)", path,
                              version);
    }
    size_t tmp_len = strlen(path) + 16;
    char* tmp_path = (char*)malloc(tmp_len);
    if (tmp_path == NULL) return llmc_set_error("%s: out of memory", path);
    snprintf(tmp_path, tmp_len, "%s.tmp", path);
    FILE* file = fopen(tmp_path, "wb");
    if (file == NULL) {
        llmc_set_error("%s: cannot open for writing", tmp_path);
        free(tmp_path);
        return LLMC_ERR;
    }
    const GPT2Config* c = &model->config;
    int header[256] = {0};
    header[0] = GPT2_MODEL_MAGIC;
    header[1] = version;
    header[2] = c->max_seq_len;
    header[3] = c->vocab_size;
    header[4] = c->num_layers;
    header[5] = c->num_heads;
    header[6] = c->channels;
    header[7] = c->padded_vocab_size;
    int ok = fwrite(header, sizeof(int), 256, file) == 256;
    if (ok && version == GPT2_MODEL_VERSION_FP32) {
        ok = fwrite(model->params_memory, sizeof(float), model->num_parameters, file) ==
             model->num_parameters;
    } else if (ok) {
        uint16_t* chunk = (uint16_t*)malloc(CHECKPOINT_CHUNK * sizeof(uint16_t));
        ok = chunk != NULL;
        for (size_t start = 0; ok && start < model->num_parameters; start += CHECKPOINT_CHUNK) {
            size_t count = model->num_parameters - start;
            if (count > CHECKPOINT_CHUNK) count = CHECKPOINT_CHUNK;
            for (size_t i = 0; i < count; i++) {
                chunk[i] = float_to_bf16(model->params_memory[start + i]);
            }
            ok = fwrite(chunk, sizeof(uint16_t), count, file) == count;
        }
        free(chunk);
    }
    ok = (fclose(file) == 0) && ok;
    if (!ok || rename(tmp_path, path) != 0) {
        remove(tmp_path);
        llmc_set_error("%s: write failed (disk full or not writable?)", path);
        free(tmp_path);
        return LLMC_ERR;
    }
    free(tmp_path);
    return LLMC_OK;
}

static void fill_activation_sizes(size_t* sizes, const GPT2Config* cfg, int B, int T) {
    size_t L = cfg->num_layers, NH = cfg->num_heads, C = cfg->channels;
    size_t Vp = cfg->padded_vocab_size, BT = (size_t)B * T;
    sizes[0] = BT * C;                  // encoded
    sizes[1] = L * BT * C;              // ln1
    sizes[2] = L * BT;                  // ln1_mean
    sizes[3] = L * BT;                  // ln1_rstd
    sizes[4] = L * BT * 3 * C;          // qkv
    sizes[5] = L * BT * C;              // atty
    sizes[6] = L * B * NH * T * T;      // preatt
    sizes[7] = L * B * NH * T * T;      // att
    sizes[8] = L * BT * C;              // attproj
    sizes[9] = L * BT * C;              // residual2
    sizes[10] = L * BT * C;             // ln2
    sizes[11] = L * BT;                 // ln2_mean
    sizes[12] = L * BT;                 // ln2_rstd
    sizes[13] = L * BT * 4 * C;         // fch
    sizes[14] = L * BT * 4 * C;         // fch_gelu
    sizes[15] = L * BT * C;             // fcproj
    sizes[16] = L * BT * C;             // residual3
    sizes[17] = BT * C;                 // lnf
    sizes[18] = BT;                     // lnf_mean
    sizes[19] = BT;                     // lnf_rstd
    sizes[20] = BT * Vp;                // logits
    sizes[21] = BT * Vp;                // probs
    sizes[22] = BT;                     // losses
}

static void point_activations(ActivationTensors* a, float* memory, const size_t* sizes) {
    float** ptrs[GPT2_NUM_ACTIVATION_TENSORS] = {
        &a->encoded,   &a->ln1,      &a->ln1_mean, &a->ln1_rstd, &a->qkv,       &a->atty,
        &a->preatt,    &a->att,      &a->attproj,  &a->residual2, &a->ln2,      &a->ln2_mean,
        &a->ln2_rstd,  &a->fch,      &a->fch_gelu, &a->fcproj,   &a->residual3, &a->lnf,
        &a->lnf_mean,  &a->lnf_rstd, &a->logits,   &a->probs,    &a->losses};
    for (int i = 0; i < GPT2_NUM_ACTIVATION_TENSORS; i++) {
        *ptrs[i] = memory;
        memory += sizes[i];
    }
}

static void free_activations(GPT2* model) {
    free(model->acts_memory);
    free(model->grads_acts_memory);
    free(model->inputs);
    free(model->targets);
    model->acts_memory = NULL;
    model->grads_acts_memory = NULL;
    model->inputs = NULL;
    model->targets = NULL;
    model->batch_size = 0;
    model->seq_len = 0;
}

// (Re)allocates the activation buffers for a batch of B x T; a no-op when the shape is unchanged.
static int ensure_activations(GPT2* model, int B, int T) {
    if (model->acts_memory != NULL && model->batch_size == B && model->seq_len == T) {
        return LLMC_OK;
    }
    free_activations(model);
    fill_activation_sizes(model->act_sizes, &model->config, B, T);
    size_t total = 0;
    for (int i = 0; i < GPT2_NUM_ACTIVATION_TENSORS; i++) total += model->act_sizes[i];
    model->num_activations = total;
    model->acts_memory = alloc_floats(total, "the activations");
    model->inputs = (int*)malloc((size_t)B * T * sizeof(int));
    model->targets = (int*)malloc((size_t)B * T * sizeof(int));
    if (model->acts_memory == NULL || model->inputs == NULL || model->targets == NULL) {
        free_activations(model);
        return llmc_set_error("out of memory allocating activations for B=%d T=%d", B, T);
    }
    point_activations(&model->acts, model->acts_memory, model->act_sizes);
    model->batch_size = B;
    model->seq_len = T;
    return LLMC_OK;
}

void gpt2_free(GPT2* model) {
    free_activations(model);
    free(model->params_memory);
    free(model->grads_memory);
    free(model->m_memory);
    free(model->v_memory);
    memset(model, 0, sizeof(*model));
}

// ----------------------------------------------------------------------------------------------
// 3. Forward, backward, AdamW

static int check_tokens(const int* tokens, size_t count, int V, const char* what) {
    for (size_t i = 0; i < count; i++) {
        if (tokens[i] < 0 || tokens[i] >= V) {
            return llmc_set_error("%s[%zu] = %d is not a token id in [0, %d)", what, i, tokens[i],
                                  V);
        }
    }
    return LLMC_OK;
}

int gpt2_forward(GPT2* model, const int* inputs, const int* targets, int B, int T) {
    if (model->params_memory == NULL) return llmc_set_error("gpt2_forward: model is not built");
    const GPT2Config* cfg = &model->config;
    int V = cfg->vocab_size, Vp = cfg->padded_vocab_size, L = cfg->num_layers;
    int NH = cfg->num_heads, C = cfg->channels;
    if (B <= 0 || T <= 0) return llmc_set_error("gpt2_forward: B=%d and T=%d must be > 0", B, T);
    if (T > cfg->max_seq_len) {
        return llmc_set_error("gpt2_forward: sequence length T=%d exceeds the model's maxT=%d", T,
                              cfg->max_seq_len);
    }
    size_t BT = (size_t)B * T;
    if (check_tokens(inputs, BT, V, "inputs") != LLMC_OK) return LLMC_ERR;
    if (targets != NULL && check_tokens(targets, BT, V, "targets") != LLMC_OK) return LLMC_ERR;
    if (ensure_activations(model, B, T) != LLMC_OK) return LLMC_ERR;
    memcpy(model->inputs, inputs, BT * sizeof(int));
    model->has_targets = targets != NULL;
    if (targets != NULL) memcpy(model->targets, targets, BT * sizeof(int));

    ParameterTensors p = model->params;
    ActivationTensors a = model->acts;
    encoder_forward(a.encoded, inputs, p.wte, p.wpe, B, T, C);
    for (int l = 0; l < L; l++) {
        const float* residual = l == 0 ? a.encoded : a.residual3 + (size_t)(l - 1) * BT * C;
        // this layer's slices of the parameters and activations
        const float* l_ln1w = p.ln1w + (size_t)l * C;
        const float* l_ln1b = p.ln1b + (size_t)l * C;
        const float* l_qkvw = p.qkvw + (size_t)l * 3 * C * C;
        const float* l_qkvb = p.qkvb + (size_t)l * 3 * C;
        const float* l_attprojw = p.attprojw + (size_t)l * C * C;
        const float* l_attprojb = p.attprojb + (size_t)l * C;
        const float* l_ln2w = p.ln2w + (size_t)l * C;
        const float* l_ln2b = p.ln2b + (size_t)l * C;
        const float* l_fcw = p.fcw + (size_t)l * 4 * C * C;
        const float* l_fcb = p.fcb + (size_t)l * 4 * C;
        const float* l_fcprojw = p.fcprojw + (size_t)l * C * 4 * C;
        const float* l_fcprojb = p.fcprojb + (size_t)l * C;
        float* l_ln1 = a.ln1 + (size_t)l * BT * C;
        float* l_ln1_mean = a.ln1_mean + (size_t)l * BT;
        float* l_ln1_rstd = a.ln1_rstd + (size_t)l * BT;
        float* l_qkv = a.qkv + (size_t)l * BT * 3 * C;
        float* l_atty = a.atty + (size_t)l * BT * C;
        float* l_preatt = a.preatt + (size_t)l * B * NH * T * T;
        float* l_att = a.att + (size_t)l * B * NH * T * T;
        float* l_attproj = a.attproj + (size_t)l * BT * C;
        float* l_residual2 = a.residual2 + (size_t)l * BT * C;
        float* l_ln2 = a.ln2 + (size_t)l * BT * C;
        float* l_ln2_mean = a.ln2_mean + (size_t)l * BT;
        float* l_ln2_rstd = a.ln2_rstd + (size_t)l * BT;
        float* l_fch = a.fch + (size_t)l * BT * 4 * C;
        float* l_fch_gelu = a.fch_gelu + (size_t)l * BT * 4 * C;
        float* l_fcproj = a.fcproj + (size_t)l * BT * C;
        float* l_residual3 = a.residual3 + (size_t)l * BT * C;

        layernorm_forward(l_ln1, l_ln1_mean, l_ln1_rstd, residual, l_ln1w, l_ln1b, BT, C);
        matmul_forward(l_qkv, l_ln1, l_qkvw, l_qkvb, BT, C, 3 * C);
        attention_forward(l_atty, l_preatt, l_att, l_qkv, B, T, C, NH);
        matmul_forward(l_attproj, l_atty, l_attprojw, l_attprojb, BT, C, C);
        residual_forward(l_residual2, residual, l_attproj, BT * C);
        layernorm_forward(l_ln2, l_ln2_mean, l_ln2_rstd, l_residual2, l_ln2w, l_ln2b, BT, C);
        matmul_forward(l_fch, l_ln2, l_fcw, l_fcb, BT, C, 4 * C);
        gelu_forward(l_fch_gelu, l_fch, BT * 4 * C);
        matmul_forward(l_fcproj, l_fch_gelu, l_fcprojw, l_fcprojb, BT, 4 * C, C);
        residual_forward(l_residual3, l_residual2, l_fcproj, BT * C);
    }
    const float* last = a.residual3 + (size_t)(L - 1) * BT * C;
    layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, last, p.lnfw, p.lnfb, BT, C);
    matmul_forward(a.logits, a.lnf, p.wte, NULL, BT, C, Vp);
    softmax_crossentropy_forward(a.probs, a.losses, a.logits, targets, BT, V, Vp);

    if (targets != NULL) {
        double sum = 0.0;
        for (size_t i = 0; i < BT; i++) sum += a.losses[i];
        model->mean_loss = (float)(sum / BT);
    } else {
        model->mean_loss = -1.0f;
    }
    return LLMC_OK;
}

static int ensure_gradients(GPT2* model) {
    if (model->grads_memory == NULL) {
        model->grads_memory = alloc_floats(model->num_parameters, "the parameter gradients");
        if (model->grads_memory == NULL) return LLMC_ERR;
        point_parameters(&model->grads, model->grads_memory, model->param_sizes);
    }
    return LLMC_OK;
}

int gpt2_zero_grad(GPT2* model) {
    if (ensure_gradients(model) != LLMC_OK) return LLMC_ERR;
    memset(model->grads_memory, 0, model->num_parameters * sizeof(float));
    return LLMC_OK;
}

int gpt2_backward(GPT2* model, float loss_scale) {
    if (model->acts_memory == NULL || !model->has_targets) {
        return llmc_set_error("gpt2_backward: needs a forward pass with targets first");
    }
    if (ensure_gradients(model) != LLMC_OK) return LLMC_ERR;
    if (model->grads_acts_memory == NULL) {
        model->grads_acts_memory = alloc_floats(model->num_activations, "activation gradients");
        if (model->grads_acts_memory == NULL) return LLMC_ERR;
        point_activations(&model->grads_acts, model->grads_acts_memory, model->act_sizes);
    }
    // activation gradients are accumulated into, so they start from zero every backward pass
    memset(model->grads_acts_memory, 0, model->num_activations * sizeof(float));

    int B = model->batch_size, T = model->seq_len;
    const GPT2Config* cfg = &model->config;
    int V = cfg->vocab_size, Vp = cfg->padded_vocab_size, L = cfg->num_layers;
    int NH = cfg->num_heads, C = cfg->channels;
    size_t BT = (size_t)B * T;
    ParameterTensors p = model->params;
    ParameterTensors g = model->grads;
    ActivationTensors a = model->acts;
    ActivationTensors ga = model->grads_acts;

    // the loss is the mean over B*T positions: each position's loss has gradient scale / (B*T)
    float dloss = loss_scale / (float)BT;
    softmax_crossentropy_backward(ga.logits, a.probs, model->targets, dloss, BT, V, Vp);
    matmul_backward(ga.lnf, g.wte, NULL, ga.logits, a.lnf, p.wte, BT, C, Vp);
    float* last = a.residual3 + (size_t)(L - 1) * BT * C;
    float* dlast = ga.residual3 + (size_t)(L - 1) * BT * C;
    layernorm_backward(dlast, g.lnfw, g.lnfb, ga.lnf, last, p.lnfw, a.lnf_mean, a.lnf_rstd, BT, C);

    for (int l = L - 1; l >= 0; l--) {
        const float* residual = l == 0 ? a.encoded : a.residual3 + (size_t)(l - 1) * BT * C;
        float* dresidual = l == 0 ? ga.encoded : ga.residual3 + (size_t)(l - 1) * BT * C;
        const float* l_ln1w = p.ln1w + (size_t)l * C;
        const float* l_qkvw = p.qkvw + (size_t)l * 3 * C * C;
        const float* l_attprojw = p.attprojw + (size_t)l * C * C;
        const float* l_ln2w = p.ln2w + (size_t)l * C;
        const float* l_fcw = p.fcw + (size_t)l * 4 * C * C;
        const float* l_fcprojw = p.fcprojw + (size_t)l * C * 4 * C;
        float* dl_ln1w = g.ln1w + (size_t)l * C;
        float* dl_ln1b = g.ln1b + (size_t)l * C;
        float* dl_qkvw = g.qkvw + (size_t)l * 3 * C * C;
        float* dl_qkvb = g.qkvb + (size_t)l * 3 * C;
        float* dl_attprojw = g.attprojw + (size_t)l * C * C;
        float* dl_attprojb = g.attprojb + (size_t)l * C;
        float* dl_ln2w = g.ln2w + (size_t)l * C;
        float* dl_ln2b = g.ln2b + (size_t)l * C;
        float* dl_fcw = g.fcw + (size_t)l * 4 * C * C;
        float* dl_fcb = g.fcb + (size_t)l * 4 * C;
        float* dl_fcprojw = g.fcprojw + (size_t)l * C * 4 * C;
        float* dl_fcprojb = g.fcprojb + (size_t)l * C;
        size_t att_offset = (size_t)l * B * NH * T * T;
        float* l_ln1 = a.ln1 + (size_t)l * BT * C;
        float* l_ln1_mean = a.ln1_mean + (size_t)l * BT;
        float* l_ln1_rstd = a.ln1_rstd + (size_t)l * BT;
        float* l_qkv = a.qkv + (size_t)l * BT * 3 * C;
        float* l_atty = a.atty + (size_t)l * BT * C;
        float* l_att = a.att + att_offset;
        float* l_residual2 = a.residual2 + (size_t)l * BT * C;
        float* l_ln2 = a.ln2 + (size_t)l * BT * C;
        float* l_ln2_mean = a.ln2_mean + (size_t)l * BT;
        float* l_ln2_rstd = a.ln2_rstd + (size_t)l * BT;
        float* l_fch = a.fch + (size_t)l * BT * 4 * C;
        float* l_fch_gelu = a.fch_gelu + (size_t)l * BT * 4 * C;
        float* dl_ln1 = ga.ln1 + (size_t)l * BT * C;
        float* dl_qkv = ga.qkv + (size_t)l * BT * 3 * C;
        float* dl_atty = ga.atty + (size_t)l * BT * C;
        float* dl_preatt = ga.preatt + att_offset;
        float* dl_att = ga.att + att_offset;
        float* dl_attproj = ga.attproj + (size_t)l * BT * C;
        float* dl_residual2 = ga.residual2 + (size_t)l * BT * C;
        float* dl_ln2 = ga.ln2 + (size_t)l * BT * C;
        float* dl_fch = ga.fch + (size_t)l * BT * 4 * C;
        float* dl_fch_gelu = ga.fch_gelu + (size_t)l * BT * 4 * C;
        float* dl_fcproj = ga.fcproj + (size_t)l * BT * C;
        float* dl_residual3 = ga.residual3 + (size_t)l * BT * C;

        residual_backward(dl_residual2, dl_fcproj, dl_residual3, BT * C);
        matmul_backward(dl_fch_gelu, dl_fcprojw, dl_fcprojb, dl_fcproj, l_fch_gelu, l_fcprojw, BT,
                        4 * C, C);
        gelu_backward(dl_fch, l_fch, dl_fch_gelu, BT * 4 * C);
        matmul_backward(dl_ln2, dl_fcw, dl_fcb, dl_fch, l_ln2, l_fcw, BT, C, 4 * C);
        layernorm_backward(dl_residual2, dl_ln2w, dl_ln2b, dl_ln2, l_residual2, l_ln2w, l_ln2_mean,
                           l_ln2_rstd, BT, C);
        residual_backward(dresidual, dl_attproj, dl_residual2, BT * C);
        matmul_backward(dl_atty, dl_attprojw, dl_attprojb, dl_attproj, l_atty, l_attprojw, BT, C,
                        C);
        attention_backward(dl_qkv, dl_preatt, dl_att, dl_atty, l_qkv, l_att, B, T, C, NH);
        matmul_backward(dl_ln1, dl_qkvw, dl_qkvb, dl_qkv, l_ln1, l_qkvw, BT, C, 3 * C);
        layernorm_backward(dresidual, dl_ln1w, dl_ln1b, dl_ln1, residual, l_ln1w, l_ln1_mean,
                           l_ln1_rstd, BT, C);
    }
    encoder_backward(g.wte, g.wpe, ga.encoded, model->inputs, B, T, C);
    return LLMC_OK;
}

// Sums of squares in fixed chunks, then the chunks in order: the same bits for any thread count.
#define NORM_CHUNK 65536

float gpt2_grad_norm(const GPT2* model) {
    if (model->grads_memory == NULL) return 0.0f;
    size_t n = model->num_parameters;
    size_t num_chunks = (n + NORM_CHUNK - 1) / NORM_CHUNK;
    double* partial = (double*)calloc(num_chunks, sizeof(double));
    if (partial == NULL) return NAN;
#pragma omp parallel for
    for (size_t chunk = 0; chunk < num_chunks; chunk++) {
        size_t end = (chunk + 1) * NORM_CHUNK < n ? (chunk + 1) * NORM_CHUNK : n;
        double sum = 0.0;
        for (size_t i = chunk * NORM_CHUNK; i < end; i++) {
            double gi = model->grads_memory[i];
            sum += gi * gi;
        }
        partial[chunk] = sum;
    }
    double total = 0.0;
    for (size_t chunk = 0; chunk < num_chunks; chunk++) total += partial[chunk];
    free(partial);
    return (float)sqrt(total);
}

int gpt2_update(GPT2* model, const AdamWSettings* s, int step) {
    if (model->grads_memory == NULL) {
        return llmc_set_error("gpt2_update: no gradients (run backward first)");
    }
    if (step < 1) return llmc_set_error("gpt2_update: step must count from 1, got %d", step);
    if (model->m_memory == NULL) {
        model->m_memory = alloc_floats(model->num_parameters, "AdamW m");
        model->v_memory = alloc_floats(model->num_parameters, "AdamW v");
        if (model->m_memory == NULL || model->v_memory == NULL) return LLMC_ERR;
    }
    float bias_correction1 = 1.0f - powf(s->beta1, (float)step);
    float bias_correction2 = 1.0f - powf(s->beta2, (float)step);
    size_t offset = 0;
    for (int t = 0; t < GPT2_NUM_PARAMETER_TENSORS; t++) {
        float weight_decay = PARAMETER_IS_DECAYED[t] ? s->weight_decay : 0.0f;
        float* param = model->params_memory + offset;
        const float* grad = model->grads_memory + offset;
        float* m = model->m_memory + offset;
        float* v = model->v_memory + offset;
        size_t count = model->param_sizes[t];
#pragma omp parallel for
        for (size_t i = 0; i < count; i++) {
            float gi = grad[i] * s->grad_scale;
            m[i] = s->beta1 * m[i] + (1.0f - s->beta1) * gi;
            v[i] = s->beta2 * v[i] + (1.0f - s->beta2) * gi * gi;
            float m_hat = m[i] / bias_correction1;
            float v_hat = v[i] / bias_correction2;
            param[i] -= s->learning_rate * (m_hat / (sqrtf(v_hat) + s->eps) + weight_decay * param[i]);
        }
        offset += count;
    }
    return LLMC_OK;
}
