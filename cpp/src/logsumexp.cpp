#include "exposure/logsumexp.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "exposure/index.hpp"  // parallel_for

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define EXPOSURE_AVX2_KERNEL 1
#endif

namespace exposure {

namespace {

constexpr size_t kCols = 16;       // vocabulary columns per panel (two 8-float registers)
constexpr size_t kRows = 6;        // rows per register tile: 12 accumulators
constexpr size_t kRows512 = 12;    // AVX-512: rows per tile of two panels, 24 accumulators (of 32 registers)
constexpr size_t kShiftPanels = 8;  // the shift: each row's maximum over the first 128 logits
constexpr size_t kBlockPanels = 64;  // panels per column block (64 x dim x 16 floats: L2-sized for dim 64)
constexpr size_t kBlockRows = 96;   // rows per thread task, a multiple of kRows and kRows512
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Panels stored: an even number, since the AVX-512 tile takes two at a time (a padding panel's columns
// have bias -inf, so they add nothing).
constexpr size_t stored_panels(size_t panels) { return (panels + 1) / 2 * 2; }

}  // namespace

OutputHead::OutputHead(const float* weight, size_t vocab, size_t dim, const float* bias)
    : vocab_(vocab), dim_(dim), panels_((vocab + kCols - 1) / kCols), w_(stored_panels(panels_) * dim * kCols, 0.f),
      b_(stored_panels(panels_) * kCols, kNegInf), isa_(supported(Isa::avx512) ? Isa::avx512 : Isa::avx2) {
  if (vocab == 0 || dim == 0) throw std::invalid_argument("output head with an empty vocabulary or dimension");
  for (size_t v = 0; v < vocab; ++v) {
    const size_t p = v / kCols, c = v % kCols;
    for (size_t k = 0; k < dim; ++k) w_[(p * dim + k) * kCols + c] = weight[v * dim + k];
    b_[v] = bias != nullptr ? bias[v] : 0.f;
  }
}

float OutputHead::weight(size_t v, size_t k) const { return w_[((v / kCols) * dim_ + k) * kCols + v % kCols]; }

float OutputHead::exact(const float* h) const {
  double peak = -std::numeric_limits<double>::infinity(), sum = 0;
  for (size_t v = 0; v < vocab_; ++v) {
    double x = b_[v];
    for (size_t k = 0; k < dim_; ++k) x += double(h[k]) * weight(v, k);
    if (std::isnan(x)) return std::numeric_limits<float>::quiet_NaN();
    if (x == -std::numeric_limits<double>::infinity()) continue;  // adds nothing (and -inf - -inf is NaN)
    if (x > peak) {
      sum = sum * std::exp(peak - x) + 1;
      peak = x;
    } else {
      sum += x == peak ? 1.0 : std::exp(x - peak);  // x == peak: +inf twice gives inf, not NaN
    }
  }
  return float(peak + std::log(sum));  // no finite logit: -inf
}

#if defined(EXPOSURE_AVX2_KERNEL)

namespace {

// exp(x) for x <= 88.3; larger x give inf (from 88.4 on, a little early: such a row goes to the
// exact path), NaN stays NaN, x below -87.3 gives exp(-87.3) ~ 1e-38 (negligible: a row's sum is
// >= 1, its shift being one of its logits). 2^n exp(r) with n = round(x / ln2), r = x - n ln2 in
// two steps (Cody-Waite), |r| <= ln2 / 2, and a degree-5 polynomial fitted to exp on that range
// (relative error 2.2e-7 in float32). The constants are shared by exp8 and exp16.
constexpr float kExpLow = -87.3f, kExpHigh = 89.f;  // n <= 128: 2^128 is the bit pattern of inf
constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kExpPoly[6] = {0.008291716687381268f, 0.04191502928733826f, 0.1666766256093979f,
                               0.49998900294303894f,  0.9999996423721313f,  1.0000001192092896f};

__attribute__((target("avx2,fma"))) inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(kExpLow), x);  // max/min return their second operand when either is NaN
  x = _mm256_min_ps(_mm256_set1_ps(kExpHigh), x);
  const __m256 n =
      _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kExpPoly[0]);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpPoly[1]));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpPoly[2]));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpPoly[3]));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpPoly[4]));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpPoly[5]));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// Logits (without bias) of kRows = 6 rows of h against one panel: acc[r][0..1] = 16 columns. The
