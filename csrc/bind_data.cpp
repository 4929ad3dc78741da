// Python bindings of the dataloader (llmc/dataloader.h) and the tokenizer decoder
// (llmc/tokenizer.h): the classes llmc._llmc.DataLoader and llmc._llmc.Tokenizer.
//
// Batches are returned as fresh numpy int32 arrays of shape (B, T), so they stay valid after the
// next batch is read. File I/O runs without the GIL; a per-object mutex keeps two Python threads
// from moving the same loader at once. C errors become ValueError (bad files, bad arguments) or
// RuntimeError (a read failing after the files were checked), carrying llmc_error()'s message.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "llmc/dataloader.h"
#include "llmc/error.h"
#include "llmc/tokenizer.h"

namespace py = pybind11;

namespace {

using TokenArray = py::array_t<int32_t, py::array::c_style>;

class PyDataLoader {
  public:
    PyDataLoader(const std::string& pattern, int64_t B, int64_t T, int rank, int world,
                 bool shuffle, uint64_t seed) {
        if (B <= 0 || T <= 0) {
            throw py::value_error(pattern + ": batch size B=" + std::to_string(B) +
                                  " and sequence length T=" + std::to_string(T) +
                                  " must be positive");
        }
        int rc;
        {
            py::gil_scoped_release release;
            rc = dataloader_init(&loader_, pattern.c_str(), (size_t)B, (size_t)T, rank, world,
                                 shuffle ? 1 : 0, seed);
        }
        if (rc != LLMC_OK) throw py::value_error(llmc_error());
    }
    ~PyDataLoader() { dataloader_free(&loader_); }
    PyDataLoader(const PyDataLoader&) = delete;
    PyDataLoader& operator=(const PyDataLoader&) = delete;

    py::tuple next_batch() {
        std::vector<py::ssize_t> shape = {(py::ssize_t)loader_.B, (py::ssize_t)loader_.T};
        TokenArray inputs(shape);
        TokenArray targets(shape);
        int32_t* inputs_out = inputs.mutable_data();
        int32_t* targets_out = targets.mutable_data();
        int rc;
        {
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(mutex_);
            rc = dataloader_next_batch(&loader_);
            if (rc == LLMC_OK) {
                size_t count = loader_.B * loader_.T;
                static_assert(sizeof(int) == sizeof(int32_t), "token ids are int32");
                std::memcpy(inputs_out, loader_.inputs, count * sizeof(int32_t));
                std::memcpy(targets_out, loader_.targets, count * sizeof(int32_t));
            }
        }
        if (rc != LLMC_OK) throw std::runtime_error(llmc_error());
        return py::make_tuple(inputs, targets);
    }

    void reset() {
        std::lock_guard<std::mutex> lock(mutex_);
        dataloader_reset(&loader_);
    }

    void resume(uint64_t shard_index, uint64_t sample_index) {
        int rc;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            rc = dataloader_resume(&loader_, shard_index, (size_t)sample_index);
        }
        if (rc != LLMC_OK) throw py::value_error(llmc_error());
    }

    std::pair<uint64_t, uint64_t> position() {
        std::lock_guard<std::mutex> lock(mutex_);
        return {dataloader_shard_index(&loader_), (uint64_t)dataloader_sample_index(&loader_)};
    }

    uint64_t epoch() {
        std::lock_guard<std::mutex> lock(mutex_);
        return dataloader_epoch(&loader_);
    }

    void check_vocab(int vocab_size) {
        int rc;
        {
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(mutex_);
            rc = dataloader_check_vocab(&loader_, vocab_size);
        }
        if (rc != LLMC_OK) throw py::value_error(llmc_error());
    }

    void set_vocab_limit(int vocab_size) {
        std::lock_guard<std::mutex> lock(mutex_);
        dataloader_set_vocab_limit(&loader_, vocab_size);
    }

    std::vector<std::string> shard_paths() const {
        return std::vector<std::string>(loader_.shard_paths,
                                        loader_.shard_paths + loader_.num_shards);
    }
    std::vector<size_t> shard_num_tokens() const {
        return std::vector<size_t>(loader_.shard_num_tokens,
                                   loader_.shard_num_tokens + loader_.num_shards);
    }

    const DataLoader& loader() const { return loader_; }

  private:
    DataLoader loader_{};
    std::mutex mutex_;
};

class PyTokenizer {
  public:
    explicit PyTokenizer(const std::string& path) {
        int rc;
        {
            py::gil_scoped_release release;
            rc = tokenizer_init(&tokenizer_, path.c_str());
        }
        if (rc != LLMC_OK) throw py::value_error(llmc_error());
    }
    ~PyTokenizer() { tokenizer_free(&tokenizer_); }
    PyTokenizer(const PyTokenizer&) = delete;
    PyTokenizer& operator=(const PyTokenizer&) = delete;

    py::bytes decode(int64_t id) const {
        size_t length = 0;
        const uint8_t* bytes = lookup(id, &length);
        return py::bytes(reinterpret_cast<const char*>(bytes), length);
    }

