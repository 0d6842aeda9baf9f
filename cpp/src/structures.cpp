#include "exposure/structures.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <tmmintrin.h>
#define EXPOSURE_SSSE3_DISPATCH 1
// Rank directories count bits: with the popcnt instruction where the CPU has it (chosen at load
// time), a library call per word otherwise (x86-64's baseline has no popcnt).
#define EXPOSURE_POPCNT_CLONES __attribute__((target_clones("popcnt", "default")))
#else
#define EXPOSURE_POPCNT_CLONES
#endif

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>

namespace exposure {

// ---------------------------------------------------------------- RangeMin
// File payload: level 0 (block minima, nb entries), then level j (nb - 2^j + 1 entries) for
// j = 1 .. levels-1, every entry `width` bytes. Header: count = total entries, elem_bytes = width,
// aux32 = block size, aux64[0] = nb, aux64[1] = levels.

RangeMin::RangeMin(const IndexFile& file, PackedArray values) : values_(values) {
  const FileHeader& h = file.header();
  if (h.aux32 != kBlock || h.elem_bytes != values.width())
    throw IndexFileError("range-minimum file " + file.path().string() + " does not match its suffix array");
  const uint64_t nb = h.aux64[0], nlev = h.aux64[1];
  if (nb != (values.size() + kBlock - 1) / kBlock)
    throw IndexFileError("range-minimum file " + file.path().string() + " does not match its suffix array size");
  uint64_t off = 0;
  for (uint64_t j = 0; j < nlev; ++j) {
    const uint64_t len = nb - (uint64_t(1) << j) + 1;
    if ((off + len) > h.count) throw IndexFileError("range-minimum file " + file.path().string() + " is corrupt");
    levels_.emplace_back(file.payload() + off * values.width(), len, values.width());
    off += len;
  }
  if (off != h.count) throw IndexFileError("range-minimum file " + file.path().string() + " is corrupt");
}

uint64_t RangeMin::scan(uint64_t l, uint64_t r) const {
  if (l >= r) return UINT64_MAX;
  if (values_.width() == 4) {  // the common width: a loop the compiler vectorizes
    const uint8_t* p = values_.bytes() + 4 * l;
    uint32_t m = UINT32_MAX;
    for (uint64_t i = 0; i < r - l; ++i) {
      uint32_t v;
      std::memcpy(&v, p + 4 * i, 4);
      m = std::min(m, v);
    }
    return m;
  }
  uint64_t m = UINT64_MAX;
  for (uint64_t i = l; i < r; ++i) m = std::min(m, values_[i]);
  return m;
}

uint64_t RangeMin::min(uint64_t l, uint64_t r) const {
  const uint64_t bl = (l + kBlock - 1) / kBlock;  // first whole block
  const uint64_t br = r / kBlock;                 // one past the last whole block
  if (bl >= br) return scan(l, r);
  uint64_t m = std::min(scan(l, bl * kBlock), scan(br * kBlock, r));
  const unsigned j = std::bit_width(br - bl) - 1;
  m = std::min(m, levels_[j][bl]);
  m = std::min(m, levels_[j][br - (uint64_t(1) << j)]);
  return m;
}

std::pair<uint64_t, uint64_t> RangeMin::write(const fs::path& path, PackedArray values) {
  const uint64_t n = values.size();
  const uint64_t nb = (n + kBlock - 1) / kBlock;
  const unsigned nlev = nb == 0 ? 0 : std::bit_width(nb);
  uint64_t total = 0;
  for (unsigned j = 0; j < nlev; ++j) total += nb - (uint64_t(1) << j) + 1;
  FileHeader h = make_header(FileKind::Rmq, total, values.width(), kBlock);
  h.aux64[0] = nb;
  h.aux64[1] = nlev;
  FileWriter out(path, h);
  const unsigned w = values.width();
  std::vector<uint64_t> cur(nb);
  for (uint64_t b = 0; b < nb; ++b) {
    uint64_t m = UINT64_MAX;
    const uint64_t end = std::min(n, (b + 1) * kBlock);
    for (uint64_t i = b * kBlock; i < end; ++i) m = std::min(m, values[i]);
    cur[b] = m;
  }
  std::vector<uint8_t> packed;
  auto emit = [&](uint64_t len) {
    packed.resize(len * w);
    for (uint64_t i = 0; i < len; ++i) std::memcpy(&packed[i * w], &cur[i], w);
    out.write(packed.data(), packed.size());
  };
  for (unsigned j = 0; j < nlev; ++j) {
    const uint64_t len = nb - (uint64_t(1) << j) + 1;
    if (j > 0) {
      const uint64_t half = uint64_t(1) << (j - 1);
      for (uint64_t i = 0; i < len; ++i) cur[i] = std::min(cur[i], cur[i + half]);
    }
    emit(len);
  }
  return out.commit();
}

// ---------------------------------------------------------------- WaveletMatrix
// File payload: boundaries (K x u64, zero-padded to a multiple of 8), then per level lines_per_level 64-byte lines, then the
// number of zeros per level (levels x u64). Header: count = payload bytes, elem_bytes = 1, aux32 = levels,
// aux64[0] = n symbols, aux64[1] = K boundaries, aux64[2] = lines per level.

WaveletMatrix::WaveletMatrix(const IndexFile& file) {
  const FileHeader& h = file.header();
  levels_ = h.aux32;
  n_ = h.aux64[0];
  const uint64_t k = h.aux64[1], nlines = h.aux64[2];
  const uint64_t kpad = (k + 7) / 8 * 8;  // keeps the lines 64-byte aligned in the file
  const uint64_t need = 8 * kpad + 8 * uint64_t(levels_) + 64 * nlines * levels_;
  if (levels_ == 0 || levels_ > 16 || nlines != n_ / kBits + 1 || need != file.payload_size())
    throw IndexFileError("window file " + file.path().string() + " is corrupt");
  const uint8_t* p = file.payload();
  bounds_ = {reinterpret_cast<const uint64_t*>(p), k};
  p += 8 * kpad;
  for (unsigned l = 0; l < levels_; ++l) lines_.push_back(reinterpret_cast<const Line*>(p + 64 * nlines * l));
  p += 64 * nlines * levels_;
  zeros_.assign(reinterpret_cast<const uint64_t*>(p), reinterpret_cast<const uint64_t*>(p) + levels_);
}

EXPOSURE_POPCNT_CLONES void WaveletMatrix::histogram(uint64_t l, uint64_t r, std::span<uint64_t> hist) const {
  // Level by level, so that the rank lines of many nodes are in flight at once: a depth-first
  // walk waits for one cache miss after another, and the misses are the whole cost.
  struct Node {
    uint64_t a, b, v;
  };
  thread_local std::vector<Node> cur, next;
  cur.assign(1, Node{l, r, 0});
  constexpr size_t kAhead = 8;  // nodes whose lines are requested before the current one is used
  for (unsigned level = 0; level < levels_; ++level) {
    const Line* lines = lines_[level];
    const uint64_t z = zeros_[level];
    auto request = [&](const Node& nd) {
      __builtin_prefetch(&lines[nd.a / kBits]);
      __builtin_prefetch(&lines[nd.b / kBits]);
    };
    for (size_t i = 0; i < std::min(kAhead, cur.size()); ++i) request(cur[i]);
    next.clear();
    for (size_t i = 0; i < cur.size(); ++i) {
      if (i + kAhead < cur.size()) request(cur[i + kAhead]);
      const Node nd = cur[i];
      const uint64_t oa = rank1(level, nd.a), ob = rank1(level, nd.b);
      const uint64_t za = nd.a - oa, zb = nd.b - ob;
      if (zb > za) next.push_back(Node{za, zb, nd.v << 1});
      if (ob > oa) next.push_back(Node{z + oa, z + ob, (nd.v << 1) | 1});
    }
    std::swap(cur, next);
  }
  for (const Node& nd : cur) hist[nd.v] += nd.b - nd.a;
}

namespace {

// Bit `bit` of each of the `count` (<= 64) symbols at p, packed into a word (first symbol lowest).
template <class Sym>
uint64_t bit_word(const Sym* p, uint64_t count, unsigned bit) {
#if defined(__SSE2__)
  if constexpr (sizeof(Sym) == 1) {
    if (count == 64) {  // shift the bit to the top of each byte, then movemask gathers 16 at a time
      uint64_t w = 0;
      for (unsigned k = 0; k < 4; ++k) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * k));
        const __m128i top = _mm_sll_epi16(v, _mm_cvtsi32_si128(int(7 - bit)));
        w |= uint64_t(uint32_t(_mm_movemask_epi8(top))) << (16 * k);
      }
      return w;
    }
  }
