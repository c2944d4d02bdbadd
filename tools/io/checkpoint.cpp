#include "tools/io/checkpoint.h"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <iostream>

#include "core/error.h"
#include "tools/io/atomic_file.h"
#include "tools/io/crc32c.h"

namespace kiln::io {
namespace fs = std::filesystem;

namespace {

constexpr std::string_view kFormat = "kiln-checkpoint";
constexpr std::string_view kFormatVersion = "1";
constexpr std::string_view kModelPrefix = "model.";
constexpr std::string_view kOptimPrefix = "optim.";
constexpr std::string_view kFilePrefix = "ckpt-";
constexpr std::string_view kFileSuffix = ".safetensors";

// The CRC-32C of the data buffer: the tensors' bytes in file order (contiguous CPU tensors).
uint32_t data_checksum(const NamedTensors& tensors) {
  uint32_t crc = 0;
  for (const auto& [name, t] : tensors)
    crc = crc32c(t.data_ptr(), static_cast<std::size_t>(t.numel()) * t.element_size(), crc);
  return crc;
}

std::string hex8(uint32_t v) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

// A whole string as a decimal integer, or nothing.
template <class Int>
std::optional<Int> parse_int(std::string_view s) {
  Int v{};
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

// The step in "ckpt-<step>.safetensors", or nothing for any other name (temporaries included).
std::optional<int64_t> step_of(const std::string& filename) {
  if (!filename.starts_with(kFilePrefix) || !filename.ends_with(kFileSuffix)) return std::nullopt;
  const std::string_view digits = std::string_view(filename).substr(
      kFilePrefix.size(), filename.size() - kFilePrefix.size() - kFileSuffix.size());
  if (digits.empty() || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  return parse_int<int64_t>(digits);
}

const std::string& metadata_value(const std::string& where, const SafetensorsMetadata& m,
                                  const std::string& key) {
  const auto it = m.find(key);
  KILN_CHECK(it != m.end(), where, "missing metadata '", key, "'");
  return it->second;
}

nlohmann::json metadata_json(const std::string& where, const SafetensorsMetadata& m,
                             const std::string& key) {
  try {
    return nlohmann::json::parse(metadata_value(where, m, key));
  } catch (const nlohmann::json::exception& err) {
    KILN_FAIL(where, "metadata '", key, "' is not valid JSON: ", err.what());
  }
}

}  // namespace

fs::path checkpoint_path(const fs::path& dir, int64_t step) {
  return dir / (std::string(kFilePrefix) + std::to_string(step) + std::string(kFileSuffix));
}

fs::path save_checkpoint(const fs::path& dir, int64_t step, const CheckpointContents& contents,
                         int keep_last_k) {
  KILN_CHECK(step >= 0, "save_checkpoint: step must be >= 0, got ", step);
  std::error_code ec;
  fs::create_directories(dir, ec);
  KILN_CHECK(!ec, "cannot create the checkpoint directory ", dir.string(), ": ", ec.message());
  const fs::path path = checkpoint_path(dir, step);

  // Host copies first: the checksum and the file must see the same bytes, copied from the GPU once.
  NamedTensors tensors;
  tensors.reserve(contents.model.size() + contents.optim.size());
  auto add = [&](std::string_view prefix, const NamedTensors& group) {
    for (const auto& [name, t] : group) {
      KILN_CHECK(t.defined(), path.string(), ": tensor '", prefix, name, "' is undefined");
      tensors.emplace_back(std::string(prefix) + name, t.detach().to(kCPU).contiguous());
    }
  };
  add(kModelPrefix, contents.model);
  add(kOptimPrefix, contents.optim);

  SafetensorsMetadata metadata{
      {"format", std::string(kFormat)},
      {"format_version", std::string(kFormatVersion)},
      {"step", std::to_string(step)},
      {"rng", nlohmann::json{{"seed", contents.rng_seed}, {"offset", contents.rng_offset}}.dump()},
      {"data_loader", contents.data_loader.dump()},
      {"extra", contents.extra.dump()},
      {"config", contents.config},
      {"checksum", hex8(data_checksum(tensors))},
  };
  save_safetensors(path, tensors, metadata);

  if (keep_last_k > 0) {
    std::vector<std::pair<int64_t, fs::path>> older;
    for (auto& entry : list_checkpoints(dir))
      if (entry.first < step) older.push_back(std::move(entry));
    const std::size_t keep_older = static_cast<std::size_t>(keep_last_k - 1);
    if (older.size() > keep_older) {
      for (std::size_t i = 0; i < older.size() - keep_older; ++i) {  // ascending: oldest first
        std::error_code remove_error;
        fs::remove(older[i].second, remove_error);
        KILN_CHECK(!remove_error, "cannot delete old checkpoint ", older[i].second.string(), ": ",
                   remove_error.message());
      }
      sync_directory(dir);
    }
  }
  return path;
}

std::vector<std::pair<int64_t, fs::path>> list_checkpoints(const fs::path& dir) {
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  if (!fs::exists(dir, ec)) return found;
  KILN_CHECK(fs::is_directory(dir, ec), "checkpoint directory ", dir.string(), " is not a directory");
  for (const fs::directory_entry& entry : fs::directory_iterator(dir)) {
    if (!entry.is_regular_file(ec)) continue;
    if (auto step = step_of(entry.path().filename().string())) found.emplace_back(*step, entry.path());
  }
  std::sort(found.begin(), found.end());
  return found;
}

std::optional<fs::path> latest_valid_checkpoint(const fs::path& dir) {
  const auto found = list_checkpoints(dir);
  for (auto it = found.rbegin(); it != found.rend(); ++it) {
    try {
      load_checkpoint(it->second);
      return it->second;
    } catch (const Error& err) {
      std::cerr << "kiln: warning: skipping checkpoint " << it->second.string() << ": " << err.what()
                << std::endl;
    }
  }
  return std::nullopt;
}

CheckpointContents load_checkpoint(const fs::path& path) {
  const std::string where = path.string() + ": ";
  SafetensorsContents file = load_safetensors(path);
  const SafetensorsMetadata& m = file.metadata;

  const auto format = m.find("format");
  KILN_CHECK(format != m.end() && format->second == kFormat, where,
             "not a kiln checkpoint (metadata 'format' is ",
             format == m.end() ? std::string("missing") : "'" + format->second + "'", ", expected '",
             kFormat, "')");
  const std::string& version = metadata_value(where, m, "format_version");
  KILN_CHECK(version == kFormatVersion, where, "checkpoint format_version '", version,
             "' is not supported (this kiln reads ", kFormatVersion, ")");

  const std::string& recorded = metadata_value(where, m, "checksum");
  const std::string actual = hex8(data_checksum(file.tensors));
  KILN_CHECK(recorded == actual, where, "checksum mismatch: the data buffer's CRC-32C is ", actual,
             " but the file records ", recorded, " (the file is corrupt)");

  CheckpointContents c;
  const std::string& step = metadata_value(where, m, "step");
  const auto parsed_step = parse_int<int64_t>(step);
  KILN_CHECK(parsed_step && *parsed_step >= 0, where, "metadata 'step' is not a step: '", step, "'");
  c.step = *parsed_step;

  const nlohmann::json rng = metadata_json(where, m, "rng");
  KILN_CHECK(rng.is_object() && rng.size() == 2 && rng.contains("seed") && rng.contains("offset") &&
                 rng["seed"].is_number_unsigned() && rng["offset"].is_number_unsigned(),
             where, "metadata 'rng' must be {\"seed\": uint64, \"offset\": uint64}, got ", rng.dump());
  c.rng_seed = rng["seed"].get<uint64_t>();
  c.rng_offset = rng["offset"].get<uint64_t>();
  c.data_loader = metadata_json(where, m, "data_loader");
  c.extra = metadata_json(where, m, "extra");
  c.config = metadata_value(where, m, "config");

  for (auto& [name, t] : file.tensors) {
    if (name.starts_with(kModelPrefix)) c.model.emplace_back(name.substr(kModelPrefix.size()), std::move(t));
    else if (name.starts_with(kOptimPrefix)) c.optim.emplace_back(name.substr(kOptimPrefix.size()), std::move(t));
    else KILN_FAIL(where, "tensor '", name, "' is neither model.* nor optim.*");
  }
  return c;
}

}  // namespace kiln::io
