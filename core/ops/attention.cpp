// scaled_dot_product_attention and its three backends (see core/ops.h):
//   naive    composed from differentiable ops; autograd comes from them
//   flash    one kernel forward and one backward (core/dispatch/attention.h), recorded here as
//            a single node that saves q, k, v, the output and the per-row log-sum-exp
//   batched  bmm (cuBLASLt strided-batched), a fused scale+mask+softmax kernel, bmm; autograd
//            over the three pieces. CUDA only; on the CPU it is the naive backend.
#include "core/dispatch/attention.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/autocast.h"
#include "core/autograd.h"
#include "core/ops.h"

namespace kiln {

DispatchStub<void(Tensor& out, Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                  bool causal, double scale)>
    flash_attention_forward_stub{"flash_attention_forward"};
DispatchStub<void(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q,
                  const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, bool causal,
                  double scale)>
    flash_attention_backward_stub{"flash_attention_backward"};
DispatchStub<void(Tensor& probs, const Tensor& scores, bool causal, double scale)>
    attention_softmax_stub{"attention_softmax"};
DispatchStub<void(Tensor& grad_scores, const Tensor& grad_probs, const Tensor& probs, double scale)>
    attention_softmax_backward_stub{"attention_softmax_backward"};

namespace {

struct AttentionShape {
  int64_t B, H, Tq, Tk, D;
  int64_t heads() const { return B * H; }
};

AttentionShape check_attention_args(const Tensor& q, const Tensor& k, const Tensor& v, bool is_causal) {
  const char* op = "scaled_dot_product_attention";
  KILN_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, op,
             ": expected q [B, H, Tq, D], k and v [B, H, Tk, D], got q ", q.meta_str(), ", k ",
             k.meta_str(), ", v ", v.meta_str());
  KILN_CHECK(is_floating(q.dtype()), op, ": q must be a floating type, got ", q.meta_str());
  KILN_CHECK(q.dtype() == k.dtype() && q.dtype() == v.dtype(), op, ": q, k and v must share a dtype, got ",
             q.meta_str(), ", ", k.meta_str(), ", ", v.meta_str());
  KILN_CHECK(q.device() == k.device() && q.device() == v.device(), op,
             ": q, k and v must be on one device, got ", q.meta_str(), ", ", k.meta_str(), ", ",
             v.meta_str());
  const AttentionShape s{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)};
  KILN_CHECK(k.size(0) == s.B && k.size(1) == s.H && k.size(3) == s.D && v.shape() == k.shape(), op,
             ": k and v must be [B, H, Tk, D] = [", s.B, ", ", s.H, ", Tk, ", s.D, "] like q ",
             q.meta_str(), ", got k ", k.meta_str(), ", v ", v.meta_str());
  KILN_CHECK(s.D > 0, op, ": head dim must be positive, got q ", q.meta_str());
  KILN_CHECK(!is_causal || s.Tq == s.Tk, op, ": is_causal needs as many queries as keys, got q ",
             q.meta_str(), " and k ", k.meta_str());
  return s;
}

Tensor naive_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale) {
  Tensor scores = mul(matmul(q, k.transpose(2, 3)), scale);
  if (causal) {
    const Tensor minus_inf = scalar_tensor(-std::numeric_limits<double>::infinity(), scores.options());
    scores = where(causal_mask(q.size(2), k.size(2), q.device()), minus_inf, scores);
  }
  return matmul(softmax(scores, -1), v);
}

