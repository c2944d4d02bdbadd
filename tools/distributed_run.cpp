#include "tools/distributed_run.h"

#include <cstdlib>
#include <sstream>

#include "core/autograd.h"
#include "core/error.h"
#include "core/ops.h"
#include "optim/clip_grad.h"

namespace kiln {

namespace fs = std::filesystem;

namespace {

std::string mib(int64_t bytes) {
  std::ostringstream s;
  s.precision(3);
  s << static_cast<double>(bytes) / (1024.0 * 1024.0) << " MiB";
  return s.str();
}

}  // namespace

DistributedRun::DistributedRun(const Config& cfg, Device device) : device_(device) {
  zero_ = cfg.get_int("dist.zero");
  bucket_mb_ = cfg.get_float("dist.bucket_mb");
  optimizer_options_.lr = cfg.get_float("optim.lr");
  optimizer_options_.weight_decay = cfg.get_float("optim.weight_decay");
  optimizer_options_.momentum = cfg.get_float("optim.momentum");
  optimizer_options_.nesterov = cfg.get_bool("optim.nesterov");
  optimizer_options_.beta1 = cfg.get_float("optim.beta1");
  optimizer_options_.beta2 = cfg.get_float("optim.beta2");
  optimizer_options_.eps = cfg.get_float("optim.eps");

  dist::InitOptions o = dist::options_from_env();
  if (o.world_size <= 1) return;  // one process: nothing to join
  // dist.backend wins when set; otherwise the launcher's --backend (KILN_DIST_BACKEND).
  o.backend = cfg.get_string("dist.backend");
  if (const char* b = std::getenv("KILN_DIST_BACKEND"); o.backend == "auto" && b && *b) o.backend = b;
  if (!std::getenv("KILN_DIST_TIMEOUT_S"))
    o.timeout = std::chrono::milliseconds(static_cast<int64_t>(cfg.get_float("dist.timeout_s") * 1000.0));
  if (device_.is_cuda()) {
    KILN_CHECK(o.local_rank < cuda_device_count(), "LOCAL_RANK=", o.local_rank, " but only ", cuda_device_count(),
               " CUDA devices are visible; launch at most one rank per GPU (kiln launch --nproc N)");
    device_ = Device(DeviceType::CUDA, o.local_rank);
  }
  comm_ = dist::init_process_group(o, device_);
}

DistributedRun::~DistributedRun() = default;

std::string DistributedRun::describe() const {
  if (!comm_) return "single process";
  std::ostringstream s;
  s << world_size() << " ranks, " << comm_->backend() << ", ";
  if (zero_) s << "ZeRO-1 (optimizer state sharded " << world_size() << " ways)";
  else s << "DDP (" << bucket_mb_ << " MB gradient buckets)";
  return s.str();
}

fs::path DistributedRun::shared_path(const std::function<fs::path()>& make) {
  if (!comm_) return make();
  // The path travels as one i64 per byte: its length first, then the bytes; on the device,
  // since NCCL moves only CUDA tensors.
  std::string path;
  std::string error;
  if (is_main()) {
    try {
      path = make().string();
    } catch (const Error& e) {
      error = e.what();
    }
  }
  Tensor len = from_vector(std::vector<int64_t>{static_cast<int64_t>(error.empty() ? path.size() : 0),
                                                error.empty() ? 0 : 1},
                           {2}, {.dtype = DType::i64, .device = device_});
  comm_->broadcast(len, 0);
  const std::vector<int64_t> head = len.to_vector<int64_t>();
  if (!error.empty()) throw Error(error);
  KILN_CHECK(head[1] == 0, "rank 0 could not create the run directory (see its error)");
  std::vector<int64_t> bytes(static_cast<size_t>(head[0]));
  for (size_t i = 0; i < path.size(); ++i) bytes[i] = static_cast<unsigned char>(path[i]);
  if (head[0] > 0) {
    Tensor t = from_vector(bytes, {head[0]}, {.dtype = DType::i64, .device = device_});
    comm_->broadcast(t, 0);
    bytes = t.to_vector<int64_t>();
  }
  std::string out;
  for (int64_t b : bytes) out.push_back(static_cast<char>(b));
  return out;
}

void DistributedRun::wrap(nn::Module& model, Optimizer& optimizer, RunLog& log) {
  log_ = &log;
  if (!comm_) return;
  if (zero_) {
    dist::broadcast_module(model, *comm_);  // rank 0's weights; ZeRO-1 reduces the gradients itself
    zero_opt_ = std::make_unique<dist::ZeroRedundancyOptimizer>(optimizer, optimizer_options_, *comm_);
  } else {
    ddp_ = std::make_unique<dist::DistributedDataParallel>(model, *comm_, dist::DDPOptions{.bucket_mb = bucket_mb_});
  }
  log.line("data parallel: " + describe());
}

Optimizer& DistributedRun::scheduled(Optimizer& optimizer) {
  return zero_opt_ ? zero_opt_->shard_optimizer() : optimizer;
}

std::unique_ptr<dist::DistributedDataParallel::NoSyncGuard> DistributedRun::micro_step(bool last) {
  if (!ddp_ || last) return nullptr;
  return std::make_unique<dist::DistributedDataParallel::NoSyncGuard>(*ddp_);
}

void DistributedRun::sync_gradients() {
  if (zero_opt_) zero_opt_->reduce_gradients();
  if (ddp_) ddp_->finish_gradient_sync();
}

void DistributedRun::unscale_(Optimizer& optimizer, GradScaler& scaler) {
  if (zero_opt_) zero_opt_->unscale_(scaler);
  else scaler.unscale_(optimizer);
}

double DistributedRun::clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  return zero_opt_ ? zero_opt_->clip_grad_norm(max_norm) : clip_grad_norm_(params, max_norm);
}

