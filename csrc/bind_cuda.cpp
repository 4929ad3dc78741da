// Python bindings of the GPU engine: the module llmc._llmc_cuda with the class CUDAModel (wrapped
// by python/llmc/cuda.py). The engine lives in csrc/bind_cuda.cu (CudaEngine, csrc/bind_cuda.h).
//
// Unlike the CPU engine, parameters and gradients live on the GPU (in bf16), so they are handed
// out as fp32 numpy COPIES made on each access; set_parameter writes one tensor back. Every engine
// call releases the GIL; a per-model mutex keeps two Python threads from running the same model at
// once. Bad input raises ValueError; a CUDA or cuBLAS failure raises RuntimeError (the engine
// headers throw instead of exiting in this build, see llmc/cuda_common.cuh).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "csrc/bind_cuda.h"

namespace py = pybind11;

namespace {

using TokenArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

class CUDAModel {
  public:
    explicit CUDAModel(CudaEngine* engine) : engine_(engine) {}

    static std::unique_ptr<CUDAModel> from_checkpoint(const std::string& path, uint64_t seed) {
        CudaEngine* engine;
        {
            py::gil_scoped_release release;
            engine = CudaEngine::from_checkpoint(path.c_str(), seed);
        }
        return std::make_unique<CUDAModel>(engine);
    }

    static std::unique_ptr<CUDAModel> from_config(int max_seq_len, int vocab_size,
                                                  int padded_vocab_size, int num_layers,
                                                  int num_heads, int channels, uint64_t seed) {
        GPT2Config config{max_seq_len, vocab_size, padded_vocab_size, num_layers, num_heads,
                          channels};
        CudaEngine* engine;
        {
            py::gil_scoped_release release;
            engine = CudaEngine::from_config(config, seed);
        }
        return std::make_unique<CUDAModel>(engine);
    }

    py::dict config() const {
        const GPT2Config& c = engine_->config();
        py::dict d;
        d["max_seq_len"] = c.max_seq_len;
        d["vocab_size"] = c.vocab_size;
        d["padded_vocab_size"] = c.padded_vocab_size;
        d["num_layers"] = c.num_layers;
        d["num_heads"] = c.num_heads;
        d["channels"] = c.channels;
        return d;
    }

    size_t num_parameters() const { return engine_->num_parameters(); }
    int step_count() const { return step_; }
    std::string precision() const { return engine_->precision(); }

    py::object forward(const TokenArray& inputs, const std::optional<TokenArray>& targets) {
        if (inputs.ndim() != 2) {
            throw py::value_error("CUDAModel.forward: inputs must be 2-D (B, T), got " +
                                  std::to_string(inputs.ndim()) + "-D");
        }
        const int B = static_cast<int>(inputs.shape(0));
        const int T = static_cast<int>(inputs.shape(1));
        if (targets && (targets->ndim() != 2 || targets->shape(0) != B || targets->shape(1) != T)) {
            throw py::value_error("CUDAModel.forward: targets must have the shape of inputs (B, T)");
        }
        const int* target_data = targets ? targets->data() : nullptr;
        float loss;
        {
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(mutex_);
            loss = engine_->forward(inputs.data(), target_data, B, T);
        }
        if (!targets) return py::none();
        return py::float_(loss);
    }

    py::array_t<float> logits() {
        std::lock_guard<std::mutex> lock(mutex_);
        std::vector<py::ssize_t> shape{engine_->batch_size(), engine_->seq_len(),
                                       engine_->config().padded_vocab_size};
        py::array_t<float> out(shape);
        float* data = out.mutable_data();
        {
            py::gil_scoped_release release;
            engine_->logits(data);
        }
        return out;
    }

    void zero_grad() {
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(mutex_);
        engine_->zero_grad();
    }

    void backward(float loss_scale) {
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(mutex_);
        engine_->backward(loss_scale);
    }

    float grad_norm() {
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(mutex_);
        return engine_->grad_norm();
    }

    void step(float learning_rate, float beta1, float beta2, float eps, float weight_decay,
              float grad_scale) {
        {
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(mutex_);
            engine_->step(learning_rate, beta1, beta2, eps, weight_decay, grad_scale, step_ + 1);
        }
        step_ += 1;
    }

