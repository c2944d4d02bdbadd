// Inverted dropout: kept elements are scaled by 1 / (1 - p) in training, so eval is the
// identity. The mask is never stored: backward regenerates it from the (seed, offset) the
// forward drew (core/dispatch/dropout.h).
#include "core/dispatch/dropout.h"

#include "core/autograd.h"
#include "core/generator.h"
#include "core/ops.h"

namespace kiln {

DispatchStub<void(Tensor& out, const Tensor& in, uint64_t seed, uint64_t offset, uint32_t threshold,
                  double scale)>
    dropout_stub{"dropout"};

namespace {

// The masked, scaled copy of `in` for the draw at (seed, offset).
Tensor apply_mask(const Tensor& in, uint64_t seed, uint64_t offset, uint32_t threshold,
                  double scale) {
  const Tensor x = in.detach().contiguous();
  Tensor out = Tensor::empty(x.shape(), x.options());
  if (out.numel() > 0) dropout_stub(x.device(), out, x, seed, offset, threshold, scale);
  return out;
}

}  // namespace

Tensor dropout(const Tensor& x, double p, bool training, Generator* gen) {
  KILN_CHECK(p >= 0 && p <= 1, "dropout: probability has to be between 0 and 1, got ", p);
  KILN_CHECK(is_floating(x.dtype()), "dropout: input must be a floating type, got ", x.meta_str());
  if (!training || p == 0) return x;
  // Everything dropped: multiplying by 0 keeps the graph (gradient 0) and, as in PyTorch,
  // lets a NaN or inf input show up as NaN.
  if (p == 1) return mul(x, 0.0);

  Generator& g = gen ? *gen : default_generator();
  const uint64_t seed = g.seed();
  const uint64_t offset = g.advance(static_cast<uint64_t>(x.numel()));
  const uint32_t threshold = dropout_threshold(p);
  const double scale = 1.0 / (1.0 - p);
  Tensor out = apply_mask(x, seed, offset, threshold, scale);
  const DType dtype = x.dtype();
  record("DropoutBackward", out, {&x},
         [seed, offset, threshold, scale, dtype](const Tensor& grad) -> std::vector<Tensor> {
           return {apply_mask(grad.to(dtype), seed, offset, threshold, scale)};
         });
  return out;
}

}  // namespace kiln