#endif
  uint64_t w = 0;
  for (uint64_t i = 0; i < count; ++i) w |= uint64_t((p[i] >> bit) & 1) << i;
  return w;
}

#if defined(EXPOSURE_SSSE3_DISPATCH)
// For each 8-bit mask: the byte positions of its zero bits, then (second table) of its one bits,
// in order, as pshufb indices.
struct CompactTables {
  std::array<std::array<uint8_t, 8>, 256> zeros{}, ones{};
  constexpr CompactTables() {
    for (unsigned m = 0; m < 256; ++m) {
      unsigned z = 0, o = 0;
      for (uint8_t j = 0; j < 8; ++j) ((m >> j) & 1 ? ones[m][o++] : zeros[m][z++]) = j;
    }
  }
};
constexpr CompactTables kCompact;

// A whole word of byte symbols (see partition_word below), 8 at a time: one shuffle per side
// compacts a group, an 8-byte store writes it (its bytes past the group's count land on free
// slots; both stores end at or before a + 8 * (g + 1), so no unread group is touched).
__attribute__((target("ssse3"))) void partition_word64_ssse3(uint8_t* cur, uint64_t a, uint64_t w, uint8_t* zeros,
                                                             uint64_t& zi, uint64_t oi) {
  for (unsigned g = 0; g < 8; ++g) {
    const unsigned m = unsigned(w >> (8 * g)) & 0xFF;
    const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(cur + a + 8 * g));
    const __m128i z = _mm_shuffle_epi8(v, _mm_loadl_epi64(reinterpret_cast<const __m128i*>(kCompact.zeros[m].data())));
    const __m128i o = _mm_shuffle_epi8(v, _mm_loadl_epi64(reinterpret_cast<const __m128i*>(kCompact.ones[m].data())));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(zeros + zi), z);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(cur + oi), o);
    const unsigned c = unsigned(std::popcount(m));
    zi += 8 - c;
    oi += c;
  }
}

