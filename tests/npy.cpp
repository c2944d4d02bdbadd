#include "tests/npy.h"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "core/error.h"

namespace kiln::testing {

namespace fs = std::filesystem;
static_assert(std::endian::native == std::endian::little, "the .npy files here are little-endian");

void write_npy(const fs::path& path, const Tensor& t) {
  const char* descr = t.dtype() == DType::f64   ? "<f8"
                      : t.dtype() == DType::f32 ? "<f4"
                      : t.dtype() == DType::i64 ? "<i8"
                                                : nullptr;
  KILN_CHECK(descr, "write_npy: f64, f32 or i64 only, got ", t.meta_str());
  std::string shape = "(";
  for (int64_t s : t.shape()) shape += std::to_string(s) + ", ";
  if (t.dim() > 1) shape.resize(shape.size() - 2);
  if (t.dim() == 1) shape.resize(shape.size() - 1);  // "(32,)"
  shape += ")";
  std::string header = std::string("{'descr': '") + descr +
                       "', 'fortran_order': False, 'shape': " + shape + ", }";
  // Magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of 64,
  // ending in a newline.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  KILN_CHECK(out, "cannot write ", path.string());
  out.write("\x93NUMPY\x01\x00", 8);
  const uint16_t len = static_cast<uint16_t>(header.size());
  out.write(reinterpret_cast<const char*>(&len), 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  Tensor c = t.cpu().contiguous();
  out.write(static_cast<const char*>(c.data_ptr()),
            static_cast<std::streamsize>(c.numel() * c.element_size()));
  KILN_CHECK(out, "short write to ", path.string());
}

NpyArray read_npy(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  KILN_CHECK(in, "cannot open ", path.string(), " (did the reference script write it?)");
  char magic[8];
  in.read(magic, 8);
  KILN_CHECK(in && std::memcmp(magic, "\x93NUMPY", 6) == 0, path.string(), ": not a .npy file");
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    uint16_t len16 = 0;
    in.read(reinterpret_cast<char*>(&len16), 2);
    header_len = len16;
  } else {
    in.read(reinterpret_cast<char*>(&header_len), 4);
  }
  std::string header(header_len, '\0');
  in.read(header.data(), header_len);
  KILN_CHECK(in, path.string(), ": truncated header");

  auto field = [&](const char* key) {
    const size_t at = header.find(key);
    KILN_CHECK(at != std::string::npos, path.string(), ": header lacks ", key, ": ", header);
    return at + std::strlen(key);
  };
  size_t p = header.find('\'', field("'descr':")) + 1;
  const std::string descr = header.substr(p, header.find('\'', p) - p);
  KILN_CHECK(header.compare(field("'fortran_order':"), 6, " False") == 0, path.string(),
             ": Fortran order is not supported");
  p = header.find('(', field("'shape':")) + 1;
  const std::string dims = header.substr(p, header.find(')', p) - p);
  NpyArray a;
  std::stringstream ss(dims);
  for (std::string item; std::getline(ss, item, ',');)
    if (item.find_first_not_of(' ') != std::string::npos) a.shape.push_back(std::stoll(item));

  const int64_t n = shape_numel(a.shape);
  a.values.resize(static_cast<size_t>(n));
  auto read_as = [&](auto tag) {
    std::vector<decltype(tag)> raw(static_cast<size_t>(n));
    in.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(n * sizeof(tag)));
    KILN_CHECK(in, path.string(), ": truncated data");
    std::transform(raw.begin(), raw.end(), a.values.begin(),
                   [](auto v) { return static_cast<double>(v); });
  };
  if (descr == "<f8") read_as(double{});
  else if (descr == "<f4") read_as(float{});
  else if (descr == "<i8") read_as(int64_t{});
  else KILN_FAIL(path.string(), ": unsupported dtype ", descr);
  return a;
}

}  // namespace kiln::testing
