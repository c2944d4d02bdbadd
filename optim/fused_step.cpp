// fused_adam_update: argument checks in front of adamw_stub, whose kernels assume them.
#include "optim/fused_step.h"

#include "core/autograd.h"
#include "core/dispatch/optim.h"

namespace kiln {

DispatchStub<void(std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                  std::vector<Tensor>& exp_avgs, std::vector<Tensor>& exp_avg_sqs, double lr,
                  double beta1, double beta2, double eps, double weight_decay, int64_t step,
                  bool decoupled)>
    adamw_stub{"adamw"};

namespace {

void check_like(const Tensor& t, const Tensor& param, const char* what, size_t i) {
  KILN_CHECK(t.defined(), "fused_adam_update: ", what, "[", i, "] is undefined");
  KILN_CHECK(
      t.shape() == param.shape() && t.dtype() == param.dtype() && t.device() == param.device(),
      "fused_adam_update: ", what, "[", i, "] is ", t.meta_str(), " but params[", i, "] is ",
      param.meta_str());
}

}  // namespace

void fused_adam_update(std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                       std::vector<Tensor>& exp_avgs, std::vector<Tensor>& exp_avg_sqs,
                       const AdamHyperParams& h, int64_t step) {
  KILN_CHECK(grads.size() == params.size() && exp_avgs.size() == params.size() &&
                 exp_avg_sqs.size() == params.size(),
             "fused_adam_update: lists of different lengths (", params.size(), " params, ",
             grads.size(), " grads, ", exp_avgs.size(), " exp_avgs, ", exp_avg_sqs.size(),
             " exp_avg_sqs)");
  KILN_CHECK(step >= 1, "fused_adam_update: step must be >= 1, got ", step);
  if (params.empty()) return;
  NoGradGuard no_grad;
  const Tensor& first = params[0];
  KILN_CHECK(first.defined(), "fused_adam_update: params[0] is undefined");
  KILN_CHECK(first.dtype() == DType::f32 || first.dtype() == DType::f64,
             "fused_adam_update: parameters must be f32 or f64, got params[0] ", first.meta_str());

  // The kernels see contiguous tensors; anything that is not gets a contiguous stand-in,
  // copied back afterwards.
  std::vector<Tensor> p(params.size()), g(params.size()), m(params.size()), v(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    KILN_CHECK(params[i].defined(), "fused_adam_update: params[", i, "] is undefined");
    KILN_CHECK(params[i].dtype() == first.dtype() && params[i].device() == first.device(),
               "fused_adam_update: params[", i, "] is ", params[i].meta_str(), " but params[0] is ",
               first.meta_str(), " (one device and dtype per call)");
    check_like(grads[i], params[i], "grads", i);
    check_like(exp_avgs[i], params[i], "exp_avgs", i);
    check_like(exp_avg_sqs[i], params[i], "exp_avg_sqs", i);
    p[i] = params[i].detach().contiguous();
    g[i] = grads[i].detach().contiguous();
    m[i] = exp_avgs[i].detach().contiguous();
    v[i] = exp_avg_sqs[i].detach().contiguous();
  }
  adamw_stub(first.device(), p, g, m, v, h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, step,
             h.decoupled);
  auto write_back = [](Tensor& dst, const Tensor& src) {
    if (dst.data_ptr() == src.data_ptr() && dst.is_contiguous())
      dst.bump_version();
    else
      dst.copy_(src);  // copy_ bumps the version
  };
  for (size_t i = 0; i < params.size(); ++i) {
    write_back(params[i], p[i]);
    write_back(exp_avgs[i], m[i]);
    write_back(exp_avg_sqs[i], v[i]);
  }
}

}  // namespace kiln
