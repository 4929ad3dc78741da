// The GPU engine (llmc/gpt2cu.cuh, bf16 build) behind a small C++ class, so that the pybind11 code
// (csrc/bind_cuda.cpp, compiled by the host compiler) needs no CUDA headers. Implemented in
// csrc/bind_cuda.cu. Every method throws: std::invalid_argument for bad input (a ValueError in
// Python), std::runtime_error for CUDA / cuBLAS failures (a RuntimeError). Host arrays of
// parameters and gradients are fp32 in the on-disk tensor order.
#ifndef LLMC_BIND_CUDA_H
#define LLMC_BIND_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "llmc/gpt2_cpu.h"  // GPT2Config, GPT2_NUM_PARAMETER_TENSORS

struct CudaEngineState;  // the GPT2CU model and the Python-level bookkeeping (bind_cuda.cu)

class CudaEngine {
  public:
    static CudaEngine* from_checkpoint(const char* path, uint64_t seed);
    static CudaEngine* from_config(const GPT2Config& config, uint64_t seed);
    ~CudaEngine();
    CudaEngine(const CudaEngine&) = delete;
    CudaEngine& operator=(const CudaEngine&) = delete;

    const GPT2Config& config() const;
    size_t num_parameters() const;
    const size_t* param_sizes() const;  // GPT2_NUM_PARAMETER_TENSORS counts
    int batch_size() const;             // B and T of the last forward (0 before any)
    int seq_len() const;
    const char* precision() const;  // "bf16" or "fp32"

    // Returns the mean loss when targets is not NULL, else NaN. inputs/targets: B*T host ids < V.
    float forward(const int* inputs, const int* targets, int B, int T);
    void logits(float* out) const;  // (B, T, Vp) of the last forward
    void zero_grad();
    void backward(float loss_scale);
    float grad_norm();
    void step(float learning_rate, float beta1, float beta2, float eps, float weight_decay,
              float grad_scale, int step);
    void save(const char* path, int version);
    void download_params(float* out) const;  // the fp32 master weights (bf16 build) or params
    void download_grads(float* out) const;
    void upload_tensor(int index, const float* values);  // one parameter tensor, fp32

  private:
    explicit CudaEngine(CudaEngineState* state) : state_(state) {}
    CudaEngineState* state_;
};

// Number of visible CUDA devices; 0 (and why in `why`, up to `len` chars) when there is none.
int cuda_device_count(char* why, size_t len);

#endif  // LLMC_BIND_CUDA_H
