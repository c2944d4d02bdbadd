#include "dist/zero.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "core/autograd.h"
#include "core/error.h"
#include "core/ops.h"
#include "optim/grad_scaler.h"
#include "optim/registry.h"

namespace kiln::dist {

namespace {

// "state.<i>.<key>" -> (i, key); (-1, "") for anything else.
std::pair<int64_t, std::string> parse_state_name(const std::string& name) {
  if (name.rfind("state.", 0) != 0) return {-1, ""};
  const size_t dot = name.find('.', 6);
  if (dot == std::string::npos) return {-1, ""};
  return {std::stoll(name.substr(6, dot - 6)), name.substr(dot + 1)};
}

// Calls fn(at, from, length) for each rank's chunk that the elements [begin, begin + n) of the
// parameters laid out back to back cross: `from` counts from `begin`, `at` is where they go in
// the reduce-scatter layout (chunks of `chunk` elements, the first `shard` of each gradients).
template <class Fn>
void for_each_chunk(int64_t begin, int64_t n, int64_t shard, int64_t chunk, Fn fn) {
  for (int64_t j = begin; j < begin + n;) {
    const int64_t r = j / shard, end = std::min(begin + n, (r + 1) * shard);
    fn(r * chunk + j - r * shard, j - begin, end - j);
    j = end;
  }
}

}  // namespace

ZeroRedundancyOptimizer::ZeroRedundancyOptimizer(const Optimizer& full, const OptimizerOptions& options,
                                                 Communicator& comm)
    : comm_(comm) {
  NoGradGuard no_grad;
  const int world = comm.world_size();
  Device device = kCPU;
  for (size_t g = 0; g < full.param_groups().size(); ++g)
    for (const Tensor& p : full.param_groups()[g].params) {
      KILN_CHECK(p.is_contiguous(), "ZeRO-1: parameter ", params_.size(), " (", p.meta_str(), ") is not contiguous");
      if (params_.empty()) device = p.device();
      KILN_CHECK(p.device() == device, "ZeRO-1: parameters on ", device.str(), " and ", p.device().str(),
                 "; all must share one device");
      params_f32_ = params_f32_ && p.dtype() == DType::f32;
      offsets_.push_back(numel_);
      group_of_.push_back(static_cast<int>(g));
      params_.push_back(p);
      numel_ += p.numel();
    }
  KILN_CHECK(numel_ > 0, "ZeRO-1: the optimizer has no parameters");
  shard_numel_ = (numel_ + world - 1) / world;
  padded_ = shard_numel_ * world;
  my_begin_ = shard_numel_ * comm.rank();
  KILN_CHECK(numel_ > padded_ - shard_numel_, "ZeRO-1: ", numel_, " parameter elements are too few for ",
             world, " ranks (the last rank's slice would be empty)");

  const TensorOptions f32{.dtype = DType::f32, .device = device};
  chunk_ = shard_numel_ + static_cast<int64_t>(params_.size());
  flat_ = zeros({chunk_ * world}, f32);
  reduced_ = zeros({chunk_}, f32);
  master_ = zeros({shard_numel_}, f32);
  grad_shard_ = reduced_.narrow(0, 0, shard_numel_);
  used_ = std::make_unique<UsedFlags>(std::vector<bool>(params_.size(), true));

  // The pieces of my slice, group by group, each a view of the master slice whose .grad is the
  // matching view of the gradient slice.
  std::vector<ParamGroup> groups(full.param_groups().size());
  const int64_t my_end = my_begin_ + shard_numel_;
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t lo = std::max(offsets_[i], my_begin_);
    const int64_t hi = std::min(offsets_[i] + params_[i].numel(), my_end);
    if (lo >= hi) continue;
    Tensor piece = master_.narrow(0, lo - my_begin_, hi - lo);
    Tensor grad = grad_shard_.narrow(0, lo - my_begin_, hi - lo);
    piece.set_grad(grad);
    pieces_.push_back({static_cast<int>(i), lo - offsets_[i], hi - lo, piece, grad});
    groups[static_cast<size_t>(group_of_[i])].params.push_back(piece);
  }
  for (size_t g = 0; g < groups.size(); ++g) {
    groups[g].lr = full.param_groups()[g].initial_lr;
    groups[g].weight_decay = full.param_groups()[g].weight_decay;
  }
  inner_ = make_optimizer(full.name(), std::move(groups), options);
  for (size_t g = 0; g < inner_->param_groups().size(); ++g)
    inner_->param_groups()[g].lr = full.param_groups()[g].lr;
  copy_params_to_master();
}

