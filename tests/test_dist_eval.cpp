// Evaluation shared across data-parallel ranks (TrainTask::evaluate with a communicator): on 2 and
// 3 Gloo ranks (spawned by tests/dist_spawn.h) every rank reports the single-process evaluation of
// the same checkpoint, over exactly the whole split, having evaluated only its own batches
// k = rank, rank + world, ... Fashion-MNIST and token shards, with batch counts that do not divide
// by the world size and ranks left with no batch at all. Through the binary: `kiln launch` +
// `kiln train` logs the single-process evaluation of its final checkpoint on every rank, and
// `kiln launch` + `kiln eval` prints the single-process result once, from rank 0.
//
// Tolerance: the loss within 1e-12 relative. Each rank evaluates whole batches of the
// single-process pass, so every batch's f32 loss sum is the same bit for bit (the same rows
// through the same kernels, one OpenMP thread in every process); only the order in which the
// f64 batch sums add up differs (rank by rank, then across ranks), a relative error of at most
// (batches - 1) * 2^-53, about 4e-15 for 35 batches. Accuracy and item count are sums of
// integers in f64: exact.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/philox.h"
#include "data/token_shards.h"
#include "dist/communicator.h"
#include "models/registry.h"
#include "tests/dist_run.h"
#include "tests/dist_spawn.h"
#include "tests/python_oracle.h"
#include "tools/config.h"
#include "tools/io/checkpoint.h"
#include "tools/io/jsonl.h"
#include "tools/train_task.h"
#include "tools/trainer.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using kiln::testing::is_dist_worker;
using kiln::testing::run_ranks;

// The config file, then key=value overrides, separated by ';' (KILN_EVAL_ARGS).
Config config_from(const std::string& args) {
  std::vector<std::string> parts;
  std::stringstream ss(args);
  for (std::string p; std::getline(ss, p, ';');) parts.push_back(p);
  Config cfg = Config::load(parts.at(0));
  for (size_t i = 1; i < parts.size(); ++i) cfg.set_override(parts[i]);
  return cfg;
}

// One rank evaluating a checkpoint as `kiln eval` does, with the process group when WORLD_SIZE > 1
// (none with WORLD_SIZE=1: the single-process path). KILN_EVAL_ARGS: config and overrides;
// KILN_EVAL_CHECKPOINT. Writes loss, accuracy, items and this rank's items to
// KILN_EVAL_OUT/rank<R>.txt at full precision.
TEST(DistEvalWorker, Evaluate) {
  if (!is_dist_worker()) GTEST_SKIP() << "runs as a rank of the DistEval tests";
  const Config cfg = config_from(std::getenv("KILN_EVAL_ARGS"));
  const dist::InitOptions o = dist::options_from_env();
  std::unique_ptr<dist::Communicator> comm;
  if (o.world_size > 1) comm = dist::init_process_group(o, kCPU);
  auto task = TrainTask::create(cfg, kCPU, /*training=*/false, o.rank, o.world_size, comm.get());
  auto model = models::make_model(task->model_spec());
  model->load_state_dict(io::load_checkpoint(resolve_checkpoint(std::getenv("KILN_EVAL_CHECKPOINT"))).model);
  const Evaluation e = task->evaluate(*model);
  const fs::path out = fs::path(std::getenv("KILN_EVAL_OUT")) / ("rank" + std::to_string(o.rank) + ".txt");
  std::ofstream f(out);
  char line[160];
  std::snprintf(line, sizeof line, "%.17g %.17g %lld %lld\n", e.loss, e.accuracy, static_cast<long long>(e.items),
                static_cast<long long>(e.local_items));
  f << line;
  ASSERT_TRUE(f.good()) << out;
}

struct Result {
  double loss = NAN, accuracy = NAN;
  int64_t items = -1, local_items = -1;
};

// Items in batch k of a sequential pass over `n` items in batches of `batch`.
int64_t batch_items(int64_t k, int64_t n, int64_t batch) { return std::clamp<int64_t>(n - k * batch, 0, batch); }

// Rank r of `world` evaluates batches r, r + world, ...: the items of its share.
int64_t share_of(int r, int world, int64_t n, int64_t batch) {
  int64_t items = 0;
  for (int64_t k = r; k * batch < n; k += world) items += batch_items(k, n, batch);
  return items;
}

