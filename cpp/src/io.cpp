#include "exposure/io.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <new>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <utility>

namespace exposure {

static_assert(std::endian::native == std::endian::little, "index files are little-endian");

namespace {
constexpr uint64_t P1 = 11400714785074694791ULL;
constexpr uint64_t P2 = 14029467366897019727ULL;
constexpr uint64_t P3 = 1609587929392839161ULL;
constexpr uint64_t P4 = 9650029242287828579ULL;
constexpr uint64_t P5 = 2870177450012600261ULL;

inline uint64_t rd64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline uint32_t rd32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t round(uint64_t acc, uint64_t input) {
  acc += input * P2;
  acc = std::rotl(acc, 31);
  return acc * P1;
}
inline uint64_t merge(uint64_t acc, uint64_t val) {
  acc ^= round(0, val);
  return acc * P1 + P4;
}

std::string errno_text(const std::string& what, const fs::path& path) {
  return what + " " + path.string() + ": " + std::strerror(errno);
}
}  // namespace

Xxh64::Xxh64(uint64_t seed) : seed_(seed) {
  v_[0] = seed + P1 + P2;
  v_[1] = seed + P2;
  v_[2] = seed;
  v_[3] = seed - P1;
}

void Xxh64::update(const void* data, size_t len) {
  auto p = static_cast<const uint8_t*>(data);
  total_ += len;
  if (buf_len_ + len < 32) {
    std::memcpy(buf_ + buf_len_, p, len);
    buf_len_ += len;
    return;
  }
  if (buf_len_ > 0) {
    size_t fill = 32 - buf_len_;
    std::memcpy(buf_ + buf_len_, p, fill);
    for (int i = 0; i < 4; ++i) v_[i] = round(v_[i], rd64(buf_ + 8 * i));
    p += fill;
    len -= fill;
    buf_len_ = 0;
  }
  while (len >= 32) {
    v_[0] = round(v_[0], rd64(p));
    v_[1] = round(v_[1], rd64(p + 8));
    v_[2] = round(v_[2], rd64(p + 16));
    v_[3] = round(v_[3], rd64(p + 24));
    p += 32;
    len -= 32;
  }
  std::memcpy(buf_, p, len);
  buf_len_ = len;
}

uint64_t Xxh64::digest() const {
  uint64_t h;
  if (total_ >= 32) {
    h = std::rotl(v_[0], 1) + std::rotl(v_[1], 7) + std::rotl(v_[2], 12) + std::rotl(v_[3], 18);
    for (int i = 0; i < 4; ++i) h = merge(h, v_[i]);
  } else {
    h = seed_ + P5;
  }
  h += total_;
  const uint8_t* p = buf_;
  size_t len = buf_len_;
  while (len >= 8) {
    h ^= round(0, rd64(p));
    h = std::rotl(h, 27) * P1 + P4;
    p += 8;
    len -= 8;
  }
  if (len >= 4) {
    h ^= uint64_t(rd32(p)) * P1;
    h = std::rotl(h, 23) * P2 + P3;
    p += 4;
    len -= 4;
  }
  while (len > 0) {
    h ^= (*p) * P5;
    h = std::rotl(h, 11) * P1;
    ++p;
    --len;
  }
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  h *= P3;
  h ^= h >> 32;
  return h;
}

MappedFile::MappedFile(const fs::path& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IndexFileError(errno_text("cannot open index file", path));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw IndexFileError(errno_text("cannot stat index file", path));
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      throw IndexFileError(errno_text("cannot memory-map index file", path));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::MappedFile(MappedFile&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)), path_(std::move(o.path_)) {}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    release();
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
    path_ = std::move(o.path_);
  }
  return *this;
}

MappedFile::~MappedFile() { release(); }