// twelve sums are named locals so that they stay in registers (with both weight vectors and the
// broadcast: 15 of the 16), in a function of its own: inlined into the exponential loop, GCC
// spills some (2x slower).
__attribute__((target("avx2,fma"), noinline)) void tile(const float* h, size_t dim, const float* w,
                                                     __m256 (&acc)[kRows][2]) {
  static_assert(kRows == 6);
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00;
  __m256 a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
  for (size_t k = 0; k < dim; ++k) {
    const __m256 w0 = _mm256_loadu_ps(w + k * kCols), w1 = _mm256_loadu_ps(w + k * kCols + 8);
    __m256 x = _mm256_broadcast_ss(h + k);
    a00 = _mm256_fmadd_ps(x, w0, a00);
    a01 = _mm256_fmadd_ps(x, w1, a01);
    x = _mm256_broadcast_ss(h + dim + k);
    a10 = _mm256_fmadd_ps(x, w0, a10);
    a11 = _mm256_fmadd_ps(x, w1, a11);
    x = _mm256_broadcast_ss(h + 2 * dim + k);
    a20 = _mm256_fmadd_ps(x, w0, a20);
    a21 = _mm256_fmadd_ps(x, w1, a21);
    x = _mm256_broadcast_ss(h + 3 * dim + k);
    a30 = _mm256_fmadd_ps(x, w0, a30);
    a31 = _mm256_fmadd_ps(x, w1, a31);
    x = _mm256_broadcast_ss(h + 4 * dim + k);
    a40 = _mm256_fmadd_ps(x, w0, a40);
    a41 = _mm256_fmadd_ps(x, w1, a41);
    x = _mm256_broadcast_ss(h + 5 * dim + k);
    a50 = _mm256_fmadd_ps(x, w0, a50);
    a51 = _mm256_fmadd_ps(x, w1, a51);
  }
  acc[0][0] = a00, acc[0][1] = a01, acc[1][0] = a10, acc[1][1] = a11, acc[2][0] = a20, acc[2][1] = a21;
  acc[3][0] = a30, acc[3][1] = a31, acc[4][0] = a40, acc[4][1] = a41, acc[5][0] = a50, acc[5][1] = a51;
}

__attribute__((target("avx2,fma"))) float hmax(__m256 v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  return *std::max_element(t, t + 8);
}

}  // namespace

// `rows` <= kBlockRows rows of `hidden`, padded with zero rows to a multiple of kRows. Column
// blocks outermost, so a block of W stays in cache while every row tile passes over it.
__attribute__((target("avx2,fma"))) void OutputHead::block(const float* hidden, size_t rows, float* out) const {
  // Exponentials are summed per lane in float32 within a column block (at most 128 per lane), then
  // into a double per row.
  float shift[kBlockRows];
  double sums[kBlockRows];
  const size_t tiles = (rows + kRows - 1) / kRows;
  for (size_t c0 = 0; c0 < panels_; c0 += kBlockPanels) {
    const size_t c1 = std::min(panels_, c0 + kBlockPanels);
    for (size_t t = 0; t < tiles; ++t) {
      const float* h = hidden + t * kRows * dim_;
      __m256 acc[kRows][2], sum[kRows], sh[kRows];
      if (c0 == 0) {
        // The shift: the maximum of the first panels' logits (computed again below with the rest,
        // which costs kShiftPanels of the ~3,000 panels of a 50k vocabulary).
        __m256 peak[kRows];
        for (auto& m : peak) m = _mm256_set1_ps(kNegInf);
        for (size_t q = 0; q < std::min(kShiftPanels, panels_); ++q) {
          tile(h, dim_, w_.data() + q * dim_ * kCols, acc);
          const __m256 b0 = _mm256_loadu_ps(b_.data() + q * kCols), b1 = _mm256_loadu_ps(b_.data() + q * kCols + 8);
          for (size_t r = 0; r < kRows; ++r)
            peak[r] = _mm256_max_ps(peak[r], _mm256_max_ps(_mm256_add_ps(acc[r][0], b0), _mm256_add_ps(acc[r][1], b1)));
        }
        for (size_t r = 0; r < kRows; ++r) shift[t * kRows + r] = hmax(peak[r]);
      }
      for (size_t r = 0; r < kRows; ++r) {
        sh[r] = _mm256_set1_ps(shift[t * kRows + r]);
        sum[r] = _mm256_setzero_ps();
      }
      for (size_t p = c0; p < c1; ++p) {
        tile(h, dim_, w_.data() + p * dim_ * kCols, acc);
        const __m256 b0 = _mm256_loadu_ps(b_.data() + p * kCols), b1 = _mm256_loadu_ps(b_.data() + p * kCols + 8);
        for (size_t r = 0; r < kRows; ++r) {
          sum[r] = _mm256_add_ps(sum[r], exp8(_mm256_sub_ps(_mm256_add_ps(acc[r][0], b0), sh[r])));
          sum[r] = _mm256_add_ps(sum[r], exp8(_mm256_sub_ps(_mm256_add_ps(acc[r][1], b1), sh[r])));
        }
      }
      for (size_t r = 0; r < kRows; ++r) {
        alignas(32) float lanes[8];
        _mm256_store_ps(lanes, sum[r]);
        double& total = sums[t * kRows + r];
        if (c0 == 0) total = 0;
        for (float x : lanes) total += x;
      }
    }
  }
  for (size_t i = 0; i < rows; ++i) out[i] = float(shift[i] + std::log(sums[i]));
}

