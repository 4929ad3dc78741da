/*
Matmuls of the linear layers, through cuBLASLt, with fused epilogues.

Row-major shapes (N = B*T rows, weight W is (OC, C) as in PyTorch's nn.Linear):
  forward        out (N, OC) = inp (N, C) @ W^T + bias             epilogue BIAS
  forward GELU   out (N, OC) = gelu(inp @ W^T + bias),             epilogue GELU_AUX_BIAS
                 pre_gelu (N, OC) = inp @ W^T + bias  (kept for the backward pass)
  backward       dinp (N, C) = dout (N, OC) @ W                    ("=": a fresh activation grad)
                 with dGELU: dinp = (dout @ W) * gelu'(pre_gelu)   epilogue DGELU (the gradient
                 through the GELU that produced this layer's input, fused in the same pass)
                 dW (OC, C) += dout^T @ inp                        ("+=": gradient accumulation)
                 dbias (OC) += sum_n dout[n, :]                    deterministic column sum
cuBLASLt is column-major: a row-major (R, K) matrix is a column-major (K, R) one, so each product
above is computed in its transposed form (e.g. out^T = W @ inp^T, i.e. m = OC, n = N, k = C).

Precision: bf16 build, bf16 operands with fp32 accumulation (CUBLAS_COMPUTE_32F); fp32 build, full
fp32 (CUBLAS_COMPUTE_32F with fp32 types, no TF32) so parity holds to 1e-4. The bias gradient is
our own column sum rather than cuBLASLt's BGRAD epilogue, because BGRAD writes (=) while
gradient accumulation needs +=. When cuBLASLt offers no algorithm for a fused GELU epilogue (it
depends on the version and precision), the plain matmul runs and gelu.cuh's kernel does the rest:
same result, one more pass.
*/
#ifndef LLMC_MATMUL_CUH
#define LLMC_MATMUL_CUH

#include "llmc/cuda_common.cuh"
#include "llmc/gelu.cuh"

#define MATMUL_WORKSPACE_BYTES ((size_t)32 * 1024 * 1024)

static cublasLtHandle_t g_cublaslt = NULL;
static void* g_cublaslt_workspace = NULL;

static void matmul_init(void) {
    cublasCheck(cublasLtCreate(&g_cublaslt));
    cudaCheck(cudaMalloc(&g_cublaslt_workspace, MATMUL_WORKSPACE_BYTES));
}

static void matmul_free(void) {
    cublasCheck(cublasLtDestroy(g_cublaslt));
    cudaCheck(cudaFree(g_cublaslt_workspace));
    g_cublaslt = NULL;
    g_cublaslt_workspace = NULL;
}

// Column-major D (m, n), ldd = m:  D = op(A) op(B) [+ D if accumulate], then the epilogue.
// A is stored (k, m) when trans_a, else (m, k); B is stored (n, k) when trans_b, else (k, n).
// aux: the GELU input (written by GELU_AUX*, read by DGELU), column-major (m, n), ld = m.
// Returns false when cuBLASLt has no algorithm for this epilogue (only then), true after launching.
static bool matmul_lt(floatX* d, const floatX* a, const floatX* b, const floatX* bias, int m, int n, int k,
                      bool trans_a, bool trans_b, bool accumulate, cublasLtEpilogue_t epilogue, floatX* aux,
                      cudaStream_t stream) {
    cublasLtMatmulDesc_t desc;
    cublasCheck(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
    cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
    if (bias != NULL) {
        cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    }
    if (aux != NULL) {
        const int64_t ld_aux = m;
        cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
        cublasCheck(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld_aux, sizeof(ld_aux)));
    }
    cublasLtMatrixLayout_t layout_a, layout_b, layout_d;
    cublasCheck(cublasLtMatrixLayoutCreate(&layout_a, LLMC_CUDA_FLOATX, trans_a ? k : m, trans_a ? m : k, trans_a ? k : m));
    cublasCheck(cublasLtMatrixLayoutCreate(&layout_b, LLMC_CUDA_FLOATX, trans_b ? n : k, trans_b ? k : n, trans_b ? n : k));
    cublasCheck(cublasLtMatrixLayoutCreate(&layout_d, LLMC_CUDA_FLOATX, m, n, m));

    cublasLtMatmulPreference_t pref;
    cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
    const size_t ws = MATMUL_WORKSPACE_BYTES;
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    cublasLtMatmulHeuristicResult_t heuristic;
    int found = 0;
    cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(g_cublaslt, desc, layout_a, layout_b, layout_d, layout_d,
                                                           pref, 1, &heuristic, &found);
    bool ok = status == CUBLAS_STATUS_SUCCESS && found > 0;
    if (!ok && (status != CUBLAS_STATUS_SUCCESS && status != CUBLAS_STATUS_NOT_SUPPORTED)) cublasCheck(status);
    if (!ok && epilogue == CUBLASLT_EPILOGUE_DEFAULT) {
        fprintf(stderr, "cuBLASLt: no algorithm for a plain matmul m=%d n=%d k=%d\n", m, n, k);
        exit(1);
    }
    if (ok) {
        const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
        cublasCheck(cublasLtMatmul(g_cublaslt, desc, &alpha, a, layout_a, b, layout_b, &beta, d, layout_d, d, layout_d,
                                   &heuristic.algo, g_cublaslt_workspace, MATMUL_WORKSPACE_BYTES, stream));
    }
    cublasCheck(cublasLtMatmulPreferenceDestroy(pref));
    cublasCheck(cublasLtMatrixLayoutDestroy(layout_a));
    cublasCheck(cublasLtMatrixLayoutDestroy(layout_b));
    cublasCheck(cublasLtMatrixLayoutDestroy(layout_d));
    cublasCheck(cublasLtMatmulDescDestroy(desc));
    return ok;
}

