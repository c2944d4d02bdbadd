// Training checkpoints: one safetensors file per checkpoint, <dir>/ckpt-<step>.safetensors,
// that PyTorch and NumPy can open too. Tensors:
//   model.<name>   the model's parameters and buffers (state_dict names)
//   optim.<name>   the optimizer's per-parameter state (e.g. "optim.fc1.weight.exp_avg")
// __metadata__ (safetensors allows only string values):
//   format          "kiln-checkpoint"        format_version  "1"
//   step            the step, in decimal     checksum        CRC-32C of the data buffer, 8 hex digits
//   rng             JSON {"seed": s, "offset": o} of the Generator
//   data_loader     JSON, whatever the data loader needs to resume mid-epoch
//   extra           JSON, trainer state that is not a tensor (scheduler, optimizer step count)
//   config          the run's config text, verbatim
// Files are written atomically and checked on load: structure (safetensors.h), then format,
// then checksum, so a checkpoint cut short or bit-flipped by a crash or a bad disk is refused
// rather than resumed from.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tools/io/safetensors.h"

namespace kiln::io {

struct CheckpointContents {
  int64_t step = 0;  // filled in by load_checkpoint; save_checkpoint records its own `step` argument
  NamedTensors model;  // names without the "model." prefix
  NamedTensors optim;  // names without the "optim." prefix
  uint64_t rng_seed = 0;  // Generator::seed() and offset(): Generator::set_state restores them
  uint64_t rng_offset = 0;
  nlohmann::json data_loader;
  nlohmann::json extra;
  std::string config;
};

// <dir>/ckpt-<step>.safetensors
std::filesystem::path checkpoint_path(const std::filesystem::path& dir, int64_t step);

// Writes ckpt-<step>.safetensors into `dir` (created if needed) atomically. Once it is durable,
// deletes checkpoints with a smaller step beyond the newest `keep_last_k` (counting the new one);
// keep_last_k <= 0 keeps everything. Checkpoints with a larger step are left alone. Returns the
// new file's path.
std::filesystem::path save_checkpoint(const std::filesystem::path& dir, int64_t step,
                                      const CheckpointContents& contents, int keep_last_k);

// The ckpt-<step>.safetensors files in `dir`, by ascending step; none if `dir` does not exist.
std::vector<std::pair<int64_t, std::filesystem::path>> list_checkpoints(const std::filesystem::path& dir);

// The newest checkpoint in `dir` that loads and passes its checksum. Ones that fail are skipped
// with a line on stderr naming the file and the problem. Reads each candidate in full.
std::optional<std::filesystem::path> latest_valid_checkpoint(const std::filesystem::path& dir);

// Loads (CPU tensors) and verifies; errors name the file and the problem.
CheckpointContents load_checkpoint(const std::filesystem::path& path);

}  // namespace kiln::io
