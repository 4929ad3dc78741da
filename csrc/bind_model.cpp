// Python bindings of the CPU engine (llmc/gpt2_cpu.h): the class llmc._llmc.CPUModel.
//
// Parameters and gradients are handed out as numpy views of the engine's own buffers (no copy);
// each view holds a reference to the model, so the buffers outlive every array that points into
// them. Those buffers are allocated once when the model is built and never move. Logits are
// returned as a copy, because the activation buffers are reallocated when B or T change.
// Every engine call releases the GIL; a per-model mutex keeps two Python threads from running
// the same model at once. C errors become ValueError (bad input) or RuntimeError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "llmc/error.h"
#include "llmc/gpt2_cpu.h"

namespace py = pybind11;

namespace {

const char* const PARAMETER_NAMES[GPT2_NUM_PARAMETER_TENSORS] = {
    "wte",      "wpe",      "ln1w", "ln1b", "qkvw", "qkvb",    "attprojw", "attprojb",
    "ln2w",     "ln2b",     "fcw",  "fcb",  "fcprojw", "fcprojb", "lnfw",  "lnfb"};

using TokenArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

void raise_value_error(const char* context) {
    throw py::value_error(std::string(context) + ": " + llmc_error());
}

class CPUModel {
  public:
    CPUModel() { model_ = GPT2{}; }
    ~CPUModel() { gpt2_free(&model_); }
    CPUModel(const CPUModel&) = delete;
    CPUModel& operator=(const CPUModel&) = delete;

    static std::unique_ptr<CPUModel> from_checkpoint(const std::string& path) {
        auto self = std::make_unique<CPUModel>();
        int rc;
        {
            py::gil_scoped_release release;
            rc = gpt2_build_from_checkpoint(&self->model_, path.c_str());
        }
        if (rc != LLMC_OK) raise_value_error("CPUModel.from_checkpoint");
        self->allocate_gradients();
        return self;
    }

    static std::unique_ptr<CPUModel> from_config(int max_seq_len, int vocab_size,
                                                 int padded_vocab_size, int num_layers,
                                                 int num_heads, int channels, uint64_t seed) {
        GPT2Config config{max_seq_len, vocab_size, padded_vocab_size, num_layers, num_heads,
                          channels};
        auto self = std::make_unique<CPUModel>();
        int rc;
        {
            py::gil_scoped_release release;
            rc = gpt2_build_from_config(&self->model_, &config, seed);
        }
        if (rc != LLMC_OK) raise_value_error("CPUModel.from_config");
        self->allocate_gradients();
        return self;
    }

    py::dict config() const {
        const GPT2Config& c = model_.config;
        py::dict d;
        d["max_seq_len"] = c.max_seq_len;
        d["vocab_size"] = c.vocab_size;
        d["padded_vocab_size"] = c.padded_vocab_size;
        d["num_layers"] = c.num_layers;
        d["num_heads"] = c.num_heads;
        d["channels"] = c.channels;
        return d;
    }

    size_t num_parameters() const { return model_.num_parameters; }
    int step_count() const { return step_; }

    py::object forward(const TokenArray& inputs, const std::optional<TokenArray>& targets) {
        if (inputs.ndim() != 2) {
            throw py::value_error("CPUModel.forward: inputs must be 2-D (B, T), got " +
                                  std::to_string(inputs.ndim()) + "-D");
        }
        int B = static_cast<int>(inputs.shape(0));
        int T = static_cast<int>(inputs.shape(1));
        if (targets && (targets->ndim() != 2 || targets->shape(0) != B || targets->shape(1) != T)) {
            throw py::value_error("CPUModel.forward: targets must have the shape of inputs (B, T)");
        }
        const int* target_data = targets ? targets->data() : nullptr;
        int rc;
        {
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(mutex_);
            rc = gpt2_forward(&model_, inputs.data(), target_data, B, T);
        }
        if (rc != LLMC_OK) raise_value_error("CPUModel.forward");
        if (!targets) return py::none();
        return py::float_(model_.mean_loss);
    }

    py::array_t<float> logits() const {
        if (model_.acts_memory == nullptr) {
            throw py::value_error("CPUModel.logits: no forward pass has run yet");
        }
        std::vector<py::ssize_t> shape{model_.batch_size, model_.seq_len,
                                       model_.config.padded_vocab_size};
        return py::array_t<float>(shape, model_.acts.logits);  // copies
    }

    void zero_grad() {
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(mutex_);
        gpt2_zero_grad(&model_);
    }

    void backward(float loss_scale) {
        int rc;
        {
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(mutex_);
            rc = gpt2_backward(&model_, loss_scale);
        }
        if (rc != LLMC_OK) raise_value_error("CPUModel.backward");
    }