// out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias (bias may be NULL).
// With pre_gelu != NULL: pre_gelu = inp @ weight^T + bias and out = gelu(pre_gelu).
static void matmul_forward(floatX* out, floatX* pre_gelu, const floatX* inp, const floatX* weight, const floatX* bias,
                           int N, int C, int OC, cudaStream_t stream) {
    if (pre_gelu == NULL) {
        matmul_lt(out, weight, inp, bias, OC, N, C, true, false, false,
                  bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT, NULL, stream);
        return;
    }
    const cublasLtEpilogue_t epilogue = bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
    if (matmul_lt(out, weight, inp, bias, OC, N, C, true, false, false, epilogue, pre_gelu, stream)) return;
    // no fused algorithm: matmul into pre_gelu, then the GELU kernel
    matmul_lt(pre_gelu, weight, inp, bias, OC, N, C, true, false, false,
              bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT, NULL, stream);
    gelu_forward(out, pre_gelu, (size_t)N * OC, stream);
}

// Backward of out = inp @ weight^T + bias.
//   dinp (N, C) = dout @ weight, times gelu'(pre_gelu) when pre_gelu != NULL (pre_gelu (N, C) is the
//   GELU input that produced `inp`).
//   dweight (OC, C) += dout^T @ inp;  dbias (OC) += column sums of dout (skipped when dbias is NULL).
// scratch: column_sum_scratch_floats(N, OC) floats.
static void matmul_backward(floatX* dinp, floatX* dweight, floatX* dbias, const floatX* dout, const floatX* inp,
                            const floatX* weight, floatX* pre_gelu, float* scratch, int N, int C, int OC,
                            cudaStream_t stream) {
    if (pre_gelu == NULL) {
        matmul_lt(dinp, weight, dout, NULL, C, N, OC, false, false, false, CUBLASLT_EPILOGUE_DEFAULT, NULL, stream);
    } else if (!matmul_lt(dinp, weight, dout, NULL, C, N, OC, false, false, false, CUBLASLT_EPILOGUE_DGELU, pre_gelu,
                          stream)) {
        matmul_lt(dinp, weight, dout, NULL, C, N, OC, false, false, false, CUBLASLT_EPILOGUE_DEFAULT, NULL, stream);
        gelu_backward(dinp, pre_gelu, dinp, (size_t)N * C, stream);
    }
    matmul_lt(dweight, inp, dout, NULL, C, OC, N, false, true, true, CUBLASLT_EPILOGUE_DEFAULT, NULL, stream);
    if (dbias != NULL) column_sum(dbias, dout, N, OC, scratch, 1, stream);
}

#endif  // LLMC_MATMUL_CUH
