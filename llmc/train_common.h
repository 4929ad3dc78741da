/*
What the two trainers share: csrc/train_gpt2.c (CPU, C11) and csrc/train_gpt2cu.cu (CUDA, C++).
Header-only (static functions), included by exactly one translation unit of each program.

  defaults      the data, model and tokenizer file names both trainers fall back to
  flag helpers  flag_error (message, usage, exit 1), parse_integer / parse_float (whole string,
                range-checked). The includer defines `static void print_usage(FILE* out)`, the
                trainer's own flag list, which flag_error prints after the message.
  settings      CommonSettings: the flags both trainers take (-i -j -e -o -b -t -d -x -l -u -q -k
                -c -v -m -s -g -n -tk -seed -gc -sh -pr -pn), common_settings_init (the CPU
                trainer's defaults), is_common_flag, parse_common_flag (stores one flag, returns
                0 for a flag it does not know), validate_common_settings (after all flags: -pr
                below -pn, -g within -t, -d a multiple of B*T*processes; fills the -1 defaults)
  schedule      learning_rate_at: linear warmup, then cosine / linear / constant / wsd decay
                towards lr * final_frac (llm.c's -l -u -q -k)
  sampling      sample_token: one draw from softmax(logits) at temperature 1
  run set-up    check_seq_len (-t within the model's maxT), validation_batches, run_steps (-x,
                or one epoch), load_sample_tokenizer (-tk or the one next to the data), open_log
  output        die (prints llmc_error(), exit 1), now_seconds, file_exists, make_output_dir,
                table_row (the "| name | value |" configuration table, also written to the log),
                table_model_rows / table_batch_rows / table_eval_rows (rows both tables hold),
                print_sample (a generated sample between "---" lines)

These are program-level helpers: unlike library code (llmc/error.h) they print and exit. Column
widths of the table: TRAIN_TABLE_NAME_WIDTH / TRAIN_TABLE_VALUE_WIDTH, defined by the includer
before this header when it wants other widths than 24 / 48.
*/
#ifndef LLMC_TRAIN_COMMON_H
#define LLMC_TRAIN_COMMON_H

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "llmc/dataloader.h"  // defines: DataLoader, dataloader_batches_per_epoch
#include "llmc/error.h"       // defines: llmc_error, LLMC_OK
#include "llmc/gpt2_cpu.h"    // defines: GPT2Config
#include "llmc/rand.h"        // defines: Rng, rng_uniform
#include "llmc/tokenizer.h"   // defines: Tokenizer, tokenizer_init, tokenizer_print

#define DEFAULT_TRAIN_PATTERN "dev/data/tinyshakespeare/tiny_shakespeare_train.bin"
#define DEFAULT_VAL_PATTERN "dev/data/tinyshakespeare/tiny_shakespeare_val.bin"
#define DEFAULT_MODEL_FILE "gpt2_124M.bin"
#define DEFAULT_MODEL_DESCRIPTOR "d12"
#define DEFAULT_TOKENIZER_NAME "gpt2_tokenizer.bin"
#define LOG_FILE_NAME "main.log"
#define DEFAULT_GEN_T 64         // sample length when -g is not given (or T if that is smaller)
#define MAX_SEQ_LEN 1048576      // -t and -g: anything larger is a typo
#define MAX_GRAD_ACCUM 1048576   // -d: at most this many micro-steps per step
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
// the settings both trainers take

typedef struct {
    const char* train_pattern;   // -i
    const char* val_pattern;     // -j
    int val_pattern_given;       // an explicit -j must match; the default may be absent
    const char* init;            // -e; NULL: DEFAULT_MODEL_FILE if present, else the descriptor
    const char* output_dir;      // -o; NULL: no checkpoints, no log
    int B;                       // -b
    int T;                       // -t
    long long total_batch_size;  // -d: tokens per step over all processes; -1: B * T * processes
    int max_steps;               // -x; -1: one epoch of the training data
    float learning_rate;         // -l
    int warmup_steps;            // -u
    float final_lr_frac;         // -q
    const char* schedule;        // -k
    float weight_decay;          // -c
    int val_every;               // -v
    int val_max_batches;         // -m; -1: the whole validation set
    int sample_every;            // -s
    int gen_T;                   // -g; -1: DEFAULT_GEN_T or T if that is smaller
    int checkpoint_every;        // -n
    const char* tokenizer_path;  // -tk; NULL: DEFAULT_TOKENIZER_NAME next to the training data
    unsigned long long seed;     // -seed
    float grad_clip;             // -gc; 0: no clipping
    int shuffle;                 // -sh
    int process_rank;            // -pr
    int num_processes;           // -pn
} CommonSettings;

