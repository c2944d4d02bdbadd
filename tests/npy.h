// .npy files (format version 1.0), the exchange format of the PyTorch parity tests: kiln
// writes inputs and weights, the reference script (numpy) writes its results back.
#pragma once

#include <filesystem>
#include <vector>

#include "core/shape.h"
#include "core/tensor.h"

namespace kiln::testing {

// Writes a CPU tensor of dtype f64, f32 or i64 as a C-order little-endian array.
void write_npy(const std::filesystem::path& path, const Tensor& t);

struct NpyArray {
  Shape shape;
  std::vector<double> values;  // row-major, converted to double
};

// Reads a C-order little-endian array of f8, f4 or i8 (what numpy writes by default).
NpyArray read_npy(const std::filesystem::path& path);

}  // namespace kiln::testing
