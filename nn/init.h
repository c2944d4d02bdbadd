// PyTorch's default initialisations, so equal seeds give comparable runs. All draw from the
// given generator (or kiln's default one) through Philox, so CPU and GPU agree.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace kiln {
class Generator;
}

namespace kiln::nn::init {

// fan_in of a weight [out, in, k...]: in * prod(k).
int64_t fan_in(const Tensor& weight);
void uniform_(Tensor& t, double low, double high, Generator* gen = nullptr);
void normal_(Tensor& t, double mean, double std, Generator* gen = nullptr);
// kaiming_uniform_(a=sqrt(5)), the default of Linear and Conv2d weights: U(-1/sqrt(fan_in), +).
void kaiming_uniform_default_(Tensor& weight, Generator* gen = nullptr);
// The default bias init of Linear and Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
void bias_default_(Tensor& bias, int64_t fan_in, Generator* gen = nullptr);

}  // namespace kiln::nn::init
