// Read-only views of the per-shard structures: packed suffix array, range-minimum over it, and the
// wavelet matrix over window ids (exposure counts per checkpoint window).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "exposure/io.hpp"

namespace exposure {

// Packed little-endian suffix array, `width` bytes per entry.
class PackedArray {
 public:
  PackedArray() = default;
  PackedArray(const uint8_t* base, uint64_t size, unsigned width) : base_(base), size_(size), width_(width) {}
  uint64_t operator[](uint64_t i) const {
    if (width_ == 4) {
      uint32_t v;
      std::memcpy(&v, base_ + 4 * i, 4);
      return v;
    }
    if (width_ == 5) {
      uint32_t lo;
      std::memcpy(&lo, base_ + 5 * i, 4);
      return lo | (uint64_t(base_[5 * i + 4]) << 32);
    }
    return load_packed(base_, i, width_);
  }
  void prefetch(uint64_t i) const { __builtin_prefetch(base_ + i * width_); }
  uint64_t size() const { return size_; }
  unsigned width() const { return width_; }
  const uint8_t* bytes() const { return base_; }

 private:
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  unsigned width_ = 4;
};

// Range minimum over a PackedArray: minima of fixed blocks plus a sparse table over the blocks.
// A query scans at most two partial blocks and reads two sparse-table cells, so its cost does not
// depend on how many elements the range holds.
class RangeMin {
 public:
  static constexpr uint32_t kBlock = 512;
  RangeMin() = default;
  RangeMin(const IndexFile& file, PackedArray values);
  // min of values[l, r), r > l
  uint64_t min(uint64_t l, uint64_t r) const;

  // Writes the structure for `values` to `path`; returns (checksum, bytes).
  static std::pair<uint64_t, uint64_t> write(const fs::path& path, PackedArray values);

 private:
  uint64_t scan(uint64_t l, uint64_t r) const;
  PackedArray values_;
  std::vector<PackedArray> levels_;
};

// Wavelet matrix over small symbols (window ids), with cache-line rank directories:
// each 64-byte line holds a cumulative count and 448 bits, so a rank costs one cache miss.
class WaveletMatrix {
 public:
  struct Line {
    uint64_t cum;
    uint64_t w[7];
  };
  static constexpr uint64_t kBits = 448;

  WaveletMatrix() = default;
  explicit WaveletMatrix(const IndexFile& file);

  // Adds to hist[s] the number of symbols s in [l, r). hist has 2^levels entries.
  void histogram(uint64_t l, uint64_t r, std::span<uint64_t> hist) const;
  unsigned levels() const { return levels_; }
  uint64_t size() const { return n_; }
  std::span<const uint64_t> boundaries() const { return bounds_; }

  // Builds from `symbols` (consumed as scratch) and writes to `path` with the stream-offset
  // boundaries that define the symbols. Returns (checksum, bytes).
  template <class Sym>
  static std::pair<uint64_t, uint64_t> write(const fs::path& path, std::vector<Sym>& symbols, unsigned levels,
                                             std::span<const uint64_t> boundaries);

 private:
  uint64_t rank1(unsigned level, uint64_t i) const {
    const Line& ln = lines_[level][i / kBits];
    const uint64_t off = i % kBits;
    const unsigned k = unsigned(off / 64), r = unsigned(off % 64);
    uint64_t c = ln.cum;
    for (unsigned j = 0; j < k; ++j) c += __builtin_popcountll(ln.w[j]);
    if (r) c += __builtin_popcountll(ln.w[k] & ((uint64_t(1) << r) - 1));
    return c;
  }
  unsigned levels_ = 0;
  uint64_t n_ = 0;
  std::span<const uint64_t> bounds_;
  std::vector<uint64_t> zeros_;
  std::vector<const Line*> lines_;
};

}  // namespace exposure
