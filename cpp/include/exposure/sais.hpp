// Suffix array construction by induced sorting (SA-IS; Nong, Zhang & Chan 2009).
//
// Linear time and worst case, whatever the text: a stream of one token repeated 10^7 times or a
// document repeated 100 times costs the same per token as ordinary text, unlike comparison sorts
// whose cost grows with the length of repeats. The text has an implicit end sentinel smaller than
// every symbol, so a suffix that is a prefix of another sorts first.
//
// Working memory beyond the text and the output: a bit per position (types), a bucket array of
// the alphabet's size (plus its counts where they fit), and nothing else: the recursion lives
// inside the output array. The induction scans never read the type bits (a predecessor's type
// follows from the two symbols and, for equal symbols, from where the scan stands in the bucket),
// so their random accesses are the text and the bucket pointers only.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include "exposure/io.hpp"

namespace exposure {

namespace detail {

// In huge pages: the compaction after the first induction reads it at random.
class TypeBits {  // S-type = 1, L-type = 0
 public:
  explicit TypeBits(size_t n) : w_((n + 64) / 64) {}
  bool s(size_t i) const { return (w_[i >> 6] >> (i & 63)) & 1; }
  void set_s(size_t i) { w_[i >> 6] |= uint64_t(1) << (i & 63); }
  void prefetch(size_t i) const { __builtin_prefetch(&w_[i >> 6]); }

 private:
  HugeArray<uint64_t> w_;  // zero-filled: every position starts L-type
};

template <class Char, class Idx>
class Sais {
 public:
  static constexpr Idx kEmpty = std::numeric_limits<Idx>::max();

  // `work`, when it has room for `sigma` entries, holds the bucket array (the recursion passes
  // the unused middle of the caller's suffix array); otherwise the buckets are allocated.
  Sais(const Char* text, Idx* sa, Idx n, Idx sigma, Idx* work = nullptr, size_t work_len = 0)
      : T_(text), SA_(sa), n_(n), sigma_(sigma), t_(n) {
    const size_t k = sigma;
    if (work != nullptr && work_len >= 2 * k) {
      bkt_ = work;
      cnt_ = work + k;
    } else if (work != nullptr && work_len >= k) {
      bkt_ = work;
    } else {
      owned_.resize(k);
      bkt_ = owned_.data();
    }
    if (cnt_ == nullptr && k <= kOwnedCounts) {
      owned_counts_.resize(k);
      cnt_ = owned_counts_.data();
    }
  }

