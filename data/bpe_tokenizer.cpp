// BpeTokenizer: training, encoding and decoding. File formats are in bpe_tokenizer_io.cpp.
#include "data/bpe_tokenizer.h"

#include <algorithm>
#include <limits>
#include <queue>

#include "core/error.h"
#include "data/pretokenizer.h"

namespace kiln {

BpeTokenizer::BpeTokenizer() {
  tokens_.reserve(256);
  byte_ids_.resize(256);
  for (int b = 0; b < 256; ++b) {
    tokens_.emplace_back(1, static_cast<char>(b));
    byte_ids_[static_cast<std::size_t>(b)] = b;
  }
}

const std::string& BpeTokenizer::token(int32_t id) const {
  KILN_CHECK(id >= 0 && id < vocab_size(), "BpeTokenizer: token id ", id, " is outside the vocabulary [0, ",
             vocab_size(), ")");
  return tokens_[static_cast<std::size_t>(id)];
}

void BpeTokenizer::index_merges() {
  merge_of_.clear();
  merge_of_.reserve(merges_.size());
  for (std::size_t r = 0; r < merges_.size(); ++r) {
    const Merge& m = merges_[r];
    merge_of_.emplace(pair_key(m.left, m.right), Ranked{static_cast<int32_t>(r), m.result});  // first rank wins
  }
}

// ---- training

namespace {

// The pairs to merge next: most occurrences first, then the smallest pair key (left id, then
// right id). Entries go stale when a count changes; the loop skips those (lazy deletion).
struct PairEntry {
  int64_t count;
  uint64_t key;
  bool operator<(const PairEntry& o) const { return count < o.count || (count == o.count && key > o.key); }
};

}  // namespace

// Counts of adjacent pairs, summed over the distinct pieces weighted by how often each occurs,
// and for each pair the pieces that hold it. A merge then only revisits the pieces that hold
// the merged pair and updates the counts of the pairs those pieces lose and gain, instead of
// recounting the corpus: one merge costs about (pieces holding the pair) x (piece length).
BpeTokenizer BpeTokenizer::train(std::string_view text, int64_t vocab_size, bool end_of_text) {
  const int64_t target = vocab_size - (end_of_text ? 1 : 0);
  KILN_CHECK(target >= 256, "BpeTokenizer::train: vocab_size ", vocab_size, " is smaller than the 256 byte tokens",
             end_of_text ? " plus <|endoftext|>" : "");
  KILN_CHECK(vocab_size <= std::numeric_limits<int32_t>::max(), "BpeTokenizer::train: vocab_size ", vocab_size,
             " is too large");
  BpeTokenizer tok;

  std::unordered_map<std::string_view, int64_t> piece_counts;
  pretokenize(text, [&](std::string_view p) { ++piece_counts[p]; });
  // Sorted, so the pieces' numbering (and so the order of work) does not depend on hashing.
  std::vector<std::pair<std::string_view, int64_t>> pieces(piece_counts.begin(), piece_counts.end());
  piece_counts.clear();
  std::sort(pieces.begin(), pieces.end());

  std::vector<std::vector<int32_t>> words(pieces.size());
  std::vector<int64_t> counts(pieces.size());
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> where;  // may hold stale or repeated pieces
  for (std::size_t w = 0; w < pieces.size(); ++w) {
    const std::string_view p = pieces[w].first;
    counts[w] = pieces[w].second;
    words[w].reserve(p.size());
    for (const char c : p) words[w].push_back(static_cast<unsigned char>(c));
    for (std::size_t i = 0; i + 1 < p.size(); ++i) {
      const uint64_t k = pair_key(words[w][i], words[w][i + 1]);
      pair_count[k] += counts[w];
      where[k].push_back(static_cast<int32_t>(w));
    }
  }
  std::priority_queue<PairEntry> heap;
  for (const auto& [k, c] : pair_count) heap.push({c, k});

  std::unordered_map<std::string, int32_t> id_of_bytes;  // to reuse the id of a token made twice
  for (int32_t id = 0; id < 256; ++id) id_of_bytes.emplace(tok.tokens_[static_cast<std::size_t>(id)], id);

  std::unordered_map<uint64_t, int64_t> delta;
  std::vector<int32_t> merged;
  while (tok.vocab_size() < target && !heap.empty()) {
    const PairEntry top = heap.top();
    heap.pop();
    const auto found = pair_count.find(top.key);
    if (found == pair_count.end() || found->second != top.count) continue;  // stale
    const auto a = static_cast<int32_t>(top.key >> 32), b = static_cast<int32_t>(top.key & 0xFFFFFFFFu);

    std::string bytes = tok.tokens_[static_cast<std::size_t>(a)] + tok.tokens_[static_cast<std::size_t>(b)];
    auto [slot, is_new] = id_of_bytes.emplace(std::move(bytes), static_cast<int32_t>(tok.tokens_.size()));
    const int32_t result = slot->second;
    if (is_new) tok.tokens_.push_back(slot->first);
    tok.merges_.push_back({a, b, result});

    std::vector<int32_t> holders = std::move(where[top.key]);
    where.erase(top.key);
    std::sort(holders.begin(), holders.end());
    holders.erase(std::unique(holders.begin(), holders.end()), holders.end());
    delta.clear();
    for (const int32_t w : holders) {
      std::vector<int32_t>& sy = words[static_cast<std::size_t>(w)];
      const int64_t c = counts[static_cast<std::size_t>(w)];
      bool holds = false;
      for (std::size_t i = 0; i + 1 < sy.size() && !holds; ++i) holds = sy[i] == a && sy[i + 1] == b;
      if (!holds) continue;  // an earlier merge took the pair from this piece
      for (std::size_t i = 0; i + 1 < sy.size(); ++i) delta[pair_key(sy[i], sy[i + 1])] -= c;
      merged.clear();
      for (std::size_t i = 0; i < sy.size();) {
        if (i + 1 < sy.size() && sy[i] == a && sy[i + 1] == b) {
          merged.push_back(result);
          i += 2;
        } else {
          merged.push_back(sy[i++]);
        }
      }
      sy.assign(merged.begin(), merged.end());
      for (std::size_t i = 0; i + 1 < sy.size(); ++i) {
        const uint64_t k = pair_key(sy[i], sy[i + 1]);
        delta[k] += c;
        if (sy[i] == result || sy[i + 1] == result) where[k].push_back(w);  // other pairs were there before
      }
    }
    for (const auto& [k, d] : delta) {
      if (d == 0) continue;
      const int64_t now = (pair_count[k] += d);
      if (now > 0) {
        heap.push({now, k});
      } else {
        pair_count.erase(k);
      }
    }
  }

  if (end_of_text) {
    tok.end_of_text_ = static_cast<int32_t>(tok.tokens_.size());
    tok.tokens_.emplace_back(kEndOfText);
  }
  tok.index_merges();
  return tok;
}

// ---- encoding and decoding

// GPT-2's bpe(): repeatedly merge every occurrence (left to right) of the adjacent pair whose
// merge has the lowest rank, until no adjacent pair has a merge.
void BpeTokenizer::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  std::vector<int32_t> sy;
  sy.reserve(piece.size());
  for (const char c : piece) sy.push_back(byte_ids_[static_cast<unsigned char>(c)]);
  while (sy.size() >= 2) {
    int32_t best_rank = std::numeric_limits<int32_t>::max(), left = -1, right = -1, result = -1;
    for (std::size_t i = 0; i + 1 < sy.size(); ++i) {
      const auto it = merge_of_.find(pair_key(sy[i], sy[i + 1]));
      if (it != merge_of_.end() && it->second.rank < best_rank) {
        best_rank = it->second.rank;
        left = sy[i];
        right = sy[i + 1];
        result = it->second.result;
      }
    }
    if (result < 0) break;
    std::size_t o = 0;
    for (std::size_t i = 0; i < sy.size();) {
      if (i + 1 < sy.size() && sy[i] == left && sy[i + 1] == right) {
        sy[o++] = result;
        i += 2;
      } else {
        sy[o++] = sy[i++];
      }
    }
    sy.resize(o);
  }
  out.insert(out.end(), sy.begin(), sy.end());
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, bool allow_special) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  // Pieces repeat (" the", " and"): each distinct one is merged once per call.
  std::unordered_map<std::string_view, std::vector<int32_t>> cache;
  auto encode_plain = [&](std::string_view plain) {
    pretokenize(plain, [&](std::string_view piece) {
      if (piece.size() == 1) {
        ids.push_back(byte_ids_[static_cast<unsigned char>(piece[0])]);
        return;
      }
      auto [it, is_new] = cache.try_emplace(piece);
      if (is_new) encode_piece(piece, it->second);
      ids.insert(ids.end(), it->second.begin(), it->second.end());
    });
  };
  if (!allow_special || end_of_text_ < 0) {
    encode_plain(text);
    return ids;
  }
  std::size_t from = 0;
  for (std::size_t at; (at = text.find(kEndOfText, from)) != std::string_view::npos; from = at + kEndOfText.size()) {
    encode_plain(text.substr(from, at - from));
    ids.push_back(end_of_text_);
  }
  encode_plain(text.substr(from));
  return ids;
}

std::string BpeTokenizer::decode(std::span<const int32_t> ids) const {
  std::string text;
  for (const int32_t id : ids) text += token(id);
  return text;
}

}  // namespace kiln
