/*
What every CUDA file of the engine shares: error checks, the storage type floatX, conversions,
stochastic rounding and the deterministic reduction helpers.

Precision is a compile-time switch. Without LLMC_FP32, floatX is __nv_bfloat16: activations,
parameters and gradients are stored in bf16 and every kernel accumulates in fp32, while AdamW keeps
fp32 master weights and fp32 m, v. With -DLLMC_FP32 every tensor is fp32 and matmuls run in full
fp32 (no TF32), which is the mode the parity tests hold to 1e-4 against the PyTorch reference. One
switch at compile time (two executables: train_gpt2cu and train_gpt2cu_fp32) rather than a run-time
flag because every kernel is specialized to its element type, the fp32 path costs nothing in the
bf16 binary, and the same source is compiled and tested both ways.

Error policy: these headers serve the command-line programs, which stop at the first CUDA or cuBLAS
error with the file, line and message (cudaCheck / cublasCheck / cudaCheckLast after each launch).
A library build defines LLMC_CUDA_THROW before including this header (the Python module,
csrc/bind_cuda.cu): the same checks then throw std::runtime_error instead, so a CUDA or cuBLAS error
becomes a Python RuntimeError rather than the end of the interpreter.

Determinism: no reduction in this engine uses atomics. Reductions are split into fixed chunks that
depend only on the problem size, each chunk is reduced in a fixed order (warp shuffles, then shared
memory in a fixed tree), and the chunk results are combined in index order, so the same inputs give
bit-identical outputs run after run on the same GPU.
*/
#ifndef LLMC_CUDA_COMMON_CUH
#define LLMC_CUDA_COMMON_CUH

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#ifdef LLMC_CUDA_THROW
#include <stdexcept>
#include <string>
#endif

// ----------------------------------------------------------------------------------------------
// error checks

#ifdef LLMC_CUDA_THROW
static inline void cuda_check_impl(cudaError_t err, const char* file, int line) {
    if (err != cudaSuccess) {
        (void)cudaGetLastError();  // clear a non-sticky error (e.g. out of memory) so later checks pass
        throw std::runtime_error(std::string("CUDA error at ") + file + ":" + std::to_string(line) + ": " +
                                 cudaGetErrorString(err));
    }
}
static inline void cublas_check_impl(cublasStatus_t status, const char* file, int line) {
    if (status != CUBLAS_STATUS_SUCCESS) {
        throw std::runtime_error(std::string("cuBLAS error at ") + file + ":" + std::to_string(line) +
                                 ": status " + std::to_string((int)status));
    }
}
#else
static inline void cuda_check_impl(cudaError_t err, const char* file, int line) {
    if (err != cudaSuccess) {
        fprintf(stderr, "CUDA error at %s:%d: %s\n", file, line, cudaGetErrorString(err));
        exit(1);
    }
}
static inline void cublas_check_impl(cublasStatus_t status, const char* file, int line) {
    if (status != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "cuBLAS error at %s:%d: status %d\n", file, line, (int)status);
        exit(1);
    }
}
#endif
#define cudaCheck(call) cuda_check_impl((call), __FILE__, __LINE__)
// after every kernel launch: catches bad launch configurations at the launch site
#define cudaCheckLast() cuda_check_impl(cudaGetLastError(), __FILE__, __LINE__)
#define cublasCheck(call) cublas_check_impl((call), __FILE__, __LINE__)

// host allocations of the engine: the program stops with what failed (the library build throws),
// instead of crashing later on a NULL pointer
static inline void* malloc_check_impl(size_t bytes, const char* file, int line) {
    void* p = malloc(bytes);
    if (p == NULL && bytes > 0) {
#ifdef LLMC_CUDA_THROW
        throw std::runtime_error(std::string("out of host memory at ") + file + ":" + std::to_string(line) +
                                 ": " + std::to_string(bytes) + " bytes");
#else
        fprintf(stderr, "out of host memory at %s:%d: %zu bytes\n", file, line, bytes);
        exit(1);
#endif
    }
    return p;
}
#define mallocCheck(bytes) malloc_check_impl((bytes), __FILE__, __LINE__)

