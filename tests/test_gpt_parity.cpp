// GPT-2 parity with PyTorch 1.13 (Debian's python3-torch), as llm.c's test_gpt2 checks its model
// against the PyTorch reference. kiln builds a small GPT (2 layers, C = 64, 4 heads, T = 16,
// vocab 97 padded to 128, batch 2), writes its weights and a batch as .npy, and
// tests/parity/gpt_ref.py runs the same model (nanoGPT's, written out in the script) in float32
// and float64. Compared, for each attention backend (naive, flash, batched):
//   float32  logits       max |kiln - torch| <= 1e-5 x max |torch logit|
//            loss         relative error <= 1e-6
//            every param gradient: max |kiln - torch| <= 2e-5 x max |torch gradient| of that tensor
//   float64  the same three against PyTorch float64 within 1e-12 (relative as above)
// (Measured on the CPU: float32 logits ~4e-7, loss <= 1.5e-7, worst gradient ~1.1e-6; float64
// ~1e-15.)
// The padding rows of wte get exactly zero gradient on both sides (no token selects them and
// the loss ignores their logits). Worst errors are printed for the logs.
//
// Hugging Face import: gpt_ref.py draws a random GPT-2 in Hugging Face's layout (Conv1D
// weights [in, out], attn.bias / masked_bias buffers, tied lm_head, unpadded vocab), saves it
// with the `safetensors` package (project venv) and writes its logits; kiln loads the file with
// io::load_hf_gpt2 and must give the same logits (2e-5 relative), with exactly zero logits in
// the padded columns.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/generator.h"
#include "core/ops.h"
#include "models/gpt.h"
#include "tests/gpt_testing.h"
#include "tests/npy.h"
#include "tests/python_oracle.h"
#include "tools/io/hf_gpt2.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using models::GPT;
using models::GPTConfig;
using testing::NpyArray;
using testing::read_npy;
using testing::write_npy;

constexpr int64_t kBatch = 2, kT = 16, kVocab = 97, kEmbd = 64, kHeads = 4, kLayers = 2;

GPTConfig tiny_config(AttentionBackend backend) {
  GPTConfig c;
  c.n_layer = kLayers;
  c.n_head = kHeads;
  c.n_embd = kEmbd;
  c.block_size = kT;
  c.vocab_size = kVocab;
  c.padded_vocab_size = models::padded_vocab_size(kVocab);
  c.attention = backend;
  return c;
}

// A GPT whose weights are redrawn larger than GPT-2's init (testing::redraw_gpt_weights).
// Same seed, same weights.
std::shared_ptr<GPT> make_model(AttentionBackend backend) {
  Generator gen(20261125);
  auto model = std::make_shared<GPT>(tiny_config(backend), &gen);
  testing::redraw_gpt_weights(*model, gen);
  return model;
}

struct Batch {
  Tensor idx, targets;
};
Batch make_batch() {
  Generator gen(7);
  return {randint(0, kVocab, {kBatch, kT}, {.dtype = DType::i64}, &gen),
          randint(0, kVocab, {kBatch, kT}, {.dtype = DType::i64}, &gen)};
}

// max |actual - expected| / max(max |expected|, 1e-30); NaN counts as infinitely wrong.
double rel_err(const Tensor& actual, const NpyArray& expected) {
  const std::vector<double> a = actual.to_vector<double>();
  EXPECT_EQ(a.size(), expected.values.size());
  double err = 0, scale = 0;
  for (size_t i = 0; i < a.size() && i < expected.values.size(); ++i) {
    scale = std::max(scale, std::abs(expected.values[i]));
    const double e = std::abs(a[i] - expected.values[i]);
    err = std::isnan(e) ? INFINITY : std::max(err, e);
  }
  return err / std::max(scale, 1e-30);
}

std::string quote(const std::string& s) { return "'" + s + "'"; }

class GptParity : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::make_temp_dir("kiln_gpt_parity_");
    ASSERT_FALSE(dir_.empty()) << "cannot make a temporary directory";
  }
  void TearDown() override { testing::remove_temp_dir_unless_failed(dir_); }
  NpyArray ref(const std::string& what) const { return read_npy(dir_ / (what + ".npy")); }
  fs::path dir_;
};

struct Tolerances {
  double logits, loss, grad;
};