void ZeroRedundancyOptimizer::copy_params_to_master() {
  NoGradGuard no_grad;
  const int64_t my_end = my_begin_ + shard_numel_;
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t lo = std::max(offsets_[i], my_begin_);
    const int64_t hi = std::min(offsets_[i] + params_[i].numel(), my_end);
    if (lo < hi)
      master_.narrow(0, lo - my_begin_, hi - lo).copy_(params_[i].reshape({-1}).narrow(0, lo - offsets_[i], hi - lo));
  }
}

void ZeroRedundancyOptimizer::reduce_gradients() {
  NoGradGuard no_grad;
  used_->reset();
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor g = params_[i].grad();
    if (g.defined()) used_->mark(i);
    const Tensor src = g.defined() ? g.reshape({-1}) : Tensor();
    for_each_chunk(offsets_[i], params_[i].numel(), shard_numel_, chunk_, [&](int64_t at, int64_t from, int64_t n) {
      if (g.defined()) flat_.narrow(0, at, n).copy_(src.narrow(0, from, n));
      else flat_.narrow(0, at, n).zero_();  // unused here: contributes zeros, as every rank must send
    });
  }
  for_each_chunk(numel_, padded_ - numel_, shard_numel_, chunk_,
                 [&](int64_t at, int64_t, int64_t n) { flat_.narrow(0, at, n).zero_(); });
  const int64_t flags = static_cast<int64_t>(params_.size());
  used_->write(flat_.view({comm_.world_size(), chunk_}).narrow(1, shard_numel_, flags));  // every chunk
  comm_.reduce_scatter(reduced_, flat_, ReduceOp::avg);
  unused_ = used_->unused_everywhere(reduced_.narrow(0, shard_numel_, flags));
  // A piece of a parameter no rank gave a gradient has none either, from here on: a loss
  // scaler's unscale_ passes it by and the sharded optimizer skips it (weights, moments and step
  // count stay), as the unsharded one would skip the parameter.
  std::vector<bool> skip(params_.size(), false);
  for (int i : unused_) skip[static_cast<size_t>(i)] = true;
  for (Piece& piece : pieces_) piece.master.set_grad(skip[static_cast<size_t>(piece.param)] ? Tensor() : piece.grad);
  unscaled_by_ = nullptr;
  flag_summed_ = false;
}

void ZeroRedundancyOptimizer::unscale_(GradScaler& scaler) {
  scaler.unscale_(*inner_);
  if (scaler.is_enabled()) unscaled_by_ = &scaler;
}

double ZeroRedundancyOptimizer::clip_grad_norm(double max_norm) {
  KILN_CHECK(max_norm > 0.0, "clip_grad_norm: max_norm must be > 0, got ", max_norm);
  NoGradGuard no_grad;
  // Padding is zero, so the slices' sums of squares add up to the full one. A pending overflow
  // flag rides along as a second element (NaN or 0; the sum is NaN when any rank's is).
  Tensor sq = sum(mul(grad_shard_, grad_shard_)).to(DType::f64).reshape({1});
  const bool carry_flag = unscaled_by_ && !flag_summed_;
  if (carry_flag) {
    const Tensor found = unscaled_by_->found_inf();
    sq = cat({sq, found.defined() ? found.to(DType::f64) : zeros({1}, sq.options())}, 0);
  }
  comm_.all_reduce(sq, ReduceOp::sum);
  if (carry_flag) {
    unscaled_by_->set_found_inf(sq.narrow(0, 1, 1));
    flag_summed_ = true;
  }
  const double total_norm = std::sqrt(sq.narrow(0, 0, 1).item());
  const double clip_coef = max_norm / (total_norm + 1e-6);
  if (std::isfinite(total_norm) && clip_coef < 1.0) grad_shard_.mul_(clip_coef);
  return total_norm;
}

void ZeroRedundancyOptimizer::step() {
  NoGradGuard no_grad;
  inner_->step();  // pieces without a gradient anywhere have none (reduce_gradients)
  gather_params();
}