namespace {

// exp8's AVX-512 twin (the same range reduction and polynomial), 2^n applied with scalef.
__attribute__((target("avx512f"))) inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(kExpLow), x);
  x = _mm512_min_ps(_mm512_set1_ps(kExpHigh), x);
  const __m512 n =
      _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kExpPoly[0]);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpPoly[1]));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpPoly[2]));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpPoly[3]));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpPoly[4]));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpPoly[5]));
  return _mm512_scalef_ps(p, n);
}

// Logits (without bias) of kRows512 = 12 rows of h against two consecutive panels (w0, w1):
// acc[r][0..1]. As in `tile`, the 24 sums are named locals in a function of their own.
__attribute__((target("avx512f"), noinline)) void tile512(const float* h, size_t dim, const float* w0,
                                                          const float* w1, __m512 (&acc)[kRows512][2]) {
  static_assert(kRows512 == 12);
  __m512 a00 = _mm512_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;
  __m512 a40 = a00, a41 = a00, a50 = a00, a51 = a00, a60 = a00, a61 = a00, a70 = a00, a71 = a00;
  __m512 a80 = a00, a81 = a00, a90 = a00, a91 = a00, aa0 = a00, aa1 = a00, ab0 = a00, ab1 = a00;
  for (size_t k = 0; k < dim; ++k) {
    const __m512 v0 = _mm512_loadu_ps(w0 + k * kCols), v1 = _mm512_loadu_ps(w1 + k * kCols);
#define EXPOSURE_ROW(r, lo, hi)                           \
  {                                                       \
    const __m512 x = _mm512_set1_ps(h[(r) * dim + k]);    \
    lo = _mm512_fmadd_ps(x, v0, lo);                      \
    hi = _mm512_fmadd_ps(x, v1, hi);                      \
  }
    EXPOSURE_ROW(0, a00, a01) EXPOSURE_ROW(1, a10, a11) EXPOSURE_ROW(2, a20, a21) EXPOSURE_ROW(3, a30, a31)
    EXPOSURE_ROW(4, a40, a41) EXPOSURE_ROW(5, a50, a51) EXPOSURE_ROW(6, a60, a61) EXPOSURE_ROW(7, a70, a71)
    EXPOSURE_ROW(8, a80, a81) EXPOSURE_ROW(9, a90, a91) EXPOSURE_ROW(10, aa0, aa1) EXPOSURE_ROW(11, ab0, ab1)
#undef EXPOSURE_ROW
  }
  acc[0][0] = a00, acc[0][1] = a01, acc[1][0] = a10, acc[1][1] = a11, acc[2][0] = a20, acc[2][1] = a21;
  acc[3][0] = a30, acc[3][1] = a31, acc[4][0] = a40, acc[4][1] = a41, acc[5][0] = a50, acc[5][1] = a51;
  acc[6][0] = a60, acc[6][1] = a61, acc[7][0] = a70, acc[7][1] = a71, acc[8][0] = a80, acc[8][1] = a81;
  acc[9][0] = a90, acc[9][1] = a91, acc[10][0] = aa0, acc[10][1] = aa1, acc[11][0] = ab0, acc[11][1] = ab1;
}

}  // namespace

