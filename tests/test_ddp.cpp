// Data parallelism: DistributedSampler's shares, and DistributedDataParallel / ZeRO-1 training
// an MLP on 2 and 3 Gloo ranks (processes on 127.0.0.1, spawned by tests/dist_spawn.h) to the
// same weights as one process training on the same global batch.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "core/autograd.h"
#include "core/generator.h"
#include "core/ops.h"
#include "data/sampler.h"
#include "dist/communicator.h"
#include "dist/ddp.h"
#include "dist/zero.h"
#include "models/registry.h"
#include "nn/linear.h"
#include "optim/clip_grad.h"
#include "optim/param_groups.h"
#include "optim/registry.h"
#include "tests/data_parallel_testing.h"
#include "tests/dist_run.h"
#include "tests/dist_spawn.h"
#include "tests/expect_error.h"
#include "tests/python_oracle.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using kiln::testing::env_int;
using kiln::testing::flat_weights;
using kiln::testing::global_batch;
using kiln::testing::kClasses;
using kiln::testing::kFeatures;
using kiln::testing::kGlobalBatch;
using kiln::testing::make_adamw;
using kiln::testing::make_mlp;
using kiln::testing::max_abs_diff;
using kiln::testing::expect_error;
using kiln::testing::is_dist_worker;
using kiln::testing::run_ranks;

// ---------------------------------------------------------------- DistributedSampler
TEST(DistributedSampler, RanksSplitAShuffledEpochAndPadByWrapping) {
  const int64_t n = 10;
  for (int world : {1, 2, 3, 4}) {
    const std::vector<int64_t> order = random_permutation(n, 7, 3);
    std::vector<int64_t> seen;
    for (int r = 0; r < world; ++r) {
      DistributedSampler s(n, world, r, /*shuffle=*/true, 7);
      const auto mine = s.indices(3);
      ASSERT_EQ(static_cast<int64_t>(mine.size()), (n + world - 1) / world);
      EXPECT_EQ(s.size(), static_cast<int64_t>(mine.size()));
      // Rank r takes positions r, r + world, ... of the epoch's order, wrapping around.
      for (size_t k = 0; k < mine.size(); ++k)
        EXPECT_EQ(mine[k], order[(r + k * world) % n]) << "world " << world << " rank " << r;
      seen.insert(seen.end(), mine.begin(), mine.end());
    }
    // Together: every index at least once, and only the padding repeats.
    std::set<int64_t> unique(seen.begin(), seen.end());
    EXPECT_EQ(static_cast<int64_t>(unique.size()), n);
    EXPECT_EQ(static_cast<int64_t>(seen.size()), (n + world - 1) / world * world);
  }
}

TEST(DistributedSampler, NewOrderEachEpochSameForSameSeed) {
  DistributedSampler a(100, 2, 1, true, 5), b(100, 2, 1, true, 5), c(100, 2, 1, true, 6);
  EXPECT_EQ(a.indices(0), b.indices(0));
  EXPECT_NE(a.indices(0), a.indices(1));
  EXPECT_NE(a.indices(0), c.indices(0));
  DistributedSampler seq(5, 2, 1, /*shuffle=*/false, 0);
  EXPECT_EQ(seq.indices(0), (std::vector<int64_t>{1, 3, 0}));  // 0..4 padded with 0
}

TEST(DistributedSampler, DropLastCutsTheTail) {
  DistributedSampler s(10, 3, 2, false, 0, /*drop_last=*/true);
  EXPECT_EQ(s.indices(0), (std::vector<int64_t>{2, 5, 8}));
}

TEST(DistributedSampler, BadRankOrWorldFailClearly) {
  expect_error([] { DistributedSampler(10, 2, 2, true, 0); }, {"rank 2", "[0, 2)"});
  expect_error([] { DistributedSampler(10, 0, 0, true, 0); }, {"world_size must be >= 1"});
}

// ---------------------------------------------------------------- training equivalence
// One run's settings, passed to the ranks through the environment.
struct Case {
  int zero = 0;          // ZeRO-1 instead of DDP's all-reduce
  int accum = 1;         // micro-steps per step (no_sync for all but the last)
  double bucket_mb = 25; // DDP bucket size
  double clip = 0;       // gradient clipping norm; 0: off
};

constexpr int kSteps = 5;

Tensor loss_on(nn::Module& model, const Tensor& x, const Tensor& y) {
  return cross_entropy(model(x), y, -100, Reduction::mean);
}

// One process, the whole global batch per step.
std::vector<float> train_single(const Case& c, NamedTensors* state = nullptr) {
  auto model = make_mlp();
  auto opt = make_adamw(*model);
  for (int step = 0; step < kSteps; ++step) {
    auto [x, y] = global_batch(step);
    loss_on(*model, x, y).backward();
    if (c.clip > 0) clip_grad_norm_(model->parameters(), c.clip);
    opt->step();
    opt->zero_grad();
  }
  if (state) *state = opt->state_tensors();
  return flat_weights(*model);
}