bool ZeroRedundancyOptimizer::step(GradScaler& scaler) {
  if (!scaler.is_enabled()) {
    step();
    return true;
  }
  NoGradGuard no_grad;
  if (!scaler.unscaled()) unscale_(scaler);
  // Under ZeRO-1 only this rank's slice holds the reduced gradients, and the ranks must agree.
  KILN_CHECK(unscaled_by_ == &scaler,
             "ZeRO-1 with a GradScaler: unscale the gradients with ZeroRedundancyOptimizer::unscale_(scaler) "
             "(after reduce_gradients), not GradScaler::unscale_, so that the ranks agree on an overflow");
  if (!flag_summed_) {  // no clip_grad_norm carried it: one all-reduce of one element
    const Tensor found = scaler.found_inf();
    Tensor flag = found.defined() ? found.clone() : zeros({1}, master_.options());
    comm_.all_reduce(flag, ReduceOp::sum);
    scaler.set_found_inf(flag);
    flag_summed_ = true;
  }
  if (!scaler.step(*inner_)) return false;  // every rank read the same sum: all skip
  gather_params();
  return true;
}

void ZeroRedundancyOptimizer::gather_params() {
  NoGradGuard no_grad;
  Tensor gathered = flat_.narrow(0, 0, padded_);
  comm_.all_gather(gathered, master_);
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor p = params_[i];
    p.copy_(gathered.narrow(0, offsets_[i], p.numel()).view(p.shape()));
  }
}

NamedTensors ZeroRedundancyOptimizer::state_tensors() {
  NoGradGuard no_grad;
  // Per parameter: 0 without state, else 1 + its step count (1 when the optimizer counts none).
  // The pieces of one parameter gain state and step together, so the max over ranks is the
  // value of any rank that holds a piece.
  std::vector<double> state_step(params_.size(), 0.0);
  std::map<std::string, Tensor> my_slice;  // key -> [shard] f32, zeros where I hold no state
  for (const auto& [name, t] : inner_->state_tensors()) {
    const auto [j, key] = parse_state_name(name);
    if (j < 0) continue;
    const Piece& piece = pieces_[static_cast<size_t>(j)];
    double& c = state_step[static_cast<size_t>(piece.param)];
    if (key == "step") {
      c = 1.0 + t.item();
      continue;
    }
    c = std::max(c, 1.0);
    Tensor& slice = my_slice[key];
    if (!slice.defined()) slice = zeros({shard_numel_}, master_.options());
    slice.narrow(0, offsets_[static_cast<size_t>(piece.param)] + piece.begin - my_begin_, piece.size).copy_(t);
  }
  Tensor all_steps = from_vector(state_step, {static_cast<int64_t>(state_step.size())},
                                {.dtype = DType::f64, .device = master_.device()});
  comm_.all_reduce(all_steps, ReduceOp::max);
  state_step = all_steps.to_vector<double>();

  // Every rank gathers the same keys (or none, before any parameter has state).
  const bool any_state = std::any_of(state_step.begin(), state_step.end(), [](double c) { return c > 0; });
  std::map<std::string, Tensor> gathered;
  for (const std::string& key : inner_->state_keys()) {
    if (key == "step" || !any_state) continue;
    Tensor& slice = my_slice[key];
    if (!slice.defined()) slice = zeros({shard_numel_}, master_.options());
    Tensor all = empty({padded_}, master_.options());
    comm_.all_gather(all, slice);
    gathered[key] = all;
  }
  // As the unsharded optimizer lists them: only parameters with state, keys in its order.
  NamedTensors out;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (state_step[i] == 0) continue;
    const Tensor& p = params_[i];
    for (const std::string& key : inner_->state_keys()) {
      const std::string name = "state." + std::to_string(i) + "." + key;
      if (key == "step")
        out.emplace_back(name, scalar_tensor(state_step[i] - 1.0, {.dtype = DType::i64}));
      else
        out.emplace_back(name, gathered[key].narrow(0, offsets_[i], p.numel()).view(p.shape()).to(p.dtype()).clone());
    }
  }
  // The groups as the full optimizer numbers its parameters.
  for (size_t g = 0; g < inner_->param_groups().size(); ++g) {
    std::vector<int64_t> indices;
    for (size_t i = 0; i < params_.size(); ++i)
      if (group_of_[i] == static_cast<int>(g)) indices.push_back(static_cast<int64_t>(i));
    const std::string prefix = "param_groups." + std::to_string(g) + ".";
    out.emplace_back(prefix + "params", from_vector(indices, {static_cast<int64_t>(indices.size())}));
    out.emplace_back(prefix + "lr", scalar_tensor(*inner_->param_groups()[g].lr, {.dtype = DType::f64}));
    out.emplace_back(prefix + "weight_decay",
                     scalar_tensor(*inner_->param_groups()[g].weight_decay, {.dtype = DType::f64}));
  }
  return out;
}

