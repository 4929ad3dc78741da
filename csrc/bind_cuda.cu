// The GPU engine behind CudaEngine (csrc/bind_cuda.h), for the Python module llmc._llmc_cuda.
//
// It drives llmc/gpt2cu.cuh the way the Python API of the CPU engine is shaped: a forward with
// targets keeps the logits and the per-position losses (FORWARD_LOSS), and backward(loss_scale)
// then turns the logits into their gradient with the same fused classifier kernel the trainer runs
// inside its training forward (dloss = loss_scale / (B*T)), builds the encoder's backward plan from
// the inputs still staged on the host, and runs gpt2cu_backward. The numbers are those of a
// FORWARD_TRAIN + backward micro-step of train_gpt2cu; the logits are consumed by the backward.
//
// LLMC_CUDA_THROW makes every cudaCheck / cublasCheck in the engine headers throw
// std::runtime_error (llmc/cuda_common.cuh) instead of exiting the process. Every call ends with a
// stream synchronization, so an asynchronous kernel failure is reported by the call that caused it.
#define LLMC_CUDA_THROW 1

#include <limits.h>
#include <math.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "csrc/bind_cuda.h"
#include "llmc/gpt2cu.cuh"  // defines: GPT2CU, gpt2cu_build_from_host/forward/backward/update

struct CudaEngineState {
    GPT2CU model;
    bool built = false;         // model holds device memory (gpt2cu_free needed)
    bool have_targets = false;  // the last forward had targets: backward may run
    bool logits_valid = false;  // acts.logits holds the last forward's logits (not dlogits)
    float* norm_scratch = nullptr;  // NORM_BLOCKS floats for grad_norm before any forward
};

namespace {

bool g_matmul_ready = false;

[[noreturn]] void throw_llmc_error(const char* context) {
    throw std::invalid_argument(std::string(context) + ": " + llmc_error());
}

void destroy_state(CudaEngineState* state) {
    try {
        if (state->built) gpt2cu_free(&state->model);
        if (state->norm_scratch != nullptr) cudaCheck(cudaFree(state->norm_scratch));
    } catch (const std::exception&) {
        // a failing free (e.g. after a sticky device error) must not end the process
    }
    delete state;
}

// Takes ownership of the host model (freed here).
CudaEngineState* build_from_host(GPT2* host, uint64_t seed, const char* context) {
    const int hs = host->config.channels / host->config.num_heads;
    if (!attention_head_size_supported(hs)) {
        gpt2_free(host);
        throw std::invalid_argument(std::string(context) + ": head size " + std::to_string(hs) +
                                    " is not supported by the CUDA attention (16, 32, 64, 128)");
    }
    CudaEngineState* state = new CudaEngineState();
    try {
        if (!g_matmul_ready) {
            matmul_init();
            g_matmul_ready = true;
        }
        gpt2cu_build_from_host(&state->model, host, seed);
        state->built = true;
        cudaCheck(cudaMalloc(&state->norm_scratch, NORM_BLOCKS * sizeof(float)));
    } catch (...) {
        gpt2_free(host);
        destroy_state(state);
        throw;
    }
    gpt2_free(host);
    return state;
}

void synchronize(const GPT2CU* model) { cudaCheck(cudaStreamSynchronize(model->stream)); }

}  // namespace

CudaEngine* CudaEngine::from_checkpoint(const char* path, uint64_t seed) {
    GPT2 host;
    if (gpt2_build_from_checkpoint(&host, path) != LLMC_OK) throw_llmc_error("CUDAModel.from_checkpoint");
    return new CudaEngine(build_from_host(&host, seed, path));
}

CudaEngine* CudaEngine::from_config(const GPT2Config& config, uint64_t seed) {
    GPT2 host;
    if (gpt2_build_from_config(&host, &config, seed) != LLMC_OK) throw_llmc_error("CUDAModel.from_config");
    return new CudaEngine(build_from_host(&host, seed, "CUDAModel.from_config"));
}

