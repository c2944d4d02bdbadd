// The registered models (models/*.cpp) through the registry: output shapes, parameter counts
// against hand-written formulas, PyTorch's parameter and state_dict names, state_dict round
// trips and their errors, train/eval behaviour, seeded initialisation and a first backward.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/error.h"
#include "core/generator.h"
#include "core/ops.h"
#include "core/tensor.h"
#include "models/registry.h"
#include "nn/module.h"

namespace kiln {
namespace {

using models::ModelSpec;

// ---------------------------------------------------------------- the models under test

ModelSpec mlp_spec() { return ModelSpec{}; }  // the defaults: 784-512-512-10

ModelSpec lenet_spec() {
  ModelSpec s;
  s.name = "lenet";
  s.channels = {6, 16};
  s.hidden_sizes = {120, 84};
  return s;
}

ModelSpec resnet_spec() {
  ModelSpec s;
  s.name = "resnet_small";
  s.channels = {32, 64, 128};
  s.blocks_per_stage = 2;
  return s;
}

// Parameter counts of the layers, as PyTorch counts them.
int64_t linear_params(int64_t in, int64_t out) { return in * out + out; }
int64_t conv_params(int64_t in, int64_t out, int64_t k, bool bias) {
  return in * out * k * k + (bias ? out : 0);
}
int64_t bn_params(int64_t c) { return 2 * c; }  // weight and bias; the running stats are buffers

// Flatten, Linear 784->512, ReLU, Linear 512->512, ReLU, Linear 512->10.
int64_t mlp_param_count() {
  return linear_params(784, 512) + linear_params(512, 512) + linear_params(512, 10);  // 669,706
}

// LeNet-5 on 28x28 with padding 2 on the first conv:
//   conv1 1->6, 5x5:      1*6*25 + 6      =    156    (28x28 -> 28x28, pool -> 14x14)
//   conv2 6->16, 5x5:     6*16*25 + 16    =  2,416    (14x14 -> 10x10, pool -> 5x5)
//   fc1 16*5*5=400->120:  400*120 + 120   = 48,120
//   fc2 120->84:          120*84 + 84     = 10,164
//   fc3 84->10:           84*10 + 10      =    850
//                                   total   61,706
int64_t lenet_param_count() {
  return conv_params(1, 6, 5, true) + conv_params(6, 16, 5, true) + linear_params(16 * 5 * 5, 120) +
         linear_params(120, 84) + linear_params(84, 10);
}

// Stem conv 3x3 (no bias) + BN, then per stage s of width c_s, blocks_per_stage basic blocks of
// conv3x3-BN-conv3x3-BN (no conv biases); the first block of a stage whose width changes also
// has a 1x1 conv + BN shortcut. Then global pooling and Linear(c_last, 10).
// channels {32, 64, 128}, 2 blocks: 352 + 37,120 + 131,712 + 525,568 + 1,290 = 696,042.
int64_t resnet_param_count(const std::vector<int64_t>& channels, int64_t blocks) {
  int64_t n = conv_params(1, channels[0], 3, false) + bn_params(channels[0]);
  int64_t in = channels[0];
  for (int64_t c : channels) {
    for (int64_t b = 0; b < blocks; ++b) {
      n += conv_params(in, c, 3, false) + bn_params(c) + conv_params(c, c, 3, false) + bn_params(c);
      if (in != c) n += conv_params(in, c, 1, false) + bn_params(c);
      in = c;
    }
  }
  return n + linear_params(in, 10);
}

std::vector<std::string> names_of(const nn::NamedTensors& named) {
  std::vector<std::string> names;
  for (const auto& [name, t] : named) names.push_back(name);
  return names;
}

const Tensor& find(const nn::NamedTensors& named, const std::string& name) {
  for (const auto& [n, t] : named)
    if (n == name) return t;
  KILN_FAIL("no tensor named ", name);
}

// The message of the kiln::Error that `f` throws ("" and a test failure if it throws none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a kiln::Error";
  return "";
}

bool identical(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         a.to_vector<double>() == b.to_vector<double>();
}

Tensor batch(int64_t n, uint64_t seed = 11) {
  Generator gen(seed);
  return randn({n, 1, 28, 28}, {}, &gen);
}

Tensor labels(int64_t n, uint64_t seed = 12) {
  Generator gen(seed);
  return randint(0, 10, {n}, {.dtype = DType::i64}, &gen);
}

// ---------------------------------------------------------------- every registered model

struct ModelCase {
  const char* label;
  ModelSpec spec;
  int64_t expected_params;
};

class EveryModel : public ::testing::TestWithParam<ModelCase> {
 protected:
  std::shared_ptr<nn::Module> make(uint64_t seed = 0) {
    Generator gen(seed);
    return models::make_model(GetParam().spec, &gen);
  }
};

INSTANTIATE_TEST_SUITE_P(Models, EveryModel,
                         ::testing::Values(ModelCase{"mlp", mlp_spec(), mlp_param_count()},
                                           ModelCase{"lenet", lenet_spec(), lenet_param_count()},
                                           ModelCase{"resnet_small", resnet_spec(),
                                                     resnet_param_count({32, 64, 128}, 2)}),
                         [](const auto& info) { return std::string(info.param.label); });

TEST(Models, EveryRegisteredModelIsTested) {
  const std::vector<std::string> names = models::model_names();
  // Image classifiers are tested here (EveryModel); the GPT has its own suite (tests/test_gpt.cpp).
  for (const char* tested : {"gpt", "lenet", "mlp", "resnet_small"})
    EXPECT_NE(std::find(names.begin(), names.end(), tested), names.end()) << tested;
  EXPECT_EQ(names.size(), 4u) << "a model was registered: add it to EveryModel or give it a suite";
}

TEST_P(EveryModel, ForwardGivesLogitsPerImage) {
  auto model = make();
  for (bool training : {true, false}) {
    model->train(training);
    Tensor out = (*model)(batch(4));
    EXPECT_EQ(out.shape(), (Shape{4, 10})) << "training " << training;
    EXPECT_EQ(out.dtype(), DType::f32);
    for (double v : out.to_vector<double>()) ASSERT_TRUE(std::isfinite(v));
  }
}

TEST_P(EveryModel, ParameterCountMatchesFormula) {
  auto model = make();
  EXPECT_EQ(model->num_parameters(), GetParam().expected_params);
  int64_t summed = 0;
  for (const auto& [name, p] : model->named_parameters()) {
    EXPECT_TRUE(p.requires_grad()) << name;
    EXPECT_EQ(p.dtype(), DType::f32) << name;
    summed += p.numel();
  }
  EXPECT_EQ(summed, GetParam().expected_params);
}

TEST(Models, ParameterCountsByHand) {
  EXPECT_EQ(mlp_param_count(), 669706);
  EXPECT_EQ(lenet_param_count(), 61706);  // the classic LeNet-5
  EXPECT_EQ(resnet_param_count({32, 64, 128}, 2), 696042);
}

TEST_P(EveryModel, SameSeedSameWeights) {
  auto a = make(7), b = make(7), c = make(8);
  const nn::NamedTensors sa = a->state_dict(), sb = b->state_dict(), sc = c->state_dict();
  ASSERT_EQ(names_of(sa), names_of(sb));
  bool any_differs = false;
  for (size_t i = 0; i < sa.size(); ++i) {
    EXPECT_TRUE(identical(sa[i].second, sb[i].second)) << sa[i].first;
    if (!identical(sa[i].second, sc[i].second)) any_differs = true;
  }
  EXPECT_TRUE(any_differs) << "seeds 7 and 8 gave the same weights";

  // Without a generator the models draw from the default one, which kiln::manual_seed resets.
  manual_seed(123);
  auto d = models::make_model(GetParam().spec);
  manual_seed(123);
  auto e = models::make_model(GetParam().spec);
  const nn::NamedTensors sd = d->state_dict(), se = e->state_dict();
  for (size_t i = 0; i < sd.size(); ++i)
    EXPECT_TRUE(identical(sd[i].second, se[i].second)) << sd[i].first;
}

TEST_P(EveryModel, StateDictRoundTripGivesIdenticalOutputs) {
  auto source = make(1), target = make(2);
  source->train();
  (*source)(batch(8, 21));  // moves BatchNorm's running statistics off their initial values
  source->eval();
  target->eval();
  const Tensor x = batch(4);
  const Tensor expected = (*source)(x);
  ASSERT_FALSE(identical((*target)(x), expected)) << "different seeds should give different outputs";

  target->load_state_dict(source->state_dict());
  EXPECT_TRUE(identical((*target)(x), expected));
  const nn::NamedTensors ss = source->state_dict(), ts = target->state_dict();
  ASSERT_EQ(names_of(ss), names_of(ts));
  for (size_t i = 0; i < ss.size(); ++i) EXPECT_TRUE(identical(ss[i].second, ts[i].second)) << ss[i].first;

  // The load copied: changing the source afterwards leaves the target alone.
  {
    NoGradGuard no_grad;
    for (Tensor& p : source->parameters()) p.fill_(0.5);
  }
  EXPECT_TRUE(identical((*target)(x), expected));
}

TEST_P(EveryModel, OneBackwardGivesFiniteGradientsForEveryParameter) {
  auto model = make(3);
  model->train();
  const Tensor x = batch(4), y = labels(4);
  Tensor loss = cross_entropy((*model)(x), y);
  const double before = loss.item();
  EXPECT_TRUE(std::isfinite(before));
  loss.backward();
  for (const auto& [name, p] : model->named_parameters()) {
    const Tensor g = p.grad();
    ASSERT_TRUE(g.defined()) << name << " has no gradient";
    EXPECT_EQ(g.shape(), p.shape()) << name;
    double norm = 0;
    for (double v : g.to_vector<double>()) {
      ASSERT_TRUE(std::isfinite(v)) << name;
      norm += v * v;
    }
    EXPECT_GT(norm, 0.0) << name << ": gradient is all zeros";
  }
  // The gradient points uphill: a small step against it lowers the loss on the same batch.
  {
    NoGradGuard no_grad;
    for (Tensor& p : model->parameters()) p.add_(p.grad(), -1e-2);
  }
  model->zero_grad();
  const double after = cross_entropy((*model)(x), y).item();
  EXPECT_LT(after, before);
}

// ---------------------------------------------------------------- names

TEST(Models, MlpNamesFollowPyTorch) {
  auto model = models::make_model(mlp_spec());
  // Sequential(Flatten, Linear, ReLU, Linear, ReLU, Linear): children are numbered, so the
  // Linear layers are 1, 3 and 5, as in an nn.Sequential.
  EXPECT_EQ(names_of(model->named_parameters()),
            (std::vector<std::string>{"1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias"}));
  EXPECT_EQ(names_of(model->state_dict()), names_of(model->named_parameters()));  // no buffers
  const nn::NamedTensors params = model->named_parameters();
  EXPECT_EQ(find(params, "1.weight").shape(), (Shape{512, 784}));  // [out, in], as torch.nn.Linear
  EXPECT_EQ(find(params, "1.bias").shape(), (Shape{512}));
  EXPECT_EQ(find(params, "5.weight").shape(), (Shape{10, 512}));
}

TEST(Models, LenetNamesFollowPyTorch) {
  auto model = models::make_model(lenet_spec());
  // 0 Conv2d, 1 ReLU, 2 MaxPool2d, 3 Conv2d, 4 ReLU, 5 MaxPool2d, 6 Flatten,
  // 7 Linear, 8 ReLU, 9 Linear, 10 ReLU, 11 Linear
  EXPECT_EQ(names_of(model->named_parameters()),
            (std::vector<std::string>{"0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias",
                                      "9.weight", "9.bias", "11.weight", "11.bias"}));
  const nn::NamedTensors params = model->named_parameters();
  EXPECT_EQ(find(params, "0.weight").shape(), (Shape{6, 1, 5, 5}));
  EXPECT_EQ(find(params, "3.weight").shape(), (Shape{16, 6, 5, 5}));
  EXPECT_EQ(find(params, "7.weight").shape(), (Shape{120, 400}));
  EXPECT_EQ(find(params, "11.weight").shape(), (Shape{10, 84}));
}

TEST(Models, ResnetNamesFollowPyTorch) {
  auto model = models::make_model(resnet_spec());
  // 0 conv, 1 BN, 2 ReLU, 3-8 basic blocks (two per stage; 5 and 7 start a wider stage and
  // carry a downsample shortcut), 9 AdaptiveAvgPool2d, 10 Flatten, 11 Linear. Inside a block,
  // torchvision's BasicBlock names: conv1, bn1, conv2, bn2, downsample.{0,1}.
  std::vector<std::string> params = {"0.weight", "1.weight", "1.bias"};
  std::vector<std::string> buffers = {"1.running_mean", "1.running_var", "1.num_batches_tracked"};
  auto add_bn = [&](const std::string& prefix) {
    params.push_back(prefix + ".weight");
    params.push_back(prefix + ".bias");
    for (const char* b : {".running_mean", ".running_var", ".num_batches_tracked"})
      buffers.push_back(prefix + b);
  };
  for (int block = 3; block <= 8; ++block) {
    const std::string p = std::to_string(block) + ".";
    params.push_back(p + "conv1.weight");
    add_bn(p + "bn1");
    params.push_back(p + "conv2.weight");
    add_bn(p + "bn2");
    if (block == 5 || block == 7) {
      params.push_back(p + "downsample.0.weight");
      add_bn(p + "downsample.1");
    }
  }
  params.push_back("11.weight");
  params.push_back("11.bias");
  // named_parameters in PyTorch's order (a module's own, then its children's in registration order).
  EXPECT_EQ(names_of(model->named_parameters()), params);
  EXPECT_EQ(names_of(model->named_buffers()), buffers);
  // state_dict holds the same keys as PyTorch's; kiln lists every parameter before every buffer
  // (PyTorch interleaves them per module), which load_state_dict does not care about.
  std::set<std::string> expected(params.begin(), params.end());
  expected.insert(buffers.begin(), buffers.end());
  const std::vector<std::string> keys = names_of(model->state_dict());
  EXPECT_EQ(std::set<std::string>(keys.begin(), keys.end()), expected);
  EXPECT_EQ(keys.size(), expected.size());

  const nn::NamedTensors state = model->state_dict();
  EXPECT_EQ(find(state, "3.conv1.weight").shape(), (Shape{32, 32, 3, 3}));
  EXPECT_EQ(find(state, "3.bn1.running_mean").shape(), (Shape{32}));
  EXPECT_EQ(find(state, "3.bn1.num_batches_tracked").dtype(), DType::i64);
  EXPECT_EQ(find(state, "3.bn1.num_batches_tracked").dim(), 0);
  EXPECT_EQ(find(state, "5.conv1.weight").shape(), (Shape{64, 32, 3, 3}));
  EXPECT_EQ(find(state, "5.downsample.0.weight").shape(), (Shape{64, 32, 1, 1}));
  EXPECT_EQ(find(state, "11.weight").shape(), (Shape{10, 128}));
}

// ---------------------------------------------------------------- errors

TEST(Models, UnknownNameListsKnownModels) {
  ModelSpec spec;
  spec.name = "vgg16";
  const std::string msg = error_of([&] { models::make_model(spec); });
  EXPECT_NE(msg.find("unknown model: vgg16"), std::string::npos) << msg;
  EXPECT_NE(msg.find("known"), std::string::npos) << msg;
  EXPECT_NE(msg.find("lenet, mlp, resnet_small"), std::string::npos) << msg;  // sorted
}

TEST(Models, LoadStateDictErrorsNameTheKey) {
  Generator gen(5);
  auto model = models::make_model(mlp_spec(), &gen);
  const nn::NamedTensors original = model->state_dict();
  std::vector<std::vector<double>> before;
  for (const auto& [name, t] : original) before.push_back(t.to_vector<double>());
  auto changed_nothing = [&] {
    const nn::NamedTensors now = model->state_dict();
    for (size_t i = 0; i < now.size(); ++i)
      if (now[i].second.to_vector<double>() != before[i]) return false;
    return true;
  };
  auto fresh = [&] {
    nn::NamedTensors state;
    for (const auto& [name, t] : original) state.emplace_back(name, t.clone().fill_(0.25));
    return state;
  };

  nn::NamedTensors missing = fresh();
  missing.erase(missing.begin());  // "1.weight"
  std::string msg = error_of([&] { model->load_state_dict(missing); });
  EXPECT_NE(msg.find("missing keys: 1.weight"), std::string::npos) << msg;
  EXPECT_TRUE(changed_nothing()) << "a failed load must leave the model as it was";

  nn::NamedTensors unexpected = fresh();
  unexpected.emplace_back("7.weight", zeros({3, 3}));
  msg = error_of([&] { model->load_state_dict(unexpected); });
  EXPECT_NE(msg.find("unexpected keys: 7.weight"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("missing"), std::string::npos) << msg;
  EXPECT_TRUE(changed_nothing());

  nn::NamedTensors wrong_shape = fresh();
  wrong_shape[2].second = zeros({512, 511});  // "3.weight" is [512, 512]
  msg = error_of([&] { model->load_state_dict(wrong_shape); });
  EXPECT_NE(msg.find("3.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[512, 511]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[512, 512]"), std::string::npos) << msg;
  EXPECT_TRUE(changed_nothing());

  // Non-strict loads skip missing and unexpected keys, but a shape mismatch is still an error.
  EXPECT_THROW(model->load_state_dict(wrong_shape, /*strict=*/false), Error);
  EXPECT_TRUE(changed_nothing());
  nn::NamedTensors partial = fresh();
  partial.erase(partial.begin());
  partial.emplace_back("extra", zeros({1}));
  model->load_state_dict(partial, /*strict=*/false);
  const nn::NamedTensors now = model->state_dict();
  EXPECT_EQ(now[0].second.to_vector<double>(), before[0]) << "1.weight was not given: unchanged";
  for (double v : now[1].second.to_vector<double>()) ASSERT_EQ(v, 0.25) << "1.bias was loaded";
}

TEST(Models, LoadStateDictChecksBufferShapes) {
  auto model = models::make_model(resnet_spec());
  nn::NamedTensors state = model->state_dict();
  for (auto& [name, t] : state)
    if (name == "3.bn1.running_var") t = ones({16});
  const std::string msg = error_of([&] { model->load_state_dict(state); });
  EXPECT_NE(msg.find("3.bn1.running_var"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[16]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[32]"), std::string::npos) << msg;
}

// ---------------------------------------------------------------- train / eval

TEST(Models, TrainAndEvalPropagateToEveryLayer) {
  auto model = models::make_model(resnet_spec());
  std::function<void(const nn::Module&, bool)> expect_mode = [&](const nn::Module& m, bool on) {
    EXPECT_EQ(m.is_training(), on) << m.type_name();
    for (const auto& [name, child] : m.children()) expect_mode(*child, on);
  };
  expect_mode(*model, true);  // modules start in training mode, as in PyTorch
  model->eval();
  expect_mode(*model, false);
  model->train();
  expect_mode(*model, true);
}

TEST(Models, DropoutOnlyInTraining) {
  ModelSpec spec = mlp_spec();
  spec.dropout = 0.5;
  Generator gen(9);
  auto model = models::make_model(spec, &gen);
  const Tensor x = batch(4);
  model->eval();
  const Tensor eval1 = (*model)(x), eval2 = (*model)(x);
  EXPECT_TRUE(identical(eval1, eval2)) << "eval: dropout is the identity";
  model->train();
  manual_seed(1);
  const Tensor train1 = (*model)(x), train2 = (*model)(x);
  EXPECT_FALSE(identical(train1, eval1)) << "training: dropout masks units";
  EXPECT_FALSE(identical(train1, train2)) << "training: a fresh mask per forward";
  manual_seed(1);
  EXPECT_TRUE(identical((*model)(x), train1)) << "kiln::manual_seed replays the masks";
  model->eval();
  EXPECT_TRUE(identical((*model)(x), eval1));
}

TEST(Models, BatchNormUsesBatchStatisticsInTrainingAndRunningOnesInEval) {
  Generator gen(4);
  auto model = models::make_model(resnet_spec(), &gen);
  const Tensor x = batch(4);
  auto buffer = [&](const std::string& name) { return find(model->state_dict(), name).to_vector<double>(); };
  const std::vector<double> mean0 = buffer("1.running_mean"), var0 = buffer("3.bn2.running_var");

  model->eval();
  const Tensor eval1 = (*model)(x), eval2 = (*model)(x);
  EXPECT_TRUE(identical(eval1, eval2));
  EXPECT_EQ(buffer("1.running_mean"), mean0) << "eval must not update the running statistics";
  EXPECT_EQ(buffer("1.num_batches_tracked"), std::vector<double>{0});

  model->train();
  const Tensor train1 = (*model)(x);
  EXPECT_FALSE(identical(train1, eval1)) << "training normalises with the batch's statistics";
  EXPECT_NE(buffer("1.running_mean"), mean0) << "training updates the running mean";
  EXPECT_NE(buffer("3.bn2.running_var"), var0) << "and the running variance";
  EXPECT_EQ(buffer("1.num_batches_tracked"), std::vector<double>{1});
  EXPECT_EQ(buffer("5.downsample.1.num_batches_tracked"), std::vector<double>{1});

  // Training-mode outputs depend only on the batch, not on the running statistics; eval ones
  // now use the updated running statistics.
  EXPECT_TRUE(identical((*model)(x), train1));
  model->eval();
  EXPECT_FALSE(identical((*model)(x), eval1));
}

}  // namespace
}  // namespace kiln
