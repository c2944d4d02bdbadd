// mlp: Flatten, then (Linear, activation, Dropout) per hidden size, then a Linear classifier.
// With hidden_sizes [512, 512] on Fashion-MNIST: 784-512-512-10, about 0.67 M parameters.
#include "models/registry.h"
#include "nn/dropout.h"
#include "nn/linear.h"

namespace kiln::models {

namespace {

std::shared_ptr<nn::Module> make_mlp(const ModelSpec& spec, Generator* gen) {
  auto net = std::make_shared<nn::Sequential>();
  net->add(std::make_shared<nn::Flatten>());
  int64_t width = spec.in_channels * spec.height * spec.width;
  for (int64_t hidden : spec.hidden_sizes) {
    net->add(std::make_shared<nn::Linear>(width, hidden, true, gen));
    if (spec.activation == "gelu") net->add(std::make_shared<nn::GELU>());
    else net->add(std::make_shared<nn::ReLU>());
    if (spec.dropout > 0) net->add(std::make_shared<nn::Dropout>(spec.dropout));
    width = hidden;
  }
  net->add(std::make_shared<nn::Linear>(width, spec.num_classes, true, gen));
  return net;
}

}  // namespace

KILN_REGISTER_MODEL(mlp, make_mlp);

}  // namespace kiln::models