CudaEngine::~CudaEngine() { destroy_state(state_); }

const GPT2Config& CudaEngine::config() const { return state_->model.config; }
size_t CudaEngine::num_parameters() const { return state_->model.num_parameters; }
const size_t* CudaEngine::param_sizes() const { return state_->model.param_sizes; }
int CudaEngine::batch_size() const { return state_->model.B; }
int CudaEngine::seq_len() const { return state_->model.T; }
const char* CudaEngine::precision() const { return LLMC_PRECISION_NAME; }

float CudaEngine::forward(const int* inputs, const int* targets, int B, int T) {
    GPT2CU* m = &state_->model;
    const GPT2Config& c = m->config;
    if (B <= 0 || T <= 0 || T > c.max_seq_len) {
        throw std::invalid_argument("CUDAModel.forward: batch " + std::to_string(B) + " x " + std::to_string(T) +
                                    " (T must be in 1.." + std::to_string(c.max_seq_len) + ")");
    }
    // the encoder plan holds 3*B*T + 1 ints and kernels index B*T rows with int
    if ((long long)B * T > (INT_MAX - 1) / 3) {
        throw std::invalid_argument("CUDAModel.forward: batch " + std::to_string(B) + " x " + std::to_string(T) +
                                    " has too many positions");
    }
    const size_t BT = (size_t)B * T;
    for (size_t i = 0; i < BT; i++) {
        if (inputs[i] < 0 || inputs[i] >= c.vocab_size || (targets != NULL && (targets[i] < 0 || targets[i] >= c.vocab_size))) {
            throw std::invalid_argument("CUDAModel.forward: token id out of [0, " + std::to_string(c.vocab_size) +
                                        ") at position " + std::to_string(i));
        }
    }
    state_->have_targets = false;
    state_->logits_valid = false;
    const ForwardMode mode = targets != NULL ? FORWARD_LOSS : FORWARD_LOGITS;
    if (gpt2cu_forward(m, inputs, targets, B, T, mode, 1.0f) != LLMC_OK) throw_llmc_error("CUDAModel.forward");
    float loss = NAN;
    if (targets != NULL) {
        loss = gpt2cu_read_mean_loss(m);  // synchronizes
    } else {
        synchronize(m);
    }
    state_->logits_valid = true;
    state_->have_targets = targets != NULL;
    return loss;
}

void CudaEngine::logits(float* out) const {
    const GPT2CU* m = &state_->model;
    if (!state_->logits_valid) {
        throw std::runtime_error(
            "CUDAModel.logits: no logits to read: run forward first (backward turns the logits into their "
            "gradient, so read them before calling backward)");
    }
    gpt2cu_download(out, m->acts.logits, (size_t)m->B * m->T * m->config.padded_vocab_size, m->stream);
}

void CudaEngine::zero_grad() {
    gpt2cu_zero_grad(&state_->model);
    synchronize(&state_->model);
}

void CudaEngine::backward(float loss_scale) {
    GPT2CU* m = &state_->model;
    if (!state_->have_targets || !state_->logits_valid) {
        throw std::invalid_argument(
            "CUDAModel.backward: needs a forward pass with targets just before (one backward per forward)");
    }
    const GPT2Config& c = m->config;
    const int BT = m->B * m->T;
    cudaStream_t s = m->stream;
    state_->have_targets = false;
    state_->logits_valid = false;
    // logits -> dlogits of loss_scale * mean loss (the losses are rewritten with the same values)
    fused_classifier(m->acts.logits, m->acts.losses, m->targets_d, BT, c.vocab_size, c.padded_vocab_size,
                     loss_scale / (float)BT, 1.0f, 1, 0, s);
    // the encoder's backward plan, from the inputs of the last forward still in the pinned buffer
    if (m->upload_pending) cudaCheck(cudaEventSynchronize(m->upload_done));
    m->plan_shape = encoder_backward_plan(&m->planner, m->inputs_h, BT, m->plan_h);
    cudaCheck(cudaMemcpyAsync(m->plan_d, m->plan_h, (2 * (size_t)m->plan_shape.n + 1 + BT) * sizeof(int),
                              cudaMemcpyHostToDevice, s));
    cudaCheck(cudaEventRecord(m->upload_done, s));
    m->upload_pending = 1;
    m->last_mode = FORWARD_TRAIN;
    if (gpt2cu_backward(m) != LLMC_OK) throw_llmc_error("CUDAModel.backward");
    synchronize(m);
}

