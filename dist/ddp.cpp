#include "dist/ddp.h"

#include <algorithm>

#include "core/autograd.h"
#include "core/error.h"

namespace kiln::dist {

namespace {
using Clock = std::chrono::steady_clock;
double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
}  // namespace

void broadcast_module(nn::Module& module, Communicator& comm, int root) {
  NoGradGuard no_grad;
  auto send = [&](const nn::NamedTensors& tensors) {
    for (const auto& [name, t] : tensors) {
      KILN_CHECK(t.is_contiguous(), "broadcast_module: ", name, " (", t.meta_str(), ") is not contiguous");
      Tensor data = t.detach();
      comm.broadcast(data, root);
    }
  };
  send(module.named_parameters());
  send(module.named_buffers());
}

struct Bucket {
  std::vector<int> params;       // indices into State::params
  std::vector<int64_t> offsets;  // where each one's gradient starts in `buffer`
  Tensor buffer;                 // flat, in the parameters' dtype and device
  int pending = 0;               // parameters not ready yet in this backward
  std::shared_ptr<Work> work;    // set once launched
};

struct DistributedDataParallel::State {
  Communicator* comm = nullptr;
  std::vector<Tensor> params;
  std::vector<int> bucket_of;  // per parameter
  std::vector<bool> ready;     // per parameter, in this backward
  std::vector<Bucket> buckets;
  size_t next_bucket = 0;      // the next bucket to launch: buckets start in index order
  bool active = true;          // false once the DistributedDataParallel is gone
  bool no_sync = false;
  bool any_ready = false;      // a synchronised backward is under way
  Clock::time_point first_ready, first_launch;
  OverlapStats stats;

