/*
train_gpt2cu: GPT-2 training on one NVIDIA GPU (Hopper, sm_90), bf16 with fp32 master weights
(train_gpt2cu) or all fp32 (train_gpt2cu_fp32). The model and its kernels are llmc/gpt2cu.cuh.

Flags follow llm.c's train_gpt2cu so its recipes carry over, and the CPU trainer's (train_gpt2)
for the rest: the same schedule, AdamW, data order, logs and checkpoints, so the two trainers can
be compared step by step.

One step: zero the gradients and the loss accumulator; for each of grad_accum micro-batches run the
forward pass (whose classifier writes dlogits in place) and the backward pass; the global gradient
norm and the clip factor are computed on the device and read by AdamW there; then the step's loss
and norm are read back: the one host synchronization of a step (two when -sl/-sg ask to skip
outliers, which must know the loss before the update).

Phase 1 (see docs/benchmarks.md, CUDA engine): one process only (-pn 1, -z 0). -r 1/2 recompute the
GELU (and the layernorms) in the backward to save memory; -h 1 scores a HellaSwag eval file with the
validation (llmc/evalloader.h, the rule of dev/data/hellaswag.py). Checkpoints (-n, -o) hold the
model and the optimizer state, and -y 1 resumes from the latest one exactly: the resumed run's
losses are bit-identical to an uninterrupted run's (same flags). Not saved: the -sl/-sg outlier
windows (they refill after a resume).

    ./train_gpt2cu -i "data/train_*.bin" -j "data/val_*.bin" -e d12 -b 64 -t 1024 -d 524288 -x 100
*/
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <time.h>

#include "llmc/dataloader.h"  // defines: DataLoader, dataloader_init, dataloader_next_batch
#include "llmc/error.h"       // defines: llmc_error, LLMC_OK
#include "llmc/evalloader.h"  // defines: EvalLoader, evalloader_init (HellaSwag)
#include "llmc/gpt2cu.cuh"    // defines: GPT2CU, gpt2cu_build/forward/backward/update, kernels
#include "llmc/rand.h"        // defines: Rng, rng_init, rng_uniform
#include "llmc/tokenizer.h"   // defines: Tokenizer, tokenizer_init, tokenizer_print
#define TRAIN_TABLE_NAME_WIDTH 26
#define TRAIN_TABLE_VALUE_WIDTH 50
#include "llmc/train_common.h"  // defines: CommonSettings, parse_common_flag, learning_rate_at,
                                //          load_sample_tokenizer, open_log, table_row

#define H100_BF16_PEAK_FLOPS 989.4e12  // dense bf16 tensor-core peak of an H100/H200 SXM
#define OUTLIER_WINDOW 128
#define DEFAULT_HELLASWAG_FILE "dev/data/hellaswag/hellaswag_val.bin"
#define MAX_BATCH 1048576  // -b: anything larger is a typo

// ----------------------------------------------------------------------------------------------
// settings and flags

typedef struct {
    CommonSettings common;  // the flags both trainers take (llmc/train_common.h)
    int resume;
    int recompute;
    int hellaswag;
    const char* hellaswag_path;
    float skip_loss_z;  // -sl: skip the update when the loss z-score exceeds this (0: off)
    float skip_norm_z;  // -sg: same for the gradient norm
    int zero_stage;
    int gpus_per_node;
    const char* nccl_init_method;
    const char* server_ip;
    const char* fs_path;
} Settings;

