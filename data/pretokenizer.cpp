#include "data/pretokenizer.h"

#include <algorithm>
#include <iterator>

namespace kiln {

namespace {

struct ClassRange {
  char32_t lo, hi;
  CharClass cls;
};

// Non-ASCII code points that are not letters (see pretokenizer.h), sorted, not overlapping.
constexpr CharClass S = CharClass::Space, N = CharClass::Number, O = CharClass::Other, L = CharClass::Letter;
constexpr ClassRange kRanges[] = {
    {0x80, 0x84, O},       {0x85, 0x85, S},       {0x86, 0x9F, O},       {0xA0, 0xA0, S},
    {0xA1, 0xA9, O},       {0xAA, 0xAA, L},       {0xAB, 0xB1, O},       {0xB2, 0xB3, N},  // ª, ² ³
    {0xB4, 0xB4, O},       {0xB5, 0xB5, L},       {0xB6, 0xB8, O},       {0xB9, 0xB9, N},  // µ, ¹
    {0xBA, 0xBA, L},       {0xBB, 0xBB, O},       {0xBC, 0xBE, N},       {0xBF, 0xBF, O},  // º, ¼ ½ ¾
    {0xD7, 0xD7, O},       {0xF7, 0xF7, O},                                                // × ÷
    {0x300, 0x36F, O},                                                                     // combining marks
    {0x660, 0x669, N},     {0x6F0, 0x6F9, N},     {0x966, 0x96F, N},                       // Arabic, Devanagari digits
    {0x1680, 0x1680, S},   {0x2000, 0x200A, S},   {0x200B, 0x2027, O},   {0x2028, 0x2029, S},
    {0x202A, 0x202E, O},   {0x202F, 0x202F, S},   {0x2030, 0x205E, O},   {0x205F, 0x205F, S},
    {0x2060, 0x206F, O},   {0x2070, 0x2070, N},   {0x2071, 0x2073, O},   {0x2074, 0x2079, N},  // superscripts
    {0x207A, 0x207F, O},   {0x2080, 0x2089, N},   {0x208A, 0x214F, O},   {0x2150, 0x2189, N},  // fractions, Roman
    {0x218A, 0x245F, O},   {0x2460, 0x249B, N},   {0x249C, 0x24E9, O},   {0x24EA, 0x24FF, N},  // circled
    {0x2500, 0x2775, O},   {0x2776, 0x2793, N},   {0x2794, 0x2BFF, O},   {0x2E00, 0x2E7F, O},
    {0x3000, 0x3000, S},   {0x3001, 0x3006, O},   {0x3007, 0x3007, N},   {0x3008, 0x3020, O},  // CJK punctuation
    {0x3021, 0x3029, N},   {0x302A, 0x303F, O},   {0xFE00, 0xFE1F, O},   {0xFE30, 0xFE6F, O},
    {0xFF01, 0xFF0F, O},   {0xFF10, 0xFF19, N},   {0xFF1A, 0xFF20, O},   {0xFF3B, 0xFF40, O},  // full-width
    {0xFF5B, 0xFF65, O},   {0xFFF0, 0xFFFF, O},   {0x1F000, 0x1FAFF, O}, {0xE0000, 0xE007F, O},  // emoji, tags
};

// One character of the input: a UTF-8 sequence, or a single byte that is not valid UTF-8.
struct Unit {
  std::size_t len;
  CharClass cls;
};

bool is_cont(unsigned char b) { return (b & 0xC0) == 0x80; }

Unit unit_at(std::string_view s, std::size_t i) {
  const auto b = static_cast<unsigned char>(s[i]);
  if (b < 0x80) return {1, char_class(b)};
  const std::size_t left = s.size() - i;
  auto at = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
  // Well-formed sequences only (RFC 3629): no overlongs, no surrogates, nothing past U+10FFFF.
  if (b >= 0xC2 && b <= 0xDF && left >= 2 && is_cont(at(1))) {
    return {2, char_class(((b & 0x1Fu) << 6) | (at(1) & 0x3Fu))};
  }
  if (b >= 0xE0 && b <= 0xEF && left >= 3 && is_cont(at(1)) && is_cont(at(2))) {
    const unsigned char lo = b == 0xE0 ? 0xA0 : 0x80, hi = b == 0xED ? 0x9F : 0xBF;
    if (at(1) >= lo && at(1) <= hi)
      return {3, char_class(((b & 0x0Fu) << 12) | ((at(1) & 0x3Fu) << 6) | (at(2) & 0x3Fu))};
  }
  if (b >= 0xF0 && b <= 0xF4 && left >= 4 && is_cont(at(1)) && is_cont(at(2)) && is_cont(at(3))) {
    const unsigned char lo = b == 0xF0 ? 0x90 : 0x80, hi = b == 0xF4 ? 0x8F : 0xBF;
    if (at(1) >= lo && at(1) <= hi)
      return {4, char_class(((b & 0x07u) << 18) | ((at(1) & 0x3Fu) << 12) | ((at(2) & 0x3Fu) << 6) |
                            (at(3) & 0x3Fu))};
  }
  return {1, CharClass::Letter};  // not valid UTF-8
}

// The length of a contraction ('s 't 're 've 'm 'll 'd) at s[i], or 0.
std::size_t contraction_at(std::string_view s, std::size_t i) {
  if (s[i] != '\'' || i + 1 >= s.size()) return 0;
  const char a = s[i + 1];
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 < s.size()) {
    const char b = s[i + 2];
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  }
  return 0;
}

}  // namespace

