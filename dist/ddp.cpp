#include "dist/ddp.h"

#include <algorithm>

#include "core/autograd.h"
#include "core/error.h"
#include "dist/used_flags.h"

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
  // Per parameter, used in this sync window (no_sync micro-steps too). The flags ride at the end
  // of the last bucket's buffer, from used_offset: it is launched last, when every rank's window
  // is over, so they need no collective of their own.
  std::unique_ptr<UsedFlags> used;
  int64_t used_offset = 0;
  std::vector<int> unused;     // no rank used these in the last synchronised window
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
    // The last bucket launches only once every other one has, so either during backward with
    // every parameter ready (all used) or in finish_gradient_sync(): the flags are final.
    if (&b == &buckets.back()) used->write(used_slots());
    if (next_bucket == 0) first_launch = Clock::now();
    b.work = comm->all_reduce_async(b.buffer, ReduceOp::avg);
  }
  Tensor used_slots() const {
    return buckets.back().buffer.narrow(0, used_offset, static_cast<int64_t>(params.size()));
  }
  void launch_ready_buckets() {
    while (next_bucket < buckets.size() && buckets[next_bucket].pending == 0) {
      launch(buckets[next_bucket]);
      ++next_bucket;
    }
  }
  void on_grad_ready(int i) {
    if (!active) return;
    used->mark(static_cast<size_t>(i));
    if (no_sync) return;
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
  std::vector<bool> tracked(s.params.size());  // parameters without requires_grad take no part
  for (size_t i = 0; i < s.params.size(); ++i) tracked[i] = s.bucket_of[i] >= 0;
  s.used = std::make_unique<UsedFlags>(std::move(tracked));
  for (Bucket& b : s.buckets) {
    const Tensor& last = s.params[static_cast<size_t>(b.params.back())];
    const int64_t grads = b.offsets.back() + last.numel();
    const int64_t flags = &b == &s.buckets.back() ? static_cast<int64_t>(s.params.size()) : 0;
    if (flags) s.used_offset = grads;
    b.buffer = zeros({grads + flags}, last.options());
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
  // Always a collective, even when no hook fired here since the last call (this rank's backward
  // reached no parameter, or ran only under no_sync): the other ranks wait for these buckets.
  const Clock::time_point backward_end = Clock::now();
  if (!s.any_ready) s.first_ready = backward_end;
  // Parameters that got no gradient: their buckets start now, with zeros in their place.
  for (size_t b = s.next_bucket; b < s.buckets.size(); ++b) s.buckets[b].pending = 0;
  s.launch_ready_buckets();

  NoGradGuard no_grad;
  for (Bucket& b : s.buckets) {
    b.work->wait();
    b.work.reset();
  }
  s.unused = s.buckets.empty() ? std::vector<int>{} : s.used->unused_everywhere(s.used_slots());
  std::vector<bool> skip(s.params.size(), false);
  for (int i : s.unused) skip[static_cast<size_t>(i)] = true;
  for (Bucket& b : s.buckets) {
    for (size_t k = 0; k < b.params.size(); ++k) {
      const size_t i = static_cast<size_t>(b.params[k]);
      const Tensor& p = s.params[i];
      // No rank used it: its .grad stays as it was (undefined after zero_grad()), so the
      // optimizer skips it as it would in one process. Nothing to copy back.
      if (skip[i]) continue;
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
  s.used->reset();
  s.next_bucket = 0;
  s.any_ready = false;
}

DistributedDataParallel::NoSyncGuard::NoSyncGuard(DistributedDataParallel& ddp)
    : ddp_(ddp), previous_(ddp.state_->no_sync) {
  ddp.state_->no_sync = true;
}
DistributedDataParallel::NoSyncGuard::~NoSyncGuard() { ddp_.state_->no_sync = previous_; }

const OverlapStats& DistributedDataParallel::last_overlap() const { return state_->stats; }

const std::vector<int>& DistributedDataParallel::last_unused_parameters() const { return state_->unused; }

std::vector<std::vector<int>> DistributedDataParallel::bucket_layout() const {
  std::vector<std::vector<int>> out;
  for (const Bucket& b : state_->buckets) out.push_back(b.params);
  return out;
}

}  // namespace kiln::dist
