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

// Rank `rank`'s share of an epoch when `world_size` processes train together (PyTorch's
// DistributedSampler): the epoch's order (shuffled by (seed, epoch) as RandomSampler does, or
// sequential) is padded by wrapping around to a multiple of world_size, and rank r takes
// positions r, r + world_size, r + 2 * world_size, ... With drop_last the tail is cut instead
// of padded. Every rank gets the same number of indices, so no rank waits for a missing batch,
// and batch k of all ranks together is batch k of a single process whose batch is world_size
// times larger.
class DistributedSampler final : public Sampler {
 public:
  DistributedSampler(int64_t n, int world_size, int rank, bool shuffle, uint64_t seed, bool drop_last = false);
  int64_t size() const override { return per_rank_; }
  std::vector<int64_t> indices(int64_t epoch) const override;

 private:
  int64_t n_;
  int world_size_, rank_;
  bool shuffle_;
  uint64_t seed_;
  int64_t per_rank_;
};

// The permutation RandomSampler uses: Fisher-Yates, swap index i with one drawn uniformly from
// [0, i] by philox uniform_int at element i of the epoch's shuffle stream.
std::vector<int64_t> random_permutation(int64_t n, uint64_t seed, int64_t epoch);

}  // namespace kiln