// Launches kernel<<<grid, block, 0, stream>>>(args...), with pdl as a programmatic dependent launch
// of the stream's previous kernel (sm_90): its blocks may become resident while that kernel still
// runs, so the kernel must execute griddepcontrol.wait before it reads what that kernel wrote.
template <typename... Params, typename... Args>
static void launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, bool pdl,
                             Args... args) {
    cudaLaunchConfig_t launch = {};
    launch.gridDim = grid;
    launch.blockDim = block;
    launch.stream = stream;
    cudaLaunchAttribute attribute;
    attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute.val.programmaticStreamSerializationAllowed = 1;
    launch.attrs = &attribute;
    launch.numAttrs = pdl ? 1 : 0;
    cudaCheck(cudaLaunchKernelEx(&launch, kernel, args...));
}

// ----------------------------------------------------------------------------------------------
// storage type

#ifdef LLMC_FP32
typedef float floatX;
#define LLMC_PRECISION_NAME "fp32"
#define LLMC_CUDA_FLOATX CUDA_R_32F
#else
typedef __nv_bfloat16 floatX;
#define LLMC_PRECISION_NAME "bf16"
#define LLMC_CUDA_FLOATX CUDA_R_16BF
#endif

__host__ __device__ static inline float to_float(float x) { return x; }
__host__ __device__ static inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__host__ __device__ static inline T from_float(float x);
template <>
__host__ __device__ inline float from_float<float>(float x) {
    return x;
}
template <>
__host__ __device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

// 16-byte packets: the widest load/store one thread can issue (LDG.128 / STG.128). X128 values of
// floatX fit in one packet (8 bf16 or 4 fp32). Pointers must be 16-byte aligned.
#define X128 ((int)(16 / sizeof(floatX)))
template <typename T>
struct alignas(16) Packed128 {
    T v[16 / sizeof(T)];
};
typedef Packed128<floatX> x128;
__device__ static inline x128 load128(const floatX* p) { return *reinterpret_cast<const x128*>(p); }
// streaming load: read once, do not keep in L1/L2 (ld.global.cs)
__device__ static inline x128 load128cs(const floatX* p) {
    const int4 raw = __ldcs(reinterpret_cast<const int4*>(p));
    return *reinterpret_cast<const x128*>(&raw);
}
__device__ static inline void store128(floatX* p, const x128& x) { *reinterpret_cast<x128*>(p) = x; }

__host__ __device__ static inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
__host__ __device__ static inline size_t ceil_div_sz(size_t a, size_t b) { return (a + b - 1) / b; }

// ----------------------------------------------------------------------------------------------
// stochastic rounding: fp32 -> bf16 rounding up with probability equal to the dropped fraction,
// so that small AdamW updates are not lost on average. The random bits are a hash of (seed, index):
// the same seed gives the same rounding, which keeps training bit-reproducible.

__device__ static inline uint32_t hash_u32(uint32_t x, uint32_t seed) {
    // a few rounds of xor-shift-multiply (the finalizer of MurmurHash3 on x ^ seed-mixed)
    x ^= seed * 0x9E3779B9u;
    x ^= x >> 16;
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    x *= 0xC2B2AE35u;
    x ^= x >> 16;
    return x;
}

__device__ static inline void store_rounded(float* out, float x, uint32_t /*random*/) { *out = x; }
__device__ static inline void store_rounded(__nv_bfloat16* out, float x, uint32_t random) {
    // bf16 keeps the top 16 bits of the fp32 pattern; adding 16 random bits below the cut and
    // truncating rounds up with probability (dropped bits) / 2^16.
    uint32_t bits = __float_as_uint(x);
    if ((bits & 0x7F800000u) == 0x7F800000u) {  // inf / nan: plain conversion
        *out = __float2bfloat16_rn(x);
        return;
    }
    bits += (random & 0xFFFFu);
    bits &= 0xFFFF0000u;
    *out = __ushort_as_bfloat16((unsigned short)(bits >> 16));
}