void write_floats(const fs::path& file, const std::vector<float>& v) {
  std::ofstream out(file, std::ios::binary);
  out.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(float)));
}

std::vector<float> read_floats(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::vector<float> v;
  float f;
  while (in.read(reinterpret_cast<char*>(&f), sizeof f)) v.push_back(f);
  return v;
}

// The state entries named state.<i>.<key>, concatenated in order.
std::vector<float> state_values(const NamedTensors& state, const std::string& key) {
  std::vector<float> out;
  for (const auto& [name, t] : state)
    if (name.size() > key.size() && name.compare(name.size() - key.size() - 1, key.size() + 1, "." + key) == 0 &&
        name.rfind("state.", 0) == 0) {
      const auto v = t.to_vector<float>();
      out.insert(out.end(), v.begin(), v.end());
    }
  return out;
}

// A rank's training: its rows of each global batch, DDP or ZeRO-1 for the gradients.
struct RankTrainer {
  Case c;
  dist::Communicator& comm;
  std::shared_ptr<nn::Module> model = make_mlp();
  std::unique_ptr<Optimizer> opt = make_adamw(*model);
  std::unique_ptr<dist::DistributedDataParallel> ddp;
  std::unique_ptr<dist::ZeroRedundancyOptimizer> zero;

  RankTrainer(const Case& c_, dist::Communicator& comm_) : c(c_), comm(comm_) {
    // Different initial weights on every rank: construction must broadcast rank 0's.
    if (comm.rank() != 0) {
      NoGradGuard g;
      for (Tensor& p : model->parameters()) p.add_(ones_like(p), 0.5 * comm.rank());
    }
    if (c.zero) {
      dist::broadcast_module(*model, comm);
      zero = std::make_unique<dist::ZeroRedundancyOptimizer>(*opt, OptimizerOptions{.lr = 1e-2}, comm);
    } else {
      ddp = std::make_unique<dist::DistributedDataParallel>(*model, comm, dist::DDPOptions{.bucket_mb = c.bucket_mb});
    }
  }

  void train_step(int step) {
    auto [x, y] = global_batch(step);
    const int64_t per_rank = kGlobalBatch / comm.world_size();
    const int64_t micro = per_rank / c.accum;
    for (int m = 0; m < c.accum; ++m) {
      const int64_t start = comm.rank() * per_rank + m * micro;
      Tensor loss = mul(loss_on(*model, x.narrow(0, start, micro), y.narrow(0, start, micro)), 1.0 / c.accum);
      if (m + 1 < c.accum && ddp) {
        auto guard = ddp->no_sync();
        loss.backward();
      } else {
        loss.backward();
      }
    }
    if (zero) {
      zero->reduce_gradients();
      if (c.clip > 0) zero->clip_grad_norm(c.clip);
      zero->step();
    } else {
      ddp->finish_gradient_sync();
      if (c.clip > 0) clip_grad_norm_(model->parameters(), c.clip);
      opt->step();
    }
    opt->zero_grad();
  }
};

Case case_from_env() {
  Case c;
  c.zero = env_int("DDP_ZERO");
  c.accum = env_int("DDP_ACCUM", 1);
  if (const char* b = std::getenv("DDP_BUCKET_MB")) c.bucket_mb = std::atof(b);
  if (const char* b = std::getenv("DDP_CLIP")) c.clip = std::atof(b);
  return c;
}

TEST(DdpWorker, Train) {
  if (!is_dist_worker()) GTEST_SKIP() << "runs as a rank of DataParallel tests";
  const Case c = case_from_env();
  auto comm = dist::init_process_group(dist::options_from_env(), kCPU);
  RankTrainer t(c, *comm);
  if (!c.zero) {
    int params_in_buckets = 0;
    for (const auto& b : t.ddp->bucket_layout()) params_in_buckets += static_cast<int>(b.size());
    EXPECT_EQ(params_in_buckets, static_cast<int>(t.model->parameters().size()));
    // Reverse registration order: the last parameter is in the first bucket.
    EXPECT_EQ(t.ddp->bucket_layout().front().front(), static_cast<int>(t.model->parameters().size()) - 1);
  }
  for (int step = 0; step < kSteps; ++step) t.train_step(step);
  if (!c.zero) {
    EXPECT_GT(t.ddp->last_overlap().buckets, 0);
    EXPECT_GE(t.ddp->last_overlap().comm_s, 0.0);
  }
  const fs::path out = std::getenv("DDP_OUT");
  write_floats(out / ("rank" + std::to_string(comm->rank()) + ".bin"), flat_weights(*t.model));
  if (t.zero) {
    const NamedTensors state = t.zero->state_tensors();  // collective: every rank calls it
    if (comm->rank() == 0) {
      write_floats(out / "exp_avg.bin", state_values(state, "exp_avg"));
      write_floats(out / "exp_avg_sq.bin", state_values(state, "exp_avg_sq"));
      std::ofstream(out / "memory.txt") << t.zero->state_bytes_unsharded() << " " << t.zero->state_bytes_sharded();
    }
  }
}

