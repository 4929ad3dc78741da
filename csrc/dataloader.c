// Implements llmc/dataloader.h: token shards -> (inputs, targets) batches. The sharding scheme is
// explained at the top of the header.
#define _POSIX_C_SOURCE 200809L  // fseeko, ftello
#define _FILE_OFFSET_BITS 64     // shards larger than 2 GiB

#include "llmc/dataloader.h"

#include <errno.h>
#include <glob.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "llmc/error.h"  // defines: llmc_set_error, LLMC_OK, LLMC_ERR
#include "llmc/rand.h"   // defines: Rng, rng_init, rng_next_u64, rng_shuffle_u32

#define SHARD_HEADER_BYTES (SHARD_HEADER_INTS * (off_t)sizeof(int32_t))
#define VOCAB_SCAN_CHUNK 65536  // tokens read at a time by dataloader_check_vocab

// ---------------------------------------------------------------------------------------------
// shard files

// Reads and checks one shard's header and length; *num_tokens gets the header's token count.
static int validate_shard(const char* path, size_t* num_tokens) {
    FILE* f = fopen(path, "rb");
    if (f == NULL) return llmc_set_error("%s: cannot open token shard: %s", path, strerror(errno));
    int32_t header[SHARD_HEADER_INTS];
    size_t got = fread(header, sizeof(int32_t), SHARD_HEADER_INTS, f);
    if (got != SHARD_HEADER_INTS) {
        int read_failed = ferror(f);
        int saved_errno = errno;
        fclose(f);
        if (read_failed) {
            return llmc_set_error("%s: cannot read token shard: %s", path, strerror(saved_errno));
        }
        return llmc_set_error("%s: truncated header (%zu of %d bytes): not a token shard", path,
                              got * sizeof(int32_t), (int)SHARD_HEADER_BYTES);
    }
    int status = LLMC_OK;
    if (header[0] != SHARD_MAGIC) {
        status = llmc_set_error("%s: bad magic %d (expected %d): not a token shard", path,
                                header[0], SHARD_MAGIC);
    } else if (header[1] != SHARD_VERSION) {
        status = llmc_set_error("%s: unsupported token shard version %d (expected %d)", path,
                                header[1], SHARD_VERSION);
    } else if (header[2] <= 0) {
        status = llmc_set_error("%s: empty token shard (header says %d tokens)", path, header[2]);
    }
    if (status == LLMC_OK) {
        off_t expected = SHARD_HEADER_BYTES + (off_t)header[2] * (off_t)sizeof(uint16_t);
        off_t length = -1;
        if (fseeko(f, 0, SEEK_END) == 0) length = ftello(f);
        if (length < 0) {
            status = llmc_set_error("%s: cannot find the file length: %s", path, strerror(errno));
        } else if (length != expected) {
            status = llmc_set_error(
                "%s: file is %lld bytes but its header says %d tokens (%lld bytes): %s", path,
                (long long)length, header[2], (long long)expected,
                length < expected ? "truncated" : "extra bytes at the end");
        }
    }
    fclose(f);
    if (status == LLMC_OK) *num_tokens = (size_t)header[2];
    return status;
}

static int open_shard(DataLoader* loader, size_t shard) {
    if (loader->file != NULL && loader->file_shard == shard) return LLMC_OK;
    if (loader->file != NULL) fclose(loader->file);
    loader->file = fopen(loader->shard_paths[shard], "rb");
    if (loader->file == NULL) {
        return llmc_set_error("%s: cannot open token shard: %s", loader->shard_paths[shard],
                              strerror(errno));
    }
    loader->file_shard = shard;
    return LLMC_OK;
}

