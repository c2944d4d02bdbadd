// The two training tasks: image classification and next-token prediction on token shards.
#include "tools/train_task.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "data/dataset.h"
#include "data/sampler.h"
#include "data/token_loader.h"
#include "dist/communicator.h"
#include "models/gpt.h"
#include "tools/io/hf_gpt2.h"

namespace kiln {

using nlohmann::json;

namespace {

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

// Losses are reported and accumulated in f32 even when autocast made the logits 16-bit.
Tensor loss_in_f32(const Tensor& loss) {
  return loss.dtype() == DType::f16 || loss.dtype() == DType::bf16 ? loss.to(DType::f32) : loss;
}

// Rows per step: the micro-batch size times the accumulation steps.
int64_t rows_per_step(const Config& cfg) {
  return cfg.get_int("data.batch_size") * cfg.get_int("train.grad_accum_steps");
}

// ---------------------------------------------------------------- evaluation across ranks
// Rank `rank`'s batches of a sequential evaluation pass of `num_batches` batches: k = rank,
// rank + world_size, ... Whole batches are dealt out, not items, so each batch is the one a
// single process evaluates and its loss sum (reduced by the loss in f32) is the same bit for
// bit; only the order in which the f64 batch sums add up differs. Nothing is padded or dropped
// (unlike DistributedSampler): a rank gets at most one batch fewer than another, or none.
std::vector<int64_t> batches_of_rank(int64_t num_batches, int rank, int world_size) {
  std::vector<int64_t> mine;
  for (int64_t k = rank; k < num_batches; k += world_size) mine.push_back(k);
  return mine;
}

// The indices of a rank's batches (batches_of_rank) of a sequential pass over `n` items in
// batches of `batch_size`. A DataLoader with the same batch_size cuts them into exactly those
// batches: only the pass's last batch can be short, and it comes last on its rank.
class EvalShardSampler final : public Sampler {
 public:
  EvalShardSampler(int64_t n, int64_t batch_size, int rank, int world_size) {
    for (int64_t k : batches_of_rank((n + batch_size - 1) / batch_size, rank, world_size))
      for (int64_t i = k * batch_size; i < std::min(n, (k + 1) * batch_size); ++i) indices_.push_back(i);
  }
  int64_t size() const override { return static_cast<int64_t>(indices_.size()); }
  std::vector<int64_t> indices(int64_t /*epoch*/) const override { return indices_; }

 private:
  std::vector<int64_t> indices_;
};

// Sums over one rank's share of an evaluation.
struct EvalSums {
  double loss = 0, correct = 0, count = 0;
};

// The sums over all ranks, on every rank: one all-reduce of an f64 [3] tensor on the task's
// device (NCCL moves only CUDA tensors). Every rank calls it once per evaluation, so the
// collectives stay in step even where a rank had nothing to evaluate.
EvalSums all_reduce_sums(dist::Communicator& comm, Device device, const EvalSums& s) {
  Tensor t = from_vector(std::vector<double>{s.loss, s.correct, s.count}, {3}, {.dtype = DType::f64, .device = device});
  comm.all_reduce(t, dist::ReduceOp::sum);
  const std::vector<double> v = t.to_vector<double>();
  return {v[0], v[1], v[2]};
}

// ---------------------------------------------------------------- images
class ImageTask final : public TrainTask {
 public:
  ImageTask(const Config& cfg, Device device, bool training, int rank, int world_size, dist::Communicator* comm)
      : cfg_(cfg), label_smoothing_(cfg.get_float("train.label_smoothing")), device_(device), comm_(comm) {
    const std::string dataset = cfg.get_string("data.dataset"), dir = cfg.get_string("data.dir");
    if (training) {
      train_set_ = std::make_shared<ImageDataset>(load_dataset(dataset, "train", dir));
      DataLoaderOptions o = loader_options(true, device);
      std::shared_ptr<const Sampler> sampler;
      if (world_size > 1) {  // this rank's share of each epoch's order (the sampler shuffles)
        sampler = std::make_shared<DistributedSampler>(train_set_->size(), world_size, rank, o.shuffle, o.seed);
        o.shuffle = false;
      }
      train_loader_ = std::make_unique<DataLoader>(train_set_, o, sampler);
    }
    test_set_ = std::make_shared<ImageDataset>(load_dataset(dataset, "test", dir));
    const DataLoaderOptions eval_options = loader_options(false, device);
    if (!comm_) {
      test_loader_ = std::make_unique<DataLoader>(test_set_, eval_options);
    } else {  // this rank's batches of the test split; no loader when it has none
      auto sampler = std::make_shared<EvalShardSampler>(test_set_->size(), eval_options.batch_size, comm_->rank(),
                                                        comm_->world_size());
      if (sampler->size() > 0) test_loader_ = std::make_unique<DataLoader>(test_set_, eval_options, sampler);
    }
  }

