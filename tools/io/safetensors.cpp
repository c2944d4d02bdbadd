// safetensors reading and writing. The reader trusts nothing in the file: every size, offset
// and dtype is checked before memory is allocated or bytes are copied, because a checkpoint that
// loads wrong weights silently is worse than one that refuses to load.
#include "tools/io/safetensors.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "tools/io/atomic_file.h"

namespace kiln::io {
namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;  // keeps the header's order, so files list tensors as written

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; a big-endian host would need byte swaps");

namespace {

constexpr std::string_view kMetadataKey = "__metadata__";

struct DTypeName {
  DType dtype;
  std::string_view name;
};
constexpr DTypeName kDTypeNames[] = {
    {DType::f32, "F32"}, {DType::f16, "F16"}, {DType::bf16, "BF16"}, {DType::f64, "F64"},
    {DType::i32, "I32"}, {DType::i64, "I64"}, {DType::u8, "U8"},     {DType::b8, "BOOL"}};

std::string known_dtype_names() {
  std::string s;
  for (const DTypeName& d : kDTypeNames) s += (s.empty() ? "" : ", ") + std::string(d.name);
  return s;
}

// One tensor's header entry, validated.
struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

// A non-negative JSON integer that fits in int64 (shapes and offsets), or an error naming `what`.
uint64_t json_size(const Json& v, const std::string& what) {
  KILN_CHECK(v.is_number_unsigned() ||
                 (v.is_number_integer() && v.get<int64_t>() >= 0),
             what, " must be a non-negative integer, got ", v.dump());
  const uint64_t x = v.get<uint64_t>();
  KILN_CHECK(x <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), what, " is too large: ", x);
  return x;
}

Entry parse_entry(const std::string& where, const std::string& name, const Json& v) {
  KILN_CHECK(v.is_object(), where, "tensor '", name, "': header entry must be an object, got ",
             v.dump());
  for (const auto& [key, _] : v.items())
    KILN_CHECK(key == "dtype" || key == "shape" || key == "data_offsets", where, "tensor '", name,
               "': unknown key '", key, "' (known: dtype, shape, data_offsets)");
  for (const char* key : {"dtype", "shape", "data_offsets"})
    KILN_CHECK(v.contains(key), where, "tensor '", name, "': missing '", key, "'");

  Entry e;
  e.name = name;
  const Json& dtype = v["dtype"];
  KILN_CHECK(dtype.is_string(), where, "tensor '", name, "': dtype must be a string, got ", dtype.dump());
  try {
    e.dtype = parse_safetensors_dtype(dtype.get<std::string>());
  } catch (const Error& err) {
    KILN_FAIL(where, "tensor '", name, "': ", err.what());
  }

  const Json& shape = v["shape"];
  KILN_CHECK(shape.is_array(), where, "tensor '", name, "': shape must be an array, got ", shape.dump());
  uint64_t nbytes = element_size(e.dtype);
  for (const Json& d : shape) {
    const uint64_t size = json_size(d, where + "tensor '" + name + "': shape entry");
    e.shape.push_back(static_cast<int64_t>(size));
    KILN_CHECK(!__builtin_mul_overflow(nbytes, size, &nbytes), where, "tensor '", name,
               "': shape ", shape.dump(), " overflows 64 bits");
  }

  const Json& offsets = v["data_offsets"];
  KILN_CHECK(offsets.is_array() && offsets.size() == 2, where, "tensor '", name,
             "': data_offsets must be [begin, end], got ", offsets.dump());
  e.begin = json_size(offsets[0], where + "tensor '" + name + "': data_offsets begin");
  e.end = json_size(offsets[1], where + "tensor '" + name + "': data_offsets end");
  KILN_CHECK(e.begin <= e.end, where, "tensor '", name, "': data_offsets ", offsets.dump(),
             " end before begin");
  KILN_CHECK(e.end - e.begin == nbytes, where, "tensor '", name, "': ", safetensors_dtype_name(e.dtype),
             shape_str(e.shape), " needs ", nbytes, " bytes but data_offsets ", offsets.dump(),
             " span ", e.end - e.begin);
  return e;
}

// Parses the header, refusing duplicate keys (JSON allows them; a later one would silently win).
Json parse_header(const std::string& where, const std::string& text) {
  std::vector<std::set<std::string>> keys_by_depth;
  std::string duplicate;
  auto on_event = [&](int, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::object_start) keys_by_depth.emplace_back();
    if (event == Json::parse_event_t::object_end && !keys_by_depth.empty()) keys_by_depth.pop_back();
    if (event == Json::parse_event_t::key && !keys_by_depth.empty() &&
        !keys_by_depth.back().insert(parsed.get<std::string>()).second && duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  Json header;
  try {
    header = Json::parse(text, on_event);
  } catch (const Json::exception& err) {
    KILN_FAIL(where, "header is not valid JSON: ", err.what());
  }
  KILN_CHECK(duplicate.empty(), where, "duplicate key '", duplicate, "' in the header");
  KILN_CHECK(header.is_object(), where, "header must be a JSON object, got a ", header.type_name());
  return header;
}

SafetensorsMetadata parse_metadata(const std::string& where, const Json& v) {
  KILN_CHECK(v.is_object(), where, "__metadata__ must be an object of strings, got ", v.dump());
  SafetensorsMetadata m;
  for (const auto& [key, value] : v.items()) {
    KILN_CHECK(value.is_string(), where, "__metadata__ '", key, "' must be a string, got ", value.dump());
    m[key] = value.get<std::string>();
  }
  return m;
}

// Entries sorted by offset must tile [0, buffer_size) with no overlap and no gap.
void check_layout(const std::string& where, std::vector<Entry>& entries, uint64_t buffer_size) {
  std::stable_sort(entries.begin(), entries.end(),
                   [](const Entry& a, const Entry& b) { return a.begin < b.begin; });
  uint64_t covered = 0;
  const Entry* previous = nullptr;
  for (const Entry& e : entries) {
    KILN_CHECK(e.begin >= covered, where, "tensor '", e.name, "' at bytes [", e.begin, ", ",
               e.end, ") overlaps tensor '", previous ? previous->name : "", "' which ends at ", covered);
    KILN_CHECK(e.begin == covered, where, "gap in the data buffer: bytes [", covered, ", ",
               e.begin, ") belong to no tensor (before tensor '", e.name, "')");
    KILN_CHECK(e.end <= buffer_size, where, "truncated: tensor '", e.name, "' ends at byte ",
               e.end, " of the data buffer, which holds only ", buffer_size, " bytes");
    covered = e.end;
    previous = &e;
  }
  KILN_CHECK(covered == buffer_size, where, "the data buffer holds ", buffer_size,
             " bytes but the tensors cover only ", covered, " (trailing bytes)");
}

}  // namespace

std::string_view safetensors_dtype_name(DType dtype) {
  for (const DTypeName& d : kDTypeNames)
    if (d.dtype == dtype) return d.name;
  KILN_FAIL("dtype ", dtype, " has no safetensors name");
}

DType parse_safetensors_dtype(std::string_view name) {
  for (const DTypeName& d : kDTypeNames)
    if (d.name == name) return d.dtype;
  KILN_FAIL("unknown dtype '", name, "' (known: ", known_dtype_names(), ")");
}

void save_safetensors(const fs::path& path, const NamedTensors& tensors,
                      const SafetensorsMetadata& metadata) {
  const std::string where = path.string() + ": ";
  Json header = Json::object();
  if (!metadata.empty()) header[std::string(kMetadataKey)] = metadata;
  std::vector<Tensor> host;  // what goes into the data buffer, in order
  host.reserve(tensors.size());
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    KILN_CHECK(name != kMetadataKey, where, "a tensor may not be called ", kMetadataKey);
    KILN_CHECK(!header.contains(name), where, "two tensors are called '", name, "'");
    KILN_CHECK(t.defined(), where, "tensor '", name, "' is undefined");
    Tensor c = t.detach().to(kCPU).contiguous();
    const uint64_t nbytes = static_cast<uint64_t>(c.numel()) * c.element_size();
    header[name] = {{"dtype", safetensors_dtype_name(c.dtype())},
                    {"shape", c.shape()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    host.push_back(std::move(c));
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const Json::exception& err) {
    KILN_FAIL(where, "tensor names and metadata must be valid UTF-8: ", err.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // the data buffer then starts 8-byte aligned
  const uint64_t header_len = text.size();

  AtomicFileWriter out(path);
  out.write(&header_len, sizeof header_len);
  out.write(text);
  for (const Tensor& c : host)
    if (c.numel() > 0) out.write(c.data_ptr(), static_cast<std::size_t>(c.numel()) * c.element_size());
  out.commit();
}

SafetensorsContents load_safetensors(const fs::path& path) {
  const std::string where = path.string() + ": ";
  std::ifstream in(path, std::ios::binary);
  KILN_CHECK(in, "cannot open ", path.string(), ": ", std::strerror(errno));
  std::error_code ec;
  const uint64_t file_size = fs::file_size(path, ec);
  KILN_CHECK(!ec, "cannot stat ", path.string(), ": ", ec.message());
  KILN_CHECK(file_size >= 8, where, "too short for a safetensors file (", file_size,
             " bytes; the header length alone takes 8)");

  uint64_t header_len = 0;
  in.read(reinterpret_cast<char*>(&header_len), 8);
  KILN_CHECK(in, where, "cannot read the header length");
  KILN_CHECK(header_len <= file_size - 8, where, "header length ", header_len,
             " exceeds the file size ", file_size, " (truncated, or not a safetensors file)");
  std::string text(header_len, '\0');
  in.read(text.data(), static_cast<std::streamsize>(header_len));
  KILN_CHECK(in, where, "cannot read the ", header_len, "-byte header");
  const Json header = parse_header(where, text);

  SafetensorsContents out;
  std::vector<Entry> entries;
  for (const auto& [key, value] : header.items()) {
    if (key == kMetadataKey) out.metadata = parse_metadata(where, value);
    else entries.push_back(parse_entry(where, key, value));
  }
  const uint64_t buffer_size = file_size - 8 - header_len;
  check_layout(where, entries, buffer_size);

  // The entries now tile the buffer in file order, so one sequential pass reads them all.
  for (const Entry& e : entries) {
    Tensor t = Tensor::empty(e.shape, {.dtype = e.dtype});
    const uint64_t nbytes = e.end - e.begin;
    if (nbytes > 0) {
      in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(nbytes));
      KILN_CHECK(in, where, "tensor '", e.name, "': short read (did the file change while loading?)");
    }
    if (e.dtype == DType::b8) {  // any byte but 0 and 1 is not a bool; kiln's kernels assume so
      const auto* bytes = static_cast<const uint8_t*>(t.data_ptr());
      for (uint64_t i = 0; i < nbytes; ++i)
        KILN_CHECK(bytes[i] <= 1, where, "tensor '", e.name, "' (BOOL) holds byte ",
                   int(bytes[i]), " at element ", i, "; BOOL elements must be 0 or 1");
    }
    out.tensors.emplace_back(e.name, std::move(t));
  }
  return out;
}

}  // namespace kiln::io