void MappedFile::release() noexcept {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

void MappedFile::advise_random() const {
  if (data_ != nullptr) ::madvise(const_cast<uint8_t*>(data_), size_, MADV_RANDOM);
}

IndexFile::IndexFile(const fs::path& path, FileKind kind) : file_(path) {
  if (file_.size() < sizeof(FileHeader))
    throw IndexFileError("index file " + path.string() + " is truncated (" + std::to_string(file_.size()) +
                         " bytes, shorter than its header)");
  std::memcpy(&header_, file_.data(), sizeof(FileHeader));
  if (std::memcmp(header_.magic, FileHeader::kMagic, 8) != 0)
    throw IndexFileError("index file " + path.string() + " is not an exposure index file (bad magic)");
  if (header_.version != FileHeader::kVersion)
    throw IndexFileError("index file " + path.string() + " has format version " + std::to_string(header_.version) +
                         ", this build reads version " + std::to_string(FileHeader::kVersion) +
                         ": rebuild the index");
  if (header_.kind != static_cast<uint32_t>(kind))
    throw IndexFileError("index file " + path.string() + " holds the wrong kind of data (kind " +
                         std::to_string(header_.kind) + ", expected " + std::to_string(uint32_t(kind)) + ")");
  uint64_t expect = 0;
  if (__builtin_mul_overflow(header_.count, uint64_t(header_.elem_bytes), &expect) || expect != payload_size())
    throw IndexFileError("index file " + path.string() + " is truncated or corrupt: its header promises " +
                         std::to_string(header_.count) + " x " + std::to_string(header_.elem_bytes) +
                         " payload bytes, the file has " + std::to_string(payload_size()));
}

template <class T>
HugeArray<T>::HugeArray(size_t n) : n_(n) {
  constexpr size_t kPage = 4096, kHuge = size_t(2) << 20;
  const size_t want = std::max<size_t>(n * sizeof(T), 1);
  const size_t unit = want >= kHuge ? kHuge : kPage;
  bytes_ = (want + unit - 1) / unit * unit;
  void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  if (unit == kHuge) ::madvise(p, bytes_, MADV_HUGEPAGE);  // a hint: without THP it is plain memory
  p_ = static_cast<T*>(p);
}

template <class T>
HugeArray<T>::~HugeArray() {
  if (p_ != nullptr) ::munmap(p_, bytes_);
}

template class HugeArray<uint32_t>;
template class HugeArray<uint64_t>;

FileHeader make_header(FileKind kind, uint64_t count, uint32_t elem_bytes, uint32_t aux32) {
  FileHeader h{};
  std::memcpy(h.magic, FileHeader::kMagic, 8);
  h.version = FileHeader::kVersion;
  h.kind = static_cast<uint32_t>(kind);
  h.count = count;
  h.elem_bytes = elem_bytes;
  h.aux32 = aux32;
  return h;
}

// Direct I/O unless EXPOSURE_DIRECT_IO=0: a way out where it is slow (some network file systems),
// and how the tests reach the page-cache path on file systems that accept it.
static bool direct_io_wanted() {
  const char* v = std::getenv("EXPOSURE_DIRECT_IO");
  return v == nullptr || std::string_view(v) != "0";
}

FileWriter::FileWriter(const fs::path& path, FileHeader header) : path_(path), tmp_(path) {
  tmp_ += ".tmp";
  buf_.reset(static_cast<uint8_t*>(std::aligned_alloc(kAlign, kBuffer)));
  if (!buf_) throw std::bad_alloc();
  constexpr int kFlags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC;
  const bool want = direct_io_wanted();
  if (want) fd_ = ::open(tmp_.c_str(), kFlags | O_DIRECT, 0644);
  direct_ = fd_ >= 0;
  if (fd_ < 0 && (!want || errno == EINVAL)) fd_ = ::open(tmp_.c_str(), kFlags, 0644);  // or refused (tmpfs...)
  if (fd_ < 0) throw IndexFileError(errno_text("cannot create", tmp_));
  write(&header, sizeof(header));
}

FileWriter::~FileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) {
    std::error_code ec;
    fs::remove(tmp_, ec);
  }
}

void FileWriter::write(const void* data, size_t len) {
  auto p = static_cast<const uint8_t*>(data);
  hash_.update(p, len);
  written_ += len;
  while (len > 0) {
    const size_t take = std::min(len, kBuffer - used_);
    std::memcpy(buf_.get() + used_, p, take);
    used_ += take;
    p += take;
    len -= take;
    if (used_ == kBuffer) flush(kBuffer);
  }
}

void FileWriter::write_all(const uint8_t* p, size_t left) {
  while (left > 0) {
    ssize_t n = ::write(fd_, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EINVAL && direct_) {  // the file system refused direct I/O after all
      leave_direct();
      continue;
    }
    if (n < 0) throw IndexFileError(errno_text("cannot write", tmp_));
    p += n;
    left -= static_cast<size_t>(n);
    if (left % kAlign != 0 && direct_) leave_direct();  // a short write left an unaligned rest
  }
}

// Carries on through the page cache.
void FileWriter::leave_direct() {
  direct_ = false;
  if (::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) & ~O_DIRECT) != 0)
    throw IndexFileError(errno_text("cannot write", tmp_));
}

// Writes the first `len` buffered bytes (a multiple of kAlign, or the padded last block).
void FileWriter::flush(size_t len) {
  write_all(buf_.get(), len);
  used_ = 0;
}

std::pair<uint64_t, uint64_t> FileWriter::commit() {
  if (used_ > 0 && direct_) {  // direct I/O writes whole blocks: pad, then cut the file back to its size
    const size_t len = (used_ + kAlign - 1) / kAlign * kAlign;
    std::memset(buf_.get() + used_, 0, len - used_);
    flush(len);
    if (::ftruncate(fd_, static_cast<off_t>(written_)) != 0) throw IndexFileError(errno_text("cannot truncate", tmp_));
  } else if (used_ > 0) {
    flush(used_);
  }
  if (::fsync(fd_) != 0) throw IndexFileError(errno_text("cannot fsync", tmp_));
  ::close(fd_);
  fd_ = -1;
  std::error_code ec;
  fs::rename(tmp_, path_, ec);
  if (ec) throw IndexFileError("cannot rename " + tmp_.string() + ": " + ec.message());
  committed_ = true;
  return {hash_.digest(), written_};
}

uint64_t hash_file(const fs::path& path) {
  MappedFile f(path);
  Xxh64 h;
  constexpr size_t kStep = 64 << 20;
  for (size_t off = 0; off < f.size(); off += kStep) {
    size_t len = std::min(kStep, f.size() - off);
    h.update(f.data() + off, len);
    ::madvise(const_cast<uint8_t*>(f.data() + off), len, MADV_DONTNEED);
  }
  return h.digest();
}

void fsync_dir(const fs::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw IndexFileError(errno_text("cannot open directory", dir));
  ::fsync(fd);
  ::close(fd);
}

}  // namespace exposure
