// Implements llmc/debug_state.h.
#include "llmc/debug_state.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llmc/error.h"

#define SIDECAR_SUFFIX ".losses"
#define SIDECAR_FIRST_LINE "# llmc reference losses v1"
#define SIDECAR_MAX_STEPS 100000

static int read_exact(FILE* file, void* out, size_t size, size_t count, const char* path,
                      const char* what) {
    if (fread(out, size, count, file) != count) {
        return llmc_set_error("%s: file ends inside %s", path, what);
    }
    return LLMC_OK;
}

int debug_state_read(DebugState* state, const char* path, const GPT2Config* config,
                     size_t num_parameters) {
    memset(state, 0, sizeof(*state));
    FILE* file = fopen(path, "rb");
    if (file == NULL) return llmc_set_error("%s: cannot open debug state file", path);
    int header[256];
    if (fread(header, sizeof(int), 256, file) != 256) {
        fclose(file);
        return llmc_set_error("%s: truncated header (a debug state starts with 1024 bytes)", path);
    }
    if (header[0] != DEBUG_STATE_MAGIC || header[1] != DEBUG_STATE_VERSION) {
        fclose(file);
        return llmc_set_error("%s: bad magic/version %d/%d (expected %d/%d): not a debug state",
                              path, header[0], header[1], DEBUG_STATE_MAGIC, DEBUG_STATE_VERSION);
    }
    int B = header[2], T = header[3];
    if (B <= 0 || T <= 0 || T > config->max_seq_len || B > (1 << 20)) {
        fclose(file);
        return llmc_set_error("%s: bad batch shape B=%d T=%d (model maxT=%d)", path, B, T,
                              config->max_seq_len);
    }
    size_t BT = (size_t)B * T;
    fseek(file, 0, SEEK_END);
    long file_bytes = ftell(file);
    fseek(file, 256 * sizeof(int), SEEK_SET);
    size_t fixed = 256 * sizeof(int) + 2 * BT * sizeof(int) + sizeof(float) +
                   num_parameters * sizeof(float);
    int width = 0;
    if ((size_t)file_bytes == fixed + BT * config->vocab_size * sizeof(float)) {
        width = config->vocab_size;
    } else if ((size_t)file_bytes == fixed + BT * config->padded_vocab_size * sizeof(float)) {
        width = config->padded_vocab_size;
    } else {
        fclose(file);
        return llmc_set_error(
            "%s: file is %ld bytes, which fits neither V=%d nor Vp=%d logit columns for B=%d T=%d "
            "and %zu parameters (wrong model for this debug state?)",
            path, file_bytes, config->vocab_size, config->padded_vocab_size, B, T, num_parameters);
    }
    state->B = B;
    state->T = T;
    state->logits_width = width;
    state->x = (int*)malloc(BT * sizeof(int));
    state->y = (int*)malloc(BT * sizeof(int));
    state->logits = (float*)malloc(BT * width * sizeof(float));
    state->grads = (float*)malloc(num_parameters * sizeof(float));
    int rc = LLMC_OK;
    if (!state->x || !state->y || !state->logits || !state->grads) {
        rc = llmc_set_error("%s: out of memory", path);
    }
    if (rc == LLMC_OK) rc = read_exact(file, state->x, sizeof(int), BT, path, "x");
    if (rc == LLMC_OK) rc = read_exact(file, state->y, sizeof(int), BT, path, "y");
    if (rc == LLMC_OK) rc = read_exact(file, state->logits, sizeof(float), BT * width, path, "logits");
    if (rc == LLMC_OK) rc = read_exact(file, &state->loss, sizeof(float), 1, path, "loss");
    if (rc == LLMC_OK) rc = read_exact(file, state->grads, sizeof(float), num_parameters, path, "grads");
    fclose(file);
    for (size_t i = 0; rc == LLMC_OK && i < BT; i++) {
        if (state->x[i] < 0 || state->x[i] >= config->vocab_size || state->y[i] < 0 ||
            state->y[i] >= config->vocab_size) {
            rc = llmc_set_error("%s: token at position %zu (x=%d, y=%d) is outside [0, %d)", path,
                                i, state->x[i], state->y[i], config->vocab_size);
        }
    }
    if (rc != LLMC_OK) debug_state_free(state);
    return rc;
}

