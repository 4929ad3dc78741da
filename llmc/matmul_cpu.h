/*
Single-precision matrix multiply for the CPU reference engine.

    C[M,N] = beta * C + op(A)[M,K] @ op(B)[K,N]

Row-major storage. op(A) is A (M x K, row stride lda) or, with trans_a, the transpose of a K x M
matrix with row stride lda; likewise op(B) and trans_b. This one routine covers all three matmuls of
a linear layer y = x W^T + b (x: (BT, C), W: (OC, C)):
    forward  y  = x @ W^T          sgemm(0, 1, BT, OC, C,  x,  C,  W, C,  0, y,  OC)
    backward dx += dy @ W          sgemm(0, 0, BT, C,  OC, dy, OC, W, C,  1, dx, C)
    backward dW += dy^T @ x        sgemm(1, 0, OC, C,  BT, dy, OC, x, C,  1, dW, C)

It is deterministic: every element of C is reduced over K in the same order whatever the number of
OpenMP threads, so training runs repeat bit for bit. Speed: see the implementation's comment.
*/
#ifndef LLMC_MATMUL_CPU_H
#define LLMC_MATMUL_CPU_H

#ifdef __cplusplus
extern "C" {
#endif

void sgemm(int trans_a, int trans_b, int M, int N, int K, const float* A, int lda, const float* B,
           int ldb, float beta, float* C, int ldc);

#ifdef __cplusplus
}
#endif
#endif  // LLMC_MATMUL_CPU_H
