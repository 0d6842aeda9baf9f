#include "exposure/shard.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <future>
#include <stdexcept>
#include <tuple>
#include <utility>

#include "exposure/sais.hpp"

namespace exposure {

namespace {

constexpr const char* kTokens = "tokens.bin";
constexpr const char* kSa = "sa.bin";
constexpr const char* kBuckets = "buckets.bin";
constexpr const char* kRmq = "rmq.bin";
constexpr const char* kSeps = "separators.bin";
constexpr const char* kKeys = "keys.bin";

std::string window_file(const std::string& name) { return "windows-" + name + ".bin"; }

FileRecord write_file(const fs::path& dir, const char* name, FileHeader header, const void* data, size_t len) {
  FileWriter out(dir / name, header);
  out.write(data, len);
  auto [hash, bytes] = out.commit();
  return {name, bytes, hash};
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Number of elements of the sorted array `v` that are <= x. Branchless: the positions looked up
// are random, so a branchy search would mispredict at every step.
inline uint64_t count_le(std::span<const uint64_t> v, uint64_t x) {
  if (v.empty()) return 0;
  const uint64_t* p = v.data();
  size_t len = v.size();
  while (len > 1) {
    const size_t half = len / 2;
    p += (p[half] <= x) ? half : 0;
    len -= half;
  }
  return uint64_t(p - v.data()) + (*p <= x);
}

template <class Sym>
FileRecord write_windows(const Shard& shard, const PackedArray& sa, const WindowSpec& spec, unsigned levels,
                         const fs::path& dir) {
  std::vector<uint64_t> tb(spec.boundaries.size());
  for (size_t k = 0; k < tb.size(); ++k) {
    const uint64_t b = spec.boundaries[k];
    tb[k] = b <= shard.stream_start() ? 0
            : b >= shard.stream_end() ? UINT64_MAX
                                      : shard.stream_to_text(b);
  }
  // Window of each suffix: a table gives the number of boundaries up to the start of each block
  // of 4,096 text positions; a short walk over the boundaries inside the block finishes it.
  constexpr unsigned kShift = 12;
  const uint64_t n_text = shard.text_tokens();
  std::vector<uint32_t> base((n_text >> kShift) + 1);
  for (uint64_t blk = 0, k = 0; blk < base.size(); ++blk) {
    while (k < tb.size() && tb[k] <= (blk << kShift)) ++k;
    base[blk] = static_cast<uint32_t>(k);
  }
  std::vector<Sym> symbols(sa.size());
  for (uint64_t i = 0; i < sa.size(); ++i) {
    const uint64_t p = sa[i];
    uint64_t k = base[p >> kShift];
    while (k < tb.size() && tb[k] <= p) ++k;
    symbols[i] = static_cast<Sym>(k);
  }
  const std::string name = window_file(spec.name);
  auto [hash, bytes] = WaveletMatrix::write(dir / name, symbols, levels, spec.boundaries);
  return {name, bytes, hash};
}

}  // namespace

Shard::Shard(const fs::path& dir, uint32_t vocab_size, unsigned token_bytes)
    : dir_(dir), vocab_(vocab_size), tbytes_(token_bytes) {
  tokens_file_ = IndexFile(dir / kTokens, FileKind::Tokens);
  const FileHeader& th = tokens_file_.header();
  if (th.elem_bytes != token_bytes)
    throw IndexFileError("shard file " + tokens_file_.path().string() + " holds " + std::to_string(th.elem_bytes) +
                         "-byte tokens, the manifest says " + std::to_string(token_bytes));
  if (th.aux32 != vocab_size)
    throw IndexFileError("shard file " + tokens_file_.path().string() + " was built for vocabulary size " +
                         std::to_string(th.aux32) + ", the manifest says " + std::to_string(vocab_size));
  text_ = tokens_file_.payload();
  n_text_ = th.count;
  stream_start_ = th.aux64[0];
  owned_end_ = th.aux64[1];
  stream_end_ = th.aux64[2];
  if (owned_end_ > n_text_ || stream_end_ < stream_start_)
    throw IndexFileError("shard file " + tokens_file_.path().string() + " is corrupt (bad ranges)");

  sa_file_ = IndexFile(dir / kSa, FileKind::SuffixArray);
  sa_ = PackedArray(sa_file_.payload(), sa_file_.header().count, sa_file_.header().elem_bytes);
  if (sa_.size() != stream_end_ - stream_start_)
    throw IndexFileError("suffix array " + sa_file_.path().string() + " has " + std::to_string(sa_.size()) +
                         " entries, its shard owns " + std::to_string(stream_end_ - stream_start_) + " tokens");
  sa_file_.advise_random();
  tokens_file_.advise_random();

  buckets_file_ = IndexFile(dir / kBuckets, FileKind::Buckets);
  if (buckets_file_.header().count != uint64_t(vocab_size) + 1 || buckets_file_.header().elem_bytes != 8)
    throw IndexFileError("bucket file " + buckets_file_.path().string() + " does not match the vocabulary");
  buckets_ = {reinterpret_cast<const uint64_t*>(buckets_file_.payload()), uint64_t(vocab_size) + 1};
  if (buckets_.back() != sa_.size())
    throw IndexFileError("bucket file " + buckets_file_.path().string() + " does not match the suffix array");

  seps_file_ = IndexFile(dir / kSeps, FileKind::Separators);
  seps_ = {reinterpret_cast<const uint64_t*>(seps_file_.payload()), seps_file_.header().count};

  rmq_file_ = IndexFile(dir / kRmq, FileKind::Rmq);
  rmq_ = RangeMin(rmq_file_, sa_);

  if (fs::exists(dir / kKeys)) {
    keys_file_ = IndexFile(dir / kKeys, FileKind::Keys);
    const FileHeader& kh = keys_file_.header();
    if (kh.elem_bytes != 8 || kh.aux32 != SuffixKeys::kStride ||
        kh.count != (sa_.size() + SuffixKeys::kStride - 1) / SuffixKeys::kStride)
      throw IndexFileError("key file " + keys_file_.path().string() + " does not match its suffix array");
    keys_ = {reinterpret_cast<const uint64_t*>(keys_file_.payload()), kh.count};
  }

  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string fname = entry.path().filename().string();
    if (fname.rfind("windows-", 0) == 0 && fname.size() > 12 && fname.ends_with(".bin")) {
      const std::string name = fname.substr(8, fname.size() - 12);
      IndexFile f(entry.path(), FileKind::Windows);
      WaveletMatrix wm(f);
      if (wm.size() != sa_.size())
        throw IndexFileError("window file " + entry.path().string() + " does not match its suffix array");
      windows_.emplace(name, std::make_pair(std::move(f), std::move(wm)));
    }
  }
}

template <class T>
void Shard::find_many_impl(std::span<const std::span<const uint32_t>> phrases,
                           std::pair<uint64_t, uint64_t>* out) const {
  const T* text = reinterpret_cast<const T*>(text_);
  struct Search {
    uint64_t lo, hi, mid, q;
    const uint32_t* p;
    uint32_t m;
    bool upper;  // upper bound (first suffix > phrase) vs lower bound (first suffix >= phrase)
    size_t out;
    uint64_t ja, jb, kp;  // key phase: partition point among samples [ja, jb); the phrase's key
    unsigned shift;       // key bits beyond the phrase (dropped before comparing)
    bool keyed;
  };
  constexpr size_t kGroup = 8;  // phrases per group: 16 searches in flight
  constexpr uint64_t S = SuffixKeys::kStride;
  const SuffixKeys sk(tbytes_);
  Search st[2 * kGroup];
  for (size_t g = 0; g < phrases.size(); g += kGroup) {
    size_t ns = 0;
    for (size_t i = g; i < std::min(phrases.size(), g + kGroup); ++i) {
      const auto p = phrases[i];
      const uint64_t lo = buckets_[p[0]], hi = buckets_[p[0] + 1];
      out[i] = {lo, hi};
      if (p.size() == 1 || lo == hi) continue;
      const uint64_t j0 = (lo + S - 1) / S, j1 = (hi + S - 1) / S;  // samples inside the bucket
      const bool keyed = !keys_.empty() && j1 > j0 + 1;
      const unsigned kt = unsigned(std::min<uint64_t>(sk.tokens, p.size() - 1));
      uint64_t kp = 0;
      for (unsigned k = 1; k <= kt; ++k) kp = (kp << sk.bits) | (uint64_t(p[k]) + 1);
      const unsigned shift = sk.bits * (sk.tokens - kt);
      st[ns++] = {lo, hi, 0, 0, p.data(), uint32_t(p.size()), false, i, j0, j1, kp, shift, keyed};
      st[ns++] = {lo, hi, 0, 0, p.data(), uint32_t(p.size()), true, i, j0, j1, kp, shift, keyed};
    }
    // Key phase: the lower search finds A, the samples whose key is below the phrase's; the upper
    // search B, those not above it. Samples before A sort before the phrase, samples from B on
    // after it; when the key holds the whole phrase, a sample with an equal key starts with it.
    bool active = false;
    for (size_t k = 0; k < ns; ++k) active |= st[k].keyed;
    while (active) {
      for (size_t k = 0; k < ns; ++k)
        if (st[k].keyed && st[k].ja < st[k].jb) {
          const uint64_t a = st[k].ja, b = st[k].jb, mid = a + (b - a) / 2;
          st[k].mid = mid;
          __builtin_prefetch(&keys_[a + (mid - a) / 2]);
          if (mid + 1 < b) __builtin_prefetch(&keys_[mid + 1 + (b - mid - 1) / 2]);
        }
      active = false;
      for (size_t k = 0; k < ns; ++k) {
        Search& s = st[k];
        if (!s.keyed || s.ja >= s.jb) continue;
        const uint64_t key = keys_[s.mid] >> s.shift;
        if (s.upper ? key <= s.kp : key < s.kp)
          s.ja = s.mid + 1;
        else
          s.jb = s.mid;
        active |= s.ja < s.jb;
      }
    }
    // The text search of each bound then covers at most the stride around its sample bound (or,
    // for phrases longer than the key, the samples with an equal key and a stride each side).
    for (size_t k = 0; k < ns; k += 2) {
      Search &lower = st[k], &upper = st[k + 1];
      if (!lower.keyed) continue;
      const uint64_t lo = lower.lo, hi = lower.hi;  // the bucket
      const uint64_t j0 = (lo + S - 1) / S, j1 = (hi + S - 1) / S;
      const auto after = [&](uint64_t x) { return x > j0 ? (x - 1) * S + 1 : lo; };
      const auto upto = [&](uint64_t x) { return x < j1 ? x * S : hi; };
      const uint64_t a = lower.ja, b = upper.ja;
      if (lower.m - 1 <= sk.tokens) {
        std::tie(lower.lo, lower.hi) = std::pair(after(a), upto(a));
        std::tie(upper.lo, upper.hi) = std::pair(after(b), upto(b));
      } else {
        std::tie(lower.lo, lower.hi) = std::pair(after(a), upto(b));
        std::tie(upper.lo, upper.hi) = std::pair(after(a), upto(b));
      }
    }
    active = ns > 0;
    while (active) {
      // Besides this step's midpoint, prefetch both possible midpoints of the next step: whichever
      // way the comparison goes, its suffix-array entry is then already on its way.
      for (size_t k = 0; k < ns; ++k)
        if (st[k].lo < st[k].hi) {
          const uint64_t lo = st[k].lo, hi = st[k].hi, mid = lo + (hi - lo) / 2;
          st[k].mid = mid;
          sa_.prefetch(mid);
          sa_.prefetch(lo + (mid - lo) / 2);
          if (mid + 1 < hi) sa_.prefetch(mid + 1 + (hi - mid - 1) / 2);
        }
      for (size_t k = 0; k < ns; ++k)
        if (st[k].lo < st[k].hi) {
          st[k].q = sa_[st[k].mid];
          __builtin_prefetch(text + st[k].q + 1);
        }
      active = false;
      for (size_t k = 0; k < ns; ++k) {
        Search& s = st[k];
        if (s.lo >= s.hi) continue;
        int c = 0;
        for (uint64_t j = 1; j < s.m; ++j) {
          if (s.q + j >= n_text_) {
            c = -1;
            break;
          }
          const uint32_t t = text[s.q + j];
          if (t != s.p[j]) {
            c = t < s.p[j] ? -1 : 1;
            break;
          }
        }
        if (s.upper ? c <= 0 : c < 0)
          s.lo = s.mid + 1;
        else
          s.hi = s.mid;
        active |= s.lo < s.hi;
      }
    }
    for (size_t k = 0; k < ns; k += 2) out[st[k].out] = {st[k].lo, st[k + 1].lo};
  }
}

void Shard::find_many(std::span<const std::span<const uint32_t>> phrases, std::pair<uint64_t, uint64_t>* out) const {
  if (tbytes_ == 2)
    find_many_impl<uint16_t>(phrases, out);
  else
    find_many_impl<uint32_t>(phrases, out);
}

std::pair<uint64_t, uint64_t> Shard::find(std::span<const uint32_t> phrase) const {
  if (phrase.empty()) throw std::invalid_argument("empty phrase");
  for (uint32_t t : phrase)
    if (t >= vocab_) throw std::invalid_argument("token id " + std::to_string(t) + " is outside the vocabulary");
  std::pair<uint64_t, uint64_t> range;
  find_many({&phrase, 1}, &range);
  return range;
}

int64_t Shard::first_position(std::pair<uint64_t, uint64_t> range) const {
  if (range.first >= range.second) return -1;
  return static_cast<int64_t>(text_to_stream(rmq_.min(range.first, range.second)));
}

uint64_t Shard::text_to_stream(uint64_t q) const {
  const uint64_t k = static_cast<uint64_t>(std::lower_bound(seps_.begin(), seps_.end(), q) - seps_.begin());
  return stream_start_ + q - k;
}

uint64_t Shard::stream_to_text(uint64_t t) const {
  const uint64_t d = t - stream_start_;
  // k = number of separators i with seps[i] - i <= d (non-decreasing in i).
  uint64_t a = 0, b = seps_.size();
  while (a < b) {
    const uint64_t i = a + (b - a) / 2;
    if (seps_[i] - i <= d)
      a = i + 1;
    else
      b = i;
  }
  return d + a;
}

WindowPlan Shard::plan_windows(std::span<const uint64_t> bounds) const {
  WindowPlan plan;
  plan.columns = bounds.size() < 2 ? 0 : bounds.size() - 1;
  plan.text_bounds.resize(bounds.size());
  for (size_t k = 0; k < bounds.size(); ++k) {
    const uint64_t b = bounds[k];
    plan.text_bounds[k] = b <= stream_start_ ? 0 : b >= stream_end_ ? UINT64_MAX : stream_to_text(b);
  }
  for (const auto& [name, fw] : windows_) {
    const WaveletMatrix& wm = fw.second;
    const auto stored = wm.boundaries();
    const bool compatible = std::all_of(bounds.begin(), bounds.end(), [&](uint64_t b) {
      return b <= stream_start_ || b >= stream_end_ || std::binary_search(stored.begin(), stored.end(), b);
    });
    if (!compatible) continue;
    plan.wavelet = &wm;
    plan.column_of_symbol.assign(size_t(1) << wm.levels(), -1);
    for (size_t id = 0; id <= stored.size(); ++id) {
      const uint64_t lower = id == 0 ? 0 : stored[id - 1];
      const uint64_t rep = std::max(lower, stream_start_);
      if (rep >= stream_end_) continue;
      const int64_t col = static_cast<int64_t>(count_le(bounds, rep)) - 1;
      if (col >= 0 && col < static_cast<int64_t>(plan.columns)) plan.column_of_symbol[id] = static_cast<int32_t>(col);
    }
    break;
  }
  return plan;
}

void Shard::window_counts(std::pair<uint64_t, uint64_t> range, const WindowPlan& plan, std::span<int64_t> out,
                          std::vector<uint64_t>& scratch) const {
  const auto [l, r] = range;
  if (l >= r || plan.columns == 0) return;
  constexpr uint64_t kScanBelow = 256;  // scanning a few entries beats walking the wavelet
  if (plan.wavelet != nullptr && r - l > kScanBelow) {
    scratch.assign(plan.column_of_symbol.size(), 0);
    plan.wavelet->histogram(l, r, scratch);
    for (size_t s = 0; s < scratch.size(); ++s)
      if (scratch[s] != 0 && plan.column_of_symbol[s] >= 0) out[plan.column_of_symbol[s]] += int64_t(scratch[s]);
    return;
  }
  const std::span<const uint64_t> tb(plan.text_bounds);
  for (uint64_t i = l; i < r; ++i) {
    const int64_t col = static_cast<int64_t>(count_le(tb, sa_[i])) - 1;
    if (col >= 0 && col < static_cast<int64_t>(plan.columns)) ++out[col];
  }
}

void Shard::positions(std::pair<uint64_t, uint64_t> range, std::vector<uint64_t>& out) const {
  for (uint64_t i = range.first; i < range.second; ++i) out.push_back(text_to_stream(sa_[i]));
}

void Shard::copy_stream(uint64_t t0, uint64_t t1, uint32_t* out) const {
  if (t0 < stream_start_ || t1 > stream_end_ || t0 > t1) throw std::out_of_range("stream range outside the shard");
  uint64_t q = stream_to_text(t0);
  auto sep = std::lower_bound(seps_.begin(), seps_.end(), q);
  for (uint64_t t = t0; t < t1; ++q) {
    if (sep != seps_.end() && *sep == q) {
      ++sep;
      continue;
    }
    out[t++ - t0] = token(q);
  }
}

std::vector<std::string> Shard::window_names() const {
  std::vector<std::string> names;
  for (const auto& kv : windows_) names.push_back(kv.first);
  return names;
}

FileRecord Shard::add_windows(const WindowSpec& spec) const { return add_windows(spec, sa_); }

FileRecord Shard::add_windows(const WindowSpec& spec, const PackedArray& sa) const {
  if (sa.size() != sa_.size() || sa.width() != sa_.width()) throw std::invalid_argument("not this shard's suffix array");
  if (!std::is_sorted(spec.boundaries.begin(), spec.boundaries.end()) ||
      std::adjacent_find(spec.boundaries.begin(), spec.boundaries.end()) != spec.boundaries.end())
    throw std::invalid_argument("window boundaries must be strictly increasing");
  if (spec.boundaries.size() >= 65535) throw std::invalid_argument("at most 65534 window boundaries");
  const unsigned levels = std::max(1, int(std::bit_width(spec.boundaries.size())));
  if (levels <= 8) return write_windows<uint8_t>(*this, sa, spec, levels, dir_);
  return write_windows<uint16_t>(*this, sa, spec, levels, dir_);
}

template <class T>
ShardBuildResult build_shard(std::span<const T> text, const fs::path& dir, uint64_t stream_start, uint64_t owned_end,
                             uint32_t vocab_size, const std::vector<WindowSpec>& windows) {
  const auto t_start = std::chrono::steady_clock::now();
  ShardBuildResult res;
  const uint64_t n = text.size();
  if (owned_end > n) throw std::invalid_argument("owned_end beyond the text");
  if (uint64_t(vocab_size) > uint64_t(std::numeric_limits<T>::max()))
    throw std::invalid_argument("vocabulary too large for the token type (the separator needs one spare id)");
  const T sep = static_cast<T>(vocab_size);
  std::vector<uint64_t> seps;
  std::vector<uint64_t> first(uint64_t(vocab_size) + 1, 0);
  uint64_t owned_tokens = 0;
  for (uint64_t i = 0; i < n; ++i) {
    const T t = text[i];
    if (t == sep) {
      seps.push_back(i);
    } else if (t > sep) {
      throw std::invalid_argument("token id " + std::to_string(t) + " at text position " + std::to_string(i) +
                                  " is outside the vocabulary of size " + std::to_string(vocab_size));
    } else if (i < owned_end) {
      ++first[t];
      ++owned_tokens;
    }
  }
  const uint64_t stream_end = stream_start + owned_tokens;

  // Exclusive prefix sums; the last entry (the separator's, whose bucket is empty) is the total.
  uint64_t sum = 0;
  for (auto& c : first) {
    const uint64_t k = c;
    c = sum;
    sum += k;
  }
  // The text, bucket starts and separators do not depend on the suffix array: they are written
  // while it is sorted (a direct write leaves its thread waiting on the disk). The future is
  // declared after what it reads, so an exception here waits for it before freeing those.
  FileHeader th = make_header(FileKind::Tokens, n, sizeof(T), vocab_size);
  th.aux64[0] = stream_start;
  th.aux64[1] = owned_end;
  th.aux64[2] = stream_end;
  auto early = std::async(std::launch::async, [&] {
    return std::array{
        write_file(dir, kTokens, th, text.data(), text.size_bytes()),
        write_file(dir, kBuckets, make_header(FileKind::Buckets, first.size(), 8), first.data(), 8 * first.size()),
        write_file(dir, kSeps, make_header(FileKind::Separators, seps.size(), 8), seps.data(), 8 * seps.size())};
  });

  // Suffix array, then keep owned, non-separator suffixes only. The structures over it (range
  // minima, windows) are built from memory, not read back from the file just written.
  const unsigned width = bytes_for(n == 0 ? 0 : n - 1);
  auto sort_and_write = [&]<class Idx>(Idx) {
    HugeArray<Idx> sa(n);
    const auto t0 = std::chrono::steady_clock::now();
    suffix_array<T, Idx>(text.data(), sa.data(), n, uint64_t(vocab_size) + 1);
    res.seconds_sa = seconds_since(t0);
    // The separator is the largest symbol, so its suffixes are the last seps.size() entries: the
    // filter needs no look at the text.
    uint64_t kept = 0;
    for (uint64_t i = 0; i < n - seps.size(); ++i) {
      const Idx q = sa[i];
      if (q < owned_end) sa[kept++] = q;
    }
    // Pack to `width` bytes per entry in place: entry i lands at or before where it was read.
    auto* packed = reinterpret_cast<uint8_t*>(sa.data());
    if (width < sizeof(Idx)) {
      for (uint64_t i = 0; i < kept; ++i) {
        Idx v;
        std::memcpy(&v, packed + i * sizeof(Idx), sizeof(Idx));
        std::memcpy(packed + i * width, &v, width);
      }
    }
    const PackedArray view(packed, kept, width);
    // The suffix array file is written while the range minima are built from memory.
    auto sa_file = std::async(std::launch::async, [&] {
      return write_file(dir, kSa, make_header(FileKind::SuffixArray, kept, width), packed, kept * width);
    });
    const SuffixKeys sk(sizeof(T));
    std::vector<uint64_t> keys((kept + SuffixKeys::kStride - 1) / SuffixKeys::kStride);
    for (uint64_t j = 0; j < keys.size(); ++j) {
      if (j + 16 < keys.size()) __builtin_prefetch(text.data() + view[(j + 16) * SuffixKeys::kStride]);
      keys[j] = sk.of(text.data(), n, view[j * SuffixKeys::kStride]);
    }
    res.files.push_back(write_file(dir, kKeys, make_header(FileKind::Keys, keys.size(), 8, SuffixKeys::kStride),
                                   keys.data(), 8 * keys.size()));
    auto [hash, bytes] = RangeMin::write(dir / kRmq, view);
    for (const FileRecord& r : early.get()) res.files.push_back(r);
    res.files.push_back(sa_file.get());
    res.files.push_back({kRmq, bytes, hash});
    res.suffixes = kept;
    if (!windows.empty()) {
      const auto t1 = std::chrono::steady_clock::now();
      Shard shard(dir, vocab_size, sizeof(T));
      for (const auto& spec : windows) res.files.push_back(shard.add_windows(spec, view));
      res.seconds_windows = seconds_since(t1);
    }
  };
  if (n < UINT32_MAX)
    sort_and_write(uint32_t{});
  else
    sort_and_write(uint64_t{});
  res.sa_width = width;
  res.text_tokens = n;
  res.seconds_total = seconds_since(t_start);
  return res;
}

template ShardBuildResult build_shard<uint16_t>(std::span<const uint16_t>, const fs::path&, uint64_t, uint64_t,
                                                uint32_t, const std::vector<WindowSpec>&);
template ShardBuildResult build_shard<uint32_t>(std::span<const uint32_t>, const fs::path&, uint64_t, uint64_t,
                                                uint32_t, const std::vector<WindowSpec>&);

}  // namespace exposure
