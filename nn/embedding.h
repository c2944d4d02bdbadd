// Embedding, as torch.nn.Embedding: a lookup table weight [num_embeddings, embedding_dim]
// whose rows are picked by integer indices of any shape. Initialised N(0, 1) like PyTorch's;
// models with their own scheme (GPT-2: N(0, 0.02)) re-initialise it.
#pragma once

#include <cstdint>
#include <string>

#include "nn/module.h"

namespace kiln {
class Generator;
}

namespace kiln::nn {

class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t embedding_dim, Generator* gen = nullptr);
  // indices [...] (i64) -> [..., embedding_dim]
  Tensor forward(const Tensor& indices) override;
  std::string extra_repr() const override;

  int64_t num_embeddings() const { return num_; }
  int64_t embedding_dim() const { return dim_; }
  Tensor weight;  // handle to the registered [num_embeddings, embedding_dim] parameter

 private:
  int64_t num_, dim_;
};

}  // namespace kiln::nn