    float grad_norm() {
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(mutex_);
        return gpt2_grad_norm(&model_);
    }

    void step(float learning_rate, float beta1, float beta2, float eps, float weight_decay,
              float grad_scale) {
        AdamWSettings settings{learning_rate, beta1, beta2, eps, weight_decay, grad_scale};
        int rc;
        {
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(mutex_);
            rc = gpt2_update(&model_, &settings, step_ + 1);
        }
        if (rc != LLMC_OK) raise_value_error("CPUModel.step");
        step_ += 1;
    }

    void save(const std::string& path, int version) {
        int rc;
        {
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(mutex_);
            rc = gpt2_save_checkpoint(&model_, path.c_str(), version);
        }
        if (rc != LLMC_OK) throw std::runtime_error("CPUModel.save: " + std::string(llmc_error()));
    }

    // Views of one buffer laid out like the parameters, in the on-disk order.
    static py::list tensor_views(py::object owner, const CPUModel& self, float* memory) {
        const GPT2Config& c = self.model_.config;
        py::ssize_t L = c.num_layers, C = c.channels, Vp = c.padded_vocab_size,
                    maxT = c.max_seq_len;
        std::vector<std::vector<py::ssize_t>> shapes = {
            {Vp, C}, {maxT, C}, {L, C},     {L, C}, {L, 3 * C, C}, {L, 3 * C}, {L, C, C}, {L, C},
            {L, C},  {L, C},    {L, 4 * C, C}, {L, 4 * C}, {L, C, 4 * C}, {L, C}, {C},  {C}};
        py::list views;
        for (int i = 0; i < GPT2_NUM_PARAMETER_TENSORS; i++) {
            py::array_t<float> view(shapes[i], memory, owner);  // no copy; owner stays alive
            views.append(py::make_tuple(PARAMETER_NAMES[i], view));
            memory += self.model_.param_sizes[i];
        }
        return views;
    }

    float* params_memory() const { return model_.params_memory; }
    float* grads_memory() const { return model_.grads_memory; }

  private:
    void allocate_gradients() {
        if (gpt2_zero_grad(&model_) != LLMC_OK) raise_value_error("CPUModel");
    }

    GPT2 model_;
    int step_ = 0;
    std::mutex mutex_;
};

}  // namespace

void bind_model(py::module_& m) {
    py::class_<CPUModel>(m, "CPUModel", "GPT-2 in fp32 on the CPU (the C reference engine)")
        .def_static("from_checkpoint", &CPUModel::from_checkpoint, py::arg("path"),
                    "Loads a model file (fp32 v3 or bf16 v5).")
        .def_static("from_config", &CPUModel::from_config, py::arg("max_seq_len"),
                    py::arg("vocab_size"), py::arg("padded_vocab_size"), py::arg("num_layers"),
                    py::arg("num_heads"), py::arg("channels"), py::arg("seed"),
                    "A freshly initialized model (GPT-2 init, seeded).")
        .def_property_readonly("config", &CPUModel::config)
        .def_property_readonly("num_parameters", &CPUModel::num_parameters)
        .def_property_readonly("step_count", &CPUModel::step_count)
        .def("forward", &CPUModel::forward, py::arg("inputs"), py::arg("targets") = py::none(),
             "Forward pass over (B, T) token ids; returns the mean loss when targets are given.")
        .def_property_readonly("logits", &CPUModel::logits,
                               "Logits of the last forward pass, (B, T, Vp) float32 (a copy).")
        .def("zero_grad", &CPUModel::zero_grad)
        .def("backward", &CPUModel::backward, py::arg("loss_scale") = 1.0f,
             "Adds the gradients of loss * loss_scale of the last forward pass to the grads.")
        .def("grad_norm", &CPUModel::grad_norm)
        .def("step", &CPUModel::step, py::arg("learning_rate"), py::arg("beta1") = 0.9f,
             py::arg("beta2") = 0.95f, py::arg("eps") = 1e-8f, py::arg("weight_decay") = 0.0f,
             py::arg("grad_scale") = 1.0f, "One AdamW step (weight decay on 2-D weights only).")
        .def("save", &CPUModel::save, py::arg("path"), py::arg("version") = GPT2_MODEL_VERSION_FP32)
        .def(
            "parameter_views",
            [](py::object self) {
                const CPUModel& model = self.cast<const CPUModel&>();
                return CPUModel::tensor_views(self, model, model.params_memory());
            },
            "[(name, array)] views of the parameters, in the on-disk order (no copy).")
        .def(
            "gradient_views",
            [](py::object self) {
                const CPUModel& model = self.cast<const CPUModel&>();
                return CPUModel::tensor_views(self, model, model.grads_memory());
            },
            "[(name, array)] views of the gradients, in the on-disk order (no copy).");
}
