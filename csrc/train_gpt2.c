/*
train_gpt2: GPT-2 training on the CPU in fp32 with the reference engine (llmc/gpt2_cpu.h).

The CPU trainer is for small runs, tests and for checking the CUDA trainer's numbers: the same
flags as llm.c's trainers, the same files (token shards, model checkpoints, tokenizer), the same
schedule and AdamW. It runs one process; -pn/-pr only choose which part of the data this process
reads (see llmc/dataloader.h), which lets a data-parallel launch be tested without GPUs.

One step: zero the gradients; for each of the grad_accum micro-batches of B x T tokens run forward
and backward with loss scale 1/grad_accum (so the gradients are those of the mean loss over the
total batch); clip by the global gradient norm; one AdamW update with the scheduled learning rate.
grad_accum = total batch size (-d) / (B * T * processes).

Model (-e): a descriptor d6, d12, d24, ... (random GPT-2 init from -seed) or a model .bin file
(fp32 or bf16). Default: gpt2_124M.bin when that file is in the working directory (the llm.c
fine-tuning setup), else d12 from scratch.
Tokenizer (-tk): default gpt2_tokenizer.bin in the directory of the first training shard; without
one, samples are skipped with a note.

    ./train_gpt2 -i "data/train_*.bin" -j "data/val_*.bin" -e d6 -b 4 -t 64 -x 100 -o out
*/
#define _POSIX_C_SOURCE 200809L  // clock_gettime, mkdir, stat

#include <glob.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>  // defines: omp_get_max_threads
#endif

#include "llmc/dataloader.h"  // defines: DataLoader, dataloader_init, dataloader_next_batch
#include "llmc/error.h"       // defines: llmc_error, LLMC_OK
#include "llmc/gpt2_cpu.h"    // defines: GPT2, gpt2_build_*, gpt2_forward/backward/update
#include "llmc/rand.h"        // defines: Rng, rng_init, rng_uniform
#include "llmc/tokenizer.h"   // defines: Tokenizer, tokenizer_init, tokenizer_print
#include "llmc/train_common.h"  // defines: CommonSettings, parse_common_flag, learning_rate_at,
                                //          load_sample_tokenizer, open_log, table_row

#define MAX_BATCH 65536  // -b: anything larger is a typo, not a CPU run

// ---------------------------------------------------------------------------------------------
// settings and flags

static void print_usage(FILE* out) {
    fprintf(out,
            "usage: train_gpt2 [-flag value]...\n"
            "  -i <pattern>  training token shards (glob)      default " DEFAULT_TRAIN_PATTERN "\n"
            "  -j <pattern>  validation token shards (glob)    default " DEFAULT_VAL_PATTERN
            " (skipped if absent)\n"
            "  -e <init>     model .bin file or descriptor d6/d12/d24/...\n"
            "                default " DEFAULT_MODEL_FILE
            " if present, else " DEFAULT_MODEL_DESCRIPTOR "\n"
            "  -o <dir>      output directory for checkpoints model_%%08d.bin and " LOG_FILE_NAME
            " (default: none)\n"
            "  -b <int>      micro-batch size B (default 4)\n"
            "  -t <int>      sequence length T (default 64, at most the model's maxT)\n"
            "  -d <int>      total batch size in tokens, a multiple of B*T*pn (default B*T*pn)\n"
            "  -x <int>      max steps (default -1: one epoch)\n"
            "  -l <float>    learning rate (default 3e-4)\n"
            "  -u <int>      warmup steps (default 0)\n"
            "  -q <float>    final learning rate as a fraction of -l, in [0, 1] (default 1.0)\n"
            "  -k <name>     schedule: cosine, linear, constant, wsd (default cosine)\n"
            "  -c <float>    weight decay (default 0.0)\n"
            "  -v <int>      validation every N steps, 0: never (default 20)\n"
            "  -m <int>      validation batches, -1: all (default 20)\n"
            "  -s <int>      sample every N steps, 0: only at the end (default 20)\n"
            "  -g <int>      sample length in tokens, at most T (default 64, or T if smaller)\n"
            "  -n <int>      checkpoint every N steps, 0: only at the end (default 0)\n"
            "  -tk <path>    tokenizer .bin (default " DEFAULT_TOKENIZER_NAME
            " next to the training data)\n"
            "  -seed <int>   seed for the init, shuffling and sampling (default 1337)\n"
            "  -gc <float>   clip the global gradient norm to this, 0: no clipping (default 1.0)\n"
            "  -sh <0|1>     shuffle the training data (default 1)\n"
            "  -pr <int>     process rank (default 0)\n"
            "  -pn <int>     number of processes sharing the data (default 1)\n"
            "  -h            this help\n");
}

