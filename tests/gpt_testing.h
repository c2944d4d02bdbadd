// What the GPT tests share: weights that make a tiny GPT's outputs informative.
#pragma once

#include <cmath>
#include <string>

#include "core/autograd.h"
#include "core/generator.h"
#include "core/ops.h"
#include "models/gpt.h"

namespace kiln::testing {

// Redraws every parameter of `model` from `gen`, larger than GPT-2's init (0.02 makes every
// logit ~0 and hides errors): LayerNorm weights 1 + 0.1 N, biases 0.1 N, matrices
// N / sqrt(fan_in), embeddings 0.5 N (padding rows of wte included). Same generator state,
// same weights.
inline void redraw_gpt_weights(models::GPT& model, Generator& gen) {
  NoGradGuard no_grad;
  for (auto& [name, p] : model.named_parameters()) {
    Tensor r = randn(p.shape(), {}, &gen);
    if (name.find(".ln_") != std::string::npos && name.ends_with(".weight")) r = r * 0.1 + 1.0;
    else if (name.ends_with(".bias")) r = r * 0.1;
    else if (name.find(".wte.") != std::string::npos || name.find(".wpe.") != std::string::npos) r = r * 0.5;
    else r = r / std::sqrt(static_cast<double>(p.size(1)));
    p.copy_(r);
  }
}

}  // namespace kiln::testing
