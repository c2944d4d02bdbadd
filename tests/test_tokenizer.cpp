// The byte-level BPE tokenizer: GPT-2's pre-tokenizer (hand-picked cases, and Python's `re`
// with GPT-2's pattern restricted to ASCII as an oracle on random ASCII text), exact round trips
// on random bytes and on UTF-8, merges learned equal a brute-force trainer written here, encode
// equal a port of GPT-2's bpe(), save/load, GPT-2 encoder.json + vocab.bpe (ids as OpenAI's),
// the special token, every load error, and `kiln tokenizer train` + `kiln tokenize` end to end.
// (tiktoken and transformers are not installed here, so GPT-2's ids are checked on hand-written
// files whose byte order is OpenAI's.)
#include <gtest/gtest.h>
#include <unistd.h>

#include <climits>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "data/bpe_tokenizer.h"
#include "data/pretokenizer.h"
#include "data/token_shards.h"
#include "tests/expect_error.h"
#include "tests/kiln_cli.h"
#include "tests/python_oracle.h"
#include "tests/temp_files.h"

namespace kiln {
namespace {

using testing::expect_error;
using testing::read_file;
using testing::TempDir;
using testing::write_file;
namespace fs = std::filesystem;
using Merge = BpeTokenizer::Merge;

std::vector<std::string> pieces(std::string_view text) {
  std::vector<std::string> out;
  for (std::string_view p : pretokenize(text)) out.emplace_back(p);
  return out;
}

using Pieces = std::vector<std::string>;

// A small corpus with repeated words, contractions, numbers, punctuation and line structure.
const char* kSmallText =
    "In the beginning God created the heaven and the earth.\n"
    "And the earth was without form, and void; and darkness was upon the face of the deep.\n"
    "And God said, Let there be light: and there was light. It's 1611, they'll say; we've seen it.\n"
    "  And the evening and the morning were the first day.\n\n"
    "And God said, Let the waters under the heaven be gathered together unto one place.\n";

// ---- pre-tokenizer

TEST(Pretokenizer, SplitsAsGpt2) {
  EXPECT_EQ(pieces("Hello world's  end\n"), (Pieces{"Hello", " world", "'s", " ", " end", "\n"}));
  EXPECT_EQ(pieces("I'm here, they'll go; we've 've 're 'd 't"),
            (Pieces{"I", "'m", " here", ",", " they", "'ll", " go", ";", " we", "'ve", " '", "ve", " '", "re", " '",
                    "d", " '", "t"}));
  EXPECT_EQ(pieces("abc123 4.5 !?x"), (Pieces{"abc", "123", " 4", ".", "5", " !?", "x"}));
  EXPECT_EQ(pieces("a\n\nb"), (Pieces{"a", "\n", "\n", "b"}));      // \s+(?!\S) leaves the last \n
  EXPECT_EQ(pieces("a \t b"), (Pieces{"a", " \t", " b"}));
  EXPECT_EQ(pieces("a\tb"), (Pieces{"a", "\t", "b"}));              // a lone tab before a letter: \s+
  EXPECT_EQ(pieces("end   "), (Pieces{"end", "   "}));              // trailing whitespace stays together
  EXPECT_EQ(pieces(" "), (Pieces{" "}));
  EXPECT_EQ(pieces("'s'S"), (Pieces{"'s", "'", "S"}));              // contractions are lower case only
  EXPECT_TRUE(pieces("").empty());
}

TEST(Pretokenizer, NonAsciiClasses) {
  EXPECT_EQ(char_class(U'é'), CharClass::Letter);
  EXPECT_EQ(char_class(U'Ж'), CharClass::Letter);
  EXPECT_EQ(char_class(U'中'), CharClass::Letter);
  EXPECT_EQ(char_class(U'½'), CharClass::Number);
  EXPECT_EQ(char_class(U'²'), CharClass::Number);
  EXPECT_EQ(char_class(U'٣'), CharClass::Number);
  EXPECT_EQ(char_class(U'—'), CharClass::Other);
  EXPECT_EQ(char_class(U'“'), CharClass::Other);
  EXPECT_EQ(char_class(U'€'), CharClass::Other);
  EXPECT_EQ(char_class(U'😀'), CharClass::Other);
  EXPECT_EQ(char_class(U'\u00A0'), CharClass::Space);
  EXPECT_EQ(char_class(U'\u3000'), CharClass::Space);
  EXPECT_EQ(pieces("café naïve Жук—“中文” ½"), (Pieces{"café", " naïve", " Жук", "—“", "中文", "”", " ½"}));
  // Invalid UTF-8 bytes count as letters; a truncated sequence does not swallow what follows.
  EXPECT_EQ(pieces("caf\xE9 \xE2\x82!"), (Pieces{"caf\xE9", " \xE2\x82", "!"}));
}

TEST(Pretokenizer, PiecesPartitionAnyBytes) {
  std::mt19937 rng(1);
  for (int trial = 0; trial < 200; ++trial) {
    std::string s(rng() % 64, '\0');
    for (char& c : s) c = static_cast<char>(rng() % 4 == 0 ? "  \n'a1.\xC3\xA9"[rng() % 10] : rng() % 256);
    std::string joined;
    for (std::string_view p : pretokenize(s)) {
      EXPECT_FALSE(p.empty());
      joined += p;
    }
    EXPECT_EQ(joined, s);
  }
}

// Python's `re` has no \p{L}; on ASCII text [A-Za-z] and [0-9] with re.ASCII are exactly
// \p{L} and \p{N}, so GPT-2's pattern becomes a regex `re` runs.
TEST(Pretokenizer, MatchesGpt2RegexOnAsciiText) {
  const std::string why = testing::python_unavailable(testing::kSystemPython, "re");
  if (!why.empty()) GTEST_SKIP() << why;
  TempDir dir;
  std::mt19937 rng(7);
  const std::string alphabet = "aAzZ09 \t\n\r\v\f'.,;!?-sStTdmlrev";
  std::vector<std::string> texts = {kSmallText};
  for (int i = 0; i < 300; ++i) {
    std::string s(rng() % 40, ' ');
    for (char& c : s) c = alphabet[rng() % alphabet.size()];
    texts.push_back(s);
  }
  // One text per line, escaped as hex; the script prints the pieces of each as hex, '|'-separated.
  std::ostringstream in;
  for (const std::string& t : texts) {
    for (unsigned char c : t) in << std::hex << (c >> 4) << (c & 15);
    in << "\n";
  }
  write_file(dir.file("in.txt"), in.str());
  write_file(dir.file("split.py"),
             "import re, sys\n"
             "pat = re.compile(r\"\"\"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\\sA-Za-z0-9]+|\\s+(?!\\S)|\\s+\"\"\", re.ASCII)\n"
             "for line in open(sys.argv[1]):\n"
             "    t = bytes.fromhex(line.strip()).decode('ascii')\n"
             "    print('|'.join(p.encode('ascii').hex() for p in pat.findall(t)))\n");
  const auto r = testing::run_command(testing::kSystemPython + " " + dir.file("split.py") + " " + dir.file("in.txt"));
  ASSERT_TRUE(r.ok) << r.failure;
  std::istringstream out(r.output);
  for (const std::string& t : texts) {
    std::string line;
    ASSERT_TRUE(std::getline(out, line));
    std::string ours;
    for (std::string_view p : pretokenize(t)) {
      if (!ours.empty()) ours += '|';
      for (unsigned char c : p) {
        const char* hex = "0123456789abcdef";
        ours += hex[c >> 4];
        ours += hex[c & 15];
      }
    }
    EXPECT_EQ(ours, line) << "text: \"" << t << "\"";
  }
}

// ---- a brute-force trainer and GPT-2's bpe(), written out plainly

struct Reference {
  std::vector<Merge> merges;
  std::vector<std::string> tokens;
};

// Recounts every pair of every piece at every step.
Reference reference_train(std::string_view text, int64_t target) {
  std::map<std::string, int64_t> counts;
  for (std::string_view p : pretokenize(text)) ++counts[std::string(p)];
  std::vector<std::pair<std::vector<int32_t>, int64_t>> words;
  for (const auto& [w, c] : counts) {
    std::vector<int32_t> sy;
    for (unsigned char ch : w) sy.push_back(ch);
    words.emplace_back(sy, c);
  }
  Reference ref;
  for (int b = 0; b < 256; ++b) ref.tokens.emplace_back(1, static_cast<char>(b));
  while (static_cast<int64_t>(ref.tokens.size()) < target) {
    std::map<std::pair<int32_t, int32_t>, int64_t> pair_count;
    for (const auto& [sy, c] : words)
      for (std::size_t i = 0; i + 1 < sy.size(); ++i) pair_count[{sy[i], sy[i + 1]}] += c;
    if (pair_count.empty()) break;
    auto best = pair_count.begin();
    for (auto it = pair_count.begin(); it != pair_count.end(); ++it)
      if (it->second > best->second) best = it;  // strictly more: ties keep the smallest pair
    const auto [a, b] = best->first;
    const std::string bytes = ref.tokens[a] + ref.tokens[b];
    int32_t result = static_cast<int32_t>(std::find(ref.tokens.begin(), ref.tokens.end(), bytes) - ref.tokens.begin());
    if (result == static_cast<int32_t>(ref.tokens.size())) ref.tokens.push_back(bytes);
    ref.merges.push_back({a, b, result});
    for (auto& [sy, c] : words) {
      std::vector<int32_t> out;
      for (std::size_t i = 0; i < sy.size();) {
        if (i + 1 < sy.size() && sy[i] == a && sy[i + 1] == b) {
          out.push_back(result);
          i += 2;
        } else {
          out.push_back(sy[i++]);
        }
      }
      sy = out;
    }
  }
  return ref;
}

// OpenAI's encoder.py bpe(), over ids: while some pair has a rank, take the lowest-ranked pair
// and merge its occurrences scanning with word.index(first, i).
std::vector<int32_t> gpt2_bpe(const BpeTokenizer& tok, std::string_view piece) {
  std::map<std::pair<int32_t, int32_t>, std::pair<int, int32_t>> ranks;  // pair -> (rank, result)
  for (int r = 0; r < static_cast<int>(tok.merges().size()); ++r) {
    const Merge& m = tok.merges()[static_cast<std::size_t>(r)];
    ranks.emplace(std::make_pair(m.left, m.right), std::make_pair(r, m.result));
  }
  std::vector<int32_t> word;
  for (unsigned char c : piece) word.push_back(tok.byte_token(c));
  for (;;) {
    std::pair<int32_t, int32_t> bigram{-1, -1};
    int best = INT_MAX;
    for (std::size_t i = 0; i + 1 < word.size(); ++i) {
      auto it = ranks.find({word[i], word[i + 1]});
      if (it != ranks.end() && it->second.first < best) {
        best = it->second.first;
        bigram = it->first;
      }
    }
    if (best == INT_MAX) break;
    const int32_t result = ranks[bigram].second;
    std::vector<int32_t> new_word;
    std::size_t i = 0;
    while (i < word.size()) {
      auto j = std::find(word.begin() + static_cast<std::ptrdiff_t>(i), word.end(), bigram.first);
      if (j == word.end()) {
        new_word.insert(new_word.end(), word.begin() + static_cast<std::ptrdiff_t>(i), word.end());
        break;
      }
      new_word.insert(new_word.end(), word.begin() + static_cast<std::ptrdiff_t>(i), j);
      i = static_cast<std::size_t>(j - word.begin());
      if (i + 1 < word.size() && word[i + 1] == bigram.second) {
        new_word.push_back(result);
        i += 2;
      } else {
        new_word.push_back(word[i]);
        i += 1;
      }
    }
    word = new_word;
  }
  return word;
}

// ---- training, encoding, round trips

TEST(BpeTokenizer, ByteTokenizerIsTheBytes) {
  const BpeTokenizer tok;
  EXPECT_EQ(tok.vocab_size(), 256);
  EXPECT_EQ(tok.end_of_text(), -1);
  const std::string s("Ab \xFF\x00z", 6);
  const std::vector<int32_t> ids = tok.encode(s);
  EXPECT_EQ(ids, (std::vector<int32_t>{'A', 'b', ' ', 0xFF, 0, 'z'}));
  EXPECT_EQ(BpeTokenizer::train(kSmallText, 256), tok);  // vocab 256: no merges
}

TEST(BpeTokenizer, MergesMatchBruteForceTrainer) {
  // Text with many ties: the tie rule (most frequent, then smallest ids) decides the order.
  std::mt19937 rng(3);
  std::string random_words;
  for (int i = 0; i < 400; ++i) {
    random_words += (rng() % 5 == 0) ? "\n" : " ";
    for (int k = 1 + rng() % 6; k > 0; --k) random_words += "abcab"[rng() % 5];
  }
  for (const std::string& text : {std::string(kSmallText), random_words}) {
    for (const int64_t vocab : {257, 300, 400}) {
      const BpeTokenizer tok = BpeTokenizer::train(text, vocab);
      const Reference ref = reference_train(text, vocab);
      ASSERT_EQ(tok.merges(), ref.merges) << "vocab " << vocab;
      ASSERT_EQ(tok.vocab_size(), static_cast<int64_t>(ref.tokens.size()));
      for (int32_t id = 0; id < tok.vocab_size(); ++id) EXPECT_EQ(tok.token(id), ref.tokens[id]);
      // Encoding matches GPT-2's bpe() piece by piece, and round-trips.
      std::vector<int32_t> expected;
      for (std::string_view p : pretokenize(text)) {
        const auto ids = gpt2_bpe(tok, p);
        expected.insert(expected.end(), ids.begin(), ids.end());
      }
      const std::vector<int32_t> ids = tok.encode(text);
      EXPECT_EQ(ids, expected);
      EXPECT_EQ(tok.decode(ids), text);
      if (vocab == 400) EXPECT_LT(ids.size(), text.size() / 2) << "merges should compress the training text";
    }
  }
  // A small text runs out of pairs: the vocabulary stops short, as the reference does.
  const BpeTokenizer tiny = BpeTokenizer::train("abab ab", 1000);
  EXPECT_EQ(tiny.merges(), reference_train("abab ab", 1000).merges);
  EXPECT_LT(tiny.vocab_size(), 1000);
}

TEST(BpeTokenizer, RoundTripsAnyBytesAndUtf8) {
  std::mt19937 rng(5);
  std::string corpus = kSmallText;
  corpus += "Zoë's café — “naïve” Жук ест 中文字符 😀👍 ½ ٣٤ \t\r\n";
  for (int i = 0; i < 2000; ++i) corpus += static_cast<char>(rng() % 256);
  const BpeTokenizer tok = BpeTokenizer::train(corpus, 600, /*end_of_text=*/true);
  for (int trial = 0; trial < 300; ++trial) {
    std::string s(rng() % 200, '\0');
    for (char& c : s) c = static_cast<char>(rng() % 256);
    const auto ids = tok.encode(s);
    for (int32_t id : ids) ASSERT_NE(id, tok.end_of_text());
    EXPECT_EQ(tok.decode(ids), s);
  }
  const std::string utf8 = "Zoë's café — “naïve” Жук ест 中文字符 😀👍 ½ And God said";
  EXPECT_EQ(tok.decode(tok.encode(utf8)), utf8);
  EXPECT_LT(tok.encode(utf8).size(), utf8.size());
}

TEST(BpeTokenizer, EndOfTextIsTheLastIdAndOnlyWhenAllowed) {
  const BpeTokenizer tok = BpeTokenizer::train(kSmallText, 300, true);
  EXPECT_EQ(tok.vocab_size(), 300);
  EXPECT_EQ(tok.end_of_text(), 299);
  const std::string text = "the earth<|endoftext|>the heaven";
  const auto plain = tok.encode(text);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 299), 0);
  const auto special = tok.encode(text, /*allow_special=*/true);
  EXPECT_EQ(std::count(special.begin(), special.end(), 299), 1);
  EXPECT_EQ(tok.decode(special), text);
  EXPECT_EQ(tok.decode(plain), text);
  expect_error([&] { tok.decode(std::vector<int32_t>{300}); }, {"token id 300", "[0, 300)"});
  expect_error([&] { BpeTokenizer::train("x", 256, true); }, {"vocab_size 256", "<|endoftext|>"});
}

