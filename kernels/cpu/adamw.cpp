// CPU fused Adam/AdamW update (core/dispatch/optim.h): one OpenMP loop per tensor over the
// shared per-element formula, in the parameter's own type (f32 or f64).
#include <cstdint>
#include <vector>

#include "core/dispatch/optim.h"

namespace kiln {
namespace {

constexpr int64_t kParallelGrain = 1 << 15;  // below this many elements, stay serial

template <class T>
void adam_update_tensor(T* p, const T* g, T* m, T* v, int64_t n, const AdamConstants<T>& c) {
#pragma omp parallel for if (n > kParallelGrain)
  for (int64_t i = 0; i < n; ++i) {
    T param = p[i], exp_avg = m[i], exp_avg_sq = v[i];
    adam_update_element(param, g[i], exp_avg, exp_avg_sq, c);
    p[i] = param;
    m[i] = exp_avg;
    v[i] = exp_avg_sq;
  }
}

template <class T>
void adam_update_list(std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                      std::vector<Tensor>& exp_avgs, std::vector<Tensor>& exp_avg_sqs,
                      const AdamConstants<T>& c) {
  for (size_t i = 0; i < params.size(); ++i)
    adam_update_tensor(params[i].data<T>(), grads[i].data<T>(), exp_avgs[i].data<T>(),
                       exp_avg_sqs[i].data<T>(), params[i].numel(), c);
}

void adamw_cpu(std::vector<Tensor>& params, const std::vector<Tensor>& grads,
               std::vector<Tensor>& exp_avgs, std::vector<Tensor>& exp_avg_sqs, double lr,
               double beta1, double beta2, double eps, double weight_decay, int64_t step,
               bool decoupled) {
  if (params.empty()) return;
  switch (params[0].dtype()) {
    case DType::f32:
      adam_update_list(params, grads, exp_avgs, exp_avg_sqs,
                       adam_constants<float>(lr, beta1, beta2, eps, weight_decay, step, decoupled));
      break;
    case DType::f64:
      adam_update_list(
          params, grads, exp_avgs, exp_avg_sqs,
          adam_constants<double>(lr, beta1, beta2, eps, weight_decay, step, decoupled));
      break;
    default:
      KILN_FAIL("adamw kernel: parameters must be f32 or f64, got ", params[0].meta_str());
  }
}

}  // namespace

KILN_REGISTER_KERNEL(adamw_stub, CPU, &adamw_cpu);

}  // namespace kiln