class DistEval : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = kiln::testing::make_temp_dir("kiln_dist_eval_");
    ASSERT_FALSE(dir_.empty());
  }
  void TearDown() override { kiln::testing::remove_temp_dir_unless_failed(dir_); }

  // `kiln eval` of `checkpoint` on `world` ranks (1: a single process, WORLD_SIZE=1): each rank's result.
  std::vector<Result> run_eval(int world, const fs::path& config, const fs::path& checkpoint,
                               const std::vector<std::string>& overrides) {
    std::string args = config.string();
    for (const std::string& o : overrides) args += ";" + o;
    const fs::path out = dir_ / ("eval_" + std::to_string(++evals_));
    fs::create_directories(out);
    kiln::testing::RankOptions o;
    o.extra_env = [&](int) {
      return std::vector<std::string>{"KILN_EVAL_ARGS=" + args, "KILN_EVAL_CHECKPOINT=" + checkpoint.string(),
                                      "KILN_EVAL_OUT=" + out.string(), "KILN_DIST_TIMEOUT_S=20"};
    };
    EXPECT_EQ(run_ranks("DistEvalWorker.Evaluate", world, o), std::vector<int>(static_cast<size_t>(world), 0))
        << world << " ranks";
    std::vector<Result> results(static_cast<size_t>(world));
    for (int r = 0; r < world; ++r) {
      long long items = -1, local = -1;
      std::ifstream f(out / ("rank" + std::to_string(r) + ".txt"));
      f >> results[r].loss >> results[r].accuracy >> items >> local;
      results[r].items = items;
      results[r].local_items = local;
    }
    return results;
  }

  // On 2 and 3 ranks every rank reports the single-process evaluation over `split_items` items
  // (in batches of `batch` items), having evaluated only its own batches.
  void expect_matches_one_process(const fs::path& config, const fs::path& checkpoint,
                                  const std::vector<std::string>& overrides, int64_t split_items, int64_t batch) {
    const Result one = run_eval(1, config, checkpoint, overrides).at(0);
    ASSERT_EQ(one.items, split_items);
    ASSERT_EQ(one.local_items, split_items);
    ASSERT_TRUE(std::isfinite(one.loss) && one.loss > 0);
    for (int world : {2, 3}) {
      const std::vector<Result> ranks = run_eval(world, config, checkpoint, overrides);
      int64_t shares = 0;
      for (int r = 0; r < world; ++r) {
        const Result& got = ranks[r];
        const std::string where = std::to_string(world) + " ranks, rank " + std::to_string(r);
        EXPECT_EQ(got.items, split_items) << where;
        EXPECT_EQ(got.local_items, share_of(r, world, split_items, batch)) << where;
        shares += got.local_items;
        EXPECT_NEAR(got.loss, one.loss, 1e-12 * one.loss) << where;
        EXPECT_EQ(got.accuracy, one.accuracy) << where;  // -1 for tokens
        // The all-reduce leaves the same sums on every rank.
        EXPECT_EQ(got.loss, ranks[0].loss) << where;
      }
      EXPECT_EQ(shares, split_items) << world << " ranks: every item once";
      std::printf("%d ranks: loss %.17g vs one process %.17g (rel %.2g), %lld items\n", world, ranks[0].loss,
                  one.loss, std::abs(ranks[0].loss - one.loss) / one.loss, static_cast<long long>(ranks[0].items));
    }
  }

  fs::path dir_;
  int evals_ = 0;
};

// A trained MLP on Fashion-MNIST's 10000 test images, in batches of 286 (35 batches, the last
// 276 images: divisible neither by 2 nor by 3), 4096 (3 batches, 2 + 1 on 2 ranks) and 10000 (one
// batch: the other ranks have none and still take part in the all-reduce).
TEST_F(DistEval, ImagesMatchOneProcess) {
  if (!kiln::testing::have_fashion_mnist()) GTEST_SKIP() << "Fashion-MNIST not installed";
  const fs::path config = dir_ / "mlp.yaml";
  std::ofstream(config) << "device: cpu\nmodel:\n  name: mlp\n  hidden_sizes: [32]\n"
                        << "data:\n  batch_size: 64\n  prefetch: 1\n"
                        << "train:\n  steps: 20\n  log_every: 10\n"
                        << "checkpoint:\n  every: 0\nlog:\n  tensorboard: false\n";
  Config cfg = Config::load(config.string());
  cfg.set_override("log.run_dir=" + (dir_ / "run").string());
  train(cfg);
  for (const char* batch : {"286", "4096", "10000"}) {
    SCOPED_TRACE(std::string("data.eval_batch_size=") + batch);
    expect_matches_one_process(config, dir_ / "run", {std::string("data.eval_batch_size=") + batch}, 10000,
                               std::stoll(batch));
  }
}