TEST(BpeTokenizer, SaveLoadRoundTrip) {
  TempDir dir;
  for (const bool eot : {false, true}) {
    const BpeTokenizer tok = BpeTokenizer::train(kSmallText, 350, eot);
    tok.save(dir.file("t.tok"));
    const BpeTokenizer back = BpeTokenizer::load(dir.file("t.tok"));
    EXPECT_EQ(back, tok);
    EXPECT_EQ(back.encode(kSmallText), tok.encode(kSmallText));
    EXPECT_EQ(read_file(dir.file("t.tok")).substr(0, 11), "kiln-bpe 1\n");
  }
}

TEST(BpeTokenizer, LoadErrorsNameFileAndLine) {
  TempDir dir;
  const std::string head = "kiln-bpe 1\nvocab_size 258\nspecial none\nbytes identity\n";
  auto error_for = [&](const std::string& content, std::initializer_list<std::string> parts) {
    write_file(dir.file("bad.tok"), content);
    expect_error([&] { BpeTokenizer::load(dir.file("bad.tok")); }, parts);
  };
  expect_error([&] { BpeTokenizer::load(dir.file("missing.tok")); }, {"missing.tok", "cannot open"});
  error_for("", {"bad.tok", "empty file"});
  error_for("hello 1\n", {"bad.tok:1", "not a kiln tokenizer"});
  error_for("kiln-bpe 2\n", {"bad.tok:1", "version 2"});
  error_for("kiln-bpe 1\nvocab_size abc\n", {"bad.tok:2", "expected an integer", "abc"});
  error_for("kiln-bpe 1\nvocab_size 258\nspecial <|x|> 3\n", {"bad.tok:3", "special"});
  error_for(head + "merges 2\n97 98 256\n", {"bad.tok", "after 1 of 2 merges"});
  error_for(head + "merges 2\n97 98 256\n256 300 257\n", {"bad.tok:7", "id 300", "[0, 258)"});
  error_for(head + "merges 2\n97 98 256\n257 97 257\n", {"bad.tok:7", "no earlier line"});
  error_for(head + "merges 1\n97 98 256\n", {"bad.tok", "id 257", "neither"});
  error_for(head + "merges 2\n97 98 256\n97 98 257\nextra\n", {"bad.tok:8", "unexpected line"});
  error_for(head + "merges 2\n97 98 256\n98 97 256\n", {"bad.tok:7", "defined twice"});
}