static void print_usage(FILE* out) {
    fprintf(out,
            "usage: train_gpt2cu [flags]   (" LLMC_PRECISION_NAME " build)\n"
            "  -i <pattern>  training token shards (glob)      default " DEFAULT_TRAIN_PATTERN "\n"
            "  -j <pattern>  validation token shards (glob)    default " DEFAULT_VAL_PATTERN "\n"
            "  -e <init>     model .bin file (fp32 v3 or bf16 v5) or descriptor d6/d12/d24/...\n"
            "  -o <dir>      output directory for model_%%08d.bin checkpoints and " LOG_FILE_NAME "\n"
            "  -b <int>      micro-batch size B (default 4)\n"
            "  -t <int>      sequence length T (default 1024)\n"
            "  -d <int>      total batch size in tokens, a multiple of B*T (default B*T)\n"
            "  -x <int>      max steps (default -1: one epoch)\n"
            "  -l <float>    learning rate (default 3e-4)\n"
            "  -u <int>      warmup steps (default 0)\n"
            "  -q <float>    final learning rate as a fraction of -l (default 1.0)\n"
            "  -k <name>     schedule: cosine, linear, constant, wsd (default cosine)\n"
            "  -c <float>    weight decay (default 0.0)\n"
            "  -v <int>      validation every N steps, 0: never (default 20)\n"
            "  -m <int>      validation batches, -1: all (default 20)\n"
            "  -s <int>      sample every N steps, 0: only at the end (default 20)\n"
            "  -g <int>      sample length in tokens, at most T (default 64)\n"
            "  -n <int>      checkpoint (model + optimizer state) every N steps, 0: only at the end (default 0)\n"
            "  -y <0|1>      resume from the latest complete checkpoint in -o (none there: start fresh)\n"
            "  -r <int>      recompute to save memory: 0 none, 1 GELU, 2 GELU + layernorms (default 0)\n"
            "  -h <0|1>      HellaSwag eval with the validation (every -v steps and at the end);\n"
            "                -h alone or --help: this help\n"
            "  -hf <path>    HellaSwag eval file (default " DEFAULT_HELLASWAG_FILE ")\n"
            "  -sl <float>   skip the update when the loss z-score exceeds this, 0: off (default 0)\n"
            "  -sg <float>   skip the update when the grad-norm z-score exceeds this, 0: off\n"
            "  -tk <path>    tokenizer .bin (default " DEFAULT_TOKENIZER_NAME " next to the training data)\n"
            "  -seed <int>   seed for the init, shuffling, rounding and sampling (default 1337)\n"
            "  -gc <float>   clip the global gradient norm to this, 0: no clipping (default 1.0)\n"
            "  -sh <0|1>     shuffle the training data (default 1)\n"
            "  -z <int>      ZeRO stage (phase 1: 0 only)\n"
            "  -pn <int>     number of processes (phase 1: 1 only)\n"
            "  -pr <int>     process rank (phase 1: 0 only)\n"
            "  -pg <int>     GPUs per node (accepted; used by multi-process runs)\n"
            "  -pm <str>     NCCL init method mpi|tcp|fs (accepted; used by multi-process runs)\n"
            "  -ps <str>     server address for -pm tcp (accepted)\n"
            "  -pp <str>     shared path for -pm fs (accepted)\n");
}

static void not_yet(const char* flag, const char* value, const char* what) {
    fprintf(stderr, "error: flag %s %s: %s is not implemented yet in train_gpt2cu (phase 1)\n", flag, value, what);
    exit(1);
}

static void parse_flags(Settings* s, int argc, char** argv) {
    memset(s, 0, sizeof(*s));
    CommonSettings* c = &s->common;
    common_settings_init(c);
    c->T = 1024;
    c->gen_T = DEFAULT_GEN_T;
    s->hellaswag_path = DEFAULT_HELLASWAG_FILE;
    s->gpus_per_node = 8;
    s->nccl_init_method = "mpi";
    s->server_ip = "";
    s->fs_path = "";
    for (int i = 1; i < argc; i += 2) {
        const char* flag = argv[i];
        if (strcmp(flag, "--help") == 0 || (strcmp(flag, "-h") == 0 && i + 1 >= argc)) {
            print_usage(stdout);
            exit(0);
        }
        if (flag[0] != '-') flag_error(flag, NULL, "expected a flag (-x value pairs)");
        if (i + 1 >= argc) flag_error(flag, NULL, "missing value");
        const char* v = argv[i + 1];
        if (strcmp(flag, "-y") == 0) {
            s->resume = (int)parse_integer(flag, v, 0, 1);
        } else if (strcmp(flag, "-r") == 0) {
            s->recompute = (int)parse_integer(flag, v, 0, 2);
        } else if (strcmp(flag, "-h") == 0) {
            s->hellaswag = (int)parse_integer(flag, v, 0, 1);
        } else if (strcmp(flag, "-hf") == 0) {
            s->hellaswag_path = v;
        } else if (strcmp(flag, "-sl") == 0) {
            s->skip_loss_z = parse_float(flag, v, 0.0, 1e30);
        } else if (strcmp(flag, "-sg") == 0) {
            s->skip_norm_z = parse_float(flag, v, 0.0, 1e30);
        } else if (strcmp(flag, "-z") == 0) {
            s->zero_stage = (int)parse_integer(flag, v, 0, 3);
            if (s->zero_stage != 0) not_yet(flag, v, "ZeRO sharding (a multi-GPU feature)");
        } else if (strcmp(flag, "-pg") == 0) {
            s->gpus_per_node = (int)parse_integer(flag, v, 1, 1024);
        } else if (strcmp(flag, "-pm") == 0) {
            if (strcmp(v, "mpi") != 0 && strcmp(v, "tcp") != 0 && strcmp(v, "fs") != 0) {
                flag_error(flag, v, "unknown init method (mpi, tcp, fs)");
            }
            s->nccl_init_method = v;
        } else if (strcmp(flag, "-ps") == 0) {
            s->server_ip = v;
        } else if (strcmp(flag, "-pp") == 0) {
            s->fs_path = v;
        } else if (parse_common_flag(c, flag, v, MAX_BATCH)) {
            // phase 1: one process
            if (strcmp(flag, "-pn") == 0 && c->num_processes != 1) not_yet(flag, v, "running several processes");
            if (strcmp(flag, "-pr") == 0 && c->process_rank != 0) not_yet(flag, v, "a process rank other than 0");
        } else {
            flag_error(flag, NULL, "unknown flag");
        }
    }
    if (s->resume && c->output_dir == NULL) flag_error("-y", "1", "resuming needs the checkpoint directory -o");
    validate_common_settings(c);
}

