// The training runner, in the order it happens: device, run directory, data and model (a
// TrainTask: images or token shards, tools/train_task.h), optimizer, schedule and loss scaler,
// resume, the loop (micro-batches forward and backward under autocast, clip, step, log,
// evaluate, checkpoint), the end.
#include "tools/trainer.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <limits>
#include <sstream>

#include "core/autocast.h"
#include "core/autograd.h"
#include "core/generator.h"
#include "core/ops.h"
#include "data/dataloader.h"
#include "models/registry.h"
#include "optim/clip_grad.h"
#include "optim/grad_scaler.h"
#include "optim/param_groups.h"
#include "optim/lr_schedule.h"
#include "optim/optimizer.h"
#include "optim/registry.h"
#include "tools/io/atomic_file.h"
#include "tools/io/checkpoint.h"
#include "tools/io/jsonl.h"
#include "tools/io/tensorboard.h"
#include "tools/distributed_run.h"
#include "tools/progress.h"
#include "tools/run_dir.h"
#include "tools/train_task.h"

namespace kiln {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// ---------------------------------------------------------------- setup helpers
std::atomic<int> stop_signal{0};
extern "C" void on_stop_signal(int sig) { stop_signal = sig; }

// SIGINT/SIGTERM during training ask the loop to checkpoint and stop at the next step.
class StopSignals {
 public:
  StopSignals() {
    stop_signal = 0;
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
  }
  ~StopSignals() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }

 private:
  struct sigaction old_int_ {}, old_term_ {};
};

std::unique_ptr<Optimizer> make_optimizer_from(const Config& cfg, const nn::Module& model) {
  OptimizerOptions o;
  o.lr = cfg.get_float("optim.lr");
  o.weight_decay = cfg.get_float("optim.weight_decay");
  o.momentum = cfg.get_float("optim.momentum");
  o.nesterov = cfg.get_bool("optim.nesterov");
  o.beta1 = cfg.get_float("optim.beta1");
  o.beta2 = cfg.get_float("optim.beta2");
  o.eps = cfg.get_float("optim.eps");
  // Decay only matrices and filters; biases and norm scales get none (nanoGPT's groups).
  auto groups = make_param_groups(model.named_parameters(), cfg.get_float("optim.weight_decay"));
  return make_optimizer(cfg.get_string("optim.name"), std::move(groups), o);
}

std::unique_ptr<LRSchedule> make_schedule_from(const Config& cfg) {
  LRScheduleOptions o;
  o.lr = cfg.get_float("optim.lr");
  o.total_steps = cfg.get_int("train.steps");
  o.warmup_steps = cfg.get_int("schedule.warmup_steps");
  o.min_lr = cfg.get_float("schedule.min_lr");
  o.step_size = cfg.get_int("schedule.step_size");
  o.gamma = cfg.get_float("schedule.gamma");
  o.pct_start = cfg.get_float("schedule.pct_start");
  return make_lr_schedule(cfg.get_string("schedule.name"), o);
}

// The checkpoint to resume from, per train.resume: never, auto, or a path.
std::optional<fs::path> resume_point(const std::string& resume, const fs::path& run_dir) {
  if (resume == "never") return std::nullopt;
  if (resume == "auto") return io::latest_valid_checkpoint(run_dir / "checkpoints");
  KILN_CHECK(fs::exists(resume), "train.resume: checkpoint ", resume, " does not exist");
  return fs::path(resume);
}

// train.precision: the autocast dtype of the forward pass and the loss; f32 means no autocast.
struct Precision {
  bool autocast = false;
  DType dtype = DType::bf16;
};
Precision precision_from(const Config& cfg) {
  const std::string p = cfg.get_string("train.precision");
  if (p == "bf16") return {true, DType::bf16};
  if (p == "f16") return {true, DType::f16};
  return {};
}

// Rows [start, start + n) of a batch: a micro-batch (views, no copies).
Batch slice_rows(const Batch& b, int64_t start, int64_t n) {
  if (start == 0 && n == b.targets.size(0)) return b;
  Batch m = b;
  m.inputs = b.inputs.narrow(0, start, n);
  m.targets = b.targets.narrow(0, start, n);
  if (!b.indices.empty()) m.indices.assign(b.indices.begin() + start, b.indices.begin() + start + n);
  return m;
}

}  // namespace