// ---- GPT-2's files

// GPT-2's bytes_to_unicode(), written out as in OpenAI's encoder.py.
std::map<int, std::string> gpt2_byte_strings() {
  std::vector<int> bs;
  for (int b = '!'; b <= '~'; ++b) bs.push_back(b);
  for (int b = 0xA1; b <= 0xAC; ++b) bs.push_back(b);
  for (int b = 0xAE; b <= 0xFF; ++b) bs.push_back(b);
  std::vector<int> cs = bs;
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    if (std::find(bs.begin(), bs.end(), b) == bs.end()) {
      bs.push_back(b);
      cs.push_back(256 + n++);
    }
  }
  std::map<int, std::string> out;
  for (std::size_t i = 0; i < bs.size(); ++i) {
    const int c = cs[i];
    std::string u;
    if (c < 0x80) u += static_cast<char>(c);
    else u += {static_cast<char>(0xC0 | (c >> 6)), static_cast<char>(0x80 | (c & 0x3F))};
    out[bs[i]] = u;
  }
  return out;
}

// A GPT-2-style encoder.json: the 256 byte tokens in encoder.py's order (so their ids are
// GPT-2's), the given merged tokens, then <|endoftext|>.
void write_gpt2_files(const TempDir& dir, const std::vector<std::string>& merged, const std::string& merges_text) {
  const auto bytes = gpt2_byte_strings();
  std::vector<int> order;  // encoder.py's: printable bytes first, then the rest
  for (int b = '!'; b <= '~'; ++b) order.push_back(b);
  for (int b = 0xA1; b <= 0xAC; ++b) order.push_back(b);
  for (int b = 0xAE; b <= 0xFF; ++b) order.push_back(b);
  for (int b = 0; b < 256; ++b)
    if (std::find(order.begin(), order.end(), b) == order.end()) order.push_back(b);
  std::ostringstream json;
  json << "{";
  int id = 0;
  auto entry = [&](const std::string& s) {
    json << (id ? ", " : "") << "\"";
    for (char c : s) {
      if (c == '"' || c == '\\') json << '\\';
      json << c;
    }
    json << "\": " << id++;
  };
  for (int b : order) entry(bytes.at(b));
  for (const std::string& m : merged) entry(m);
  entry("<|endoftext|>");
  json << "}";
  write_file(dir.file("encoder.json"), json.str());
  write_file(dir.file("vocab.bpe"), "#version: 0.2\n" + merges_text);
}

