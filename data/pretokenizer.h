// GPT-2's pre-tokenizer: the split of text into the pieces BPE merges never cross, hand-written
// over UTF-8 after the regex GPT-2 uses (OpenAI's encoder.py, tiktoken's "gpt2"):
//
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//
// So "Hello world's  end\n" splits as "Hello", " world", "'s", " ", " end", "\n": a word keeps
// its leading space, a run of spaces gives all but its last space to itself.
//
// Character classes (\s, \p{L}, \p{N}): exact for ASCII. For other code points kiln uses a
// small built-in table instead of the Unicode database: the Unicode White_Space characters are
// \s; common digit and number-form ranges (superscripts, fractions, Arabic-Indic, Devanagari
// and full-width digits, circled and Roman numerals) are \p{N}; Latin-1 punctuation and
// symbols, combining diacritics (U+0300-036F), general punctuation, arrows, maths, box drawing,
// dingbats (U+2000-2BFF), CJK and full-width punctuation and emoji are neither; every other
// code point counts as a letter. Bytes that are not valid UTF-8 count as letters too (they are
// most often Latin-1 text). English and most Latin, Cyrillic, Greek and CJK text splits as
// GPT-2 splits it; rarer scripts' own punctuation and digits may not.
//
// The pieces always partition the input: concatenated, they give back the exact bytes.
#pragma once

#include <cstddef>
#include <functional>
#include <string_view>
#include <vector>

namespace kiln {

enum class CharClass { Letter, Number, Space, Other };

// The class of code point `cp` (see above).
CharClass char_class(char32_t cp);

// Calls `piece` with each piece of `text`, in order.
void pretokenize(std::string_view text, const std::function<void(std::string_view)>& piece);
std::vector<std::string_view> pretokenize(std::string_view text);

}  // namespace kiln