// ---------------------------------------------------------------- train
TrainSummary train(const Config& cfg) {
  // Several ranks (kiln launch): join them; each trains on cuda:LOCAL_RANK or the CPU.
  DistributedRun dist(cfg, resolve_device(cfg.get_string("device")));
  const Device device = dist.device();
  const int64_t total_steps = cfg.get_int("train.steps");
  const uint64_t seed = static_cast<uint64_t>(cfg.get_int("train.seed"));
  // Checked before anything is written: bad schedule options leave no run directory behind.
  auto schedule = make_schedule_from(cfg);

  // Data first: a missing dataset or shard should fail before any work is done or any
  // directory is made.
  // Evaluation is split across the ranks too (each runs its share, the sums are all-reduced).
  auto task = TrainTask::create(cfg, device, /*training=*/true, dist.rank(), dist.world_size(), dist.communicator());

  // Run directory: a fresh one, or the one named by log.run_dir (what resume uses).
  std::string name = cfg.get_string("log.name");
  if (name.empty()) name = fs::path(cfg.source()).stem().string();
  if (name.empty() || name == "defaults") name = cfg.get_string("model.name");
  // Rank 0 makes it and writes there; the other ranks only read checkpoints and keep a log of their own.
  const fs::path run_dir =
      dist.shared_path([&] { return make_run_dir(cfg.get_string("log.dir"), name, cfg.get_string("log.run_dir")); });
  if (dist.is_main()) io::write_file_atomic(run_dir / "config.yaml", cfg.to_yaml());
  RunLog log(dist.is_main() ? run_dir / "train.log" : run_dir / ("train.rank" + std::to_string(dist.rank()) + ".log"),
             /*to_terminal=*/dist.is_main());

  // Model: initialised from the default generator (so dropout continues the same stream).
  manual_seed(seed);
  auto model = models::make_model(task->model_spec());
  task->prepare_model(*model);
  model->to(device);
  auto optimizer = make_optimizer_from(cfg, *model);
  dist.wrap(*model, *optimizer, log);  // rank 0's weights everywhere; DDP or ZeRO-1
  const Precision precision = precision_from(cfg);
  // f16's narrow range needs loss scaling; bf16 has f32's range and needs none.
  GradScaler scaler({.enabled = precision.autocast && precision.dtype == DType::f16});

  int64_t step = 0;
  if (auto ckpt = resume_point(cfg.get_string("train.resume"), run_dir)) {
    io::CheckpointContents c = io::load_checkpoint(*ckpt);
    model->load_state_dict(c.model);
    dist.load_optimizer_state(*optimizer, c.optim);
    default_generator().set_state(c.rng_seed, c.rng_offset);
    task->load_data_state(c.data_loader);
    if (scaler.is_enabled() && c.extra.contains("grad_scaler")) {
      const json& gs = c.extra["grad_scaler"];
      scaler.load_state({gs.at("scale").get<double>(), gs.at("growth_tracker").get<int64_t>()});
    }
    step = c.step;
    log.line("resumed from " + ckpt->string() + " at step " + std::to_string(step));
  }

  const int64_t micro_batch = cfg.get_int("data.batch_size");
  const int64_t accum = cfg.get_int("train.grad_accum_steps");
  log.line("kiln train: " + model->type_name() + " " + cfg.get_string("model.name") + " with " +
           std::to_string(model->num_parameters()) + " parameters on " + device.str() + ", " +
           std::to_string(total_steps) + " steps, batch " + std::to_string(micro_batch) +
           (accum > 1 ? " x " + std::to_string(accum) + " micro-batches" : "") + ", " +
           cfg.get_string("train.precision"));
  log.line("data: " + task->describe());
  log.line("run directory: " + run_dir.string());

  io::JsonlWriter metrics(run_dir / "metrics.jsonl");
  std::unique_ptr<io::SummaryWriter> tb;
  if (cfg.get_bool("log.tensorboard") && dist.is_main()) tb = std::make_unique<io::SummaryWriter>(run_dir);

  auto save = [&](int64_t at) {
    io::CheckpointContents c;
    c.model = model->state_dict();
    c.optim = dist.optimizer_state(*optimizer);  // gathered from every rank under ZeRO-1
    c.rng_seed = default_generator().seed();
    c.rng_offset = default_generator().offset();
    c.data_loader = task->data_state();
    if (scaler.is_enabled()) {
      const GradScalerState gs = scaler.state();
      c.extra["grad_scaler"] = {{"scale", gs.scale}, {"growth_tracker", gs.growth_tracker}};
    }
    c.config = cfg.to_yaml();
    return dist.on_main([&] {
      return io::save_checkpoint(run_dir / "checkpoints", at, c, static_cast<int>(cfg.get_int("checkpoint.keep_last")));
    });
  };
  auto record = [&](int64_t at, const json& values) {
    if (!dist.is_main()) return;
    json line = values;
    line["step"] = at;
    metrics.write(line);
    if (tb)
      for (auto& [k, v] : values.items()) tb->add_scalar(k, v.get<double>(), at);
  };

  const int64_t log_every = cfg.get_int("train.log_every");
  const int64_t eval_every = cfg.get_int("train.eval_every");
  const int64_t ckpt_every = cfg.get_int("checkpoint.every");
  const double grad_clip = cfg.get_float("optim.grad_clip");
  const std::vector<Tensor> params = model->parameters();

  TrainSummary summary;
  summary.run_dir = run_dir;
  StopSignals signals;
  Progress progress(total_steps, step);
  Tensor window_loss;  // summed on the device between log lines: no sync per step
  int64_t window_steps = 0, window_samples = 0, window_tokens = 0;
  auto window_start = std::chrono::steady_clock::now();
  model->train();

  while (step < total_steps) {
    const Batch batch = task->next_batch();
    const double lr = schedule->lr_at(step);
    apply_lr_schedule(dist.scheduled(*optimizer), *schedule, step);

    // Forward and backward micro-batch by micro-batch; gradients add up in .grad. Each loss is
    // weighted by its share of the step's rows, so the sum is the mean over the whole batch and
    // N micro-batches of B make the same step as one batch of N*B.
    const int64_t rows = batch.targets.size(0);
    Tensor step_loss;
    for (int64_t start = 0; start < rows; start += micro_batch) {
      const int64_t n = std::min(micro_batch, rows - start);
      const Batch micro = slice_rows(batch, start, n);
      Tensor loss;
      {
        AutocastGuard autocast(precision.dtype, precision.autocast);
        loss = task->loss(*model, micro);
      }
      if (n != rows) loss = mul(loss, static_cast<double>(n) / static_cast<double>(rows));
      {
        auto no_sync = dist.micro_step(/*last=*/start + n >= rows);  // only the last one all-reduces
        scaler.scale(loss).backward();
      }
      NoGradGuard no_grad;
      Tensor l = loss.detach().to(DType::f64);
      step_loss = step_loss.defined() ? add(step_loss, l) : l;
    }

    // The global gradient norm: clipped when asked, otherwise only measured at log steps
    // (an infinite limit never scales), since reading it waits for the device. With f16 the
    // gradients are unscaled first, so the clip sees their true size.
    dist.sync_gradients();
    const bool log_now = step + 1 == total_steps || (step + 1) % log_every == 0;
    double grad_norm = -1;
    if (scaler.is_enabled() && (grad_clip > 0 || log_now)) dist.unscale_(*optimizer, scaler);  // ZeRO-1: my slice
    if (grad_clip > 0) grad_norm = dist.clip_grad_norm(params, grad_clip);
    else if (log_now) grad_norm = dist.clip_grad_norm(params, std::numeric_limits<double>::infinity());
    dist.step(*optimizer, scaler);  // skipped when an f16 gradient overflowed
    scaler.update();
    optimizer->zero_grad();
    ++step;

    {
      NoGradGuard no_grad;
      window_loss = window_loss.defined() ? add(window_loss, step_loss) : step_loss;
    }
    ++window_steps;
    window_samples += rows * dist.world_size();  // throughput of all ranks together
    window_tokens += task->tokens(batch) * dist.world_size();

    if (log_now) {
      const double mean_loss = dist.mean(window_loss.item() / static_cast<double>(window_steps));
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - window_start).count();
      const double samples_per_s = secs > 0 ? static_cast<double>(window_samples) / secs : 0.0;
      const double tokens_per_s = secs > 0 ? static_cast<double>(window_tokens) / secs : 0.0;
      json values = {{"train/loss", mean_loss}, {"train/lr", lr}, {"train/samples_per_s", samples_per_s}};
      if (window_tokens > 0) values["train/tokens_per_s"] = tokens_per_s;
      // Not finite after an f16 overflow (that step was skipped; JSON has no inf).
      if (grad_norm >= 0 && std::isfinite(grad_norm)) values["train/grad_norm"] = grad_norm;
      dist.add_metrics(values);
      if (scaler.is_enabled()) {
        values["train/loss_scale"] = scaler.get_scale();
        values["train/skipped_steps"] = static_cast<double>(scaler.skipped_steps());
      }
      record(step, values);
      if (tb) tb->flush();  // TensorBoard shows points as they come
      // LM runs report tokens/s, image runs samples/s.
      const double rate = window_tokens > 0 ? tokens_per_s : samples_per_s;
      const char* unit = window_tokens > 0 ? "tokens" : "samples";
      if (progress.is_tty()) {
        progress.draw(step, mean_loss, lr, rate, unit);
        log.file_only(progress.status(step, mean_loss, lr, rate, unit));
      } else {
        log.line(progress.status(step, mean_loss, lr, rate, unit));
      }
      window_loss = Tensor();
      window_steps = window_samples = window_tokens = 0;
      window_start = std::chrono::steady_clock::now();
    }
    if ((eval_every > 0 && step % eval_every == 0) || step == total_steps) {
      Evaluation e;
      {
        AutocastGuard autocast(precision.dtype, precision.autocast);
        e = task->evaluate(*model);
      }
      progress.finish();
      log.line("eval at step " + std::to_string(step) + ": " + e.summary);
      record(step, e.metrics);
      summary.test_loss = e.loss;
      summary.test_accuracy = e.accuracy;
    }
    const bool stopping = dist.any(stop_signal != 0);  // every rank stops at the same step
    if ((ckpt_every > 0 && step % ckpt_every == 0) || step == total_steps || stopping) {
      const fs::path saved = save(step);
      log.file_only("checkpoint: " + saved.string());
    }
    if (stopping) {
      progress.finish();
      log.line(std::string("stopped by ") + (stop_signal == SIGINT ? "SIGINT" : "SIGTERM") + " at step " +
               std::to_string(step) + "; checkpoint saved. Resume with: train.resume=auto log.run_dir=" +
               run_dir.string());
      summary.interrupted = true;
      break;
    }
  }
  progress.finish();
  if (tb) tb->flush();
  summary.steps = step;
  log.line("results: " + run_dir.string() + " (metrics.jsonl, TensorBoard events, checkpoints/, train.log)");
  return summary;
}