class DataParallel : public ::testing::TestWithParam<std::tuple<int, int, int, double, double>> {};

TEST_P(DataParallel, MatchesOneProcessOnTheGlobalBatch) {
  const auto [world, zero, accum, bucket_mb, clip] = GetParam();
  const Case c{zero, accum, bucket_mb, clip};
  const fs::path out = kiln::testing::make_temp_dir("kiln_ddp_");
  ASSERT_FALSE(out.empty());
  kiln::testing::RankOptions ro;
  ro.extra_env = [&](int) {
    return std::vector<std::string>{"DDP_ZERO=" + std::to_string(zero), "DDP_ACCUM=" + std::to_string(accum),
                                    "DDP_BUCKET_MB=" + std::to_string(bucket_mb),
                                    "DDP_CLIP=" + std::to_string(clip), "DDP_OUT=" + out.string(),
                                    "KILN_DIST_TIMEOUT_S=30"};
  };
  const std::vector<int> codes = run_ranks("DdpWorker.Train", world, ro);
  EXPECT_EQ(codes, std::vector<int>(static_cast<size_t>(world), 0));

  NamedTensors single_state;
  const std::vector<float> single = train_single(c, &single_state);
  const std::vector<float> rank0 = read_floats(out / "rank0.bin");
  const float diff = max_abs_diff(single, rank0);
  EXPECT_LE(diff, 1e-6f) << world << " ranks, zero " << zero << ", accum " << accum;
  std::printf("%d ranks, zero %d, accum %d, bucket %g MB, clip %g: max |w - w_single| = %.3g\n", world, zero,
              accum, bucket_mb, clip, diff);
  for (int r = 1; r < world; ++r)  // every rank holds the same weights, bit for bit
    EXPECT_EQ(read_floats(out / ("rank" + std::to_string(r) + ".bin")), rank0) << "rank " << r;

  if (zero) {  // the gathered state is the unsharded optimizer's
    EXPECT_LE(max_abs_diff(read_floats(out / "exp_avg.bin"), state_values(single_state, "exp_avg")), 1e-6f);
    EXPECT_LE(max_abs_diff(read_floats(out / "exp_avg_sq.bin"), state_values(single_state, "exp_avg_sq")), 1e-7f);
    int64_t unsharded = 0, sharded = 0;
    std::ifstream(out / "memory.txt") >> unsharded >> sharded;
    std::printf("  optimizer state per rank: %lld bytes unsharded, %lld with ZeRO-1\n",
                static_cast<long long>(unsharded), static_cast<long long>(sharded));
    EXPECT_LT(sharded, unsharded);
  }
  fs::remove_all(out);
}

// (world, zero, accum, bucket_mb, clip)
INSTANTIATE_TEST_SUITE_P(Cases, DataParallel,
                         ::testing::Values(std::make_tuple(2, 0, 1, 25.0, 0.0),      // one bucket
                                           std::make_tuple(3, 0, 1, 0.0005, 0.0),    // a bucket per parameter
                                           std::make_tuple(2, 0, 2, 0.0005, 0.0),    // accumulation via no_sync
                                           std::make_tuple(3, 0, 2, 25.0, 0.5),      // and clipping
                                           std::make_tuple(2, 1, 1, 25.0, 0.0),      // ZeRO-1
                                           std::make_tuple(3, 1, 2, 25.0, 0.5)));    // ZeRO-1, accum, clip

// ZeRO-1's checkpoint round trip: the gathered state loaded into fresh objects continues exactly.
TEST(ZeroWorker, ResumeContinuesExactly) {
  if (!is_dist_worker()) GTEST_SKIP() << "runs as a rank of Zero.ResumeContinuesExactly";
  auto comm = dist::init_process_group(dist::options_from_env(), kCPU);
  const Case c{1, 1, 25, 0};
  RankTrainer straight(c, *comm);
  for (int step = 0; step < kSteps; ++step) straight.train_step(step);

  RankTrainer first(c, *comm);
  for (int step = 0; step < 3; ++step) first.train_step(step);
  const NamedTensors state = first.zero->state_tensors();
  const nn::NamedTensors weights = first.model->state_dict();

  RankTrainer resumed(c, *comm);
  resumed.model->load_state_dict(weights);
  resumed.opt->load_state_tensors(state);  // the unsharded layout fits the plain optimizer too
  resumed.zero->load_state_tensors(state);
  for (int step = 3; step < kSteps; ++step) resumed.train_step(step);
  EXPECT_EQ(flat_weights(*resumed.model), flat_weights(*straight.model));
}

