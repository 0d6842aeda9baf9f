// The queryable index: shards in training order, answered together, in batches over threads.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "exposure/shard.hpp"

namespace exposure {

// A batch of phrases stored flat: phrase i is tokens[offsets[i], offsets[i+1]).
struct PhraseBatch {
  std::span<const uint32_t> tokens;
  std::span<const int64_t> offsets;
  size_t size() const { return offsets.empty() ? 0 : offsets.size() - 1; }
  std::span<const uint32_t> operator[](size_t i) const {
    return tokens.subspan(size_t(offsets[i]), size_t(offsets[i + 1] - offsets[i]));
  }
};

// Runs fn(begin, end) over [0, n) split into contiguous chunks on up to `threads` threads.
void parallel_for(size_t n, unsigned threads, const std::function<void(size_t, size_t)>& fn, size_t min_chunk = 64);

class Index {
 public:
  // Shards must be given in training order and cover consecutive stream ranges.
  Index(const std::vector<fs::path>& shard_dirs, uint32_t vocab_size, unsigned token_bytes, unsigned threads);

  uint64_t num_tokens() const;
  const std::vector<Shard>& shards() const { return shards_; }
  unsigned threads() const { return threads_; }
  void set_threads(unsigned t);

  void count(const PhraseBatch& phrases, std::span<int64_t> out) const;
  void first_position(const PhraseBatch& phrases, std::span<int64_t> out) const;
  // out is row-major [phrases, boundaries.size() - 1]; boundaries are stream offsets, non-negative
  // and strictly increasing (std::invalid_argument otherwise).
  void window_counts(const PhraseBatch& phrases, std::span<const int64_t> boundaries, std::span<int64_t> out) const;
  std::vector<uint64_t> positions(std::span<const uint32_t> phrase, uint64_t limit) const;
  void copy_stream(uint64_t t0, uint64_t t1, uint32_t* out) const;

 private:
  void validate(const PhraseBatch& phrases) const;
  struct Plans {
    std::vector<const Shard*> shards;  // shards overlapping the windows
    std::vector<WindowPlan> plans;
  };
  // Window plans depend only on the boundaries: cached, so a one-phrase call does not redo them.
  std::shared_ptr<const Plans> plans_for(std::span<const uint64_t> boundaries) const;
  std::vector<Shard> shards_;
  mutable std::mutex plans_mu_;
  mutable std::map<std::vector<uint64_t>, std::shared_ptr<const Plans>> plans_;
  uint32_t vocab_;
  unsigned threads_;
};

}  // namespace exposure