// Reads count tokens starting at token index first of the shard into out.
static int read_tokens(DataLoader* loader, size_t shard, size_t first, size_t count,
                       uint16_t* out) {
    if (open_shard(loader, shard) != LLMC_OK) return LLMC_ERR;
    const char* path = loader->shard_paths[shard];
    off_t offset = SHARD_HEADER_BYTES + (off_t)first * (off_t)sizeof(uint16_t);
    if (fseeko(loader->file, offset, SEEK_SET) != 0) {
        return llmc_set_error("%s: cannot seek to token %zu: %s", path, first, strerror(errno));
    }
    size_t got = fread(out, sizeof(uint16_t), count, loader->file);
    if (got != count) {
        return llmc_set_error("%s: read %zu of %zu tokens at token %zu (file changed since it was "
                              "checked?)",
                              path, got, count, first);
    }
    return LLMC_OK;
}

static int check_ids(const DataLoader* loader, size_t shard, size_t first, const uint16_t* tokens,
                     size_t count, int vocab_size) {
    for (size_t i = 0; i < count; i++) {
        if ((int)tokens[i] >= vocab_size) {
            return llmc_set_error("%s: token %zu has id %d, outside the vocabulary of size %d",
                                  loader->shard_paths[shard], first + i, (int)tokens[i],
                                  vocab_size);
        }
    }
    return LLMC_OK;
}

// ---------------------------------------------------------------------------------------------
// orders (see "Shuffling" in the header)

// A seed for the sample order of shard file `shard` in `epoch`: one SplitMix64 draw from a state
// that mixes both in, so different shards and epochs get unrelated streams.
static uint64_t sample_order_seed(uint64_t seed, uint64_t epoch, size_t shard) {
    Rng rng;
    rng_init(&rng, (seed + epoch) ^ (((uint64_t)shard + 1) * 0xD1B54A32D192ED03ull));
    return rng_next_u64(&rng);
}

// Makes shard_order and sample_order match the current shard_index; returns the shard file index.
static size_t prepare_orders(DataLoader* loader) {
    uint64_t epoch = loader->shard_index / loader->num_shards;
    if (loader->order_epoch != epoch) {
        for (size_t i = 0; i < loader->num_shards; i++) loader->shard_order[i] = (uint32_t)i;
        if (loader->shuffle) {
            Rng rng;
            rng_init(&rng, loader->seed + epoch);
            rng_shuffle_u32(&rng, loader->shard_order, loader->num_shards);
        }
        loader->order_epoch = epoch;
    }
    size_t shard = loader->shard_order[loader->shard_index % loader->num_shards];
    if (loader->shuffle && loader->sample_order_for != (int64_t)loader->shard_index) {
        size_t n = loader->shard_num_samples[shard];
        for (size_t i = 0; i < n; i++) loader->sample_order[i] = (uint32_t)i;
        Rng rng;
        rng_init(&rng, sample_order_seed(loader->seed, epoch, shard));
        rng_shuffle_u32(&rng, loader->sample_order, n);
        loader->sample_order_for = (int64_t)loader->shard_index;
    }
    return shard;
}

static size_t batches_in_shard(const DataLoader* loader, size_t shard) {
    return loader->shard_num_samples[shard] / (size_t)loader->num_processes;
}

// ---------------------------------------------------------------------------------------------
// lifecycle

