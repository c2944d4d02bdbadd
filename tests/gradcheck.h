// Test helpers shared by every op test: a finite-difference gradient checker (in f64 on the
// CPU, central differences, like Caffe's GradientChecker), seeded inputs and GPU availability
// checks.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <vector>

#include "core/ops.h"
#include "core/tensor.h"

namespace kiln::testing {

using TensorFn = std::function<Tensor(const std::vector<Tensor>& inputs)>;

struct GradcheckOptions {
  double eps = 1e-6;   // finite-difference step
  double atol = 1e-6;  // pass when |analytic - numeric| <= atol + rtol * |numeric|
  double rtol = 1e-4;
};

// Checks d/dx of sum(f(inputs) * w) for fixed random weights w against central differences,
// for every element of every input with requires_grad. Inputs must be f64 CPU tensors; they
// may be views (non-contiguous, broadcast sources). Returns a gtest assertion naming the
// input, element and both values on failure.
::testing::AssertionResult gradcheck(const TensorFn& f, const std::vector<Tensor>& inputs,
                                     GradcheckOptions opts = {});

// Random f64 CPU tensor in [low, high) that requires grad.
Tensor rand_input(const Shape& shape, double low = -1.0, double high = 1.0, uint64_t seed = 1);

// n values in [lo, hi) from std::mt19937(seed), at least `gap` away from 0 (the kinks of relu,
// abs, sign): inputs a reference implementation can read as plain numbers.
std::vector<double> uniform_values(int64_t n, double lo, double hi, uint32_t seed, double gap = 0.0);

bool has_cuda();

}  // namespace kiln::testing

#define KILN_SKIP_WITHOUT_CUDA() \
  do {                           \
    if (!::kiln::testing::has_cuda()) GTEST_SKIP() << "no CUDA device visible"; \
  } while (0)

#define EXPECT_GRADCHECK(...) EXPECT_TRUE(::kiln::testing::gradcheck(__VA_ARGS__))
