#include "core/dtype.h"

#include <ostream>

#include "core/error.h"

namespace kiln {

std::size_t element_size(DType t) {
  switch (t) {
    case DType::f32: case DType::i32: return 4;
    case DType::f64: case DType::i64: return 8;
    case DType::f16: case DType::bf16: return 2;
    case DType::u8: case DType::b8: return 1;
  }
  KILN_FAIL("unknown dtype");
}

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
    case DType::f64: return "f64";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
    case DType::u8: return "u8";
    case DType::b8: return "bool";
  }
  return "?";
}

DType parse_dtype(std::string_view name) {
  struct Alias { std::string_view name; DType type; };
  static constexpr Alias aliases[] = {
      {"f32", DType::f32},  {"float32", DType::f32},   {"float", DType::f32},
      {"f16", DType::f16},  {"float16", DType::f16},   {"half", DType::f16},
      {"bf16", DType::bf16}, {"bfloat16", DType::bf16}, {"f64", DType::f64},
      {"float64", DType::f64}, {"double", DType::f64}, {"i32", DType::i32},
      {"int32", DType::i32}, {"i64", DType::i64},      {"int64", DType::i64},
      {"u8", DType::u8},    {"uint8", DType::u8},      {"bool", DType::b8}};
  for (const Alias& a : aliases)
    if (a.name == name) return a.type;
  KILN_FAIL("unknown dtype '", name, "' (known: f32, f16, bf16, f64, i32, i64, u8, bool)");
}

std::ostream& operator<<(std::ostream& os, DType t) { return os << dtype_name(t); }

DType promote_types(DType a, DType b) {
  if (a == b) return a;
  // Rank within each kind; a float always wins over an integer or bool.
  auto rank = [](DType t) {
    switch (t) {
      case DType::b8: return 0;
      case DType::u8: return 1;
      case DType::i32: return 2;
      case DType::i64: return 3;
      case DType::f16: return 10;
      case DType::bf16: return 11;
      case DType::f32: return 12;
      case DType::f64: return 13;
    }
    return 0;
  };
  // f16 with bf16 has no exact common 16-bit type: PyTorch picks f32.
  if ((a == DType::f16 && b == DType::bf16) || (a == DType::bf16 && b == DType::f16))
    return DType::f32;
  return rank(a) >= rank(b) ? a : b;
}

}  // namespace kiln
