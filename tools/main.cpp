// The kiln command line: train, eval, and --version.
#include <CLI/CLI.hpp>

#include <iostream>

#include "core/build_info.h"
#include "core/error.h"
#include "tools/config.h"
#include "tools/trainer.h"

namespace {

// The config file with the command line's key=value overrides applied in order.
kiln::Config load_config(const std::string& file, const std::vector<std::string>& overrides) {
  kiln::Config cfg = file.empty() ? kiln::Config() : kiln::Config::load(file);
  for (const std::string& o : overrides) cfg.set_override(o);
  return cfg;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kiln: a GPU-accelerated deep-learning training framework"};
  app.set_version_flag("--version", [] { return kiln::version_report(); },
                       "print version, build, CUDA/cuDNN/NCCL versions and visible GPUs");
  app.require_subcommand(1);

  std::string config_file;
  std::vector<std::string> overrides;
  bool print_config = false;
  auto* train = app.add_subcommand("train", "train a model from a YAML config");
  train->add_option("config", config_file, "YAML config file (see configs/ and docs/configs.md)")->required();
  train->add_option("overrides", overrides, "key=value overrides, e.g. optim.lr=3e-4 train.steps=200");
  train->add_flag("--print-config", print_config, "print the merged config and exit");

  auto* eval = app.add_subcommand("eval", "evaluate a checkpoint on the test split");
  eval->add_option("config", config_file, "YAML config file of the run")->required();
  eval->add_option("overrides", overrides, "checkpoint=PATH (a file or a run directory) and key=value overrides");

  CLI11_PARSE(app, argc, argv);
  try {
    if (train->parsed()) {
      const kiln::Config cfg = load_config(config_file, overrides);
      if (print_config) {
        std::cout << cfg.to_yaml();
        return 0;
      }
      const kiln::TrainSummary s = kiln::train(cfg);
      return s.interrupted ? 130 : 0;
    }
    if (eval->parsed()) {
      std::string checkpoint;
      std::vector<std::string> rest;
      for (const std::string& o : overrides) {
        if (o.rfind("checkpoint=", 0) == 0) checkpoint = o.substr(11);
        else rest.push_back(o);
      }
      KILN_CHECK(!checkpoint.empty(), "kiln eval: pass checkpoint=PATH (a checkpoint file or a run directory)");
      const kiln::EvalSummary e = kiln::evaluate(load_config(config_file, rest), checkpoint);
      std::printf("test loss %.4f, test accuracy %.2f%% (%lld images)\n", e.loss, 100 * e.accuracy,
                  static_cast<long long>(e.samples));
      return 0;
    }
  } catch (const kiln::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
