// `kiln train CONFIG [key=value...]` and `kiln eval CONFIG checkpoint=PATH [key=value...]`.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>
#include <memory>

#include "core/error.h"
#include "tools/commands.h"
#include "tools/config.h"
#include "tools/trainer.h"

namespace kiln::cli {

namespace {

// The config file with the command line's key=value overrides applied in order.
Config load_config(const std::string& file, const std::vector<std::string>& overrides) {
  Config cfg = file.empty() ? Config() : Config::load(file);
  for (const std::string& o : overrides) cfg.set_override(o);
  return cfg;
}

struct TrainArgs {
  std::string config_file;
  std::vector<std::string> overrides;
  bool print_config = false;
};

}  // namespace

void add_train_commands(CLI::App& app, int& exit_code) {
  auto args = std::make_shared<TrainArgs>();
  auto* train = app.add_subcommand("train", "train a model from a YAML config");
  train->add_option("config", args->config_file, "YAML config file (see configs/ and docs/configs.md)")->required();
  train->add_option("overrides", args->overrides, "key=value overrides, e.g. optim.lr=3e-4 train.steps=200");
  train->add_flag("--print-config", args->print_config, "print the merged config and exit");
  train->callback([args, &exit_code] {
    const Config cfg = load_config(args->config_file, args->overrides);
    if (args->print_config) {
      std::cout << cfg.to_yaml();
      return;
    }
    const TrainSummary s = kiln::train(cfg);
    exit_code = s.interrupted ? 130 : 0;
  });

  auto eval_args = std::make_shared<TrainArgs>();
  auto* eval = app.add_subcommand("eval", "evaluate a checkpoint on the test split (images) or the val shards (tokens)");
  eval->add_option("config", eval_args->config_file, "YAML config file of the run")->required();
  eval->add_option("overrides", eval_args->overrides,
                   "checkpoint=PATH (a file or a run directory) and key=value overrides");
  eval->callback([eval_args] {
    std::string checkpoint;
    std::vector<std::string> rest;
    for (const std::string& o : eval_args->overrides) {
      if (o.rfind("checkpoint=", 0) == 0) checkpoint = o.substr(11);
      else rest.push_back(o);
    }
    KILN_CHECK(!checkpoint.empty(), "kiln eval: pass checkpoint=PATH (a checkpoint file or a run directory)");
    const EvalSummary e = evaluate(load_config(eval_args->config_file, rest), checkpoint);
    if (e.is_main) std::printf("%s\n", e.text.c_str());  // as training does, only rank 0 reports
  });
}

}  // namespace kiln::cli