void DistributedRun::step(Optimizer& optimizer, GradScaler& scaler) {
  if (!zero_opt_) {
    scaler.step(optimizer);
    return;
  }
  const bool stepped = zero_opt_->step(scaler);  // the state exists after the first real step
  if (stepped && !memory_reported_ && log_ && is_main()) {
    memory_reported_ = true;
    const int64_t before = zero_opt_->state_bytes_unsharded(), after = zero_opt_->state_bytes_sharded();
    log_->line("ZeRO-1: optimizer state per rank " + mib(before) + " unsharded -> " + mib(after) + " (" +
               std::to_string(zero_opt_->shard_numel()) + " of " + std::to_string(zero_opt_->numel()) +
               " elements per rank, with their f32 master weights); saves " + mib(before - after) + " per rank");
  }
}

NamedTensors DistributedRun::optimizer_state(Optimizer& optimizer) {
  return zero_opt_ ? zero_opt_->state_tensors() : optimizer.state_tensors();
}

void DistributedRun::load_optimizer_state(Optimizer& optimizer, const NamedTensors& state) {
  if (zero_opt_) zero_opt_->load_state_tensors(state);
  else optimizer.load_state_tensors(state);
}

fs::path DistributedRun::on_main(const std::function<fs::path()>& write) {
  fs::path out;
  if (is_main()) out = write();
  if (comm_) comm_->barrier();
  return out;
}

bool DistributedRun::any(bool flag) {
  if (!comm_) return flag;
  Tensor t = from_vector(std::vector<double>{flag ? 1.0 : 0.0}, {1}, {.dtype = DType::f32, .device = device_});
  comm_->all_reduce(t, dist::ReduceOp::max);
  return t.item() > 0;
}

double DistributedRun::mean(double value) {
  if (!comm_) return value;
  Tensor t = from_vector(std::vector<double>{value}, {1},
                         {.dtype = device_.is_cuda() ? DType::f32 : DType::f64, .device = device_});
  comm_->all_reduce(t, dist::ReduceOp::avg);
  return t.item();
}

void DistributedRun::add_metrics(nlohmann::json& values) const {
  if (!ddp_) return;
  const dist::OverlapStats& s = ddp_->last_overlap();
  if (s.buckets == 0) return;
  values["dist/comm_ms"] = 1000.0 * s.comm_s;
  values["dist/exposed_comm_ms"] = 1000.0 * s.exposed_s;
  values["dist/overlap_fraction"] = s.overlap_fraction();
}

}  // namespace kiln