int dataloader_init(DataLoader* loader, const char* pattern, size_t B, size_t T, int process_rank,
                    int num_processes, int shuffle, uint64_t seed) {
    memset(loader, 0, sizeof(*loader));
    if (pattern == NULL || pattern[0] == '\0') {
        return llmc_set_error("dataloader: empty token shard pattern");
    }
    if (B == 0 || T == 0) {
        return llmc_set_error("%s: batch size B=%zu and sequence length T=%zu must be positive",
                              pattern, B, T);
    }
    if (B > ((size_t)1 << 40) / T) {
        return llmc_set_error("%s: batch of B*T = %zu x %zu tokens is too large", pattern, B, T);
    }
    if (num_processes < 1 || process_rank < 0 || process_rank >= num_processes) {
        return llmc_set_error("%s: process rank %d is not in [0, %d)", pattern, process_rank,
                              num_processes);
    }
    loader->B = B;
    loader->T = T;
    loader->process_rank = process_rank;
    loader->num_processes = num_processes;
    loader->shuffle = shuffle != 0;
    loader->seed = seed;
    loader->order_epoch = UINT64_MAX;
    loader->sample_order_for = -1;

    glob_t matches;
    int glob_status = glob(pattern, 0, NULL, &matches);
    if (glob_status == GLOB_NOMATCH) {
        return llmc_set_error("%s: no token shard matches this pattern", pattern);
    }
    if (glob_status != 0) {
        globfree(&matches);
        return llmc_set_error("%s: cannot expand the pattern (glob error %d)", pattern,
                              glob_status);
    }
    size_t n = matches.gl_pathc;
    loader->shard_paths = (char**)calloc(n, sizeof(char*));
    loader->shard_num_tokens = (size_t*)calloc(n, sizeof(size_t));
    loader->shard_num_samples = (size_t*)calloc(n, sizeof(size_t));
    loader->shard_order = (uint32_t*)calloc(n, sizeof(uint32_t));
    if (!loader->shard_paths || !loader->shard_num_tokens || !loader->shard_num_samples ||
        !loader->shard_order) {
        globfree(&matches);
        dataloader_free(loader);
        return llmc_set_error("%s: out of memory for %zu shards", pattern, n);
    }
    loader->num_shards = n;
    for (size_t i = 0; i < n; i++) {
        loader->shard_paths[i] = strdup(matches.gl_pathv[i]);
        if (loader->shard_paths[i] == NULL) {
            globfree(&matches);
            dataloader_free(loader);
            return llmc_set_error("%s: out of memory", pattern);
        }
    }
    globfree(&matches);

    size_t batch_tokens = B * T;
    size_t max_samples = 0;
    for (size_t i = 0; i < n; i++) {
        const char* path = loader->shard_paths[i];
        if (validate_shard(path, &loader->shard_num_tokens[i]) != LLMC_OK) {
            dataloader_free(loader);
            return LLMC_ERR;
        }
        size_t tokens = loader->shard_num_tokens[i];
        size_t samples = (tokens - 1) / batch_tokens;
        if (samples < (size_t)num_processes) {
            llmc_set_error(
                "%s: too small for one batch per process: %zu tokens hold %zu samples of "
                "B*T+1 = %zu tokens, but %d process(es) need one each",
                path, tokens, samples, batch_tokens + 1, num_processes);
            dataloader_free(loader);  // after the message: path points into the loader
            return LLMC_ERR;
        }
        loader->shard_num_samples[i] = samples;
        loader->num_tokens += tokens;
        if (samples > max_samples) max_samples = samples;
    }
    if (max_samples > UINT32_MAX) {
        dataloader_free(loader);
        return llmc_set_error("%s: a shard holds more than 2^32 samples; use a larger B*T",
                              pattern);
    }

    loader->sample_order = (uint32_t*)malloc(max_samples * sizeof(uint32_t));
    loader->buffer = (uint16_t*)malloc((batch_tokens + 1) * sizeof(uint16_t));
    loader->inputs = (int*)malloc(batch_tokens * sizeof(int));
    loader->targets = (int*)malloc(batch_tokens * sizeof(int));
    if (!loader->sample_order || !loader->buffer || !loader->inputs || !loader->targets) {
        dataloader_free(loader);
        return llmc_set_error("%s: out of memory for a batch of %zu tokens", pattern,
                              batch_tokens);
    }
    prepare_orders(loader);
    return LLMC_OK;
}

void dataloader_free(DataLoader* loader) {
    if (loader->file != NULL) fclose(loader->file);
    if (loader->shard_paths != NULL) {
        for (size_t i = 0; i < loader->num_shards; i++) free(loader->shard_paths[i]);
    }
    free(loader->shard_paths);
    free(loader->shard_num_tokens);
    free(loader->shard_num_samples);
    free(loader->shard_order);
    free(loader->sample_order);
    free(loader->buffer);
    free(loader->inputs);
    free(loader->targets);
    memset(loader, 0, sizeof(*loader));
}

