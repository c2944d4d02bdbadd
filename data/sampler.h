// Samplers: the order in which one epoch visits a dataset's indices (PyTorch's Sampler). The
// DataLoader asks for the whole order at the start of each epoch, so an order depends only
// on the epoch number; a rank/world-size DistributedSampler slots in here by taking its
// share of a shuffled order.
#pragma once

#include <cstdint>
#include <vector>

namespace kiln {

class Sampler {
 public:
  virtual ~Sampler() = default;
  // How many indices every epoch yields.
  virtual int64_t size() const = 0;
  // The indices epoch `epoch` visits, in order; size() of them.
  virtual std::vector<int64_t> indices(int64_t epoch) const = 0;
};

// 0, 1, ..., n-1 every epoch.
class SequentialSampler final : public Sampler {
 public:
  explicit SequentialSampler(int64_t n);
  int64_t size() const override { return n_; }
  std::vector<int64_t> indices(int64_t epoch) const override;

 private:
  int64_t n_;
};

// A permutation of 0..n-1 drawn from Philox keyed by (seed, epoch): a new order each epoch, the
// same order for the same seed and epoch on any machine.
class RandomSampler final : public Sampler {
 public:
  RandomSampler(int64_t n, uint64_t seed);
  int64_t size() const override { return n_; }
  std::vector<int64_t> indices(int64_t epoch) const override;

 private:
  int64_t n_;
  uint64_t seed_;
};

// The permutation RandomSampler uses: Fisher-Yates, swap index i with one drawn uniformly from
// [0, i] by philox uniform_int at element i of the epoch's shuffle stream.
std::vector<int64_t> random_permutation(int64_t n, uint64_t seed, int64_t epoch);

}  // namespace kiln
