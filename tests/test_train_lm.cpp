// The runner on token shards (data.dataset tokens, model gpt), end to end on the CPU with a tiny
// GPT and a synthetic corpus: loss falls through the real `kiln train` binary, N micro-batches
// of B make the same step as one batch of N*B (images too), runs are deterministic and resume
// bit-identically (f32 with dropout, f16 with its loss scaler), bf16 and f16 train, `kiln eval`
// agrees with training's last evaluation, and bad input fails with one clear message.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/generator.h"
#include "core/ops.h"
#include "core/philox.h"
#include "data/token_shards.h"
#include "models/gpt.h"
#include "tests/kiln_cli.h"
#include "tools/io/safetensors.h"
#include "tools/config.h"
#include "tools/io/checkpoint.h"
#include "tools/io/jsonl.h"
#include "tools/trainer.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
constexpr int64_t kVocab = 16;

// A corpus with structure to learn: a Markov chain that mostly steps t -> (5t + 3) mod 16 and
// sometimes jumps to a random token. Its unigram distribution is near uniform (entropy close
// to ln 16 = 2.77 nats); knowing the previous token brings the entropy down to about 0.8.
std::vector<int32_t> markov_tokens(int64_t n, uint64_t seed) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  int32_t cur = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double u = uniform_int(seed, 0, static_cast<uint64_t>(2 * i), 0, 1000) / 1000.0;
    cur = u < 0.85 ? (5 * cur + 3) % kVocab
                   : static_cast<int32_t>(uniform_int(seed, 0, static_cast<uint64_t>(2 * i + 1), 0, kVocab));
    t[static_cast<size_t>(i)] = cur;
  }
  return t;
}

using testing::CommandResult;
using testing::run_kiln_shell;

std::vector<double> metric(const fs::path& run_dir, const std::string& key) {
  std::vector<double> v;
  for (const auto& l : io::read_jsonl(run_dir / "metrics.jsonl"))
    if (l.contains(key)) v.push_back(l[key].get<double>());
  return v;
}

class TrainLmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kiln_train_lm_test_" + std::to_string(getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "data");
    // Two training shards (windows never cross them) and one validation shard.
    write_token_shard((dir_ / "data" / "train_000.bin").string(), markov_tokens(12000, 1));
    write_token_shard((dir_ / "data" / "train_001.bin").string(), markov_tokens(8000, 2));
    write_token_shard((dir_ / "data" / "val_000.bin").string(), markov_tokens(4000, 3));
  }
  void TearDown() override { fs::remove_all(dir_); }

  // The config text of a tiny GPT (2 layers, 32 wide) on the synthetic shards.
  std::string yaml() const {
    return "device: cpu\n"
           "model:\n  name: gpt\n  n_layer: 2\n  n_head: 2\n  n_embd: 32\n  block_size: 32\n  vocab_size: 16\n"
           "data:\n  dataset: tokens\n  train_shards: " + (dir_ / "data" / "train_*.bin").string() +
           "\n  val_shards: " + (dir_ / "data" / "val_000.bin").string() +
           "\n  seq_len: 32\n  batch_size: 8\n  prefetch: 1\n"
           "optim:\n  name: adamw\n  lr: 3.0e-3\n  weight_decay: 0.0\n"
           "schedule:\n  name: constant\n"
           "train:\n  steps: 60\n  log_every: 10\n  eval_every: 30\n  seed: 7\n"
           "eval:\n  batches: 8\n"
           "checkpoint:\n  every: 0\n"
           "log:\n  tensorboard: false\n";
  }
  fs::path write_config() const {
    const fs::path p = dir_ / "gpt_tiny.yaml";
    std::ofstream(p) << yaml();
    return p;
  }
  Config tiny(const std::string& run, const std::vector<std::string>& overrides = {}) const {
    Config cfg = Config::load(write_config().string());
    cfg.set_override("log.run_dir=" + (dir_ / run).string());
    for (const std::string& o : overrides) cfg.set_override(o);
    return cfg;
  }

  fs::path dir_;
};

