// `kiln train` and `kiln eval`: everything between a config and a trained, evaluated,
// checkpointed model.
#pragma once

#include <filesystem>
#include <string>

#include "core/device.h"
#include "tools/config.h"

namespace kiln {

struct TrainSummary {
  std::filesystem::path run_dir;
  int64_t steps = 0;           // the step training stopped at
  bool interrupted = false;    // stopped by SIGINT/SIGTERM (a checkpoint was saved)
  // The last evaluation: the test split for images, eval.batches of the val shards for tokens
  // (accuracy -1: not measured).
  double test_loss = 0, test_accuracy = 0;
};

TrainSummary train(const Config& cfg);

struct EvalSummary {
  double loss = 0, accuracy = 0;  // accuracy -1 for token data
  int64_t samples = 0;            // images, or tokens
  std::string text;               // "test loss 0.41, test accuracy 85.10% (10000 images)"
  bool is_main = true;            // rank 0 (every rank gets the same result; rank 0 reports it)
};

// Evaluates `checkpoint` (a file, or a run directory: its newest valid checkpoint) on the
// test split of the config's dataset, or on eval.batches of its val shards.
EvalSummary evaluate(const Config& cfg, const std::string& checkpoint);

// The config's `device`: "auto" (cuda:0 when a GPU is visible, else cpu), "cpu" or "cuda:N"
// (checked to be visible). Shared by train, eval and generate.
Device resolve_device(const std::string& spec);

// A checkpoint file as given, or for a run directory (or its checkpoints/ directory) the
// newest valid checkpoint in it. Shared by eval and generate.
std::filesystem::path resolve_checkpoint(const std::string& checkpoint);

}  // namespace kiln