// A tiny GPT on a val shard of 4000 tokens: 124 windows of 32 in batches of 12 rows (11 batches,
// the last of 4 rows), the whole pass (eval.batches 0), capped at 5 batches (2 + 2 + 1 on 3
// ranks) and at 1 batch (the other ranks have none).
TEST_F(DistEval, TokensMatchOneProcess) {
  constexpr int64_t kVocab = 16, kValTokens = 4000, kSeqLen = 32, kRows = 12;
  auto random_tokens = [](int64_t n, uint64_t seed) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) t[static_cast<size_t>(i)] = static_cast<int32_t>(uniform_int(seed, 0, static_cast<uint64_t>(i), 0, kVocab));
    return t;
  };
  write_token_shard((dir_ / "train.bin").string(), random_tokens(6000, 1));
  write_token_shard((dir_ / "val.bin").string(), random_tokens(kValTokens, 2));
  const fs::path config = dir_ / "gpt.yaml";
  std::ofstream(config) << "device: cpu\n"
                        << "model:\n  name: gpt\n  n_layer: 2\n  n_head: 2\n  n_embd: 32\n  block_size: 32\n"
                        << "  vocab_size: 16\n"
                        << "data:\n  dataset: tokens\n  train_shards: " << (dir_ / "train.bin").string()
                        << "\n  val_shards: " << (dir_ / "val.bin").string() << "\n  seq_len: 32\n  batch_size: 12\n"
                        << "  prefetch: 1\n"
                        << "optim:\n  name: adamw\n  lr: 3.0e-3\n"
                        << "train:\n  steps: 10\n  log_every: 5\n"
                        << "eval:\n  batches: 2\n"
                        << "checkpoint:\n  every: 0\nlog:\n  tensorboard: false\n";
  Config cfg = Config::load(config.string());
  cfg.set_override("log.run_dir=" + (dir_ / "run").string());
  train(cfg);
  const int64_t windows = (kValTokens - 1) / kSeqLen;  // sequential windows, their inputs do not overlap
  for (int64_t batches : {0, 5, 1}) {
    SCOPED_TRACE("eval.batches=" + std::to_string(batches));
    const int64_t used = batches == 0 ? windows : std::min(windows, batches * kRows);
    expect_matches_one_process(config, dir_ / "run", {"eval.batches=" + std::to_string(batches)}, used * kSeqLen,
                               kRows * kSeqLen);
  }
}

// kiln launch + kiln train on 3 ranks: the evaluation rank 0 logs is the single-process one of the
// final checkpoint, and every rank's log has the same evaluation lines; kiln launch + kiln eval of
// that checkpoint prints the single-process `kiln eval` line once, from rank 0.
TEST_F(DistEval, LaunchedTrainingEvaluatesTheWholeSplitOnce) {
  if (!kiln::testing::have_fashion_mnist()) GTEST_SKIP() << "Fashion-MNIST not installed";
  const fs::path config = dir_ / "mlp.yaml";
  std::ofstream(config) << "device: cpu\nmodel:\n  name: mlp\n  hidden_sizes: [16]\n"
                        << "data:\n  batch_size: 16\n  eval_batch_size: 700\n  prefetch: 0\n"
                        << "train:\n  steps: 6\n  log_every: 3\n  eval_every: 3\n"
                        << "checkpoint:\n  every: 0\nlog:\n  tensorboard: false\n";
  const fs::path run = dir_ / "run";
  const auto r = kiln::testing::run_kiln(kiln::testing::train_args(3, config, run, {}),
                                         {.env = {"OMP_NUM_THREADS=1", "KILN_DIST_TIMEOUT_S=20"}});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  double logged = NAN, logged_accuracy = NAN;
  for (const auto& line : io::read_jsonl(run / "metrics.jsonl"))
    if (line.contains("eval/loss") && line["step"].get<int64_t>() == 6) {
      logged = line["eval/loss"].get<double>();
      logged_accuracy = line["eval/accuracy"].get<double>();
    }
  const Result one = run_eval(1, config, run, {}).at(0);
  EXPECT_EQ(one.items, 10000);
  EXPECT_NEAR(logged, one.loss, 1e-12 * one.loss);
  EXPECT_EQ(logged_accuracy, one.accuracy);
  EXPECT_NE(r.output.find("eval at step 6: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("(10000 images)"), std::string::npos) << r.output;

  auto eval_lines = [](const fs::path& log) {
    std::vector<std::string> out;
    std::ifstream f(log);
    for (std::string l; std::getline(f, l);)
      if (l.find("eval at step") != std::string::npos) out.push_back(l.substr(l.find("eval at step")));
    return out;
  };
  const std::vector<std::string> main = eval_lines(run / "train.log");
  ASSERT_EQ(main.size(), 2u);
  for (const char* other : {"train.rank1.log", "train.rank2.log"}) EXPECT_EQ(eval_lines(run / other), main) << other;
  std::printf("3 launched ranks: logged eval loss %.17g, kiln eval of the checkpoint %.17g\n", logged, one.loss);

  const auto single = kiln::testing::run_kiln({"eval", config.string(), "checkpoint=" + run.string()},
                                              {.env = {"OMP_NUM_THREADS=1"}});
  ASSERT_EQ(single.exit_code, 0) << single.output;
  const auto launched = kiln::testing::run_kiln({"launch", "--nproc", "3", "--master-port", "0",
                                                 kiln::testing::kiln_binary(), "eval", config.string(),
                                                 "checkpoint=" + run.string()},
                                                {.env = {"OMP_NUM_THREADS=1", "KILN_DIST_TIMEOUT_S=20"}});
  ASSERT_EQ(launched.exit_code, 0) << launched.output;
  EXPECT_NE(launched.output.find("[rank 0] " + single.output), std::string::npos)
      << single.output << " missing for rank 0 in\n" << launched.output;
  for (int r = 1; r < 3; ++r)
    EXPECT_EQ(launched.output.find("[rank " + std::to_string(r) + "] " + single.output), std::string::npos)
        << "rank " << r << " printed the result too:\n" << launched.output;
}

}  // namespace
}  // namespace kiln
