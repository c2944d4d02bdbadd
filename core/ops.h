// The tensor operations, each differentiable where it makes sense. Shapes broadcast like
// NumPy; binary ops promote dtypes like PyTorch. Implemented in core/ops/<family>.cpp.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace kiln {

class Generator;

// ---- elementwise unary
Tensor neg(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor gelu(const Tensor& x);  // tanh approximation, as GPT-2 uses
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor sign(const Tensor& x);
Tensor clamp(const Tensor& x, std::optional<double> min, std::optional<double> max);
Tensor pow(const Tensor& x, double exponent);
Tensor square(const Tensor& x);

// ---- elementwise binary (broadcasting)
Tensor add(const Tensor& a, const Tensor& b, double alpha = 1.0);  // a + alpha*b
Tensor sub(const Tensor& a, const Tensor& b, double alpha = 1.0);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, double b);
Tensor mul(const Tensor& a, double b);
// Comparisons return bool tensors and have no gradient.
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);

// ---- reductions; an empty dims list reduces over every dim
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor max(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor min(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor argmin(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor var(const Tensor& x, const std::vector<int64_t>& dims = {}, int64_t correction = 1,
           bool keepdim = false);
// Sums `x` down to `shape` (the reverse of broadcasting): the gradient of an expand.
Tensor sum_to(const Tensor& x, const Shape& shape);

// ---- linear algebra
// 1-D, 2-D and batched (broadcasting batch dims) like torch.matmul.
Tensor matmul(const Tensor& a, const Tensor& b);
Tensor bmm(const Tensor& a, const Tensor& b);  // [B,M,K] @ [B,K,N]

// ---- softmax and losses
Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);
enum class Reduction : uint8_t { none, mean, sum };
// logits [N, C] (or [N, C, d...] with targets [N, d...]), integer targets.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100,
                     Reduction reduction = Reduction::mean, double label_smoothing = 0.0);

// ---- indexing
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);
// Out of place: returns self with src added at index along dim.
Tensor scatter_add(const Tensor& self, int64_t dim, const Tensor& index, const Tensor& src);
Tensor index_add(const Tensor& self, int64_t dim, const Tensor& index, const Tensor& src);

// ---- joining
Tensor cat(const std::vector<Tensor>& tensors, int64_t dim);

// ---- random (Philox; identical streams on CPU and CUDA for one seed)
Tensor rand(const Shape& shape, TensorOptions opts = {}, Generator* gen = nullptr);
Tensor randn(const Shape& shape, TensorOptions opts = {}, Generator* gen = nullptr);
Tensor randint(int64_t low, int64_t high, const Shape& shape,
               TensorOptions opts = {.dtype = DType::i64}, Generator* gen = nullptr);
Tensor& uniform_(Tensor& t, double low = 0.0, double high = 1.0, Generator* gen = nullptr);
Tensor& normal_(Tensor& t, double mean = 0.0, double std = 1.0, Generator* gen = nullptr);

// ---- operators
inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator-(const Tensor& a) { return neg(a); }
inline Tensor operator+(const Tensor& a, double b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, double b) { return add(a, -b); }
inline Tensor operator*(const Tensor& a, double b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, double b) { return mul(a, 1.0 / b); }
inline Tensor operator+(double a, const Tensor& b) { return add(b, a); }
inline Tensor operator*(double a, const Tensor& b) { return mul(b, a); }
inline Tensor operator-(double a, const Tensor& b) { return add(neg(b), a); }

// Max |a - b| over all elements (computed in f64 on the CPU); for tests and checks.
double max_abs_diff(const Tensor& a, const Tensor& b);
bool allclose(const Tensor& a, const Tensor& b, double rtol = 1e-5, double atol = 1e-8);

// ---- convolution and pooling (core/ops/conv.cpp, core/ops/pool.cpp)
// A (height, width) argument: 3 means {3, 3}, like PyTorch's int-or-tuple.
struct Size2 {
  int64_t h = 0, w = 0;
  Size2(int64_t both) : h(both), w(both) {}  // NOLINT(google-explicit-constructor)
  Size2(int64_t height, int64_t width) : h(height), w(width) {}
  bool operator==(const Size2&) const = default;
};

// torch.nn.functional.conv2d: input [N, C, H, W] (or unbatched [C, H, W]), weight
// [O, C/groups, kH, kW], bias [O] or undefined. Cross-correlation, zero padding.
Tensor conv2d(const Tensor& input, const Tensor& weight, const Tensor& bias = Tensor(),
              Size2 stride = 1, Size2 padding = 0, Size2 dilation = 1, int64_t groups = 1);
// Max over each window (ties: the first max in row-major order gets the gradient); padding
// (implicit -inf) is at most half the kernel. Without a stride, stride = kernel, as in PyTorch.
Tensor max_pool2d(const Tensor& input, Size2 kernel, Size2 stride, Size2 padding = 0);
inline Tensor max_pool2d(const Tensor& input, Size2 kernel) { return max_pool2d(input, kernel, kernel); }
// Mean over each window; count_include_pad divides by the window size including zero padding.
Tensor avg_pool2d(const Tensor& input, Size2 kernel, Size2 stride, Size2 padding = 0,
                  bool count_include_pad = true);
