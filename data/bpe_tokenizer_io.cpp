// BpeTokenizer files: kiln's own format (bpe_tokenizer.h) and OpenAI's GPT-2 encoder.json +
// vocab.bpe.
#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/error.h"
#include "data/bpe_tokenizer.h"

namespace kiln {

namespace {

constexpr std::string_view kMagic = "kiln-bpe";
constexpr int kVersion = 1;

std::string read_file(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  KILN_CHECK(f, "cannot open ", what, " ", path, ": ", std::strerror(errno));
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// Splits `line` at single spaces.
std::vector<std::string> fields(const std::string& line) {
  std::vector<std::string> out;
  std::istringstream s(line);
  for (std::string f; s >> f;) out.push_back(f);
  return out;
}

int64_t parse_int(const std::string& s, const std::string& where) {
  std::size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  KILN_CHECK(used == s.size() && !s.empty(), where, ": expected an integer, got '", s, "'");
  return v;
}

// GPT-2's bytes_to_unicode(): the printable Latin-1 bytes stand for themselves, the other 68
// bytes for U+0100.., so every byte is a visible character in encoder.json and vocab.bpe.
std::vector<char32_t> gpt2_byte_chars() {
  std::vector<char32_t> chars(256);
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    chars[static_cast<std::size_t>(b)] = printable ? static_cast<char32_t>(b) : next++;
  }
  return chars;
}

// The bytes a GPT-2 token string stands for: decode its UTF-8, then each character to its byte.
std::string gpt2_token_bytes(const std::string& s, const std::unordered_map<char32_t, unsigned char>& byte_of,
                             const std::string& where) {
  std::string out;
  for (std::size_t i = 0; i < s.size();) {
    const auto b = static_cast<unsigned char>(s[i]);
    char32_t cp = 0;
    std::size_t len = 1;
    if (b < 0x80) cp = b;
    else if ((b & 0xE0) == 0xC0 && i + 1 < s.size()) cp = b & 0x1F, len = 2;
    else if ((b & 0xF0) == 0xE0 && i + 2 < s.size()) cp = b & 0x0F, len = 3;
    else KILN_FAIL(where, ": token '", s, "' is not UTF-8 in GPT-2's byte alphabet");
    for (std::size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    const auto it = byte_of.find(cp);
    KILN_CHECK(it != byte_of.end(), where, ": token '", s, "' has character U+", std::hex, static_cast<uint32_t>(cp),
               " outside GPT-2's byte alphabet");
    out.push_back(static_cast<char>(it->second));
    i += len;
  }
  return out;
}

}  // namespace

void BpeTokenizer::save(const std::string& path) const {
  std::ofstream f(path, std::ios::binary);
  KILN_CHECK(f, "cannot write tokenizer ", path, ": ", std::strerror(errno));
  f << kMagic << ' ' << kVersion << '\n';
  f << "vocab_size " << vocab_size() << '\n';
  if (end_of_text_ >= 0) f << "special " << kEndOfText << ' ' << end_of_text_ << '\n';
  else f << "special none\n";
  bool identity = true;
  for (int b = 0; b < 256; ++b) identity = identity && byte_ids_[static_cast<std::size_t>(b)] == b;
  f << "bytes";
  if (identity) {
    f << " identity";
  } else {
    for (const int32_t id : byte_ids_) f << ' ' << id;
  }
  f << '\n';
  f << "merges " << merges_.size() << '\n';
  for (const Merge& m : merges_) f << m.left << ' ' << m.right << ' ' << m.result << '\n';
  f.close();
  KILN_CHECK(f, "writing tokenizer ", path, " failed (disk full?)");
}

BpeTokenizer BpeTokenizer::load(const std::string& path) {
  std::istringstream in(read_file(path, "tokenizer"));
  int64_t line_no = 0;
  std::string line;
  auto where = [&] { return detail::str_cat(path, ":", line_no); };
  // The next line, split, with `key` as its first field and `count` fields in all (0: any).
  auto record = [&](const char* key, std::size_t count) {
    ++line_no;
    KILN_CHECK(std::getline(in, line), path, ": ends at line ", line_no - 1, ", expected a '", key, "' line");
    std::vector<std::string> f = fields(line);
    KILN_CHECK(!f.empty() && f[0] == key, where(), ": expected a '", key, "' line, got '", line, "'");
    KILN_CHECK(count == 0 || f.size() == count, where(), ": expected ", count, " fields in the '", key,
               "' line, got ", f.size());
    return f;
  };

  ++line_no;
  KILN_CHECK(std::getline(in, line), path, ": empty file, not a kiln tokenizer");
  std::vector<std::string> f = fields(line);
  KILN_CHECK(f.size() == 2 && f[0] == kMagic, where(), ": not a kiln tokenizer (the first line should be '", kMagic,
             " ", kVersion, "', got '", line.substr(0, 40), "')");
  KILN_CHECK(parse_int(f[1], where()) == kVersion, where(), ": tokenizer format version ", f[1],
             " is not supported (this kiln reads version ", kVersion, ")");

  f = record("vocab_size", 2);
  const int64_t n = parse_int(f[1], where());
  KILN_CHECK(n >= 256 && n <= std::numeric_limits<int32_t>::max(), where(), ": vocab_size ", n,
             " must be at least 256");
  auto check_id = [&](int64_t id) {
    KILN_CHECK(id >= 0 && id < n, where(), ": id ", id, " is outside the vocabulary [0, ", n, ")");
    return static_cast<int32_t>(id);
  };

  BpeTokenizer tok;
  tok.tokens_.assign(static_cast<std::size_t>(n), "");
  std::vector<bool> defined(static_cast<std::size_t>(n), false);
  auto define = [&](int32_t id, std::string bytes) {
    auto i = static_cast<std::size_t>(id);
    KILN_CHECK(!defined[i] || tok.tokens_[i] == bytes, where(), ": id ", id, " is defined twice, with different bytes");
    tok.tokens_[i] = std::move(bytes);
    defined[i] = true;
  };

  f = record("special", 0);
  if (f.size() == 2 && f[1] == "none") {
    tok.end_of_text_ = -1;
  } else {
    KILN_CHECK(f.size() == 3 && f[1] == kEndOfText, where(), ": expected 'special none' or 'special ", kEndOfText,
               " ID', got '", line, "'");
    tok.end_of_text_ = check_id(parse_int(f[2], where()));
  }

  f = record("bytes", 0);
  if (f.size() == 2 && f[1] == "identity") {
    for (int b = 0; b < 256; ++b) tok.byte_ids_[static_cast<std::size_t>(b)] = b;
  } else {
    KILN_CHECK(f.size() == 257, where(), ": expected 'bytes identity' or 256 ids, got ", f.size() - 1, " fields");
    for (int b = 0; b < 256; ++b) tok.byte_ids_[static_cast<std::size_t>(b)] = check_id(parse_int(f[1 + b], where()));
  }
  for (int b = 0; b < 256; ++b) {
    const int32_t id = tok.byte_ids_[static_cast<std::size_t>(b)];
    KILN_CHECK(!defined[static_cast<std::size_t>(id)], where(), ": id ", id, " is given to two bytes");
    define(id, std::string(1, static_cast<char>(b)));
  }

  f = record("merges", 2);
  const int64_t m = parse_int(f[1], where());
  KILN_CHECK(m >= 0, where(), ": negative merge count ", m);
  tok.merges_.reserve(static_cast<std::size_t>(m));
  for (int64_t r = 0; r < m; ++r) {
    ++line_no;
    KILN_CHECK(std::getline(in, line), path, ": ends at line ", line_no - 1, " after ", r, " of ", m, " merges");
    f = fields(line);
    KILN_CHECK(f.size() == 3, where(), ": expected 'LEFT RIGHT RESULT' ids, got '", line, "'");
    const Merge merge{check_id(parse_int(f[0], where())), check_id(parse_int(f[1], where())),
                      check_id(parse_int(f[2], where()))};
    KILN_CHECK(defined[static_cast<std::size_t>(merge.left)] && defined[static_cast<std::size_t>(merge.right)],
               where(), ": merge ", merge.left, " + ", merge.right, " uses a token no earlier line defines");
    KILN_CHECK(merge.result != tok.end_of_text_, where(), ": merge result ", merge.result, " is the special token");
    define(merge.result, tok.tokens_[static_cast<std::size_t>(merge.left)] +
                             tok.tokens_[static_cast<std::size_t>(merge.right)]);
    tok.merges_.push_back(merge);
  }
  while (std::getline(in, line)) {
    ++line_no;
    KILN_CHECK(fields(line).empty(), where(), ": unexpected line after the ", m, " merges: '", line.substr(0, 40), "'");
  }
  if (tok.end_of_text_ >= 0) {
    KILN_CHECK(!defined[static_cast<std::size_t>(tok.end_of_text_)], path, ": the special token's id ",
               tok.end_of_text_, " is also a byte or merge token");
    define(tok.end_of_text_, std::string(kEndOfText));
  }
  for (int64_t id = 0; id < n; ++id)
    KILN_CHECK(defined[static_cast<std::size_t>(id)], path, ": id ", id, " of vocab_size ", n,
               " is neither a byte, a merge result nor the special token");
  tok.index_merges();
  return tok;
}

BpeTokenizer BpeTokenizer::load_gpt2(const std::string& encoder_json, const std::string& vocab_bpe) {
  nlohmann::json encoder;
  try {
    encoder = nlohmann::json::parse(read_file(encoder_json, "GPT-2 encoder"));
  } catch (const nlohmann::json::exception& e) {
    KILN_FAIL(encoder_json, ": not valid JSON: ", e.what());
  }
  KILN_CHECK(encoder.is_object() && !encoder.empty(), encoder_json,
             ": expected a JSON object of token -> id (GPT-2's encoder.json)");

  const std::vector<char32_t> chars = gpt2_byte_chars();
  std::unordered_map<char32_t, unsigned char> byte_of;
  for (int b = 0; b < 256; ++b) byte_of[chars[static_cast<std::size_t>(b)]] = static_cast<unsigned char>(b);

  const auto n = static_cast<int64_t>(encoder.size());
  BpeTokenizer tok;
  tok.tokens_.assign(static_cast<std::size_t>(n), "");
  std::vector<bool> defined(static_cast<std::size_t>(n), false);
  std::unordered_map<std::string, int32_t> id_of;  // GPT-2 token string -> id
  for (const auto& [key, value] : encoder.items()) {
    KILN_CHECK(value.is_number_integer(), encoder_json, ": the id of token '", key, "' is not an integer");
    const auto id = value.get<int64_t>();
    KILN_CHECK(id >= 0 && id < n, encoder_json, ": token '", key, "' has id ", id, ", outside [0, ", n,
               ") for ", n, " tokens");
    KILN_CHECK(!defined[static_cast<std::size_t>(id)], encoder_json, ": id ", id, " is given to two tokens");
    defined[static_cast<std::size_t>(id)] = true;
    id_of[key] = static_cast<int32_t>(id);
    if (key == kEndOfText) {
      tok.end_of_text_ = static_cast<int32_t>(id);
      tok.tokens_[static_cast<std::size_t>(id)] = key;
    } else {
      tok.tokens_[static_cast<std::size_t>(id)] = gpt2_token_bytes(key, byte_of, encoder_json);
    }
  }
  auto utf8 = [](char32_t cp) {
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {  // GPT-2's byte characters are all below U+0800
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return s;
  };
  for (int b = 0; b < 256; ++b) {
    const std::string ch = utf8(chars[static_cast<std::size_t>(b)]);
    const auto it = id_of.find(ch);
    KILN_CHECK(it != id_of.end(), encoder_json, ": no token for byte ", b, " ('", ch, "')");
    tok.byte_ids_[static_cast<std::size_t>(b)] = it->second;
  }

  std::istringstream in(read_file(vocab_bpe, "GPT-2 merges"));
  std::string line;
  for (int64_t line_no = 1; std::getline(in, line); ++line_no) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
    const std::size_t space = line.find(' ');
    KILN_CHECK(space != std::string::npos && space > 0 && space + 1 < line.size() &&
                   line.find(' ', space + 1) == std::string::npos,
               vocab_bpe, ":", line_no, ": expected two tokens separated by one space, got '", line, "'");
    const std::string left = line.substr(0, space), right = line.substr(space + 1);
    auto id = [&](const std::string& t) {
      const auto it = id_of.find(t);
      KILN_CHECK(it != id_of.end(), vocab_bpe, ":", line_no, ": token '", t, "' is not in ", encoder_json);
      return it->second;
    };
    tok.merges_.push_back({id(left), id(right), id(left + right)});
  }
  tok.index_merges();
  return tok;
}

}  // namespace kiln
