/*
Multiple-choice eval files (HellaSwag, MMLU; ../shared/DESIGN.md section 4, written by
python/llmc/formats.py write_eval_file): read, validated and held in memory (HellaSwag's
validation set is about 3 MB).

File: 256 x int32 header ([0] 20240522 magic, [1] 1 version, [2] number of examples, [3] the
largest example in bytes), then per example a uint16 stream: 65535 (start marker), the example's
size in bytes, its index, its label, the number of completions, the context length and tokens,
then each completion's length and tokens. Every field is checked (marker, sizes against the
file, label < completions, non-empty parts, token ids < vocab_size, the header's largest size,
nothing after the last example); an error names the file and the example.

Scoring (evalloader_*, the rule of dev/data/hellaswag.py evaluate()): each completion is one row,
context + completion, and its score is the average cross-entropy of its tokens, each predicted
from the position before it; the completion with the lowest average wins (acc_norm; ties go to
the lower index), and acc uses the total instead of the average.

    EvalLoader ev;
    if (evalloader_init(&ev, "hellaswag_val.bin", 50257) != LLMC_OK) ... llmc_error() ...
    for (size_t i = 0; i < ev.num_examples; i++) { const EvalExample* ex = &ev.examples[i]; ... }
    evalloader_free(&ev);
*/
#ifndef LLMC_EVALLOADER_H
#define LLMC_EVALLOADER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EVAL_MAGIC 20240522
#define EVAL_VERSION 1

typedef struct {
    int index;            // the example's index field
    int label;            // the correct completion
    int num_completions;  // >= 1
    int context_length;   // >= 1
    const uint16_t* context;          // (context_length) tokens, into the loader's memory
    const uint16_t** completions;     // (num_completions) tokens of each completion
    const int* completion_lengths;    // (num_completions), each >= 1
} EvalExample;

typedef struct {
    size_t num_examples;
    EvalExample* examples;  // (num_examples)
    int max_row_length;     // the longest context + completion, in tokens
    // owned memory
    uint16_t* data;
    const uint16_t** completion_ptrs;
    int* completion_lengths;
} EvalLoader;

// Reads and validates the whole file. vocab_size > 0: token ids must be below it.
int evalloader_init(EvalLoader* loader, const char* path, int vocab_size);
void evalloader_free(EvalLoader* loader);

#ifdef __cplusplus
}
#endif
#endif  // LLMC_EVALLOADER_H