TEST(Gpt2Files, LoadGivesOpenAIsIds) {
  TempDir dir;
  // "Ġ" is the space byte in GPT-2's alphabet.
  write_gpt2_files(dir, {"Ġt", "he", "Ġthe", "in", "Ġa"}, "Ġ t\nh e\nĠt he\ni n\nĠ a\n");
  const BpeTokenizer tok = BpeTokenizer::load_gpt2(dir.file("encoder.json"), dir.file("vocab.bpe"));
  EXPECT_EQ(tok.vocab_size(), 262);
  // Byte ids as in OpenAI's GPT-2 vocabulary: "!" 0, "a" 64, "\n" 198, " " 220.
  EXPECT_EQ(tok.byte_token('!'), 0);
  EXPECT_EQ(tok.byte_token('a'), 64);
  EXPECT_EQ(tok.byte_token('\n'), 198);
  EXPECT_EQ(tok.byte_token(' '), 220);
  EXPECT_EQ(tok.end_of_text(), 261);
  EXPECT_EQ(tok.token(258), " the");
  // " the" -> "Ġthe"; "the" -> t + "he"; " in" -> "Ġ" + "in" ("Ġ i" is no merge).
  EXPECT_EQ(tok.encode(" the"), (std::vector<int32_t>{258}));
  EXPECT_EQ(tok.encode("the"), (std::vector<int32_t>{'t' - 33, 257}));
  EXPECT_EQ(tok.encode(" in"), (std::vector<int32_t>{220, 259}));
  EXPECT_EQ(tok.encode(" a<|endoftext|>", true), (std::vector<int32_t>{260, 261}));
  const std::string s = "the thin\n\xC3\xA9\x01";
  EXPECT_EQ(tok.decode(tok.encode(s)), s);

  // Saved in kiln's format (the byte ids are not the identity) and loaded back: the same.
  tok.save(dir.file("gpt2.tok"));
  EXPECT_EQ(BpeTokenizer::load(dir.file("gpt2.tok")), tok);
}

