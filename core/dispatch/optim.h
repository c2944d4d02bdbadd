// The fused Adam/AdamW update: every parameter of a list moves one step in one pass over
// its memory (param, grad, exp_avg and exp_avg_sq read once, three of them written once).
// The stub object is defined in optim/fused_step.cpp, which checks the lists first. The
// per-element formula lives here, once, so the CPU and CUDA kernels cannot drift apart.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "core/dispatch.h"
#include "core/host_device.h"
#include "core/tensor.h"

namespace kiln {

// For every i, elementwise (PyTorch's torch.optim.Adam / AdamW with amsgrad off), with
// bc1 = 1 - beta1^step and bc2 = 1 - beta2^step:
//   decoupled:  p *= 1 - lr*weight_decay                  (AdamW)
//   otherwise:  g += weight_decay * p                      (Adam: L2 added to the gradient)
//   m = beta1*m + (1 - beta1)*g
//   v = beta2*v + (1 - beta2)*g*g
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
// The four lists are equally long; entry i of each has the shape, dtype and device of
// params[i]; all are contiguous, on one device, f32 or f64. `step` is the step being taken
// (1 for the first). Empty lists are fine.
extern DispatchStub<void(std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                         std::vector<Tensor>& exp_avgs, std::vector<Tensor>& exp_avg_sqs, double lr,
                         double beta1, double beta2, double eps, double weight_decay, int64_t step,
                         bool decoupled)>
    adamw_stub;

// The step's constants in the arithmetic type A (f32 for f32 parameters). Derived in double
// on the host first, as PyTorch derives them in Python floats, then rounded once.
template <class A>
struct AdamConstants {
  A beta1, one_minus_beta1, beta2, one_minus_beta2, eps;
  A weight_decay;  // Adam: the L2 coefficient
  A decay_factor;  // AdamW: 1 - lr*weight_decay
  A step_size;     // lr / bc1
  A bc2_sqrt;      // sqrt(bc2)
  bool decoupled;
};

template <class A>
AdamConstants<A> adam_constants(double lr, double beta1, double beta2, double eps,
                                double weight_decay, int64_t step, bool decoupled) {
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  return {static_cast<A>(beta1),
          static_cast<A>(1.0 - beta1),
          static_cast<A>(beta2),
          static_cast<A>(1.0 - beta2),
          static_cast<A>(eps),
          static_cast<A>(weight_decay),
          static_cast<A>(1.0 - lr * weight_decay),
          static_cast<A>(lr / bc1),
          static_cast<A>(std::sqrt(bc2)),
          decoupled};
}

KILN_HOST_DEVICE inline float adam_sqrt(float x) { return sqrtf(x); }
KILN_HOST_DEVICE inline double adam_sqrt(double x) { return sqrt(x); }

// One element of the update above, in the operation order of PyTorch's single-tensor loop
// (mul_ then add_, addcmul_, sqrt / bc2_sqrt + eps, addcdiv_).
template <class A>
KILN_HOST_DEVICE inline void adam_update_element(A& p, A g, A& m, A& v, const AdamConstants<A>& c) {
  if (c.decoupled)
    p = p * c.decay_factor;
  else
    g = g + c.weight_decay * p;
  m = m * c.beta1 + c.one_minus_beta1 * g;
  v = v * c.beta2 + c.one_minus_beta2 * g * g;
  const A denom = adam_sqrt(v) / c.bc2_sqrt + c.eps;
  p = p + (-c.step_size) * m / denom;
}

}  // namespace kiln
