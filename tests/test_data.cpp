// data/: the IDX reader on small files this test writes (raw and gzipped) and every error it
// reports (missing file, wrong magic, truncated, trailing bytes, count mismatch, bad label),
// the dataset registry, the real Fashion-MNIST package when installed, and the DataLoader:
// every index once per epoch, seeded shuffles, drop_last, normalisation values, crop/flip
// determinism, resume from state(), prefetch thread == synchronous, errors from the thread,
// and (with a GPU) batches delivered on CUDA equal to the CPU ones.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/ops.h"
#include "data/dataloader.h"
#include "data/dataset.h"
#include "data/idx_file.h"
#include "data/mnist.h"
#include "data/sampler.h"
#include "tests/expect_error.h"
#include "tests/temp_files.h"
#include "tests/gradcheck.h"

namespace kiln {
namespace {

using testing::expect_error;
using testing::TempDir;

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

// The bytes of an IDX file: magic, big-endian sizes, data.
Bytes idx_bytes(uint32_t magic, const std::vector<uint32_t>& dims, const Bytes& data) {
  Bytes b;
  auto be32 = [&](uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(v >> s));
  };
  be32(magic);
  for (uint32_t d : dims) be32(d);
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

void write_raw(const std::string& path, const Bytes& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

void write_gz(const std::string& path, const Bytes& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}

Bytes u8_values(const Tensor& t) {
  const std::vector<int64_t> v = t.to_vector<int64_t>();
  return Bytes(v.begin(), v.end());
}

Bytes read_raw(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(f), {});
}

// Pixel (y, x) of image i: distinct across images and positions, all 256 values in use.
uint8_t pixel(int64_t i, int64_t y, int64_t x, int64_t W) { return static_cast<uint8_t>((i * 37 + y * W + x) % 256); }

Bytes image_data(int64_t n, int64_t H, int64_t W) {
  Bytes d;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t y = 0; y < H; ++y)
      for (int64_t x = 0; x < W; ++x) d.push_back(pixel(i, y, x, W));
  return d;
}

// Writes an MNIST-layout split ("train" or "t10k") with n images of H x W and labels i % 10.
void write_split(const TempDir& dir, const std::string& prefix, uint32_t n, uint32_t H, uint32_t W, bool gz,
                 uint32_t n_labels) {
  Bytes labels;
  for (uint32_t i = 0; i < n_labels; ++i) labels.push_back(static_cast<uint8_t>(i % 10));
  const Bytes images = idx_bytes(kIdxImagesMagic, {n, H, W}, image_data(n, H, W));
  const Bytes lab = idx_bytes(kIdxLabelsMagic, {n_labels}, labels);
  const std::string ext = gz ? ".gz" : "";
  (gz ? write_gz : write_raw)(dir.file(prefix + "-images-idx3-ubyte" + ext), images);
  (gz ? write_gz : write_raw)(dir.file(prefix + "-labels-idx1-ubyte" + ext), lab);
}

// ---------------------------------------------------------------- IDX files

TEST(IdxFile, ReadsRawAndGzippedFilesAlike) {
  TempDir dir;
  const Bytes data = image_data(3, 2, 4);
  const Bytes bytes = idx_bytes(kIdxImagesMagic, {3, 2, 4}, data);
  write_raw(dir.file("img"), bytes);
  write_gz(dir.file("img.gz"), bytes);
  ASSERT_NE(read_raw(dir.file("img.gz")), bytes);  // really compressed
  for (const std::string name : {"img", "img.gz"}) {
    SCOPED_TRACE(name);
    Tensor t = read_idx_images(dir.file(name));
    EXPECT_EQ(t.dtype(), DType::u8);
    EXPECT_EQ(t.shape(), (Shape{3, 2, 4}));
    EXPECT_EQ(u8_values(t), data);
  }
  write_gz(dir.file("lab.gz"), idx_bytes(kIdxLabelsMagic, {4}, {9, 0, 3, 7}));
  Tensor l = read_idx_labels(dir.file("lab.gz"));
  EXPECT_EQ(l.shape(), (Shape{4}));
  EXPECT_EQ(u8_values(l), (Bytes{9, 0, 3, 7}));
  write_raw(dir.file("empty"), idx_bytes(kIdxLabelsMagic, {0}, {}));
  EXPECT_EQ(read_idx_labels(dir.file("empty")).shape(), (Shape{0}));
}

TEST(IdxFile, ErrorsNameTheFileAndTheProblem) {
  TempDir dir;
  const std::string missing = dir.file("nope-idx3-ubyte.gz");
  expect_error([&] { read_idx_images(missing); }, {missing, "no such file"});

  // A labels file where images are expected: both magic numbers in hex.
  const std::string labels = dir.file("labels");
  write_raw(labels, idx_bytes(kIdxLabelsMagic, {2}, {1, 2}));
  expect_error([&] { read_idx_images(labels); }, {labels, "wrong magic", "expected 0x00000803", "got 0x00000801"});

  // Header 4 + 3*4 = 16 bytes, data 3*2*4 = 24 bytes: 40 expected; cut to 30.
  Bytes full = idx_bytes(kIdxImagesMagic, {3, 2, 4}, image_data(3, 2, 4));
  ASSERT_EQ(full.size(), 40u);
  const std::string cut = dir.file("cut");
  write_raw(cut, Bytes(full.begin(), full.begin() + 30));
  expect_error([&] { read_idx_images(cut); }, {cut, "truncated", "expected 40 bytes, got 30"});
  write_raw(cut, Bytes(full.begin(), full.begin() + 10));  // inside the header
  expect_error([&] { read_idx_images(cut); }, {cut, "truncated", "16-byte header", "got 10"});
  write_raw(cut, Bytes{0, 0});
  expect_error([&] { read_idx_images(cut); }, {cut, "truncated", "got 2"});

  // The same file gzipped and then cut: zlib sees the stream end early.
  const std::string gz = dir.file("cut.gz");
  write_gz(gz, full);
  Bytes packed = read_raw(gz);
  write_raw(gz, Bytes(packed.begin(), packed.begin() + packed.size() / 2));
  expect_error([&] { read_idx_images(gz); }, {gz, "truncated gzip stream (unexpected end of file)"});

  // Two bytes more than the header promises.
  const std::string longer = dir.file("longer");
  full.push_back(0);
  full.push_back(0);
  write_raw(longer, full);
  expect_error([&] { read_idx_images(longer); }, {longer, "2 unexpected bytes", "expected 40 bytes, got 42"});

  expect_error([&] { read_idx_images(dir.path.string()); }, {dir.path.string(), "directory"});
}

// ---------------------------------------------------------------- MNIST-layout directories

TEST(MnistFiles, LoadsBothSplitsRawOrGzipped) {
  TempDir dir;
  write_split(dir, "train", 12, 28, 28, /*gz=*/true, 12);
  write_split(dir, "t10k", 5, 28, 28, /*gz=*/false, 5);
  ImageDataset train = load_fashion_mnist(dir.path.string(), "train");
  EXPECT_EQ(train.name, "fashion_mnist/train");
  EXPECT_EQ(train.images.shape(), (Shape{12, 28, 28}));
  EXPECT_EQ(u8_values(train.images), image_data(12, 28, 28));
  EXPECT_EQ(train.labels.dtype(), DType::i64);
  EXPECT_EQ(train.labels.to_vector<int64_t>(), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1}));
  EXPECT_EQ(train.num_classes, 10);
  EXPECT_EQ(train.class_names.at(9), "Ankle boot");
  ImageDataset test = load_mnist(dir.path.string(), "test");
  EXPECT_EQ(test.name, "mnist/test");
  EXPECT_EQ(test.size(), 5);
  EXPECT_EQ(test.sample_shape(), (Shape{1, 28, 28}));
}

