#include "data/dataset.h"

#include <algorithm>
#include <cstring>

#include "core/registry.h"

namespace kiln {

namespace {

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace

// ---- ImageDataset

void ImageDataset::validate() const {
  KILN_CHECK(images.defined() && labels.defined(), "dataset ", name, ": images or labels missing");
  KILN_CHECK(images.dtype() == DType::u8 && (images.dim() == 3 || images.dim() == 4),
             "dataset ", name, ": images must be u8 [N, H, W] or [N, C, H, W], got ", images.meta_str());
  KILN_CHECK(labels.dtype() == DType::i64 && labels.dim() == 1,
             "dataset ", name, ": labels must be i64 [N], got ", labels.meta_str());
  KILN_CHECK(images.device().is_cpu() && labels.device().is_cpu() && images.is_contiguous() &&
                 labels.is_contiguous(),
             "dataset ", name, ": images and labels must be contiguous CPU tensors, got ",
             images.meta_str(), " and ", labels.meta_str());
  KILN_CHECK(images.size(0) == labels.size(0), "dataset ", name, ": ", images.size(0),
             " images but ", labels.size(0), " labels");
  KILN_CHECK(num_classes > 0, "dataset ", name, ": num_classes must be positive, got ", num_classes);
  KILN_CHECK(class_names.empty() || static_cast<int64_t>(class_names.size()) == num_classes,
             "dataset ", name, ": ", class_names.size(), " class names for ", num_classes, " classes");
  const int64_t* l = labels.data<int64_t>();
  for (int64_t i = 0; i < labels.numel(); ++i) {
    KILN_CHECK(l[i] >= 0 && l[i] < num_classes, "dataset ", name, ": label ", l[i], " of sample ", i,
               " is outside [0, ", num_classes, ")");
  }
}

Shape ImageDataset::sample_shape() const {
  if (images.dim() == 3) return {1, images.size(1), images.size(2)};
  return {images.size(1), images.size(2), images.size(3)};
}

int64_t ImageDataset::get(int64_t i, uint8_t* pixels) const {
  KILN_CHECK(i >= 0 && i < size(), "dataset ", name, ": index ", i, " out of range [0, ", size(), ")");
  const int64_t per_sample = images.numel() / images.size(0);
  std::memcpy(pixels, images.data<uint8_t>() + i * per_sample, static_cast<std::size_t>(per_sample));
  return labels.data<int64_t>()[i];
}

// ---- registry

namespace {

Registry<DatasetSpec>& registry() {
  // Function-local: registrations run from other files' static initialisers.
  static Registry<DatasetSpec> r("dataset");
  return r;
}

}  // namespace

void register_dataset(const std::string& name, DatasetSpec spec) {
  KILN_CHECK(spec.load, "register_dataset(", name, "): no load function");
  registry().add(name, std::move(spec));
}

std::vector<std::string> dataset_names() { return registry().names(); }

const DatasetSpec& dataset_spec(const std::string& name) { return registry().get(name); }

ImageDataset load_dataset(const std::string& name, const std::string& split, const std::string& dir) {
  const DatasetSpec& spec = dataset_spec(name);
  KILN_CHECK(std::find(spec.splits.begin(), spec.splits.end(), split) != spec.splits.end(),
             "unknown split for dataset ", name, ": ", split, " (known: ", joined(spec.splits), ")");
  ImageDataset ds = spec.load(dir.empty() ? spec.default_dir : dir, split);
  ds.validate();
  return ds;
}

}  // namespace kiln
