// embedding, layer_norm, add_layer_norm and fused_cross_entropy: the ops of a GPT-2 block
// that are not matmuls or attention. This file checks arguments, brings inputs to the
// contiguous 2-D forms the kernels take (core/dispatch/transformer.h) and records the
// backward passes; the kernels live in kernels/cpu/transformer.cpp and
// kernels/cuda/{embedding,layernorm,classifier}.cu.
#include "core/dispatch/transformer.h"

#include <string>
#include <utility>

#include "core/autograd.h"
#include "core/ops.h"

namespace kiln {

DispatchStub<void(Tensor& out, const Tensor& weight, const Tensor& indices)> embedding_stub{"embedding"};
DispatchStub<void(Tensor& grad_weight, const Tensor& grad_out, const Tensor& indices)>
    embedding_backward_stub{"embedding_backward"};
DispatchStub<void(Tensor& y, Tensor& mean, Tensor& rstd, Tensor& sum, const Tensor& x,
                  const Tensor& residual, const Tensor& weight, const Tensor& bias, double eps)>
    layer_norm_stub{"layer_norm"};
DispatchStub<void(Tensor& dx, Tensor& dweight, Tensor& dbias, const Tensor& dy, const Tensor& x,
                  const Tensor& mean, const Tensor& rstd, const Tensor& weight)>
    layer_norm_backward_stub{"layer_norm_backward"};
DispatchStub<void(Tensor& losses, Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                  const Tensor& grad_scale, int64_t valid_classes, int64_t ignore_index)>
    fused_cross_entropy_stub{"fused_cross_entropy"};

namespace {

void check_index_tensor(const Tensor& indices, const Tensor& other, const char* op, const char* name) {
  KILN_CHECK(indices.dtype() == DType::i64 || indices.dtype() == DType::i32, op, ": ", name,
             " must be integer indices (i64 or i32), got ", indices.meta_str());
  KILN_CHECK(indices.device() == other.device(), op, ": ", name, " ", indices.meta_str(), " and ",
             other.meta_str(), " are on different devices");
}

// ---------------------------------------------------------------- layer norm
constexpr const char* kLayerNormNode = "LayerNormBackward";

void check_layer_norm_param(const Tensor& p, const char* name, const Tensor& x, const char* op) {
  if (!p.defined()) return;
  const int64_t c = x.size(-1);
  KILN_CHECK(p.dim() == 1 && p.size(0) == c, op, ": ", name, " ", p.meta_str(),
             " does not match the last dim of ", x.meta_str(), " (expected [", c, "])");
  KILN_CHECK(is_floating(p.dtype()), op, ": ", name, " must be a floating type, got ", p.meta_str());
  KILN_CHECK(p.device() == x.device(), op, ": ", name, " ", p.meta_str(), " is not on the device of ",
             x.meta_str());
}

void check_layer_norm_input(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                            const char* op) {
  KILN_CHECK(x.dim() >= 1 && x.size(-1) > 0, op, ": input needs a non-empty last dim, got ", x.meta_str());
  KILN_CHECK(is_floating(x.dtype()), op, ": input must be a floating type, got ", x.meta_str());
  KILN_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps);
  check_layer_norm_param(weight, "weight", x, op);
  check_layer_norm_param(bias, "bias", x, op);
}

// A per-channel parameter as the kernels read it (accumulation dtype, contiguous, cut from
// the graph); undefined stays undefined.
Tensor as_param(const Tensor& p, DType acc) { return p.defined() ? p.detach().to(acc).contiguous() : Tensor(); }

// Normalises the contiguous 2-D `rows` (already x, or x + residual written to `sum`), and
// records the backward of `out` with respect to `input` (the graph tensor `rows` holds the
// values of), weight and bias.
Tensor normalize_rows(const Tensor& input, const Tensor& x2d, const Tensor& residual2d, Tensor& sum2d,
                      const Tensor& weight, const Tensor& bias, double eps, const Shape& out_shape) {
  const DType acc = accumulate_dtype(x2d.dtype());
  const int64_t rows = x2d.size(0);
  const Tensor w = as_param(weight, acc), b = as_param(bias, acc);
  Tensor out = Tensor::empty(out_shape, x2d.options());
  Tensor mean = Tensor::empty({rows}, {acc, x2d.device()});
  Tensor rstd = Tensor::empty({rows}, {acc, x2d.device()});
  if (rows > 0) {
    Tensor out2d = out.view(x2d.shape());
    layer_norm_stub(x2d.device(), out2d, mean, rstd, sum2d, x2d, residual2d, w, b, eps);
  }
  // The values normalised: x itself, or the sum the kernel just wrote.
  const Tensor normed_input = residual2d.defined() ? sum2d : x2d;
  const bool need_dx = input.requires_grad();
  const bool need_dw = weight.defined() && weight.requires_grad();
  const bool need_db = bias.defined() && bias.requires_grad();
  const DType weight_dtype = weight.defined() ? weight.dtype() : acc;
  const DType bias_dtype = bias.defined() ? bias.dtype() : acc;
  const Shape in_shape = input.shape();
  record(kLayerNormNode, out, {&input, &weight, &bias},
         [xs = SavedTensor(normed_input), ms = SavedTensor(mean), rs = SavedTensor(rstd),
          ws = SavedTensor(w), need_dx, need_dw, need_db, acc, weight_dtype, bias_dtype,
          in_shape](const Tensor& grad) -> std::vector<Tensor> {
           const Tensor xv = xs.unpack(kLayerNormNode), mv = ms.unpack(kLayerNormNode);
           const Tensor rv = rs.unpack(kLayerNormNode), wv = ws.unpack(kLayerNormNode);
           const Tensor dy = grad.to(xv.dtype()).contiguous().view(xv.shape());
           const Device dev = xv.device();
           const int64_t c = xv.size(1);
           Tensor dx = need_dx ? Tensor::empty(xv.shape(), xv.options()) : Tensor();
           Tensor dw = need_dw ? Tensor::empty({c}, {acc, dev}) : Tensor();
           Tensor db = need_db ? Tensor::empty({c}, {acc, dev}) : Tensor();
           if (xv.size(0) > 0) {
             layer_norm_backward_stub(dev, dx, dw, db, dy, xv, mv, rv, wv);
           } else {  // no rows: the parameter gradients are empty sums
             if (dw.defined()) dw.zero_();
             if (db.defined()) db.zero_();
           }
           return {need_dx ? dx.view(in_shape) : Tensor(), need_dw ? dw.to(weight_dtype) : Tensor(),
                   need_db ? db.to(bias_dtype) : Tensor()};
         });
  return out;
}

// ---------------------------------------------------------------- cross-entropy
constexpr const char* kFusedCrossEntropyNode = "FusedCrossEntropyBackward";

}  // namespace

