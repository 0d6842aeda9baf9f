// Row-wise logsumexp of a language model's output projection, without its logits.
//
// Scoring a sentence needs, for each distinct prefix, logsumexp over the vocabulary of
// W h + b (the normalizer of the next-token distribution). For a small model on a CPU this is
// most of the work: rows x vocabulary x dim multiply-adds, then an exponential per logit. Here
// each 6-row x 16-column tile of logits is computed in registers and its exponentials summed
// at once, so no logit is ever written to memory, with W packed once per head.
//
// Each row is shifted by the maximum of its first 128 logits before exponentiation; a row whose
// sum is not finite (a later logit more than ~88 above that shift, or a NaN) is computed again
// in double precision with a running maximum, so the result is what logsumexp gives either way.
#pragma once

#include <cstddef>
#include <vector>

namespace exposure {

// The instruction sets the kernel has a version for.
enum class Isa { avx2, avx512 };

class OutputHead {
 public:
  // weight: [vocab, dim] row-major; bias: [vocab] or nullptr.
  OutputHead(const float* weight, size_t vocab, size_t dim, const float* bias);

  // out[i] = logsumexp_v(weight[v] . hidden[i] + bias[v]) for `rows` rows of `dim` floats,
  // float32, on up to `threads` threads. Throws std::runtime_error where !supported().
  void logsumexp(const float* hidden, size_t rows, float* out, unsigned threads) const;

  size_t vocab() const { return vocab_; }
  size_t dim() const { return dim_; }

  // The version logsumexp runs: the widest this CPU has (AVX-512 where present, else AVX2), or the one set
  // (tests run both; set_isa throws std::runtime_error for one the CPU lacks).
  Isa isa() const { return isa_; }
  void set_isa(Isa isa);

  // The kernel needs x86-64 with AVX2 and FMA (checked at run time); supported(isa): that version.
  static bool supported();
  static bool supported(Isa isa);

 private:
  void block(const float* hidden, size_t rows, float* out) const;
  void block512(const float* hidden, size_t rows, float* out) const;
  float exact(const float* h) const;
  float weight(size_t v, size_t k) const;

  size_t vocab_, dim_, panels_;
  std::vector<float> w_;  // [panel][dim][16]: 16 vocabulary columns per panel, zero-padded, to an even panel count
  std::vector<float> b_;  // [panel * 16]; padding columns -inf
  Isa isa_;
};

}  // namespace exposure
