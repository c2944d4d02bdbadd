// resnet_small: a ResNet for 28x28 images (He et al. 2016, the CIFAR variant). A 3x3 stem,
// then one stage per entry of model.channels, each of model.blocks_per_stage basic blocks
// (conv-BN-ReLU-conv-BN plus the input); stages after the first halve the resolution, with a
// 1x1 conv + BN on the shortcut. Global average pooling and a Linear classifier finish it.
// channels [32, 64, 128] with 2 blocks per stage: ~0.7 M parameters.
#include "core/error.h"
#include "core/ops.h"
#include "models/registry.h"
#include "nn/batchnorm.h"
#include "nn/conv.h"
#include "nn/linear.h"
#include "nn/pool.h"

namespace kiln::models {

namespace {

class BasicBlock : public nn::Module {
 public:
  BasicBlock(int64_t in, int64_t out, int64_t stride, Generator* gen) : Module("BasicBlock") {
    conv1_ = register_module("conv1", std::make_shared<nn::Conv2d>(in, out, 3, stride, 1, 1, 1, false, gen));
    bn1_ = register_module("bn1", std::make_shared<nn::BatchNorm2d>(out));
    conv2_ = register_module("conv2", std::make_shared<nn::Conv2d>(out, out, 3, 1, 1, 1, 1, false, gen));
    bn2_ = register_module("bn2", std::make_shared<nn::BatchNorm2d>(out));
    if (stride != 1 || in != out) {
      auto down = std::make_shared<nn::Sequential>();
      down->add(std::make_shared<nn::Conv2d>(in, out, 1, stride, 0, 1, 1, false, gen));
      down->add(std::make_shared<nn::BatchNorm2d>(out));
      downsample_ = register_module("downsample", down);
    }
  }

  Tensor forward(const Tensor& x) override {
    Tensor h = relu((*bn1_)((*conv1_)(x)));
    h = (*bn2_)((*conv2_)(h));
    return relu(add(h, downsample_ ? (*downsample_)(x) : x));
  }

 private:
  std::shared_ptr<nn::Conv2d> conv1_, conv2_;
  std::shared_ptr<nn::BatchNorm2d> bn1_, bn2_;
  std::shared_ptr<nn::Sequential> downsample_;
};

std::shared_ptr<nn::Module> make_resnet_small(const ModelSpec& spec, Generator* gen) {
  KILN_CHECK(!spec.channels.empty(), "resnet_small: model.channels must list at least one stage width");
  auto net = std::make_shared<nn::Sequential>();
  const int64_t c0 = spec.channels[0];
  net->add(std::make_shared<nn::Conv2d>(spec.in_channels, c0, 3, 1, 1, 1, 1, false, gen));
  net->add(std::make_shared<nn::BatchNorm2d>(c0));
  net->add(std::make_shared<nn::ReLU>());
  int64_t in = c0;
  for (size_t stage = 0; stage < spec.channels.size(); ++stage) {
    for (int64_t b = 0; b < spec.blocks_per_stage; ++b) {
      const int64_t stride = (stage > 0 && b == 0) ? 2 : 1;
      net->add(std::make_shared<BasicBlock>(in, spec.channels[stage], stride, gen));
      in = spec.channels[stage];
    }
  }
  net->add(std::make_shared<nn::AdaptiveAvgPool2d>(1));
  net->add(std::make_shared<nn::Flatten>());
  net->add(std::make_shared<nn::Linear>(in, spec.num_classes, true, gen));
  return net;
}

}  // namespace

KILN_REGISTER_MODEL(resnet_small, make_resnet_small);

}  // namespace kiln::models
