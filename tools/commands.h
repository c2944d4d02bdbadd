// The `kiln` subcommands. Each lives in its own tools/<name>_command.cpp and adds itself to the
// command line here; its CLI11 callback does the work, sets `exit_code` and reports bad input by
// throwing kiln::Error (main prints it and exits 1).
#pragma once

namespace CLI {
class App;
}

namespace kiln::cli {

void add_train_commands(CLI::App& app, int& exit_code);  // train, eval (tools/train_command.cpp)
void add_launch_command(CLI::App& app, int& exit_code);  // launch (tools/launch_command.cpp)
void add_tokenize_commands(CLI::App& app, int& exit_code);  // tokenizer, tokenize (tools/tokenize_command.cpp)
void add_generate_command(CLI::App& app, int& exit_code);  // generate (tools/generate_command.cpp)

}  // namespace kiln::cli