TEST(Zero, ResumeContinuesExactly) {
  for (int world : {2, 3})
    EXPECT_EQ(run_ranks("ZeroWorker.ResumeContinuesExactly", world), std::vector<int>(static_cast<size_t>(world), 0))
        << world << " ranks";
}

// ---------------------------------------------------------------- unused parameters
// Three branches: `shared` is used on every rank, `dead` on none, `one_rank` only by rank 0 in its
// first micro-step (under no_sync when accumulating). As in one process, `dead` must keep an
// undefined .grad, so AdamW (weight decay 0.1) never moves it; `one_rank` gets rank 0's gradient
// averaged with zeros from the others.
struct Branches : nn::Module {
  std::shared_ptr<nn::Linear> shared, dead, one_rank;
  Branches() : Module("Branches") {
    manual_seed(1);
    shared = register_module("shared", std::make_shared<nn::Linear>(kFeatures, kClasses));
    dead = register_module("dead", std::make_shared<nn::Linear>(kFeatures, kClasses));
    one_rank = register_module("one_rank", std::make_shared<nn::Linear>(kFeatures, kClasses));
  }
  Tensor forward(const Tensor& x) override { return (*shared)(x); }
};

// Rank `rank`'s loss on micro-step `m` of `step`, scaled so that the ranks' average is the
// one-process loss on the global batch. No rank uses `one_rank` in step `skip_step`.
Tensor branches_loss(Branches& model, int step, int rank, int m, int world, int accum, int skip_step = -1) {
  auto [x, y] = global_batch(step);
  const int64_t micro = kGlobalBatch / world / accum;
  const int64_t start = (rank * accum + m) * micro;
  const Tensor xs = x.reshape({kGlobalBatch, kFeatures}).narrow(0, start, micro), ys = y.narrow(0, start, micro);
  Tensor loss = cross_entropy((*model.shared)(xs), ys, -100, Reduction::mean);
  if (rank == 0 && m == 0 && step != skip_step)
    loss = add(loss, cross_entropy((*model.one_rank)(xs), ys, -100, Reduction::mean));
  return mul(loss, 1.0 / accum);
}

// One process: each step's losses of every rank and micro-step summed / world, one backward.
// `dead` never gets a gradient, so AdamW never moves it.
std::vector<float> train_branches_single(int world, int accum, int skip_step, int steps,
                                         NamedTensors* state = nullptr) {
  Branches model;
  auto opt = make_adamw(model);
  const std::vector<float> dead_before = model.dead->weight.to_vector<float>();
  for (int step = 0; step < steps; ++step) {
    Tensor total;
    for (int r = 0; r < world; ++r)
      for (int m = 0; m < accum; ++m) {
        Tensor l = mul(branches_loss(model, step, r, m, world, accum, skip_step), 1.0 / world);
        total = total.defined() ? add(total, l) : l;
      }
    total.backward();
    EXPECT_FALSE(model.dead->weight.grad().defined());
    opt->step();
    opt->zero_grad();
  }
  EXPECT_EQ(model.dead->weight.to_vector<float>(), dead_before);
  if (state) *state = opt->state_tensors();
  return flat_weights(model);
}

std::vector<float> values_or_zeros(const Tensor& p) {
  return p.grad().defined() ? p.grad().to_vector<float>() : std::vector<float>(static_cast<size_t>(p.numel()), 0.0f);
}

