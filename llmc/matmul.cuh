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
fp32 (CUBLAS_COMPUTE_32F with fp32 types, no TF32) so parity holds to 1e-4.

Bias gradient: fused into the dW matmul with cuBLASLt's BGRADB epilogue (the column sums of dout
come out of the same pass that reads dout for dW), written (=) in fp32 into scratch, then one tiny
kernel adds it to dbias (+=, gradient accumulation). Where cuBLASLt refuses an fp32 bias gradient
(with bf16 matrices) it is written in floatX (one extra rounding of the column sums). When cuBLASLt has no BGRADB algorithm for a
shape, our deterministic two-stage column sum (cuda_common.cuh) does it. When cuBLASLt offers no
algorithm for a fused GELU epilogue (it depends on the version and precision), the plain matmul
runs and gelu.cuh's kernel does the rest: same result, one more pass.

Host cost: building descriptors and asking cuBLASLt's heuristic for an algorithm takes tens of
microseconds per call, more than some of the matmuls themselves. Each distinct (shape, transposes,
epilogue) gets a cache entry holding its descriptor, layouts and chosen algorithm (or "no
algorithm"), built on first use; later calls only set the bias/aux pointers and launch. One 32 MiB
workspace, allocated once. The same algorithm for the same shape every call keeps results
bit-reproducible.
*/
#ifndef LLMC_MATMUL_CUH
#define LLMC_MATMUL_CUH

#include <string.h>

#include "llmc/cuda_common.cuh"
#include "llmc/gelu.cuh"

#define MATMUL_WORKSPACE_BYTES ((size_t)32 * 1024 * 1024)

static cublasLtHandle_t g_cublaslt = NULL;
static void* g_cublaslt_workspace = NULL;

// One cached matmul configuration.
typedef struct {
    int m, n, k, trans_a, trans_b, has_bias, has_aux;
    cublasLtEpilogue_t epilogue;
    int ok;  // an algorithm was found (0: the caller falls back)
    int bias_fp32;  // BGRAD epilogues: the bias gradient is written as fp32 (else as floatX)
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t layout_a, layout_b, layout_d;
    cublasLtMatmulAlgo_t algo;
} MatmulPlan;

#define MATMUL_MAX_PLANS 128
static MatmulPlan g_matmul_plans[MATMUL_MAX_PLANS];
static int g_matmul_num_plans = 0;

static void matmul_init(void) {
    cublasCheck(cublasLtCreate(&g_cublaslt));
    cudaCheck(cudaMalloc(&g_cublaslt_workspace, MATMUL_WORKSPACE_BYTES));
}

static void matmul_free(void) {
    for (int i = 0; i < g_matmul_num_plans; i++) {
        MatmulPlan* p = &g_matmul_plans[i];
        cublasCheck(cublasLtMatrixLayoutDestroy(p->layout_a));
        cublasCheck(cublasLtMatrixLayoutDestroy(p->layout_b));
        cublasCheck(cublasLtMatrixLayoutDestroy(p->layout_d));
        cublasCheck(cublasLtMatmulDescDestroy(p->desc));
    }
    g_matmul_num_plans = 0;
    cublasCheck(cublasLtDestroy(g_cublaslt));
    cudaCheck(cudaFree(g_cublaslt_workspace));
    g_cublaslt = NULL;
    g_cublaslt_workspace = NULL;
}

static bool matmul_is_bgrad(cublasLtEpilogue_t e) {
    return e == CUBLASLT_EPILOGUE_BGRADA || e == CUBLASLT_EPILOGUE_BGRADB || e == CUBLASLT_EPILOGUE_DGELU_BGRAD;
}

// The cached plan for this configuration, created (descriptor, layouts, heuristic) on first use.
static MatmulPlan* matmul_plan(int m, int n, int k, bool trans_a, bool trans_b, bool has_bias, bool has_aux,
                               cublasLtEpilogue_t epilogue) {
    for (int i = 0; i < g_matmul_num_plans; i++) {
        MatmulPlan* p = &g_matmul_plans[i];
        if (p->m == m && p->n == n && p->k == k && p->trans_a == (int)trans_a && p->trans_b == (int)trans_b &&
            p->has_bias == (int)has_bias && p->has_aux == (int)has_aux && p->epilogue == epilogue) {
            return p;
        }
    }
    if (g_matmul_num_plans == MATMUL_MAX_PLANS) {
        fprintf(stderr, "cuBLASLt: more than %d distinct matmul configurations\n", MATMUL_MAX_PLANS);
        exit(1);
    }
    MatmulPlan* p = &g_matmul_plans[g_matmul_num_plans++];
    memset(p, 0, sizeof(*p));
    p->m = m;
    p->n = n;
    p->k = k;
    p->trans_a = trans_a;
    p->trans_b = trans_b;
    p->has_bias = has_bias;
    p->has_aux = has_aux;
    p->epilogue = epilogue;
    cublasCheck(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
    if (has_aux) {
        const int64_t ld_aux = m;
        cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld_aux,
                                                   sizeof(ld_aux)));
    }
    cublasCheck(cublasLtMatrixLayoutCreate(&p->layout_a, LLMC_CUDA_FLOATX, trans_a ? k : m, trans_a ? m : k,
                                           trans_a ? k : m));
    cublasCheck(cublasLtMatrixLayoutCreate(&p->layout_b, LLMC_CUDA_FLOATX, trans_b ? n : k, trans_b ? k : n,
                                           trans_b ? n : k));
    cublasCheck(cublasLtMatrixLayoutCreate(&p->layout_d, LLMC_CUDA_FLOATX, m, n, m));
    cublasLtMatmulPreference_t pref;
    cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
    const size_t ws = MATMUL_WORKSPACE_BYTES;
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    cublasLtMatmulHeuristicResult_t heuristic;
    int found = 0;
    cublasStatus_t status = CUBLAS_STATUS_NOT_SUPPORTED;
    if (matmul_is_bgrad(epilogue)) {
        // bias gradient: fp32 when cuBLASLt accepts it, else floatX; refused both ways, the caller
        // falls back to the column-sum kernel
        const cudaDataType_t types[2] = {CUDA_R_32F, LLMC_CUDA_FLOATX};
        for (int t = 0; t < 2 && !(status == CUBLAS_STATUS_SUCCESS && found > 0); t++) {
            cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &types[t],
                                                       sizeof(types[t])));
            p->bias_fp32 = types[t] == CUDA_R_32F;
            found = 0;
            status = cublasLtMatmulAlgoGetHeuristic(g_cublaslt, p->desc, p->layout_a, p->layout_b, p->layout_d,
                                                    p->layout_d, pref, 1, &heuristic, &found);
        }
    } else {
        status = cublasLtMatmulAlgoGetHeuristic(g_cublaslt, p->desc, p->layout_a, p->layout_b, p->layout_d,
                                                p->layout_d, pref, 1, &heuristic, &found);
    }
    cublasCheck(cublasLtMatmulPreferenceDestroy(pref));
    p->ok = status == CUBLAS_STATUS_SUCCESS && found > 0;
    if (!p->ok && epilogue == CUBLASLT_EPILOGUE_DEFAULT) {
        if (status != CUBLAS_STATUS_SUCCESS) cublasCheck(status);
        fprintf(stderr, "cuBLASLt: no algorithm for a plain matmul m=%d n=%d k=%d\n", m, n, k);
        exit(1);
    }
    if (p->ok) p->algo = heuristic.algo;
    return p;
}