// ---------------------------------------------------------------------------------------------
// batches and position

int dataloader_next_batch(DataLoader* loader) {
    size_t shard = prepare_orders(loader);
    if (loader->sample_index >= batches_in_shard(loader, shard)) {
        loader->shard_index++;
        loader->sample_index = 0;
        shard = prepare_orders(loader);
    }
    size_t k = loader->sample_index * (size_t)loader->num_processes + (size_t)loader->process_rank;
    size_t sample = loader->shuffle ? loader->sample_order[k] : k;
    size_t batch_tokens = loader->B * loader->T;
    size_t first = sample * batch_tokens;
    if (read_tokens(loader, shard, first, batch_tokens + 1, loader->buffer) != LLMC_OK) {
        return LLMC_ERR;
    }
    if (loader->vocab_limit > 0 &&
        check_ids(loader, shard, first, loader->buffer, batch_tokens + 1, loader->vocab_limit) !=
            LLMC_OK) {
        return LLMC_ERR;
    }
    for (size_t i = 0; i < batch_tokens; i++) {
        loader->inputs[i] = (int)loader->buffer[i];
        loader->targets[i] = (int)loader->buffer[i + 1];
    }
    loader->sample_index++;
    return LLMC_OK;
}

void dataloader_reset(DataLoader* loader) {
    loader->shard_index = 0;
    loader->sample_index = 0;
    prepare_orders(loader);
}

int dataloader_resume(DataLoader* loader, uint64_t shard_index, size_t sample_index) {
    uint64_t old_shard_index = loader->shard_index;
    loader->shard_index = shard_index;
    size_t shard = prepare_orders(loader);
    size_t batches = batches_in_shard(loader, shard);
    if (sample_index > batches) {
        loader->shard_index = old_shard_index;
        prepare_orders(loader);
        return llmc_set_error("%s: cannot resume at sample %zu: this process has %zu batches in "
                              "this shard",
                              loader->shard_paths[shard], sample_index, batches);
    }
    loader->sample_index = sample_index;
    return LLMC_OK;
}

uint64_t dataloader_shard_index(const DataLoader* loader) { return loader->shard_index; }
size_t dataloader_sample_index(const DataLoader* loader) { return loader->sample_index; }
uint64_t dataloader_epoch(const DataLoader* loader) {
    return loader->shard_index / loader->num_shards;
}

size_t dataloader_batches_per_epoch(const DataLoader* loader) {
    size_t total = 0;
    for (size_t i = 0; i < loader->num_shards; i++) total += batches_in_shard(loader, i);
    return total;
}

// ---------------------------------------------------------------------------------------------
// vocabulary checks

int dataloader_check_vocab(DataLoader* loader, int vocab_size) {
    if (vocab_size <= 0) {
        return llmc_set_error("dataloader: vocabulary size %d must be positive", vocab_size);
    }
    loader->vocab_limit = vocab_size;  // later batches are checked even if this scan fails
    uint16_t* chunk = (uint16_t*)malloc(VOCAB_SCAN_CHUNK * sizeof(uint16_t));
    if (chunk == NULL) return llmc_set_error("dataloader: out of memory for the vocabulary scan");
    int status = LLMC_OK;
    for (size_t shard = 0; shard < loader->num_shards && status == LLMC_OK; shard++) {
        size_t total = loader->shard_num_tokens[shard];
        for (size_t first = 0; first < total && status == LLMC_OK; first += VOCAB_SCAN_CHUNK) {
            size_t count = total - first < VOCAB_SCAN_CHUNK ? total - first : VOCAB_SCAN_CHUNK;
            status = read_tokens(loader, shard, first, count, chunk);
            if (status == LLMC_OK) {
                status = check_ids(loader, shard, first, chunk, count, vocab_size);
            }
        }
    }
    free(chunk);
    return status;
}

void dataloader_set_vocab_limit(DataLoader* loader, int vocab_size) {
    loader->vocab_limit = vocab_size > 0 ? vocab_size : 0;
}
