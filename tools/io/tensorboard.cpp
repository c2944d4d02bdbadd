// The protobuf wire format, for the three messages a scalar needs (field numbers from
// tensorflow/core/util/event.proto and tensorflow/core/framework/summary.proto):
//   Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//   Summary { repeated Value value = 1; }
//   Value   { string tag = 1; float simple_value = 2; }
// Each field is a key varint (field_number << 3 | wire_type) then the value: wire type 0 a
// varint, 1 eight little-endian bytes, 2 a varint length and the bytes, 5 four bytes.
#include "tools/io/tensorboard.h"

#include <unistd.h>

#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fcntl.h>

#include "core/error.h"
#include "tools/io/crc32c.h"

namespace kiln::io {
namespace fs = std::filesystem;

static_assert(std::endian::native == std::endian::little, "protobuf fixed-width fields are little-endian");

namespace {

enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

// Appends protobuf fields to a byte string.
class ProtoEncoder {
 public:
  void varint(uint64_t v) {
    while (v >= 0x80) {
      bytes_ += static_cast<char>((v & 0x7f) | 0x80);
      v >>= 7;
    }
    bytes_ += static_cast<char>(v);
  }
  void key(uint32_t field, WireType type) { varint((static_cast<uint64_t>(field) << 3) | type); }
  // int64 is encoded as its two's-complement uint64 (a negative step takes ten bytes).
  void int64_field(uint32_t field, int64_t v) {
    key(field, kVarint);
    varint(static_cast<uint64_t>(v));
  }
  void double_field(uint32_t field, double v) {
    key(field, kFixed64);
    append_raw(&v, 8);
  }
  void float_field(uint32_t field, float v) {
    key(field, kFixed32);
    append_raw(&v, 4);
  }
  void bytes_field(uint32_t field, std::string_view v) {  // strings and embedded messages
    key(field, kLengthDelimited);
    varint(v.size());
    bytes_.append(v);
  }
  const std::string& bytes() const { return bytes_; }

 private:
  void append_raw(const void* p, std::size_t n) { bytes_.append(static_cast<const char*>(p), n); }
  std::string bytes_;
};

double unix_time_now() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

std::string hostname() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
  return buf;
}

}  // namespace

SummaryWriter::SummaryWriter(const fs::path& run_dir) {
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  KILN_CHECK(!ec, "cannot create the run directory ", run_dir.string(), ": ", ec.message());
  const double now = unix_time_now();
  const std::string base = "events.out.tfevents." +
                           std::to_string(static_cast<int64_t>(now)) + "." + hostname();
  // Two writers started in the same second on one host would share a name; O_EXCL plus a
  // numeric suffix keeps the second from truncating the first (TensorBoard reads any file
  // whose name contains "tfevents").
  int fd = -1;
  for (int attempt = 0; fd < 0; ++attempt) {
    path_ = run_dir / (attempt == 0 ? base : base + "." + std::to_string(attempt));
    fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    KILN_CHECK(fd >= 0 || (errno == EEXIST && attempt < 1000), "cannot create the event file ",
               path_.string(), ": ", std::strerror(errno));
  }
  file_ = ::fdopen(fd, "wb");
  if (!file_) ::close(fd);
  KILN_CHECK(file_, "cannot open ", path_.string(), ": ", std::strerror(errno));

  ProtoEncoder event;
  event.double_field(1, now);
  event.bytes_field(3, "brain.Event:2");
  write_record(event.bytes());
  flush();
}

SummaryWriter::~SummaryWriter() {
  if (file_) std::fclose(file_);  // flushes; errors here have nowhere to go
}

void SummaryWriter::add_scalar(std::string_view tag, double value, int64_t step) {
  ProtoEncoder v;
  v.bytes_field(1, tag);
  v.float_field(2, static_cast<float>(value));  // simple_value is a float in the proto
  ProtoEncoder summary;
  summary.bytes_field(1, v.bytes());
  ProtoEncoder event;
  event.double_field(1, unix_time_now());
  event.int64_field(2, step);
  event.bytes_field(5, summary.bytes());
  write_record(event.bytes());
}

void SummaryWriter::flush() {
  KILN_CHECK(std::fflush(file_) == 0, "cannot write ", path_.string(), ": ", std::strerror(errno));
}

void SummaryWriter::write_record(const std::string& data) {
  const uint64_t length = data.size();
  const uint32_t length_crc = masked_crc32c(crc32c(&length, sizeof length));
  const uint32_t data_crc = masked_crc32c(crc32c(data));
  const bool ok = std::fwrite(&length, sizeof length, 1, file_) == 1 &&
                  std::fwrite(&length_crc, sizeof length_crc, 1, file_) == 1 &&
                  std::fwrite(data.data(), 1, data.size(), file_) == data.size() &&
                  std::fwrite(&data_crc, sizeof data_crc, 1, file_) == 1;
  KILN_CHECK(ok, "cannot write ", path_.string(), ": ", std::strerror(errno));
}

}  // namespace kiln::io
