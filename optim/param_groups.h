// PyTorch-style parameter groups for weight decay (nanoGPT's configure_optimizers): matrices
// and kernels (dim >= 2) decay; biases and normalisation scales (dim < 2) do not.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "optim/optimizer.h"

namespace kiln {

// Two groups, always in this order (so checkpoints index parameters the same way):
//   0: parameters with dim >= 2, weight_decay = `weight_decay`
//   1: the others, weight_decay = 0
// Parameters that do not require grad are left out. Either group may be empty; an empty
// list of named parameters, or an undefined or repeated one, is an error naming it.
std::vector<ParamGroup> make_param_groups(
    const std::vector<std::pair<std::string, Tensor>>& named_parameters, double weight_decay);

}  // namespace kiln
