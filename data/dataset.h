// Datasets: what a DataLoader draws samples from, the in-memory image dataset the MNIST-style
// readers fill, and the registry that names datasets for configs ("fashion_mnist", "mnist").
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace kiln {

// A finite, indexable set of labelled images with u8 pixels. The loader calls get() from its
// background thread, one call at a time, so an implementation needs no locking of its own but
// must not depend on the calling thread.
class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  // The shape of one sample's pixels, [C, H, W].
  virtual Shape sample_shape() const = 0;
  // Writes sample i's C*H*W pixels (row-major) to `pixels` and returns its label.
  virtual int64_t get(int64_t i, uint8_t* pixels) const = 0;
};

// Images and labels held in memory, as the IDX readers return them.
struct ImageDataset final : Dataset {
  std::string name;   // "fashion_mnist/train": what error messages and logs print
  Tensor images;      // u8 [N, H, W] (one channel) or [N, C, H, W], CPU, contiguous
  Tensor labels;      // i64 [N], CPU, each in [0, num_classes)
  int64_t num_classes = 0;
  std::vector<std::string> class_names;  // empty when the dataset has none

  // Checks the fields agree (dtypes, shapes, label range) and throws naming `name` if not.
  void validate() const;

  int64_t size() const override { return labels.defined() ? labels.numel() : 0; }
  Shape sample_shape() const override;
  int64_t get(int64_t i, uint8_t* pixels) const override;
};

// ---- the registry: a name → a function that loads one split from a directory

struct DatasetSpec {
  std::string default_dir;               // used when the config gives no directory
  std::vector<std::string> splits;       // "train", "test"
  // Loads `split` from `dir`; errors name the file involved.
  std::function<ImageDataset(const std::string& dir, const std::string& split)> load;
};

// Adds `name`; a second registration of one name is an error.
void register_dataset(const std::string& name, DatasetSpec spec);
// Loads a registered dataset; an empty `dir` means the spec's default directory. Unknown names
// and splits are errors that list the known ones.
ImageDataset load_dataset(const std::string& name, const std::string& split, const std::string& dir = "");
std::vector<std::string> dataset_names();  // sorted
const DatasetSpec& dataset_spec(const std::string& name);

}  // namespace kiln