TEST_F(TrainLmTest, LossFallsThroughTheBinary) {
  const fs::path run = dir_ / "run";
  const CommandResult r = run_kiln_shell("train " + write_config().string() + " log.run_dir=" + run.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("tokens/s"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("val loss"), std::string::npos) << r.output;
  const std::vector<double> losses = metric(run, "train/loss"), val = metric(run, "eval/loss");
  ASSERT_EQ(losses.size(), 6u);
  ASSERT_EQ(val.size(), 2u);  // steps 30 and 60
  // ln 16 = 2.77 at the start; the chain's conditional entropy is about 0.8.
  EXPECT_GT(losses.front(), 2.0);
  EXPECT_LT(losses.back(), 0.6 * losses.front()) << "first " << losses.front() << " last " << losses.back();
  EXPECT_LT(val.back(), 1.5);
  const std::vector<double> ppl = metric(run, "eval/perplexity"), tps = metric(run, "train/tokens_per_s");
  ASSERT_EQ(ppl.size(), 2u);
  EXPECT_NEAR(ppl.back(), std::exp(val.back()), 1e-9 * ppl.back());
  ASSERT_EQ(tps.size(), 6u);
  EXPECT_GT(tps.back(), 0.0);
  EXPECT_TRUE(fs::exists(io::checkpoint_path(run / "checkpoints", 60)));

  // kiln eval on the run directory reports the same val loss.
  const CommandResult e = run_kiln_shell("eval " + write_config().string() + " checkpoint=" + run.string());
  ASSERT_EQ(e.exit_code, 0) << e.output;
  char expected[64];
  std::snprintf(expected, sizeof expected, "val loss %.4f", val.back());
  EXPECT_NE(e.output.find(expected), std::string::npos) << e.output << " (expected " << expected << ")";
}

void expect_same_weights(const fs::path& a_run, const fs::path& b_run, int64_t step, double tol) {
  const auto a = io::load_checkpoint(io::checkpoint_path(a_run / "checkpoints", step));
  const auto b = io::load_checkpoint(io::checkpoint_path(b_run / "checkpoints", step));
  ASSERT_EQ(a.model.size(), b.model.size());
  for (size_t i = 0; i < a.model.size(); ++i) {
    const Tensor& x = a.model[i].second;
    const Tensor& y = b.model[i].second;
    ASSERT_EQ(a.model[i].first, b.model[i].first);
    ASSERT_EQ(x.shape(), y.shape());
    if (tol == 0) {
      EXPECT_EQ(0, std::memcmp(x.data_ptr(), y.data_ptr(), x.numel() * x.element_size()))
          << a.model[i].first << " differs";
    } else {
      EXPECT_LE(max_abs_diff(x, y), tol) << a.model[i].first;
    }
  }
}

// 4 micro-batches of 2 rows make the same optimizer step as one batch of 8: SGD (whose update
// is linear in the gradient, so rounding differences stay rounding-sized), f32, 5 steps.
TEST_F(TrainLmTest, GradAccumulationMatchesOneBigBatch) {
  const std::vector<std::string> common = {"optim.name=sgd", "optim.lr=0.5", "optim.momentum=0.9",
                                           "train.steps=5", "train.eval_every=0", "train.log_every=1"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> o = common;
    o.insert(o.end(), extra.begin(), extra.end());
    return o;
  };
  const TrainSummary big = train(tiny("big", with({"data.batch_size=8", "train.grad_accum_steps=1"})));
  const TrainSummary acc = train(tiny("acc", with({"data.batch_size=2", "train.grad_accum_steps=4"})));
  expect_same_weights(big.run_dir, acc.run_dir, 5, 1e-6);
  const auto lb = metric(big.run_dir, "train/loss"), la = metric(acc.run_dir, "train/loss");
  ASSERT_EQ(lb.size(), la.size());
  for (size_t i = 0; i < lb.size(); ++i) EXPECT_NEAR(lb[i], la[i], 1e-5) << "step " << i + 1;
  // And the weights did move: a big-batch run with another batch size ends elsewhere.
  const TrainSummary other = train(tiny("other", with({"data.batch_size=4"})));
  const auto a = io::load_checkpoint(io::checkpoint_path(big.run_dir / "checkpoints", 5));
  const auto b = io::load_checkpoint(io::checkpoint_path(other.run_dir / "checkpoints", 5));
  EXPECT_GT(max_abs_diff(a.model[0].second, b.model[0].second), 1e-4);
}

TEST_F(TrainLmTest, SameSeedGivesBitIdenticalRuns) {
  const std::vector<std::string> o = {"train.steps=12", "train.log_every=1", "train.eval_every=6",
                                      "model.dropout=0.1", "train.grad_accum_steps=2"};
  const TrainSummary a = train(tiny("a", o)), b = train(tiny("b", o));
  const auto la = metric(a.run_dir, "train/loss"), lb = metric(b.run_dir, "train/loss");
  ASSERT_EQ(la.size(), 12u);
  EXPECT_EQ(la, lb);  // exact: every double equal
  EXPECT_EQ(metric(a.run_dir, "eval/loss"), metric(b.run_dir, "eval/loss"));
  expect_same_weights(a.run_dir, b.run_dir, 12, 0);
  // A different seed is a different run (init, windows and dropout).
  const TrainSummary c = train(tiny("c", {"train.steps=12", "train.log_every=1", "train.eval_every=6",
                                           "model.dropout=0.1", "train.grad_accum_steps=2", "train.seed=8"}));
  EXPECT_NE(metric(c.run_dir, "train/loss"), la);
}

// Stopped at step 10 and resumed: the same weights at step 20, bit for bit. With dropout (the
// RNG state) and accumulation in f32, and in f16 (the loss scaler's state).
TEST_F(TrainLmTest, ResumeIsBitIdentical) {
  for (const char* precision : {"f32", "f16"}) {
    SCOPED_TRACE(precision);
    const std::string p = std::string("train.precision=") + precision;
    const std::vector<std::string> o = {"train.steps=20", "checkpoint.every=10", "train.eval_every=0",
                                        "model.dropout=0.1", "train.grad_accum_steps=2", p};
    const std::string full_name = std::string("full_") + precision, resumed_name = std::string("resumed_") + precision;
    const TrainSummary full = train(tiny(full_name, o));
    fs::copy(full.run_dir, dir_ / resumed_name, fs::copy_options::recursive);
    fs::remove(io::checkpoint_path(dir_ / resumed_name / "checkpoints", 20));
    std::vector<std::string> ro = o;
    ro.push_back("train.resume=auto");
    const TrainSummary resumed = train(tiny(resumed_name, ro));
    EXPECT_EQ(resumed.steps, 20);
    expect_same_weights(full.run_dir, resumed.run_dir, 20, 0);
    const auto a = io::load_checkpoint(io::checkpoint_path(full.run_dir / "checkpoints", 20));
    const auto b = io::load_checkpoint(io::checkpoint_path(resumed.run_dir / "checkpoints", 20));
    EXPECT_EQ(a.data_loader, b.data_loader);
    EXPECT_EQ(a.data_loader.at("position").get<int64_t>(), 20);  // one loader batch per step
    EXPECT_EQ(a.extra, b.extra);
    EXPECT_EQ(a.extra.contains("grad_scaler"), std::string(precision) == "f16");
  }
}

TEST_F(TrainLmTest, Bf16AndF16TrainOnCpu) {
  for (const char* precision : {"bf16", "f16"}) {
    SCOPED_TRACE(precision);
    const TrainSummary s = train(tiny(std::string("run_") + precision,
                                      {std::string("train.precision=") + precision, "train.steps=40",
                                       "train.eval_every=0", "optim.grad_clip=1.0"}));
    const auto losses = metric(s.run_dir, "train/loss");
    ASSERT_EQ(losses.size(), 4u);
    for (double l : losses) EXPECT_TRUE(std::isfinite(l));
    EXPECT_LT(losses.back(), 0.75 * losses.front()) << "first " << losses.front() << " last " << losses.back();
    EXPECT_LT(s.test_loss, 2.2);  // below ln 16 = 2.77
    const auto scale = metric(s.run_dir, "train/loss_scale");
    if (std::string(precision) == "f16") {
      ASSERT_EQ(scale.size(), 4u);  // reported with the skipped steps
      EXPECT_GT(scale.back(), 0.0);
      EXPECT_EQ(metric(s.run_dir, "train/skipped_steps").size(), 4u);
    } else {
      EXPECT_TRUE(scale.empty());  // bf16 needs no loss scaling
    }
  }
}

std::string error_of_train(const Config& cfg) {
  try {
    train(cfg);
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST_F(TrainLmTest, BadInputFailsClearly) {
  const std::string missing = (dir_ / "nowhere" / "train_*.bin").string();
  std::string msg = error_of_train(tiny("r1", {"data.train_shards=" + missing}));
  EXPECT_NE(msg.find("data.train_shards"), std::string::npos) << msg;
  EXPECT_NE(msg.find(missing), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(dir_ / "r1")) << "a failed start left a run directory";

  msg = error_of_train(tiny("r2", {"data.val_shards="}));
  EXPECT_NE(msg.find("data.val_shards is empty"), std::string::npos) << msg;

  msg = error_of_train(tiny("r3", {"data.seq_len=64"}));
  EXPECT_NE(msg.find("data.seq_len (64) is longer than model.block_size (32)"), std::string::npos) << msg;

  msg = error_of_train(tiny("r4", {"model.name=mlp"}));
  EXPECT_NE(msg.find("model.name to gpt"), std::string::npos) << msg;

  // A shard that is not one: the loader's message, prefixed with the key.
  std::ofstream(dir_ / "data" / "bad.bin") << "not a shard";
  msg = error_of_train(tiny("r5", {"data.val_shards=" + (dir_ / "data" / "bad.bin").string()}));
  EXPECT_NE(msg.find("data.val_shards"), std::string::npos) << msg;
  EXPECT_NE(msg.find("bad.bin"), std::string::npos) << msg;

  // Through the binary: a misspelt key and a bad precision, with the file and line.
  std::ofstream(dir_ / "typo.yaml") << "model:\n  name: gpt\n  n_layers: 2\n";
  CommandResult r = run_kiln_shell("train " + (dir_ / "typo.yaml").string());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("typo.yaml:3: unknown key 'model.n_layers' (did you mean 'model.n_layer'?)"),
            std::string::npos) << r.output;
  r = run_kiln_shell("train " + write_config().string() + " train.precision=fp8");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("train.precision"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("fp8"), std::string::npos) << r.output;
}

// model.init_from: Hugging Face GPT-2 weights (Conv1D layout, unpadded wte, an lm_head copy)
// written from a kiln GPT come back as that GPT's weights. lr 0, so the step changes nothing.
TEST_F(TrainLmTest, InitFromHuggingFaceWeights) {
  models::GPTConfig gc;
  gc.n_layer = 2, gc.n_head = 2, gc.n_embd = 32, gc.block_size = 32, gc.vocab_size = kVocab;
  gc.padded_vocab_size = models::padded_vocab_size(kVocab);
  Generator gen(99);
  models::GPT source(gc, &gen);
  nn::NamedTensors hf;
  for (const auto& [name, t] : source.state_dict()) {
    std::string hf_name = name.substr(std::string("transformer.").size());
    Tensor v = t;
    for (const char* conv1d : {".c_attn.weight", ".c_proj.weight", ".c_fc.weight"})
      if (hf_name.ends_with(conv1d)) v = t.t().contiguous();
    if (hf_name == "wte.weight") v = t.narrow(0, 0, kVocab).contiguous();
    hf.emplace_back(hf_name, v);
  }
  hf.emplace_back("lm_head.weight", hf.front().second);  // wte comes first in the state dict
  const fs::path file = dir_ / "hf.safetensors";
  io::save_safetensors(file, hf);

  const TrainSummary s = train(tiny("init", {"model.init_from=" + file.string(), "optim.lr=0", "train.steps=1",
                                             "train.eval_every=0"}));
  const auto ckpt = io::load_checkpoint(io::checkpoint_path(s.run_dir / "checkpoints", 1));
  const nn::NamedTensors expected = source.state_dict();
  ASSERT_EQ(ckpt.model.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    ASSERT_EQ(ckpt.model[i].first, expected[i].first);
    EXPECT_EQ(max_abs_diff(ckpt.model[i].second, expected[i].second), 0.0) << expected[i].first;
  }
  // Without init_from the same config starts elsewhere (seed 7, not the file's weights).
  const TrainSummary r = train(tiny("random", {"optim.lr=0", "train.steps=1", "train.eval_every=0"}));
  const auto rc = io::load_checkpoint(io::checkpoint_path(r.run_dir / "checkpoints", 1));
  EXPECT_GT(max_abs_diff(rc.model[0].second, expected[0].second), 0.0);

  const std::string msg = error_of_train(tiny("bad", {"model.init_from=" + (dir_ / "none.safetensors").string()}));
  EXPECT_NE(msg.find("none.safetensors"), std::string::npos) << msg;
}

// The image path accumulates the same way: 4 x 16 == 1 x 64 on Fashion-MNIST (when installed).
TEST(TrainImageAccumulation, MatchesOneBigBatch) {
  const char* data = "/usr/share/datasets/fashion-mnist";
  if (!fs::exists(fs::path(data) / "train-images-idx3-ubyte.gz")) GTEST_SKIP() << "Fashion-MNIST not installed";
  const fs::path dir = fs::temp_directory_path() / ("kiln_train_img_accum_" + std::to_string(getpid()));
  fs::remove_all(dir);
  auto run = [&](const std::string& name, int64_t batch, int64_t accum) {
    Config cfg;
    for (const std::string& o :
         {std::string("model.hidden_sizes=[32]"), std::string("optim.name=sgd"), std::string("optim.lr=0.1"),
          "data.batch_size=" + std::to_string(batch), "train.grad_accum_steps=" + std::to_string(accum),
          std::string("train.steps=5"), std::string("train.eval_every=0"), std::string("device=cpu"),
          std::string("log.tensorboard=false"), "log.run_dir=" + (dir / name).string()})
      cfg.set_override(o);
    return train(cfg);
  };
  const TrainSummary big = run("big", 64, 1), acc = run("acc", 16, 4);
  expect_same_weights(big.run_dir, acc.run_dir, 5, 1e-6);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