// ----------------------------------------------------------------------------------------------
// building blocks: errors, time, schedule, outliers, sampling, validation

// z-score of x against the last OUTLIER_WINDOW values (0 until the window is full).
typedef struct {
    double values[OUTLIER_WINDOW];
    int count;
    int next;
} OutlierDetector;

static double outlier_zscore(const OutlierDetector* d, double x) {
    if (d->count < OUTLIER_WINDOW) return 0.0;
    double mean = 0.0, var = 0.0;
    for (int i = 0; i < OUTLIER_WINDOW; i++) mean += d->values[i];
    mean /= OUTLIER_WINDOW;
    for (int i = 0; i < OUTLIER_WINDOW; i++) var += (d->values[i] - mean) * (d->values[i] - mean);
    const double std = sqrt(var / OUTLIER_WINDOW);
    return std > 0.0 ? (x - mean) / std : 0.0;
}

static void outlier_add(OutlierDetector* d, double x) {
    d->values[d->next] = x;
    d->next = (d->next + 1) % OUTLIER_WINDOW;
    if (d->count < OUTLIER_WINDOW) d->count++;
}

// Generates gen_T - 1 tokens after an EOT with full forward passes over a (B, T) batch whose first
// row is the sample (the batch keeps the activation buffers at their training size).
static void generate_sample(GPT2CU* model, const Tokenizer* tokenizer, Rng* rng, int* tokens, float* row, int B,
                            int T, int gen_T) {
    const int V = model->config.vocab_size, Vp = model->config.padded_vocab_size;
    for (size_t i = 0; i < (size_t)B * T; i++) tokens[i] = (int)tokenizer->eot_token;
    for (int t = 1; t < gen_T; t++) {
        if (gpt2cu_forward(model, tokens, NULL, B, T, FORWARD_LOGITS, 1.0f) != LLMC_OK) die();
        gpt2cu_download(row, model->acts.logits + (size_t)(t - 1) * Vp, (size_t)V, model->stream);
        tokens[t] = sample_token(row, V, rng);
    }
    print_sample(tokenizer, tokens + 1, gen_T - 1);
}

static float validation_loss(GPT2CU* model, DataLoader* loader, int num_batches, int B, int T) {
    dataloader_reset(loader);
    double sum = 0.0;
    for (int i = 0; i < num_batches; i++) {
        if (dataloader_next_batch(loader) != LLMC_OK) die();
        if (gpt2cu_forward(model, loader->inputs, loader->targets, B, T, FORWARD_LOSS, 1.0f) != LLMC_OK) die();
        sum += gpt2cu_read_mean_loss(model);
    }
    return (float)(sum / num_batches);
}