static const char* const COMMON_FLAGS[] = {"-i", "-j", "-e",  "-o",  "-b",  "-t",    "-d",  "-x",
                                           "-l", "-u", "-q",  "-k",  "-c",  "-v",    "-m",  "-s",
                                           "-g", "-n", "-tk", "-gc", "-sh", "-seed", "-pr", "-pn"};

// The defaults of the usage texts (the CUDA trainer then sets its own -t and -g).
static void common_settings_init(CommonSettings* c) {
    memset(c, 0, sizeof(*c));
    c->train_pattern = DEFAULT_TRAIN_PATTERN;
    c->val_pattern = DEFAULT_VAL_PATTERN;
    c->B = 4;
    c->T = 64;
    c->total_batch_size = -1;
    c->max_steps = -1;
    c->learning_rate = 3e-4f;
    c->final_lr_frac = 1.0f;
    c->schedule = "cosine";
    c->val_every = 20;
    c->val_max_batches = 20;
    c->sample_every = 20;
    c->gen_T = -1;
    c->seed = 1337;
    c->grad_clip = 1.0f;
    c->shuffle = 1;
    c->num_processes = 1;
}

static int is_common_flag(const char* flag) {
    for (size_t k = 0; k < sizeof(COMMON_FLAGS) / sizeof(COMMON_FLAGS[0]); k++) {
        if (strcmp(flag, COMMON_FLAGS[k]) == 0) return 1;
    }
    return 0;
}

// Stores the value v of one of COMMON_FLAGS (flag_error when v is bad) and returns 1; returns 0,
// storing nothing, for any other flag. -b is at most max_batch.
static int parse_common_flag(CommonSettings* c, const char* flag, const char* v, int max_batch) {
    if (strcmp(flag, "-i") == 0) {
        c->train_pattern = v;
    } else if (strcmp(flag, "-j") == 0) {
        c->val_pattern = v;
        c->val_pattern_given = 1;
    } else if (strcmp(flag, "-e") == 0) {
        c->init = v;
    } else if (strcmp(flag, "-o") == 0) {
        c->output_dir = v;
    } else if (strcmp(flag, "-b") == 0) {
        c->B = (int)parse_integer(flag, v, 1, max_batch);
    } else if (strcmp(flag, "-t") == 0) {
        c->T = (int)parse_integer(flag, v, 1, MAX_SEQ_LEN);
    } else if (strcmp(flag, "-d") == 0) {
        c->total_batch_size = parse_integer(flag, v, -1, (long long)1 << 40);
        if (c->total_batch_size == 0) flag_error(flag, v, "must be positive (or -1)");
    } else if (strcmp(flag, "-x") == 0) {
        c->max_steps = (int)parse_integer(flag, v, -1, INT_MAX - 1);
        if (c->max_steps == 0) flag_error(flag, v, "must be positive (or -1: one epoch)");
    } else if (strcmp(flag, "-l") == 0) {
        c->learning_rate = parse_float(flag, v, 0.0, 10.0);
    } else if (strcmp(flag, "-u") == 0) {
        c->warmup_steps = (int)parse_integer(flag, v, 0, INT_MAX - 1);
    } else if (strcmp(flag, "-q") == 0) {
        c->final_lr_frac = parse_float(flag, v, 0.0, 1.0);
    } else if (strcmp(flag, "-k") == 0) {
        if (strcmp(v, "cosine") != 0 && strcmp(v, "linear") != 0 &&
            strcmp(v, "constant") != 0 && strcmp(v, "wsd") != 0) {
            flag_error(flag, v, "unknown schedule (cosine, linear, constant, wsd)");
        }
        c->schedule = v;
    } else if (strcmp(flag, "-c") == 0) {
        c->weight_decay = parse_float(flag, v, 0.0, 10.0);
    } else if (strcmp(flag, "-v") == 0) {
        c->val_every = (int)parse_integer(flag, v, 0, INT_MAX);
    } else if (strcmp(flag, "-m") == 0) {
        c->val_max_batches = (int)parse_integer(flag, v, -1, INT_MAX);
        if (c->val_max_batches == 0) flag_error(flag, v, "must be positive (or -1: all)");
    } else if (strcmp(flag, "-s") == 0) {
        c->sample_every = (int)parse_integer(flag, v, 0, INT_MAX);
    } else if (strcmp(flag, "-g") == 0) {
        c->gen_T = (int)parse_integer(flag, v, 1, MAX_SEQ_LEN);
    } else if (strcmp(flag, "-n") == 0) {
        c->checkpoint_every = (int)parse_integer(flag, v, 0, INT_MAX);
    } else if (strcmp(flag, "-tk") == 0) {
        c->tokenizer_path = v;
    } else if (strcmp(flag, "-seed") == 0) {
        char* end = NULL;
        errno = 0;
        c->seed = strtoull(v, &end, 10);
        if (v[0] == '\0' || v[0] == '-' || *end != '\0' || errno != 0) {
            flag_error(flag, v, "not a non-negative integer");
        }
    } else if (strcmp(flag, "-gc") == 0) {
        c->grad_clip = parse_float(flag, v, 0.0, 1e30);
    } else if (strcmp(flag, "-sh") == 0) {
        c->shuffle = (int)parse_integer(flag, v, 0, 1);
    } else if (strcmp(flag, "-pr") == 0) {
        c->process_rank = (int)parse_integer(flag, v, 0, 65535);
    } else if (strcmp(flag, "-pn") == 0) {
        c->num_processes = (int)parse_integer(flag, v, 1, 65536);
    } else {
        return 0;
    }
    return 1;
}

