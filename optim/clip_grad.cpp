#include "optim/clip_grad.h"

#include <cmath>

#include "core/autograd.h"
#include "core/ops.h"

namespace kiln {

double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm) {
  KILN_CHECK(max_norm > 0.0, "clip_grad_norm_: max_norm must be > 0, got ", max_norm);
  NoGradGuard no_grad;
  std::vector<Tensor> grads, sums;
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    KILN_CHECK(p.defined(), "clip_grad_norm_: parameter ", i, " is undefined");
    Tensor g = p.grad();
    if (!g.defined()) continue;
    KILN_CHECK(is_floating(g.dtype()), "clip_grad_norm_: gradient ", g.meta_str(),
               " is not a floating tensor");
    grads.push_back(g);
    // One element per gradient, gathered on the first gradient's device (a no-op copy unless
    // the parameters span devices).
    const DType acc = accumulate_dtype(g.dtype());
    const Tensor gd = g.detach().to(acc);
    sums.push_back(sum(mul(gd, gd)).to(DType::f64).reshape({1}).to(grads[0].device()));
  }
  if (grads.empty()) return 0.0;
  const double total_norm = std::sqrt(sum(cat(sums, 0)).item());
  const double clip_coef = max_norm / (total_norm + 1e-6);
  if (std::isfinite(total_norm) && clip_coef < 1.0)
    for (Tensor& g : grads) g.mul_(clip_coef);
  return total_norm;
}

}  // namespace kiln