// The CPU trainer takes exactly the common flags (llmc/train_common.h).
static void parse_flags(CommonSettings* s, int argc, char** argv) {
    common_settings_init(s);
    for (int i = 1; i < argc; i += 2) {
        const char* flag = argv[i];
        if (strcmp(flag, "-h") == 0 || strcmp(flag, "--help") == 0) {
            print_usage(stdout);
            exit(0);
        }
        if (flag[0] != '-') flag_error(flag, NULL, "expected a flag (-x value pairs)");
        if (!is_common_flag(flag)) flag_error(flag, NULL, "unknown flag");
        if (i + 1 >= argc) flag_error(flag, NULL, "missing value");
        parse_common_flag(s, flag, argv[i + 1], MAX_BATCH);
    }
    validate_common_settings(s);
}

// ---------------------------------------------------------------------------------------------
// building blocks (the rest are in llmc/train_common.h): data patterns, sampling, validation

static int pattern_matches(const char* pattern) {
    glob_t matches;
    int found = glob(pattern, 0, NULL, &matches) == 0 && matches.gl_pathc > 0;
    if (found) globfree(&matches);
    return found;
}

// Generates gen_T - 1 tokens after an EOT, one forward pass over a (1, T) context per token, and
// prints them. tokens: (T) scratch.
static void generate_sample(GPT2* model, const Tokenizer* tokenizer, Rng* rng, int* tokens, int T,
                            int gen_T) {
    int V = model->config.vocab_size, Vp = model->config.padded_vocab_size;
    for (int i = 0; i < T; i++) tokens[i] = (int)tokenizer->eot_token;
    for (int t = 1; t < gen_T; t++) {
        if (gpt2_forward(model, tokens, NULL, 1, T) != LLMC_OK) die();
        tokens[t] = sample_token(model->acts.logits + (size_t)(t - 1) * Vp, V, rng);
    }
    print_sample(tokenizer, tokens + 1, gen_T - 1);
}

static float validation_loss(GPT2* model, DataLoader* loader, int num_batches, int B, int T) {
    dataloader_reset(loader);
    double sum = 0.0;
    for (int i = 0; i < num_batches; i++) {
        if (dataloader_next_batch(loader) != LLMC_OK) die();
        if (gpt2_forward(model, loader->inputs, loader->targets, B, T) != LLMC_OK) die();
        sum += model->mean_loss;
    }
    return (float)(sum / num_batches);
}

// ---------------------------------------------------------------------------------------------
// output: directory, log, checkpoints, the settings table

static void save_checkpoint(const GPT2* model, const char* dir, int step, FILE* log) {
    char path[4096];
    if (snprintf(path, sizeof(path), "%s/model_%08d.bin", dir, step) >= (int)sizeof(path)) {
        fprintf(stderr, "error: %s: output directory path too long\n", dir);
        exit(1);
    }
    if (gpt2_save_checkpoint(model, path, GPT2_MODEL_VERSION_FP32) != LLMC_OK) die();
    printf("saved checkpoint %s\n", path);
    if (log != NULL) {
        fprintf(log, "s:%d checkpoint:%s\n", step, path);
        fflush(log);
    }
}

// ---------------------------------------------------------------------------------------------
// main