  void run() {
    if (n_ == 0) return;
    if (n_ == 1) {
      SA_[0] = 0;
      return;
    }
    classify();
    check_alphabet();
    // Stage 1: sort LMS substrings by inducing from LMS positions placed in arbitrary order.
    std::fill(SA_, SA_ + n_, kEmpty);
    bucket_ends();
    for (Idx i = n_ - 1; i >= 1; --i) {
      if (i > kMid) __builtin_prefetch(&bkt_[T_[i - kMid]], 1);
      if (i > kNear) __builtin_prefetch(&SA_[bkt_[T_[i - kNear]] - 1], 1);
      if (is_lms(i)) SA_[--bkt_[T_[i]]] = i;
    }
    induce_l();
    induce_s();
    // Compact the sorted LMS positions into SA[0, n1).
    Idx n1 = 0;
    for (Idx i = 0; i < n_; ++i) {
      if (i + kNear < n_ && SA_[i + kNear] != kEmpty) t_.prefetch(SA_[i + kNear]);
      if (is_lms(SA_[i])) SA_[n1++] = SA_[i];
    }
    // Lengths of the LMS substrings (from an LMS position to the next one, both included) go to
    // SA[n1 + p/2], distinct slots since LMS positions are >= 2 apart. The last one runs into the
    // sentinel and is unique: length 0 marks it. Equal lengths and symbols imply equal types
    // (types follow from the symbols right to left, and both ends are S-type), so naming compares
    // symbols only and never touches the type bits at random.
    std::fill(SA_ + n1, SA_ + n_, kEmpty);
    for (Idx i = n_ - 1, next = 0; i >= 1; --i) {
      if (is_lms(i)) {
        SA_[n1 + i / 2] = next == 0 ? 0 : next - i + 1;
        next = i;
      }
    }
    Idx names = 0, prev = 0, prev_len = 0;
    for (Idx i = 0; i < n1; ++i) {
      if (i + kFar < n1) __builtin_prefetch(&SA_[n1 + SA_[i + kFar] / 2], 1);
      if (i + kNear < n1) __builtin_prefetch(&T_[SA_[i + kNear]]);
      const Idx p = SA_[i];
      Idx& slot = SA_[n1 + p / 2];
      const Idx len = slot;
      if (len == 0 || len != prev_len || !same_symbols(p, prev, len)) ++names;
      prev = p;
      prev_len = len;
      slot = names - 1;
    }
    Idx j = n_;
    for (Idx i = n_; i > n1; --i)
      if (SA_[i - 1] != kEmpty) SA_[--j] = SA_[i - 1];
    // Stage 2: sort the reduced string s1 = SA[n - n1, n) into SA[0, n1).
    Idx* s1 = SA_ + n_ - n1;
    if (names < n1) {
      // The recursion's buckets go to the unused middle of SA when it is large enough.
      Sais<Idx, Idx>(s1, SA_, n1, names, SA_ + n1, size_t(n_ - 2 * n1)).run();
    } else {
      for (Idx i = 0; i < n1; ++i) SA_[s1[i]] = i;
    }
    // Stage 3: map reduced positions back to LMS positions and induce the full order.
    j = 0;
    for (Idx i = 1; i < n_; ++i)
      if (is_lms(i)) s1[j++] = i;
    for (Idx i = 0; i < n1; ++i) {
      if (i + kNear < n1) __builtin_prefetch(&s1[SA_[i + kNear]]);
      SA_[i] = s1[SA_[i]];
    }
    std::fill(SA_ + n1, SA_ + n_, kEmpty);
    bucket_ends();
    for (Idx i = n1; i > 0; --i) {
      if (i > kFar) __builtin_prefetch(&T_[SA_[i - 1 - kFar]]);
      if (i > kMid) __builtin_prefetch(&bkt_[T_[SA_[i - 1 - kMid]]], 1);
      if (i > kNear) __builtin_prefetch(&SA_[bkt_[T_[SA_[i - 1 - kNear]]] - 1], 1);
      const Idx p = SA_[i - 1];
      SA_[i - 1] = kEmpty;
      SA_[--bkt_[T_[p]]] = p;
    }
    induce_l();
    induce_s();
  }

 private:
  // LMS substrings are short (a few symbols): an inline loop beats a call to memcmp.
  bool same_symbols(Idx p, Idx q, Idx len) const {
    for (Idx k = 0; k < len; ++k)
      if (T_[p + k] != T_[q + k]) return false;
    return true;
  }

  bool is_lms(Idx i) const { return i > 0 && i != kEmpty && t_.s(i) && !t_.s(i - 1); }

  void classify() {
    // Position n-1 is L-type: the implicit sentinel after it is smaller.
    for (Idx i = n_ - 1; i > 0; --i) {
      const Idx k = i - 1;
      if (T_[k] < T_[k + 1] || (T_[k] == T_[k + 1] && t_.s(k + 1))) t_.set_s(k);
    }
  }

  void check_alphabet() const {
    for (Idx i = 0; i < n_; ++i)
      if (static_cast<Idx>(T_[i]) >= sigma_) throw std::invalid_argument("symbol outside the alphabet");
  }

  // Bucket counts are recomputed from the text each time (a sequential pass) rather than kept:
  // that halves the memory of the recursion, whose alphabet can be a third of the text.
  void count() {
    if (counted_) {
      std::copy(cnt_, cnt_ + sigma_, bkt_);
      return;
    }
    std::fill(bkt_, bkt_ + sigma_, Idx(0));
    for (Idx i = 0; i < n_; ++i) {
      if (i + kMid < n_) __builtin_prefetch(&bkt_[T_[i + kMid]], 1);
      ++bkt_[T_[i]];
    }
    if (cnt_ != nullptr) {
      std::copy(bkt_, bkt_ + sigma_, cnt_);
      counted_ = true;
    }
  }