TEST(Gpt2Files, ErrorsNameTheFile) {
  TempDir dir;
  write_gpt2_files(dir, {"he"}, "h e\nq z\n");
  expect_error([&] { BpeTokenizer::load_gpt2(dir.file("encoder.json"), dir.file("vocab.bpe")); },
               {"vocab.bpe:3", "'qz'", "not in"});
  write_gpt2_files(dir, {"he"}, "h e x\n");
  expect_error([&] { BpeTokenizer::load_gpt2(dir.file("encoder.json"), dir.file("vocab.bpe")); },
               {"vocab.bpe:2", "two tokens"});
  write_file(dir.file("bad.json"), "{\"a\": 0,");
  expect_error([&] { BpeTokenizer::load_gpt2(dir.file("bad.json"), dir.file("vocab.bpe")); },
               {"bad.json", "not valid JSON"});
  write_file(dir.file("small.json"), "{\"a\": 0}");
  expect_error([&] { BpeTokenizer::load_gpt2(dir.file("small.json"), dir.file("vocab.bpe")); },
               {"small.json", "no token for byte"});
}

// ---- the command line, end to end

using testing::CommandResult;
using testing::run_kiln_shell;

TEST(TokenizeCli, TrainTokenizeAndReadBack) {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 40; ++i) text += kSmallText;
  write_file(dir.file("corpus.txt"), text);
  CommandResult r = run_kiln_shell("tokenizer train --input " + dir.file("corpus.txt") + " --vocab-size 400 --output " +
                                   dir.file("bpe.tok"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const BpeTokenizer tok = BpeTokenizer::load(dir.file("bpe.tok"));
  EXPECT_EQ(tok, BpeTokenizer::train(text, 400));

  r = run_kiln_shell("tokenize --tokenizer " + dir.file("bpe.tok") + " --input " + dir.file("corpus.txt") +
                     " --output-dir " + dir.file("shards") + " --val-fraction 0.1 --shard-tokens 1000");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::vector<int32_t> train, val;
  int train_shards = 0;
  auto shard = [&](int k) { return dir.file("shards/train_00000" + std::to_string(k) + ".bin"); };
  for (int k = 0; k < 10 && fs::exists(shard(k)); ++k) {
    const TokenShard s(shard(k));
    EXPECT_LE(s.size(), 1000);
    const auto v = s.to_vector();
    train.insert(train.end(), v.begin(), v.end());
    ++train_shards;
  }
  EXPECT_GT(train_shards, 1);
  val = TokenShard(dir.file("shards/val_000000.bin")).to_vector();
  const std::string train_text = tok.decode(train), val_text = tok.decode(val);
  EXPECT_EQ(train_text + val_text, text);
  EXPECT_EQ(train_text.back(), '\n');  // split at a line boundary
  EXPECT_NEAR(static_cast<double>(val_text.size()) / static_cast<double>(text.size()), 0.1, 0.02);

  // Encode and decode from the command line agree with the library.
  r = run_kiln_shell("tokenizer encode --tokenizer " + dir.file("bpe.tok") + " --text 'the earth'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ostringstream expected;
  const auto ids = tok.encode("the earth");
  for (std::size_t i = 0; i < ids.size(); ++i) expected << (i ? " " : "") << ids[i];
  EXPECT_EQ(r.output, expected.str() + "\n");

  // GPT-2's files converted to a kiln tokenizer file: the same tokenizer.
  write_gpt2_files(dir, {"Ġt", "he", "Ġthe"}, "Ġ t\nh e\nĠt he\n");
  r = run_kiln_shell("tokenizer import-gpt2 --encoder-json " + dir.file("encoder.json") + " --vocab-bpe " +
                     dir.file("vocab.bpe") + " --output " + dir.file("gpt2.tok"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(BpeTokenizer::load(dir.file("gpt2.tok")),
            BpeTokenizer::load_gpt2(dir.file("encoder.json"), dir.file("vocab.bpe")));

  // Bad input: one clear message and exit status 1.
  r = run_kiln_shell("tokenize --tokenizer " + dir.file("nope.tok") + " --input " + dir.file("corpus.txt") +
                     " --output-dir " + dir.file("x"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("nope.tok"), std::string::npos) << r.output;
  r = run_kiln_shell("tokenizer train --input " + dir.file("corpus.txt") + " --vocab-size 100 --output " +
                     dir.file("small.tok"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("vocab_size 100"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace kiln
