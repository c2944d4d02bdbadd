// GELU with the tanh approximation (GPT-2's; PyTorch's approximate='tanh') in the compute type
// C, shared by the CPU elementwise gelu and the CPU linear epilogue so both give the same bits.
// tanh is kernels/cpu/vec_math.h's, which vectorises (f32; f64 keeps std::tanh).
#pragma once

#include "kernels/cpu/vec_math.h"

namespace kiln {

template <class C>
inline C gelu_tanh(C x) {
  const C beta = C(0.7978845608028654), kappa = C(0.044715);  // sqrt(2/pi); GELU's cubic
  return C(0.5) * x * (C(1) + cpu::tanh_fast(beta * (x + kappa * x * x * x)));
}

}  // namespace kiln