TEST(MnistFiles, ErrorsNameTheFiles) {
  TempDir dir;
  const std::string images = dir.file("train-images-idx3-ubyte.gz");
  const std::string labels = dir.file("train-labels-idx1-ubyte.gz");
  expect_error([&] { load_fashion_mnist(dir.path.string(), "train"); }, {"missing file", images});
  expect_error([&] { load_fashion_mnist(dir.file("absent"), "train"); }, {"absent", "does not exist"});

  write_split(dir, "train", 3, 28, 28, /*gz=*/true, /*n_labels=*/2);
  expect_error([&] { load_fashion_mnist(dir.path.string(), "train"); },
               {"count mismatch", images, "3 images", labels, "2 labels"});

  write_gz(labels, idx_bytes(kIdxLabelsMagic, {3}, {1, 10, 2}));
  expect_error([&] { load_mnist(dir.path.string(), "train"); }, {labels, "label 10 of sample 1", "[0, 10)"});
  expect_error([&] { load_mnist(dir.path.string(), "val"); }, {"unknown split val", "train, test"});

  if (!fs::exists(kMnistDir)) {  // the default directory gets a hint on what to do
    expect_error([&] { load_mnist(); },
                 {std::string(kMnistDir) + "/train-images-idx3-ubyte.gz", "no package ships MNIST"});
  }
}