TEST(DdpWorker, UnusedParameters) {
  if (!is_dist_worker()) GTEST_SKIP() << "runs as a rank of DdpUnused tests";
  const int accum = env_int("DDP_ACCUM", 1);
  auto comm = dist::init_process_group(dist::options_from_env(), kCPU);
  const int rank = comm->rank(), world = comm->world_size();
  Branches model;
  auto opt = make_adamw(model);
  const dist::DDPOptions options{.bucket_mb = std::atof(std::getenv("DDP_BUCKET_MB"))};
  dist::DistributedDataParallel ddp(model, *comm, options);
  const std::vector<Tensor> params = model.parameters();  // shared.{weight,bias}, dead.*, one_rank.*
  ASSERT_EQ(params.size(), 6u);
  const std::vector<float> dead_before = model.dead->weight.to_vector<float>();
  for (int step = 0; step < kSteps; ++step) {
    for (int m = 0; m < accum; ++m) {
      Tensor loss = branches_loss(model, step, rank, m, world, accum);
      if (m + 1 < accum) {
        auto guard = ddp.no_sync();
        loss.backward();
      } else {
        loss.backward();
      }
    }
    // Before the sync .grad holds this rank's gradients: the expected average is their sum over
    // ranks (undefined as zeros) / world, computed here with a plain all-reduce.
    std::vector<std::vector<float>> expected;
    for (const Tensor& p : params) {
      Tensor local = from_vector(values_or_zeros(p), {p.numel()});
      comm->all_reduce(local, dist::ReduceOp::sum);
      expected.push_back(mul(local, 1.0 / world).to_vector<float>());
    }
    EXPECT_EQ(params[4].grad().defined(), rank == 0);  // the test's premise
    ddp.finish_gradient_sync();

    EXPECT_EQ(ddp.last_unused_parameters(), (std::vector<int>{2, 3})) << "step " << step;
    EXPECT_FALSE(model.dead->weight.grad().defined()) << "rank " << rank << " step " << step;
    EXPECT_FALSE(model.dead->bias.grad().defined()) << "rank " << rank << " step " << step;
    for (size_t i : {0u, 1u, 4u, 5u}) {
      ASSERT_TRUE(params[i].grad().defined()) << "parameter " << i << " rank " << rank;
      EXPECT_LE(max_abs_diff(params[i].grad().to_vector<float>(), expected[i]), 1e-7f)
          << "parameter " << i << " rank " << rank << " step " << step;
    }
    opt->step();
    opt->zero_grad();
    EXPECT_EQ(model.dead->weight.to_vector<float>(), dead_before) << "step " << step;
  }
  write_floats(fs::path(std::getenv("DDP_OUT")) / ("rank" + std::to_string(rank) + ".bin"), flat_weights(model));
}

class DdpUnused : public ::testing::TestWithParam<std::tuple<int, int, double>> {};

TEST_P(DdpUnused, UnusedEverywhereKeepsNoGradientAsInOneProcess) {
  const auto [world, accum, bucket_mb] = GetParam();
  const fs::path out = kiln::testing::make_temp_dir("kiln_ddp_unused_");
  ASSERT_FALSE(out.empty());
  kiln::testing::RankOptions ro;
  ro.extra_env = [&](int) {
    return std::vector<std::string>{"DDP_ACCUM=" + std::to_string(accum), "DDP_BUCKET_MB=" + std::to_string(bucket_mb),
                                    "DDP_OUT=" + out.string(), "KILN_DIST_TIMEOUT_S=30"};
  };
  EXPECT_EQ(run_ranks("DdpWorker.UnusedParameters", world, ro), std::vector<int>(static_cast<size_t>(world), 0));

  const std::vector<float> single = train_branches_single(world, accum, /*skip_step=*/-1, kSteps);
  const std::vector<float> rank0 = read_floats(out / "rank0.bin");
  const float diff = max_abs_diff(single, rank0);
  EXPECT_LE(diff, 1e-6f);
  std::printf("%d ranks, accum %d, bucket %g MB: max |w - w_single| = %.3g\n", world, accum, bucket_mb, diff);
  for (int r = 1; r < world; ++r)
    EXPECT_EQ(read_floats(out / ("rank" + std::to_string(r) + ".bin")), rank0) << "rank " << r;
  fs::remove_all(out);
}

// (world, accum, bucket_mb): one bucket; a bucket per parameter with `one_rank` used only under no_sync.
INSTANTIATE_TEST_SUITE_P(Cases, DdpUnused,
                         ::testing::Values(std::make_tuple(2, 1, 25.0), std::make_tuple(3, 2, 0.0001)));

// ZeRO-1 on the same model. `one_rank` also misses step 0 on every rank, so its step count falls
// behind shared's, as in one process. The optimizer numbers weights (48 elements each) before
// biases: with 3 ranks of 52 elements, rank 1's slice holds parts of `dead` and `one_rank` only,
// so after step 0 that rank has no optimizer state at all, yet must gather the same keys.
constexpr int kZeroSkipStep = 0;

struct ZeroBranches {
  dist::Communicator& comm;
  int accum;
  Branches model;
  std::unique_ptr<Optimizer> opt = make_adamw(model);
  dist::ZeroRedundancyOptimizer zero{*opt, OptimizerOptions{.lr = 1e-2}, comm};

  ZeroBranches(dist::Communicator& c, int a) : comm(c), accum(a) {}
  // Returns the parameters no rank used, as reduce_gradients() found them.
  std::vector<int> train_step(int step) {
    for (int m = 0; m < accum; ++m)
      branches_loss(model, step, comm.rank(), m, comm.world_size(), accum, kZeroSkipStep).backward();
    zero.reduce_gradients();
    const std::vector<int> unused = zero.last_unused_parameters();
    zero.step();
    opt->zero_grad();
    return unused;
  }
};

