#include "nn/dropout.h"

#include <sstream>

#include "core/ops.h"

namespace kiln::nn {

Dropout::Dropout(double p) : Module("Dropout"), p_(p) {
  KILN_CHECK(p >= 0 && p <= 1, "Dropout: p must be in [0, 1], got ", p);
}

Tensor Dropout::forward(const Tensor& x) { return dropout(x, p_, is_training()); }

std::string Dropout::extra_repr() const {
  std::ostringstream os;
  os << "p=" << p_;
  return os.str();
}

}  // namespace kiln::nn
