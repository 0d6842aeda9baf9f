// Thin pybind11 layer over the library: numpy in and out without copies, the GIL released in
// every call that does real work. Validation lives in python/exposure and in the library (whose
// std::invalid_argument arrives as ValueError); this layer checks only the layout of what Python passes.
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include "exposure/index.hpp"
#include "exposure/logsumexp.hpp"
#include "exposure/shard.hpp"

namespace py = pybind11;
using namespace exposure;

namespace {

template <class T>
using CArray = py::array_t<T, py::array::c_style>;

// A batch of phrases as the library takes it: uint32 ids are viewed in place, uint16 ids (a uint16
// index's own dtype, the usual single phrase) are widened here, cheaper than a numpy conversion.
struct Phrases {
  std::vector<uint32_t> widened;
  PhraseBatch batch;
};

template <class T>
Phrases phrases(const CArray<T>& tokens, const CArray<int64_t>& offsets) {
  if (offsets.size() < 1) throw std::invalid_argument("offsets must have at least one element");
  const int64_t* off = offsets.data();
  for (py::ssize_t i = 0; i + 1 < offsets.size(); ++i)
    if (off[i] < 0 || off[i + 1] < off[i] || off[i + 1] > tokens.size())
      throw std::invalid_argument("malformed phrase offsets");
  Phrases p;
  std::span<const uint32_t> ids;
  if constexpr (std::is_same_v<T, uint32_t>) {
    ids = {tokens.data(), size_t(tokens.size())};
  } else {
    p.widened.assign(tokens.data(), tokens.data() + tokens.size());
    ids = p.widened;
  }
  p.batch = {ids, {off, size_t(offsets.size())}};
  return p;
}

// A query with one int64 answer per phrase (count, first_position).
template <class T, void (Index::*Query)(const PhraseBatch&, std::span<int64_t>) const>
CArray<int64_t> per_phrase(const Index& ix, const CArray<T>& tokens, const CArray<int64_t>& offsets) {
  const Phrases p = phrases(tokens, offsets);
  CArray<int64_t> out(py::ssize_t(p.batch.size()));
  std::span<int64_t> o(out.mutable_data(), p.batch.size());
  py::gil_scoped_release release;
  (ix.*Query)(p.batch, o);
  return out;
}

// count, first_position and window_counts over phrases of T ids, named with `suffix`.
template <class T>
void def_queries(py::class_<Index>& cls, const std::string& suffix) {
  cls.def(("count" + suffix).c_str(), &per_phrase<T, &Index::count>)
      .def(("first_position" + suffix).c_str(), &per_phrase<T, &Index::first_position>)
      .def(("window_counts" + suffix).c_str(),
           [](const Index& ix, const CArray<T>& tokens, const CArray<int64_t>& offsets,
              const CArray<int64_t>& bounds) {
             const Phrases p = phrases(tokens, offsets);
             const size_t cols = bounds.size() < 2 ? 0 : size_t(bounds.size()) - 1;
             CArray<int64_t> out({py::ssize_t(p.batch.size()), py::ssize_t(cols)});
             std::span<int64_t> o(out.mutable_data(), p.batch.size() * cols);
             std::span<const int64_t> bs(bounds.data(), size_t(bounds.size()));
             py::gil_scoped_release release;
             ix.window_counts(p.batch, bs, o);
             return out;
           });
}

py::dict build_result(const ShardBuildResult& r) {
  py::list files;
  for (const auto& f : r.files) files.append(py::dict(py::arg("name") = f.name, py::arg("bytes") = f.bytes,
                                                      py::arg("xxh64") = f.xxh64));
  return py::dict(py::arg("files") = files, py::arg("text_tokens") = r.text_tokens,
                  py::arg("suffixes") = r.suffixes, py::arg("sa_width") = r.sa_width,
                  py::arg("seconds_sa") = r.seconds_sa, py::arg("seconds_windows") = r.seconds_windows,
                  py::arg("seconds_total") = r.seconds_total);
}

std::vector<WindowSpec> window_specs(const std::vector<std::pair<std::string, CArray<uint64_t>>>& windows) {
  std::vector<WindowSpec> specs;
  for (const auto& [name, b] : windows) specs.push_back({name, std::vector<uint64_t>(b.data(), b.data() + b.size())});
  return specs;
}

template <class T>
py::dict build_shard_py(const CArray<T>& text, const fs::path& dir, uint64_t stream_start, uint64_t owned_end,
                        uint32_t vocab_size, const std::vector<std::pair<std::string, CArray<uint64_t>>>& windows) {
  const auto specs = window_specs(windows);
  const std::span<const T> view(text.data(), size_t(text.size()));
  ShardBuildResult r;
  {
    py::gil_scoped_release release;
    r = build_shard<T>(view, dir, stream_start, owned_end, vocab_size, specs);
  }
  return build_result(r);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "exposure's C++ engine (use the exposure package, not this module)";
  py::register_exception<IndexFileError>(m, "IndexFileError", PyExc_ValueError);

  m.def("build_shard", &build_shard_py<uint16_t>, py::arg("text"), py::arg("dir"), py::arg("stream_start"),
        py::arg("owned_end"), py::arg("vocab_size"), py::arg("windows"));
  m.def("build_shard", &build_shard_py<uint32_t>, py::arg("text"), py::arg("dir"), py::arg("stream_start"),
        py::arg("owned_end"), py::arg("vocab_size"), py::arg("windows"));
  m.def(
      "hash_file",
      [](const fs::path& p) {
        py::gil_scoped_release release;
        return hash_file(p);
      },
      py::arg("path"));
  py::class_<Xxh64>(m, "Xxh64", "XXH64 computed incrementally: update(buffer) with the bytes in order, then digest()")
      .def(py::init<>())
      .def(
          "update",
          [](Xxh64& h, py::buffer b) {
            const py::buffer_info info = b.request();
            if (!PyBuffer_IsContiguous(info.view(), 'C')) throw std::invalid_argument("xxh64 needs a contiguous buffer");
            const auto* data = static_cast<const uint8_t*>(info.ptr);
            const size_t len = size_t(info.size) * size_t(info.itemsize);
            py::gil_scoped_release release;
            h.update(data, len);
          },
          py::arg("data"))
      .def("digest", &Xxh64::digest);
  m.def(
      "xxh64",
      [](py::buffer b) {
        const py::buffer_info info = b.request();
        if (!PyBuffer_IsContiguous(info.view(), 'C')) throw std::invalid_argument("xxh64 needs a contiguous buffer");
        const auto* data = static_cast<const uint8_t*>(info.ptr);
        const size_t len = size_t(info.size) * size_t(info.itemsize);
        py::gil_scoped_release release;
        Xxh64 h;
        h.update(data, len);
        return h.digest();
      },
      py::arg("data"));

  py::class_<Index> index(m, "Index");
  index
      .def(py::init([](const std::vector<fs::path>& dirs, uint32_t vocab, unsigned token_bytes, unsigned threads) {
             py::gil_scoped_release release;
             return std::make_unique<Index>(dirs, vocab, token_bytes, threads);
           }),
           py::arg("shard_dirs"), py::arg("vocab_size"), py::arg("token_bytes"), py::arg("threads"))
      .def_property("threads", &Index::threads, &Index::set_threads)
      .def_property_readonly("num_tokens", &Index::num_tokens)
      .def_property_readonly("shard_ranges",
                             [](const Index& ix) {
                               std::vector<std::pair<uint64_t, uint64_t>> r;
                               for (const auto& s : ix.shards()) r.emplace_back(s.stream_start(), s.stream_end());
                               return r;
                             })
      .def("window_names",
           [](const Index& ix) {
             std::vector<std::vector<std::string>> r;
             for (const auto& s : ix.shards()) r.push_back(s.window_names());
             return r;
           })
      .def("positions",
           [](const Index& ix, const CArray<uint32_t>& phrase, uint64_t limit) {
             std::vector<uint64_t> pos;
             {
               py::gil_scoped_release release;
               pos = ix.positions({phrase.data(), size_t(phrase.size())}, limit);
             }
             CArray<int64_t> out(py::ssize_t(pos.size()));
             std::copy(pos.begin(), pos.end(), out.mutable_data());
             return out;
           })
      .def("copy_stream",
           [](const Index& ix, uint64_t t0, uint64_t t1) {
             if (t1 < t0) throw std::invalid_argument("stop before start");
             CArray<uint32_t> out(py::ssize_t(t1 - t0));
             uint32_t* o = out.mutable_data();
             py::gil_scoped_release release;
             ix.copy_stream(t0, t1, o);
             return out;
           })
      .def("add_windows", [](const Index& ix, const std::string& name, const CArray<uint64_t>& bounds) {
        WindowSpec spec{name, std::vector<uint64_t>(bounds.data(), bounds.data() + bounds.size())};
        std::vector<FileRecord> recs;
        {
          py::gil_scoped_release release;
          for (const auto& s : ix.shards()) recs.push_back(s.add_windows(spec));
        }
        py::list out;
        for (const auto& f : recs)
          out.append(py::dict(py::arg("name") = f.name, py::arg("bytes") = f.bytes, py::arg("xxh64") = f.xxh64));
        return out;
      });
  // Separate names, not overloads: pybind11 tries overloads one after another, which costs more
  // than the conversion they would save.
  def_queries<uint32_t>(index, "");
  def_queries<uint16_t>(index, "_u16");

  py::class_<OutputHead>(m, "OutputHead")
      .def(py::init([](const CArray<float>& weight, std::optional<CArray<float>> bias) {
             if (weight.ndim() != 2) throw std::invalid_argument("weight must be [vocab, dim]");
             const size_t vocab = weight.shape(0), dim = weight.shape(1);
             if (bias && (bias->ndim() != 1 || size_t(bias->shape(0)) != vocab))
               throw std::invalid_argument("bias must be [vocab]");
             return std::make_unique<OutputHead>(weight.data(), vocab, dim, bias ? bias->data() : nullptr);
           }),
           py::arg("weight"), py::arg("bias") = py::none())
      .def_property_readonly("vocab", &OutputHead::vocab)
      .def_property_readonly("dim", &OutputHead::dim)
      .def_static("supported", py::overload_cast<>(&OutputHead::supported))
      .def_property(
          "isa", [](const OutputHead& head) { return head.isa() == Isa::avx512 ? "avx512" : "avx2"; },
          [](OutputHead& head, const std::string& name) {
            if (name != "avx2" && name != "avx512") throw std::invalid_argument("isa must be 'avx2' or 'avx512'");
            head.set_isa(name == "avx512" ? Isa::avx512 : Isa::avx2);
          })
      .def_static("isas", [] {
        std::vector<std::string> out;
        if (OutputHead::supported(Isa::avx2)) out.emplace_back("avx2");
        if (OutputHead::supported(Isa::avx512)) out.emplace_back("avx512");
        return out;
      })
      .def(
          "logsumexp",
          [](const OutputHead& head, const CArray<float>& hidden, unsigned threads) {
            if (hidden.ndim() != 2 || size_t(hidden.shape(1)) != head.dim())
              throw std::invalid_argument("hidden must be [rows, " + std::to_string(head.dim()) + "]");
            const size_t rows = hidden.shape(0);
            CArray<float> out(static_cast<py::ssize_t>(rows));
            float* o = out.mutable_data();
            const float* h = hidden.data();
            py::gil_scoped_release release;
            head.logsumexp(h, rows, o, threads);
            return out;
          },
          py::arg("hidden"), py::arg("threads"));
}