  void launch(Bucket& b) {
    NoGradGuard no_grad;
    for (size_t k = 0; k < b.params.size(); ++k) {
      const Tensor& p = params[static_cast<size_t>(b.params[k])];
      Tensor slot = b.buffer.narrow(0, b.offsets[k], p.numel());
      const Tensor g = p.grad();
      if (g.defined()) slot.copy_(g.reshape({-1}));
      else slot.zero_();  // unused on this rank: contributes zeros, as every rank must send
    }
    if (next_bucket == 0) first_launch = Clock::now();
    b.work = comm->all_reduce_async(b.buffer, ReduceOp::avg);
  }
  void launch_ready_buckets() {
    while (next_bucket < buckets.size() && buckets[next_bucket].pending == 0) {
      launch(buckets[next_bucket]);
      ++next_bucket;
    }
  }
  void on_grad_ready(int i) {
    if (!active || no_sync) return;
    KILN_CHECK(!ready[static_cast<size_t>(i)], "DistributedDataParallel: parameter ", i, " (",
               params[static_cast<size_t>(i)].meta_str(),
               ") got a gradient twice before finish_gradient_sync(); call it after every "
               "backward outside no_sync()");
    ready[static_cast<size_t>(i)] = true;
    if (!any_ready) {
      any_ready = true;
      first_ready = Clock::now();
    }
    Bucket& b = buckets[static_cast<size_t>(bucket_of[static_cast<size_t>(i)])];
    if (--b.pending == 0) launch_ready_buckets();
  }
};

DistributedDataParallel::DistributedDataParallel(nn::Module& module, Communicator& comm, DDPOptions options)
    : module_(module), state_(std::make_shared<State>()) {
  KILN_CHECK(options.bucket_mb > 0, "DistributedDataParallel: bucket_mb must be > 0, got ", options.bucket_mb);
  broadcast_module(module, comm);
  State& s = *state_;
  s.comm = &comm;
  s.params = module.parameters();

  // Buckets in reverse registration order; a new one when the current is full or the dtype or
  // device changes (a flat buffer holds one of each).
  const double cap_bytes = options.bucket_mb * 1024.0 * 1024.0;
  s.bucket_of.assign(s.params.size(), -1);
  s.ready.assign(s.params.size(), false);
  double bytes = 0;
  for (int i = static_cast<int>(s.params.size()) - 1; i >= 0; --i) {
    const Tensor& p = s.params[static_cast<size_t>(i)];
    if (!p.requires_grad()) continue;
    const bool fits = !s.buckets.empty() && bytes < cap_bytes &&
                      s.params[static_cast<size_t>(s.buckets.back().params[0])].dtype() == p.dtype() &&
                      s.params[static_cast<size_t>(s.buckets.back().params[0])].device() == p.device();
    if (!fits) {
      s.buckets.emplace_back();
      bytes = 0;
    }
    Bucket& b = s.buckets.back();
    b.offsets.push_back(b.params.empty() ? 0 : b.offsets.back() + s.params[static_cast<size_t>(b.params.back())].numel());
    b.params.push_back(i);
    s.bucket_of[static_cast<size_t>(i)] = static_cast<int>(s.buckets.size()) - 1;
    bytes += static_cast<double>(p.numel() * static_cast<int64_t>(p.element_size()));
  }
  for (Bucket& b : s.buckets) {
    const Tensor& last = s.params[static_cast<size_t>(b.params.back())];
    b.buffer = zeros({b.offsets.back() + last.numel()}, last.options());
    b.pending = static_cast<int>(b.params.size());
  }
  // The hooks hold the state, not this object: they stay on the parameters after it is gone.
  for (size_t i = 0; i < s.params.size(); ++i) {
    if (s.bucket_of[i] < 0) continue;
    std::weak_ptr<State> weak = state_;
    const int index = static_cast<int>(i);
    s.params[i].register_post_accumulate_grad_hook([weak, index](Tensor&) {
      if (auto st = weak.lock()) st->on_grad_ready(index);
    });
  }
}

DistributedDataParallel::~DistributedDataParallel() { state_->active = false; }

void DistributedDataParallel::finish_gradient_sync() {
  State& s = *state_;
  if (!s.any_ready) return;  // no synchronised backward since the last call
  const Clock::time_point backward_end = Clock::now();
  // Parameters that got no gradient: their buckets start now, with zeros in their place.
  for (size_t b = s.next_bucket; b < s.buckets.size(); ++b) s.buckets[b].pending = 0;
  s.launch_ready_buckets();

  NoGradGuard no_grad;
  for (Bucket& b : s.buckets) {
    b.work->wait();
    b.work.reset();
    for (size_t k = 0; k < b.params.size(); ++k) {
      const Tensor& p = s.params[static_cast<size_t>(b.params[k])];
      Tensor avg = b.buffer.narrow(0, b.offsets[k], p.numel()).view(p.shape());
      Tensor g = p.grad();
      if (g.defined()) g.copy_(avg);
      else p.set_grad(avg.clone());
    }
    b.pending = static_cast<int>(b.params.size());
  }
  const Clock::time_point done = Clock::now();
  s.stats.backward_s = seconds(backward_end - s.first_ready);
  s.stats.comm_s = seconds(done - s.first_launch);
  s.stats.exposed_s = seconds(done - backward_end);
  s.stats.buckets = static_cast<int>(s.buckets.size());
  std::fill(s.ready.begin(), s.ready.end(), false);
  s.next_bucket = 0;
  s.any_ready = false;
}

DistributedDataParallel::NoSyncGuard::NoSyncGuard(DistributedDataParallel& ddp)
    : ddp_(ddp), previous_(ddp.state_->no_sync) {
  ddp.state_->no_sync = true;
}
DistributedDataParallel::NoSyncGuard::~NoSyncGuard() { ddp_.state_->no_sync = previous_; }

const OverlapStats& DistributedDataParallel::last_overlap() const { return state_->stats; }

std::vector<std::vector<int>> DistributedDataParallel::bucket_layout() const {
  std::vector<std::vector<int>> out;
  for (const Bucket& b : state_->buckets) out.push_back(b.params);
  return out;
}

}  // namespace kiln::dist