TEST(DatasetRegistry, LoadsByNameAndListsTheKnownOnes) {
  TempDir dir;
  write_split(dir, "t10k", 4, 28, 28, /*gz=*/true, 4);
  const std::vector<std::string> names = dataset_names();
  EXPECT_NE(std::find(names.begin(), names.end(), "fashion_mnist"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "mnist"), names.end());
  EXPECT_EQ(dataset_spec("fashion_mnist").default_dir, kFashionMnistDir);

  ImageDataset ds = load_dataset("fashion_mnist", "test", dir.path.string());
  EXPECT_EQ(ds.size(), 4);
  expect_error([] { load_dataset("cifar10", "train"); }, {"unknown dataset: cifar10", "fashion_mnist, mnist"});
  expect_error([&] { load_dataset("mnist", "val", dir.path.string()); }, {"unknown split", "val", "train, test"});
  expect_error([] { register_dataset("mnist", {"", {"train"}, [](const std::string&, const std::string&) {
                                                  return ImageDataset{};
                                                }}); },
               {"dataset already registered: mnist"});
}

TEST(FashionMnistPackage, HasTheDocumentedSizesAndBalancedClasses) {
  if (!fs::exists(kFashionMnistDir)) GTEST_SKIP() << kFashionMnistDir << " missing (apt-get install dataset-fashion-mnist)";
  // Fashion-MNIST: 60000 training and 10000 test images of 28x28, 10 classes, 6000 and 1000
  // of each class (its README).
  for (const auto& [split, n] : {std::pair<std::string, int64_t>{"train", 60000}, {"test", 10000}}) {
    SCOPED_TRACE(split);
    ImageDataset ds = load_dataset("fashion_mnist", split);
    EXPECT_EQ(ds.images.shape(), (Shape{n, 28, 28}));
    std::map<int64_t, int64_t> histogram;
    for (int64_t l : ds.labels.to_vector<int64_t>()) ++histogram[l];
    ASSERT_EQ(histogram.size(), 10u);
    for (const auto& [label, count] : histogram) EXPECT_EQ(count, n / 10) << "label " << label;
  }
}

// ---------------------------------------------------------------- samplers

TEST(Sampler, RandomPermutationIsUniform) {
  // All 24 orders of 4 items, 24000 seeds: each order ~1000 times (sd ~ 31); a biased shuffle
  // (e.g. swapping with any index instead of [0, i]) would put some orders near 1/27 or 1/16.
  std::map<std::vector<int64_t>, int> counts;
  for (uint64_t seed = 0; seed < 24000; ++seed) ++counts[random_permutation(4, seed, 0)];
  EXPECT_EQ(counts.size(), 24u);
  for (const auto& [order, count] : counts) EXPECT_NEAR(count, 1000, 150);
  EXPECT_TRUE(random_permutation(0, 1, 0).empty());
  EXPECT_EQ(SequentialSampler(3).indices(5), (std::vector<int64_t>{0, 1, 2}));
}

