// SummaryWriter: scalars for TensorBoard, as PyTorch's torch.utils.tensorboard writes them,
// without a TensorFlow or protobuf dependency. The file is
//   <run dir>/events.out.tfevents.<unix time>.<hostname>
// a TFRecord stream (per record: uint64 length, masked CRC-32C of the length, the bytes, masked
// CRC-32C of the bytes) of serialized tensorflow.Event protos, the first one announcing
// file_version "brain.Event:2".
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>

namespace kiln::io {

class SummaryWriter {
 public:
  // Creates the run directory if needed and a new event file in it.
  explicit SummaryWriter(const std::filesystem::path& run_dir);
  ~SummaryWriter();  // flushes
  SummaryWriter(const SummaryWriter&) = delete;
  SummaryWriter& operator=(const SummaryWriter&) = delete;

  // One point of the curve `tag` (e.g. "train/loss"), stamped with the current wall time.
  void add_scalar(std::string_view tag, double value, int64_t step);
  // Hands buffered records to the OS, so a TensorBoard watching the directory sees them.
  void flush();

  const std::filesystem::path& path() const { return path_; }

 private:
  void write_record(const std::string& event);

  std::filesystem::path path_;
  std::FILE* file_ = nullptr;
};

}  // namespace kiln::io
