// Gradient clipping by global L2 norm, torch.nn.utils.clip_grad_norm_.
#pragma once

#include <vector>

#include "core/tensor.h"

namespace kiln {

// total_norm = sqrt(sum over params of sum(grad^2)), parameters without a gradient left out.
// When max_norm / (total_norm + 1e-6) < 1 every gradient is scaled by that factor in place.
// Returns total_norm (0 when no parameter has a gradient). Each parameter's sum of squares
// stays on its device (accumulated in f32, f64 for f64 gradients); only the final sum comes
// to the host, in one transfer. A non-finite total leaves the gradients as they are (the
// caller sees it in the return value and may skip the step).
double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm);

}  // namespace kiln