// ---------------------------------------------------------------- loader

// n images of [C, H, W] with pixel(i, c*H + y, x) and labels i % 10, as a loader takes them.
std::shared_ptr<ImageDataset> synthetic(int64_t n, int64_t C = 1, int64_t H = 4, int64_t W = 5) {
  auto ds = std::make_shared<ImageDataset>();
  ds->name = "synthetic";
  Bytes pixels;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t r = 0; r < C * H; ++r)
      for (int64_t x = 0; x < W; ++x) pixels.push_back(pixel(i, r, x, W));
  ds->images = from_vector(std::vector<double>(pixels.begin(), pixels.end()), C == 1 ? Shape{n, H, W} : Shape{n, C, H, W},
                           {.dtype = DType::u8});
  std::vector<int64_t> labels(n);
  for (int64_t i = 0; i < n; ++i) labels[i] = i % 10;
  ds->labels = from_vector(labels, {n});
  ds->num_classes = 10;
  ds->validate();
  return ds;
}

// Every batch of `epochs` epochs, with an empty Batch marking each end of epoch.
std::vector<Batch> drain(DataLoader& loader, int epochs) {
  std::vector<Batch> out;
  for (int e = 0; e < epochs; ++e) {
    Batch b;
    while (loader.next(b)) out.push_back(b);
    out.push_back(Batch{});
  }
  return out;
}

void expect_same_batch(const Batch& a, const Batch& b) {
  ASSERT_EQ(a.inputs.defined(), b.inputs.defined());
  if (!a.inputs.defined()) return;
  EXPECT_EQ(a.epoch, b.epoch);
  EXPECT_EQ(a.index, b.index);
  EXPECT_EQ(a.indices, b.indices);
  EXPECT_EQ(a.inputs.shape(), b.inputs.shape());
  EXPECT_EQ(a.inputs.to_vector<float>(), b.inputs.to_vector<float>());  // bit for bit
  EXPECT_EQ(a.targets.to_vector<int64_t>(), b.targets.to_vector<int64_t>());
}

TEST(DataLoader, ShuffledEpochsCoverEveryIndexOnceWithMatchingInputsAndTargets) {
  auto ds = synthetic(103);
  DataLoader loader(ds, {.batch_size = 10, .shuffle = true, .seed = 7});
  EXPECT_EQ(loader.num_batches(), 11);
  std::vector<std::vector<int64_t>> orders;
  for (int epoch = 0; epoch < 3; ++epoch) {
    std::vector<int64_t> order;
    Batch b;
    int64_t k = 0;
    while (loader.next(b)) {
      EXPECT_EQ(b.epoch, epoch);
      EXPECT_EQ(b.index, k);
      EXPECT_EQ(loader.state(), (LoaderState{epoch, k + 1}));
      EXPECT_EQ(b.inputs.shape(), (Shape{k < 10 ? 10 : 3, 1, 4, 5}));
      const std::vector<float> in = b.inputs.to_vector<float>();
      const std::vector<int64_t> t = b.targets.to_vector<int64_t>();
      for (size_t j = 0; j < b.indices.size(); ++j) {
        const int64_t i = b.indices[j];
        EXPECT_EQ(t[j], i % 10);
        // mean 0, std 1: the input is pixel / 255.
        EXPECT_EQ(in[j * 20 + 7], static_cast<float>(pixel(i, 1, 2, 5) / 255.0));
      }
      order.insert(order.end(), b.indices.begin(), b.indices.end());
      ++k;
    }
    EXPECT_EQ(k, 11);
    EXPECT_EQ(loader.state(), (LoaderState{epoch + 1, 0}));
    std::vector<int64_t> sorted = order;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t i = 0; i < 103; ++i) ASSERT_EQ(sorted[i], i) << "epoch " << epoch;
    orders.push_back(order);
  }
  EXPECT_NE(orders[0], orders[1]);
  EXPECT_NE(orders[1], orders[2]);

  // The same seed gives the same orders; another seed another order; no shuffle is 0..n-1.
  DataLoader same(ds, {.batch_size = 10, .shuffle = true, .seed = 7, .prefetch = 0});
  DataLoader other(ds, {.batch_size = 10, .shuffle = true, .seed = 8});
  DataLoader plain(ds, {.batch_size = 10});
  std::vector<Batch> s = drain(same, 1), o = drain(other, 1), p = drain(plain, 1);
  std::vector<int64_t> so, oo, po;
  for (const Batch& b : s) so.insert(so.end(), b.indices.begin(), b.indices.end());
  for (const Batch& b : o) oo.insert(oo.end(), b.indices.begin(), b.indices.end());
  for (const Batch& b : p) po.insert(po.end(), b.indices.begin(), b.indices.end());
  EXPECT_EQ(so, orders[0]);
  EXPECT_NE(oo, orders[0]);
  for (int64_t i = 0; i < 103; ++i) EXPECT_EQ(po[i], i);
}