    void save(const std::string& path, int version) {
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(mutex_);
        engine_->save(path.c_str(), version);
    }

    // All parameters (or gradients) as one flat fp32 array, in the on-disk order (a copy).
    py::array_t<float> flat(bool gradients) {
        py::array_t<float> out(static_cast<py::ssize_t>(engine_->num_parameters()));
        float* data = out.mutable_data();
        {
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(mutex_);
            if (gradients) {
                engine_->download_grads(data);
            } else {
                engine_->download_params(data);
            }
        }
        return out;
    }

    void set_parameter(int index, const FloatArray& values) {
        if (index < 0 || index >= GPT2_NUM_PARAMETER_TENSORS) {
            throw py::value_error("CUDAModel.set_parameter: no tensor " + std::to_string(index));
        }
        const size_t count = engine_->param_sizes()[index];
        if (static_cast<size_t>(values.size()) != count) {
            throw py::value_error("CUDAModel.set_parameter: tensor " + std::to_string(index) +
                                  " has " + std::to_string(count) + " values, got " +
                                  std::to_string(values.size()));
        }
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(mutex_);
        engine_->upload_tensor(index, values.data());
    }

  private:
    std::unique_ptr<CudaEngine> engine_;
    int step_ = 0;
    std::mutex mutex_;
};

}  // namespace

PYBIND11_MODULE(_llmc_cuda, m) {
    m.doc() = "llmc's GPU engine (llmc/gpt2cu.cuh, bf16); use it through llmc.cuda.CUDAModel.";
    m.def(
        "device_count",
        []() {
            char why[256] = "";
            const int count = cuda_device_count(why, sizeof(why));
            return py::make_tuple(count, std::string(why));
        },
        "(number of visible CUDA devices, why there is none or '').");
    py::class_<CUDAModel>(m, "CUDAModel", "GPT-2 on the GPU (the CUDA engine, bf16)")
        .def_static("from_checkpoint", &CUDAModel::from_checkpoint, py::arg("path"),
                    py::arg("seed") = 0, "Loads a model file (fp32 v3 or bf16 v5).")
        .def_static("from_config", &CUDAModel::from_config, py::arg("max_seq_len"),
                    py::arg("vocab_size"), py::arg("padded_vocab_size"), py::arg("num_layers"),
                    py::arg("num_heads"), py::arg("channels"), py::arg("seed"),
                    "A freshly initialized model (GPT-2 init, seeded like the CPU engine).")
        .def_property_readonly("config", &CUDAModel::config)
        .def_property_readonly("num_parameters", &CUDAModel::num_parameters)
        .def_property_readonly("step_count", &CUDAModel::step_count)
        .def_property_readonly("precision", &CUDAModel::precision)
        .def("forward", &CUDAModel::forward, py::arg("inputs"), py::arg("targets") = py::none(),
             "Forward pass over (B, T) token ids; returns the mean loss when targets are given.")
        .def_property_readonly("logits", &CUDAModel::logits,
                               "Logits of the last forward pass, (B, T, Vp) float32 (a copy).")
        .def("zero_grad", &CUDAModel::zero_grad)
        .def("backward", &CUDAModel::backward, py::arg("loss_scale") = 1.0f,
             "Adds the gradients of loss * loss_scale of the last forward pass to the grads.")
        .def("grad_norm", &CUDAModel::grad_norm)
        .def("step", &CUDAModel::step, py::arg("learning_rate"), py::arg("beta1") = 0.9f,
             py::arg("beta2") = 0.95f, py::arg("eps") = 1e-8f, py::arg("weight_decay") = 0.0f,
             py::arg("grad_scale") = 1.0f, "One AdamW step (weight decay on 2-D weights only).")
        .def("save", &CUDAModel::save, py::arg("path"), py::arg("version") = 3)
        .def(
            "parameters", [](CUDAModel& self) { return self.flat(false); },
            "All parameters, flat fp32 in the on-disk order (a copy; master weights in bf16).")
        .def(
            "gradients", [](CUDAModel& self) { return self.flat(true); },
            "All gradients, flat fp32 in the on-disk order (a copy).")
        .def("set_parameter", &CUDAModel::set_parameter, py::arg("index"), py::arg("values"),
             "Overwrites parameter tensor `index` (on-disk order) with fp32 values.");
}