// Multiple-choice accuracy (dev/data/hellaswag.py evaluate()): every completion is a row, context +
// completion padded with token 0 to T; rows go B at a time through a FORWARD_LOSS pass, and a
// completion's loss is the sum of the per-position losses that predict its tokens. The completion
// with the lowest average loss wins (*correct_norm, llm.c's HellaSwag number), with the lowest total
// (*correct); ties go to the lower index. inputs, targets: (B, T) host scratch.
static void eval_multiple_choice(GPT2CU* model, const EvalLoader* ev, int B, int T, int* inputs, int* targets,
                                 int* correct, int* correct_norm) {
    size_t num_rows = 0;
    for (size_t i = 0; i < ev->num_examples; i++) num_rows += (size_t)ev->examples[i].num_completions;
    double* totals = (double*)malloc(num_rows * sizeof(double));
    size_t* row_example = (size_t*)malloc(num_rows * sizeof(size_t));
    if (totals == NULL || row_example == NULL) {
        fprintf(stderr, "error: out of host memory for %zu eval rows\n", num_rows);
        exit(1);
    }
    size_t r = 0;
    for (size_t i = 0; i < ev->num_examples; i++) {
        for (int c = 0; c < ev->examples[i].num_completions; c++) row_example[r++] = i;
    }
    for (size_t first = 0; first < num_rows; first += (size_t)B) {
        memset(inputs, 0, (size_t)B * T * sizeof(int));
        memset(targets, 0, (size_t)B * T * sizeof(int));
        for (int b = 0; b < B && first + b < num_rows; b++) {
            const size_t row = first + b;
            const EvalExample* ex = &ev->examples[row_example[row]];
            // the example's completions are rows (ex->completions - ev->completion_ptrs) onwards
            const int which = (int)(row - (size_t)(ex->completions - ev->completion_ptrs));
            int* in = inputs + (size_t)b * T;
            int* tg = targets + (size_t)b * T;
            const int ctx = ex->context_length, len = ex->completion_lengths[which];
            for (int t = 0; t < ctx; t++) in[t] = ex->context[t];
            for (int t = 0; t < len; t++) in[ctx + t] = ex->completions[which][t];
            for (int t = 0; t + 1 < ctx + len; t++) tg[t] = in[t + 1];
        }
        if (gpt2cu_forward(model, inputs, targets, B, T, FORWARD_LOSS, 1.0f) != LLMC_OK) die();
        gpt2cu_read_mean_loss(model);  // waits, and leaves the per-position losses in losses_h
        for (int b = 0; b < B && first + b < num_rows; b++) {
            const size_t row = first + b;
            const EvalExample* ex = &ev->examples[row_example[row]];
            const int which = (int)(row - (size_t)(ex->completions - ev->completion_ptrs));
            const int ctx = ex->context_length, len = ex->completion_lengths[which];
            double sum = 0.0;
            for (int t = ctx - 1; t < ctx - 1 + len; t++) sum += model->losses_h[(size_t)b * T + t];
            totals[row] = sum;
        }
    }
    *correct = *correct_norm = 0;
    r = 0;
    for (size_t i = 0; i < ev->num_examples; i++) {
        const EvalExample* ex = &ev->examples[i];
        int best = 0, best_norm = 0;
        for (int c = 1; c < ex->num_completions; c++) {
            if (totals[r + c] < totals[r + best]) best = c;
            if (totals[r + c] / ex->completion_lengths[c] <
                totals[r + best_norm] / ex->completion_lengths[best_norm]) {
                best_norm = c;
            }
        }
        *correct += best == ex->label;
        *correct_norm += best_norm == ex->label;
        r += (size_t)ex->num_completions;
    }
    free(totals);
    free(row_example);
}

// ----------------------------------------------------------------------------------------------
// output: directory, log, checkpoints, the settings table

// A checkpoint of step k is model_%08d.bin (the parameters as the build holds them: bf16 v5 or
// fp32 v3), state_%08d_00000.bin (gpt2cu_save_state: AdamW, master weights, RNGs, data position)
// and DONE_%08d, an empty marker written last: a checkpoint without it (a run killed while
// writing) is ignored by -y 1. Model and state are written to .tmp files and renamed.
static void checkpoint_path(char* out, size_t size, const char* dir, const char* kind, int step) {
    int n;
    if (strcmp(kind, "state") == 0) {
        n = snprintf(out, size, "%s/state_%08d_%05d.bin", dir, step, 0);
    } else if (strcmp(kind, "DONE") == 0) {
        n = snprintf(out, size, "%s/DONE_%08d", dir, step);
    } else {
        n = snprintf(out, size, "%s/model_%08d.bin", dir, step);
    }
    if (n < 0 || (size_t)n >= size) {
        fprintf(stderr, "error: %s: output directory path too long\n", dir);
        exit(1);
    }
}

