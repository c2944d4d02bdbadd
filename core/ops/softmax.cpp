// softmax, log_softmax and cross_entropy. The kernels (core/dispatch/softmax.h) see
// contiguous [outer, classes, inner] inputs, or [rows, classes] for cross-entropy; this file
// reshapes into those forms, checks arguments, and records the backward passes.
#include "core/dispatch/softmax.h"

#include <algorithm>

#include "core/autograd.h"
#include "core/ops.h"

namespace kiln {

DispatchStub<void(Tensor& out, const Tensor& in, int64_t outer, int64_t classes, int64_t inner,
                  bool log)>
    softmax_stub{"softmax"};
DispatchStub<void(Tensor& grad_in, const Tensor& grad_out, const Tensor& out, int64_t outer,
                  int64_t classes, int64_t inner, bool log)>
    softmax_backward_stub{"softmax_backward"};
DispatchStub<void(Tensor& losses, const Tensor& logits, const Tensor& targets,
                  int64_t ignore_index, double label_smoothing)>
    cross_entropy_stub{"cross_entropy"};
DispatchStub<void(Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                  const Tensor& grad_losses, int64_t ignore_index, double label_smoothing)>
    cross_entropy_backward_stub{"cross_entropy_backward"};

namespace {

struct SoftmaxGeometry {
  int64_t outer = 1, classes = 1, inner = 1;
};

Tensor softmax_impl(const Tensor& x, int64_t dim, bool log) {
  const char* name = log ? "log_softmax" : "softmax";
  KILN_CHECK(is_floating(x.dtype()), name, "(): input must be a floating type, got ", x.meta_str());
  // A 0-d tensor takes dim 0 / -1 and is a single class.
  const int64_t d = wrap_dim(dim, std::max<int64_t>(x.dim(), 1), name);
  SoftmaxGeometry s;
  for (int64_t i = 0; i < x.dim(); ++i) {
    if (i < d) s.outer *= x.size(i);
    else if (i == d) s.classes = x.size(i);
    else s.inner *= x.size(i);
  }
  Tensor in = x.detach().contiguous();
  Tensor out = Tensor::empty(x.shape(), x.options());
  if (out.numel() > 0) softmax_stub(x.device(), out, in, s.outer, s.classes, s.inner, log);

  const char* node = log ? "LogSoftmaxBackward" : "SoftmaxBackward";
  // The output, detached: a node that held its own output would keep itself alive.
  record(node, out, {&x}, [ys = SavedTensor(out.detach()), s, log, node](const Tensor& g)
                               -> std::vector<Tensor> {
    Tensor y = ys.unpack(node);
    Tensor grad_out = g.to(y.dtype()).contiguous();
    Tensor grad_in = Tensor::empty(y.shape(), y.options());
    if (grad_in.numel() > 0)
      softmax_backward_stub(y.device(), grad_in, grad_out, y, s.outer, s.classes, s.inner, log);
    return {grad_in};
  });
  return out;
}

// Per-row losses of logits [M, C] against targets [M]: f32 (f64 for f64 logits), differentiable
// with respect to the logits.
Tensor row_losses(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                  double label_smoothing) {
  const DType loss_dtype = accumulate_dtype(logits.dtype());
  Tensor losses = Tensor::empty({logits.size(0)}, {loss_dtype, logits.device()});
  Tensor x = logits.detach(), t = targets.detach();
  if (losses.numel() > 0) cross_entropy_stub(x.device(), losses, x, t, ignore_index, label_smoothing);
  record("CrossEntropyBackward", losses, {&logits},
         [xs = SavedTensor(x), ts = SavedTensor(t), ignore_index, label_smoothing,
          loss_dtype](const Tensor& g) -> std::vector<Tensor> {
           Tensor xv = xs.unpack("CrossEntropyBackward"), tv = ts.unpack("CrossEntropyBackward");
           Tensor grad_losses = g.to(loss_dtype);  // [M]; may be an expanded scalar (stride 0)
           Tensor dlogits = Tensor::empty(xv.shape(), xv.options());
           if (dlogits.numel() > 0)
             cross_entropy_backward_stub(xv.device(), dlogits, xv, tv, grad_losses, ignore_index,
                                         label_smoothing);
           return {dlogits};
         });
  return losses;
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, /*log=*/false); }

Tensor log_softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, /*log=*/true); }

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                     Reduction reduction, double label_smoothing) {
  KILN_CHECK(is_floating(logits.dtype()), "cross_entropy: logits must be a floating type, got ",
             logits.meta_str());
  KILN_CHECK(targets.dtype() == DType::i64 || targets.dtype() == DType::i32,
             "cross_entropy: targets must be class indices (i64 or i32), got ", targets.meta_str());
  KILN_CHECK(logits.device() == targets.device(), "cross_entropy: logits ", logits.meta_str(),
             " and targets ", targets.meta_str(), " are on different devices");
  KILN_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0,
             "cross_entropy: label_smoothing must be in [0, 1], got ", label_smoothing);
  KILN_CHECK(logits.dim() >= 1, "cross_entropy: logits must have a class dim, got ", logits.meta_str());

  // Rows of classes: [C] is one row; [N, C, d1, ...] moves C last, like PyTorch's layout.
  Shape loss_shape = logits.shape();
  loss_shape.erase(loss_shape.begin() + (logits.dim() == 1 ? 0 : 1));
  KILN_CHECK(targets.shape() == loss_shape, "cross_entropy: targets ", targets.meta_str(),
             " do not match logits ", logits.meta_str(), " (expected targets of shape ",
             shape_str(loss_shape), ")");
  const int64_t classes = logits.size(logits.dim() == 1 ? 0 : 1);
  Tensor rows;
  if (logits.dim() <= 2) {
    rows = logits.reshape({-1, classes});
  } else {
    std::vector<int64_t> perm = {0};
    for (int64_t d = 2; d < logits.dim(); ++d) perm.push_back(d);
    perm.push_back(1);
    rows = logits.permute(perm).reshape({-1, classes});
  }
  rows = rows.contiguous();
  Tensor flat_targets = targets.detach().reshape({-1}).contiguous();

  Tensor losses = row_losses(rows, flat_targets, ignore_index, label_smoothing);
  Tensor result;
  switch (reduction) {
    case Reduction::none:
      result = losses.reshape(loss_shape);
      break;
    case Reduction::sum:
      result = sum(losses);
      break;
    case Reduction::mean: {
      // Divides by the number of counted targets (NaN when every target is ignored, like
      // PyTorch). Stays on the device: no host sync for the count.
      Tensor ignore = scalar_tensor(static_cast<double>(ignore_index),
                                    {flat_targets.dtype(), flat_targets.device()});
      Tensor count = sum(ne(flat_targets, ignore)).to(losses.dtype());
      result = sum(losses) / count;
      break;
    }
  }
  // Like PyTorch, the loss has the logits' dtype (the kernels still accumulate in f32).
  return result.to(logits.dtype());
}

}  // namespace kiln