// ================================================================ embedding
Tensor embedding(const Tensor& weight, const Tensor& indices) {
  const char* op = "embedding";
  KILN_CHECK(weight.dim() == 2, op, ": weight must be [num_embeddings, embedding_dim], got ",
             weight.meta_str());
  KILN_CHECK(is_floating(weight.dtype()), op, ": weight must be a floating type, got ", weight.meta_str());
  check_index_tensor(indices, weight, op, "indices");
  const int64_t vocab = weight.size(0), channels = weight.size(1);
  const Tensor w = weight.detach().contiguous();
  const Tensor idx = indices.detach().reshape({-1}).contiguous();
  const int64_t n = idx.numel();

  Shape out_shape = indices.shape();
  out_shape.push_back(channels);
  Tensor out = Tensor::empty(out_shape, w.options());
  if (out.numel() > 0) {
    Tensor rows = out.view({n, channels});
    embedding_stub(w.device(), rows, w, idx);
  }
  const DType dtype = weight.dtype();
  record("EmbeddingBackward", out, {&weight},
         [is = SavedTensor(idx), vocab, channels, n, dtype](const Tensor& g) -> std::vector<Tensor> {
           const Tensor iv = is.unpack("EmbeddingBackward");
           const Tensor go = g.to(dtype).contiguous().view({n, channels});
           Tensor gw = Tensor::empty({vocab, channels}, go.options());
           if (gw.numel() > 0) embedding_backward_stub(go.device(), gw, go, iv);
           return {gw};
         });
  return out;
}

// ================================================================ layer norm
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  check_layer_norm_input(x, weight, bias, eps, "layer_norm");
  const int64_t c = x.size(-1);
  const Tensor x2d = x.detach().contiguous().view({x.numel() / c, c});
  Tensor no_sum;
  return normalize_rows(x, x2d, Tensor(), no_sum, weight, bias, eps, x.shape());
}