// Column-major D (m, n), ldd = m:  D = op(A) op(B) [+ D if accumulate], then the epilogue.
// A is stored (k, m) when trans_a, else (m, k); B is stored (n, k) when trans_b, else (k, n).
// bias: added by the BIAS epilogues (floatX, length m); written by the BGRAD epilogues (fp32).
// aux: the GELU input (written by GELU_AUX*, read by DGELU), column-major (m, n), ld = m.
// Returns false when cuBLASLt has no algorithm for this epilogue (only then), true after launching.
static bool matmul_lt(floatX* d, const floatX* a, const floatX* b, const void* bias, int m, int n, int k,
                      bool trans_a, bool trans_b, bool accumulate, cublasLtEpilogue_t epilogue, floatX* aux,
                      cudaStream_t stream) {
    MatmulPlan* p = matmul_plan(m, n, k, trans_a, trans_b, bias != NULL, aux != NULL, epilogue);
    if (!p->ok) return false;
    if (bias != NULL) {
        cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    }
    if (aux != NULL) {
        cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux,
                                                   sizeof(aux)));
    }
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    const cublasStatus_t status =
        cublasLtMatmul(g_cublaslt, p->desc, &alpha, a, p->layout_a, b, p->layout_b, &beta, d, p->layout_d, d,
                       p->layout_d, &p->algo, g_cublaslt_workspace, MATMUL_WORKSPACE_BYTES, stream);
    if (status != CUBLAS_STATUS_SUCCESS && epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
        // a fused epilogue the heuristic offered but the launch refused: never use it again
        p->ok = 0;
        return false;
    }
    cublasCheck(status);
    return true;
}

// out[i] += add[i] (add: fp32 or floatX), i < n
template <typename T>
__global__ void add_vector_kernel(floatX* out, const T* add, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_float<floatX>(to_float(out[i]) + to_float(add[i]));
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
// scratch: column_sum_scratch_floats(N, OC) floats (at least OC).
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
    if (dbias != NULL && matmul_lt(dweight, inp, dout, scratch, C, OC, N, false, true, true, CUBLASLT_EPILOGUE_BGRADB,
                                   NULL, stream)) {
        // the plan says in which type cuBLASLt wrote the column sums into scratch
        if (matmul_plan(C, OC, N, false, true, true, false, CUBLASLT_EPILOGUE_BGRADB)->bias_fp32) {
            add_vector_kernel<float><<<ceil_div(OC, 256), 256, 0, stream>>>(dbias, scratch, OC);
        } else {
            add_vector_kernel<floatX><<<ceil_div(OC, 256), 256, 0, stream>>>(dbias, (const floatX*)scratch, OC);
        }
        cudaCheckLast();
        return;
    }
    matmul_lt(dweight, inp, dout, NULL, C, OC, N, false, true, true, CUBLASLT_EPILOGUE_DEFAULT, NULL, stream);
    if (dbias != NULL) column_sum(dbias, dout, N, OC, scratch, 1, stream);
}

#endif  // LLMC_MATMUL_CUH