CharClass char_class(char32_t cp) {
  if (cp < 0x80) {
    if (cp == ' ' || (cp >= '\t' && cp <= '\r')) return CharClass::Space;
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return CharClass::Letter;
    if (cp >= '0' && cp <= '9') return CharClass::Number;
    return CharClass::Other;
  }
  const auto* end = std::end(kRanges);
  const auto* it = std::upper_bound(std::begin(kRanges), end, cp,
                                    [](char32_t c, const ClassRange& r) { return c < r.lo; });
  if (it != std::begin(kRanges) && cp <= (it - 1)->hi) return (it - 1)->cls;
  return CharClass::Letter;
}

void pretokenize(std::string_view s, const std::function<void(std::string_view)>& piece) {
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    if (const std::size_t c = contraction_at(s, i)) {  // 's 't 're 've 'm 'll 'd
      piece(s.substr(i, c));
      i += c;
      continue;
    }
    // " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+": an optional space, then a run of one class.
    std::size_t j = i;
    Unit u = unit_at(s, j);
    if (s[i] == ' ' && i + 1 < n) {
      const Unit next = unit_at(s, i + 1);
      if (next.cls != CharClass::Space) {
        j = i + 1;
        u = next;
      }
    }
    if (u.cls != CharClass::Space) {
      const CharClass cls = u.cls;
      j += u.len;
      while (j < n) {
        const Unit v = unit_at(s, j);
        if (v.cls != cls) break;
        j += v.len;
      }
      piece(s.substr(i, j - i));
      i = j;
      continue;
    }
    // "\s+(?!\S)|\s+": a whitespace run; before a non-space it leaves its last character,
    // which then leads the next piece (" word") or, alone, is a piece of its own.
    std::size_t last = i;  // start of the run's last character
    j = i;
    while (j < n) {
      const Unit v = unit_at(s, j);
      if (v.cls != CharClass::Space) break;
      last = j;
      j += v.len;
    }
    const std::size_t end = (j < n && last > i) ? last : j;
    piece(s.substr(i, end - i));
    i = end;
  }
}

std::vector<std::string_view> pretokenize(std::string_view text) {
  std::vector<std::string_view> pieces;
  pretokenize(text, [&](std::string_view p) { pieces.push_back(p); });
  return pieces;
}

}  // namespace kiln
