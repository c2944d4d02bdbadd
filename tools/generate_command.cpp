// `kiln generate CONFIG checkpoint=PATH prompt="..." max_tokens=200 temperature=0.8 top_k=40
// [seed=N] [key=value...]`: samples text from a trained GPT, streaming it as it is chosen.
//
// CONFIG is the run's config (model.* builds the model; data.tokenizer names the tokenizer);
// key=value pairs other than the generation arguments override it. The weights come from
// checkpoint=PATH (a checkpoint file, or a run directory: its newest valid checkpoint) or, with
// no checkpoint, from model.init_from (Hugging Face GPT-2 safetensors). data.tokenizer is
// "byte" (256 byte tokens), a kiln tokenizer file (`kiln tokenizer train`), or a directory
// holding OpenAI's GPT-2 encoder.json and vocab.bpe. Generation stops after max_tokens or at
// the tokenizer's <|endoftext|>.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/error.h"
#include "core/generator.h"
#include "data/bpe_tokenizer.h"
#include "models/gpt.h"
#include "tools/commands.h"
#include "tools/config.h"
#include "tools/io/checkpoint.h"
#include "tools/io/hf_gpt2.h"
#include "tools/train_task.h"
#include "tools/trainer.h"

namespace kiln::cli {

namespace {

namespace fs = std::filesystem;

struct GenerateArgs {
  std::string config_file;
  std::vector<std::string> assignments;
};

// The generation arguments, split from the config overrides.
struct Request {
  std::string checkpoint, prompt;
  int64_t max_tokens = 200, top_k = 40;
  double temperature = 0.8;
  uint64_t seed = 1337;
  std::vector<std::string> overrides;
};

Request parse_request(const std::vector<std::string>& assignments) {
  Request r;
  for (const std::string& a : assignments) {
    const size_t eq = a.find('=');
    const std::string key = eq == std::string::npos ? a : a.substr(0, eq), value = a.substr(eq + 1);
    auto number = [&](auto parse) {
      try {
        size_t used = 0;
        auto v = parse(value, &used);
        if (used == value.size()) return v;
      } catch (const std::exception&) {
      }
      KILN_CHECK(false, "kiln generate: ", key, "=", value, " is not a number");
      return decltype(parse(value, nullptr)){};
    };
    auto to_int = [](const std::string& s, size_t* used) { return std::stoll(s, used); };
    auto to_double = [](const std::string& s, size_t* used) { return std::stod(s, used); };
    if (key == "checkpoint") r.checkpoint = value;
    else if (key == "prompt") r.prompt = value;
    else if (key == "max_tokens") r.max_tokens = number(to_int);
    else if (key == "top_k") r.top_k = number(to_int);
    else if (key == "temperature") r.temperature = number(to_double);
    else if (key == "seed") r.seed = static_cast<uint64_t>(number(to_int));
    else r.overrides.push_back(a);
  }
  KILN_CHECK(r.max_tokens >= 0, "kiln generate: max_tokens must be >= 0, got ", r.max_tokens);
  KILN_CHECK(r.temperature >= 0, "kiln generate: temperature must be >= 0 (0: greedy), got ", r.temperature);
  return r;
}

BpeTokenizer load_tokenizer(const std::string& spec) {
  KILN_CHECK(!spec.empty(), "kiln generate: set data.tokenizer (byte, a kiln tokenizer file, or a directory with "
             "GPT-2's encoder.json and vocab.bpe)");
  if (spec == "byte") return BpeTokenizer();
  if (fs::is_directory(spec)) {
    const fs::path dir = spec;
    KILN_CHECK(fs::exists(dir / "encoder.json") && fs::exists(dir / "vocab.bpe"), "data.tokenizer: directory ", spec,
               " has no encoder.json and vocab.bpe (GPT-2's tokenizer files)");
    return BpeTokenizer::load_gpt2((dir / "encoder.json").string(), (dir / "vocab.bpe").string());
  }
  KILN_CHECK(fs::exists(spec), "data.tokenizer: ", spec, " does not exist");
  return BpeTokenizer::load(spec);
}

int run_generate(const GenerateArgs& args) {
  const Request req = parse_request(args.assignments);
  Config cfg = Config::load(args.config_file);
  for (const std::string& o : req.overrides) cfg.set_override(o);

  // The model, its weights and the tokenizer.
  const models::ModelSpec spec = model_spec_from(cfg, {1, 1, 1});
  auto model = std::dynamic_pointer_cast<models::GPT>(models::make_model(spec));
  KILN_CHECK(model, "kiln generate samples from a language model: model.name is ", spec.name, ", not gpt");
  if (!req.checkpoint.empty()) {
    const fs::path path = resolve_checkpoint(req.checkpoint);
    model->load_state_dict(io::load_checkpoint(path).model);
    std::fprintf(stderr, "weights: %s\n", path.string().c_str());
  } else {
    const std::string init_from = cfg.get_string("model.init_from");
    KILN_CHECK(!init_from.empty(), "kiln generate: pass checkpoint=PATH (a checkpoint or a run directory), or set "
               "model.init_from to Hugging Face GPT-2 weights");
    io::load_hf_gpt2(init_from, *model);
    std::fprintf(stderr, "weights: %s\n", init_from.c_str());
  }
  const Device device = resolve_device(cfg.get_string("device"));
  model->to(device);
  const BpeTokenizer tok = load_tokenizer(cfg.get_string("data.tokenizer"));
  const int64_t vocab = model->config().vocab_size;
  KILN_CHECK(tok.vocab_size() <= vocab, "data.tokenizer has ", tok.vocab_size(), " tokens, more than the model's ",
             vocab, " (model.vocab_size)");

  // The prompt: its tokens, or <|endoftext|> (a newline for tokenizers without it) when empty.
  std::vector<int64_t> prompt;
  for (int32_t id : tok.encode(req.prompt, /*allow_special=*/true)) prompt.push_back(id);
  if (prompt.empty()) prompt.push_back(tok.end_of_text() >= 0 ? tok.end_of_text() : tok.encode("\n").at(0));
  KILN_CHECK(static_cast<int64_t>(prompt.size()) <= model->config().block_size, "the prompt is ", prompt.size(),
             " tokens, longer than model.block_size (", model->config().block_size, ")");

  std::fwrite(req.prompt.data(), 1, req.prompt.size(), stdout);
  std::fflush(stdout);
  Generator gen(req.seed);
  int64_t produced = 0;
  const auto start = std::chrono::steady_clock::now();
  models::generate(*model, prompt, req.max_tokens, req.temperature, req.top_k, &gen, [&](int64_t id) {
    ++produced;
    if (id == tok.end_of_text()) return false;
    if (id >= tok.vocab_size()) return true;  // a token the tokenizer lacks (model.vocab_size is larger)
    const int32_t one = static_cast<int32_t>(id);
    const std::string text = tok.decode(std::span<const int32_t>(&one, 1));
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    return true;
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("\n");
  std::fprintf(stderr, "%lld tokens in %.2f s (%.1f tokens/s) on %s\n", static_cast<long long>(produced), seconds,
               produced / std::max(seconds, 1e-9), device.str().c_str());
  return 0;
}

}  // namespace

void add_generate_command(CLI::App& app, int& exit_code) {
  auto args = std::make_shared<GenerateArgs>();
  auto* gen = app.add_subcommand("generate", "sample text from a trained GPT (streams it as it is generated)");
  gen->add_option("config", args->config_file, "YAML config of the run (model.*, data.tokenizer)")->required();
  gen->add_option("assignments", args->assignments,
                  "checkpoint=PATH prompt=TEXT max_tokens=200 temperature=0.8 top_k=40 seed=1337, and key=value "
                  "config overrides");
  gen->callback([args, &exit_code] { exit_code = run_generate(*args); });
}

}  // namespace kiln::cli