TEST(DataLoader, DropLastSkipsTheShortBatch) {
  auto ds = synthetic(103);
  DataLoader loader(ds, {.batch_size = 10, .shuffle = true, .drop_last = true});
  EXPECT_EQ(loader.num_batches(), 10);
  std::vector<Batch> batches = drain(loader, 2);
  ASSERT_EQ(batches.size(), 22u);  // 10 batches and an end marker, twice
  for (const Batch& b : batches) {
    if (b.inputs.defined()) {
      EXPECT_EQ(b.inputs.size(0), 10);
    }
  }
  expect_error([&] { DataLoader(ds, {.batch_size = 200, .drop_last = true}); }, {"no batches", "103 samples"});
}

TEST(DataLoader, NormalizesToTheGivenMeanAndStdInEitherLayout) {
  // One 1x1x3 image with pixels 0, 51, 255; mean 0.5, std 0.25:
  //   0 -> (0 - 0.5) / 0.25 = -2;  51 -> (0.2 - 0.5) / 0.25 = -1.2;  255 -> (1 - 0.5) / 0.25 = 2.
  auto ds = std::make_shared<ImageDataset>();
  ds->images = from_vector(std::vector<double>{0, 51, 255}, {1, 1, 3}, {.dtype = DType::u8});
  ds->labels = from_vector(std::vector<int64_t>{4}, {1});
  ds->num_classes = 10;
  ImageTransform t{.mean = {0.5}, .std = {0.25}};
  DataLoader image(ds, {.batch_size = 4, .transform = t});
  Batch b;
  ASSERT_TRUE(image.next(b));
  EXPECT_EQ(b.inputs.shape(), (Shape{1, 1, 1, 3}));
  EXPECT_EQ(b.inputs.dtype(), DType::f32);
  EXPECT_EQ(b.inputs.to_vector<float>(), (std::vector<float>{-2.0f, -1.2f, 2.0f}));
  t.flatten = true;
  DataLoader flat(ds, {.batch_size = 4, .transform = t});
  ASSERT_TRUE(flat.next(b));
  EXPECT_EQ(b.inputs.shape(), (Shape{1, 3}));
  EXPECT_EQ(b.inputs.to_vector<float>(), (std::vector<float>{-2.0f, -1.2f, 2.0f}));

  // Per-channel values on a 3-channel dataset: channel c uses mean[c], std[c].
  auto rgb = synthetic(2, 3, 2, 2);
  DataLoader per_channel(rgb, {.batch_size = 2, .transform = {.mean = {0.1, 0.2, 0.3}, .std = {0.5, 1.0, 2.0}}});
  ASSERT_TRUE(per_channel.next(b));
  const std::vector<float> v = b.inputs.to_vector<float>();
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t c = 0; c < 3; ++c)
      for (int64_t p = 0; p < 4; ++p) {
        const double m[] = {0.1, 0.2, 0.3}, s[] = {0.5, 1.0, 2.0};
        const double raw = pixel(i, c * 2 + p / 2, p % 2, 2);
        EXPECT_NEAR(v[(i * 3 + c) * 4 + p], (raw / 255.0 - m[c]) / s[c], 1e-6);
      }

  expect_error([&] { DataLoader(rgb, {.transform = {.mean = {0.1, 0.2}}}); }, {"mean has 2 values for 3 channels"});
  expect_error([&] { DataLoader(rgb, {.transform = {.std = {0.0}}}); }, {"std must be positive"});
  expect_error([&] { DataLoader(rgb, {.transform = {.crop_padding = -1}}); }, {"crop padding", "-1"});
  expect_error([&] { DataLoader(rgb, {.batch_size = 0}); }, {"batch_size must be positive"});
}

