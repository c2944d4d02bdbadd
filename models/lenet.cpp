// lenet: LeNet-5 adapted to 28x28 inputs (padding 2 on the first conv, as in the original's
// 32x32 setting): conv 5x5 -> ReLU -> max-pool 2 -> conv 5x5 -> ReLU -> max-pool 2 -> three
// Linear layers. model.channels gives the two conv widths ([6, 16] is the classic), and
// model.hidden_sizes the fully connected widths ([120, 84]).
#include "core/error.h"
#include "models/registry.h"
#include "nn/conv.h"
#include "nn/dropout.h"
#include "nn/linear.h"
#include "nn/pool.h"

namespace kiln::models {

namespace {

std::shared_ptr<nn::Module> make_lenet(const ModelSpec& spec, Generator* gen) {
  KILN_CHECK(spec.channels.size() == 2, "lenet: model.channels must list 2 conv widths, got ",
             spec.channels.size());
  const int64_t c1 = spec.channels[0], c2 = spec.channels[1];
  auto net = std::make_shared<nn::Sequential>();
  net->add(std::make_shared<nn::Conv2d>(spec.in_channels, c1, 5, 1, 2, 1, 1, true, gen));
  net->add(std::make_shared<nn::ReLU>());
  net->add(std::make_shared<nn::MaxPool2d>(2));
  net->add(std::make_shared<nn::Conv2d>(c1, c2, 5, 1, 0, 1, 1, true, gen));
  net->add(std::make_shared<nn::ReLU>());
  net->add(std::make_shared<nn::MaxPool2d>(2));
  net->add(std::make_shared<nn::Flatten>());
  // 28 -> conv(pad 2) 28 -> pool 14 -> conv 10 -> pool 5
  const int64_t h = ((spec.height) / 2 - 4) / 2, w = ((spec.width) / 2 - 4) / 2;
  KILN_CHECK(h > 0 && w > 0, "lenet: input ", spec.height, "x", spec.width, " is too small");
  int64_t width = c2 * h * w;
  for (int64_t hidden : spec.hidden_sizes) {
    net->add(std::make_shared<nn::Linear>(width, hidden, true, gen));
    net->add(std::make_shared<nn::ReLU>());
    if (spec.dropout > 0) net->add(std::make_shared<nn::Dropout>(spec.dropout));
    width = hidden;
  }
  net->add(std::make_shared<nn::Linear>(width, spec.num_classes, true, gen));
  return net;
}

}  // namespace

KILN_REGISTER_MODEL(lenet, make_lenet);

}  // namespace kiln::models
