#include "nn/embedding.h"

#include "core/ops.h"
#include "nn/init.h"

namespace kiln::nn {

Embedding::Embedding(int64_t num_embeddings, int64_t embedding_dim, Generator* gen)
    : Module("Embedding"), num_(num_embeddings), dim_(embedding_dim) {
  KILN_CHECK(num_embeddings > 0 && embedding_dim > 0, "Embedding: sizes must be positive, got (",
             num_embeddings, ", ", embedding_dim, ")");
  weight = register_parameter("weight", empty({num_embeddings, embedding_dim}));
  init::normal_(weight, 0.0, 1.0, gen);
}

Tensor Embedding::forward(const Tensor& indices) { return embedding(weight, indices); }

std::string Embedding::extra_repr() const { return std::to_string(num_) + ", " + std::to_string(dim_); }

}  // namespace kiln::nn
