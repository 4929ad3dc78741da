/*
profile_gpt2cu: one training step of a GPT-2 (bf16 engine), for a profiler.

    profile_gpt2cu [model] [B] [T]        defaults: d12 16 1024; model = descriptor or .bin file

Builds the model, runs one warm-up step (allocations, cuBLASLt plans, first-launch costs), then one
more step -- zero_grad, forward with loss, backward, global norm, AdamW -- between
cudaProfilerStart and cudaProfilerStop, so that `ncu --profile-from-start off` (or nsys with
--capture-range=cudaProfilerApi) sees exactly one step. Tokens are random (seeded). It prints the
step's time (CUDA events, outside any profiler this is the real step time) and the kernel order:
encoder, L forward blocks, classifier, backward blocks, optimizer (dev/bench/profile_step.py groups
ncu's table that way).
*/
#include <cuda_profiler_api.h>
#include <stdio.h>
#include <stdlib.h>

#include "llmc/error.h"
#include "llmc/gpt2cu.cuh"
#include "llmc/rand.h"

static void die(void) {
    fprintf(stderr, "error: %s\n", llmc_error());
    exit(1);
}

static int parse_positive(const char* text, const char* what) {
    char* end = NULL;
    const long value = strtol(text, &end, 10);
    if (end == text || *end != '\0' || value <= 0 || value > 1 << 20) {
        fprintf(stderr, "error: %s %s: expected a positive integer\n", what, text);
        exit(1);
    }
    return (int)value;
}

static void step(GPT2CU* model, const int* inputs, const int* targets, int B, int T, const AdamWParams* adamw,
                 int step_number) {
    gpt2cu_zero_grad(model);
    if (gpt2cu_forward(model, inputs, targets, B, T, FORWARD_TRAIN, 1.0f) != LLMC_OK) die();
    if (gpt2cu_backward(model) != LLMC_OK) die();
    gpt2cu_compute_grad_norm(model, 1.0f);
    gpt2cu_update(model, adamw, step_number, 1);
}

int main(int argc, char** argv) {
    if (argc > 4) {
        fprintf(stderr, "usage: %s [model (d12 or a .bin file)] [B] [T]\n", argv[0]);
        return 1;
    }
    const char* init = argc > 1 ? argv[1] : "d12";
    const int B = argc > 2 ? parse_positive(argv[2], "B") : 16;
    const int T = argc > 3 ? parse_positive(argv[3], "T") : 1024;
    cudaCheck(cudaSetDevice(0));
    matmul_init();
    GPT2CU model;
    if (gpt2cu_build(&model, init, 1337) != LLMC_OK) die();
    if (T > model.config.max_seq_len) {
        fprintf(stderr, "error: T %d: longer than the model's maximum sequence length %d\n", T,
                model.config.max_seq_len);
        return 1;
    }
    int* inputs = (int*)malloc((size_t)B * T * sizeof(int));
    int* targets = (int*)malloc((size_t)B * T * sizeof(int));
    if (inputs == NULL || targets == NULL) {
        fprintf(stderr, "error: out of host memory\n");
        return 1;
    }
    Rng rng;
    rng_init(&rng, 42);
    for (int i = 0; i < B * T; i++) {
        inputs[i] = (int)rng_below(&rng, (uint64_t)model.config.vocab_size);
        targets[i] = (int)rng_below(&rng, (uint64_t)model.config.vocab_size);
    }
    const AdamWParams adamw = {3e-4f, 0.9f, 0.95f, 1e-8f, 0.1f};
    step(&model, inputs, targets, B, T, &adamw, 1);  // warm-up
    cudaCheck(cudaDeviceSynchronize());

    cudaEvent_t start, stop;
    cudaCheck(cudaEventCreate(&start));
    cudaCheck(cudaEventCreate(&stop));
    cudaCheck(cudaProfilerStart());
    cudaCheck(cudaEventRecord(start, model.stream));
    step(&model, inputs, targets, B, T, &adamw, 2);
    cudaCheck(cudaEventRecord(stop, model.stream));
    cudaCheck(cudaEventSynchronize(stop));
    cudaCheck(cudaProfilerStop());
    float ms = 0.0f;
    cudaCheck(cudaEventElapsedTime(&ms, start, stop));
    printf("profile_gpt2cu %s: L=%d C=%d B=%d T=%d, one step (forward + backward + AdamW): %.3f ms, loss %.6f\n",
           init, model.config.num_layers, model.config.channels, B, T, ms, gpt2cu_read_mean_loss(&model));

    cudaCheck(cudaEventDestroy(start));
    cudaCheck(cudaEventDestroy(stop));
    free(inputs);
    free(targets);
    gpt2cu_free(&model);
    return 0;
}