  models::ModelSpec model_spec() const override { return model_spec_from(cfg_, test_set_->sample_shape()); }
  void prepare_model(nn::Module&) override {
    KILN_CHECK(cfg_.get_string("model.init_from").empty(), "model.init_from loads GPT-2 weights; model.name is ",
               cfg_.get_string("model.name"));
  }

  Batch next_batch() override {
    Batch b;
    while (!train_loader_->next(b)) {
    }  // false once at the end of an epoch: the loader moves on to the next
    return b;
  }
  Tensor loss(nn::Module& model, const Batch& b) const override {
    return loss_in_f32(cross_entropy(model(b.inputs), b.targets, -100, Reduction::mean, label_smoothing_));
  }
  int64_t tokens(const Batch&) const override { return 0; }

  // Mean loss and accuracy over the test split; sums stay on the device until the end.
  Evaluation evaluate(nn::Module& model) override {
    const bool was_training = model.is_training();
    model.eval();
    NoGradGuard no_grad;
    Tensor loss_sum, correct;
    int64_t n = 0;
    Batch b;
    if (test_loader_) test_loader_->set_state({});
    while (test_loader_ && test_loader_->next(b)) {
      Tensor logits = model(b.inputs);
      Tensor l = cross_entropy(logits, b.targets, -100, Reduction::sum).to(DType::f64);
      Tensor c = sum(eq(argmax(logits, 1), b.targets));
      loss_sum = loss_sum.defined() ? add(loss_sum, l) : l;
      correct = correct.defined() ? add(correct, c) : c;
      n += b.targets.size(0);
    }
    model.train(was_training);
    EvalSums s{loss_sum.defined() ? loss_sum.item() : 0.0, correct.defined() ? correct.item() : 0.0,
               static_cast<double>(n)};
    if (comm_) s = all_reduce_sums(*comm_, device_, s);
    Evaluation e;
    e.local_items = n;
    n = static_cast<int64_t>(s.count);
    e.items = n;
    if (n > 0) {
      e.loss = s.loss / static_cast<double>(n);
      e.accuracy = s.correct / static_cast<double>(n);
    }
    e.metrics = {{"eval/loss", e.loss}, {"eval/accuracy", e.accuracy}};
    e.summary = "test loss " + fixed(e.loss, 4) + ", test accuracy " + fixed(100 * e.accuracy, 2) + "% (" +
                std::to_string(n) + " images)";
    return e;
  }

  json data_state() const override {
    const LoaderState s = train_loader_->state();
    return {{"epoch", s.epoch}, {"batch", s.batch}};
  }
  void load_data_state(const json& s) override {
    train_loader_->set_state({s.at("epoch").get<int64_t>(), s.at("batch").get<int64_t>()});
  }
  std::string describe() const override {
    return cfg_.get_string("data.dataset") + " (" + std::to_string(train_set_ ? train_set_->size() : 0) +
           " training images)";
  }

 private:
  DataLoaderOptions loader_options(bool training, Device device) const {
    DataLoaderOptions o;
    o.batch_size = training ? rows_per_step(cfg_) : cfg_.get_int("data.eval_batch_size");
    o.shuffle = training && cfg_.get_bool("data.shuffle");
    o.seed = static_cast<uint64_t>(cfg_.get_int("train.seed"));
    o.drop_last = training && cfg_.get_bool("data.drop_last");
    o.transform.mean = {cfg_.get_float("data.mean")};
    o.transform.std = {cfg_.get_float("data.std")};
    if (training) {
      o.transform.crop_padding = cfg_.get_int("data.random_crop_padding");
      o.transform.horizontal_flip = cfg_.get_bool("data.horizontal_flip");
    }
    o.prefetch = cfg_.get_int("data.prefetch");
    o.device = device;
    return o;
  }

