// Cost of one random 2-byte read within an array of a given size, the access that dominates induced
// sorting (a suffix array's inductions read the text at random). Reads are independent and prefetched
// 32 ahead, as in the engine's SA-IS, so this measures throughput, not latency. One array per thread,
// threads side by side (the builder sorts one shard per thread).
//
//   g++ -O2 -std=c++20 -pthread benchmarks/random_reads.cpp -o /tmp/random_reads
//   /tmp/random_reads 2 100 300 600      # threads, then array sizes in MB
#include <sys/mman.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Free {
  void operator()(void* p) const { std::free(p); }
};

double ns_per_read(size_t bytes, uint64_t seed) {
  constexpr size_t kHuge = size_t(1) << 21, kReads = size_t(1) << 25, kAhead = 32;
  const size_t n = bytes / 2, alloc = (bytes + kHuge - 1) / kHuge * kHuge;
  std::unique_ptr<uint16_t[], Free> a(static_cast<uint16_t*>(std::aligned_alloc(kHuge, alloc)));
  if (!a) throw std::bad_alloc();
  madvise(a.get(), alloc, MADV_HUGEPAGE);
  std::memset(a.get(), 1, alloc);  // resident before timing
  std::vector<uint32_t> idx(kReads);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& v : idx) {  // xorshift64
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    v = uint32_t(x % n);
  }
  uint64_t sum = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < kReads; ++i) {
    if (i + kAhead < kReads) __builtin_prefetch(&a[idx[i + kAhead]]);
    sum += a[idx[i]];
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (sum != kReads * 0x0101u) std::fprintf(stderr, "unexpected sum\n");
  return s / kReads * 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s THREADS MB [MB ...]\n", argv[0]);
    return 2;
  }
  const int threads = std::stoi(argv[1]);
  for (int k = 2; k < argc; ++k) {
    const size_t mb = std::stoull(argv[k]);
    std::vector<double> ns(threads);
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { ns[t] = ns_per_read(mb << 20, t + 1); });
    for (auto& th : pool) th.join();
    std::printf("%6zu MB x %d threads:", mb, threads);
    for (double v : ns) std::printf(" %6.2f ns", v);
    std::printf("\n");
  }
}
