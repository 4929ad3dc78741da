// Implements llmc/error.h: one message buffer per thread.
#include <stdarg.h>
#include <stdio.h>

#include "llmc/error.h"

#define LLMC_ERROR_CAPACITY 1024
static _Thread_local char error_message[LLMC_ERROR_CAPACITY];

int llmc_set_error(const char* fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(error_message, sizeof(error_message), fmt, args);
    va_end(args);
    return LLMC_ERR;
}

const char* llmc_error(void) { return error_message; }
