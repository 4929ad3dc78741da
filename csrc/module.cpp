// The Python extension module llmc._llmc: the C engine, the dataloader and the tokenizer decoder.
// Each part registers its own classes and functions; see bind_model.cpp and bind_data.cpp.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_model(py::module_& m);  // defines: CPUModel, descriptor configs
void bind_data(py::module_& m);   // defines: DataLoader, Tokenizer, shard helpers

PYBIND11_MODULE(_llmc, m) {
    m.doc() = "llmc C engine (CPU fp32 reference), dataloader and tokenizer";
    bind_model(m);
    bind_data(m);
}