static void save_checkpoint(GPT2CU* model, const char* dir, const TrainState* ts, FILE* log) {
    char path[4096], state_path[4096], done_path[4096];
    checkpoint_path(path, sizeof(path), dir, "model", ts->step);
    checkpoint_path(state_path, sizeof(state_path), dir, "state", ts->step);
    checkpoint_path(done_path, sizeof(done_path), dir, "DONE", ts->step);
    remove(done_path);  // an older checkpoint of this step is incomplete from now on
#ifdef LLMC_FP32
    const int version = GPT2_MODEL_VERSION_FP32;
#else
    const int version = GPT2_MODEL_VERSION_BF16;
#endif
    if (gpt2cu_save_checkpoint(model, path, version) != LLMC_OK) die();
    if (gpt2cu_save_state(model, state_path, ts) != LLMC_OK) die();
    FILE* done = fopen(done_path, "wb");
    if (done == NULL || fclose(done) != 0) {
        fprintf(stderr, "error: %s: cannot write the checkpoint marker: %s\n", done_path, strerror(errno));
        exit(1);
    }
    printf("saved checkpoint %s + %s\n", path, state_path);
    if (log != NULL) {
        fprintf(log, "s:%d checkpoint:%s\n", ts->step, path);
        fflush(log);
    }
}

// The step of the latest complete checkpoint in dir (DONE_%08d with the model and state files
// present), or -1 when there is none.
static int latest_checkpoint(const char* dir) {
    DIR* d = opendir(dir);
    if (d == NULL) return -1;
    int best = -1;
    struct dirent* e;
    while ((e = readdir(d)) != NULL) {
        const char* name = e->d_name;
        if (strncmp(name, "DONE_", 5) != 0 || strlen(name) != 13) continue;
        int step = 0, digits = 1;
        for (int i = 5; i < 13; i++) {
            if (name[i] < '0' || name[i] > '9') digits = 0;
            step = step * 10 + (name[i] - '0');
        }
        if (!digits || step <= best) continue;
        char model_path[4096], state_path[4096];
        checkpoint_path(model_path, sizeof(model_path), dir, "model", step);
        checkpoint_path(state_path, sizeof(state_path), dir, "state", step);
        if (file_exists(model_path) && file_exists(state_path)) best = step;
    }
    closedir(d);
    return best;
}

// ----------------------------------------------------------------------------------------------
// main

