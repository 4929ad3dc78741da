// cuDNN fused attention (SDPA forward and backward) through cudnn-frontend's graph API, for the
// bf16 engine built with LLMC_CUDNN. What it computes, the layouts and the state it keeps are
// described in llmc/cudnn_attention.h. Host C++ only: no kernels here, cuDNN launches its own.
#include "llmc/cudnn_attention.h"

#include <cudnn.h>
#include <cudnn_frontend.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace fe = cudnn_frontend;

namespace {

// ------------------------------------------------------------------------------------------------
// errors: exit(1) with the message in programs, std::runtime_error under LLMC_CUDA_THROW

[[noreturn]] void fail(const std::string& what) {
#ifdef LLMC_CUDA_THROW
    throw std::runtime_error("cuDNN attention: " + what);
#else
    fprintf(stderr, "cuDNN attention: %s\n", what.c_str());
    exit(1);
#endif
}

void check_cuda(cudaError_t err, const char* what) {
    if (err != cudaSuccess) {
        (void)cudaGetLastError();  // clear a non-sticky error so that later checks pass
        fail(std::string(what) + ": " + cudaGetErrorString(err));
    }
}

void check_cudnn(cudnnStatus_t status, const char* what) {
    if (status != CUDNN_STATUS_SUCCESS) fail(std::string(what) + ": " + cudnnGetErrorString(status));
}

// ------------------------------------------------------------------------------------------------
// shapes and graphs

struct Shape {
    int B, T, H, HS;
    bool training;  // forward: also write the stats (the backward's input)
    bool operator<(const Shape& o) const {
        return std::tie(B, T, H, HS, training) < std::tie(o.B, o.T, o.H, o.HS, o.training);
    }
    std::string str() const {
        return "B=" + std::to_string(B) + " T=" + std::to_string(T) + " H=" + std::to_string(H) +
               " HS=" + std::to_string(HS);
    }
};

void check_fe(fe::error_t err, const char* step, const char* graph, const Shape& s) {
    if (err.is_bad()) fail(std::string(graph) + " graph (" + s.str() + "): " + step + " failed: " + err.get_message());
}

// tensor uids: the variant pack binds device pointers to these
enum : int64_t { UID_Q = 1, UID_K, UID_V, UID_O, UID_STATS, UID_DO, UID_DQ, UID_DK, UID_DV };

typedef std::shared_ptr<fe::graph::Graph> GraphPtr;
typedef std::shared_ptr<fe::graph::Tensor_attributes> TensorPtr;

struct State {
    cudnnHandle_t handle = nullptr;
    void* workspace = nullptr;
    size_t workspace_bytes = 0;
    std::map<Shape, GraphPtr> forward, backward;  // backward keys have training = true
};
State g_state;

cudnnHandle_t handle() {
    if (g_state.handle == nullptr) check_cudnn(cudnnCreate(&g_state.handle), "cudnnCreate");
    return g_state.handle;
}

// A (B, H, T, HS) view of one of q, k, v inside the packed (B, T, 3, H, HS) qkv (or dqkv).
std::vector<int64_t> qkv_dims(const Shape& s) { return {s.B, s.H, s.T, s.HS}; }
std::vector<int64_t> qkv_strides(const Shape& s) {
    const int64_t C = (int64_t)s.H * s.HS;
    return {3 * C * s.T, s.HS, 3 * C, 1};
}
// A (B, H, T, HS) view of the (B, T, H, HS) out (or dout).
std::vector<int64_t> out_strides(const Shape& s) {
    const int64_t C = (int64_t)s.H * s.HS;
    return {C * s.T, s.HS, C, 1};
}
// stats (B, H, T, 1), contiguous
std::vector<int64_t> stats_dims(const Shape& s) { return {s.B, s.H, s.T, 1}; }
std::vector<int64_t> stats_strides(const Shape& s) { return {(int64_t)s.H * s.T, s.T, 1, 1}; }

TensorPtr input(const GraphPtr& g, const char* name, int64_t uid, const std::vector<int64_t>& dims,
                const std::vector<int64_t>& strides) {
    return g->tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_dim(dims).set_stride(strides));
}

