#include "exposure/index.hpp"

#include <algorithm>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <type_traits>

namespace exposure {

void parallel_for(size_t n, unsigned threads, const std::function<void(size_t, size_t)>& fn, size_t min_chunk) {
  if (n == 0) return;
  const size_t workers = std::min<size_t>(std::max(1u, threads), (n + min_chunk - 1) / min_chunk);
  if (workers <= 1) {
    fn(0, n);
    return;
  }
  std::exception_ptr error;
  std::mutex mu;
  std::vector<std::jthread> pool;
  const size_t chunk = (n + workers - 1) / workers;
  for (size_t w = 0; w < workers; ++w) {
    const size_t b = w * chunk, e = std::min(n, b + chunk);
    if (b >= e) break;
    pool.emplace_back([&, b, e] {
      try {
        fn(b, e);
      } catch (...) {
        std::lock_guard lock(mu);
        if (!error) error = std::current_exception();
      }
    });
  }
  pool.clear();  // joins
  if (error) std::rethrow_exception(error);
}

Index::Index(const std::vector<fs::path>& shard_dirs, uint32_t vocab_size, unsigned token_bytes, unsigned threads)
    : vocab_(vocab_size), threads_(std::max(1u, threads)) {
  shards_.reserve(shard_dirs.size());
  uint64_t expect = 0;
  for (const auto& dir : shard_dirs) {
    shards_.emplace_back(dir, vocab_size, token_bytes);
    if (shards_.back().stream_start() != expect)
      throw IndexFileError("shard " + dir.string() + " starts at stream offset " +
                           std::to_string(shards_.back().stream_start()) + ", expected " + std::to_string(expect));
    expect = shards_.back().stream_end();
  }
}

uint64_t Index::num_tokens() const { return shards_.empty() ? 0 : shards_.back().stream_end(); }

void Index::set_threads(unsigned t) { threads_ = std::max(1u, t); }

void Index::validate(const PhraseBatch& phrases) const {
  for (size_t i = 0; i < phrases.size(); ++i) {
    if (phrases.offsets[i + 1] <= phrases.offsets[i])
      throw std::invalid_argument("phrase " + std::to_string(i) + " is empty");
  }
  for (uint32_t t : phrases.tokens)
    if (t >= vocab_)
      throw std::invalid_argument("token id " + std::to_string(t) + " is outside the vocabulary (size " +
                                  std::to_string(vocab_) + ")");
}

namespace {
// Suffix-array ranges of phrases [b, e) in one shard, found in lock-step batches.
void ranges_in(const Shard& s, const PhraseBatch& phrases, size_t b, size_t e,
               std::vector<std::span<const uint32_t>>& views, std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
  views.clear();
  for (size_t i = b; i < e; ++i) views.push_back(phrases[i]);
  ranges.resize(views.size());
  s.find_many(views, ranges.data());
}

constexpr size_t kMinPhrasesPerWorker = 64;
constexpr size_t kMinShardsPerWorker = 64;  // a search is 0.5-2 us per shard, starting a thread tens of us

// A batch is split over threads by phrases. When that would leave threads idle (few phrases) and the
// index has enough shards to pay for starting threads, it is split by shards instead: each worker
// answers every phrase over a run of shards, the first into `out`, the others into their own parts,
// which merge(out, part) folds in shard order. Without a merge (nullptr), always by phrases.
// answer(phrase_begin, phrase_end, shard_begin, shard_end, rows) writes `width` answers per phrase.
template <class Answer, class Merge>
void split(unsigned threads, size_t phrases, size_t shards, size_t width, std::span<int64_t> out,
           const Answer& answer, const Merge& merge) {
  size_t workers = 1;
  if constexpr (!std::is_same_v<Merge, std::nullptr_t>) {
    if (threads > 1 && phrases > 0 && (phrases + kMinPhrasesPerWorker - 1) / kMinPhrasesPerWorker < threads)
      workers = std::clamp<size_t>(shards / kMinShardsPerWorker, 1, threads);
  }
  if (workers <= 1) {
    parallel_for(phrases, threads, [&](size_t b, size_t e) {
      answer(b, e, 0, shards, out.subspan(b * width, (e - b) * width));
    }, kMinPhrasesPerWorker);
    return;
  }
  const size_t chunk = (shards + workers - 1) / workers;
  std::vector<std::vector<int64_t>> parts(workers);
  parallel_for(workers, unsigned(workers), [&](size_t wb, size_t we) {
    for (size_t w = wb; w < we; ++w) {
      std::span<int64_t> dst = out;
      if (w > 0) {
        parts[w].resize(out.size());
        dst = parts[w];
      }
      answer(0, phrases, std::min(shards, w * chunk), std::min(shards, (w + 1) * chunk), dst);
    }
  }, 1);
  if constexpr (!std::is_same_v<Merge, std::nullptr_t>) {
    for (size_t w = 1; w < workers; ++w) merge(out, std::span<const int64_t>(parts[w]));
  }
}

void add(std::span<int64_t> out, std::span<const int64_t> part) {
  for (size_t i = 0; i < out.size(); ++i) out[i] += part[i];
}
}  // namespace

void Index::count(const PhraseBatch& phrases, std::span<int64_t> out) const {
  validate(phrases);
  const auto answer = [&](size_t b, size_t e, size_t s0, size_t s1, std::span<int64_t> dst) {
    std::vector<std::span<const uint32_t>> views;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    std::fill(dst.begin(), dst.end(), 0);
    for (size_t s = s0; s < s1; ++s) {
      ranges_in(shards_[s], phrases, b, e, views, ranges);
      for (size_t i = b; i < e; ++i) dst[i - b] += int64_t(ranges[i - b].second - ranges[i - b].first);
    }
  };
  split(threads_, phrases.size(), shards_.size(), 1, out, answer, add);
}

void Index::first_position(const PhraseBatch& phrases, std::span<int64_t> out) const {
  validate(phrases);
  const auto answer = [&](size_t b, size_t e, size_t s0, size_t s1, std::span<int64_t> dst) {
    std::vector<std::span<const uint32_t>> views;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    std::fill(dst.begin(), dst.end(), -1);
    size_t unresolved = e - b;
    for (size_t s = s0; s < s1 && unresolved > 0; ++s) {  // training order: the first shard with a hit has the answer
      ranges_in(shards_[s], phrases, b, e, views, ranges);
      for (size_t i = b; i < e; ++i) {
        if (dst[i - b] >= 0) continue;
        dst[i - b] = shards_[s].first_position(ranges[i - b]);
        if (dst[i - b] >= 0) --unresolved;
      }
    }
  };
  // Never split by shards: walking shards in order stops at the first hit, usually an early shard.
  split(threads_, phrases.size(), shards_.size(), 1, out, answer, nullptr);
}

void Index::window_counts(const PhraseBatch& phrases, std::span<const int64_t> signed_boundaries,
                          std::span<int64_t> out) const {
  validate(phrases);
  if (std::any_of(signed_boundaries.begin(), signed_boundaries.end(), [](int64_t b) { return b < 0; }))
    throw std::invalid_argument("window boundaries must be non-negative");
  if (std::adjacent_find(signed_boundaries.begin(), signed_boundaries.end(), std::greater_equal<>()) !=
      signed_boundaries.end())
    throw std::invalid_argument("window boundaries must be strictly increasing");
  const std::vector<uint64_t> boundaries(signed_boundaries.begin(), signed_boundaries.end());
  const size_t cols = boundaries.size() < 2 ? 0 : boundaries.size() - 1;
  std::fill(out.begin(), out.end(), 0);
  if (cols == 0) return;
  const auto cached = plans_for(boundaries);
  const std::vector<const Shard*>& relevant = cached->shards;
  const std::vector<WindowPlan>& plans = cached->plans;
  const auto answer = [&](size_t b, size_t e, size_t k0, size_t k1, std::span<int64_t> dst) {
    std::vector<uint64_t> scratch;
    std::fill(dst.begin(), dst.end(), 0);
    for (size_t i = b; i < e; ++i) {
      std::span<int64_t> row = dst.subspan((i - b) * cols, cols);
      for (size_t k = k0; k < k1; ++k)
        relevant[k]->window_counts(relevant[k]->find(phrases[i]), plans[k], row, scratch);
    }
  };
  split(threads_, phrases.size(), relevant.size(), cols, out, answer, add);
}

std::shared_ptr<const Index::Plans> Index::plans_for(std::span<const uint64_t> boundaries) const {
  std::vector<uint64_t> key(boundaries.begin(), boundaries.end());
  {
    std::lock_guard lock(plans_mu_);
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second;
  }
  auto p = std::make_shared<Plans>();
  // Only shards that overlap [boundaries.front(), boundaries.back()) can contribute.
  for (const Shard& s : shards_) {
    if (s.stream_end() <= boundaries.front() || s.stream_start() >= boundaries.back()) continue;
    p->shards.push_back(&s);
    p->plans.push_back(s.plan_windows(boundaries));
  }
  std::lock_guard lock(plans_mu_);
  if (plans_.size() >= 64) plans_.clear();  // bounded: a handful of schedules is the normal case
  plans_.emplace(std::move(key), p);
  return p;
}

std::vector<uint64_t> Index::positions(std::span<const uint32_t> phrase, uint64_t limit) const {
  std::vector<uint64_t> all;
  for (const Shard& s : shards_) {
    const size_t before = all.size();
    s.positions(s.find(phrase), all);
    // Shards are in stream order, so sorting each shard's part sorts the whole.
    const auto first = all.begin() + std::ptrdiff_t(before);
    if (all.size() > limit) {
      std::nth_element(first, all.begin() + std::ptrdiff_t(limit), all.end());
      all.resize(limit);
    }
    std::sort(first, all.end());
    if (all.size() >= limit) break;
  }
  return all;
}

void Index::copy_stream(uint64_t t0, uint64_t t1, uint32_t* out) const {
  if (t0 > t1 || t1 > num_tokens()) throw std::out_of_range("stream range outside the index");
  for (const Shard& s : shards_) {
    const uint64_t a = std::max(t0, s.stream_start()), b = std::min(t1, s.stream_end());
    if (a < b) s.copy_stream(a, b, out + (a - t0));
  }
}

}  // namespace exposure
