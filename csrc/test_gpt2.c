/*
test_gpt2: checks the CPU engine against a reference implementation's recorded numbers.

    test_gpt2 [model.bin] [debug_state.bin]      (defaults: llm.c's gpt2_124M.bin and
                                                  gpt2_124M_debug_state.bin)

The model file and the debug state come from the PyTorch reference (`python -m llmc.reference
fixture`, or llm.c's own train_gpt2.py). The program runs one forward and backward pass on the
recorded batch and compares logits, loss and the gradient of every parameter tensor; then, when the
sidecar "<debug state>.losses" is present, it takes as many AdamW steps on the same batch as the
sidecar lists and compares each step's loss. Errors are relative: ||ours - ref|| / ||ref||.
It prints one line per tensor, an overall verdict, and exits 1 on failure (2 on bad input).
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llmc/debug_state.h"  // defines: DebugState, ReferenceLosses and their readers
#include "llmc/error.h"        // defines: llmc_error
#include "llmc/gpt2_cpu.h"     // defines: GPT2 and the engine's forward/backward/update

// Tolerances on the relative error, fp32 against a reference that is at least fp32.
#define LOGITS_TOLERANCE 1e-5
#define LOSS_TOLERANCE 1e-5
#define GRAD_TOLERANCE 1e-4

static const char* const PARAMETER_NAMES[GPT2_NUM_PARAMETER_TENSORS] = {
    "wte",  "wpe",  "ln1w", "ln1b", "qkvw",    "qkvb",    "attprojw", "attprojb",
    "ln2w", "ln2b", "fcw",  "fcb",  "fcprojw", "fcprojb", "lnfw",     "lnfb"};

// ||a - b|| / ||b|| over n elements taken with strides (so that logits of width V can be compared
// with the first V columns of our Vp-wide logits).
static double relative_error(const float* a, const float* b, size_t rows, size_t cols,
                             size_t a_stride, size_t b_stride) {
    double diff = 0.0, norm = 0.0;
    for (size_t r = 0; r < rows; r++) {
        for (size_t c = 0; c < cols; c++) {
            double x = a[r * a_stride + c], y = b[r * b_stride + c];
            diff += (x - y) * (x - y);
            norm += y * y;
        }
    }
    if (norm == 0.0) return sqrt(diff);  // an all-zero reference: compare absolutely
    return sqrt(diff / norm);
}

static int report(const char* name, double error, double tolerance) {
    int ok = error <= tolerance;  // NaN fails
    printf("  %-10s rel err %.3e  (tol %.0e)  %s\n", name, error, tolerance, ok ? "ok" : "FAIL");
    return ok;
}

static int fail_input(const char* what) {
    fprintf(stderr, "test_gpt2: %s: %s\n", what, llmc_error());
    return 2;
}

int main(int argc, char** argv) {
    if (argc > 3 || (argc > 1 && argv[1][0] == '-')) {
        fprintf(stderr, "usage: test_gpt2 [model.bin] [debug_state.bin]\n");
        return 2;
    }
    const char* model_path = argc > 1 ? argv[1] : "gpt2_124M.bin";
    const char* state_path = argc > 2 ? argv[2] : "gpt2_124M_debug_state.bin";

    GPT2 model;
    if (gpt2_build_from_checkpoint(&model, model_path) != LLMC_OK) return fail_input("model");
    const GPT2Config* cfg = &model.config;
    printf("model %s: L=%d H=%d C=%d V=%d Vp=%d maxT=%d, %zu parameters\n", model_path,
           cfg->num_layers, cfg->num_heads, cfg->channels, cfg->vocab_size, cfg->padded_vocab_size,
           cfg->max_seq_len, model.num_parameters);
    DebugState state;
    if (debug_state_read(&state, state_path, cfg, model.num_parameters) != LLMC_OK) {
        gpt2_free(&model);
        return fail_input("debug state");
    }
    ReferenceLosses ref;
    if (reference_losses_read(&ref, state_path) != LLMC_OK) {
        debug_state_free(&state);
        gpt2_free(&model);
        return fail_input("loss sidecar");
    }
    int B = state.B, T = state.T;
    printf("debug state %s: B=%d T=%d, logits with %d columns\n", state_path, B, T,
           state.logits_width);

    int all_ok = 1;
    printf("forward and backward on the recorded batch:\n");
    if (gpt2_forward(&model, state.x, state.y, B, T) != LLMC_OK ||
        gpt2_zero_grad(&model) != LLMC_OK || gpt2_backward(&model, 1.0f) != LLMC_OK) {
        fprintf(stderr, "test_gpt2: engine failed: %s\n", llmc_error());
        return 1;
    }
    size_t BT = (size_t)B * T;
    double logits_error = relative_error(model.acts.logits, state.logits, BT, state.logits_width,
                                         cfg->padded_vocab_size, state.logits_width);
    all_ok &= report("logits", logits_error, LOGITS_TOLERANCE);
    double loss_error = fabs((double)model.mean_loss - state.loss) / fabs((double)state.loss);
    all_ok &= report("loss", loss_error, LOSS_TOLERANCE);
    printf("  (loss: ours %.7f, reference %.7f)\n", model.mean_loss, state.loss);
    size_t offset = 0;
    for (int i = 0; i < GPT2_NUM_PARAMETER_TENSORS; i++) {
        size_t n = model.param_sizes[i];
        double error = relative_error(model.grads_memory + offset, state.grads + offset, 1, n, n, n);
        all_ok &= report(PARAMETER_NAMES[i], error, GRAD_TOLERANCE);
        offset += n;
    }

    int steps_checked = 0;
    if (!ref.found) {
        printf("AdamW steps: SKIPPED, no sidecar file %s.losses with the reference's losses\n",
               state_path);
    } else {
        printf("AdamW steps (lr %g, betas %g %g, eps %g, weight decay %g):\n",
               ref.adamw.learning_rate, ref.adamw.beta1, ref.adamw.beta2, ref.adamw.eps,
               ref.adamw.weight_decay);
        for (int step = 0; step < ref.num_steps; step++) {
            if (step > 0) {  // step 0's forward and backward already ran above
                if (gpt2_forward(&model, state.x, state.y, B, T) != LLMC_OK ||
                    gpt2_zero_grad(&model) != LLMC_OK || gpt2_backward(&model, 1.0f) != LLMC_OK) {
                    fprintf(stderr, "test_gpt2: engine failed: %s\n", llmc_error());
                    return 1;
                }
            }
            double error = fabs((double)model.mean_loss - ref.losses[step]) / fabs(ref.losses[step]);
            int ok = error <= LOSS_TOLERANCE;
            printf("  step %2d loss %.7f reference %.7f rel err %.3e %s\n", step, model.mean_loss,
                   ref.losses[step], error, ok ? "ok" : "FAIL");
            all_ok &= ok;
            if (gpt2_update(&model, &ref.adamw, step + 1) != LLMC_OK) {
                fprintf(stderr, "test_gpt2: update failed: %s\n", llmc_error());
                return 1;
            }
            steps_checked++;
        }
    }

    if (all_ok) {
        printf("overall: PASS (logits, loss, %d gradients, %d AdamW steps%s)\n",
               GPT2_NUM_PARAMETER_TENSORS, steps_checked,
               ref.found ? "" : "; optimizer steps not checked");
    } else {
        printf("overall: FAIL\n");
    }
    reference_losses_free(&ref);
    debug_state_free(&state);
    gpt2_free(&model);
    return all_ok ? 0 : 1;
}