// ---------------------------------------------------------------- eval
Device resolve_device(const std::string& spec) {
  if (spec == "auto") return cuda_is_available() ? Device(DeviceType::CUDA, 0) : kCPU;
  const Device d = Device::parse(spec);
  KILN_CHECK(d.is_cpu() || d.index < cuda_device_count(), "device: ", spec, " was requested but ",
             cuda_device_count(), " CUDA devices are visible");
  return d;
}

fs::path resolve_checkpoint(const std::string& checkpoint) {
  fs::path path = checkpoint;
  if (fs::is_directory(path)) {
    const fs::path dir = fs::exists(path / "checkpoints") ? path / "checkpoints" : path;
    auto latest = io::latest_valid_checkpoint(dir);
    KILN_CHECK(latest, "no valid checkpoint in ", dir.string());
    path = *latest;
  }
  return path;
}

EvalSummary evaluate(const Config& cfg, const std::string& checkpoint) {
  // Under kiln launch the ranks share the evaluation; every rank gets the whole split's result.
  DistributedRun dist(cfg, resolve_device(cfg.get_string("device")));
  const Device device = dist.device();
  io::CheckpointContents c = io::load_checkpoint(resolve_checkpoint(checkpoint));
  auto task = TrainTask::create(cfg, device, /*training=*/false, dist.rank(), dist.world_size(), dist.communicator());
  auto model = models::make_model(task->model_spec());
  model->load_state_dict(c.model);
  model->to(device);
  const Precision precision = precision_from(cfg);
  AutocastGuard autocast(precision.dtype, precision.autocast);
  const Evaluation e = task->evaluate(*model);
  return {e.loss, e.accuracy, e.items, e.summary, dist.is_main()};
}

}  // namespace kiln