std::pair<Tensor, Tensor> add_layer_norm(const Tensor& x_arg, const Tensor& residual_arg, const Tensor& weight,
                                         const Tensor& bias, double eps) {
  const char* op = "add_layer_norm";
  check_layer_norm_input(x_arg, weight, bias, eps, op);
  KILN_CHECK(residual_arg.shape() == x_arg.shape() && is_floating(residual_arg.dtype()) &&
                 residual_arg.device() == x_arg.device(),
             op, ": residual ", residual_arg.meta_str(), " must match x ", x_arg.meta_str(),
             " (same shape and device, floating; no broadcasting)");
  // Mixed dtypes promote like add (under autocast an f32 residual stream meets a bf16 branch);
  // the casts are differentiable, so each input gets its gradient in its own dtype.
  const DType dtype = promote_types(x_arg.dtype(), residual_arg.dtype());
  const Tensor x = x_arg.to(dtype), residual = residual_arg.to(dtype);
  const int64_t c = x.size(-1);
  const Shape shape2d = {x.numel() / c, c};
  const Tensor x2d = x.detach().contiguous().view(shape2d);
  const Tensor r2d = residual.detach().contiguous().view(shape2d);
  Tensor sum = Tensor::empty(x.shape(), x.options());
  Tensor sum2d = sum.view(shape2d);
  // `sum` gets its own node; the normed output's node hangs off `sum`, so the engine adds the
  // normed branch's gradient to the one `sum` gets from later uses (the residual stream)
  // before AddLayerNormSumBackward hands the total to both addends.
  record("AddLayerNormSumBackward", sum, {&x, &residual},
         [](const Tensor& g) -> std::vector<Tensor> { return {g, g}; });
  Tensor normed = normalize_rows(sum, x2d, r2d, sum2d, weight, bias, eps, x.shape());
  return {sum, normed};
}

// ================================================================ fused cross-entropy
Tensor fused_cross_entropy(const Tensor& logits, const Tensor& targets, int64_t valid_classes,
                           int64_t ignore_index) {
  const char* op = "fused_cross_entropy";
  KILN_CHECK(logits.dim() >= 1 && is_floating(logits.dtype()), op,
             ": logits must be a floating [..., V] tensor, got ", logits.meta_str());
  check_index_tensor(targets, logits, op, "targets");
  Shape rows_shape = logits.shape();
  rows_shape.pop_back();
  KILN_CHECK(targets.shape() == rows_shape, op, ": targets ", targets.meta_str(),
             " do not match logits ", logits.meta_str(), " (expected targets of shape ",
             shape_str(rows_shape), ")");
  const int64_t classes = logits.size(-1);
  if (valid_classes < 0) valid_classes = classes;
  KILN_CHECK(valid_classes >= 1 && valid_classes <= classes, op, ": valid_classes ", valid_classes,
             " must be in [1, ", classes, "] for logits ", logits.meta_str());

  const DType acc = accumulate_dtype(logits.dtype());
  const Device dev = logits.device();
  const Tensor x = logits.detach().contiguous().view({logits.numel() / classes, classes});
  const Tensor t = targets.detach().reshape({-1}).contiguous();
  const int64_t n = x.size(0);
  Tensor losses = Tensor::empty({n}, {acc, dev});
  // The gradient is written only when it will be wanted (not in evaluation).
  const bool want_grad = needs_grad({&logits});
  Tensor dlogits = want_grad ? Tensor::empty(x.shape(), x.options()) : Tensor();
  Tensor loss;
  {
    NoGradGuard no_grad;
    // Mean over the counted rows, computed on the device (no host sync): NaN when every row
    // is ignored, like PyTorch.
    const Tensor ignore = scalar_tensor(static_cast<double>(ignore_index), {t.dtype(), dev});
    const Tensor count = sum(ne(t, ignore)).to(acc);
    const Tensor grad_scale = div(ones({1}, {acc, dev}), count).contiguous();
    if (n > 0) fused_cross_entropy_stub(dev, losses, dlogits, x, t, grad_scale, valid_classes, ignore_index);
    loss = div(sum(losses), count).to(acc);
  }
  if (!want_grad) return loss;
  const Shape logits_shape = logits.shape();
  record(kFusedCrossEntropyNode, loss, {&logits},
         [ds = SavedTensor(dlogits), logits_shape](const Tensor& g) -> std::vector<Tensor> {
           const Tensor d = ds.unpack(kFusedCrossEntropyNode);
           return {mul(d, g.to(d.dtype())).view(logits_shape)};
         });
  return loss;
}

}  // namespace kiln