TEST_F(GptParity, LogitsLossAndEveryGradientMatchPyTorch) {
  const std::string skip = testing::python_unavailable(testing::kSystemPython, "torch, numpy");
  if (!skip.empty()) GTEST_SKIP() << skip;
  const fs::path script = testing::parity_script("gpt_ref.py");
  ASSERT_TRUE(fs::exists(script)) << "reference script " << script << " not found (set KILN_SOURCE_DIR)";

  const Batch batch = make_batch();
  for (const auto& [name, t] : make_model(AttentionBackend::naive)->state_dict())
    write_npy(dir_ / ("init." + name + ".npy"), t);
  write_npy(dir_ / "idx.npy", batch.idx);
  write_npy(dir_ / "targets.npy", batch.targets);
  const testing::CommandResult r =
      testing::run_command(testing::kSystemPython + " " + quote(script.string()) + " parity " + quote(dir_.string()) +
                           " --n-head " + std::to_string(kHeads) + " --vocab " + std::to_string(kVocab) + " 2>&1");
  ASSERT_TRUE(r.ok) << r.failure;
  std::cout << r.output;

  for (const auto& [backend_name, backend] : {std::pair{"naive", AttentionBackend::naive},
                                              std::pair{"flash", AttentionBackend::flash},
                                              std::pair{"batched", AttentionBackend::batched}}) {
    for (const auto& [dt, dtype, tol] : {std::tuple{"f32", DType::f32, Tolerances{1e-5, 1e-6, 2e-5}},
                                         std::tuple{"f64", DType::f64, Tolerances{1e-12, 1e-12, 1e-12}}}) {
      SCOPED_TRACE(std::string(backend_name) + " attention, " + dt);
      auto model = make_model(backend);
      if (dtype == DType::f64)
        for (Tensor& p : model->parameters()) p.set_data(p.detach().to(DType::f64));
      const Tensor logits = model->forward(batch.idx);
      const Tensor loss = model->loss(logits, batch.targets);
      loss.backward();

      const double logits_err = rel_err(logits, ref(std::string(dt) + ".logits"));
      const double ref_loss = ref(std::string(dt) + ".loss").values.at(0);
      const double loss_err = std::abs(loss.item() - ref_loss) / std::abs(ref_loss);
      EXPECT_LE(logits_err, tol.logits);
      EXPECT_LE(loss_err, tol.loss) << "kiln " << loss.item() << ", PyTorch " << ref_loss;
      double worst_grad = 0;
      std::string worst_name;
      for (const auto& [name, p] : model->named_parameters()) {
        ASSERT_TRUE(p.grad().defined()) << name << ": no gradient";
        const double e = rel_err(p.grad(), ref(std::string(dt) + ".grad." + name));
        EXPECT_LE(e, tol.grad) << "gradient of " << name;
        if (e >= worst_grad) worst_grad = e, worst_name = name;
      }
      // The tied wte gets both uses' gradients; its padding rows none.
      const Tensor pad_grad = model->wte->weight.grad().narrow(0, kVocab, model->config().padded_vocab_size - kVocab);
      EXPECT_EQ(max_abs_diff(pad_grad, zeros_like(pad_grad)), 0.0);
      std::printf("[%s, %s] logits %.2e, loss %.2e, worst gradient %.2e (%s)\n", backend_name, dt, logits_err,
                  loss_err, worst_grad, worst_name.c_str());
    }
  }
}

TEST_F(GptParity, HuggingFaceWeightsGiveTheSameLogits) {
  const char* src = std::getenv("KILN_SOURCE_DIR");
  const std::string python = (fs::path(src ? src : ".") / ".venv" / "bin" / "python").string();
  const std::string skip = testing::python_unavailable(python, "torch, numpy, safetensors",
                                                       "scripts/setup.sh sets the venv up");
  if (!skip.empty()) GTEST_SKIP() << skip;
  const fs::path script = testing::parity_script("gpt_ref.py");
  ASSERT_TRUE(fs::exists(script)) << "reference script " << script << " not found (set KILN_SOURCE_DIR)";

  const Batch batch = make_batch();
  write_npy(dir_ / "idx.npy", batch.idx);
  const testing::CommandResult r = testing::run_command(
      python + " " + quote(script.string()) + " hf " + quote(dir_.string()) + " --n-layer " + std::to_string(kLayers) +
      " --n-head " + std::to_string(kHeads) + " --n-embd " + std::to_string(kEmbd) + " --block-size " +
      std::to_string(kT) + " --vocab " + std::to_string(kVocab) + " --seed 3 2>&1");
  ASSERT_TRUE(r.ok) << r.failure;

  auto model = std::make_shared<GPT>(tiny_config(AttentionBackend::naive));
  io::load_hf_gpt2(dir_ / "model.safetensors", *model);
  NoGradGuard no_grad;
  const Tensor logits = model->forward(batch.idx);
  const double err = rel_err(logits.narrow(2, 0, kVocab).contiguous(), ref("hf.logits"));
  EXPECT_LE(err, 2e-5);
  const Tensor padded = logits.narrow(2, kVocab, model->config().padded_vocab_size - kVocab);
  EXPECT_EQ(max_abs_diff(padded, zeros_like(padded)), 0.0);
  std::printf("Hugging Face import: logits %.2e\n", err);
}

TEST_F(GptParity, HuggingFaceLoadRejectsAMismatchedModel) {
  const char* src = std::getenv("KILN_SOURCE_DIR");
  const std::string python = (fs::path(src ? src : ".") / ".venv" / "bin" / "python").string();
  const std::string skip = testing::python_unavailable(python, "torch, numpy, safetensors",
                                                       "scripts/setup.sh sets the venv up");
  if (!skip.empty()) GTEST_SKIP() << skip;
  const Batch batch = make_batch();
  write_npy(dir_ / "idx.npy", batch.idx);
  const testing::CommandResult r = testing::run_command(
      python + " " + quote(testing::parity_script("gpt_ref.py").string()) + " hf " + quote(dir_.string()) +
      " --n-layer 2 --n-head 4 --n-embd 64 --block-size 16 --vocab 97 2>&1");
  ASSERT_TRUE(r.ok) << r.failure;

  GPTConfig wider = tiny_config(AttentionBackend::naive);
  wider.n_embd = 128;
  GPT model(wider);
  try {
    io::load_hf_gpt2(dir_ / "model.safetensors", model);
    FAIL() << "loaded 64-wide weights into a 128-wide model";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.safetensors"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("wte.weight"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kiln
