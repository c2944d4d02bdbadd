// What the CPU and CUDA transformer kernels (kernels/cpu/transformer.cpp,
// kernels/cuda/{embedding,layernorm,classifier}.cu) share: the checks of what core/ops hands
// them (core/dispatch/transformer.h), so a wrong call fails the same way on either device.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "core/dispatch/transformer.h"
#include "core/error.h"
#include "core/tensor.h"

namespace kiln {

// The data of an optional tensor, or null when it is undefined.
template <class T>
T* data_or_null_mut(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr;
}

inline void check_embedding_args(const Tensor& rows, const Tensor& table, const Tensor& indices,
                                 const char* what) {
  KILN_CHECK(table.dim() == 2 && table.is_contiguous() && rows.dim() == 2 && rows.is_contiguous() &&
                 rows.size(1) == table.size(1) && rows.dtype() == table.dtype() &&
                 indices.dim() == 1 && indices.is_contiguous() && indices.size(0) == rows.size(0) &&
                 rows.device() == table.device() && indices.device() == table.device(),
             what, ": table ", table.meta_str(), ", rows ", rows.meta_str(), ", indices ",
             indices.meta_str());
}

// Each of `ts` is undefined or a contiguous tensor of `numel` elements of the accumulation
// dtype on x's device.
inline void check_acc_vectors(std::initializer_list<const Tensor*> ts, const Tensor& x, int64_t numel,
                              const char* what) {
  const DType acc = accumulate_dtype(x.dtype());
  for (const Tensor* t : ts) {
    KILN_CHECK(!t->defined() || (t->is_contiguous() && t->dtype() == acc && t->numel() == numel &&
                                 t->device() == x.device()),
               what, ": ", t->meta_str(), " (expected contiguous ", acc, "[", numel, "] on ",
               x.device(), ")");
  }
}

// Each of `ts` is undefined or a contiguous tensor of x's shape, dtype and device.
inline void check_like(std::initializer_list<const Tensor*> ts, const Tensor& x, const char* what) {
  for (const Tensor* t : ts) {
    KILN_CHECK(!t->defined() || (t->is_contiguous() && t->dtype() == x.dtype() &&
                                 t->shape() == x.shape() && t->device() == x.device()),
               what, ": ", t->meta_str(), " (expected contiguous ", x.meta_str(), ")");
  }
}

inline void check_layer_norm_args(const Tensor& y, const Tensor& mean, const Tensor& rstd, const Tensor& sum,
                                  const Tensor& x, const Tensor& residual, const Tensor& weight,
                                  const Tensor& bias) {
  const char* what = "layer_norm kernel";
  KILN_CHECK(x.dim() == 2 && x.is_contiguous() && is_floating(x.dtype()), what, ": x ", x.meta_str());
  KILN_CHECK(residual.defined() == sum.defined(), what, ": residual and sum go together");
  check_like({&y, &sum, &residual}, x, what);
  check_acc_vectors({&mean, &rstd}, x, x.size(0), what);
  check_acc_vectors({&weight, &bias}, x, x.size(1), what);
}

inline void check_layer_norm_backward_args(const Tensor& dx, const Tensor& dweight, const Tensor& dbias,
                                           const Tensor& dy, const Tensor& x, const Tensor& mean,
                                           const Tensor& rstd, const Tensor& weight) {
  const char* what = "layer_norm backward kernel";
  KILN_CHECK(x.dim() == 2 && x.is_contiguous() && is_floating(x.dtype()), what, ": x ", x.meta_str());
  check_like({&dx, &dy}, x, what);
  KILN_CHECK(dy.defined() && mean.defined() && rstd.defined(), what, ": dy, mean and rstd are needed");
  check_acc_vectors({&mean, &rstd}, x, x.size(0), what);
  check_acc_vectors({&weight, &dweight, &dbias}, x, x.size(1), what);
}

inline void check_fused_cross_entropy_args(const Tensor& losses, const Tensor& dlogits, const Tensor& logits,
                                           const Tensor& targets, const Tensor& grad_scale,
                                           int64_t valid_classes) {
  const char* what = "fused_cross_entropy kernel";
  KILN_CHECK(logits.dim() == 2 && logits.is_contiguous() && is_floating(logits.dtype()), what,
             ": logits ", logits.meta_str());
  KILN_CHECK(targets.dim() == 1 && targets.is_contiguous() && targets.size(0) == logits.size(0) &&
                 targets.device() == logits.device() &&
                 (targets.dtype() == DType::i32 || targets.dtype() == DType::i64),
             what, ": targets ", targets.meta_str(), " for logits ", logits.meta_str());
  KILN_CHECK(valid_classes >= 1 && valid_classes <= logits.size(1), what, ": valid_classes ",
             valid_classes, " for logits ", logits.meta_str());
  check_like({&dlogits}, logits, what);
  check_acc_vectors({&losses}, logits, logits.size(0), what);
  check_acc_vectors({&grad_scale}, logits, 1, what);
  KILN_CHECK(losses.defined() && grad_scale.defined(), what, ": losses and grad_scale are needed");
}

}  // namespace kiln