  const Config& cfg_;
  double label_smoothing_;
  Device device_;
  dist::Communicator* comm_;  // null: one process evaluates the whole split
  std::shared_ptr<ImageDataset> train_set_, test_set_;
  std::unique_ptr<DataLoader> train_loader_, test_loader_;  // test_loader_: null when this rank has no batch
};

// ---------------------------------------------------------------- tokens
// "a.bin, data/x_*.bin" -> {"a.bin", "data/x_*.bin"}
std::vector<std::string> split_patterns(const std::string& list) {
  std::vector<std::string> out;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const auto b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
    if (b != std::string::npos) out.push_back(item.substr(b, e - b + 1));
  }
  return out;
}

// A TokenLoader whose errors name the config key that pointed at the shards.
std::unique_ptr<TokenLoader> open_shards(const Config& cfg, const std::string& key, TokenLoaderOptions o) {
  const std::vector<std::string> patterns = split_patterns(cfg.get_string(key));
  KILN_CHECK(!patterns.empty(), key, " is empty: data.dataset tokens needs token shard files (llm.c format; ",
             "scripts/prepare_kjv.sh makes some)");
  try {
    return std::make_unique<TokenLoader>(patterns, o);
  } catch (const Error& e) {
    throw Error(key + " (" + cfg.get_string(key) + "): " + e.what());
  }
}

class LanguageModelTask final : public TrainTask {
 public:
  LanguageModelTask(const Config& cfg, Device device, bool training, int rank, int world_size,
                    dist::Communicator* comm)
      : cfg_(cfg), spec_(model_spec_from(cfg, {1, 1, 1})), device_(device), comm_(comm) {
    KILN_CHECK(spec_.name == "gpt", "data.dataset tokens trains a language model: set model.name to gpt (got ",
               spec_.name, ")");
    const models::GPTConfig gpt = models::gpt_config(spec_);
    seq_len_ = cfg.get_int("data.seq_len") > 0 ? cfg.get_int("data.seq_len") : gpt.block_size;
    KILN_CHECK(seq_len_ <= gpt.block_size, "data.seq_len (", seq_len_, ") is longer than model.block_size (",
               gpt.block_size, ")");
    TokenLoaderOptions o;
    o.seq_len = seq_len_;
    o.seed = static_cast<uint64_t>(cfg.get_int("train.seed"));
    o.prefetch = cfg.get_int("data.prefetch");
    o.device = device;
    if (training) {
      o.batch_size = rows_per_step(cfg);
      o.random = true;
      o.rank = rank;  // each rank draws its own windows
      o.world_size = world_size;
      train_ = open_shards(cfg, "data.train_shards", o);
      o.rank = 0;
      o.world_size = 1;
    }
    // The single-process val pass on every rank; with a communicator each rank jumps to its own
    // batches (set_state), so batches built ahead would be the other ranks': no prefetch then.
    o.batch_size = cfg.get_int("data.batch_size");
    o.random = false;
    o.max_batches = cfg.get_int("eval.batches");
    if (comm_) o.prefetch = 0;
    val_ = open_shards(cfg, "data.val_shards", o);
  }

  models::ModelSpec model_spec() const override { return spec_; }
  void prepare_model(nn::Module& model) override {
    const std::string init = cfg_.get_string("model.init_from");
    if (!init.empty()) io::load_hf_gpt2(init, model);
  }

  Batch next_batch() override {
    Batch b;
    train_->next(b);  // random windows never run out
    return b;
  }
  // GPT::loss: the fused classifier over the real vocabulary (padded columns take no part).
  Tensor loss(nn::Module& model, const Batch& b) const override {
    auto* gpt = dynamic_cast<models::GPT*>(&model);
    KILN_CHECK(gpt, "data.dataset tokens trains a GPT, got a ", model.type_name());
    return loss_in_f32(gpt->loss(model(b.inputs), b.targets));
  }
  int64_t tokens(const Batch& b) const override { return b.targets.numel(); }