const bool kHasSsse3 = __builtin_cpu_supports("ssse3");
#endif

// Stable partition of one word's `count` symbols at cur[a, a + count) by their bits in `w`:
// zeros go to zeros[zi...], ones to cur[oi...]. The ones move down in place: oi (ones before a)
// <= a, so no symbol is overwritten before it is read. Branch-free: every symbol is written at
// both cursors and advances only its own side's; the other write lands on a free slot that side
// fills later. Whole words of byte symbols go 8 at a time where the CPU has SSSE3.
template <class Sym>
void partition_word(Sym* cur, uint64_t a, uint64_t count, uint64_t w, Sym* zeros, uint64_t& zi, uint64_t oi) {
#if defined(EXPOSURE_SSSE3_DISPATCH)
  if constexpr (sizeof(Sym) == 1) {
    if (count == 64 && kHasSsse3) return partition_word64_ssse3(cur, a, w, zeros, zi, oi);
  }
#endif
  for (uint64_t i = 0; i < count; ++i) {
    const Sym v = cur[a + i];
    const uint64_t b = (w >> i) & 1;
    zeros[zi] = v;
    cur[oi] = v;
    zi += 1 - b;
    oi += b;
  }
}

}  // namespace

template <class Sym>
std::pair<uint64_t, uint64_t> WaveletMatrix::write(const fs::path& path, std::vector<Sym>& symbols,
                                                    unsigned levels, std::span<const uint64_t> boundaries) {
  const uint64_t n = symbols.size();
  const uint64_t nlines = n / kBits + 1;
  const uint64_t kpad = (boundaries.size() + 7) / 8 * 8;
  FileHeader h = make_header(FileKind::Windows, 8 * kpad + 8 * levels + 64 * nlines * levels, 1, levels);
  h.aux64[0] = n;
  h.aux64[1] = boundaries.size();
  h.aux64[2] = nlines;
  FileWriter out(path, h);
  out.write(boundaries.data(), boundaries.size_bytes());
  const std::vector<uint64_t> pad(kpad - boundaries.size(), 0);
  out.write(pad.data(), 8 * pad.size());
  std::vector<uint64_t> zeros(levels);
  std::vector<Sym>& cur = symbols;
  std::vector<Sym> nxt(n);
  std::vector<Line> lines(nlines);
  for (unsigned lv = 0; lv < levels; ++lv) {
    const unsigned bit = levels - 1 - lv;
    // One pass per level: each word's bits go to its line and drive the stable partition of its
    // symbols (zeros to the front of nxt, ones compacted to the front of cur, then appended).
    uint64_t ones = 0, zi = 0;
    for (uint64_t li = 0; li < nlines; ++li) {
      Line& ln = lines[li];
      ln.cum = ones;
      const uint64_t start = li * kBits;
      for (unsigned wi = 0; wi < 7; ++wi) {
        const uint64_t a = std::min(n, start + 64 * wi), b = std::min(n, start + 64 * (wi + 1));
        const uint64_t w = bit_word(cur.data() + a, b - a, bit);
        ln.w[wi] = w;
        partition_word(cur.data(), a, b - a, w, nxt.data(), zi, ones);
        ones += uint64_t(std::popcount(w));
      }
    }
    out.write(lines.data(), lines.size() * sizeof(Line));
    zeros[lv] = zi;
    std::copy_n(cur.data(), ones, nxt.data() + zi);
    cur.swap(nxt);
  }
  out.write(zeros.data(), 8 * zeros.size());
  return out.commit();
}

template std::pair<uint64_t, uint64_t> WaveletMatrix::write<uint8_t>(const fs::path&, std::vector<uint8_t>&, unsigned,
                                                                      std::span<const uint64_t>);
template std::pair<uint64_t, uint64_t> WaveletMatrix::write<uint16_t>(const fs::path&, std::vector<uint16_t>&,
                                                                       unsigned, std::span<const uint64_t>);

}  // namespace exposure
