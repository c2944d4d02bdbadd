// Element types. Kernels switch on DType once and run a typed body (see KILN_DISPATCH_*).
#pragma once

#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <string_view>

#include "core/half.h"

namespace kiln {

enum class DType : uint8_t { f32, f16, bf16, f64, i32, i64, u8, b8 };

std::size_t element_size(DType t);
std::string_view dtype_name(DType t);  // "f32", ..., "bool"
DType parse_dtype(std::string_view name);  // accepts the names above, plus "float32", "bfloat16", ...
std::ostream& operator<<(std::ostream& os, DType t);

inline bool is_floating(DType t) {
  return t == DType::f32 || t == DType::f16 || t == DType::bf16 || t == DType::f64;
}
// The type two operands are computed in (PyTorch's promotion, without scalar special cases).
DType promote_types(DType a, DType b);

template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<Half> { static constexpr DType value = DType::f16; };
template <> struct dtype_of<BFloat16> { static constexpr DType value = DType::bf16; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::i32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::i64; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::u8; };
template <> struct dtype_of<bool> { static constexpr DType value = DType::b8; };

// The type arithmetic runs in: f32 for the 16-bit floats, the type itself otherwise.
template <class T> struct opmath { using type = T; };
template <> struct opmath<Half> { using type = float; };
template <> struct opmath<BFloat16> { using type = float; };
template <class T> using opmath_t = typename opmath<T>::type;
// The same rule for a run-time dtype: where statistics, losses and sums are kept (f64 stays f64).
inline DType accumulate_dtype(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }

}  // namespace kiln

#define KILN_DTYPE_CASE(enum_value, cpp_type, ...) \
  case ::kiln::DType::enum_value: {                \
    using scalar_t = cpp_type;                     \
    return __VA_ARGS__();                          \
  }

// KILN_DISPATCH_FLOATING(dtype, "op name", [&] { ... scalar_t ... });
#define KILN_DISPATCH_FLOATING(dtype, name, ...)                                       \
  [&] {                                                                                \
    switch (dtype) {                                                                   \
      KILN_DTYPE_CASE(f32, float, __VA_ARGS__)                                         \
      KILN_DTYPE_CASE(f64, double, __VA_ARGS__)                                        \
      KILN_DTYPE_CASE(f16, ::kiln::Half, __VA_ARGS__)                                  \
      KILN_DTYPE_CASE(bf16, ::kiln::BFloat16, __VA_ARGS__)                             \
      default:                                                                         \
        KILN_FAIL(name, ": unsupported dtype ", dtype, " (expected a floating type)"); \
    }                                                                                  \
  }()

#define KILN_DISPATCH_ALL(dtype, name, ...)                         \
  [&] {                                                             \
    switch (dtype) {                                                \
      KILN_DTYPE_CASE(f32, float, __VA_ARGS__)                      \
      KILN_DTYPE_CASE(f64, double, __VA_ARGS__)                     \
      KILN_DTYPE_CASE(f16, ::kiln::Half, __VA_ARGS__)               \
      KILN_DTYPE_CASE(bf16, ::kiln::BFloat16, __VA_ARGS__)          \
      KILN_DTYPE_CASE(i32, int32_t, __VA_ARGS__)                    \
      KILN_DTYPE_CASE(i64, int64_t, __VA_ARGS__)                    \
      KILN_DTYPE_CASE(u8, uint8_t, __VA_ARGS__)                     \
      KILN_DTYPE_CASE(b8, bool, __VA_ARGS__)                        \
    }                                                               \
    KILN_FAIL(name, ": unknown dtype");                             \
  }()

#define KILN_DISPATCH_INDEX(dtype, name, ...)                                          \
  [&] {                                                                                \
    switch (dtype) {                                                                   \
      KILN_DTYPE_CASE(i32, int32_t, __VA_ARGS__)                                       \
      KILN_DTYPE_CASE(i64, int64_t, __VA_ARGS__)                                       \
      default:                                                                         \
        KILN_FAIL(name, ": index tensor must be i32 or i64, got ", dtype);             \
    }                                                                                  \
  }()
