// matmul and bmm. Every case of torch.matmul (1-D dot, 2-D, 1-D promoted, batched with
// broadcast batch dims) is reduced to one batched GEMM over 3-D operands, the shape bmm_stub
// takes; the kernels run it on OpenBLAS or cuBLASLt.
#include "core/dispatch/matmul.h"

#include <algorithm>

#include "core/autocast.h"
#include "core/autograd.h"
#include "core/ops.h"

namespace kiln {

DispatchStub<void(Tensor& out, const Tensor& a, const Tensor& b)> bmm_stub{"bmm"};

namespace {

void check_operands(const char* op, const Tensor& a, const Tensor& b) {
  KILN_CHECK(a.defined() && b.defined(), op, ": undefined tensor");
  KILN_CHECK(a.device() == b.device(), op, ": tensors on different devices: ", a.meta_str(),
             " and ", b.meta_str());
  KILN_CHECK(a.dtype() == b.dtype(), op, ": dtypes differ: ", a.meta_str(), " and ", b.meta_str());
  KILN_CHECK(is_floating(a.dtype()), op, ": expected floating tensors, got ", a.meta_str(), " and ",
             b.meta_str());
}

// BLAS reads a matrix whose rows or whose columns are unit-stride with a leading dimension
// at least the other size: a transposed view is as good as a contiguous one. The kernels
// (kernels/{cpu,cuda}/matmul.*) apply the same rule to choose the transpose flag.
bool blas_layout_ok(const Tensor& t) {
  const int64_t n = t.dim();
  const int64_t rows = t.size(n - 2), cols = t.size(n - 1);
  const int64_t rs = t.stride(n - 2), cs = t.stride(n - 1);
  const bool row_major = (cols == 1 || cs == 1) && (rows == 1 || rs >= std::max<int64_t>(1, cols));
  const bool col_major = (rows == 1 || rs == 1) && (cols == 1 || cs >= std::max<int64_t>(1, rows));
  return row_major || col_major;
}

// out = a @ b for 3-D a [B, M, K] and b [B, K, N]. No autograd: callers record their own node.
Tensor bmm_forward(const Tensor& a, const Tensor& b) {
  NoGradGuard no_grad;
  const int64_t B = a.size(0), M = a.size(1), K = a.size(2), N = b.size(2);
  if (K == 0) return zeros({B, M, N}, a.options());  // an empty sum; BLAS wants K >= 1
  Tensor out = empty({B, M, N}, a.options());
  if (out.numel() == 0) return out;
  const Tensor a_ok = blas_layout_ok(a) ? a : a.contiguous();
  const Tensor b_ok = blas_layout_ok(b) ? b : b.contiguous();
  bmm_stub(out.device(), out, a_ok, b_ok);
  return out;
}

// True when dims [0, n-1) of `t` merge into one without a copy and rows are unit-stride, so
// [..., M, K] can be read as one [B*M, K] matrix.
bool rows_fold(const Tensor& t) {
  const int64_t n = t.dim();
  if (t.stride(n - 1) != 1 && t.size(n - 1) != 1) return false;
  for (int64_t d = 0; d + 2 < n; ++d)
    if (t.size(d) != 1 && t.stride(d) != t.stride(d + 1) * t.size(d + 1)) return false;
  return true;
}

// The forward of matmul, without autograd.
Tensor matmul_forward(const Tensor& a, const Tensor& b) {
  NoGradGuard no_grad;
  const bool a_vec = a.dim() == 1, b_vec = b.dim() == 1;
  const Tensor a2 = a_vec ? a.unsqueeze(0) : a;  // [1, K]
  const Tensor b2 = b_vec ? b.unsqueeze(1) : b;  // [K, 1]
  const int64_t M = a2.size(-2), K = a2.size(-1), N = b2.size(-1);
  const Shape batch_a(a2.shape().begin(), a2.shape().end() - 2);
  const Shape batch_b(b2.shape().begin(), b2.shape().end() - 2);
  // Batch dims broadcast like NumPy; checked here so the error names both full shapes.
  Shape batch(std::max(batch_a.size(), batch_b.size()));
  for (size_t i = 0; i < batch.size(); ++i) {
    const size_t ia = batch_a.size() - 1 - i, ib = batch_b.size() - 1 - i;  // from the right
    const int64_t sa = i < batch_a.size() ? batch_a[ia] : 1;
    const int64_t sb = i < batch_b.size() ? batch_b[ib] : 1;
    KILN_CHECK(sa == sb || sa == 1 || sb == 1, "matmul: batch dims of ", a.meta_str(), " and ",
               b.meta_str(), " do not broadcast");
    batch[batch.size() - 1 - i] = sa == 1 ? sb : sa;
  }
  Shape out_shape = batch;
  if (!a_vec) out_shape.push_back(M);
  if (!b_vec) out_shape.push_back(N);
  if (K == 0) return zeros(out_shape, a.options());  // an empty sum

  Tensor out;
  if (batch_b.empty() && !batch_a.empty() && rows_fold(a2)) {
    // [..., M, K] @ [K, N]: one [B*M, K] @ [K, N] GEMM, the common case of a Linear layer.
    out = bmm_forward(a2.reshape({1, -1, K}), b2.unsqueeze(0));
  } else {
    // Broadcast batch dims become stride 0 after expand; reshape copies only when the batch
    // dims cannot be merged into one.
    const int64_t B = shape_numel(batch);
    Shape sa = batch, sb = batch;
    sa.insert(sa.end(), {M, K});
    sb.insert(sb.end(), {K, N});
    out = bmm_forward(a2.expand(sa).reshape({B, M, K}), b2.expand(sb).reshape({B, K, N}));
  }
  return out.view(out_shape);
}

// Gradients of a @ b given the output gradient g. `a` is defined only when b's gradient is
// wanted and `b` only when a's is (each gradient needs just the other operand). Written with
// matmul itself, so it runs on any device and folds and broadcasts the same way.
std::vector<Tensor> matmul_backward(const Tensor& g, const Tensor& a, const Tensor& b,
                                    const Shape& a_shape, const Shape& b_shape,
                                    bool b_column_major) {
  Tensor grad_a, grad_b;
  const bool a_vec = a_shape.size() == 1, b_vec = b_shape.size() == 1;
  if (a_vec && b_vec) {  // dot: g is a scalar
    if (b.defined()) grad_a = mul(g, b);
    if (a.defined()) grad_b = mul(g, a);
    return {grad_a, grad_b};
  }
  const Shape a2_shape = a_vec ? Shape{1, a_shape[0]} : a_shape;
  const Shape b2_shape = b_vec ? Shape{b_shape[0], 1} : b_shape;
  // Put back the dims a 1-D operand removed from the output: g2 is [..., M, N].
  Tensor g2 = g;
  if (a_vec) g2 = g2.unsqueeze(g2.dim() - 1);
  if (b_vec) g2 = g2.unsqueeze(g2.dim());
  if (b.defined()) {
    const Tensor b2 = b_vec ? b.unsqueeze(1) : b;
    grad_a = matmul(g2, b2.transpose(-2, -1));
    if (grad_a.shape() != a2_shape) grad_a = sum_to(grad_a, a2_shape);
    if (a_vec) grad_a = grad_a.reshape(a_shape);
  }
  if (a.defined()) {
    const Tensor a2 = a_vec ? a.unsqueeze(0) : a;
    const int64_t K = a2_shape.back(), N = g2.size(-1);
    if (b2_shape.size() == 2 && b_column_major && a2.numel() > 0 && g2.numel() > 0) {
      // b is a transposed view (Linear's W.t()): compute the gradient in W's own layout, so
      // it reaches W as a contiguous tensor instead of a transposed one that must be copied
      // element by element (PyTorch's mm_mat2_backward does the same).
      grad_b = matmul(g2.reshape({-1, N}).t(), a2.reshape({-1, K})).t();
    } else if (b2_shape.size() == 2 && g2.dim() > 2 && a2.numel() > 0 && g2.numel() > 0) {
      // a2 carries every batch dim: fold them into the GEMM's K instead of summing after.
      grad_b = matmul(a2.reshape({-1, K}).t(), g2.reshape({-1, N}));
    } else {
      grad_b = matmul(a2.transpose(-2, -1), g2);
      if (grad_b.shape() != b2_shape) grad_b = sum_to(grad_b, b2_shape);
    }
    if (b_vec) grad_b = grad_b.reshape(b_shape);
  }
  return {grad_a, grad_b};
}

}  // namespace

Tensor matmul(const Tensor& a_in, const Tensor& b_in) {
  // Under autocast, f32 operands become bf16/f16 through differentiable casts, so their
  // gradients come back f32 (core/autocast.h).
  const Tensor a = autocast_input(a_in), b = autocast_input(b_in);
  check_operands("matmul", a, b);
  KILN_CHECK(a.dim() >= 1 && b.dim() >= 1, "matmul: both arguments need at least 1 dim, got ",
             a.meta_str(), " and ", b.meta_str());
  const int64_t ka = a.size(-1), kb = b.dim() == 1 ? b.size(0) : b.size(-2);
  KILN_CHECK(ka == kb, "matmul: shapes ", a.meta_str(), " and ", b.meta_str(),
             " cannot be multiplied (", ka, " != ", kb, ")");
  Tensor out = matmul_forward(a, b);
  if (needs_grad({&a, &b})) {
    const bool need_a = a.requires_grad(), need_b = b.requires_grad();
    // Each gradient needs only the other operand.
    SavedTensor saved_a(need_b ? a : Tensor()), saved_b(need_a ? b : Tensor());
    record("MatmulBackward", out, {&a, &b},
           [saved_a, saved_b, a_shape = a.shape(), b_shape = b.shape(),
            b_column_major = b.dim() == 2 && b.stride(0) == 1 && b.stride(1) == b.size(0) &&
                             b.size(0) > 1](const Tensor& g) -> std::vector<Tensor> {
             return matmul_backward(g, saved_a.unpack("MatmulBackward"),
                                    saved_b.unpack("MatmulBackward"), a_shape, b_shape,
                                    b_column_major);
           });
  }
  return out;
}

Tensor bmm(const Tensor& a_in, const Tensor& b_in) {
  const Tensor a = autocast_input(a_in), b = autocast_input(b_in);
  check_operands("bmm", a, b);
  KILN_CHECK(a.dim() == 3 && b.dim() == 3, "bmm: expected 3-D tensors, got ", a.meta_str(), " and ",
             b.meta_str());
  KILN_CHECK(a.size(0) == b.size(0) && a.size(2) == b.size(1), "bmm: shapes ", a.meta_str(),
             " and ", b.meta_str(), " cannot be multiplied (need [B, M, K] and [B, K, N])");
  Tensor out = bmm_forward(a, b);
  if (needs_grad({&a, &b})) {
    const bool need_a = a.requires_grad(), need_b = b.requires_grad();
    SavedTensor saved_a(need_b ? a : Tensor()), saved_b(need_a ? b : Tensor());
    record("BmmBackward", out, {&a, &b},
           [saved_a, saved_b, need_a, need_b](const Tensor& g) -> std::vector<Tensor> {
             Tensor grad_a, grad_b;
             if (need_a) grad_a = bmm(g, saved_b.unpack("BmmBackward").transpose(1, 2));
             if (need_b) grad_b = bmm(saved_a.unpack("BmmBackward").transpose(1, 2), g);
             return {grad_a, grad_b};
           });
  }
  return out;
}

}  // namespace kiln
