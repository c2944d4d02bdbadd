#include "data/mnist.h"

#include <filesystem>
#include <vector>

#include "data/idx_file.h"

namespace kiln {

namespace {

const std::vector<std::string> kFashionClasses = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                  "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
const std::vector<std::string> kDigitClasses = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};

struct Flavour {
  const char* name;         // "fashion_mnist"
  const char* default_dir;
  const char* missing_hint;  // what to do when the default directory lacks the files
  const std::vector<std::string>* classes;
};

const Flavour kFashion{"fashion_mnist", kFashionMnistDir, "install it with `apt-get install dataset-fashion-mnist`",
                       &kFashionClasses};
const Flavour kDigits{"mnist", kMnistDir,
                      "no package ships MNIST: copy the four IDX files there or give the dataset directory",
                      &kDigitClasses};

// dir/base.gz if it exists, else dir/base; an error naming both when neither does.
std::string find_file(const Flavour& f, const std::string& dir, const std::string& base) {
  namespace fs = std::filesystem;
  const std::string gz = (fs::path(dir) / (base + ".gz")).string();
  const std::string raw = (fs::path(dir) / base).string();
  std::error_code ec;
  if (fs::exists(gz, ec)) return gz;
  if (fs::exists(raw, ec)) return raw;
  std::string msg = std::string(f.name) + ": missing file " + gz + " (or " + raw + ")";
  if (!fs::is_directory(dir, ec)) msg += "; directory " + dir + " does not exist";
  if (fs::path(dir) == fs::path(f.default_dir)) msg += std::string("; ") + f.missing_hint;
  KILN_FAIL(msg);
}

ImageDataset load(const Flavour& f, const std::string& dir, const std::string& split) {
  KILN_CHECK(split == "train" || split == "test", f.name, ": unknown split ", split, " (known: train, test)");
  const std::string prefix = split == "train" ? "train" : "t10k";
  const std::string images_path = find_file(f, dir, prefix + "-images-idx3-ubyte");
  const std::string labels_path = find_file(f, dir, prefix + "-labels-idx1-ubyte");

  ImageDataset ds;
  ds.name = std::string(f.name) + "/" + split;
  ds.images = read_idx_images(images_path);
  const Tensor labels_u8 = read_idx_labels(labels_path);
  KILN_CHECK(ds.images.size(0) == labels_u8.size(0), f.name, ": image/label count mismatch: ", images_path,
             " has ", ds.images.size(0), " images but ", labels_path, " has ", labels_u8.size(0), " labels");
  ds.num_classes = static_cast<int64_t>(f.classes->size());
  ds.class_names = *f.classes;
  const uint8_t* l = labels_u8.data<uint8_t>();
  for (int64_t i = 0; i < labels_u8.numel(); ++i) {
    KILN_CHECK(l[i] < ds.num_classes, labels_path, ": label ", int{l[i]}, " of sample ", i, " is outside [0, ",
               ds.num_classes, ")");
  }
  ds.labels = labels_u8.to(DType::i64);
  ds.validate();
  return ds;
}

// Registered when libkiln loads (it is a shared library, so nothing is dropped by the linker).
const bool kRegistered = [] {
  for (const Flavour* f : {&kFashion, &kDigits}) {
    register_dataset(f->name, DatasetSpec{f->default_dir, {"train", "test"},
                                          [f](const std::string& dir, const std::string& split) {
                                            return load(*f, dir, split);
                                          }});
  }
  return true;
}();

}  // namespace

ImageDataset load_fashion_mnist(const std::string& dir, const std::string& split) {
  return load(kFashion, dir, split);
}

ImageDataset load_mnist(const std::string& dir, const std::string& split) { return load(kDigits, dir, split); }

}  // namespace kiln