// ----------------------------------------------------------------------------------------------
// reductions (fixed order, no atomics)

__device__ static inline float warp_sum(float x) {
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xFFFFFFFFu, x, offset);
    return x;
}
__device__ static inline float warp_max(float x) {
    for (int offset = 16; offset > 0; offset >>= 1) x = fmaxf(x, __shfl_xor_sync(0xFFFFFFFFu, x, offset));
    return x;
}

// Sum over a block of up to 1024 threads (blockDim.x a multiple of 32); every thread gets the result.
// `shared` needs 32 floats. Contains __syncthreads(): call from all threads of the block.
__device__ static inline float block_sum(float x, float* shared) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    x = warp_sum(x);
    __syncthreads();  // `shared` may still be read by a previous call
    if (lane == 0) shared[warp] = x;
    __syncthreads();
    x = lane < warps ? shared[lane] : 0.0f;
    return warp_sum(x);
}
__device__ static inline float block_max(float x, float* shared) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    x = warp_max(x);
    __syncthreads();
    if (lane == 0) shared[warp] = x;
    __syncthreads();
    x = lane < warps ? shared[lane] : -INFINITY;
    return warp_max(x);
}

// Column sums, deterministic, in two stages.
// Stage 1: partial[chunk][c] = sum over rows [chunk*rows_per_chunk, ...) of x[row][c].
// Stage 2 (column_sum_finish): out[c] (+)= sum over chunks in index order of partial[chunk*stride + c].
// Used for bias gradients and LayerNorm weight gradients. Block: 32 columns x 8 row-lanes.
#define COLSUM_ROWS_PER_CHUNK 256
template <typename Tin>
__global__ void column_sum_partial_kernel(float* partial, const Tin* x, int rows, int cols) {
    __shared__ float tile[8][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const int chunk = blockIdx.y;
    const int row_start = chunk * COLSUM_ROWS_PER_CHUNK;
    const int row_end = min(row_start + COLSUM_ROWS_PER_CHUNK, rows);
    float acc = 0.0f;
    if (c < cols) {
        for (int r = row_start + threadIdx.y; r < row_end; r += 8) acc += to_float(x[(size_t)r * cols + c]);
    }
    tile[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float s = 0.0f;
        for (int i = 0; i < 8; i++) s += tile[i][threadIdx.x];
        partial[(size_t)chunk * cols + c] = s;
    }
}

template <typename Tout>
__global__ void column_sum_finish_kernel(Tout* out, const float* partial, int chunks, int cols, int stride,
                                         int accumulate) {
    __shared__ float tile[8][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    float acc = 0.0f;
    if (c < cols) {
        for (int k = threadIdx.y; k < chunks; k += 8) acc += partial[(size_t)k * stride + c];
    }
    tile[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float s = 0.0f;
        for (int i = 0; i < 8; i++) s += tile[i][threadIdx.x];
        if (accumulate) s += to_float(out[c]);
        out[c] = from_float<Tout>(s);
    }
}

// Number of floats of scratch that column_sum needs for `rows` rows of `cols` columns.
static inline size_t column_sum_scratch_floats(int rows, int cols) {
    return (size_t)ceil_div(rows, COLSUM_ROWS_PER_CHUNK) * cols;
}

// out[c] += sum_r x[r][c] (or = when accumulate is 0), deterministically.
template <typename Tout, typename Tin>
static void column_sum(Tout* out, const Tin* x, int rows, int cols, float* scratch, int accumulate,
                       cudaStream_t stream) {
    const int chunks = ceil_div(rows, COLSUM_ROWS_PER_CHUNK);
    dim3 block(32, 8);
    column_sum_partial_kernel<<<dim3(ceil_div(cols, 32), chunks), block, 0, stream>>>(scratch, x, rows, cols);
    cudaCheckLast();
    column_sum_finish_kernel<<<ceil_div(cols, 32), block, 0, stream>>>(out, scratch, chunks, cols, cols, accumulate);
    cudaCheckLast();
}

#endif  // LLMC_CUDA_COMMON_CUH