GraphPtr new_graph() {
    GraphPtr g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    return g;
}

// validate, lower to cuDNN's backend, pick an engine by heuristics, compile it; grow the workspace
void finalize(const GraphPtr& g, const char* name, const Shape& s) {
    cudnnHandle_t h = handle();
    check_fe(g->validate(), "validate", name, s);
    check_fe(g->build_operation_graph(h), "build_operation_graph", name, s);
    check_fe(g->create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans", name, s);
    check_fe(g->check_support(h), "check_support", name, s);
    check_fe(g->build_plans(h), "build_plans", name, s);
    int64_t bytes = 0;
    check_fe(g->get_workspace_size(bytes), "get_workspace_size", name, s);
    if ((size_t)bytes > g_state.workspace_bytes) {
        if (g_state.workspace != nullptr) check_cuda(cudaFree(g_state.workspace), "cudaFree (cuDNN workspace)");
        g_state.workspace = nullptr;
        g_state.workspace_bytes = 0;
        check_cuda(cudaMalloc(&g_state.workspace, (size_t)bytes), "cudaMalloc (cuDNN workspace)");
        g_state.workspace_bytes = (size_t)bytes;
    }
}

GraphPtr build_forward(const Shape& s) {
    GraphPtr g = new_graph();
    TensorPtr q = input(g, "Q", UID_Q, qkv_dims(s), qkv_strides(s));
    TensorPtr k = input(g, "K", UID_K, qkv_dims(s), qkv_strides(s));
    TensorPtr v = input(g, "V", UID_V, qkv_dims(s), qkv_strides(s));
    fe::graph::SDPA_attributes opts;
    opts.set_name("sdpa_forward")
        .set_generate_stats(s.training)
        .set_causal_mask(true)
        .set_attn_scale(1.0f / sqrtf((float)s.HS));
    auto outputs = g->sdpa(q, k, v, opts);
    outputs[0]->set_output(true).set_uid(UID_O).set_dim(qkv_dims(s)).set_stride(out_strides(s));
    if (s.training) {
        outputs[1]->set_output(true).set_uid(UID_STATS).set_data_type(fe::DataType_t::FLOAT)
            .set_dim(stats_dims(s)).set_stride(stats_strides(s));
    }
    finalize(g, "forward", s);
    return g;
}

GraphPtr build_backward(const Shape& s) {
    GraphPtr g = new_graph();
    TensorPtr q = input(g, "Q", UID_Q, qkv_dims(s), qkv_strides(s));
    TensorPtr k = input(g, "K", UID_K, qkv_dims(s), qkv_strides(s));
    TensorPtr v = input(g, "V", UID_V, qkv_dims(s), qkv_strides(s));
    TensorPtr o = input(g, "O", UID_O, qkv_dims(s), out_strides(s));
    TensorPtr dO = input(g, "dO", UID_DO, qkv_dims(s), out_strides(s));
    TensorPtr stats = input(g, "Stats", UID_STATS, stats_dims(s), stats_strides(s));
    stats->set_data_type(fe::DataType_t::FLOAT);
    fe::graph::SDPA_backward_attributes opts;
    opts.set_name("sdpa_backward")
        .set_causal_mask(true)
        .set_attn_scale(1.0f / sqrtf((float)s.HS))
        .set_deterministic_algorithm(true);
    auto grads = g->sdpa_backward(q, k, v, o, dO, stats, opts);
    const int64_t uids[3] = {UID_DQ, UID_DK, UID_DV};
    for (int i = 0; i < 3; i++) grads[i]->set_output(true).set_uid(uids[i]).set_dim(qkv_dims(s)).set_stride(qkv_strides(s));
    finalize(g, "backward", s);
    return g;
}

Shape make_shape(int B, int T, int C, int H, bool training, const char* who) {
    if (B <= 0 || T <= 0 || H <= 0 || C <= 0 || C % H != 0) {
        fail(std::string(who) + ": bad shape B=" + std::to_string(B) + " T=" + std::to_string(T) + " C=" +
             std::to_string(C) + " H=" + std::to_string(H) + " (C must be a multiple of H)");
    }
    return Shape{B, T, H, C / H, training};
}

// the cached graph of shape s, built at the first call
const GraphPtr& graph_for(std::map<Shape, GraphPtr>& cache, const Shape& s, GraphPtr (*build)(const Shape&)) {
    auto it = cache.find(s);
    if (it == cache.end()) it = cache.emplace(s, build(s)).first;  // built fully before it is cached
    return it->second;
}

void execute(const GraphPtr& g, std::unordered_map<int64_t, void*>& pack, cudaStream_t stream, const char* name,
             const Shape& s) {
    check_cudnn(cudnnSetStream(handle(), stream), "cudnnSetStream");
    check_fe(g->execute(handle(), pack, g_state.workspace), "execute", name, s);
}

template <typename T_>
void* ptr(const T_* p) {
    return const_cast<T_*>(p);
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// public API (llmc/cudnn_attention.h)

void cudnn_attention_forward(__nv_bfloat16* out, float* stats, const __nv_bfloat16* qkv, int B, int T, int C,
                             int H, int training, cudaStream_t stream) {
    const Shape s = make_shape(B, T, C, H, training != 0, "cudnn_attention_forward");
    const GraphPtr& g = graph_for(g_state.forward, s, build_forward);
    std::unordered_map<int64_t, void*> pack = {
        {UID_Q, ptr(qkv)}, {UID_K, ptr(qkv + C)}, {UID_V, ptr(qkv + 2 * C)}, {UID_O, out}};
    if (s.training) pack[UID_STATS] = stats;
    execute(g, pack, stream, "forward", s);
}

void cudnn_attention_backward(__nv_bfloat16* dqkv, const __nv_bfloat16* dout, const __nv_bfloat16* out,
                              const __nv_bfloat16* qkv, const float* stats, int B, int T, int C, int H,
                              cudaStream_t stream) {
    const Shape s = make_shape(B, T, C, H, true, "cudnn_attention_backward");
    const GraphPtr& g = graph_for(g_state.backward, s, build_backward);
    std::unordered_map<int64_t, void*> pack = {
        {UID_Q, ptr(qkv)},       {UID_K, ptr(qkv + C)},  {UID_V, ptr(qkv + 2 * C)},  {UID_O, ptr(out)},
        {UID_DO, ptr(dout)},     {UID_STATS, ptr(stats)}, {UID_DQ, dqkv},            {UID_DK, dqkv + C},
        {UID_DV, dqkv + 2 * C}};
    execute(g, pack, stream, "backward", s);
}

const char* cudnn_attention_describe(void) {
    static char text[96];
    const size_t v = cudnnGetVersion();  // major * 10000 + minor * 100 + patch since cuDNN 9
    snprintf(text, sizeof(text), "cuDNN %zu.%zu.%zu (frontend %d.%d.%d)", v / 10000, v / 100 % 100, v % 100,
             CUDNN_FRONTEND_MAJOR_VERSION, CUDNN_FRONTEND_MINOR_VERSION, CUDNN_FRONTEND_PATCH_VERSION);
    return text;
}

size_t cudnn_attention_workspace_bytes(void) { return g_state.workspace_bytes; }

void cudnn_attention_free(void) {
    g_state.forward.clear();
    g_state.backward.clear();
    if (g_state.workspace != nullptr) check_cuda(cudaFree(g_state.workspace), "cudaFree (cuDNN workspace)");
    g_state.workspace = nullptr;
    g_state.workspace_bytes = 0;
    if (g_state.handle != nullptr) check_cudnn(cudnnDestroy(g_state.handle), "cudnnDestroy");
    g_state.handle = nullptr;
}
