// MNIST and Fashion-MNIST: 28x28 grey images in ten classes, four IDX files per directory
// (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
// t10k-labels-idx1-ubyte), each gzip-compressed (.gz, preferred when both exist) or raw.
// Registered as "fashion_mnist" and "mnist" with splits "train" and "test".
#pragma once

#include <string>

#include "data/dataset.h"

namespace kiln {

// Where Debian's dataset-fashion-mnist package puts the files.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";
// No package ships MNIST; this is where kiln looks unless told otherwise.
inline constexpr const char* kMnistDir = "/usr/share/datasets/mnist";

// images u8 [N, 28, 28] (N = 60000 for train, 10000 for test), labels i64 [N] in [0, 10).
ImageDataset load_fashion_mnist(const std::string& dir = kFashionMnistDir, const std::string& split = "train");
ImageDataset load_mnist(const std::string& dir = kMnistDir, const std::string& split = "train");

}  // namespace kiln
