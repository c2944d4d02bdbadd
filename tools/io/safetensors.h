// The safetensors format (huggingface/safetensors), byte for byte, so that kiln's weights open
// in PyTorch/NumPy and theirs open in kiln:
//   8 bytes   N, the header length, little-endian uint64
//   N bytes   JSON: {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]},
//                    ..., "__metadata__": {"<key>": "<string value>"}}, space-padded to 8 bytes
//   the rest  the data buffer: each tensor's bytes, contiguous, row-major, little-endian, at
//             [begin, end) of the buffer; together the tensors cover it exactly
// Reading checks every one of those promises and names the file and tensor that breaks one.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace kiln::io {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;
using SafetensorsMetadata = std::map<std::string, std::string>;

struct SafetensorsContents {
  NamedTensors tensors;  // CPU tensors, in the order of their bytes in the file
  SafetensorsMetadata metadata;
};

// Writes `tensors` (any device, any strides; copied to contiguous CPU memory as needed) in the
// order given, atomically (see atomic_file.h). Names must be unique and not "__metadata__".
void save_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                      const SafetensorsMetadata& metadata = {});

SafetensorsContents load_safetensors(const std::filesystem::path& path);

// "F32", "BF16", "BOOL", ... for a kiln dtype, and back; an unknown name fails with the list
// of known ones.
std::string_view safetensors_dtype_name(DType dtype);
DType parse_safetensors_dtype(std::string_view name);

}  // namespace kiln::io
