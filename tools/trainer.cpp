// The training runner, in the order it happens: device, run directory, model, data,
// optimizer and schedule, resume, the loop (step, log, evaluate, checkpoint), the end.
#include "tools/trainer.h"

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <limits>
#include <sstream>

#include "core/autograd.h"
#include "core/generator.h"
#include "core/ops.h"
#include "data/dataloader.h"
#include "data/dataset.h"
#include "models/registry.h"
#include "optim/clip_grad.h"
#include "optim/param_groups.h"
#include "optim/lr_schedule.h"
#include "optim/optimizer.h"
#include "optim/registry.h"
#include "tools/io/atomic_file.h"
#include "tools/io/checkpoint.h"
#include "tools/io/jsonl.h"
#include "tools/io/tensorboard.h"
#include "tools/progress.h"
#include "tools/run_dir.h"

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

Device resolve_device(const std::string& spec) {
  if (spec == "auto") return cuda_is_available() ? Device(DeviceType::CUDA, 0) : kCPU;
  const Device d = Device::parse(spec);
  KILN_CHECK(d.is_cpu() || d.index < cuda_device_count(), "device: ", spec, " was requested but ",
             cuda_device_count(), " CUDA devices are visible");
  return d;
}

models::ModelSpec model_spec(const Config& cfg, const Shape& chw) {
  models::ModelSpec s;
  s.name = cfg.get_string("model.name");
  s.hidden_sizes = cfg.get_int_list("model.hidden_sizes");
  s.activation = cfg.get_string("model.activation");
  s.dropout = cfg.get_float("model.dropout");
  s.num_classes = cfg.get_int("model.num_classes");
  s.channels = cfg.get_int_list("model.channels");
  s.blocks_per_stage = cfg.get_int("model.blocks_per_stage");
  s.in_channels = chw[0];
  s.height = chw[1];
  s.width = chw[2];
  return s;
}

DataLoaderOptions loader_options(const Config& cfg, bool training, Device device) {
  DataLoaderOptions o;
  o.batch_size = cfg.get_int(training ? "data.batch_size" : "data.eval_batch_size");
  o.shuffle = training && cfg.get_bool("data.shuffle");
  o.seed = static_cast<uint64_t>(cfg.get_int("train.seed"));
  o.drop_last = training && cfg.get_bool("data.drop_last");
  o.transform.mean = {cfg.get_float("data.mean")};
  o.transform.std = {cfg.get_float("data.std")};
  if (training) {
    o.transform.crop_padding = cfg.get_int("data.random_crop_padding");
    o.transform.horizontal_flip = cfg.get_bool("data.horizontal_flip");
  }
  o.prefetch = cfg.get_int("data.prefetch");
  o.device = device;
  return o;
}

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

struct Evaluation {
  double loss = 0, accuracy = 0;
  int64_t samples = 0;
};

// Mean loss and accuracy over one pass of `loader`; sums stay on the device until the end.
Evaluation run_eval(nn::Module& model, DataLoader& loader) {
  const bool was_training = model.is_training();
  model.eval();
  NoGradGuard no_grad;
  loader.set_state({});
  Tensor loss_sum, correct;
  int64_t n = 0;
  Batch b;
  while (loader.next(b)) {
    Tensor logits = model(b.inputs);
    Tensor l = cross_entropy(logits, b.targets, -100, Reduction::sum).to(DType::f64);
    Tensor c = sum(eq(argmax(logits, 1), b.targets));
    loss_sum = loss_sum.defined() ? add(loss_sum, l) : l;
    correct = correct.defined() ? add(correct, c) : c;
    n += b.targets.size(0);
  }
  model.train(was_training);
  Evaluation e;
  e.samples = n;
  if (n > 0) {
    e.loss = loss_sum.item() / static_cast<double>(n);
    e.accuracy = correct.item() / static_cast<double>(n);
  }
  return e;
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

// The checkpoint to resume from, per train.resume: never, auto, or a path.
std::optional<fs::path> resume_point(const std::string& resume, const fs::path& run_dir) {
  if (resume == "never") return std::nullopt;
  if (resume == "auto") return io::latest_valid_checkpoint(run_dir / "checkpoints");
  KILN_CHECK(fs::exists(resume), "train.resume: checkpoint ", resume, " does not exist");
  return fs::path(resume);
}

}  // namespace