TEST(ImageTransform, CropAndFlipMoveThePixelsAsStated) {
  // Image 1x3x3 with pixels 1..9 (row-major); padding 1, crop corner (dy, dx) = (0, 2), then
  // a flip. The padded image is 5x5 with the image at rows/cols 1..3; the 3x3 window at (0, 2)
  // covers padded rows 0..2, cols 2..4, i.e. image rows -1..1 and cols 1..3:
  //   [0 0 0; 2 3 0; 5 6 0], and flipped left-right: [0 0 0; 0 3 2; 0 6 5].
  const Bytes img = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  ImageTransform t{.mean = {0.0}, .std = {1.0 / 255.0}, .crop_padding = 1, .horizontal_flip = true};  // x -> x
  std::vector<float> out(9);
  apply_transform(t, {1, 3, 3}, img.data(), {.dy = 0, .dx = 2, .flip = true}, out.data());
  EXPECT_EQ(out, (std::vector<float>{0, 0, 0, 0, 3, 2, 0, 6, 5}));
  apply_transform(t, {1, 3, 3}, img.data(), {.dy = 1, .dx = 1, .flip = false}, out.data());  // centre: identity
  EXPECT_EQ(out, (std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8, 9}));
}

TEST(ImageTransform, RandomChoicesDependOnlyOnSeedEpochAndIndex) {
  ImageTransform t{.crop_padding = 2, .horizontal_flip = true};
  std::set<std::pair<int64_t, int64_t>> corners;
  int flips = 0, differs_next_epoch = 0;
  for (int64_t i = 0; i < 2000; ++i) {
    const AugmentChoice a = augment_choice(t, 5, 3, i), again = augment_choice(t, 5, 3, i);
    EXPECT_EQ(a.dy, again.dy);
    EXPECT_EQ(a.dx, again.dx);
    EXPECT_EQ(a.flip, again.flip);
    ASSERT_GE(std::min(a.dy, a.dx), 0);
    ASSERT_LE(std::max(a.dy, a.dx), 4);
    corners.insert({a.dy, a.dx});
    flips += a.flip;
    const AugmentChoice b = augment_choice(t, 5, 4, i);
    differs_next_epoch += (a.dy != b.dy || a.dx != b.dx || a.flip != b.flip);
  }
  EXPECT_EQ(corners.size(), 25u);  // every corner in [0, 4]^2 occurs
  EXPECT_NEAR(flips, 1000, 150);   // flip with probability 1/2 (sd ~ 22)
  EXPECT_GT(differs_next_epoch, 1800);  // 1 - 1/50 of samples should differ
  const AugmentChoice none = augment_choice({}, 5, 3, 0);
  EXPECT_EQ(none.dy + none.dx + none.flip, 0);
}

