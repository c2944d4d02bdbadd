// CUDA dropout against the CPU: for one generator state both devices drop exactly the same
// elements and produce bit-identical outputs and gradients (the mask is the Philox draw, an
// integer comparison, and the kept value one multiply in the same precision), for f32, f64,
// bf16 and sizes that are and are not multiples of the 4 elements per Philox block; the CUDA
// mask is also the CUDA rand() draw below p.
// CUDA sources under test (scripts/gpu-check.sh lists them): kernels/cuda/dropout.cu.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/generator.h"
#include "core/ops.h"
#include "tests/cuda_compare.h"
#include "tests/gradcheck.h"

namespace kiln {
namespace {

using testing::kCuda;

Tensor nonzero_input(const Shape& shape, DType dtype, uint64_t seed) {
  return testing::random_cpu(shape, 1.0, 2.0, dtype, seed);
}

TEST(DropoutCuda, SameMaskOutputAndGradientAsCpu) {
  KILN_SKIP_WITHOUT_CUDA();
  for (const Shape& shape : {Shape{5}, Shape{1000003}, Shape{64, 512}, Shape{3, 7, 11, 13}}) {
    for (DType dtype : {DType::f32, DType::f64, DType::bf16}) {
      for (double p : {0.1, 0.5}) {
        const std::string what = std::string(dtype_name(dtype)) + " " + shape_str(shape) +
                                 " p " + std::to_string(p);
        const Tensor x = nonzero_input(shape, dtype, 1);
        const Tensor g = nonzero_input(shape, dtype, 2);
        Tensor xc = x.detach().requires_grad_(true);
        Tensor xg = x.to(kCuda).detach().requires_grad_(true);
        Generator gen_cpu(77), gen_gpu(77);
        const Tensor yc = dropout(xc, p, true, &gen_cpu);
        const Tensor yg = dropout(xg, p, true, &gen_gpu);
        ASSERT_TRUE(yg.is_cuda()) << what;
        EXPECT_EQ(yg.cpu().to_vector<double>(), yc.to_vector<double>()) << what;
        yc.backward(g);
        yg.backward(g.to(kCuda));
        EXPECT_EQ(xg.grad().cpu().to_vector<double>(), xc.grad().to_vector<double>()) << what << " backward";
        EXPECT_EQ(gen_cpu.offset(), gen_gpu.offset()) << what;
      }
    }
  }
}

TEST(DropoutCuda, MaskIsTheCudaRandDrawBelowP) {
  KILN_SKIP_WITHOUT_CUDA();
  const Shape shape = {1023, 17};
  const double p = 0.37;
  Generator a(5), b(5);
  const std::vector<double> y = dropout(ones(shape, {.device = kCuda}), p, true, &a).cpu().to_vector<double>();
  const std::vector<double> u = rand(shape, {.device = kCuda}, &b).cpu().to_vector<double>();
  int64_t dropped = 0;
  for (size_t i = 0; i < u.size(); ++i) {
    ASSERT_EQ(y[i] == 0, u[i] < p) << "element " << i;
    dropped += y[i] == 0;
  }
  EXPECT_GT(dropped, 0);
}

TEST(DropoutCuda, OneSeedOneMask) {
  KILN_SKIP_WITHOUT_CUDA();
  const Tensor x = nonzero_input({4096}, DType::f32, 3).to(kCuda);
  Generator a(11), b(11);
  const std::vector<double> ya = dropout(x, 0.5, true, &a).cpu().to_vector<double>();
  EXPECT_EQ(ya, dropout(x, 0.5, true, &b).cpu().to_vector<double>());
  EXPECT_NE(ya, dropout(x, 0.5, true, &a).cpu().to_vector<double>());
}

}  // namespace
}  // namespace kiln
