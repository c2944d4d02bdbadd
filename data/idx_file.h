// Reading IDX files, the format MNIST and Fashion-MNIST ship in (LeCun et al.): a 4-byte magic
// number 0x0000TTDD (TT: element type, 0x08 = unsigned byte; DD: number of dims), then DD
// big-endian 32-bit sizes, then the elements row-major. Files may be gzip-compressed (.gz) or
// raw; zlib reads both through one path.
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"

namespace kiln {

inline constexpr uint32_t kIdxImagesMagic = 0x00000803;  // u8, 3 dims: [N, rows, cols]
inline constexpr uint32_t kIdxLabelsMagic = 0x00000801;  // u8, 1 dim: [N]

// u8 [N, rows, cols] on the CPU. Throws kiln::Error naming `path` when the file is missing or
// unreadable, has the wrong magic number, or is shorter or longer than its header says.
Tensor read_idx_images(const std::string& path);

// u8 [N] on the CPU, with the same checks.
Tensor read_idx_labels(const std::string& path);

}  // namespace kiln
