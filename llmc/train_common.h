/*
What the two trainers share: csrc/train_gpt2.c (CPU, C11) and csrc/train_gpt2cu.cu (CUDA, C++).
Header-only (static functions), included by exactly one translation unit of each program.

  defaults      the data, model and tokenizer file names both trainers fall back to
  flag helpers  flag_error (message, usage, exit 1), parse_integer / parse_float (whole string,
                range-checked). The includer defines `static void print_usage(FILE* out)`, the
                trainer's own flag list, which flag_error prints after the message.
  schedule      learning_rate_at: linear warmup, then cosine / linear / constant / wsd decay
                towards lr * final_frac (llm.c's -l -u -q -k)
  sampling      sample_token: one draw from softmax(logits) at temperature 1
  output        die (prints llmc_error(), exit 1), now_seconds, file_exists, make_output_dir,
                table_row (the "| name | value |" configuration table, also written to the log)

These are program-level helpers: unlike library code (llmc/error.h) they print and exit. Column
widths of the table: TRAIN_TABLE_NAME_WIDTH / TRAIN_TABLE_VALUE_WIDTH, defined by the includer
before this header when it wants other widths than 24 / 48.
*/
#ifndef LLMC_TRAIN_COMMON_H
#define LLMC_TRAIN_COMMON_H

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "llmc/error.h"  // defines: llmc_error
#include "llmc/rand.h"   // defines: Rng, rng_uniform

#define DEFAULT_TRAIN_PATTERN "dev/data/tinyshakespeare/tiny_shakespeare_train.bin"
#define DEFAULT_VAL_PATTERN "dev/data/tinyshakespeare/tiny_shakespeare_val.bin"
#define DEFAULT_MODEL_FILE "gpt2_124M.bin"
#define DEFAULT_MODEL_DESCRIPTOR "d12"
#define DEFAULT_TOKENIZER_NAME "gpt2_tokenizer.bin"
#define LOG_FILE_NAME "main.log"
#define WSD_DECAY_FRACTION 0.2f  // wsd: the last 20% of the steps decay the learning rate
#define TRAIN_PI 3.14159265358979323846

#ifndef TRAIN_TABLE_NAME_WIDTH
#define TRAIN_TABLE_NAME_WIDTH 24
#endif
#ifndef TRAIN_TABLE_VALUE_WIDTH
#define TRAIN_TABLE_VALUE_WIDTH 48
#endif

// ---------------------------------------------------------------------------------------------
// flags

static void print_usage(FILE* out);  // defined by the trainer that includes this header

// Prints "error: flag <flag> [<value>]: <what>" and the usage to stderr, then exits 1.
static void flag_error(const char* flag, const char* value, const char* what) {
    if (value != NULL) {
        fprintf(stderr, "error: flag %s %s: %s\n", flag, value, what);
    } else {
        fprintf(stderr, "error: flag %s: %s\n", flag, what);
    }
    print_usage(stderr);
    exit(1);
}

// The whole of value as a base-10 integer in [low, high], else flag_error.
static long long parse_integer(const char* flag, const char* value, long long low, long long high) {
    char* end = NULL;
    errno = 0;
    const long long x = strtoll(value, &end, 10);
    if (value[0] == '\0' || *end != '\0' || errno != 0) flag_error(flag, value, "not an integer");
    if (x < low || x > high) {
        char what[128];
        snprintf(what, sizeof(what), "must be in [%lld, %lld]", low, high);
        flag_error(flag, value, what);
    }
    return x;
}

// The whole of value as a finite number in [low, high], else flag_error.
static float parse_float(const char* flag, const char* value, double low, double high) {
    char* end = NULL;
    errno = 0;
    const double x = strtod(value, &end);
    if (value[0] == '\0' || *end != '\0' || errno != 0 || !isfinite(x)) {
        flag_error(flag, value, "not a finite number");
    }
    if (x < low || x > high) {
        char what[128];
        snprintf(what, sizeof(what), "must be in [%g, %g]", low, high);
        flag_error(flag, value, what);
    }
    return (float)x;
}

// ---------------------------------------------------------------------------------------------
// errors, time, files

static void die(void) {
    fprintf(stderr, "error: %s\n", llmc_error());
    exit(1);
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int file_exists(const char* path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

// Creates dir (one level) unless it exists; exits 1 when it cannot or when dir is not a directory.
static void make_output_dir(const char* dir) {
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "error: %s: cannot create the output directory: %s\n", dir, strerror(errno));
        exit(1);
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "error: %s: the output path exists and is not a directory\n", dir);
        exit(1);
    }
}

// Prints one "| name | value |" row to stdout and, as "# name value", to the log.
static void table_row(FILE* log, const char* name, const char* fmt, ...) __attribute__((format(printf, 3, 4)));

static void table_row(FILE* log, const char* name, const char* fmt, ...) {
    char value[512];
    va_list args;
    va_start(args, fmt);
    vsnprintf(value, sizeof(value), fmt, args);
    va_end(args);
    printf("| %-*s | %-*s |\n", TRAIN_TABLE_NAME_WIDTH, name, TRAIN_TABLE_VALUE_WIDTH, value);
    if (log != NULL) fprintf(log, "# %s %s\n", name, value);
}

// ---------------------------------------------------------------------------------------------
// learning rate schedule, sampling

// Learning rate of step (0-based) out of num_steps: linear warmup from lr/warmup to lr over
// warmup steps, then the schedule ("cosine", "linear", "constant" or "wsd", validated by the
// caller) decays towards lr * final_frac at the last step. wsd: stable at lr, then a 1 - sqrt
// decay over the last WSD_DECAY_FRACTION of the steps.
static float learning_rate_at(float lr, int warmup, float final_frac, const char* schedule, int step,
                              int num_steps) {
    const float min_lr = lr * final_frac;
    if (step < warmup) return lr * (float)(step + 1) / (float)warmup;
    if (strcmp(schedule, "constant") == 0) return lr;
    const int decay_steps = num_steps - warmup;
    const float progress = decay_steps > 0 ? (float)(step - warmup) / (float)decay_steps : 1.0f;
    if (strcmp(schedule, "cosine") == 0) {
        return min_lr + 0.5f * (1.0f + cosf((float)TRAIN_PI * progress)) * (lr - min_lr);
    }
    if (strcmp(schedule, "linear") == 0) return lr - progress * (lr - min_lr);
    int decay_start = (int)((1.0f - WSD_DECAY_FRACTION) * (float)num_steps);
    if (decay_start < warmup) decay_start = warmup;
    if (step < decay_start) return lr;
    const int decay_length = num_steps - decay_start;
    const float p = decay_length > 0 ? (float)(step - decay_start) / (float)decay_length : 1.0f;
    return min_lr + (1.0f - sqrtf(p)) * (lr - min_lr);
}

// Draws a token from softmax(logits[0..V)) at temperature 1.
static int sample_token(const float* logits, int V, Rng* rng) {
    float max_logit = logits[0];
    for (int i = 1; i < V; i++) {
        if (logits[i] > max_logit) max_logit = logits[i];
    }
    double total = 0.0;
    for (int i = 0; i < V; i++) total += exp((double)(logits[i] - max_logit));
    const double threshold = rng_uniform(rng) * total;
    double cumulative = 0.0;
    for (int i = 0; i < V; i++) {
        cumulative += exp((double)(logits[i] - max_logit));
        if (threshold < cumulative) return i;
    }
    return V - 1;  // rounding left threshold just above the sum
}

#endif  // LLMC_TRAIN_COMMON_H