void debug_state_free(DebugState* state) {
    free(state->x);
    free(state->y);
    free(state->logits);
    free(state->grads);
    memset(state, 0, sizeof(*state));
}

int reference_losses_read(ReferenceLosses* ref, const char* debug_state_path) {
    memset(ref, 0, sizeof(*ref));
    size_t path_len = strlen(debug_state_path) + sizeof(SIDECAR_SUFFIX);
    char* path = (char*)malloc(path_len);
    if (path == NULL) return llmc_set_error("out of memory");
    snprintf(path, path_len, "%s%s", debug_state_path, SIDECAR_SUFFIX);
    FILE* file = fopen(path, "r");
    if (file == NULL) {
        free(path);
        return LLMC_OK;  // no sidecar: the caller reports the skipped check
    }
    ref->found = 1;
    ref->losses = (float*)malloc(SIDECAR_MAX_STEPS * sizeof(float));
    int have_mask = 0;  // which of the five AdamW settings were given
    char line[256];
    int line_no = 0;
    int rc = ref->losses ? LLMC_OK : llmc_set_error("%s: out of memory", path);
    while (rc == LLMC_OK && fgets(line, sizeof(line), file) != NULL) {
        line_no++;
        line[strcspn(line, "\r\n")] = '\0';
        if (line_no == 1) {
            if (strcmp(line, SIDECAR_FIRST_LINE) != 0) {
                rc = llmc_set_error("%s: first line must be '%s'", path, SIDECAR_FIRST_LINE);
            }
            continue;
        }
        if (line[0] == '\0' || line[0] == '#') continue;
        char key[64];
        double value;
        char trailing;
        if (sscanf(line, "%63s %lf %c", key, &value, &trailing) != 2) {
            rc = llmc_set_error("%s:%d: expected 'key value', got '%s'", path, line_no, line);
        } else if (strcmp(key, "loss") == 0) {
            if (ref->num_steps == SIDECAR_MAX_STEPS) {
                rc = llmc_set_error("%s: more than %d losses", path, SIDECAR_MAX_STEPS);
            } else {
                ref->losses[ref->num_steps++] = (float)value;
            }
        } else if (strcmp(key, "learning_rate") == 0) {
            ref->adamw.learning_rate = (float)value, have_mask |= 1;
        } else if (strcmp(key, "beta1") == 0) {
            ref->adamw.beta1 = (float)value, have_mask |= 2;
        } else if (strcmp(key, "beta2") == 0) {
            ref->adamw.beta2 = (float)value, have_mask |= 4;
        } else if (strcmp(key, "eps") == 0) {
            ref->adamw.eps = (float)value, have_mask |= 8;
        } else if (strcmp(key, "weight_decay") == 0) {
            ref->adamw.weight_decay = (float)value, have_mask |= 16;
        } else {
            rc = llmc_set_error("%s:%d: unknown key '%s'", path, line_no, key);
        }
    }
    fclose(file);
    if (rc == LLMC_OK && line_no == 0) rc = llmc_set_error("%s: empty file", path);
    if (rc == LLMC_OK && have_mask != 31) {
        rc = llmc_set_error("%s: needs learning_rate, beta1, beta2, eps and weight_decay", path);
    }
    if (rc == LLMC_OK && ref->num_steps == 0) rc = llmc_set_error("%s: no 'loss' lines", path);
    ref->adamw.grad_scale = 1.0f;
    free(path);
    if (rc != LLMC_OK) reference_losses_free(ref);
    return rc;
}

void reference_losses_free(ReferenceLosses* ref) {
    free(ref->losses);
    memset(ref, 0, sizeof(*ref));
}
