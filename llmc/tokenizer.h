/*
GPT-2 tokenizer decoder: token id -> its bytes, for printing samples from the C programs.

Only decoding lives in C; encoding (BPE merges) is done in Python with tiktoken when the data is
prepared. The tokenizer file (../shared/DESIGN.md, section 4) is a 256 x int32 header
([0] = 20240328 magic, [1] = version, [2] = number of tokens, [3] = EOT id in version 2) and then,
per token, one length byte (1..255) followed by that many bytes. Version 1 files, written by older
llm.c, have no EOT field; their EOT is GPT-2's 50256.

A token is raw bytes, not a C string: a GPT-2 token may be a lone 0x00 byte, or part of a UTF-8
character whose other bytes are in the next token. tokenizer_decode() therefore returns a pointer
and a length, and the printing helper concatenates a whole sequence before escaping, so characters
split across tokens come out whole.
*/
#ifndef LLMC_TOKENIZER_H
#define LLMC_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TOKENIZER_MAGIC 20240328
#define TOKENIZER_HEADER_INTS 256
#define TOKENIZER_DEFAULT_EOT 50256  // EOT of version 1 files (GPT-2's <|endoftext|>)

typedef struct {
    uint32_t vocab_size;
    uint32_t eot_token;
    uint8_t* bytes;    // all tokens' bytes back to back
    size_t* offsets;   // (vocab_size + 1) token i is bytes[offsets[i] .. offsets[i+1])
} Tokenizer;

// Reads and validates a tokenizer file (magic, version, token count, EOT id, every length byte,
// no bytes missing or left over). On failure *tokenizer holds nothing to free.
int tokenizer_init(Tokenizer* tokenizer, const char* path);
// The bytes of token id (not NUL-terminated; *length > 0). NULL with an error for id >= vocab_size.
const uint8_t* tokenizer_decode(const Tokenizer* tokenizer, uint32_t id, size_t* length);
void tokenizer_free(Tokenizer* tokenizer);

// Writes bytes to out so that the terminal shows text and nothing else: valid UTF-8 is written
// as is, newlines and tabs too; control characters, DEL and bytes that are not valid UTF-8 are
// written as \xNN.
void tokenizer_write_safe(FILE* out, const uint8_t* bytes, size_t length);
// Decodes ids[0..n) and writes the concatenated bytes with tokenizer_write_safe().
int tokenizer_print(const Tokenizer* tokenizer, FILE* out, const int* ids, size_t n);

#ifdef __cplusplus
}
#endif
#endif  // LLMC_TOKENIZER_H