int main(int argc, char** argv) {
    CommonSettings s;
    parse_flags(&s, argc, argv);

    // the model
    const char* init = s.init;
    const char* init_note = "";
    if (init == NULL) {
        int have_file = file_exists(DEFAULT_MODEL_FILE);
        init = have_file ? DEFAULT_MODEL_FILE : DEFAULT_MODEL_DESCRIPTOR;
        init_note =
            have_file ? " (default)" : " (default: no " DEFAULT_MODEL_FILE ", from scratch)";
    }
    GPT2 model;
    int depth = 0;
    char trailing;
    if (sscanf(init, "d%d%c", &depth, &trailing) == 1) {
        GPT2Config config;
        if (gpt2_config_from_descriptor(&config, init) != LLMC_OK) die();
        if (gpt2_build_from_config(&model, &config, s.seed) != LLMC_OK) die();
    } else if (gpt2_build_from_checkpoint(&model, init) != LLMC_OK) {
        die();
    }
    const GPT2Config* cfg = &model.config;
    check_seq_len(s.T, cfg, init);

    // the data
    DataLoader train_loader, val_loader;
    if (dataloader_init(&train_loader, s.train_pattern, (size_t)s.B, (size_t)s.T, s.process_rank,
                        s.num_processes, s.shuffle, s.seed) != LLMC_OK) {
        die();
    }
    dataloader_set_vocab_limit(&train_loader, cfg->vocab_size);
    int use_val = 0;
    const char* val_note = "";
    if (s.val_every > 0) {
        if (!s.val_pattern_given && !pattern_matches(s.val_pattern)) {
            val_note = " (default not found: no validation)";
        } else {
            if (dataloader_init(&val_loader, s.val_pattern, (size_t)s.B, (size_t)s.T,
                                s.process_rank, s.num_processes, 0, 0) != LLMC_OK) {
                die();
            }
            use_val = 1;
            dataloader_set_vocab_limit(&val_loader, cfg->vocab_size);
        }
    }
    int val_num_batches = use_val ? validation_batches(&val_loader, s.val_max_batches) : 0;
    int grad_accum = (int)(s.total_batch_size / ((long long)s.B * s.T * s.num_processes));
    int num_steps = run_steps(s.max_steps, &train_loader, grad_accum);

    // the tokenizer, for samples
    Tokenizer tokenizer;
    char tokenizer_path[4096];
    const char* tokenizer_note;
    int use_tokenizer = load_sample_tokenizer(&tokenizer, s.tokenizer_path, &train_loader,
                                              cfg->vocab_size, tokenizer_path,
                                              sizeof(tokenizer_path), &tokenizer_note);

    FILE* log = open_log(s.output_dir, "w");

    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    printf("+--------------------------+--------------------------------------------------+\n");
    table_row(log, "train data", "%s", s.train_pattern);
    table_row(log, "train shards / tokens", "%zu / %zu", train_loader.num_shards,
              train_loader.num_tokens);
    table_row(log, "val data", "%s%s", use_val ? s.val_pattern : "-",
              s.val_every == 0 ? " (-v 0)" : val_note);
    if (use_val) {
        table_row(log, "val shards / tokens", "%zu / %zu", val_loader.num_shards,
                  val_loader.num_tokens);
    }
    table_row(log, "model", "%s%s", init, init_note);
    table_model_rows(log, cfg, model.num_parameters);
    table_batch_rows(log, &s, grad_accum, num_steps);
    table_row(log, "learning rate", "%g", s.learning_rate);
    table_row(log, "schedule", "%s", s.schedule);
    table_row(log, "warmup steps", "%d", s.warmup_steps);
    table_row(log, "final lr fraction", "%g", s.final_lr_frac);
    table_row(log, "weight decay", "%g", s.weight_decay);
    table_row(log, "grad clip", "%g%s", s.grad_clip, s.grad_clip == 0.0f ? " (off)" : "");
    table_eval_rows(log, &s, val_num_batches);
    table_row(log, "tokenizer", "%s%s", tokenizer_path, tokenizer_note);
    table_row(log, "seed", "%llu", s.seed);
    table_row(log, "shuffle", "%d", s.shuffle);
    table_row(log, "process rank / processes", "%d / %d", s.process_rank, s.num_processes);
    table_row(log, "threads", "%d", threads);
    printf("+--------------------------+--------------------------------------------------+\n");
    if (log != NULL) fflush(log);
    fflush(stdout);

    // ------------------------------------------------------------------------------------------
    // training
    Rng sample_rng;
    rng_init(&sample_rng, s.seed);
    int* gen_tokens = (int*)malloc((size_t)s.T * sizeof(int));
    if (gen_tokens == NULL) {
        fprintf(stderr, "error: out of memory\n");
        exit(1);
    }
    AdamWSettings adamw = {.learning_rate = s.learning_rate,
                           .beta1 = 0.9f,
                           .beta2 = 0.95f,
                           .eps = 1e-8f,
                           .weight_decay = s.weight_decay,
                           .grad_scale = 1.0f};
    float loss_scale = 1.0f / (float)grad_accum;
    long long tokens_per_step = (long long)s.B * s.T * grad_accum;
    double train_seconds = 0.0;
    double start = now_seconds();
    int last_checkpoint = -1;
    for (int step = 0; step <= num_steps; step++) {
        int last_step = step == num_steps;
        if (use_val && (step % s.val_every == 0 || last_step)) {
            float val_loss = validation_loss(&model, &val_loader, val_num_batches, s.B, s.T);
            printf("val loss %f\n", val_loss);
            if (log != NULL) {
                fprintf(log, "s:%d tel:%f\n", step, val_loss);
                fflush(log);
            }
        }
        if (use_tokenizer && ((s.sample_every > 0 && step > 0 && step % s.sample_every == 0) ||
                              last_step)) {
            generate_sample(&model, &tokenizer, &sample_rng, gen_tokens, s.T, s.gen_T);
        }
        if (last_step) break;

        double step_start = now_seconds();
        if (gpt2_zero_grad(&model) != LLMC_OK) die();
        double loss_sum = 0.0;
        for (int micro = 0; micro < grad_accum; micro++) {
            if (dataloader_next_batch(&train_loader) != LLMC_OK) die();
            if (gpt2_forward(&model, train_loader.inputs, train_loader.targets, s.B, s.T) !=
                LLMC_OK) {
                die();
            }
            if (gpt2_backward(&model, loss_scale) != LLMC_OK) die();
            loss_sum += model.mean_loss;
        }
        float loss = (float)(loss_sum / grad_accum);
        float norm = gpt2_grad_norm(&model);
        float lr = learning_rate_at(s.learning_rate, s.warmup_steps, s.final_lr_frac, s.schedule,
                                    step, num_steps);
        adamw.learning_rate = lr;
        adamw.grad_scale = s.grad_clip > 0.0f && norm > s.grad_clip ? s.grad_clip / norm : 1.0f;
        if (isfinite(norm)) {
            if (gpt2_update(&model, &adamw, step + 1) != LLMC_OK) die();
        } else {
            printf("warning: gradient norm is %f at step %d: update skipped\n", norm, step + 1);
        }
        double seconds = now_seconds() - step_start;
        train_seconds += seconds;
        printf("step %5d/%d | loss %.6f | norm %.4f | lr %.3e | %.1f ms | %.0f tok/s\n", step + 1,
               num_steps, loss, norm, lr, 1e3 * seconds, (double)tokens_per_step / seconds);
        if (log != NULL) {
            fprintf(log, "s:%d trl:%f norm:%f lr:%e\n", step + 1, loss, norm, lr);
            fflush(log);
        }
        fflush(stdout);
        int checkpoint_due = s.checkpoint_every > 0 && (step + 1) % s.checkpoint_every == 0;
        if (s.output_dir != NULL && checkpoint_due) {
            save_checkpoint(&model, s.output_dir, step + 1, log);
            last_checkpoint = step + 1;
        }
    }
    if (s.output_dir != NULL && last_checkpoint != num_steps) {
        save_checkpoint(&model, s.output_dir, num_steps, log);
    }
    double total_seconds = now_seconds() - start;
    printf("total time %.2f s (%.2f s in training steps, %.1f ms per step)\n", total_seconds,
           train_seconds, 1e3 * train_seconds / num_steps);

    // ------------------------------------------------------------------------------------------
    // cleanup
    free(gen_tokens);
    if (log != NULL) fclose(log);
    if (use_tokenizer) tokenizer_free(&tokenizer);
    if (use_val) dataloader_free(&val_loader);
    dataloader_free(&train_loader);
    gpt2_free(&model);
    return 0;
}
