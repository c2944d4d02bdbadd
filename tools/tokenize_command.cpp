// `kiln tokenizer train|encode|decode` and `kiln tokenize`: a BPE tokenizer from a text file,
// and a text file cut into llm.c-format token shards (docs/gpt.md, "Prepare the corpus").
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <memory>
#include <regex>
#include <sstream>

#include "core/error.h"
#include "data/bpe_tokenizer.h"
#include "data/token_shards.h"
#include "tools/commands.h"

namespace kiln::cli {

namespace {

namespace fs = std::filesystem;

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  KILN_CHECK(f, "cannot open input ", path, ": ", std::strerror(errno));
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Where the validation split starts: the first line start at or after the last `fraction` of
// the text, or failing that the last line start before it.
std::size_t val_split(const std::string& text, double fraction, const std::string& path) {
  if (fraction == 0) return text.size();
  auto at = static_cast<std::size_t>(static_cast<double>(text.size()) * (1 - fraction));
  if (at == 0 || text[at - 1] == '\n') return at;
  std::size_t nl = text.find('\n', at);
  if (nl == std::string::npos || nl + 1 == text.size()) nl = text.rfind('\n', at);
  KILN_CHECK(nl != std::string::npos && nl + 1 < text.size(), path, ": cannot split off the last ", fraction,
             " of the text at a line boundary (too few lines)");
  return nl + 1;
}

// DIR/<split>_000000.bin, ...: `shard_tokens` tokens a shard. Returns the files written.
std::vector<std::string> write_shards(const fs::path& dir, const std::string& split, const std::vector<int32_t>& tokens,
                                      int64_t shard_tokens) {
  std::vector<std::string> files;
  const auto n = static_cast<int64_t>(tokens.size());
  for (int64_t start = 0, k = 0; start < n; start += shard_tokens, ++k) {
    char name[64];
    std::snprintf(name, sizeof name, "%s_%06lld.bin", split.c_str(), static_cast<long long>(k));
    const int64_t count = std::min(shard_tokens, n - start);
    write_token_shard((dir / name).string(), std::span<const int32_t>(tokens).subspan(
                                                 static_cast<std::size_t>(start), static_cast<std::size_t>(count)));
    files.push_back((dir / name).string());
    std::printf("  %s: %lld tokens\n", (dir / name).c_str(), static_cast<long long>(count));
  }
  return files;
}

struct TrainArgs {
  std::string input, output;
  int64_t vocab_size = 4096;
  bool end_of_text = false;
};

struct Gpt2Args {
  std::string encoder_json, vocab_bpe, output;
};

struct CodeArgs {
  std::string tokenizer, input, text;
  std::vector<int32_t> ids;
};

struct TokenizeArgs {
  std::string tokenizer, input, output_dir;
  double val_fraction = 0.05;
  int64_t shard_tokens = 100'000'000;
  bool end_of_text = false;
};

void add_tokenizer_commands(CLI::App& app) {
  auto* tokenizer = app.add_subcommand("tokenizer", "train a byte-level BPE tokenizer, encode or decode with one");
  tokenizer->require_subcommand(1);

  auto train = std::make_shared<TrainArgs>();
  auto* t = tokenizer->add_subcommand("train", "learn BPE merges on a text file (GPT-2's pre-tokenizer)");
  t->add_option("--input", train->input, "text file to learn from")->required();
  t->add_option("--vocab-size", train->vocab_size, "tokens in the vocabulary; 256 is the byte tokenizer")
      ->capture_default_str();
  t->add_option("--output", train->output, "tokenizer file to write (format in docs/gpt.md)")->required();
  t->add_flag("--eot", train->end_of_text, "add the special token <|endoftext|> as the last id");
  t->callback([train] {
    const std::string text = read_text(train->input);
    const auto start = std::chrono::steady_clock::now();
    const BpeTokenizer tok = BpeTokenizer::train(text, train->vocab_size, train->end_of_text);
    const double secs = seconds_since(start);
    tok.save(train->output);
    std::printf("%s: %lld tokens (%zu merges) learned on %s (%zu bytes) in %.2f s\n", train->output.c_str(),
                static_cast<long long>(tok.vocab_size()), tok.merges().size(), train->input.c_str(), text.size(), secs);
    if (tok.vocab_size() < train->vocab_size)
      std::printf("note: the text ran out of pairs to merge before --vocab-size %lld\n",
                  static_cast<long long>(train->vocab_size));
  });

  auto gpt2 = std::make_shared<Gpt2Args>();
  auto* g = tokenizer->add_subcommand("import-gpt2", "convert OpenAI's GPT-2 encoder.json + vocab.bpe to a kiln tokenizer");
  g->add_option("--encoder-json", gpt2->encoder_json, "GPT-2's encoder.json")->required();
  g->add_option("--vocab-bpe", gpt2->vocab_bpe, "GPT-2's vocab.bpe")->required();
  g->add_option("--output", gpt2->output, "tokenizer file to write")->required();
  g->callback([gpt2] {
    const BpeTokenizer tok = BpeTokenizer::load_gpt2(gpt2->encoder_json, gpt2->vocab_bpe);
    tok.save(gpt2->output);
    std::printf("%s: %lld tokens (%zu merges) with GPT-2's ids\n", gpt2->output.c_str(),
                static_cast<long long>(tok.vocab_size()), tok.merges().size());
  });

  auto enc = std::make_shared<CodeArgs>();
  auto* e = tokenizer->add_subcommand("encode", "print the token ids of a text");
  e->add_option("--tokenizer", enc->tokenizer, "tokenizer file")->required();
  auto* text_opt = e->add_option("--text", enc->text, "the text");
  e->add_option("--input", enc->input, "a file holding the text")->excludes(text_opt);
  e->callback([enc] {
    const BpeTokenizer tok = BpeTokenizer::load(enc->tokenizer);
    const std::string text = enc->input.empty() ? enc->text : read_text(enc->input);
    const std::vector<int32_t> ids = tok.encode(text);
    for (std::size_t i = 0; i < ids.size(); ++i) std::printf(i ? " %d" : "%d", ids[i]);
    std::printf("\n");
  });

  auto dec = std::make_shared<CodeArgs>();
  auto* d = tokenizer->add_subcommand("decode", "print the text of token ids");
  d->add_option("--tokenizer", dec->tokenizer, "tokenizer file")->required();
  d->add_option("ids", dec->ids, "token ids")->required();
  d->callback([dec] {
    const BpeTokenizer tok = BpeTokenizer::load(dec->tokenizer);
    const std::string text = tok.decode(dec->ids);
    std::fwrite(text.data(), 1, text.size(), stdout);
  });
}

void add_tokenize_command(CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  auto* c = app.add_subcommand("tokenize", "cut a text file into train/val token shards (llm.c format)");
  c->add_option("--tokenizer", args->tokenizer, "tokenizer file (kiln tokenizer train)")->required();
  c->add_option("--input", args->input, "text file")->required();
  c->add_option("--output-dir", args->output_dir, "directory for train_000000.bin ... and val_000000.bin ...")
      ->required();
  c->add_option("--val-fraction", args->val_fraction, "the last part of the text kept for validation, cut at a line")
      ->capture_default_str();
  c->add_option("--shard-tokens", args->shard_tokens, "tokens per shard")->capture_default_str();
  c->add_flag("--eot", args->end_of_text, "start the token stream with <|endoftext|> (the tokenizer must have it)");
  c->callback([args] {
    KILN_CHECK(args->val_fraction >= 0 && args->val_fraction < 1, "kiln tokenize: --val-fraction must be in [0, 1), got ",
               args->val_fraction);
    KILN_CHECK(args->shard_tokens > 0 && args->shard_tokens <= std::numeric_limits<int32_t>::max(),
               "kiln tokenize: --shard-tokens must be in [1, 2^31), got ", args->shard_tokens);
    const BpeTokenizer tok = BpeTokenizer::load(args->tokenizer);
    KILN_CHECK(!args->end_of_text || tok.end_of_text() >= 0, "kiln tokenize: --eot, but ", args->tokenizer,
               " has no <|endoftext|> token (train it with --eot)");
    const std::string text = read_text(args->input);
    const std::size_t split = val_split(text, args->val_fraction, args->input);

    const fs::path dir(args->output_dir);
    fs::create_directories(dir);
    // Shards of an earlier, longer run would otherwise be picked up by train_*.bin.
    const std::regex shard_name(R"((train|val)_\d{6}\.bin)");
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (entry.is_regular_file() && std::regex_match(entry.path().filename().string(), shard_name))
        fs::remove(entry.path());
    }

    const auto start = std::chrono::steady_clock::now();
    std::printf("%s: %zu bytes, tokenizer %s (%lld tokens)\n", args->input.c_str(), text.size(),
                args->tokenizer.c_str(), static_cast<long long>(tok.vocab_size()));
    for (const bool val : {false, true}) {
      const std::string_view part = val ? std::string_view(text).substr(split) : std::string_view(text).substr(0, split);
      if (part.empty()) continue;
      std::vector<int32_t> ids;
      if (args->end_of_text) ids.push_back(tok.end_of_text());
      const std::vector<int32_t> body = tok.encode(part);
      ids.insert(ids.end(), body.begin(), body.end());
      std::printf("%s: %zu bytes -> %zu tokens (%.2f bytes/token)\n", val ? "val" : "train", part.size(), ids.size(),
                  static_cast<double>(part.size()) / static_cast<double>(std::max<std::size_t>(1, ids.size())));
      write_shards(dir, val ? "val" : "train", ids, args->shard_tokens);
    }
    std::printf("tokenized in %.2f s\n", seconds_since(start));
  });
}

}  // namespace

void add_tokenize_commands(CLI::App& app, int& exit_code) {
  (void)exit_code;  // errors throw; success leaves it at 0
  add_tokenizer_commands(app);
  add_tokenize_command(app);
}

}  // namespace kiln::cli
