// Implements llmc/tokenizer.h: the GPT-2 tokenizer file reader and safe printing of samples.
#define _POSIX_C_SOURCE 200809L  // fileno, fstat

#include "llmc/tokenizer.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "llmc/error.h"  // defines: llmc_set_error, LLMC_OK, LLMC_ERR

#define TOKENIZER_HEADER_BYTES (TOKENIZER_HEADER_INTS * sizeof(int32_t))
#define TOKENIZER_MAX_FILE_BYTES ((long long)1 << 30)  // 1 GiB: far above any real vocabulary

// ---------------------------------------------------------------------------------------------
// reading

// Reads the whole file into a malloc'd buffer (a GPT-2 tokenizer file is about 400 KB).
static int read_whole_file(const char* path, uint8_t** data, size_t* size) {
    FILE* f = fopen(path, "rb");
    if (f == NULL) {
        return llmc_set_error("%s: cannot open tokenizer file: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return llmc_set_error("%s: cannot read tokenizer file: not a regular file", path);
    }
    if (st.st_size > TOKENIZER_MAX_FILE_BYTES) {
        fclose(f);
        return llmc_set_error("%s: %lld bytes is too large for a tokenizer file", path,
                              (long long)st.st_size);
    }
    size_t length = (size_t)st.st_size;
    uint8_t* buffer = (uint8_t*)malloc(length > 0 ? length : 1);
    if (buffer == NULL) {
        fclose(f);
        return llmc_set_error("%s: out of memory for %zu bytes", path, length);
    }
    size_t got = fread(buffer, 1, length, f);
    int failed = ferror(f);
    fclose(f);
    if (failed || got != length) {
        free(buffer);
        return llmc_set_error("%s: cannot read tokenizer file (%zu of %zu bytes read)", path, got,
                              length);
    }
    *data = buffer;
    *size = length;
    return LLMC_OK;
}

// Checks the header and the token table of a file held in memory and builds the decoder.
static int parse_tokenizer(Tokenizer* tokenizer, const char* path, const uint8_t* data,
                           size_t size) {
    if (size < TOKENIZER_HEADER_BYTES) {
        return llmc_set_error("%s: truncated header (%zu of %zu bytes): not a tokenizer file", path,
                              size, TOKENIZER_HEADER_BYTES);
    }
    int32_t header[TOKENIZER_HEADER_INTS];
    memcpy(header, data, TOKENIZER_HEADER_BYTES);
    if (header[0] != TOKENIZER_MAGIC) {
        return llmc_set_error("%s: bad magic %d (expected %d): not a tokenizer file", path,
                              header[0], TOKENIZER_MAGIC);
    }
    if (header[1] != 1 && header[1] != 2) {
        return llmc_set_error("%s: unsupported tokenizer version %d (expected 1 or 2)", path,
                              header[1]);
    }
    if (header[2] <= 0) {
        return llmc_set_error("%s: bad number of tokens %d in the header", path, header[2]);
    }
    uint32_t vocab_size = (uint32_t)header[2];
    int64_t eot = header[1] == 2 ? header[3] : TOKENIZER_DEFAULT_EOT;
    if (eot < 0 || eot >= (int64_t)vocab_size) {
        return llmc_set_error("%s: EOT token %lld is outside the vocabulary of %u tokens%s", path,
                              (long long)eot, vocab_size,
                              header[1] == 1 ? " (version 1 files use GPT-2's 50256)" : "");
    }

    size_t body = size - TOKENIZER_HEADER_BYTES;
    tokenizer->offsets = (size_t*)malloc(((size_t)vocab_size + 1) * sizeof(size_t));
    tokenizer->bytes = (uint8_t*)malloc(body > 0 ? body : 1);
    if (tokenizer->offsets == NULL || tokenizer->bytes == NULL) {
        return llmc_set_error("%s: out of memory for %u tokens", path, vocab_size);
    }
    size_t pos = TOKENIZER_HEADER_BYTES;
    size_t out = 0;
    for (uint32_t i = 0; i < vocab_size; i++) {
        if (pos >= size) {
            return llmc_set_error("%s: truncated: the file ends before token %u of %u", path, i,
                                  vocab_size);
        }
        size_t length = data[pos++];
        if (length == 0) return llmc_set_error("%s: token %u has length 0", path, i);
        if (length > size - pos) {
            return llmc_set_error("%s: truncated: token %u needs %zu bytes, %zu are left", path, i,
                                  length, size - pos);
        }
        tokenizer->offsets[i] = out;
        memcpy(tokenizer->bytes + out, data + pos, length);
        out += length;
        pos += length;
    }
    tokenizer->offsets[vocab_size] = out;
    if (pos != size) {
        return llmc_set_error("%s: %zu extra bytes after the last of %u tokens", path, size - pos,
                              vocab_size);
    }
    tokenizer->vocab_size = vocab_size;
    tokenizer->eot_token = (uint32_t)eot;
    return LLMC_OK;
}

int tokenizer_init(Tokenizer* tokenizer, const char* path) {
    memset(tokenizer, 0, sizeof(*tokenizer));
    uint8_t* data = NULL;
    size_t size = 0;
    if (read_whole_file(path, &data, &size) != LLMC_OK) return LLMC_ERR;
    int status = parse_tokenizer(tokenizer, path, data, size);
    free(data);
    if (status != LLMC_OK) tokenizer_free(tokenizer);
    return status;
}

void tokenizer_free(Tokenizer* tokenizer) {
    free(tokenizer->bytes);
    free(tokenizer->offsets);
    memset(tokenizer, 0, sizeof(*tokenizer));
}

const uint8_t* tokenizer_decode(const Tokenizer* tokenizer, uint32_t id, size_t* length) {
    if (id >= tokenizer->vocab_size) {
        llmc_set_error("tokenizer: token id %u is outside the vocabulary of %u tokens", id,
                       tokenizer->vocab_size);
        return NULL;
    }
    *length = tokenizer->offsets[id + 1] - tokenizer->offsets[id];
    return tokenizer->bytes + tokenizer->offsets[id];
}

// ---------------------------------------------------------------------------------------------
// printing

// Length of the valid, printable UTF-8 sequence starting at s (at most n bytes), or 0 if there
// is none: a truncated or overlong sequence, a surrogate, a code point past U+10FFFF, or a C1
// control character (U+0080..U+009F).
static size_t utf8_sequence_length(const uint8_t* s, size_t n) {
    uint8_t lead = s[0];
    size_t length;
    uint8_t low = 0x80, high = 0xBF;  // allowed range of the second byte
    if (lead >= 0xC2 && lead <= 0xDF) {
        length = 2;
        if (lead == 0xC2) low = 0xA0;  // U+0080..U+009F are control characters
    } else if (lead >= 0xE0 && lead <= 0xEF) {
        length = 3;
        if (lead == 0xE0) low = 0xA0;   // overlong
        if (lead == 0xED) high = 0x9F;  // surrogates
    } else if (lead >= 0xF0 && lead <= 0xF4) {
        length = 4;
        if (lead == 0xF0) low = 0x90;   // overlong
        if (lead == 0xF4) high = 0x8F;  // past U+10FFFF
    } else {
        return 0;
    }
    if (n < length) return 0;
    if (s[1] < low || s[1] > high) return 0;
    for (size_t i = 2; i < length; i++) {
        if (s[i] < 0x80 || s[i] > 0xBF) return 0;
    }
    return length;
}

void tokenizer_write_safe(FILE* out, const uint8_t* bytes, size_t length) {
    size_t i = 0;
    while (i < length) {
        uint8_t c = bytes[i];
        if ((c >= 0x20 && c < 0x7F) || c == '\n' || c == '\t') {
            fputc(c, out);
            i++;
            continue;
        }
        size_t sequence = c >= 0x80 ? utf8_sequence_length(bytes + i, length - i) : 0;
        if (sequence > 0) {
            fwrite(bytes + i, 1, sequence, out);
            i += sequence;
        } else {
            fprintf(out, "\\x%02X", c);
            i++;
        }
    }
}

int tokenizer_print(const Tokenizer* tokenizer, FILE* out, const int* ids, size_t n) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (uint32_t)ids[i] >= tokenizer->vocab_size) {
            return llmc_set_error("tokenizer: token id %d at position %zu is outside the "
                                  "vocabulary of %u tokens",
                                  ids[i], i, tokenizer->vocab_size);
        }
        total += tokenizer->offsets[ids[i] + 1] - tokenizer->offsets[ids[i]];
    }
    uint8_t* text = (uint8_t*)malloc(total > 0 ? total : 1);
    if (text == NULL) return llmc_set_error("tokenizer: out of memory for %zu bytes", total);
    size_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        size_t length = tokenizer->offsets[ids[i] + 1] - tokenizer->offsets[ids[i]];
        memcpy(text + pos, tokenizer->bytes + tokenizer->offsets[ids[i]], length);
        pos += length;
    }
    tokenizer_write_safe(out, text, total);
    free(text);
    return LLMC_OK;
}
