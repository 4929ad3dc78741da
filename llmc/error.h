/*
Error reporting for the C side of llmc.

Library code never calls exit() and never prints: it is also loaded into a Python interpreter, where
a bad file or a bad argument must become an exception, not a dead process. A function that can fail
returns an int (LLMC_OK = 0 on success, LLMC_ERR = -1 on failure) after recording a message with
llmc_set_error(). The message is kept per thread and read back with llmc_error(). Messages name the
file or argument at fault and say what is wrong with it, e.g.
    "model.bin: bad magic 12345 (expected 20240326): not an llmc/llm.c model file"
The command-line programs print the message to stderr and exit with status 1.
*/
#ifndef LLMC_ERROR_H
#define LLMC_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

#define LLMC_OK 0
#define LLMC_ERR (-1)

// Formats a message into this thread's error buffer and returns LLMC_ERR, so that call sites read
// `return llmc_set_error("%s: truncated header", path);`.
int llmc_set_error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// The last message recorded on this thread ("" if none).
const char* llmc_error(void);

#ifdef __cplusplus
}
#endif
#endif  // LLMC_ERROR_H
