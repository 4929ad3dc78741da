/*
GPT-2 on the CPU in fp32: the reference engine every other engine is checked against.

The model (../shared/DESIGN.md, section 3): token + position embeddings; L pre-LayerNorm blocks
x += attn(ln1(x)); x += mlp(ln2(x)); a final LayerNorm; logits through the tied token embedding;
mean cross-entropy over the B*T targets. All parameters live in one contiguous buffer in the on-disk
order, so a checkpoint is one fwrite and Python can view every tensor without a copy. Gradients,
AdamW's m and v, and the activations are laid out the same way.

Lifecycle:
    GPT2 model;
    gpt2_build_from_checkpoint(&model, "gpt2_124M.bin")  or  gpt2_build_from_config(&model, cfg, seed)
    gpt2_forward(&model, inputs, targets, B, T)   // targets may be NULL: logits only
    gpt2_zero_grad(&model); gpt2_backward(&model, 1.0f);   // gradients accumulate (+=)
    gpt2_update(&model, &adamw_settings, step);
    gpt2_save_checkpoint(&model, "out.bin", 5);
    gpt2_free(&model);
Every function that can fail returns LLMC_OK or LLMC_ERR with a message in llmc_error().
*/
#ifndef LLMC_GPT2_CPU_H
#define LLMC_GPT2_CPU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GPT2_MODEL_MAGIC 20240326
#define GPT2_MODEL_VERSION_FP32 3
#define GPT2_MODEL_VERSION_BF16 5
#define GPT2_EOT 50256

typedef struct {
    int max_seq_len;        // maxT: rows of the position embedding (1024 for GPT-2)
    int vocab_size;         // V: real tokens (50257)
    int padded_vocab_size;  // Vp: V rounded up to a multiple of 128 (50304); rows >= V never predicted
    int num_layers;         // L
    int num_heads;          // H
    int channels;           // C, a multiple of H
} GPT2Config;

#define GPT2_NUM_PARAMETER_TENSORS 16
typedef struct {
    float* wte;       // (Vp, C)
    float* wpe;       // (maxT, C)
    float* ln1w;      // (L, C)
    float* ln1b;      // (L, C)
    float* qkvw;      // (L, 3C, C)
    float* qkvb;      // (L, 3C)
    float* attprojw;  // (L, C, C)
    float* attprojb;  // (L, C)
    float* ln2w;      // (L, C)
    float* ln2b;      // (L, C)
    float* fcw;       // (L, 4C, C)
    float* fcb;       // (L, 4C)
    float* fcprojw;   // (L, C, 4C)
    float* fcprojb;   // (L, C)
    float* lnfw;      // (C)
    float* lnfb;      // (C)
} ParameterTensors;

#define GPT2_NUM_ACTIVATION_TENSORS 23
typedef struct {
    float* encoded;    // (B, T, C) token + position embedding
    float* ln1;        // (L, B, T, C)
    float* ln1_mean;   // (L, B, T)
    float* ln1_rstd;   // (L, B, T)
    float* qkv;        // (L, B, T, 3C)
    float* atty;       // (L, B, T, C) attention output before the projection
    float* preatt;     // (L, B, H, T, T) scaled scores
    float* att;        // (L, B, H, T, T) softmaxed, causal
    float* attproj;    // (L, B, T, C)
    float* residual2;  // (L, B, T, C) after the attention residual
    float* ln2;        // (L, B, T, C)
    float* ln2_mean;   // (L, B, T)
    float* ln2_rstd;   // (L, B, T)
    float* fch;        // (L, B, T, 4C) before GELU
    float* fch_gelu;   // (L, B, T, 4C)
    float* fcproj;     // (L, B, T, C)
    float* residual3;  // (L, B, T, C) block output
    float* lnf;        // (B, T, C)
    float* lnf_mean;   // (B, T)
    float* lnf_rstd;   // (B, T)
    float* logits;     // (B, T, Vp)
    float* probs;      // (B, T, Vp) softmax over the first V entries, 0 for padding
    float* losses;     // (B, T) per-position cross-entropy
} ActivationTensors;

// AdamW hyperparameters. Weight decay applies to the 2-D weights only (wte, wpe, qkvw, attprojw,
// fcw, fcprojw), never to biases or LayerNorm parameters, as in GPT-2 training practice.
typedef struct {
    float learning_rate;
    float beta1;
    float beta2;
    float eps;
    float weight_decay;
    float grad_scale;  // gradients are multiplied by this before the update (1.0, or a clip factor)
} AdamWSettings;

typedef struct {
    GPT2Config config;
    ParameterTensors params;
    size_t param_sizes[GPT2_NUM_PARAMETER_TENSORS];
    float* params_memory;
    size_t num_parameters;
    ParameterTensors grads;
    float* grads_memory;  // allocated on the first backward
    float* m_memory;      // AdamW state, allocated on the first update
    float* v_memory;
    ActivationTensors acts;
    size_t act_sizes[GPT2_NUM_ACTIVATION_TENSORS];
    float* acts_memory;
    size_t num_activations;
    ActivationTensors grads_acts;
    float* grads_acts_memory;
    int batch_size;  // B and T of the current activation buffers (0 before the first forward)
    int seq_len;
    int* inputs;   // (B, T) copy of the last forward's inputs
    int* targets;  // (B, T) copy of the last forward's targets
    int has_targets;
    float mean_loss;  // loss of the last forward with targets; -1 without targets
} GPT2;

// Fills a config from a descriptor "d<L>" (d12, d24, d36, d48 are GPT-2's sizes; any depth works:
// C = 64 * L rounded to GPT-2's widths for the standard ones, see the implementation).
int gpt2_config_from_descriptor(GPT2Config* config, const char* descriptor);
// Checks a config for sizes the engine cannot run (C % H != 0, Vp < V, non-positive sizes, ...).
int gpt2_validate_config(const GPT2Config* config, const char* origin);

// Zeroes *model and allocates parameters; init is GPT-2's: normal(0, 0.02), residual projections
// (attprojw, fcprojw) scaled by 1/sqrt(2L), biases 0, LayerNorm weights 1. Padded wte rows are 0.
int gpt2_build_from_config(GPT2* model, const GPT2Config* config, uint64_t seed);
// Reads an fp32 (v3) or bf16 (v5) model file; validates magic, version, sizes and file length.
int gpt2_build_from_checkpoint(GPT2* model, const char* path);
// Writes the parameters as fp32 (version 3) or bf16 (version 5, round to nearest even) to a
// temporary file and renames it into place, so a crash never leaves a half-written checkpoint.
int gpt2_save_checkpoint(const GPT2* model, const char* path, int version);
void gpt2_free(GPT2* model);

// Forward pass over inputs (B, T) token ids. With targets (B, T) also computes the per-position
// losses and mean_loss. Ids must be in [0, V); T <= maxT. Reallocates activations when B or T change.
int gpt2_forward(GPT2* model, const int* inputs, const int* targets, int B, int T);
// Allocates the gradient buffer on first use and sets every gradient to zero.
int gpt2_zero_grad(GPT2* model);
// Backward pass of the last forward (which must have had targets). Gradients of the mean loss,
// multiplied by loss_scale (1/grad_accum_steps when accumulating), are ADDED to model->grads.
int gpt2_backward(GPT2* model, float loss_scale);
// L2 norm of all gradients, accumulated in double.
float gpt2_grad_norm(const GPT2* model);
// One AdamW step; step counts from 1 (bias correction).
int gpt2_update(GPT2* model, const AdamWSettings* settings, int step);

#ifdef __cplusplus
}
#endif
#endif  // LLMC_GPT2_CPU_H