TEST(DataLoader, AugmentedSamplesAreTheSameWhicheverBatchTheyLandIn) {
  auto ds = synthetic(50, 1, 6, 6);
  const ImageTransform t{.mean = {0.3}, .std = {0.4}, .crop_padding = 2, .horizontal_flip = true};
  DataLoader by7(ds, {.batch_size = 7, .shuffle = true, .seed = 3, .transform = t});
  DataLoader by13(ds, {.batch_size = 13, .shuffle = true, .seed = 3, .transform = t, .prefetch = 0});
  // Sample i of epoch e, as each loader delivered it.
  auto samples = [](DataLoader& loader) {
    std::map<std::pair<int64_t, int64_t>, std::vector<float>> out;
    Batch b;
    for (int e = 0; e < 2; ++e)
      while (loader.next(b)) {
        const std::vector<float> v = b.inputs.to_vector<float>();
        for (size_t j = 0; j < b.indices.size(); ++j)
          out[{b.epoch, b.indices[j]}] = std::vector<float>(v.begin() + j * 36, v.begin() + (j + 1) * 36);
      }
    return out;
  };
  const auto a = samples(by7), b = samples(by13);
  ASSERT_EQ(a.size(), 100u);
  EXPECT_EQ(a, b);
  // ...and each is the stated transform with the choice for (seed, epoch, index).
  std::vector<uint8_t> pixels(36);
  std::vector<float> expected(36);
  int changed_by_epoch = 0;
  for (int64_t i = 0; i < 50; ++i) {
    ds->get(i, pixels.data());
    for (int64_t e = 0; e < 2; ++e) {
      apply_transform(t, {1, 6, 6}, pixels.data(), augment_choice(t, 3, e, i), expected.data());
      EXPECT_EQ(a.at({e, i}), expected) << "sample " << i << " epoch " << e;
    }
    changed_by_epoch += a.at({0, i}) != a.at({1, i});
  }
  EXPECT_GT(changed_by_epoch, 40);
}

TEST(DataLoader, SetStateResumesAtTheSameBatch) {
  auto ds = synthetic(57);
  const DataLoaderOptions opts{.batch_size = 8, .shuffle = true, .seed = 11,
                               .transform = {.crop_padding = 1, .horizontal_flip = true}};
  DataLoader first(ds, opts);
  const std::vector<Batch> run = drain(first, 3);  // 8 batches + end marker per epoch
  ASSERT_EQ(run.size(), 27u);
  // A fresh loader (as after a restart) told to stand at epoch 2, batch 3.
  DataLoader resumed(ds, opts);
  resumed.set_state({2, 3});
  EXPECT_EQ(resumed.state(), (LoaderState{2, 3}));
  Batch b;
  for (size_t k = 2 * 9 + 3; k < 27; ++k) {
    if (!run[k].inputs.defined()) {
      EXPECT_FALSE(resumed.next(b));
      continue;
    }
    ASSERT_TRUE(resumed.next(b));
    expect_same_batch(b, run[k]);
  }
  // Jumping back while batches are queued on the prefetch thread drops them.
  resumed.set_state({0, 1});
  ASSERT_TRUE(resumed.next(b));
  expect_same_batch(b, run[1]);
  resumed.set_state({1, 8});  // the end of epoch 1
  EXPECT_FALSE(resumed.next(b));
  EXPECT_EQ(resumed.state(), (LoaderState{2, 0}));
  expect_error([&] { resumed.set_state({0, 9}); }, {"set_state", "batch 9", "8 batches per epoch"});
}

TEST(DataLoader, PrefetchThreadGivesTheSameBatchesAsSynchronousIteration) {
  auto ds = synthetic(40, 1, 6, 6);
  DataLoaderOptions opts{.batch_size = 6, .shuffle = true, .seed = 2,
                         .transform = {.mean = {0.5}, .std = {0.5}, .crop_padding = 2, .horizontal_flip = true}};
  opts.prefetch = 0;
  DataLoader sync(ds, opts);
  opts.prefetch = 3;
  DataLoader threaded(ds, opts);
  const std::vector<Batch> a = drain(sync, 3), b = drain(threaded, 3);
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k) expect_same_batch(a[k], b[k]);

  // Destroying loaders with a full queue, or that never started, must not hang.
  for (int k = 0; k < 20; ++k) {
    DataLoader busy(ds, opts);
    Batch x;
    if (k % 2) busy.next(x);
  }
}

