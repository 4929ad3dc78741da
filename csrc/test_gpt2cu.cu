/*
test_gpt2cu: checks the CUDA engine against the PyTorch reference's recorded numbers.

    test_gpt2cu[_fp32] [model.bin] [debug_state.bin]   (defaults: gpt2_124M.bin, gpt2_124M_debug_state.bin)

The files come from `python -m llmc.reference fixture --out DIR ...` (or llm.c's train_gpt2.py):
a model, one batch with its logits, loss and every parameter gradient, and the sidecar
"<debug state>.losses" with AdamW settings and the loss of each of a few AdamW steps. The program
runs one forward pass (logits, loss), one backward pass (every gradient), checks that a second
backward gives bit-identical gradients (determinism), then takes the sidecar's AdamW steps on the
same batch comparing each step's loss. Errors are relative, ||ours - ref|| / ||ref|| per tensor.
Exit status: 0 pass, 1 fail, 2 bad input.

Tolerances. fp32 build (test_gpt2cu_fp32): 1e-4 everywhere; every operation is fp32 (matmuls
without TF32), so the differences are fp32 rounding in a different summation order, ~1e-6.
bf16 build (test_gpt2cu): activations, weights and gradients are stored in bf16, whose rounding
error is up to 2^-9 = 0.2% per value (about 0.1% rms). Each layer rounds its activations several
times and the errors add up through the layers and the backward pass. Measured on an H200
(2026-11-23, two fixtures: L=2 C=256 H=4 V=50257 B=4 T=64 and L=3 C=128 H=4 V=1000 B=3 T=50):
logits 6.9e-3, loss 2.8e-5, gradients 2.7e-3 .. 7.8e-3 (every tensor), step losses <= 9.8e-5.
Tolerances, a few times those:
  logits  2e-2   (several bf16 roundings per layer on the way to the logits)
  loss    1e-3   (a mean over B*T positions: the per-position errors average out)
  grads   3e-2   (each gradient passes through the forward and backward pass in bf16, and the
                  gradient buffers are themselves bf16)
  steps   1e-3   (AdamW with fp32 master weights and stochastic rounding: the trajectory drifts
                  slowly from the fp32 one, by random rounding, not systematically)
Loose enough for bf16's rounding, tight enough that a wrong kernel (a missing scale, a transposed
operand, a dropped residual, an unmasked padded column) fails by orders of magnitude.
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llmc/debug_state.h"  // defines: DebugState, ReferenceLosses and their readers
#include "llmc/error.h"        // defines: llmc_error
#include "llmc/gpt2cu.cuh"     // defines: GPT2CU, gpt2cu_build/forward/backward/update

#ifdef LLMC_FP32
#define LOGITS_TOLERANCE 1e-4
#define LOSS_TOLERANCE 1e-4
#define GRAD_TOLERANCE 1e-4
#define STEP_LOSS_TOLERANCE 1e-4
#else
#define LOGITS_TOLERANCE 2e-2
#define LOSS_TOLERANCE 1e-3
#define GRAD_TOLERANCE 3e-2
#define STEP_LOSS_TOLERANCE 1e-3
#endif

static const char* const PARAMETER_NAMES[GPT2_NUM_PARAMETER_TENSORS] = {
    "wte",  "wpe",  "ln1w", "ln1b", "qkvw",    "qkvb",    "attprojw", "attprojb",
    "ln2w", "ln2b", "fcw",  "fcb",  "fcprojw", "fcprojb", "lnfw",     "lnfb"};

// ||a - b|| / ||b|| over a (rows, cols) block taken with row strides.
static double relative_error(const float* a, const float* b, size_t rows, size_t cols, size_t a_stride,
                             size_t b_stride) {
    double diff = 0.0, norm = 0.0;
    for (size_t r = 0; r < rows; r++) {
        for (size_t c = 0; c < cols; c++) {
            const double x = a[r * a_stride + c], y = b[r * b_stride + c];
            diff += (x - y) * (x - y);
            norm += y * y;
        }
    }
    if (norm == 0.0) return sqrt(diff);
    return sqrt(diff / norm);
}

static int report(const char* name, double error, double tolerance) {
    const int ok = error <= tolerance;  // NaN fails
    printf("  %-10s rel err %.3e  (tol %.0e)  %s\n", name, error, tolerance, ok ? "ok" : "FAIL");
    return ok;
}

static int fail_input(const char* what) {
    fprintf(stderr, "test_gpt2cu: %s: %s\n", what, llmc_error());
    return 2;
}

static void train_micro_step(GPT2CU* model, const DebugState* state) {
    gpt2cu_zero_grad(model);
    if (gpt2cu_forward(model, state->x, state->y, state->B, state->T, FORWARD_TRAIN, 1.0f) != LLMC_OK ||
        gpt2cu_backward(model) != LLMC_OK) {
        fprintf(stderr, "test_gpt2cu: engine failed: %s\n", llmc_error());
        exit(1);
    }
}

int main(int argc, char** argv) {
    if (argc > 3 || (argc > 1 && argv[1][0] == '-')) {
        fprintf(stderr, "usage: test_gpt2cu [model.bin] [debug_state.bin]\n");
        return 2;
    }
    const char* model_path = argc > 1 ? argv[1] : "gpt2_124M.bin";
    const char* state_path = argc > 2 ? argv[2] : "gpt2_124M_debug_state.bin";

    matmul_init();
    GPT2CU model;
    if (gpt2cu_build(&model, model_path, 0) != LLMC_OK) return fail_input("model");
    const GPT2Config* cfg = &model.config;
    printf("test_gpt2cu (%s) model %s: L=%d H=%d C=%d V=%d Vp=%d maxT=%d, %zu parameters\n", LLMC_PRECISION_NAME,
           model_path, cfg->num_layers, cfg->num_heads, cfg->channels, cfg->vocab_size, cfg->padded_vocab_size,
           cfg->max_seq_len, model.num_parameters);
    DebugState state;
    if (debug_state_read(&state, state_path, cfg, model.num_parameters) != LLMC_OK) return fail_input("debug state");
    ReferenceLosses ref;
    if (reference_losses_read(&ref, state_path) != LLMC_OK) return fail_input("loss sidecar");
    const int B = state.B, T = state.T;
    const size_t BT = (size_t)B * T, Vp = cfg->padded_vocab_size;
    printf("debug state %s: B=%d T=%d, logits with %d columns\n", state_path, B, T, state.logits_width);
    for (size_t i = 0; i < BT; i++) {
        if (state.x[i] < 0 || state.x[i] >= cfg->vocab_size || state.y[i] < 0 || state.y[i] >= cfg->vocab_size) {
            fprintf(stderr, "test_gpt2cu: %s: token id out of range at position %zu\n", state_path, i);
            return 2;
        }
    }

    int all_ok = 1;
    printf("forward (logits, loss):\n");
    if (gpt2cu_forward(&model, state.x, state.y, B, T, FORWARD_LOSS, 1.0f) != LLMC_OK) {
        fprintf(stderr, "test_gpt2cu: engine failed: %s\n", llmc_error());
        return 1;
    }
    float* logits = (float*)malloc(BT * Vp * sizeof(float));
    float* grads = (float*)malloc(model.num_parameters * sizeof(float));
    float* grads2 = (float*)malloc(model.num_parameters * sizeof(float));
    if (logits == NULL || grads == NULL || grads2 == NULL) {
        fprintf(stderr, "test_gpt2cu: out of host memory\n");
        return 1;
    }
    gpt2cu_download(logits, model.acts.logits, BT * Vp, model.stream);
    const float loss = gpt2cu_read_mean_loss(&model);
    all_ok &= report("logits", relative_error(logits, state.logits, BT, state.logits_width, Vp, state.logits_width),
                     LOGITS_TOLERANCE);
    all_ok &= report("loss", fabs((double)loss - state.loss) / fabs((double)state.loss), LOSS_TOLERANCE);
    printf("  (loss: ours %.7f, reference %.7f)\n", loss, state.loss);

    printf("backward (gradients of every parameter tensor):\n");
    train_micro_step(&model, &state);
    gpt2cu_download(grads, model.grads_memory, model.num_parameters, model.stream);
    size_t offset = 0;
    for (int i = 0; i < GPT2_NUM_PARAMETER_TENSORS; i++) {
        const size_t n = model.param_sizes[i];
        all_ok &= report(PARAMETER_NAMES[i], relative_error(grads + offset, state.grads + offset, 1, n, n, n),
                         GRAD_TOLERANCE);
        offset += n;
    }

    printf("determinism (a second forward + backward):\n");
    train_micro_step(&model, &state);
    gpt2cu_download(grads2, model.grads_memory, model.num_parameters, model.stream);
    const int same = memcmp(grads, grads2, model.num_parameters * sizeof(float)) == 0;
    printf("  gradients %s\n", same ? "bit-identical: ok" : "DIFFER: FAIL");
    all_ok &= same;

    int steps_checked = 0;
    if (!ref.found) {
        printf("AdamW steps: SKIPPED, no sidecar file %s.losses with the reference's losses\n", state_path);
    } else {
        printf("AdamW steps (lr %g, betas %g %g, eps %g, weight decay %g):\n", ref.adamw.learning_rate,
               ref.adamw.beta1, ref.adamw.beta2, ref.adamw.eps, ref.adamw.weight_decay);
        AdamWParams adamw = {ref.adamw.learning_rate, ref.adamw.beta1, ref.adamw.beta2, ref.adamw.eps,
                             ref.adamw.weight_decay};
        for (int step = 0; step < ref.num_steps; step++) {
            train_micro_step(&model, &state);
            const float step_loss = gpt2cu_read_mean_loss(&model);
            const double error = fabs((double)step_loss - ref.losses[step]) / fabs(ref.losses[step]);
            const int ok = error <= STEP_LOSS_TOLERANCE;
            printf("  step %2d loss %.7f reference %.7f rel err %.3e %s\n", step, step_loss, ref.losses[step], error,
                   ok ? "ok" : "FAIL");
            all_ok &= ok;
            gpt2cu_update(&model, &adamw, step + 1, 0);
            steps_checked++;
        }
        cudaCheck(cudaDeviceSynchronize());
    }

    if (all_ok) {
        printf("overall: PASS (%s: logits, loss, %d gradients, determinism, %d AdamW steps%s)\n", LLMC_PRECISION_NAME,
               GPT2_NUM_PARAMETER_TENSORS, steps_checked, ref.found ? "" : "; optimizer steps not checked");
    } else {
        printf("overall: FAIL (%s)\n", LLMC_PRECISION_NAME);
    }
    free(logits);
    free(grads);
    free(grads2);
    reference_losses_free(&ref);
    debug_state_free(&state);
    gpt2cu_free(&model);
    matmul_free();
    return all_ok ? 0 : 1;
}
