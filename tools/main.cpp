// The kiln command line. Subcommands arrive with the issues that build them.
#include <CLI/CLI.hpp>

#include <iostream>

#include "core/build_info.h"

int main(int argc, char** argv) {
  CLI::App app{"kiln: a GPU-accelerated deep-learning training framework"};
  bool show_version = false;
  app.add_flag("--version", show_version, "print version, build and GPU information");
  app.require_subcommand(0, 1);
  CLI11_PARSE(app, argc, argv);
  if (show_version || argc == 1) {
    std::cout << kiln::version_report();
    return 0;
  }
  return 0;
}