  void bucket_starts() {
    count();
    Idx sum = 0;
    for (Idx c = 0; c < sigma_; ++c) {
      const Idx k = bkt_[c];
      bkt_[c] = sum;
      sum += k;
    }
  }

  void bucket_ends() {
    count();
    Idx sum = 0;
    for (Idx c = 0; c < sigma_; ++c) {
      sum += bkt_[c];
      bkt_[c] = sum;
    }
  }

  // Induction scans SA in order and writes to bucket heads/tails at random: the cost is cache
  // misses. Three-stage software prefetch: far ahead, the text symbol of the entry's predecessor;
  // then that symbol's bucket pointer (an alphabet of millions in the recursion does not fit in
  // cache); nearest, the SA slot that pointer currently designates.
  static constexpr Idx kFar = 96, kMid = 64, kNear = 32;

  void induce_l() {
    bucket_starts();
    SA_[bkt_[T_[n_ - 1]]++] = n_ - 1;  // induced by the sentinel
    for (Idx i = 0; i < n_; ++i) {
      if (i + kFar < n_) {
        const Idx q = SA_[i + kFar];
        if (q != kEmpty && q > 0) __builtin_prefetch(&T_[q - 1]);
      }
      if (i + kMid < n_) {
        const Idx q = SA_[i + kMid];
        if (q != kEmpty && q > 0) __builtin_prefetch(&bkt_[T_[q - 1]], 1);
      }
      if (i + kNear < n_) {
        const Idx q = SA_[i + kNear];
        if (q != kEmpty && q > 0) __builtin_prefetch(&SA_[bkt_[T_[q - 1]]], 1);
      }
      const Idx j = SA_[i];
      // Scanned entries are L-type or LMS, so j-1 is L-type exactly when T[j-1] >= T[j].
      if (j != kEmpty && j > 0 && T_[j - 1] >= T_[j]) SA_[bkt_[T_[j - 1]]++] = j - 1;
    }
  }

  void induce_s() {
    bucket_ends();
    for (Idx i = n_; i > 0; --i) {
      if (i > kFar) {
        const Idx q = SA_[i - 1 - kFar];
        if (q != kEmpty && q > 0) __builtin_prefetch(&T_[q - 1]);
      }
      if (i > kMid) {
        const Idx q = SA_[i - 1 - kMid];
        if (q != kEmpty && q > 0) __builtin_prefetch(&bkt_[T_[q - 1]], 1);
      }
      if (i > kNear) {
        const Idx q = SA_[i - 1 - kNear];
        if (q != kEmpty && q > 0) __builtin_prefetch(&SA_[bkt_[T_[q - 1]] - 1], 1);
      }
      const Idx j = SA_[i - 1];
      if (j != kEmpty && j > 0) {
        // j-1 is S-type when T[j-1] < T[j], or when they are equal and j is S-type, i.e. j sits in
        // the S part of its bucket, which the scan has filled down to bkt_[T[j]].
        const Char c = T_[j - 1], d = T_[j];
        if (c < d || (c == d && Idx(i - 1) >= bkt_[c])) SA_[--bkt_[c]] = j - 1;
      }
    }
  }

  const Char* T_;
  Idx* SA_;
  Idx n_;
  Idx sigma_;
  TypeBits t_;
  std::vector<Idx> owned_, owned_counts_;
  Idx* bkt_ = nullptr;
  Idx* cnt_ = nullptr;  // symbol counts, kept when there is room (else recounted from the text)
  bool counted_ = false;
  static constexpr size_t kOwnedCounts = size_t(1) << 20;
};

}  // namespace detail

// Suffix array of text[0, n) over symbols in [0, sigma). `sa` must hold n entries.
// Idx must be able to hold n (and n < max(Idx)).
template <class Char, class Idx>
void suffix_array(const Char* text, Idx* sa, size_t n, size_t sigma) {
  if (n >= std::numeric_limits<Idx>::max()) throw std::length_error("text too long for this index type");
  if (sigma == 0 || sigma > size_t(std::numeric_limits<Idx>::max()))
    throw std::length_error("alphabet too large for this index type");
  detail::Sais<Char, Idx>(text, sa, static_cast<Idx>(n), static_cast<Idx>(sigma)).run();
}

}  // namespace exposure
