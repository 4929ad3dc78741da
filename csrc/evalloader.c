/*
Multiple-choice eval file reader: see llmc/evalloader.h for the format and the checks.
*/
#include "llmc/evalloader.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llmc/error.h"  // defines: llmc_set_error, LLMC_OK, LLMC_ERR

#define EVAL_HEADER_INTS 256
#define EVAL_START 65535

// Checks that tokens[0..n) are below vocab_size (when > 0).
static int check_tokens(const char* path, size_t example, const char* what, const uint16_t* tokens, int n,
                        int vocab_size) {
    if (vocab_size <= 0) return LLMC_OK;
    for (int j = 0; j < n; j++) {
        if ((int)tokens[j] >= vocab_size) {
            return llmc_set_error("%s: example %zu: %s has token id %u, outside [0, %d)", path, example, what,
                                  (unsigned)tokens[j], vocab_size);
        }
    }
    return LLMC_OK;
}

int evalloader_init(EvalLoader* loader, const char* path, int vocab_size) {
    memset(loader, 0, sizeof(*loader));
    FILE* f = fopen(path, "rb");
    if (f == NULL) return llmc_set_error("%s: cannot open eval file: %s", path, strerror(errno));
    int32_t header[EVAL_HEADER_INTS];
    if (fread(header, sizeof(int32_t), EVAL_HEADER_INTS, f) != EVAL_HEADER_INTS) {
        fclose(f);
        return llmc_set_error("%s: eval file is truncated (no full 1024-byte header)", path);
    }
    if (header[0] != EVAL_MAGIC || header[1] != EVAL_VERSION) {
        fclose(f);
        return llmc_set_error("%s: not an eval file (magic %d, version %d; expected %d, %d)", path, header[0],
                              header[1], EVAL_MAGIC, EVAL_VERSION);
    }
    if (header[2] <= 0) {
        fclose(f);
        return llmc_set_error("%s: eval file has %d examples", path, header[2]);
    }
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return llmc_set_error("%s: cannot seek", path);
    }
    const long file_size = ftell(f);
    const long body_bytes = file_size - (long)sizeof(header);
    if (body_bytes <= 0 || body_bytes % 2 != 0) {
        fclose(f);
        return llmc_set_error("%s: eval body has %ld bytes (must be a positive even number)", path, body_bytes);
    }
    const size_t n = (size_t)body_bytes / 2;
    loader->data = (uint16_t*)malloc(n * sizeof(uint16_t));
    if (loader->data == NULL) {
        fclose(f);
        return llmc_set_error("%s: out of memory for %zu tokens", path, n);
    }
    fseek(f, (long)sizeof(header), SEEK_SET);
    const size_t got = fread(loader->data, sizeof(uint16_t), n, f);
    fclose(f);
    if (got != n) {
        evalloader_free(loader);
        return llmc_set_error("%s: cannot read the eval body", path);
    }

    // first pass: validate the structure and count the completions
    const size_t num_examples = (size_t)header[2];
    const uint16_t* d = loader->data;
    size_t pos = 0, total_completions = 0;
    int longest_bytes = 0;
    for (size_t i = 0; i < num_examples; i++) {
        if (pos + 6 > n) {
            evalloader_free(loader);
            return llmc_set_error("%s: example %zu: eval file is truncated (ends inside the example header)", path, i);
        }
        if (d[pos] != EVAL_START) {
            evalloader_free(loader);
            return llmc_set_error("%s: example %zu: expected start marker 65535, found %u", path, i, (unsigned)d[pos]);
        }
        const size_t nbytes = d[pos + 1];
        const size_t end = pos + nbytes / 2;
        if (nbytes % 2 != 0 || end > n || nbytes < 12) {
            evalloader_free(loader);
            return llmc_set_error("%s: example %zu: size %zu bytes overruns the file or is too small", path, i, nbytes);
        }
        const int label = d[pos + 3], num_completions = d[pos + 4];
        if (num_completions < 1 || label >= num_completions) {
            evalloader_free(loader);
            return llmc_set_error("%s: example %zu: label %d with %d completions", path, i, label, num_completions);
        }
        size_t cursor = pos + 5;
        for (int part = 0; part <= num_completions; part++) {
            if (cursor >= end) {
                evalloader_free(loader);
                return llmc_set_error("%s: example %zu: size %zu bytes too small for its contents", path, i, nbytes);
            }
            const size_t length = d[cursor];
            if (length == 0 || cursor + 1 + length > end) {
                evalloader_free(loader);
                return llmc_set_error("%s: example %zu: part %d of length %zu is empty or overruns the example", path,
                                      i, part, length);
            }
            cursor += 1 + length;
        }
        if (cursor != end) {
            evalloader_free(loader);
            return llmc_set_error("%s: example %zu: size field says %zu bytes, contents take %zu", path, i, nbytes,
                                  2 * (cursor - pos));
        }
        if ((int)nbytes > longest_bytes) longest_bytes = (int)nbytes;
        total_completions += (size_t)num_completions;
        pos = end;
    }
    if (pos != n) {
        evalloader_free(loader);
        return llmc_set_error("%s: eval file is too long: %zu bytes after %zu examples", path, 2 * (n - pos),
                              num_examples);
    }
    if (header[3] != longest_bytes) {
        evalloader_free(loader);
        return llmc_set_error("%s: header says the longest example is %d bytes, found %d", path, header[3],
                              longest_bytes);
    }

    // second pass: point the examples into the data
    loader->examples = (EvalExample*)calloc(num_examples, sizeof(EvalExample));
    loader->completion_ptrs = (const uint16_t**)calloc(total_completions, sizeof(uint16_t*));
    loader->completion_lengths = (int*)calloc(total_completions, sizeof(int));
    if (loader->examples == NULL || loader->completion_ptrs == NULL || loader->completion_lengths == NULL) {
        evalloader_free(loader);
        return llmc_set_error("%s: out of memory for %zu examples", path, num_examples);
    }
    loader->num_examples = num_examples;
    pos = 0;
    size_t next_completion = 0;
    for (size_t i = 0; i < num_examples; i++) {
        EvalExample* ex = &loader->examples[i];
        ex->index = d[pos + 2];
        ex->label = d[pos + 3];
        ex->num_completions = d[pos + 4];
        ex->context_length = d[pos + 5];
        ex->context = d + pos + 6;
        if (check_tokens(path, i, "context", ex->context, ex->context_length, vocab_size) != LLMC_OK) {
            evalloader_free(loader);
            return LLMC_ERR;
        }
        ex->completions = loader->completion_ptrs + next_completion;
        ex->completion_lengths = loader->completion_lengths + next_completion;
        size_t cursor = pos + 6 + (size_t)ex->context_length;
        for (int c = 0; c < ex->num_completions; c++) {
            const int length = d[cursor];
            loader->completion_ptrs[next_completion] = d + cursor + 1;
            loader->completion_lengths[next_completion] = length;
            next_completion++;
            char what[32];
            snprintf(what, sizeof(what), "completion %d", c);
            if (check_tokens(path, i, what, d + cursor + 1, length, vocab_size) != LLMC_OK) {
                evalloader_free(loader);
                return LLMC_ERR;
            }
            if (ex->context_length + length > loader->max_row_length) {
                loader->max_row_length = ex->context_length + length;
            }
            cursor += 1 + (size_t)length;
        }
        pos = cursor;
    }
    return LLMC_OK;
}

void evalloader_free(EvalLoader* loader) {
    free(loader->data);
    free(loader->examples);
    free((void*)loader->completion_ptrs);
    free(loader->completion_lengths);
    memset(loader, 0, sizeof(*loader));
}