// Throws for one index while `fail` is set; a stand-in for a dataset whose file read fails.
struct FailingDataset final : Dataset {
  std::shared_ptr<ImageDataset> inner = synthetic(30);
  int64_t bad = 17;
  mutable std::atomic<bool> fail{true};
  int64_t size() const override { return inner->size(); }
  Shape sample_shape() const override { return inner->sample_shape(); }
  int64_t get(int64_t i, uint8_t* pixels) const override {
    KILN_CHECK(!(fail && i == bad), "could not read sample ", i);
    return inner->get(i, pixels);
  }
};

TEST(DataLoader, AnErrorWhileBuildingABatchSurfacesInNext) {
  for (int64_t prefetch : {0, 2}) {
    SCOPED_TRACE(prefetch);
    auto ds = std::make_shared<FailingDataset>();
    DataLoader loader(ds, {.batch_size = 5, .prefetch = prefetch});  // index 17 is in batch 3
    Batch b;
    for (int k = 0; k < 3; ++k) ASSERT_TRUE(loader.next(b));
    expect_error([&] { loader.next(b); }, {"building batch 3 of epoch 0", "could not read sample 17"});
    EXPECT_EQ(loader.state(), (LoaderState{0, 3}));
    expect_error([&] { loader.next(b); }, {"could not read sample 17"});  // retried, fails again
    ds->fail = false;
    ASSERT_TRUE(loader.next(b));
    EXPECT_EQ(b.index, 3);
    EXPECT_EQ(b.indices.front(), 15);
  }
}

// Even indices only: a stand-in for a per-rank shard.
struct EvenSampler final : Sampler {
  int64_t n;
  explicit EvenSampler(int64_t n) : n(n) {}
  int64_t size() const override { return (n + 1) / 2; }
  std::vector<int64_t> indices(int64_t) const override {
    std::vector<int64_t> v;
    for (int64_t i = 0; i < n; i += 2) v.push_back(i);
    return v;
  }
};

TEST(DataLoader, UsesAGivenSampler) {
  auto ds = synthetic(9);
  DataLoader loader(ds, {.batch_size = 2}, std::make_shared<EvenSampler>(9));
  EXPECT_EQ(loader.num_batches(), 3);
  std::vector<int64_t> seen;
  for (const Batch& b : drain(loader, 1)) seen.insert(seen.end(), b.indices.begin(), b.indices.end());
  EXPECT_EQ(seen, (std::vector<int64_t>{0, 2, 4, 6, 8}));
  expect_error([&] { DataLoader(ds, {.shuffle = true}, std::make_shared<EvenSampler>(9)); }, {"shuffle and a sampler"});
  DataLoader beyond(ds, {.batch_size = 2}, std::make_shared<EvenSampler>(12));
  Batch b;
  ASSERT_TRUE(beyond.next(b));
  ASSERT_TRUE(beyond.next(b));
  expect_error([&] { beyond.next(b); }, {"sampler gave index 10", "[0, 9)"});
}

// ---------------------------------------------------------------- CUDA delivery

TEST(DataLoaderCuda, BatchesOnTheGpuEqualTheCpuOnes) {
  KILN_SKIP_WITHOUT_CUDA();
  auto ds = synthetic(45, 1, 6, 6);
  DataLoaderOptions opts{.batch_size = 8, .shuffle = true, .seed = 4,
                         .transform = {.mean = {0.2}, .std = {0.3}, .crop_padding = 1, .horizontal_flip = true}};
  DataLoader cpu(ds, opts);
  opts.device = Device("cuda:0");
  DataLoader gpu(ds, opts);
  const std::vector<Batch> a = drain(cpu, 2), b = drain(gpu, 2);
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k) {
    if (!b[k].inputs.defined()) continue;
    EXPECT_EQ(b[k].inputs.device(), Device("cuda:0"));
    EXPECT_EQ(b[k].targets.device(), Device("cuda:0"));
    expect_same_batch(a[k], b[k]);  // to_vector copies back; the values must be bit-identical
  }
}

TEST(DataLoaderCuda, AnUnavailableDeviceIsAnError) {
  auto ds = synthetic(4);
  expect_error([&] { DataLoader(ds, {.device = Device("cuda:63")}); }, {"cuda:63", "not available"});
}

}  // namespace
}  // namespace kiln