int main(int argc, char** argv) {
    Settings s;
    parse_flags(&s, argc, argv);
    const CommonSettings* c = &s.common;

    int device = 0;
    cudaCheck(cudaSetDevice(device));
    cudaDeviceProp props;
    cudaCheck(cudaGetDeviceProperties(&props, device));
    matmul_init();

    // the model
    const char* init = c->init;
    if (init == NULL) init = file_exists(DEFAULT_MODEL_FILE) ? DEFAULT_MODEL_FILE : DEFAULT_MODEL_DESCRIPTOR;
    // -y 1: the latest complete checkpoint in -o replaces -e (none there: a fresh start)
    const int resume_step = s.resume ? latest_checkpoint(c->output_dir) : -1;
    char resume_model[4096], resume_state[4096];
    if (resume_step >= 0) {
        checkpoint_path(resume_model, sizeof(resume_model), c->output_dir, "model", resume_step);
        checkpoint_path(resume_state, sizeof(resume_state), c->output_dir, "state", resume_step);
        init = resume_model;
    }
    GPT2CU model;
    if (gpt2cu_build(&model, init, c->seed) != LLMC_OK || gpt2cu_set_recompute(&model, s.recompute) != LLMC_OK) die();
    const GPT2Config* cfg = &model.config;
    check_seq_len(c->T, cfg, init);

    // the data
    DataLoader train_loader, val_loader;
    if (dataloader_init(&train_loader, c->train_pattern, (size_t)c->B, (size_t)c->T, c->process_rank, c->num_processes,
                        c->shuffle, c->seed) != LLMC_OK) {
        die();
    }
    dataloader_set_vocab_limit(&train_loader, cfg->vocab_size);
    int use_val = 0;
    const char* val_note = "";
    if (c->val_every > 0) {
        if (dataloader_init(&val_loader, c->val_pattern, (size_t)c->B, (size_t)c->T, c->process_rank, c->num_processes, 0,
                            0) == LLMC_OK) {
            use_val = 1;
            dataloader_set_vocab_limit(&val_loader, cfg->vocab_size);
        } else if (c->val_pattern_given) {
            die();
        } else {
            val_note = " (default not found: no validation)";
        }
    }
    const int val_num_batches = use_val ? validation_batches(&val_loader, c->val_max_batches) : 0;
    const int grad_accum = (int)(c->total_batch_size / ((long long)c->B * c->T * c->num_processes));
    const int num_steps = run_steps(c->max_steps, &train_loader, grad_accum);

    // resume: optimizer, master weights, RNGs and the data position of the checkpoint
    int start_step = 0;
    Rng sample_rng;
    rng_init(&sample_rng, c->seed);
    if (resume_step >= 0) {
        TrainState ts;
        if (gpt2cu_load_state(&model, resume_state, &ts) != LLMC_OK) die();
        const char* bad = NULL;
        if (ts.step != resume_step) {
            bad = "its step differs from the step in its name";
        } else if (ts.shuffle != c->shuffle) {
            bad = ts.shuffle ? "written by a run that shuffled the data (this run has -sh 0)"
                             : "written by a run that did not shuffle the data (this run has -sh 1)";
        } else if (ts.shuffle && ts.shuffle_seed != c->seed) {
            bad = "written by a run with another -seed (the data order would differ)";
        } else if (ts.step > num_steps) {
            bad = "its step is beyond this run's last step (-x)";
        }
        if (bad != NULL) {
            fprintf(stderr, "error: %s: cannot resume: %s\n", resume_state, bad);
            exit(1);
        }
        if (dataloader_resume(&train_loader, ts.shard_index, (size_t)ts.sample_index) != LLMC_OK) {
            fprintf(stderr, "error: %s: bad dataloader position: %s\n", resume_state, llmc_error());
            exit(1);
        }
        sample_rng.state = ts.sample_rng;
        start_step = ts.step;
    }

    // the tokenizer, for samples
    Tokenizer tokenizer;
    char tokenizer_path[4096];
    const char* tokenizer_note;
    const int use_tokenizer = load_sample_tokenizer(&tokenizer, c->tokenizer_path, &train_loader, cfg->vocab_size,
                                                    tokenizer_path, sizeof(tokenizer_path), &tokenizer_note);

    // HellaSwag
    EvalLoader hellaswag;
    if (s.hellaswag) {
        if (evalloader_init(&hellaswag, s.hellaswag_path, cfg->vocab_size) != LLMC_OK) die();
        if (hellaswag.max_row_length > c->T) {
            fprintf(stderr, "error: %s: an example has %d tokens (context + completion), more than -t %d\n",
                    s.hellaswag_path, hellaswag.max_row_length, c->T);
            exit(1);
        }
    }

    FILE* log = open_log(c->output_dir, resume_step >= 0 ? "a" : "w");

    // FLOPs per token of a training step: 6 per parameter (forward + backward matmuls) plus the
    // attention's 6 L C T (QK^T and AV, forward and backward), as llm.c and nanoGPT count.
    const double flops_per_token =
        6.0 * (double)model.num_parameters + 6.0 * cfg->num_layers * cfg->channels * (double)c->T;
    printf("+----------------------------+----------------------------------------------------+\n");
    table_row(log, "device", "%s (sm_%d%d, %d SMs, %.1f GiB)", props.name, props.major, props.minor,
              props.multiProcessorCount, props.totalGlobalMem / 1073741824.0);
    table_row(log, "precision", "%s", LLMC_PRECISION_NAME);
    table_row(log, "attention", "%s", gpt2cu_attention_backend());
    table_row(log, "train data", "%s", c->train_pattern);
    table_row(log, "train shards / tokens", "%zu / %zu", train_loader.num_shards, train_loader.num_tokens);
    table_row(log, "val data", "%s%s", use_val ? c->val_pattern : "-", c->val_every == 0 ? " (-v 0)" : val_note);
    table_row(log, "model", "%s", init);
    table_model_rows(log, cfg, model.num_parameters);
    table_batch_rows(log, c, grad_accum, num_steps);
    table_row(log, "learning rate / schedule", "%g / %s", c->learning_rate, c->schedule);
    table_row(log, "warmup steps / final frac", "%d / %g", c->warmup_steps, c->final_lr_frac);
    table_row(log, "weight decay", "%g", c->weight_decay);
    table_row(log, "grad clip", "%g%s", c->grad_clip, c->grad_clip == 0.0f ? " (off)" : "");
    table_row(log, "skip outliers (-sl / -sg)", "%g / %g", s.skip_loss_z, s.skip_norm_z);
    table_eval_rows(log, c, val_num_batches);
    if (resume_step >= 0) {
        table_row(log, "resumed from", "step %d (%.400s)", resume_step, resume_state);
    } else {
        table_row(log, "resume", "%s", s.resume ? "no checkpoint found: fresh start" : "no");
    }
    table_row(log, "tokenizer", "%s%s", tokenizer_path, tokenizer_note);
    table_row(log, "seed / shuffle", "%llu / %d", c->seed, c->shuffle);
    table_row(log, "zero / processes / rank", "%d / %d / %d", s.zero_stage, c->num_processes, c->process_rank);
    table_row(log, "recompute", "%d", s.recompute);
    table_row(log, "hellaswag", "%.400s", s.hellaswag ? s.hellaswag_path : "off");
    if (s.hellaswag) table_row(log, "hellaswag examples", "%zu", hellaswag.num_examples);
    table_row(log, "FLOPs per token", "%.4g", flops_per_token);
    printf("+----------------------------+----------------------------------------------------+\n");
    if (log != NULL) fflush(log);
    fflush(stdout);

    // ------------------------------------------------------------------------------------------
    // training
    int* gen_tokens = (int*)malloc((size_t)c->B * c->T * sizeof(int));
    float* logits_row = (float*)malloc((size_t)cfg->padded_vocab_size * sizeof(float));
    int* eval_targets = (int*)malloc((size_t)c->B * c->T * sizeof(int));
    if (gen_tokens == NULL || logits_row == NULL || eval_targets == NULL) {
        fprintf(stderr, "error: out of host memory\n");
        exit(1);
    }
    AdamWParams adamw = {c->learning_rate, 0.9f, 0.95f, 1e-8f, c->weight_decay};
    OutlierDetector loss_outliers = {{0}, 0, 0}, norm_outliers = {{0}, 0, 0};
    const int skip_outliers = s.skip_loss_z > 0.0f || s.skip_norm_z > 0.0f;
    const float loss_weight = 1.0f / (float)grad_accum;
    const long long tokens_per_step = (long long)c->B * c->T * grad_accum;
    double timed_seconds = 0.0;
    int timed_steps = 0;
    size_t peak_bytes = 0;
    const double start = now_seconds();
    for (int step = start_step; step <= num_steps; step++) {
        const int last_step = step == num_steps;
        if (use_val && (step % c->val_every == 0 || last_step)) {
            const float val_loss = validation_loss(&model, &val_loader, val_num_batches, c->B, c->T);
            printf("val loss %f\n", val_loss);
            if (log != NULL) {
                fprintf(log, "s:%d tel:%f\n", step, val_loss);
                fflush(log);
            }
        }
        if (s.hellaswag && ((c->val_every > 0 && step % c->val_every == 0) || last_step)) {
            int correct = 0, correct_norm = 0;
            eval_multiple_choice(&model, &hellaswag, c->B, c->T, gen_tokens, eval_targets, &correct, &correct_norm);
            const double n = (double)hellaswag.num_examples;
            printf("HellaSwag: %d/%zu correct, acc_norm %.4f | acc %.4f (%d)\n", correct_norm,
                   hellaswag.num_examples, correct_norm / n, correct / n, correct);
            if (log != NULL) {
                fprintf(log, "s:%d eval:%f\n", step, correct_norm / n);
                fflush(log);
            }
        }
        if (use_tokenizer && ((c->sample_every > 0 && step > 0 && step % c->sample_every == 0) || last_step)) {
            generate_sample(&model, &tokenizer, &sample_rng, gen_tokens, logits_row, c->B, c->T, c->gen_T);
        }
        if (last_step) break;

        cudaCheck(cudaDeviceSynchronize());  // the step's clock starts with an idle GPU
        const double step_start = now_seconds();
        gpt2cu_zero_grad(&model);
        for (int micro = 0; micro < grad_accum; micro++) {
            if (dataloader_next_batch(&train_loader) != LLMC_OK) die();
            if (gpt2cu_forward(&model, train_loader.inputs, train_loader.targets, c->B, c->T, FORWARD_TRAIN,
                               loss_weight) != LLMC_OK ||
                gpt2cu_backward(&model) != LLMC_OK) {
                die();
            }
        }
        const float lr = learning_rate_at(c->learning_rate, c->warmup_steps, c->final_lr_frac, c->schedule, step, num_steps);
        adamw.learning_rate = lr;
        gpt2cu_compute_grad_norm(&model, c->grad_clip);
        int skipped = 0;
        float loss = 0.0f, norm = 0.0f;
        if (skip_outliers) {
            // the decision needs the loss and the norm before the update: one extra sync
            loss = gpt2cu_read_mean_loss(&model);
            cudaCheck(cudaMemcpy(&norm, model.norm_d, sizeof(float), cudaMemcpyDeviceToHost));
            const double zl = outlier_zscore(&loss_outliers, loss), zg = outlier_zscore(&norm_outliers, norm);
            skipped = (s.skip_loss_z > 0.0f && zl > s.skip_loss_z) || (s.skip_norm_z > 0.0f && zg > s.skip_norm_z);
            outlier_add(&loss_outliers, loss);
            outlier_add(&norm_outliers, norm);
        }
        if (!skipped) gpt2cu_update(&model, &adamw, step + 1, 1);
        if (!skip_outliers) {
            loss = gpt2cu_read_mean_loss(&model);  // waits for the whole step
            cudaCheck(cudaMemcpy(&norm, model.norm_d, sizeof(float), cudaMemcpyDeviceToHost));
        }
        cudaCheck(cudaDeviceSynchronize());
        const double seconds = now_seconds() - step_start;
        if (step > start_step) {  // the first step includes allocation and cuBLASLt warm-up
            timed_seconds += seconds;
            timed_steps++;
        }
        if (peak_bytes == 0) {
            size_t free_bytes, total_bytes;
            cudaCheck(cudaMemGetInfo(&free_bytes, &total_bytes));
            peak_bytes = total_bytes - free_bytes;
        }
        const double tokens_per_second = (double)tokens_per_step / seconds;
        const double mfu = 100.0 * flops_per_token * tokens_per_second / H100_BF16_PEAK_FLOPS;
        printf("step %5d/%d | loss %.6f | norm %.4f | lr %.3e | %.1f ms | %.0f tok/s | MFU %.1f%%%s\n", step + 1,
               num_steps, loss, norm, lr, 1e3 * seconds, tokens_per_second, mfu,
               !isfinite(norm) ? " | update skipped (non-finite norm)" : (skipped ? " | update skipped (outlier)" : ""));
        if (log != NULL) {
            fprintf(log, "s:%d trl:%f norm:%f lr:%e\n", step + 1, loss, norm, lr);
            fflush(log);
        }
        fflush(stdout);
        if (c->output_dir != NULL &&
            ((c->checkpoint_every > 0 && (step + 1) % c->checkpoint_every == 0) || step + 1 == num_steps)) {
            const TrainState ts = {step + 1,
                                   sample_rng.state,
                                   dataloader_shard_index(&train_loader),
                                   (uint64_t)dataloader_sample_index(&train_loader),
                                   c->shuffle,
                                   c->seed};
            save_checkpoint(&model, c->output_dir, &ts, log);
        }
    }
    const double total_seconds = now_seconds() - start;
    if (timed_steps > 0) {
        const double ms = 1e3 * timed_seconds / timed_steps;
        const double tps = (double)tokens_per_step * timed_steps / timed_seconds;
        printf("steady state (steps 2..%d): %.1f ms/step | %.0f tok/s | MFU %.1f%%\n", num_steps, ms, tps,
               100.0 * flops_per_token * tps / H100_BF16_PEAK_FLOPS);
    }
    printf("peak GPU memory in use: %.2f GiB (activations %.2f GiB)\n", peak_bytes / 1073741824.0,
           model.activation_bytes / 1073741824.0);
    printf("total time %.2f s\n", total_seconds);

    // ------------------------------------------------------------------------------------------
    // cleanup
    free(gen_tokens);
    free(logits_row);
    free(eval_targets);
    if (s.hellaswag) evalloader_free(&hellaswag);
    if (use_tokenizer) tokenizer_free(&tokenizer);
    if (use_val) dataloader_free(&val_loader);
    dataloader_free(&train_loader);
    if (log != NULL) fclose(log);
    gpt2cu_free(&model);
    matmul_free();
    return 0;
}