Tensor flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale,
                       const AttentionShape& s) {
  const Tensor q3 = q.detach().contiguous().view({s.heads(), s.Tq, s.D});
  const Tensor k3 = k.detach().contiguous().view({s.heads(), s.Tk, s.D});
  const Tensor v3 = v.detach().contiguous().view({s.heads(), s.Tk, s.D});
  Tensor out = Tensor::empty({s.B, s.H, s.Tq, s.D}, q.options());
  Tensor lse = Tensor::empty({s.heads(), s.Tq}, {accumulate_dtype(q.dtype()), q.device()});
  if (out.numel() > 0) {
    Tensor out3 = out.view({s.heads(), s.Tq, s.D});
    flash_attention_forward_stub(q.device(), out3, lse, q3, k3, v3, causal, scale);
  }
  record("FlashAttentionBackward", out, {&q, &k, &v},
         [qs = SavedTensor(q3), ks = SavedTensor(k3), vs = SavedTensor(v3),
          os = SavedTensor(out.detach()), ls = SavedTensor(lse), causal, scale,
          s](const Tensor& g) -> std::vector<Tensor> {
           const char* node = "FlashAttentionBackward";
           const Tensor qv = qs.unpack(node), kv = ks.unpack(node), vv = vs.unpack(node);
           const Tensor ov = os.unpack(node).view({s.heads(), s.Tq, s.D}), lv = ls.unpack(node);
           const Tensor dout = g.to(qv.dtype()).contiguous().view({s.heads(), s.Tq, s.D});
           Tensor dq = Tensor::empty(qv.shape(), qv.options());
           Tensor dk = Tensor::empty(kv.shape(), kv.options());
           Tensor dv = Tensor::empty(vv.shape(), vv.options());
           if (dq.numel() > 0 || dk.numel() > 0) {
             if (dq.numel() == 0 || dk.numel() == 0) {  // no queries or no keys: nothing flows
               dq.zero_();
               dk.zero_();
               dv.zero_();
             } else {
               flash_attention_backward_stub(qv.device(), dq, dk, dv, dout, qv, kv, vv, ov, lv, causal,
                                             scale);
             }
           }
           return {dq.view({s.B, s.H, s.Tq, s.D}), dk.view({s.B, s.H, s.Tk, s.D}),
                   dv.view({s.B, s.H, s.Tk, s.D})};
         });
  return out;
}

// softmax(scale * scores + causal mask) over the last dim of [BH, Tq, Tk], one kernel each way.
Tensor attention_softmax(const Tensor& scores, bool causal, double scale) {
  const Tensor in = scores.detach().contiguous();
  Tensor probs = Tensor::empty(in.shape(), in.options());
  if (probs.numel() > 0) attention_softmax_stub(in.device(), probs, in, causal, scale);
  record("AttentionSoftmaxBackward", probs, {&scores},
         [ps = SavedTensor(probs.detach()), scale](const Tensor& g) -> std::vector<Tensor> {
           const Tensor p = ps.unpack("AttentionSoftmaxBackward");
           const Tensor grad_probs = g.to(p.dtype()).contiguous();
           Tensor grad_scores = Tensor::empty(p.shape(), p.options());
           if (grad_scores.numel() > 0)
             attention_softmax_backward_stub(p.device(), grad_scores, grad_probs, p, scale);
           return {grad_scores};
         });
  return probs;
}

Tensor batched_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale,
                         const AttentionShape& s) {
  if (!q.is_cuda() || s.Tk == 0 || s.Tq == 0) return naive_attention(q, k, v, causal, scale);
  const Tensor q3 = q.reshape({s.heads(), s.Tq, s.D});
  const Tensor k3 = k.reshape({s.heads(), s.Tk, s.D});
  const Tensor v3 = v.reshape({s.heads(), s.Tk, s.D});
  const Tensor probs = attention_softmax(bmm(q3, k3.transpose(1, 2)), causal, scale);
  return bmm(probs, v3).view({s.B, s.H, s.Tq, s.D});
}

}  // namespace

Tensor scaled_dot_product_attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                    bool is_causal, AttentionBackend backend) {
  const Tensor q = autocast_input(q_in), k = autocast_input(k_in), v = autocast_input(v_in);
  const AttentionShape s = check_attention_args(q, k, v, is_causal);
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.D));
  switch (backend) {
    case AttentionBackend::naive:
      return naive_attention(q, k, v, is_causal, scale);
    case AttentionBackend::flash:
      return flash_attention(q, k, v, is_causal, scale, s);
    case AttentionBackend::batched:
      return batched_attention(q, k, v, is_causal, scale, s);
  }
  KILN_FAIL("scaled_dot_product_attention: unknown backend ", static_cast<int>(backend));
}

// Built on the device from two index vectors, so no T^2 host loop or copy.
Tensor causal_mask(int64_t Tq, int64_t Tk, Device device, int64_t past) {
  const TensorOptions index{.dtype = DType::i64, .device = device};
  return gt(arange(0, static_cast<double>(Tk), 1, index).view({1, Tk}),
            arange(static_cast<double>(past), static_cast<double>(past + Tq), 1, index).view({Tq, 1}));
}

AttentionBackend parse_attention_backend(const std::string& name) {
  if (name == "naive") return AttentionBackend::naive;
  if (name == "flash") return AttentionBackend::flash;
  if (name == "batched") return AttentionBackend::batched;
  KILN_FAIL("unknown attention backend: ", name, " (known backends: naive, flash, batched)");
}

}  // namespace kiln