// The checks that need several flags, once all are parsed; fills gen_T and total_batch_size
// when they were left at -1.
static void validate_common_settings(CommonSettings* c) {
    char value[32];
    if (c->process_rank >= c->num_processes) {
        snprintf(value, sizeof(value), "%d", c->process_rank);
        flag_error("-pr", value, "must be smaller than -pn");
    }
    if (c->gen_T == -1) c->gen_T = c->T < DEFAULT_GEN_T ? c->T : DEFAULT_GEN_T;
    if (c->gen_T > c->T) {
        snprintf(value, sizeof(value), "%d", c->gen_T);
        flag_error("-g", value, "longer than -t: samples are generated within one context of T");
    }
    const long long per_micro_step = (long long)c->B * c->T * c->num_processes;
    if (c->total_batch_size == -1) c->total_batch_size = per_micro_step;
    snprintf(value, sizeof(value), "%lld", c->total_batch_size);
    if (c->total_batch_size % per_micro_step != 0) {
        char what[160];
        snprintf(what, sizeof(what), "not a multiple of B*T*processes = %d*%d*%d = %lld", c->B,
                 c->T, c->num_processes, per_micro_step);
        flag_error("-d", value, what);
    }
    if (c->total_batch_size / per_micro_step > MAX_GRAD_ACCUM) {
        flag_error("-d", value, "needs more than 1048576 gradient accumulation steps");
    }
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

// ---------------------------------------------------------------------------------------------
// run set-up

// flag_error for -t when T is longer than the model's maximum sequence length.
static void check_seq_len(int T, const GPT2Config* cfg, const char* init) {
    if (T <= cfg->max_seq_len) return;
    char value[32], what[160];
    snprintf(value, sizeof(value), "%d", T);
    snprintf(what, sizeof(what), "longer than the model's maximum sequence length %d (%.100s)",
             cfg->max_seq_len, init);
    flag_error("-t", value, what);
}

// Batches per validation: -m, at most the whole validation set (-m -1: all of it).
static int validation_batches(const DataLoader* val_loader, int max_batches) {
    const size_t available = dataloader_batches_per_epoch(val_loader);
    if (max_batches >= 0 && (size_t)max_batches <= available) return max_batches;
    return available < INT_MAX ? (int)available : INT_MAX;
}

// Steps of the run: -x, or (-x -1) the steps of one epoch of the training data, at least 1.
static int run_steps(int max_steps, const DataLoader* train_loader, int grad_accum) {
    if (max_steps != -1) return max_steps;
    const size_t epoch_steps = dataloader_batches_per_epoch(train_loader) / (size_t)grad_accum;
    if (epoch_steps == 0) return 1;
    return epoch_steps < INT_MAX ? (int)epoch_steps : INT_MAX - 1;
}

// The tokenizer of the samples: -tk (path_flag, must load), else DEFAULT_TOKENIZER_NAME in the
// directory of the first training shard when it is there. Returns 1 when *tokenizer is loaded and
// covers the model's vocabulary, else 0 with the reason in *note. path: the file tried (size).
static int load_sample_tokenizer(Tokenizer* tokenizer, const char* path_flag,
                                 const DataLoader* train_loader, int vocab_size, char* path,
                                 size_t size, const char** note) {
    *note = "";
    if (path_flag != NULL) {
        if (tokenizer_init(tokenizer, path_flag) != LLMC_OK) die();
        snprintf(path, size, "%s", path_flag);
    } else {
        const char* first_shard = train_loader->shard_paths[0];
        const char* slash = strrchr(first_shard, '/');
        const int dir_length = slash == NULL ? 0 : (int)(slash - first_shard + 1);
        snprintf(path, size, "%.*s%s", dir_length, first_shard, DEFAULT_TOKENIZER_NAME);
        if (!file_exists(path)) {
            *note = " (not found: no samples)";
            return 0;
        }
        if (tokenizer_init(tokenizer, path) != LLMC_OK) die();
    }
    if (tokenizer->vocab_size < (uint32_t)vocab_size ||
        tokenizer->eot_token >= (uint32_t)vocab_size) {
        *note = " (does not cover the model's vocabulary: no samples)";
        tokenizer_free(tokenizer);
        return 0;
    }
    return 1;
}

// Prints a generated sample (tokens[0..n)) between "---" lines.
static void print_sample(const Tokenizer* tokenizer, const int* tokens, int n) {
    printf("generating:\n---\n");
    if (tokenizer_print(tokenizer, stdout, tokens, (size_t)n) != LLMC_OK) die();
    printf("\n---\n");
    fflush(stdout);
}

// NULL without an output directory; else creates it and opens dir/LOG_FILE_NAME with mode ("w",
// or "a" to continue the log of a resumed run), exiting 1 when it cannot.
static FILE* open_log(const char* dir, const char* mode) {
    if (dir == NULL) return NULL;
    make_output_dir(dir);
    char log_path[4096];
    snprintf(log_path, sizeof(log_path), "%s/%s", dir, LOG_FILE_NAME);
    FILE* log = fopen(log_path, mode);
    if (log == NULL) {
        fprintf(stderr, "error: %s: cannot open the log file: %s\n", log_path, strerror(errno));
        exit(1);
    }
    return log;
}

// Rows of the table both trainers print: the model's shape ...
static void table_model_rows(FILE* log, const GPT2Config* cfg, size_t num_parameters) {
    table_row(log, "max seq len (maxT)", "%d", cfg->max_seq_len);
    table_row(log, "vocab size (V / Vp)", "%d / %d", cfg->vocab_size, cfg->padded_vocab_size);
    table_row(log, "layers / heads / channels", "%d / %d / %d", cfg->num_layers, cfg->num_heads,
              cfg->channels);
    table_row(log, "parameters", "%zu", num_parameters);
}

// ... the output and the batch arithmetic ...
static void table_batch_rows(FILE* log, const CommonSettings* c, int grad_accum, int num_steps) {
    table_row(log, "output dir", "%s", c->output_dir ? c->output_dir : "- (no checkpoints)");
    table_row(log, "micro batch B", "%d", c->B);
    table_row(log, "sequence length T", "%d", c->T);
    table_row(log, "total batch size (tokens)", "%lld", c->total_batch_size);
    table_row(log, "grad accumulation steps", "%d", grad_accum);
    table_row(log, "steps", "%d%s", num_steps, c->max_steps == -1 ? " (one epoch)" : "");
}

// ... and how often the run validates, samples and saves.
static void table_eval_rows(FILE* log, const CommonSettings* c, int val_num_batches) {
    table_row(log, "val every / batches", "%d / %d", c->val_every, val_num_batches);
    table_row(log, "sample every / length", "%d / %d", c->sample_every, c->gen_T);
    table_row(log, "checkpoint every", "%d", c->checkpoint_every);
}

#endif  // LLMC_TRAIN_COMMON_H
