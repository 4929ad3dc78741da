/*
Token shard loader: batches of (inputs, targets) for training and evaluation, data parallel ready.

Shards. A dataset is a set of token shard files matched by a glob pattern (glob(3), sorted by name).
Each shard is a 256 x int32 header ([0] = 20240520 magic, [1] = 1 version, [2] = number of tokens)
followed by that many uint16 tokens (../shared/DESIGN.md, section 4). Every shard's header, version
and exact file length are checked at init, so a truncated or padded file fails before training.

Samples. A shard of n tokens is cut into samples of B*T tokens: sample s covers tokens
[s*B*T, s*B*T + B*T] (B*T + 1 tokens: the inputs, and the targets shifted by one, so consecutive
samples share one boundary token). A shard holds S = (n - 1) / (B*T) samples.

Ranks. With N processes, rank r takes samples r, r+N, r+2N, ... of each shard, so the ranks get
disjoint batches that together cover the shard. Every rank takes the same number of batches from
a shard, S / N, so all ranks move to the next shard together; the last S % N samples of a shard
(fewer than N) are not used in that epoch. A shard with S < N, that is less than one batch for
some rank, is an error. After the last shard the loader wraps to the first and the epoch count
goes up by one.

Shuffling. With shuffle on, each epoch permutes the shard order and, for each shard, the order of
its samples (rank r then takes permuted samples r, r+N, ...). The permutations are drawn with
llmc/rand.h from seeds derived from seed + epoch, so every rank computes the same ones without
talking to the others, and a position (shard index, sample index) determines the stream: resuming
needs no other state.

Position. shard_index counts the shards started since the beginning, across epochs
(epoch = shard_index / num_shards); sample_index counts the batches this rank has taken from the
current shard. The optimizer-state file stores these two numbers; dataloader_resume() restores
them and the next batch is the one that would have followed.

Memory: only the current batch is read (fseek + fread of B*T + 1 tokens), never the whole dataset.
Token ids are checked against the vocabulary with dataloader_check_vocab() (a scan of all shards)
or lazily per batch after dataloader_set_vocab_limit().

Every function that can fail returns LLMC_OK or LLMC_ERR with a message in llmc_error() that names
the file at fault.
*/
#ifndef LLMC_DATALOADER_H
#define LLMC_DATALOADER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SHARD_MAGIC 20240520
#define SHARD_VERSION 1
#define SHARD_HEADER_INTS 256

typedef struct {
    // settings
    size_t B;
    size_t T;
    int process_rank;
    int num_processes;
    int shuffle;
    uint64_t seed;
    int vocab_limit;  // > 0: every batch's ids are checked to be below it
    // the shards, sorted by file name
    size_t num_shards;
    char** shard_paths;         // (num_shards) owned copies of the glob results
    size_t* shard_num_tokens;   // (num_shards) from the validated headers
    size_t* shard_num_samples;  // (num_shards) samples of B*T tokens (+1) in each shard
    size_t num_tokens;          // all shards together
    // position (see the comment above)
    uint64_t shard_index;      // shards started since the beginning, across epochs
    size_t sample_index;       // batches this rank took from the current shard
    uint32_t* shard_order;     // (num_shards) this epoch's shard order
    uint32_t* sample_order;    // (max shard_num_samples) the current shard's sample order
    uint64_t order_epoch;      // the epoch shard_order was drawn for
    int64_t sample_order_for;  // the shard_index sample_order was drawn for (-1: none)
    FILE* file;                // the current shard, opened on demand
    size_t file_shard;         // which shard `file` is (valid when file != NULL)
    // the batch
    uint16_t* buffer;  // (B*T + 1) raw tokens
    int* inputs;       // (B, T)
    int* targets;      // (B, T)
} DataLoader;

// Globs the pattern, validates every shard and allocates the batch buffers. B, T > 0;
// 0 <= process_rank < num_processes. On failure *loader holds nothing to free.
int dataloader_init(DataLoader* loader, const char* pattern, size_t B, size_t T, int process_rank,
                    int num_processes, int shuffle, uint64_t seed);
// Reads the next batch into loader->inputs and loader->targets, moving to the next shard (and the
// next epoch) as needed.
int dataloader_next_batch(DataLoader* loader);
// Back to the first batch of epoch 0.
void dataloader_reset(DataLoader* loader);
// Continues from a position read with the getters below; the next batch is the one that followed
// it. sample_index may be at most the rank's number of batches in that shard.
int dataloader_resume(DataLoader* loader, uint64_t shard_index, size_t sample_index);
void dataloader_free(DataLoader* loader);

uint64_t dataloader_shard_index(const DataLoader* loader);
size_t dataloader_sample_index(const DataLoader* loader);
uint64_t dataloader_epoch(const DataLoader* loader);
// Batches this rank gets per epoch (all shards).
size_t dataloader_batches_per_epoch(const DataLoader* loader);

// Scans every token of every shard and fails on the first id >= vocab_size, naming the shard, the
// token's position and the id. Also sets the per-batch limit below (even when the scan fails).
int dataloader_check_vocab(DataLoader* loader, int vocab_size);
// From now on dataloader_next_batch() fails on ids >= vocab_size (0 turns the check off).
void dataloader_set_vocab_limit(DataLoader* loader, int vocab_size);

#ifdef __cplusplus
}
#endif
#endif  // LLMC_DATALOADER_H