// The indices (as the optimizer numbers its parameters across groups, decayed weights first) of
// `params`, ascending.
std::vector<int> optimizer_indices(const Optimizer& opt, const std::vector<Tensor>& params) {
  std::vector<int> out;
  int index = 0;
  for (const ParamGroup& g : opt.param_groups())
    for (const Tensor& p : g.params) {
      for (const Tensor& q : params)
        if (p.impl() == q.impl()) out.push_back(index);
      ++index;
    }
  return out;
}

// `got` lists the entries of `want` in the same order: step counts, group indices, lr and weight
// decay equal, moments within 1e-6 (exp_avg) and 1e-7 (exp_avg_sq), or equal when `exact`.
void expect_same_state(const NamedTensors& got, const NamedTensors& want, bool exact, const std::string& what) {
  std::vector<std::string> got_names, want_names;
  for (const auto& e : got) got_names.push_back(e.first);
  for (const auto& e : want) want_names.push_back(e.first);
  ASSERT_EQ(got_names, want_names) << what;
  for (size_t k = 0; k < got.size(); ++k) {
    const std::string& name = got[k].first;
    const bool moment = name.find(".exp_avg") != std::string::npos;
    const std::vector<double> a = got[k].second.to(DType::f64).to_vector<double>();
    const std::vector<double> b = want[k].second.to(DType::f64).to_vector<double>();
    if (!moment || exact) {
      EXPECT_EQ(a, b) << what << ": " << name;
      continue;
    }
    const double tol = name.ends_with("exp_avg_sq") ? 1e-7 : 1e-6;
    ASSERT_EQ(a.size(), b.size()) << what << ": " << name;
    for (size_t j = 0; j < a.size(); ++j) EXPECT_NEAR(a[j], b[j], tol) << what << ": " << name << "[" << j << "]";
  }
}

TEST(ZeroWorker, UnusedParameters) {
  if (!is_dist_worker()) GTEST_SKIP() << "runs as a rank of Zero.UnusedParameters";
  const int accum = env_int("DDP_ACCUM", 1);
  auto comm = dist::init_process_group(dist::options_from_env(), kCPU);
  const int world = comm->world_size();

  // Five steps: `dead` bit-identical throughout, the rest as in one process.
  ZeroBranches straight(*comm, accum);
  Branches& m = straight.model;
  const std::vector<int> dead = optimizer_indices(*straight.opt, {m.dead->weight, m.dead->bias});
  const std::vector<int> dead_and_one_rank =
      optimizer_indices(*straight.opt, {m.dead->weight, m.dead->bias, m.one_rank->weight, m.one_rank->bias});
  const std::vector<int> one_rank = optimizer_indices(*straight.opt, {m.one_rank->weight});
  ASSERT_EQ(dead.size(), 2u);
  ASSERT_EQ(one_rank.size(), 1u);
  const std::vector<float> dead_weight = straight.model.dead->weight.to_vector<float>();
  const std::vector<float> dead_bias = straight.model.dead->bias.to_vector<float>();
  for (int step = 0; step < kSteps; ++step) {
    const std::vector<int> unused = straight.train_step(step);
    EXPECT_EQ(unused, step == kZeroSkipStep ? dead_and_one_rank : dead) << "step " << step;
    EXPECT_EQ(straight.model.dead->weight.to_vector<float>(), dead_weight) << "step " << step;
    EXPECT_EQ(straight.model.dead->bias.to_vector<float>(), dead_bias) << "step " << step;
    if (step == 0) {
      int mine = 0;  // state entries of this rank's pieces
      for (const auto& [name, t] : straight.zero.shard_optimizer().state_tensors()) mine += name.rfind("state.", 0) == 0;
      if (world == 3 && comm->rank() == 1) EXPECT_EQ(mine, 0) << "the test's premise";
      NamedTensors single_first;
      train_branches_single(world, accum, kZeroSkipStep, 1, &single_first);
      expect_same_state(straight.zero.state_tensors(), single_first, /*exact=*/false, "1 step");
    }
  }
  NamedTensors single_state;
  const std::vector<float> single = train_branches_single(world, accum, kZeroSkipStep, kSteps, &single_state);
  const float diff = max_abs_diff(flat_weights(straight.model), single);
  EXPECT_LE(diff, 1e-6f);
  // The gathered state is the unsharded optimizer's: nothing for `dead`, and `one_rank` one
  // step behind.
  const NamedTensors state = straight.zero.state_tensors();
  expect_same_state(state, single_state, /*exact=*/false, "5 steps");
  int steps_seen = 0;
  for (const auto& [name, t] : state) {
    for (int i : dead) EXPECT_NE(name.rfind("state." + std::to_string(i) + ".", 0), 0u) << name;
    if (name == "state." + std::to_string(one_rank[0]) + ".step") {
      EXPECT_EQ(t.item(), kSteps - 1);
      ++steps_seen;
    }
  }
  EXPECT_EQ(steps_seen, 1);
  if (comm->rank() == 0)
    std::printf("ZeRO-1, %d ranks, accum %d, unused parameters: max |w - w_single| = %.3g\n", world, accum, diff);

  // A checkpoint after 3 steps (one_rank's step count 2, dead without state) resumes exactly.
  ZeroBranches first(*comm, accum);
  for (int step = 0; step < 3; ++step) first.train_step(step);
  const NamedTensors saved = first.zero.state_tensors();
  NamedTensors single_saved;
  train_branches_single(world, accum, kZeroSkipStep, 3, &single_saved);
  expect_same_state(saved, single_saved, /*exact=*/false, "3 steps");
  ZeroBranches resumed(*comm, accum);
  resumed.model.load_state_dict(first.model.state_dict());
  resumed.opt->load_state_tensors(saved);  // the unsharded layout fits the plain optimizer too
  resumed.zero.load_state_tensors(saved);
  for (int step = 3; step < kSteps; ++step) resumed.train_step(step);
  EXPECT_EQ(flat_weights(resumed.model), flat_weights(straight.model));
  expect_same_state(resumed.zero.state_tensors(), state, /*exact=*/true, "resumed");
}

