// File I/O for the index: read-only memory maps, checksummed writers, the binary file header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace exposure {

namespace fs = std::filesystem;

// Raised for anything wrong with index files: missing, truncated, foreign, wrong version.
class IndexFileError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// XXH64 (Yann Collet's xxHash, 64-bit variant), computed incrementally.
// Used for per-file checksums so they can be checked with any xxhash tool.
class Xxh64 {
 public:
  explicit Xxh64(uint64_t seed = 0);
  void update(const void* data, size_t len);
  uint64_t digest() const;

 private:
  uint64_t v_[4];
  uint64_t total_ = 0;
  uint8_t buf_[32];
  size_t buf_len_ = 0;
  uint64_t seed_;
};

// Every binary file of an index starts with this 64-byte header.
struct FileHeader {
  static constexpr char kMagic[8] = {'E', 'X', 'P', 'O', 'S', 'U', 'R', 'E'};
  static constexpr uint32_t kVersion = 1;
  char magic[8];
  uint32_t version;
  uint32_t kind;        // FileKind
  uint64_t count;       // number of elements in the payload
  uint32_t elem_bytes;  // bytes per element (1, 2, 4, 5, 8, ...)
  uint32_t aux32;       // kind-specific
  uint64_t aux64[4];    // kind-specific
};
static_assert(sizeof(FileHeader) == 64);

enum class FileKind : uint32_t {
  Tokens = 1,       // shard text: tokens with a separator after every item; aux32 = separator value
  SuffixArray = 2,  // packed text positions, elem_bytes wide
  Buckets = 3,      // uint64 [sigma + 1]: SA range of suffixes by first token
  Rmq = 4,          // block minima + sparse table; aux32 = block size, aux64[0] = blocks
  Separators = 5,   // uint64 text positions of separators
  Windows = 6,      // wavelet matrix over window ids; see wavelet.hpp
  Keys = 7,         // uint64 sampled suffix keys (see SuffixKeys in shard.hpp); aux32 = sampling stride
};

// Read-only memory map of a whole file. Move-only.
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const fs::path& path);
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const fs::path& path() const { return path_; }
  void advise_random() const;

 private:
  void release() noexcept;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  fs::path path_;
};

// A mapped index file whose header was validated: magic, version, kind and exact size.
class IndexFile {
 public:
  IndexFile() = default;
  IndexFile(const fs::path& path, FileKind kind);
  const FileHeader& header() const { return header_; }
  const uint8_t* payload() const { return file_.data() + sizeof(FileHeader); }
  size_t payload_size() const { return file_.size() - sizeof(FileHeader); }
  const fs::path& path() const { return file_.path(); }
  void advise_random() const { file_.advise_random(); }

 private:
  MappedFile file_;
  FileHeader header_{};
};

// Writes header + payload to `path.tmp`, hashing the payload; commit() fsyncs and renames.
// A writer destroyed without commit() removes its temporary file.
//
// Writes bypass the page cache (O_DIRECT, 4 MiB aligned blocks; the last block is padded and the
// file truncated to its size) where the file system allows it, else go through it. Index files are
// written once and read much later, often by other processes: buffered writes of gigabytes only
// fill the page cache and get throttled to the kernel's writeback pace (on the development VM,
// ~0.3 GB/s buffered against ~1.3 GB/s direct).
class FileWriter {
 public:
  FileWriter(const fs::path& path, FileHeader header);
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;
  ~FileWriter();
  void write(const void* data, size_t len);
  template <class T>
  void write(std::span<const T> values) {
    write(values.data(), values.size_bytes());
  }
  // Returns the checksum (XXH64 of the whole file) and the file size in bytes.
  std::pair<uint64_t, uint64_t> commit();

 private:
  static constexpr size_t kAlign = 4096, kBuffer = size_t(4) << 20;
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  void flush(size_t len);
  void write_all(const uint8_t* p, size_t len);
  void leave_direct();
  fs::path path_, tmp_;
  int fd_ = -1;
  bool direct_ = false;
  Xxh64 hash_;
  std::unique_ptr<uint8_t, Free> buf_;
  size_t used_ = 0;
  uint64_t written_ = 0;
  bool committed_ = false;
};

// A zero-filled array in anonymous memory that asks for transparent huge pages when it spans at
// least one (2 MiB): suffix sorting touches it at random, and huge pages spare most TLB misses.
// Move-only.
template <class T>
class HugeArray {
 public:
  explicit HugeArray(size_t n);
  HugeArray(HugeArray&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)), bytes_(o.bytes_) {}
  HugeArray(const HugeArray&) = delete;
  HugeArray& operator=(const HugeArray&) = delete;
  HugeArray& operator=(HugeArray&&) = delete;
  ~HugeArray();
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  T& operator[](size_t i) { return p_[i]; }
  const T& operator[](size_t i) const { return p_[i]; }

 private:
  T* p_ = nullptr;
  size_t n_ = 0, bytes_ = 0;
};

FileHeader make_header(FileKind kind, uint64_t count, uint32_t elem_bytes, uint32_t aux32 = 0);

// XXH64 of a whole file (what the manifest records).
uint64_t hash_file(const fs::path& path);

void fsync_dir(const fs::path& dir);

// Little-endian packed unsigned integers of `width` bytes (1..8).
inline uint64_t load_packed(const uint8_t* base, size_t i, unsigned width) {
  uint64_t v = 0;
  std::memcpy(&v, base + i * width, width);  // little-endian host assumed (checked at build)
  return v;
}

inline unsigned bytes_for(uint64_t max_value) {
  unsigned w = 1;
  while (w < 8 && (max_value >> (8 * w)) != 0) ++w;
  return w;
}

}  // namespace exposure
