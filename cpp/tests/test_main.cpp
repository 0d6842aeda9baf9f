// C++ unit tests for the engine library (run by ctest, also under ASan/UBSan in CI).
// Every structure is checked against a brute-force reference on random and repetitive inputs.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "exposure/index.hpp"
#include "exposure/io.hpp"
#include "exposure/logsumexp.hpp"
#include "exposure/sais.hpp"
#include "exposure/shard.hpp"
#include "exposure/structures.hpp"

using namespace exposure;

static int g_failures = 0, g_checks = 0;
#define CHECK(cond)                                                          \
  do {                                                                       \
    ++g_checks;                                                              \
    if (!(cond)) {                                                           \
      ++g_failures;                                                          \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                        \
  } while (0)

template <class Char>
std::vector<uint64_t> naive_sa(const std::vector<Char>& t) {
  std::vector<uint64_t> sa(t.size());
  for (size_t i = 0; i < sa.size(); ++i) sa[i] = i;
  std::sort(sa.begin(), sa.end(), [&](uint64_t a, uint64_t b) {
    return std::lexicographical_compare(t.begin() + a, t.end(), t.begin() + b, t.end());
  });
  return sa;
}

template <class Char, class Idx>
void check_sa(const std::vector<Char>& t, size_t sigma) {
  std::vector<Idx> sa(t.size());
  suffix_array<Char, Idx>(t.data(), sa.data(), t.size(), sigma);
  const auto ref = naive_sa(t);
  CHECK(std::equal(sa.begin(), sa.end(), ref.begin(), [](Idx a, uint64_t b) { return uint64_t(a) == b; }));
}

// Linear-time check that `sa` is the suffix array of t (Burkhardt & Kaerkkaeinen): a permutation
// whose neighbours are ordered by first symbol and, on a tie, by the ranks of the next suffixes.
template <class Char, class Idx>
bool is_suffix_array(const std::vector<Char>& t, const std::vector<Idx>& sa) {
  const size_t n = t.size();
  std::vector<int64_t> rank(n + 1, -1);  // rank[n]: the empty suffix, smallest of all
  for (size_t i = 0; i < n; ++i) {
    if (size_t(sa[i]) >= n || rank[sa[i]] != -1) return false;
    rank[sa[i]] = int64_t(i);
  }
  for (size_t i = 0; i + 1 < n; ++i) {
    const size_t a = sa[i], b = sa[i + 1];
    if (t[a] != t[b]) {
      if (t[a] > t[b]) return false;
    } else if (rank[a + 1] >= rank[b + 1]) {
      return false;
    }
  }
  return true;
}

// A text long enough that the first recursion's alphabet passes a million names with too little
// spare room for a second array, so its bucket counts are recounted from the text each time
// (the small random texts above keep theirs, in the spare middle of the output).
void test_sais_large() {
  std::mt19937_64 rng(11);
  std::vector<uint16_t> a(2'000'000), b(2'000'000);
  for (auto& c : a) c = uint16_t(rng() % 60000);
  for (auto& c : b) c = uint16_t(rng() % 60000);
  std::vector<uint16_t> t = a;  // a b a: one long repeat
  t.insert(t.end(), b.begin(), b.end());
  t.insert(t.end(), a.begin(), a.end());
  for (int i = 0; i < 200'000; ++i) t.push_back(uint16_t(7));
  for (int i = 0; i < 300'000; ++i) t.push_back(uint16_t(i % 3 == 0 ? 9 : rng() % 4));
  std::vector<uint32_t> sa(t.size());
  suffix_array<uint16_t, uint32_t>(t.data(), sa.data(), t.size(), 60000);
  CHECK(is_suffix_array(t, sa));
  std::vector<uint32_t> broken = sa;  // the checker itself can fail
  std::swap(broken[1000], broken[2000]);
  CHECK(!is_suffix_array(t, broken));
}

void test_sais() {
  std::mt19937_64 rng(1);
  for (int round = 0; round < 300; ++round) {
    const size_t n = rng() % 400 + 1, sigma = rng() % 6 + 1;
    std::vector<uint16_t> t(n);
    for (auto& c : t) c = uint16_t(rng() % sigma);
    check_sa<uint16_t, uint32_t>(t, sigma);
    std::vector<uint32_t> t32(t.begin(), t.end());
    check_sa<uint32_t, uint64_t>(t32, sigma);
    std::vector<uint32_t> sa(n);
    suffix_array<uint16_t, uint32_t>(t.data(), sa.data(), n, sigma);
    CHECK(is_suffix_array(t, sa));
  }
  // adversarial: runs, periods, repeated blocks, Fibonacci words
  std::vector<uint16_t> run(5000, 3);
  check_sa<uint16_t, uint32_t>(run, 4);
  std::vector<uint16_t> per;
  for (int i = 0; i < 3000; ++i) per.push_back(uint16_t(i % 7 == 0 ? 2 : i % 2));
  check_sa<uint16_t, uint32_t>(per, 3);
  std::vector<uint16_t> block(300);
  for (auto& c : block) c = uint16_t(rng() % 50);
  std::vector<uint16_t> rep;
  for (int k = 0; k < 10; ++k) rep.insert(rep.end(), block.begin(), block.end());
  check_sa<uint16_t, uint32_t>(rep, 50);
  std::vector<uint16_t> a{0}, b{0, 1};
  while (b.size() < 4000) {
    std::vector<uint16_t> c = b;
    c.insert(c.end(), a.begin(), a.end());
    a = b;
    b = c;
  }
  check_sa<uint16_t, uint32_t>(b, 2);
  std::vector<uint16_t> empty;
  check_sa<uint16_t, uint32_t>(empty, 1);
}

void test_xxh64() {
  Xxh64 h;
  CHECK(h.digest() == 0xEF46DB3751D8E999ULL);  // XXH64 of the empty input, seed 0
  const std::string abc = "abc";
  Xxh64 h2;
  h2.update(abc.data(), abc.size());
  CHECK(h2.digest() == 0x44BC2CF5AD770999ULL);
  // incremental updates equal one update
  std::vector<uint8_t> data(1000);
  std::mt19937 rng(3);
  for (auto& x : data) x = uint8_t(rng());
  Xxh64 one, many;
  one.update(data.data(), data.size());
  for (size_t i = 0; i < data.size(); i += 37) many.update(data.data() + i, std::min<size_t>(37, data.size() - i));
  CHECK(one.digest() == many.digest());
}

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("exposure_cpp_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// Direct and page-cache writes (EXPOSURE_DIRECT_IO=0) give the same file, its size and checksum, for
// payloads below one block, across the 4 MiB buffer and with unaligned tails, written in odd chunks.
void test_file_writer_paths() {
  const fs::path dir = temp_dir("writer");
  std::mt19937_64 rng(11);
  for (uint64_t len : {0ull, 1ull, 4032ull, 4033ull, (4ull << 20) - 64, (4ull << 20) + 4096 - 64, 9'000'001ull}) {
    std::vector<uint8_t> data(len);
    for (auto& b : data) b = uint8_t(rng());
    std::vector<std::vector<uint8_t>> files;
    for (const char* mode : {"1", "0"}) {
      ::setenv("EXPOSURE_DIRECT_IO", mode, 1);
      const fs::path path = dir / (std::string("f") + mode + ".bin");
      FileWriter w(path, make_header(FileKind::Tokens, len, 1));
      for (uint64_t at = 0; at < len;) {
        const uint64_t take = std::min<uint64_t>(len - at, 1 + rng() % 3'000'000);
        w.write(data.data() + at, take);
        at += take;
      }
      const auto [hash, bytes] = w.commit();
      CHECK(bytes == sizeof(FileHeader) + len && fs::file_size(path) == bytes && hash_file(path) == hash);
      std::ifstream in(path, std::ios::binary);
      files.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      CHECK(std::equal(data.begin(), data.end(), files.back().begin() + sizeof(FileHeader)));
    }
    CHECK(files[0] == files[1]);
  }
  ::unsetenv("EXPOSURE_DIRECT_IO");
  fs::remove_all(dir);
}

void test_range_min_and_wavelet() {
  const fs::path dir = temp_dir("structs");
  std::mt19937_64 rng(7);
  for (uint64_t n : {1ull, 5ull, 511ull, 512ull, 513ull, 5000ull}) {
    std::vector<uint32_t> v(n);
    for (auto& x : v) x = uint32_t(rng() % 100000);
    {
      FileWriter w(dir / "v.bin", make_header(FileKind::SuffixArray, n, 4));
      w.write(std::span<const uint32_t>(v));
      w.commit();
    }
    IndexFile vf(dir / "v.bin", FileKind::SuffixArray);
    PackedArray pa(vf.payload(), n, 4);
    RangeMin::write(dir / "r.bin", pa);
    IndexFile rf(dir / "r.bin", FileKind::Rmq);
    RangeMin rm(rf, pa);
    for (int q = 0; q < 300; ++q) {
      uint64_t l = rng() % n, r = l + 1 + rng() % (n - l);
      CHECK(rm.min(l, r) == *std::min_element(v.begin() + l, v.begin() + r));
    }
    std::vector<uint8_t> sym(n);
    for (auto& s : sym) s = uint8_t(rng() % 13);
    const std::vector<uint8_t> orig = sym;
    const std::vector<uint64_t> bounds{1, 2, 3};
    WaveletMatrix::write(dir / "w.bin", sym, 4, bounds);
    IndexFile wf(dir / "w.bin", FileKind::Windows);
    WaveletMatrix wm(wf);
    CHECK(wm.size() == n && wm.boundaries().size() == 3);
    for (int q = 0; q < 200; ++q) {
      uint64_t l = rng() % n, r = l + rng() % (n - l + 1);
      std::vector<uint64_t> hist(16, 0), ref(16, 0);
      wm.histogram(l, r, hist);
      for (uint64_t i = l; i < r; ++i) ++ref[orig[i]];
      CHECK(hist == ref);
    }
  }
  fs::remove_all(dir);
}

// Every level count for byte symbols (the SSSE3 partition where the CPU has it) and two-byte
// ones, lengths around word (64) and line (448) edges, uniform and skewed symbols (long runs of
// one side): rank-based histograms equal counts over the original symbols.
template <class Sym>
void check_wavelet(const fs::path& dir, std::mt19937_64& rng, uint64_t n, unsigned levels, bool skewed) {
  const uint64_t sigma = uint64_t(1) << levels;
  std::vector<Sym> sym(n);
  for (auto& s : sym) s = Sym(skewed && rng() % 16 ? sigma - 1 - rng() % 2 : rng() % sigma);
  const std::vector<Sym> orig = sym;
  const std::vector<uint64_t> bounds(sigma - 1, 0);
  WaveletMatrix::write(dir / "w.bin", sym, levels, bounds);
  IndexFile wf(dir / "w.bin", FileKind::Windows);
  WaveletMatrix wm(wf);
  CHECK(wm.size() == n);
  std::vector<uint64_t> hist(sigma), ref(sigma);
  for (int q = 0; q < 40; ++q) {
    const uint64_t l = q == 0 ? 0 : rng() % (n + 1), r = q == 0 ? n : l + rng() % (n - l + 1);
    std::fill(hist.begin(), hist.end(), 0);
    std::fill(ref.begin(), ref.end(), 0);
    wm.histogram(l, r, hist);
    for (uint64_t i = l; i < r; ++i) ++ref[orig[i]];
    CHECK(hist == ref);
  }
}

void test_wavelet_levels() {
  const fs::path dir = temp_dir("wavelet");
  std::mt19937_64 rng(17);
  for (uint64_t n : {0ull, 1ull, 63ull, 64ull, 65ull, 447ull, 448ull, 449ull, 1000ull, 9001ull}) {
    for (unsigned levels = 1; levels <= 8; ++levels) {
      check_wavelet<uint8_t>(dir, rng, n, levels, false);
      check_wavelet<uint8_t>(dir, rng, n, levels, true);
    }
    check_wavelet<uint16_t>(dir, rng, n, 9, false);
    check_wavelet<uint16_t>(dir, rng, n, 11, true);
  }
  fs::remove_all(dir);
}

void test_shard_queries_and_errors() {
  const fs::path dir = temp_dir("shard");
  std::mt19937_64 rng(11);
  const uint32_t vocab = 4;
  // items of 50 tokens, separator (= vocab) after each
  std::vector<uint16_t> stream(2000);
  for (auto& t : stream) t = uint16_t(rng() % vocab);
  std::vector<uint16_t> text;
  for (size_t i = 0; i < stream.size(); ++i) {
    text.push_back(stream[i]);
    if (i % 50 == 49) text.push_back(uint16_t(vocab));
  }
  std::vector<WindowSpec> windows{{"w", {0, 500, 1000, 2000}}};
  build_shard<uint16_t>(text, dir, 0, text.size(), vocab, windows);
  Index ix({dir}, vocab, 2, 2);
  CHECK(ix.num_tokens() == stream.size());
  for (int q = 0; q < 200; ++q) {
    const size_t m = rng() % 4 + 1;
    std::vector<uint32_t> p(m);
    for (auto& x : p) x = uint32_t(rng() % vocab);
    std::vector<uint64_t> ref;
    for (size_t i = 0; i + m <= stream.size(); ++i) {
      if (i / 50 != (i + m - 1) / 50) continue;
      bool ok = true;
      for (size_t k = 0; k < m && ok; ++k) ok = stream[i + k] == p[k];
      if (ok) ref.push_back(i);
    }
    const std::vector<int64_t> off{0, int64_t(m)};
    PhraseBatch b{p, off};
    int64_t cnt = 0, first = 0;
    ix.count(b, {&cnt, 1});
    ix.first_position(b, {&first, 1});
    CHECK(cnt == int64_t(ref.size()));
    CHECK(first == (ref.empty() ? -1 : int64_t(ref[0])));
    CHECK(ix.positions(p, UINT64_MAX) == ref);
    std::vector<int64_t> wc(3);
    const std::vector<int64_t> bounds{0, 500, 1000, 2000};
    ix.window_counts(b, bounds, wc);
    int64_t w0 = 0, w1 = 0, w2 = 0;
    for (auto x : ref) (x < 500 ? w0 : x < 1000 ? w1 : w2)++;
    CHECK(wc[0] == w0 && wc[1] == w1 && wc[2] == w2);
  }
  std::vector<uint32_t> tokens(10);
  ix.copy_stream(95, 105, tokens.data());
  CHECK(std::equal(tokens.begin(), tokens.end(), stream.begin() + 95));
  // invalid phrases
  bool threw = false;
  try {
    std::vector<uint32_t> p{vocab};
    const std::vector<int64_t> off{0, 1};
    int64_t c;
    ix.count({p, off}, {&c, 1});
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
  // window boundaries negative or not strictly increasing
  for (const std::vector<int64_t>& bad : {std::vector<int64_t>{-1, 10}, std::vector<int64_t>{0, 10, 10}}) {
    threw = false;
    try {
      std::vector<uint32_t> p{1};
      const std::vector<int64_t> off{0, 1};
      std::vector<int64_t> wc(bad.size() - 1);
      ix.window_counts({p, off}, bad, wc);
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    CHECK(threw);
  }
  // truncated file
  fs::resize_file(dir / "sa.bin", fs::file_size(dir / "sa.bin") - 3);
  threw = false;
  try {
    Index broken({dir}, vocab, 2, 1);
  } catch (const IndexFileError& e) {
    threw = std::string(e.what()).find("truncated") != std::string::npos;
  }
  CHECK(threw);
  fs::remove_all(dir);
}

// An index of 130 one-item shards: batches too small to occupy the threads are split by shards
// (two runs of 65 shards, answers folded in shard order); every thread count gives the
// brute-force answers, for single phrases and small batches.
void test_many_shards() {
  std::mt19937_64 rng(5);
  const uint32_t vocab = 3;
  const size_t item = 50, n_shards = 130;
  std::vector<uint16_t> stream(item * n_shards);
  for (auto& t : stream) t = uint16_t(rng() % vocab);
  std::vector<fs::path> dirs;
  for (size_t k = 0; k < n_shards; ++k) {
    dirs.push_back(temp_dir("many-" + std::to_string(k)));
    const auto from = stream.begin() + std::ptrdiff_t(k * item);
    std::vector<uint16_t> text(from, from + std::ptrdiff_t(item));
    text.push_back(uint16_t(vocab));
    build_shard<uint16_t>(text, dirs.back(), k * item, text.size(), vocab, {});
  }
  const std::vector<int64_t> bounds{0, 100, 3200, 3300, 6500};
  for (unsigned threads : {1u, 2u, 3u, 8u}) {
    Index ix(dirs, vocab, 2, threads);
    for (size_t batch : {size_t(1), size_t(7)}) {
      for (int q = 0; q < 20; ++q) {
        std::vector<uint32_t> tokens;
        std::vector<int64_t> off{0};
        for (size_t i = 0; i < batch; ++i) {
          const size_t m = rng() % 5 + 1;
          for (size_t k = 0; k < m; ++k) tokens.push_back(uint32_t(rng() % vocab));
          off.push_back(int64_t(tokens.size()));
        }
        const PhraseBatch b{tokens, off};
        std::vector<int64_t> cnt(batch), first(batch), wc(batch * (bounds.size() - 1));
        ix.count(b, cnt);
        ix.first_position(b, first);
        ix.window_counts(b, bounds, wc);
        for (size_t i = 0; i < batch; ++i) {
          const auto p = b[i];
          int64_t c = 0, f = -1;
          std::vector<int64_t> w(bounds.size() - 1, 0);
          for (size_t s = 0; s + p.size() <= stream.size(); ++s) {
            if (s / item != (s + p.size() - 1) / item) continue;
            if (!std::equal(p.begin(), p.end(), stream.begin() + std::ptrdiff_t(s))) continue;
            ++c;
            if (f < 0) f = int64_t(s);
            for (size_t k = 0; k + 1 < bounds.size(); ++k)
              w[k] += int64_t(s) >= bounds[k] && int64_t(s) < bounds[k + 1];
          }
          CHECK(cnt[i] == c);
          CHECK(first[i] == f);
          CHECK(std::equal(w.begin(), w.end(), wc.begin() + std::ptrdiff_t(i * w.size())));
        }
      }
    }
  }
  for (const auto& d : dirs) fs::remove_all(d);
}

// The logsumexp kernel against a double-precision reference, each version this CPU runs: ragged
// vocabularies (panel padding, an odd panel count), any dimension, row counts around the 6- and
// 12-row tiles and 96-row tasks, with and without bias; a logit far above each row's first 128
// (exact path), a NaN row, -inf bias entries.
void test_output_head_logsumexp(Isa isa) {
  if (!OutputHead::supported(isa)) {
    std::printf("(logsumexp kernel %s not supported on this CPU: skipped)\n", isa == Isa::avx512 ? "avx512" : "avx2");
    return;
  }
  std::mt19937_64 rng(23);
  std::normal_distribution<float> normal(0.f, 1.f);
  auto reference = [](const std::vector<float>& w, const std::vector<float>& b, const float* h, size_t vocab,
                      size_t dim) {
    std::vector<double> logits(vocab);
    for (size_t v = 0; v < vocab; ++v) {
      double x = b.empty() ? 0.0 : b[v];
      for (size_t k = 0; k < dim; ++k) x += double(w[v * dim + k]) * h[k];
      logits[v] = x;
    }
    const double peak = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (double x : logits) sum += std::exp(x - peak);
    return peak + std::log(sum);
  };
  for (size_t vocab : {1ull, 15ull, 16ull, 17ull, 129ull, 1100ull, 2500ull})
    for (size_t dim : {1ull, 7ull, 64ull})
      for (size_t rows : {0ull, 1ull, 5ull, 6ull, 7ull, 12ull, 13ull, 97ull, 200ull})
        for (bool bias : {false, true}) {
          std::vector<float> w(vocab * dim), b(bias ? vocab : 0), h(rows * dim), out(rows, 0.f);
          for (auto& x : w) x = normal(rng) * 0.5f;
          for (auto& x : b) x = normal(rng);
          for (auto& x : h) x = normal(rng) * 2.f;
          if (bias && vocab > 3) b[vocab / 2] = -std::numeric_limits<float>::infinity();
          if (rows > 3 && vocab > 200) {  // row 3 peaks ~300 above its first 128 logits
            for (size_t k = 0; k < dim; ++k) w[(vocab - 1) * dim + k] = 300.f * h[3 * dim + k] / (4.f * float(dim));
          }
          OutputHead head(w.data(), vocab, dim, bias ? b.data() : nullptr);
          head.set_isa(isa);
          CHECK(head.isa() == isa);
          head.logsumexp(h.data(), rows, out.data(), 2);
          for (size_t i = 0; i < rows; ++i) {
            const double want = reference(w, b, h.data() + i * dim, vocab, dim);
            CHECK(std::abs(out[i] - want) <= 2e-5 * std::max(1.0, std::abs(want)));
          }
          if (rows > 1) {
            h[dim] = std::numeric_limits<float>::quiet_NaN();
            head.logsumexp(h.data(), rows, out.data(), 1);
            CHECK(std::isnan(out[1]));
            CHECK(!std::isnan(out[0]));
          }
        }
  // Every one of the first 128 logits -inf (masked by the bias): the shift is -inf, every row takes
  // the exact path, which must skip -inf terms; all logits -inf gives -inf.
  const size_t vocab = 200, dim = 4, rows = 7;
  std::vector<float> w(vocab * dim), b(vocab, 0.f), h(rows * dim), out(rows);
  for (auto& x : w) x = normal(rng);
  for (auto& x : h) x = normal(rng);
  std::fill(b.begin(), b.begin() + 128, -std::numeric_limits<float>::infinity());
  OutputHead masked(w.data(), vocab, dim, b.data());
  masked.set_isa(isa);
  masked.logsumexp(h.data(), rows, out.data(), 2);
  for (size_t i = 0; i < rows; ++i) CHECK(std::abs(out[i] - reference(w, b, h.data() + i * dim, vocab, dim)) <= 2e-5);
  std::fill(b.begin(), b.end(), -std::numeric_limits<float>::infinity());
  OutputHead all_masked(w.data(), vocab, dim, b.data());
  all_masked.set_isa(isa);
  all_masked.logsumexp(h.data(), rows, out.data(), 2);
  for (size_t i = 0; i < rows; ++i) CHECK(out[i] == -std::numeric_limits<float>::infinity());
}

// A head runs the widest version the CPU has; one the CPU lacks cannot be chosen.
void test_output_head_default_isa() {
  if (!OutputHead::supported()) return;
  const std::vector<float> w(32, 0.5f);
  OutputHead head(w.data(), 8, 4, nullptr);
  CHECK(head.isa() == (OutputHead::supported(Isa::avx512) ? Isa::avx512 : Isa::avx2));
  if (!OutputHead::supported(Isa::avx512)) {
    bool threw = false;
    try {
      head.set_isa(Isa::avx512);
    } catch (const std::runtime_error&) {
      threw = true;
    }
    CHECK(threw && head.isa() == Isa::avx2);
  }
}

int main() {
  test_sais();
  test_sais_large();
  test_xxh64();
  test_file_writer_paths();
  test_range_min_and_wavelet();
  test_wavelet_levels();
  test_shard_queries_and_errors();
  test_many_shards();
  test_output_head_logsumexp(Isa::avx2);
  test_output_head_logsumexp(Isa::avx512);
  test_output_head_default_isa();
  std::printf("%d passed, %d failed\n", g_checks - g_failures, g_failures);
  return g_failures == 0 ? 0 : 1;
}