// `block` with 12-row tiles of two panels: `rows` <= kBlockRows rows, padded to a multiple of kRows512.
__attribute__((target("avx512f"))) void OutputHead::block512(const float* hidden, size_t rows, float* out) const {
  float shift[kBlockRows];
  double sums[kBlockRows];
  const size_t tiles = (rows + kRows512 - 1) / kRows512, panels = stored_panels(panels_);
  for (size_t c0 = 0; c0 < panels; c0 += kBlockPanels) {
    const size_t c1 = std::min(panels, c0 + kBlockPanels);
    for (size_t t = 0; t < tiles; ++t) {
      const float* h = hidden + t * kRows512 * dim_;
      __m512 acc[kRows512][2], sum[kRows512], sh[kRows512];
      if (c0 == 0) {
        __m512 peak[kRows512];
        for (auto& m : peak) m = _mm512_set1_ps(kNegInf);
        for (size_t q = 0; q < std::min(kShiftPanels, panels); q += 2) {
          tile512(h, dim_, w_.data() + q * dim_ * kCols, w_.data() + (q + 1) * dim_ * kCols, acc);
          const __m512 b0 = _mm512_loadu_ps(b_.data() + q * kCols), b1 = _mm512_loadu_ps(b_.data() + (q + 1) * kCols);
          for (size_t r = 0; r < kRows512; ++r)
            peak[r] = _mm512_max_ps(peak[r], _mm512_max_ps(_mm512_add_ps(acc[r][0], b0), _mm512_add_ps(acc[r][1], b1)));
        }
        for (size_t r = 0; r < kRows512; ++r) shift[t * kRows512 + r] = _mm512_reduce_max_ps(peak[r]);
      }
      for (size_t r = 0; r < kRows512; ++r) {
        sh[r] = _mm512_set1_ps(shift[t * kRows512 + r]);
        sum[r] = _mm512_setzero_ps();
      }
      for (size_t p = c0; p < c1; p += 2) {
        tile512(h, dim_, w_.data() + p * dim_ * kCols, w_.data() + (p + 1) * dim_ * kCols, acc);
        const __m512 b0 = _mm512_loadu_ps(b_.data() + p * kCols), b1 = _mm512_loadu_ps(b_.data() + (p + 1) * kCols);
        for (size_t r = 0; r < kRows512; ++r) {
          sum[r] = _mm512_add_ps(sum[r], exp16(_mm512_sub_ps(_mm512_add_ps(acc[r][0], b0), sh[r])));
          sum[r] = _mm512_add_ps(sum[r], exp16(_mm512_sub_ps(_mm512_add_ps(acc[r][1], b1), sh[r])));
        }
      }
      for (size_t r = 0; r < kRows512; ++r) {
        alignas(64) float lanes[16];
        _mm512_store_ps(lanes, sum[r]);
        double& total = sums[t * kRows512 + r];
        if (c0 == 0) total = 0;
        for (float x : lanes) total += x;
      }
    }
  }
  for (size_t i = 0; i < rows; ++i) out[i] = float(shift[i] + std::log(sums[i]));
}

bool OutputHead::supported() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

bool OutputHead::supported(Isa isa) {
  return supported() && (isa == Isa::avx2 || __builtin_cpu_supports("avx512f"));
}

#else

void OutputHead::block(const float*, size_t, float*) const {}
void OutputHead::block512(const float*, size_t, float*) const {}
bool OutputHead::supported() { return false; }
bool OutputHead::supported(Isa) { return false; }

#endif

void OutputHead::set_isa(Isa isa) {
  if (!supported(isa)) throw std::runtime_error("this CPU cannot run that version of the logsumexp kernel");
  isa_ = isa;
}

void OutputHead::logsumexp(const float* hidden, size_t rows, float* out, unsigned threads) const {
  if (!supported()) throw std::runtime_error("the logsumexp kernel needs an x86-64 CPU with AVX2 and FMA");
  // Tasks of up to kBlockRows rows (whole tiles), at least one per thread where there are rows
  // enough: a call with few rows (a batch with few new prefixes) still uses every thread.
  threads = std::max(1u, threads);
  const size_t per_thread = (rows + threads - 1) / threads;
  const size_t task_rows = std::clamp<size_t>((per_thread + kRows - 1) / kRows * kRows, kRows, kBlockRows);
  const size_t tasks = (rows + task_rows - 1) / task_rows;
  parallel_for(tasks, threads, [&](size_t a, size_t b) {
    std::vector<float> padded(kBlockRows * dim_);
    for (size_t task = a; task < b; ++task) {
      const size_t r0 = task * task_rows, n = std::min(task_rows, rows - r0);
      std::fill(std::copy(hidden + r0 * dim_, hidden + (r0 + n) * dim_, padded.begin()), padded.end(), 0.f);
      if (isa_ == Isa::avx512)
        block512(padded.data(), n, out + r0);
      else
        block(padded.data(), n, out + r0);
      for (size_t i = r0; i < r0 + n; ++i)
        if (!std::isfinite(out[i])) out[i] = exact(hidden + i * dim_);
    }
  }, 1);
}

}  // namespace exposure