TEST(Zero, UnusedParametersStayAndResumeExactly) {
  for (const auto& [world, accum] : {std::pair{2, 1}, std::pair{3, 2}}) {
    kiln::testing::RankOptions ro;
    ro.extra_env = [accum = accum](int) {
      return std::vector<std::string>{"DDP_ACCUM=" + std::to_string(accum), "KILN_DIST_TIMEOUT_S=30"};
    };
    EXPECT_EQ(run_ranks("ZeroWorker.UnusedParameters", world, ro), std::vector<int>(static_cast<size_t>(world), 0))
        << world << " ranks, accum " << accum;
  }
}

// ---------------------------------------------------------------- a backward that reaches no parameter
// A rank whose loss does not depend on any parameter: its backward stops at the input, so no
// gradient hook fires there. It must still take part in the step's reduction (contributing
// zeros) instead of leaving the other ranks waiting. Step 0: rank 1 reaches no parameter; step 1:
// rank 0; step 2: no rank does, so every parameter is unused and nothing moves.
bool reaches_parameters(int step, int rank) { return step == 0 ? rank != 1 : step == 1 ? rank != 0 : false; }

Tensor parameterless_loss(const Tensor& x) {
  Tensor in = x.detach().clone();
  in.requires_grad_();
  return add(sum(mul(in, 0.0)), 1.0);
}

