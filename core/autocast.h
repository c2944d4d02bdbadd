// Autocast, like torch.autocast: inside an AutocastGuard(DType::bf16) scope, the GEMM-shaped ops
// (matmul, bmm, linear, scaled_dot_product_attention) cast their floating inputs to the autocast
// dtype and return that dtype; every other op keeps its inputs' dtypes (layer_norm, softmax and the
// losses accumulate in f32 whatever they are given). The casts are ordinary differentiable ops, so
// f32 master weights still receive f32 gradients. Thread-local, nestable, off by default.
#pragma once

#include "core/dtype.h"

namespace kiln {

bool autocast_enabled();
DType autocast_dtype();  // meaningful when enabled: bf16 or f16

class AutocastGuard {
 public:
  explicit AutocastGuard(DType dtype, bool enabled = true);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool prev_enabled_;
  DType prev_dtype_;
};

// What an autocast-aware op does with a floating input: casts it to the autocast dtype when
// autocast is on and the input is f32 (f64 inputs stay f64, for gradchecks); else returns it.
class Tensor;
Tensor autocast_input(const Tensor& t);

}  // namespace kiln