    py::bytes decode_all(const py::iterable& ids) const {
        std::string out;
        for (py::handle item : ids) {
            size_t length = 0;
            const uint8_t* bytes = lookup(item.cast<int64_t>(), &length);
            out.append(reinterpret_cast<const char*>(bytes), length);
        }
        return py::bytes(out);
    }

    uint32_t eot() const { return tokenizer_.eot_token; }
    uint32_t size() const { return tokenizer_.vocab_size; }

  private:
    const uint8_t* lookup(int64_t id, size_t* length) const {
        if (id < 0 || id > (int64_t)UINT32_MAX) {
            throw py::value_error("tokenizer: token id " + std::to_string(id) +
                                  " is outside the vocabulary of " +
                                  std::to_string(tokenizer_.vocab_size) + " tokens");
        }
        const uint8_t* bytes = tokenizer_decode(&tokenizer_, (uint32_t)id, length);
        if (bytes == nullptr) throw py::value_error(llmc_error());
        return bytes;
    }

    Tokenizer tokenizer_{};
};

// What tokenizer_write_safe() prints for these bytes (through an in-memory stream).
py::str safe_text(const py::bytes& data) {
    std::string input = data;
    char* buffer = nullptr;
    size_t size = 0;
    FILE* stream = open_memstream(&buffer, &size);
    if (stream == nullptr) throw std::runtime_error("safe_text: cannot open a memory stream");
    tokenizer_write_safe(stream, reinterpret_cast<const uint8_t*>(input.data()), input.size());
    fclose(stream);
    std::string out(buffer, size);
    free(buffer);
    return py::str(out);
}

}  // namespace

void bind_data(py::module_& m) {
    py::class_<PyDataLoader>(m, "DataLoader", R"doc(
Token shard loader (llmc/dataloader.h): batches of (inputs, targets) from the shards matching a
glob pattern. Rank `rank` of `world` processes takes samples rank, rank+world, ... of each shard;
with shuffle, the shard and sample orders are permuted per epoch from `seed`.)doc")
        .def(py::init<const std::string&, int64_t, int64_t, int, int, bool, uint64_t>(),
             py::arg("pattern"), py::arg("B"), py::arg("T"), py::arg("rank") = 0,
             py::arg("world") = 1, py::arg("shuffle") = false, py::arg("seed") = 0)
        .def("next_batch", &PyDataLoader::next_batch,
             "The next batch: (inputs, targets), each int32 of shape (B, T); targets are the "
             "inputs shifted by one token.")
        .def("reset", &PyDataLoader::reset, "Back to the first batch of epoch 0.")
        .def("resume", &PyDataLoader::resume, py::arg("shard_index"), py::arg("sample_index"),
             "Continue from a position read from `position`.")
        .def_property_readonly("position", &PyDataLoader::position,
                               "(shard_index, sample_index): shards started since the beginning "
                               "(across epochs) and batches taken from the current shard.")
        .def_property_readonly("epoch", &PyDataLoader::epoch)
        .def("check_vocab", &PyDataLoader::check_vocab, py::arg("vocab_size"),
             "Scan every shard; ValueError naming the shard on an id >= vocab_size. Later "
             "batches are checked too.")
        .def("set_vocab_limit", &PyDataLoader::set_vocab_limit, py::arg("vocab_size"),
             "Check every later batch's ids against vocab_size (0: no check).")
        .def_property_readonly("num_tokens",
                               [](const PyDataLoader& d) { return d.loader().num_tokens; })
        .def_property_readonly("num_shards",
                               [](const PyDataLoader& d) { return d.loader().num_shards; })
        .def_property_readonly("shard_paths", &PyDataLoader::shard_paths)
        .def_property_readonly("shard_num_tokens", &PyDataLoader::shard_num_tokens)
        .def_property_readonly(
            "batches_per_epoch",
            [](const PyDataLoader& d) { return dataloader_batches_per_epoch(&d.loader()); })
        .def_property_readonly("B", [](const PyDataLoader& d) { return d.loader().B; })
        .def_property_readonly("T", [](const PyDataLoader& d) { return d.loader().T; });

    py::class_<PyTokenizer>(m, "Tokenizer", R"doc(
GPT-2 tokenizer decoder (llmc/tokenizer.h) reading the tokenizer .bin file: token id -> bytes.)doc")
        .def(py::init<const std::string&>(), py::arg("path"))
        .def("decode", &PyTokenizer::decode, py::arg("id"), "The bytes of one token.")
        .def("decode_all", &PyTokenizer::decode_all, py::arg("ids"),
             "The concatenated bytes of a sequence of token ids.")
        .def_property_readonly("eot", &PyTokenizer::eot)
        .def_property_readonly("size", &PyTokenizer::size)
        .def("__len__", &PyTokenizer::size);

    m.def("safe_text", &safe_text, py::arg("data"),
          "The text the C programs print for these bytes: valid UTF-8, newlines and tabs as is; "
          "control characters and invalid bytes as \\xNN.");
}