  // Token-weighted mean loss over eval.batches sequential windows of the val shards.
  Evaluation evaluate(nn::Module& model) override {
    const bool was_training = model.is_training();
    model.eval();
    NoGradGuard no_grad;
    Tensor loss_sum;
    int64_t n = 0;
    Batch b;
    auto add_batch = [&] {
      const int64_t t = tokens(b);
      Tensor l = mul(loss(model, b).to(DType::f64), static_cast<double>(t));
      loss_sum = loss_sum.defined() ? add(loss_sum, l) : l;
      n += t;
    };
    if (!comm_) {
      val_->reset();
      while (val_->next(b)) add_batch();
    } else {
      for (int64_t k : batches_of_rank(val_->num_batches(), comm_->rank(), comm_->world_size())) {
        val_->set_state(k);
        KILN_CHECK(val_->next(b), "val pass: batch ", k, " of ", val_->num_batches(), " is missing");
        add_batch();
      }
    }
    model.train(was_training);
    EvalSums s{loss_sum.defined() ? loss_sum.item() : 0.0, 0.0, static_cast<double>(n)};
    if (comm_) s = all_reduce_sums(*comm_, device_, s);
    Evaluation e;
    e.local_items = n;
    n = static_cast<int64_t>(s.count);
    e.items = n;
    if (n > 0) e.loss = s.loss / static_cast<double>(n);
    const double ppl = std::exp(e.loss);
    e.metrics = {{"eval/loss", e.loss}, {"eval/perplexity", ppl}};
    e.summary = "val loss " + fixed(e.loss, 4) + ", perplexity " + fixed(ppl, 2) + " (" + std::to_string(n) + " tokens)";
    return e;
  }

  json data_state() const override { return {{"position", train_->state()}}; }
  void load_data_state(const json& s) override { train_->set_state(s.at("position").get<int64_t>()); }
  std::string describe() const override {
    std::string d = "tokens: ";
    if (train_) d += std::to_string(train_->num_tokens()) + " train tokens in " + std::to_string(train_->files().size()) + " shards, ";
    return d + std::to_string(val_->num_tokens()) + " val tokens, seq_len " + std::to_string(seq_len_);
  }

 private:
  const Config& cfg_;
  models::ModelSpec spec_;
  Device device_;
  dist::Communicator* comm_;  // null: one process evaluates the whole val pass
  int64_t seq_len_ = 0;
  std::unique_ptr<TokenLoader> train_, val_;
};

}  // namespace

models::ModelSpec model_spec_from(const Config& cfg, const Shape& chw) {
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
  s.preset = cfg.get_string("model.preset");
  s.n_layer = cfg.get_int("model.n_layer");
  s.n_head = cfg.get_int("model.n_head");
  s.n_embd = cfg.get_int("model.n_embd");
  s.block_size = cfg.get_int("model.block_size");
  s.vocab_size = cfg.get_int("model.vocab_size");
  s.padded_vocab_size = cfg.get_int("model.padded_vocab_size");
  s.attention = cfg.get_string("model.attention");
  return s;
}

// Token shards when data.dataset says tokens, or when shards are given and data.dataset is left
// at its (image) default.
std::unique_ptr<TrainTask> TrainTask::create(const Config& cfg, Device device, bool training, int rank,
                                             int world_size, dist::Communicator* comm) {
  KILN_CHECK(!comm || (comm->rank() == rank && comm->world_size() == world_size), "TrainTask: rank ", rank, " of ",
             world_size, " but the communicator is rank ", comm ? comm->rank() : 0, " of ",
             comm ? comm->world_size() : 0);
  const std::string dataset = cfg.get_string("data.dataset");
  const bool shards = !cfg.get_string("data.train_shards").empty();
  if (dataset == "tokens" || (shards && !cfg.is_set("data.dataset")))
    return std::make_unique<LanguageModelTask>(cfg, device, training, rank, world_size, comm);
  KILN_CHECK(!shards, "data.train_shards is set but data.dataset is ", dataset, ": token shards need data.dataset tokens");
  KILN_CHECK(cfg.get_string("model.name") != "gpt", "model gpt trains on token shards: set data.dataset tokens and ",
             "data.train_shards (data.dataset is ", dataset, ")");
  return std::make_unique<ImageTask>(cfg, device, training, rank, world_size, comm);
}

}  // namespace kiln
