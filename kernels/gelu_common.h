// GELU with the tanh approximation (GPT-2's; PyTorch's approximate='tanh') in the compute type
// C, shared by the CPU elementwise gelu and the CPU linear epilogue so both give the same bits.
#pragma once

#include <cmath>

namespace kiln {

template <class C>
inline C gelu_tanh(C x) {
  const C beta = C(0.7978845608028654), kappa = C(0.044715);  // sqrt(2/pi); GELU's cubic
  return C(0.5) * x * (C(1) + std::tanh(beta * (x + kappa * x * x * x)));
}

}  // namespace kiln
