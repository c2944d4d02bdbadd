// Reductions. The input is contiguous and viewed as [outer, reduced, inner]; the output is
// contiguous [outer, inner]. core permutes other cases into this form.
#pragma once

#include <cstdint>

#include "core/dispatch.h"
#include "core/tensor.h"

namespace kiln {

enum class ReduceOp : uint8_t { sum, mean, max, min, argmax, argmin, var };

// var uses `correction` (1: unbiased, like torch.var's default). argmax/argmin write i64 and
// return the first index of the extreme value. Float sums accumulate in f32 (f64 for f64).
extern DispatchStub<void(ReduceOp op, Tensor& out, const Tensor& in, int64_t outer,
                         int64_t reduced, int64_t inner, int64_t correction)>
    reduce_stub;

}  // namespace kiln
