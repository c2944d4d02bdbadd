// The kiln command line. Each subcommand adds itself from its own file (tools/commands.h).
#include <CLI/CLI.hpp>

#include <iostream>

#include "core/build_info.h"
#include "core/error.h"
#include "tools/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"kiln: a GPU-accelerated deep-learning training framework"};
  app.set_version_flag("--version", [] { return kiln::version_report(); },
                       "print version, build, CUDA/cuDNN/NCCL versions and visible GPUs");
  app.require_subcommand(1);

  int exit_code = 0;
  kiln::cli::add_train_commands(app, exit_code);
  kiln::cli::add_launch_command(app, exit_code);
  kiln::cli::add_tokenize_commands(app, exit_code);
  kiln::cli::add_generate_command(app, exit_code);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const kiln::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return exit_code;
}