// ---------------------------------------------------------------- train
TrainSummary train(const Config& cfg) {
  const Device device = resolve_device(cfg.get_string("device"));
  const int64_t total_steps = cfg.get_int("train.steps");
  const uint64_t seed = static_cast<uint64_t>(cfg.get_int("train.seed"));
  // Checked before anything is written: bad schedule options leave no run directory behind.
  auto schedule = make_schedule_from(cfg);

  // Run directory: a fresh one, or the one named by log.run_dir (what resume uses).
  std::string name = cfg.get_string("log.name");
  if (name.empty()) name = fs::path(cfg.source()).stem().string();
  if (name.empty() || name == "defaults") name = cfg.get_string("model.name");
  const fs::path run_dir = make_run_dir(cfg.get_string("log.dir"), name, cfg.get_string("log.run_dir"));
  io::write_file_atomic(run_dir / "config.yaml", cfg.to_yaml());
  RunLog log(run_dir / "train.log");

  // Data first: a missing dataset should fail before any work is done.
  const std::string dataset = cfg.get_string("data.dataset");
  auto train_set = std::make_shared<ImageDataset>(load_dataset(dataset, "train", cfg.get_string("data.dir")));
  auto test_set = std::make_shared<ImageDataset>(load_dataset(dataset, "test", cfg.get_string("data.dir")));
  DataLoader train_loader(train_set, loader_options(cfg, true, device));
  DataLoader test_loader(test_set, loader_options(cfg, false, device));

  // Model: initialised from the default generator (so dropout continues the same stream).
  manual_seed(seed);
  auto model = models::make_model(model_spec(cfg, train_set->sample_shape()));
  model->to(device);
  auto optimizer = make_optimizer_from(cfg, *model);

  int64_t step = 0;
  if (auto ckpt = resume_point(cfg.get_string("train.resume"), run_dir)) {
    io::CheckpointContents c = io::load_checkpoint(*ckpt);
    model->load_state_dict(c.model);
    optimizer->load_state_tensors(c.optim);
    default_generator().set_state(c.rng_seed, c.rng_offset);
    train_loader.set_state({c.data_loader.at("epoch").get<int64_t>(), c.data_loader.at("batch").get<int64_t>()});
    step = c.step;
    log.line("resumed from " + ckpt->string() + " at step " + std::to_string(step));
  }

  log.line("kiln train: " + model->type_name() + " " + cfg.get_string("model.name") + " with " +
           std::to_string(model->num_parameters()) + " parameters on " + device.str() + ", " +
           std::to_string(total_steps) + " steps, batch " + std::to_string(cfg.get_int("data.batch_size")));
  log.line("run directory: " + run_dir.string());

  io::JsonlWriter metrics(run_dir / "metrics.jsonl");
  std::unique_ptr<io::SummaryWriter> tb;
  if (cfg.get_bool("log.tensorboard")) tb = std::make_unique<io::SummaryWriter>(run_dir);

  auto save = [&](int64_t at) {
    io::CheckpointContents c;
    c.model = model->state_dict();
    c.optim = optimizer->state_tensors();
    c.rng_seed = default_generator().seed();
    c.rng_offset = default_generator().offset();
    const LoaderState ls = train_loader.state();
    c.data_loader = json{{"epoch", ls.epoch}, {"batch", ls.batch}};
    c.config = cfg.to_yaml();
    return io::save_checkpoint(run_dir / "checkpoints", at, c, static_cast<int>(cfg.get_int("checkpoint.keep_last")));
  };
  auto record = [&](int64_t at, const json& values) {
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
  const double label_smoothing = cfg.get_float("train.label_smoothing");
  const std::vector<Tensor> params = model->parameters();

  TrainSummary summary;
  summary.run_dir = run_dir;
  StopSignals signals;
  Progress progress(total_steps, step);
  Tensor window_loss;  // summed on the device between log lines: no sync per step
  int64_t window_steps = 0, window_samples = 0;
  auto window_start = std::chrono::steady_clock::now();
  model->train();

  while (step < total_steps) {
    Batch batch;
    if (!train_loader.next(batch)) continue;  // end of an epoch: the loader moves to the next

    const double lr = schedule->lr_at(step);
    apply_lr_schedule(*optimizer, *schedule, step);
    Tensor logits = (*model)(batch.inputs);
    Tensor loss = cross_entropy(logits, batch.targets, -100, Reduction::mean, label_smoothing);
    loss.backward();
    // The global gradient norm: clipped when asked, otherwise only measured at log steps
    // (an infinite limit never scales), since reading it waits for the device.
    const bool log_now = step + 1 == total_steps || (step + 1) % log_every == 0;
    double grad_norm = -1;
    if (grad_clip > 0) grad_norm = clip_grad_norm_(params, grad_clip);
    else if (log_now) grad_norm = clip_grad_norm_(params, std::numeric_limits<double>::infinity());
    optimizer->step();
    optimizer->zero_grad();
    ++step;

    {
      NoGradGuard no_grad;
      Tensor l = loss.detach().to(DType::f64);
      window_loss = window_loss.defined() ? add(window_loss, l) : l;
    }
    ++window_steps;
    window_samples += batch.targets.size(0);

    if (log_now) {
      const double mean_loss = window_loss.item() / static_cast<double>(window_steps);
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - window_start).count();
      const double samples_per_s = secs > 0 ? static_cast<double>(window_samples) / secs : 0.0;
      json values = {{"train/loss", mean_loss}, {"train/lr", lr}, {"train/samples_per_s", samples_per_s}};
      if (grad_norm >= 0) values["train/grad_norm"] = grad_norm;
      record(step, values);
      if (tb) tb->flush();  // TensorBoard shows points as they come
      if (progress.is_tty()) {
        progress.draw(step, mean_loss, lr, samples_per_s);
        log.file_only(progress.status(step, mean_loss, lr, samples_per_s));
      } else {
        log.line(progress.status(step, mean_loss, lr, samples_per_s));
      }
      window_loss = Tensor();
      window_steps = window_samples = 0;
      window_start = std::chrono::steady_clock::now();
    }
    if ((eval_every > 0 && step % eval_every == 0) || step == total_steps) {
      const Evaluation e = run_eval(*model, test_loader);
      progress.finish();
      log.line("eval at step " + std::to_string(step) + ": test loss " + fixed(e.loss, 4) +
               ", test accuracy " + fixed(100 * e.accuracy, 2) + "% (" + std::to_string(e.samples) + " images)");
      record(step, {{"eval/loss", e.loss}, {"eval/accuracy", e.accuracy}});
      summary.test_loss = e.loss;
      summary.test_accuracy = e.accuracy;
    }
    const bool stopping = stop_signal != 0;
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
EvalSummary evaluate(const Config& cfg, const std::string& checkpoint) {
  const Device device = resolve_device(cfg.get_string("device"));
  fs::path path = checkpoint;
  if (fs::is_directory(path)) {
    const fs::path dir = fs::exists(path / "checkpoints") ? path / "checkpoints" : path;
    auto latest = io::latest_valid_checkpoint(dir);
    KILN_CHECK(latest, "no valid checkpoint in ", dir.string());
    path = *latest;
  }
  io::CheckpointContents c = io::load_checkpoint(path);
  const std::string dataset = cfg.get_string("data.dataset");
  auto test_set = std::make_shared<ImageDataset>(load_dataset(dataset, "test", cfg.get_string("data.dir")));
  auto model = models::make_model(model_spec(cfg, test_set->sample_shape()));
  model->load_state_dict(c.model);
  model->to(device);
  DataLoader loader(test_set, loader_options(cfg, false, device));
  const Evaluation e = run_eval(*model, loader);
  return {e.loss, e.accuracy, e.samples};
}

}  // namespace kiln