void ZeroRedundancyOptimizer::load_state_tensors(const NamedTensors& entries) {
  NoGradGuard no_grad;
  // The full state by parameter, then each of my pieces' share of it under the piece's index.
  std::map<int64_t, std::vector<std::pair<std::string, Tensor>>> by_param;
  NamedTensors mine;
  for (const auto& [name, t] : entries) {
    const auto [i, key] = parse_state_name(name);
    if (i >= 0) {
      KILN_CHECK(i < static_cast<int64_t>(params_.size()), "ZeRO-1: state entry '", name, "' is for parameter ", i,
                 " but the optimizer has ", params_.size());
      by_param[i].emplace_back(key, t);
    } else if (name.rfind("param_groups.", 0) == 0 && name.size() > 7 &&
               name.compare(name.size() - 7, 7, ".params") == 0) {
      continue;  // renumbered below
    } else {
      mine.emplace_back(name, t);  // lr, weight_decay
    }
  }
  std::vector<std::vector<int64_t>> group_pieces(inner_->param_groups().size());
  for (size_t j = 0; j < pieces_.size(); ++j) {
    const Piece& piece = pieces_[j];
    group_pieces[static_cast<size_t>(group_of_[static_cast<size_t>(piece.param)])].push_back(static_cast<int64_t>(j));
    auto it = by_param.find(piece.param);
    if (it == by_param.end()) continue;
    for (const auto& [key, t] : it->second) {
      const std::string name = "state." + std::to_string(j) + "." + key;
      if (key == "step") {
        mine.emplace_back(name, t);
      } else {
        KILN_CHECK(t.numel() == params_[static_cast<size_t>(piece.param)].numel(), "ZeRO-1: state entry 'state.",
                   piece.param, ".", key, "' has ", t.meta_str(), " but parameter ", piece.param, " is ",
                   params_[static_cast<size_t>(piece.param)].meta_str());
        mine.emplace_back(name, t.reshape({-1}).narrow(0, piece.begin, piece.size).contiguous());
      }
    }
  }
  for (size_t g = 0; g < group_pieces.size(); ++g)
    mine.emplace_back("param_groups." + std::to_string(g) + ".params",
                      from_vector(group_pieces[g], {static_cast<int64_t>(group_pieces[g].size())}));
  inner_->load_state_tensors(mine);
  copy_params_to_master();
}

int64_t ZeroRedundancyOptimizer::state_bytes_sharded() const {
  int64_t bytes = master_.numel() * static_cast<int64_t>(master_.element_size());
  for (const auto& [name, t] : inner_->state_tensors())
    if (parse_state_name(name).second != "step" && parse_state_name(name).first >= 0)
      bytes += t.numel() * static_cast<int64_t>(t.element_size());
  return bytes;
}

int64_t ZeroRedundancyOptimizer::state_bytes_unsharded() const {
  // Moments of every element, and an f32 master copy only when the parameters are not f32.
  int64_t moment_bytes = 0, covered = 0;  // covered: my elements that have state
  std::vector<bool> counted(pieces_.size(), false);
  for (const auto& [name, t] : inner_->state_tensors()) {
    const auto [j, key] = parse_state_name(name);
    if (j < 0) continue;
    if (key != "step") moment_bytes += t.numel() * static_cast<int64_t>(t.element_size());
    if (!counted[static_cast<size_t>(j)]) covered += pieces_[static_cast<size_t>(j)].size;
    counted[static_cast<size_t>(j)] = true;
  }
  const double per_element = covered > 0 ? static_cast<double>(moment_bytes) / static_cast<double>(covered) : 0.0;
  return static_cast<int64_t>(per_element * static_cast<double>(numel_)) + (params_f32_ ? 0 : numel_ * 4);
}

}  // namespace kiln::dist
