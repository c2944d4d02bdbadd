#include "core/autocast.h"

#include "core/tensor.h"

namespace kiln {

namespace {
thread_local bool t_enabled = false;
thread_local DType t_dtype = DType::bf16;
}  // namespace

bool autocast_enabled() { return t_enabled; }
DType autocast_dtype() { return t_dtype; }

AutocastGuard::AutocastGuard(DType dtype, bool enabled) : prev_enabled_(t_enabled), prev_dtype_(t_dtype) {
  KILN_CHECK(!enabled || dtype == DType::bf16 || dtype == DType::f16,
             "autocast: dtype must be bf16 or f16, got ", dtype_name(dtype));
  t_enabled = enabled;
  if (enabled) t_dtype = dtype;
}

AutocastGuard::~AutocastGuard() {
  t_enabled = prev_enabled_;
  t_dtype = prev_dtype_;
}

Tensor autocast_input(const Tensor& t) {
  if (!t_enabled || !t.defined() || t.dtype() != DType::f32) return t;
  return t.to(t_dtype);
}

}  // namespace kiln