TEST(DdpWorker, NoParameterReached) {
  if (!is_dist_worker()) GTEST_SKIP() << "runs as a rank of NoParameterReached.RanksStillReduceTogether";
  const bool use_zero = env_int("DDP_ZERO") != 0;
  auto comm = dist::init_process_group(dist::options_from_env(), kCPU);
  const int rank = comm->rank(), world = comm->world_size();
  auto model = make_mlp();
  auto opt = make_adamw(*model);
  // The reference: one process on the reaching ranks' losses summed / world, from the same weights.
  auto ref = make_mlp();
  auto ref_opt = make_adamw(*ref);
  std::unique_ptr<dist::DistributedDataParallel> ddp;
  std::unique_ptr<dist::ZeroRedundancyOptimizer> zero;
  if (use_zero) zero = std::make_unique<dist::ZeroRedundancyOptimizer>(*opt, OptimizerOptions{.lr = 1e-2}, *comm);
  else ddp = std::make_unique<dist::DistributedDataParallel>(*model, *comm);
  const std::vector<Tensor> params = model->parameters(), ref_params = ref->parameters();
  std::vector<int> all(params.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int>(i);

  for (int step = 0; step < 3; ++step) {
    auto [x, y] = global_batch(step);
    const int64_t per_rank = kGlobalBatch / world;
    auto rows = [&](const Tensor& t, int r) { return t.narrow(0, r * per_rank, per_rank); };
    // No collective of the test's own between backward and the sync: DDP's buckets may already
    // be under way on the ranks that reach parameters.
    ref->load_state_dict(model->state_dict());
    Tensor total;
    for (int r = 0; r < world; ++r)
      if (reaches_parameters(step, r)) {
        Tensor l = mul(loss_on(*ref, rows(x, r), rows(y, r)), 1.0 / world);
        total = total.defined() ? add(total, l) : l;
      }
    const bool any_reaches = total.defined();
    if (any_reaches) total.backward();
    std::vector<std::vector<float>> expected;
    for (const Tensor& p : ref_params) expected.push_back(values_or_zeros(p));

    const bool reaches = reaches_parameters(step, rank);
    (reaches ? loss_on(*model, rows(x, rank), rows(y, rank)) : parameterless_loss(rows(x, rank))).backward();
    for (const Tensor& p : params) EXPECT_EQ(p.grad().defined(), reaches) << "the test's premise";
    const std::vector<float> before = flat_weights(*model);
    if (ddp) {
      ddp->finish_gradient_sync();  // must not wait forever on the rank that has nothing
      EXPECT_EQ(ddp->last_unused_parameters(), any_reaches ? std::vector<int>{} : all) << "step " << step;
      for (size_t i = 0; i < params.size(); ++i) {
        ASSERT_EQ(params[i].grad().defined(), any_reaches) << "parameter " << i << " step " << step;
        if (any_reaches)
          EXPECT_LE(max_abs_diff(params[i].grad().to_vector<float>(), expected[i]), 1e-7f)
              << "parameter " << i << " rank " << rank << " step " << step;
      }
      opt->step();
    } else {
      zero->reduce_gradients();
      EXPECT_EQ(zero->last_unused_parameters(), any_reaches ? std::vector<int>{} : all) << "step " << step;
      zero->step();
    }
    opt->zero_grad();
    ref_opt->step();
    ref_opt->zero_grad();
    if (!any_reaches) EXPECT_EQ(flat_weights(*model), before) << "step " << step;
    EXPECT_LE(max_abs_diff(flat_weights(*model), flat_weights(*ref)), 1e-6f) << "rank " << rank << " step " << step;
  }
  // Every rank holds the same weights: each one's equal the maximum over ranks.
  const std::vector<float> mine = flat_weights(*model);
  Tensor top = from_vector(mine, {static_cast<int64_t>(mine.size())});
  comm->all_reduce(top, dist::ReduceOp::max);
  EXPECT_EQ(top.to_vector<float>(), mine) << "rank " << rank;
}

TEST(NoParameterReached, RanksStillReduceTogether) {
  for (int zero : {0, 1}) {
    kiln::testing::RankOptions ro;
    ro.limit = std::chrono::seconds(60);
    ro.extra_env = [zero](int) {
      return std::vector<std::string>{"DDP_ZERO=" + std::to_string(zero), "KILN_DIST_TIMEOUT_S=10"};
    };
    EXPECT_EQ(run_ranks("DdpWorker.NoParameterReached", 2, ro), (std::vector<int>{0, 0})) << (zero ? "ZeRO-1" : "DDP");
  }
}

// ---------------------------------------------------------------- through the runner
// kiln launch + kiln train on Fashion-MNIST: N ranks with data.batch_size B / N (and, with
// accumulation, micro-batches of it) end with the weights of one process with batch B.
TEST(Runner, LaunchedRanksMatchOneProcess) {
  if (!kiln::testing::have_fashion_mnist()) GTEST_SKIP() << "Fashion-MNIST not installed";
  const fs::path dir = kiln::testing::make_temp_dir("kiln_ddp_runner_");
  ASSERT_FALSE(dir.empty());
  const std::vector<std::string> common = {"device=cpu",         "model.hidden_sizes=[32]", "train.steps=8",
                                           "train.log_every=4",  "train.eval_every=0",      "checkpoint.every=0",
                                           "log.tensorboard=false", "data.prefetch=0",      "optim.weight_decay=0.1",
                                           "optim.grad_clip=1.0"};
  auto train = [&](const std::string& name, int nproc, std::vector<std::string> extra) {
    extra.insert(extra.begin(), common.begin(), common.end());
    const auto r = kiln::testing::run_kiln(
        kiln::testing::train_args(nproc > 1 ? nproc : 0, dir / "c.yaml", dir / name, extra), {.env = {"OMP_NUM_THREADS=1"}});
    EXPECT_EQ(r.exit_code, 0) << name << ":\n" << r.output;
    return io::checkpoint_path(dir / name / "checkpoints", 8);
  };
  std::ofstream(dir / "c.yaml") << "model:\n  name: mlp\n";
  const fs::path single = train("single", 1, {"data.batch_size=24"});
  struct Variant {
    std::string name;
    int nproc;
    std::vector<std::string> extra;
  };
  for (const Variant& v : {Variant{"ddp2", 2, {"data.batch_size=12"}},
                           Variant{"ddp3", 3, {"data.batch_size=8"}},
                           Variant{"ddp2_accum", 2, {"data.batch_size=6", "train.grad_accum_steps=2"}},
                           Variant{"zero2_accum", 2, {"data.batch_size=6", "train.grad_accum_steps=2", "dist.zero=1"}},
                           Variant{"zero3", 3, {"data.batch_size=8", "dist.zero=1"}}}) {
    const fs::path ckpt = train(v.name, v.nproc, v.extra);
    if (!fs::exists(ckpt)) continue;
    const double diff = kiln::testing::max_weight_diff(single, ckpt);
    EXPECT_LE(diff, 1e-6) << v.name;
    std::printf("kiln launch %s: max |w - w_single| = %.3g after 8 steps\n", v.name.c_str(), diff);
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace kiln
