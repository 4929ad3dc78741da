/*
Reading the parity files written by a reference implementation (llmc.reference, or llm.c's own
train_gpt2.py), for test_gpt2 and test_gpt2cu.

debug state (llm.c format): header of 256 int32 [0]=20240327, [1]=2, [2]=B, [3]=T; then
x (B*T int32), y (B*T int32), logits (B*T*V fp32; llm.c writes the unpadded V columns, and a file
with Vp columns is accepted too: the width is told by the file length), loss (fp32), and the
gradient of every parameter (fp32, the model file's order and padded shapes).

loss sidecar (llmc's addition; the llm.c format has no place for it): a text file next to the debug
state named "<debug state>.losses":
    # llmc reference losses v1
    learning_rate 0.0001
    beta1 0.9
    ...                      (beta2, eps, weight_decay)
    loss 5.270009994506836   (one line per AdamW step: the loss before that step's update)
*/
#ifndef LLMC_DEBUG_STATE_H
#define LLMC_DEBUG_STATE_H

#include <stddef.h>

#include "llmc/gpt2_cpu.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DEBUG_STATE_MAGIC 20240327
#define DEBUG_STATE_VERSION 2

typedef struct {
    int B;
    int T;
    int logits_width;  // V (llm.c) or Vp
    int* x;            // (B, T)
    int* y;            // (B, T)
    float* logits;     // (B, T, logits_width)
    float loss;
    float* grads;  // num_parameters, in parameter order
} DebugState;

typedef struct {
    int found;  // 0 when there is no sidecar file
    AdamWSettings adamw;
    int num_steps;
    float* losses;  // (num_steps)
} ReferenceLosses;

// Reads a debug state for a model of the given config (the file does not record the config).
int debug_state_read(DebugState* state, const char* path, const GPT2Config* config,
                     size_t num_parameters);
void debug_state_free(DebugState* state);
// Reads "<debug_state_path>.losses"; a missing file is not an error (found = 0).
int reference_losses_read(ReferenceLosses* ref, const char* debug_state_path);
void reference_losses_free(ReferenceLosses* ref);

#ifdef __cplusplus
}
#endif
#endif  // LLMC_DEBUG_STATE_H
