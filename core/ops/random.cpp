// Random tensors. The generator hands out an offset per draw; the numbers are a pure
// function of (seed, offset, element index), so CPU and CUDA agree for one seed.
#include "core/dispatch/random.h"
#include "core/generator.h"
#include "core/ops.h"

namespace kiln {

DispatchStub<void(Tensor& out, RandomDist dist, uint64_t seed, uint64_t offset, double a, double b)>
    random_stub{"random"};

namespace {

void fill_random(Tensor& t, RandomDist dist, double a, double b, Generator* gen) {
  Generator& g = gen ? *gen : default_generator();
  const uint64_t seed = g.seed();
  const uint64_t offset = g.advance(static_cast<uint64_t>(t.numel()));
  if (t.is_contiguous()) {
    random_stub(t.device(), t, dist, seed, offset, a, b);
  } else {
    Tensor tmp = empty_like(t);
    random_stub(t.device(), tmp, dist, seed, offset, a, b);
    t.copy_(tmp);
  }
  t.bump_version();
}

Tensor make_random(const Shape& shape, TensorOptions opts, RandomDist dist, double a, double b,
                   Generator* gen) {
  const bool rg = opts.requires_grad;
  opts.requires_grad = false;
  Tensor t = Tensor::empty(shape, opts);
  fill_random(t, dist, a, b, gen);
  if (rg) t.requires_grad_(true);
  return t;
}

}  // namespace

Tensor rand(const Shape& shape, TensorOptions opts, Generator* gen) {
  KILN_CHECK(is_floating(opts.dtype), "rand: dtype must be floating, got ", opts.dtype);
  return make_random(shape, opts, RandomDist::uniform, 0.0, 1.0, gen);
}

Tensor randn(const Shape& shape, TensorOptions opts, Generator* gen) {
  KILN_CHECK(is_floating(opts.dtype), "randn: dtype must be floating, got ", opts.dtype);
  return make_random(shape, opts, RandomDist::normal, 0.0, 1.0, gen);
}

Tensor randint(int64_t low, int64_t high, const Shape& shape, TensorOptions opts, Generator* gen) {
  KILN_CHECK(low < high, "randint: empty range [", low, ", ", high, ")");
  return make_random(shape, opts, RandomDist::integer, static_cast<double>(low),
                     static_cast<double>(high), gen);
}

Tensor& uniform_(Tensor& t, double low, double high, Generator* gen) {
  KILN_CHECK(is_floating(t.dtype()), "uniform_: needs a floating tensor, got ", t.meta_str());
  fill_random(t, RandomDist::uniform, low, high, gen);
  return t;
}

Tensor& normal_(Tensor& t, double mean, double std, Generator* gen) {
  KILN_CHECK(is_floating(t.dtype()), "normal_: needs a floating tensor, got ", t.meta_str());
  fill_random(t, RandomDist::normal, mean, std, gen);
  return t;
}

}  // namespace kiln
