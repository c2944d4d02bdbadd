// One random element, shared by the CPU and CUDA random kernels so both draw the same value.
#pragma once

#include "core/dispatch/random.h"
#include "core/dtype.h"
#include "core/host_device.h"
#include "core/philox.h"

namespace kiln {

template <class T>
KILN_HOST_DEVICE inline T random_sample(RandomDist dist, uint64_t seed, uint64_t offset,
                                        uint64_t i, double a, double b) {
  switch (dist) {
    case RandomDist::uniform:
      if constexpr (std::is_same_v<T, double>) return a + (b - a) * uniform_double(seed, offset, i);
      else return static_cast<T>(static_cast<float>(a) + static_cast<float>(b - a) * uniform_float(seed, offset, i));
    case RandomDist::normal:
      // f64 normals use the f32 Box-Muller draw: plenty for initialisation and tests.
      if constexpr (std::is_same_v<T, double>) return a + b * static_cast<double>(normal_float(seed, offset, i));
      else return static_cast<T>(static_cast<float>(a) + static_cast<float>(b) * normal_float(seed, offset, i));
    case RandomDist::integer:
      return static_cast<T>(static_cast<opmath_t<T>>(
          uniform_int(seed, offset, i, static_cast<int64_t>(a), static_cast<int64_t>(b))));
  }
  return T{};
}

}  // namespace kiln
