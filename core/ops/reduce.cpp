// Reductions: sum, mean, max, min, argmax, argmin, var, and sum_to (the gradient of
// broadcasting). Each op brings its input into the [outer, reduced, inner] form the kernels
// take (core/dispatch/reduce.h), runs the kernel, and records its backward.
#include "core/dispatch/reduce.h"

#include <algorithm>
#include <limits>

#include "core/autograd.h"
#include "core/ops.h"

namespace kiln {

DispatchStub<void(ReduceOp op, Tensor& out, const Tensor& in, int64_t outer, int64_t reduced,
                  int64_t inner, int64_t correction)>
    reduce_stub{"reduce"};

namespace {

// What one reduction does: which dims it folds, the shapes around it, and the contiguous
// [outer, reduced, inner] input the kernel walks.
struct ReducePlan {
  std::vector<int64_t> dims;  // wrapped, sorted, unique
  Shape keep_shape;           // input shape with the reduced dims set to 1
  Shape out_shape;            // keep_shape, or keep_shape without the reduced dims
  Tensor input;               // detached and contiguous
  int64_t outer = 1, reduced = 1, inner = 1;
};

ReducePlan plan_reduction(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim,
                          const char* op) {
  const int64_t nd = x.dim();
  const Shape& shape = x.shape();
  std::vector<bool> is_reduced(nd, dims.empty());
  for (int64_t d : dims) {
    // A 0-d tensor accepts dim 0 / -1, as in PyTorch; there is nothing to fold.
    const int64_t w = wrap_dim(d, std::max<int64_t>(nd, 1), op);
    if (nd > 0) is_reduced[w] = true;
  }

  ReducePlan p;
  for (int64_t d = 0; d < nd; ++d) {
    if (is_reduced[d]) {
      p.dims.push_back(d);
      p.keep_shape.push_back(1);
      if (keepdim) p.out_shape.push_back(1);
    } else {
      p.keep_shape.push_back(shape[d]);
      p.out_shape.push_back(shape[d]);
    }
  }

  // Size-1 dims do not matter for the layout: a block of reduced dims may contain kept
  // size-1 dims, and reduced size-1 dims need no folding.
  int64_t lo = nd, hi = -1;
  for (int64_t d = 0; d < nd; ++d) {
    if (is_reduced[d] && shape[d] != 1) {
      lo = std::min(lo, d);
      hi = std::max(hi, d);
    }
  }
  bool one_block = true;
  for (int64_t d = lo; d <= hi; ++d) one_block = one_block && (is_reduced[d] || shape[d] == 1);

  Tensor xd = x.detach();
  if (hi < 0) {  // nothing of size > 1 to fold: every output is one input element
    p.input = xd.contiguous();
    p.outer = x.numel();
  } else if (one_block && xd.is_contiguous()) {
    p.input = xd;
    for (int64_t d = 0; d < lo; ++d) p.outer *= shape[d];
    for (int64_t d = lo; d <= hi; ++d) p.reduced *= shape[d];
    for (int64_t d = hi + 1; d < nd; ++d) p.inner *= shape[d];
  } else {
    // Kept dims first (in order, so the result is already laid out like the output), then
    // the reduced dims: a copy, after which every row is contiguous.
    std::vector<int64_t> perm;
    for (int64_t d = 0; d < nd; ++d)
      if (!is_reduced[d]) perm.push_back(d);
    for (int64_t d = 0; d < nd; ++d)
      if (is_reduced[d]) perm.push_back(d);
    p.input = xd.permute(perm).contiguous();
    for (int64_t d = 0; d < nd; ++d) (is_reduced[d] ? p.reduced : p.outer) *= shape[d];
  }
  return p;
}

Tensor run_reduction(ReduceOp op, const ReducePlan& p, DType out_dtype, int64_t correction = 0) {
  Tensor out = Tensor::empty(p.out_shape, {out_dtype, p.input.device()});
  if (p.input.numel() == 0) {
    // Folding nothing: 0 for a sum, NaN for mean and var (max and min refuse earlier).
    if (out.numel() > 0) out.fill_(op == ReduceOp::sum ? 0.0 : std::numeric_limits<double>::quiet_NaN());
    return out;
  }
  reduce_stub(p.input.device(), op, out, p.input, p.outer, p.reduced, p.inner, correction);
  return out;
}

// The output gradient broadcast back over the reduced dims (a view, no copy).
Tensor expand_grad(const Tensor& g, const Shape& keep_shape, const Shape& in_shape) {
  return g.reshape(keep_shape).expand(in_shape);
}

void check_floating(const Tensor& x, const char* op) {
  KILN_CHECK(is_floating(x.dtype()), op, "(): input must be a floating type, got ", x.meta_str(),
             " (convert it with .to(DType::f32) first)");
}

void check_not_empty(const ReducePlan& p, const Tensor& x, const char* op) {
  KILN_CHECK(p.reduced > 0, op, "(): cannot reduce over a zero-size dimension of ", x.meta_str());
}

// max and min: the gradient goes to the elements equal to the result, shared evenly among ties.
Tensor extreme(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim, bool is_max) {
  const char* name = is_max ? "max" : "min";
  ReducePlan p = plan_reduction(x, dims, keepdim, name);
  check_not_empty(p, x, name);
  Tensor out = run_reduction(is_max ? ReduceOp::max : ReduceOp::min, p, x.dtype());
  if (is_floating(x.dtype())) {
    record(is_max ? "MaxBackward" : "MinBackward", out, {&x},
           [xs = SavedTensor(x), ys = SavedTensor(out.detach()), dims = p.dims,
            keep = p.keep_shape, name](const Tensor& g) -> std::vector<Tensor> {
             Tensor xv = xs.unpack(name), yv = ys.unpack(name).reshape(keep);
             Tensor mask = eq(xv, yv).to(xv.dtype());
             Tensor count = sum(mask, dims, /*keepdim=*/true);
             return {mask * (g.reshape(keep) / count)};
           });
  }
  return out;
}

Tensor arg_extreme(const Tensor& x, int64_t dim, bool keepdim, bool is_max) {
  const char* name = is_max ? "argmax" : "argmin";
  ReducePlan p = plan_reduction(x, {dim}, keepdim, name);
  check_not_empty(p, x, name);
  return run_reduction(is_max ? ReduceOp::argmax : ReduceOp::argmin, p, DType::i64);
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  // Integer and bool sums count in i64, like PyTorch; the kernel sums one dtype into itself.
  const bool floating = is_floating(x.dtype());
  // Separate blocks of reduced dims (a bias gradient: NCHW over {0, 2, 3}): fold the innermost
  // block first, in place, then the rest, instead of a permuting copy of the whole input.
  if (floating && x.is_contiguous() && dims.size() > 1) {
    std::vector<int64_t> sorted;
    for (int64_t d : dims) sorted.push_back(wrap_dim(d, x.dim(), "sum"));
    std::sort(sorted.begin(), sorted.end());
    sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
    size_t first = sorted.size() - 1;
    while (first > 0 && sorted[first - 1] == sorted[first] - 1) --first;
    if (first > 0) {
      const std::vector<int64_t> inner(sorted.begin() + first, sorted.end());
      const std::vector<int64_t> outer(sorted.begin(), sorted.begin() + first);
      Tensor folded = sum(sum(x, inner, /*keepdim=*/true), outer, /*keepdim=*/true);
      if (keepdim) return folded;
      Shape out_shape;
      for (int64_t d = 0; d < x.dim(); ++d)
        if (!std::binary_search(sorted.begin(), sorted.end(), d)) out_shape.push_back(x.size(d));
      return folded.reshape(out_shape);
    }
  }
  Tensor in = floating || x.dtype() == DType::i64 ? x : x.detach().to(DType::i64);
  ReducePlan p = plan_reduction(in, dims, keepdim, "sum");
  Tensor out = run_reduction(ReduceOp::sum, p, in.dtype());
  if (floating) {
    record("SumBackward", out, {&x},
           [keep = p.keep_shape, shape = x.shape()](const Tensor& g) -> std::vector<Tensor> {
             return {expand_grad(g, keep, shape)};
           });
  }
  return out;
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  check_floating(x, "mean");
  ReducePlan p = plan_reduction(x, dims, keepdim, "mean");
  Tensor out = run_reduction(ReduceOp::mean, p, x.dtype());
  record("MeanBackward", out, {&x},
         [keep = p.keep_shape, shape = x.shape(), n = p.reduced](const Tensor& g)
             -> std::vector<Tensor> { return {expand_grad(g, keep, shape) / static_cast<double>(n)}; });
  return out;
}

Tensor max(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return extreme(x, dims, keepdim, /*is_max=*/true);
}

Tensor min(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return extreme(x, dims, keepdim, /*is_max=*/false);
}

Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) {
  return arg_extreme(x, dim, keepdim, /*is_max=*/true);
}

Tensor argmin(const Tensor& x, int64_t dim, bool keepdim) {
  return arg_extreme(x, dim, keepdim, /*is_max=*/false);
}

Tensor var(const Tensor& x, const std::vector<int64_t>& dims, int64_t correction, bool keepdim) {
  check_floating(x, "var");
  KILN_CHECK(correction >= 0, "var(): correction must be >= 0, got ", correction);
  ReducePlan p = plan_reduction(x, dims, keepdim, "var");
  Tensor out = run_reduction(ReduceOp::var, p, x.dtype(), correction);
  // d var / dx = 2 (x - mean) / (n - correction); inf/nan when n <= correction, as in PyTorch.
  const double scale = 2.0 / static_cast<double>(std::max<int64_t>(p.reduced - correction, 0));
  record("VarBackward", out, {&x},
         [xs = SavedTensor(x), dims = p.dims, keep = p.keep_shape, scale](const Tensor& g)
             -> std::vector<Tensor> {
           Tensor xv = xs.unpack("VarBackward");
           return {(xv - mean(xv, dims, /*keepdim=*/true)) * (g.reshape(keep) * scale)};
         });
  return out;
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  const int64_t nd = x.dim();
  const int64_t target_nd = static_cast<int64_t>(shape.size());
  KILN_CHECK(target_nd <= nd, "sum_to: cannot sum ", x.meta_str(), " to ", shape_str(shape));
  const int64_t lead = nd - target_nd;
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < lead; ++d) dims.push_back(d);
  for (int64_t i = 0; i < target_nd; ++i) {
    const int64_t have = x.size(lead + i);
    if (shape[i] == have) continue;
    KILN_CHECK(shape[i] == 1, "sum_to: cannot sum ", x.meta_str(), " to ", shape_str(shape),
               " (dim ", i, " is neither equal nor 1)");
    dims.push_back(lead + i);
  }
  if (dims.empty()) return x.shape() == shape ? x : x.reshape(shape);
  // keepdim, so the remaining dims line up with `shape`; the leading ones (all 1) drop out.
  return sum(x, dims, /*keepdim=*/true).reshape(shape);
}

}  // namespace kiln