inline Tensor avg_pool2d(const Tensor& input, Size2 kernel) { return avg_pool2d(input, kernel, kernel); }
// Output cell i averages input rows [floor(i*H/out), ceil((i+1)*H/out)), and likewise columns.
Tensor adaptive_avg_pool2d(const Tensor& input, Size2 output_size);

// ---- normalisation and dropout (core/ops/norm.cpp, core/ops/dropout.cpp)
// torch.nn.functional.batch_norm. input [N, C] or [N, C, *]; weight, bias, running_mean and
// running_var are [C] or undefined (weight 1, bias 0; no running statistics). Training
// normalises with the batch mean and biased variance, and when running statistics are given
// updates them in place: r = (1 - momentum) * r + momentum * batch value, with the UNBIASED
// variance. Eval normalises with the running statistics (which must be given).
Tensor batch_norm(const Tensor& input, const Tensor& weight, const Tensor& bias,
                  const Tensor& running_mean, const Tensor& running_var, bool training,
                  double momentum = 0.1, double eps = 1e-5);
// Inverted dropout: in training, element i (row-major) is zeroed when the draw an f32 rand()
// of x's shape would make for it (from gen, or the default generator) is < p, and the rest
// are scaled by 1 / (1 - p); CPU and CUDA drop the same elements for one generator state.
// Identity when !training or p == 0; zeros when p == 1.
Tensor dropout(const Tensor& x, double p, bool training, Generator* gen = nullptr);


// ---- transformer ops (core/ops/transformer.cpp, core/ops/attention.cpp, core/ops/linear.cpp)
// torch.nn.functional.embedding: rows of weight [V, C] picked by integer indices of any shape,
// giving [..., C]. The weight gradient adds rows in a fixed order without atomics, so it is
// bit-identical from run to run on one device.
Tensor embedding(const Tensor& weight, const Tensor& indices);
// torch.nn.functional.layer_norm over the last dim; weight and bias [C] or undefined.
// Statistics are computed in f32 (f64 for f64 inputs); the output has x's dtype.
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps = 1e-5);
// The pre-LN transformer's residual step fused into one pass (one kernel on CUDA):
// returns {sum, normed} with sum = x + residual and normed = layer_norm(sum, weight, bias).
// x and residual have one shape; mixed dtypes promote like add (an f32 residual stream
// meeting a bf16 branch under autocast gives an f32 sum).
std::pair<Tensor, Tensor> add_layer_norm(const Tensor& x, const Tensor& residual, const Tensor& weight,
                                         const Tensor& bias, double eps = 1e-5);
// torch.nn.functional.linear: x [..., in] @ weight[out, in]^T + bias [out] (bias optional),
// then GELU (tanh) when `activation` says so. On CUDA the bias and GELU are cuBLASLt epilogues.
enum class Activation : uint8_t { none, gelu };
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(),
              Activation activation = Activation::none);
// Cross-entropy of logits [N, V] against targets [N] fused with its own backward (llm.c's
// fused classifier): one pass per row computes the loss and the gradient, which is kept for
// backward, so probabilities are never stored. Mean over targets != ignore_index. Only the
// first `valid_classes` columns take part (-1: all): GPT-2's vocab padded to 50304 keeps
// 50257; padded columns get zero gradient. Same numbers as cross_entropy on those columns.
Tensor fused_cross_entropy(const Tensor& logits, const Tensor& targets, int64_t valid_classes = -1,
                           int64_t ignore_index = -100);
// softmax(q k^T / sqrt(D) + causal mask) v for q [B, H, Tq, D], k and v [B, H, Tk, D].
// is_causal needs Tq == Tk (query i sees keys 0..i). Backends give the same numbers:
//   naive   matmul, mask, softmax, matmul: the reference, any device and dtype
//   flash   tiled with an online softmax, O(T) memory; a hand-written CUDA kernel (f32, bf16
//           with f32 accumulation); on the CPU it runs the same tiling in plain C++
//   batched cuBLAS strided-batched GEMMs around a fused mask+softmax kernel (CUDA; naive on CPU)
enum class AttentionBackend : uint8_t { naive, flash, batched };
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool is_causal,
                                    AttentionBackend backend = AttentionBackend::naive);
AttentionBackend parse_attention_backend(const std::string& name);  // "naive", "flash", "batched"
// [Tq, Tk] bool on `device`, true where key j is in the future of query i, whose position is
// past + i (j > past + i): the mask is_causal applies (past = 0), or a query chunk after `past`
// cached positions.
Tensor causal_mask(int64_t Tq, int64_t Tk, Device device, int64_t past = 0);

}  // namespace kiln