float CudaEngine::grad_norm() {
    GPT2CU* m = &state_->model;
    global_norm(m->norm_d, state_->norm_scratch, m->grads_memory, m->num_parameters, 0.0f, m->stream);
    float norm = 0.0f;
    cudaCheck(cudaMemcpyAsync(&norm, m->norm_d, sizeof(float), cudaMemcpyDeviceToHost, m->stream));
    synchronize(m);
    return norm;
}

void CudaEngine::step(float learning_rate, float beta1, float beta2, float eps, float weight_decay,
                      float grad_scale, int step) {
    GPT2CU* m = &state_->model;
    if (step < 1) throw std::invalid_argument("CUDAModel.step: step counts from 1");
    const AdamWParams settings = {learning_rate, beta1, beta2, eps, weight_decay};
    // the update reads its gradient scale from the device (norm_d[1], where clipping puts it)
    cudaCheck(cudaMemcpyAsync(m->norm_d + 1, &grad_scale, sizeof(float), cudaMemcpyHostToDevice, m->stream));
    gpt2cu_update(m, &settings, step, 1);
    synchronize(m);
}

void CudaEngine::save(const char* path, int version) {
    GPT2CU* m = &state_->model;
    synchronize(m);
    if (gpt2cu_save_checkpoint(m, path, version) != LLMC_OK) {
        throw std::runtime_error(std::string("CUDAModel.save: ") + llmc_error());
    }
}

void CudaEngine::download_params(float* out) const {
    const GPT2CU* m = &state_->model;
    if (m->master_memory != NULL) {
        cudaCheck(cudaMemcpyAsync(out, m->master_memory, m->num_parameters * sizeof(float), cudaMemcpyDeviceToHost,
                                  m->stream));
        synchronize(m);
    } else {
        gpt2cu_download(out, m->params_memory, m->num_parameters, m->stream);
    }
}

void CudaEngine::download_grads(float* out) const {
    const GPT2CU* m = &state_->model;
    gpt2cu_download(out, m->grads_memory, m->num_parameters, m->stream);
}

void CudaEngine::upload_tensor(int index, const float* values) {
    GPT2CU* m = &state_->model;
    if (index < 0 || index >= GPT2_NUM_PARAMETER_TENSORS) {
        throw std::invalid_argument("CUDAModel.set_parameters: tensor index " + std::to_string(index));
    }
    size_t offset = 0;
    for (int i = 0; i < index; i++) offset += m->param_sizes[i];
    const size_t count = m->param_sizes[index];
    std::vector<floatX> converted(count);
    for (size_t i = 0; i < count; i++) converted[i] = from_float<floatX>(values[i]);
    synchronize(m);  // no kernel may still read the old values while they are replaced
    if (m->master_memory != NULL) {
        cudaCheck(cudaMemcpyAsync(m->master_memory + offset, values, count * sizeof(float), cudaMemcpyHostToDevice,
                                  m->stream));
    }
    cudaCheck(cudaMemcpyAsync(m->params_memory + offset, converted.data(), count * sizeof(floatX),
                              cudaMemcpyHostToDevice, m->stream));
    synchronize(m);
}

int cuda_device_count(char* why, size_t len) {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        snprintf(why, len, "%s", cudaGetErrorString(err));
        return 0;
    }
    if (count == 0) snprintf(why, len, "no CUDA device is visible");
    return count;
}
