// A shard: a self-contained piece of the stream, in training order, with its own suffix array,
// range-minimum structure, first-token buckets and window structures.
//
// The shard's *text* is its tokens with a separator (the value vocab_size, larger than every id)
// after every item, so no match can cross an item boundary. Positions in the text ("text
// positions") are translated to stream offsets with the separator positions. A shard owns the
// stream range [stream_start, stream_end); its text may run on past that (an overlap tail, when a
// shard had to be cut inside an item) so that matches starting near the end are found, but only
// suffixes starting in the owned range are in its suffix array.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "exposure/io.hpp"
#include "exposure/structures.hpp"

namespace exposure {

struct FileRecord {
  std::string name;
  uint64_t bytes;
  uint64_t xxh64;
};

struct WindowSpec {
  std::string name;
  std::vector<uint64_t> boundaries;  // increasing stream offsets
};

struct ShardBuildResult {
  std::vector<FileRecord> files;
  uint64_t text_tokens = 0;    // tokens + separators (+ overlap tail)
  uint64_t suffixes = 0;       // suffix-array entries (owned, non-separator positions)
  unsigned sa_width = 0;       // bytes per suffix-array entry
  double seconds_sa = 0;       // suffix sorting
  double seconds_windows = 0;  // window structures
  double seconds_total = 0;
};

// How a window_counts query maps onto one shard: a stored wavelet matrix whose boundaries include
// all requested ones, or (none stored) a scan of the occurrences.
struct WindowPlan {
  const WaveletMatrix* wavelet = nullptr;
  std::vector<int32_t> column_of_symbol;  // wavelet symbol -> output column, -1 = outside
  std::vector<uint64_t> text_bounds;      // requested boundaries as text positions (scan path)
  size_t columns = 0;
};

// Every kStride-th suffix-array entry's next tokens after the first (the first is its bucket),
// packed so that integer order is their lexicographic order: each token as id + 1 in `bits`
// bits, 0 where the text ends. A search compares these first: one cache miss per step instead of
// a suffix-array entry and then its text, and only the last stride is searched in the text.
struct SuffixKeys {
  static constexpr uint32_t kStride = 64;
  unsigned tokens = 0, bits = 0;  // 3 x 17 bits for 16-bit ids, 1 x 33 bits for 32-bit ids
  explicit SuffixKeys(unsigned token_bytes) : tokens(token_bytes == 2 ? 3 : 1), bits(token_bytes == 2 ? 17 : 33) {}
  // Key of tokens [1, 1 + tokens) of the suffix at q in text[0, n).
  template <class T>
  uint64_t of(const T* text, uint64_t n, uint64_t q) const {
    uint64_t key = 0;
    for (unsigned k = 1; k <= tokens; ++k) key = (key << bits) | (q + k < n ? uint64_t(text[q + k]) + 1 : 0);
    return key;
  }
};

class Shard {
 public:
  Shard(const fs::path& dir, uint32_t vocab_size, unsigned token_bytes);

  uint64_t stream_start() const { return stream_start_; }
  uint64_t stream_end() const { return stream_end_; }
  uint64_t suffixes() const { return sa_.size(); }
  uint64_t text_tokens() const { return n_text_; }
  const fs::path& dir() const { return dir_; }

  // Suffix-array range [first, second) of the suffixes that start with `phrase`.
  std::pair<uint64_t, uint64_t> find(std::span<const uint32_t> phrase) const;
  // find() for many phrases at once: their binary searches advance in lock-step so the memory
  // accesses of one overlap the others' (software prefetch). Phrases must be valid.
  void find_many(std::span<const std::span<const uint32_t>> phrases, std::pair<uint64_t, uint64_t>* out) const;
  // Smallest stream offset in the SA range, or -1 if it is empty.
  int64_t first_position(std::pair<uint64_t, uint64_t> range) const;
  WindowPlan plan_windows(std::span<const uint64_t> boundaries) const;
  void window_counts(std::pair<uint64_t, uint64_t> range, const WindowPlan& plan, std::span<int64_t> out,
                     std::vector<uint64_t>& scratch) const;
  void positions(std::pair<uint64_t, uint64_t> range, std::vector<uint64_t>& out) const;

  uint64_t text_to_stream(uint64_t q) const;
  uint64_t stream_to_text(uint64_t t) const;  // t in [stream_start, stream_end]
  // Copies stream tokens [t0, t1) (within this shard's owned range) to out as uint32.
  void copy_stream(uint64_t t0, uint64_t t1, uint32_t* out) const;
  std::vector<std::string> window_names() const;

  // Builds the window structure `spec` for an existing shard (or one being built), reading its
  // suffix array from the file or, during a build, from `sa` (the same array, still in memory).
  FileRecord add_windows(const WindowSpec& spec) const;
  FileRecord add_windows(const WindowSpec& spec, const PackedArray& sa) const;

 private:
  template <class T>
  void find_many_impl(std::span<const std::span<const uint32_t>> phrases, std::pair<uint64_t, uint64_t>* out) const;
  uint32_t token(uint64_t q) const {
    if (tbytes_ == 2) {
      uint16_t v;
      std::memcpy(&v, text_ + 2 * q, 2);
      return v;
    }
    uint32_t v;
    std::memcpy(&v, text_ + 4 * q, 4);
    return v;
  }

  fs::path dir_;
  uint32_t vocab_ = 0;
  unsigned tbytes_ = 2;
  IndexFile tokens_file_, sa_file_, buckets_file_, rmq_file_, seps_file_, keys_file_;
  std::span<const uint64_t> keys_;  // empty for an index built before keys existed: plain search
  const uint8_t* text_ = nullptr;
  uint64_t n_text_ = 0, owned_end_ = 0, stream_start_ = 0, stream_end_ = 0;
  PackedArray sa_;
  std::span<const uint64_t> buckets_, seps_;
  RangeMin rmq_;
  std::map<std::string, std::pair<IndexFile, WaveletMatrix>> windows_;
};

// Builds a shard into `dir` (which must exist) from its text: tokens with the separator value
// `vocab_size` after every item. Suffixes starting at text positions >= owned_end are not indexed.
template <class T>
ShardBuildResult build_shard(std::span<const T> text, const fs::path& dir, uint64_t stream_start,
                             uint64_t owned_end, uint32_t vocab_size, const std::vector<WindowSpec>& windows);

}  // namespace exposure
