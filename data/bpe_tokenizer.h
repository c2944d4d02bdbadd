// A byte-level BPE tokenizer, as GPT-2's: text is bytes, every byte is a base token, the
// GPT-2 pre-tokenizer (data/pretokenizer.h) splits it into pieces, and learned merges join
// adjacent tokens within a piece, lowest rank first. Any byte string round-trips exactly,
// invalid UTF-8 included: decode(encode(s)) == s.
//
//   BpeTokenizer tok = BpeTokenizer::train(text, 4096);   // 256 bytes + 3840 merges
//   std::vector<int32_t> ids = tok.encode("In the beginning");
//   tok.save("bpe4096.tok");
//   BpeTokenizer gpt2 = BpeTokenizer::load_gpt2("encoder.json", "vocab.bpe");  // OpenAI's ids
//
// A default-constructed tokenizer has 256 tokens and no merges: the byte ("char") tokenizer.
//
// Ids of a trained tokenizer: byte b is id b, merge i makes id 256 + i (or reuses the id of a
// token with the same bytes made by an earlier, different merge), and the optional special
// token <|endoftext|> is the last id. GPT-2's files give their own ids.
//
// File format (text, one record a line; `kiln tokenizer train` writes it):
//   kiln-bpe 1                     magic and version
//   vocab_size N                   ids are 0 .. N-1
//   special <|endoftext|> ID       or: special none
//   bytes identity                 byte b is id b; or: bytes ID0 ID1 ... ID255
//   merges M
//   LEFT RIGHT RESULT              M lines, in rank order: ids LEFT, RIGHT merge into RESULT
// Every id must be a byte token, a merge result or the special token. Errors name the file and
// the line.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kiln {

class BpeTokenizer {
 public:
  static constexpr std::string_view kEndOfText = "<|endoftext|>";

  struct Merge {
    int32_t left, right, result;
    friend bool operator==(const Merge&, const Merge&) = default;
  };

  BpeTokenizer();  // the byte tokenizer

  // Learns merges on `text` until the vocabulary has `vocab_size` tokens (the special token
  // included when `end_of_text`): each step merges the adjacent pair with the most occurrences
  // within pieces, ties going to the smallest (left, right) ids. Stops early when no pair is
  // left (a small text); vocab_size() says what was reached.
  static BpeTokenizer train(std::string_view text, int64_t vocab_size, bool end_of_text = false);

  static BpeTokenizer load(const std::string& path);
  void save(const std::string& path) const;

  // OpenAI's GPT-2 files: encoder.json (token string -> id, in GPT-2's byte-to-unicode
  // alphabet) and vocab.bpe (the merges, "#version" line first). The ids match GPT-2's.
  static BpeTokenizer load_gpt2(const std::string& encoder_json, const std::string& vocab_bpe);

  // Token ids of `text`. With allow_special (and a tokenizer that has the special token), each
  // "<|endoftext|>" in the text becomes that token; otherwise it is plain text (as tiktoken's
  // encode_ordinary).
  std::vector<int32_t> encode(std::string_view text, bool allow_special = false) const;
  // The bytes of `ids`; an id outside the vocabulary is an error.
  std::string decode(std::span<const int32_t> ids) const;

  int64_t vocab_size() const { return static_cast<int64_t>(tokens_.size()); }
  int32_t end_of_text() const { return end_of_text_; }  // -1 when there is none
  const std::string& token(int32_t id) const;            // the bytes of one token
  int32_t byte_token(unsigned char b) const { return byte_ids_[b]; }
  const std::vector<Merge>& merges() const { return merges_; }

  friend bool operator==(const BpeTokenizer& a, const BpeTokenizer& b) {
    return a.tokens_ == b.tokens_ && a.byte_ids_ == b.byte_ids_ && a.merges_ == b.merges_ &&
           a.end_of_text_ == b.end_of_text_;
  }

 private:
  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }
  // Builds the tables from tokens_, byte_ids_, merges_ and end_of_text_ (checked by the callers).
  void index_merges();
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;

  std::vector<std::string> tokens_;  // id -> bytes
  std::vector<int32_t> byte_ids_;    // byte -> id (256)
  std::vector<Merge> merges_;        // in rank order
  int32_t end_of_text_ = -1;
  struct Ranked {
    int32_t rank, result;
  };
  std::unordered_map<uint64_t, Ranked> merge_of_;  // pair_key(left, right) -> its merge
};

}  // namespace kiln
