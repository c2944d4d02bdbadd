#include "data/sampler.h"

#include <numeric>
#include <utility>

#include "core/error.h"
#include "core/philox.h"
#include "data/random_streams.h"

namespace kiln {

std::vector<int64_t> random_permutation(int64_t n, uint64_t seed, int64_t epoch) {
  KILN_CHECK(n >= 0, "random_permutation: negative size ", n);
  KILN_CHECK(epoch >= 0, "random_permutation: negative epoch ", epoch);
  std::vector<int64_t> p(static_cast<std::size_t>(n));
  std::iota(p.begin(), p.end(), int64_t{0});
  const uint64_t offset = data_streams::offset(static_cast<uint64_t>(epoch), data_streams::kShuffle);
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = uniform_int(seed, offset, static_cast<uint64_t>(i), 0, i + 1);
    std::swap(p[i], p[j]);
  }
  return p;
}

SequentialSampler::SequentialSampler(int64_t n) : n_(n) {
  KILN_CHECK(n >= 0, "SequentialSampler: negative size ", n);
}

std::vector<int64_t> SequentialSampler::indices(int64_t /*epoch*/) const {
  std::vector<int64_t> p(static_cast<std::size_t>(n_));
  std::iota(p.begin(), p.end(), int64_t{0});
  return p;
}

RandomSampler::RandomSampler(int64_t n, uint64_t seed) : n_(n), seed_(seed) {
  KILN_CHECK(n >= 0, "RandomSampler: negative size ", n);
}

std::vector<int64_t> RandomSampler::indices(int64_t epoch) const { return random_permutation(n_, seed_, epoch); }

DistributedSampler::DistributedSampler(int64_t n, int world_size, int rank, bool shuffle, uint64_t seed,
                                       bool drop_last)
    : n_(n), world_size_(world_size), rank_(rank), shuffle_(shuffle), seed_(seed) {
  KILN_CHECK(n >= 0, "DistributedSampler: negative size ", n);
  KILN_CHECK(world_size >= 1, "DistributedSampler: world_size must be >= 1, got ", world_size);
  KILN_CHECK(rank >= 0 && rank < world_size, "DistributedSampler: rank ", rank, " is outside [0, ",
             world_size, ")");
  KILN_CHECK(!drop_last || n >= world_size, "DistributedSampler: drop_last with ", n,
             " samples leaves nothing for ", world_size, " ranks");
  // Like PyTorch: drop_last rounds down to a multiple of world_size, otherwise up (padding).
  per_rank_ = drop_last ? n / world_size : (n + world_size - 1) / world_size;
}

std::vector<int64_t> DistributedSampler::indices(int64_t epoch) const {
  std::vector<int64_t> order;
  if (shuffle_) {
    order = random_permutation(n_, seed_, epoch);
  } else {
    order.resize(static_cast<std::size_t>(n_));
    std::iota(order.begin(), order.end(), int64_t{0});
  }
  std::vector<int64_t> mine;
  mine.reserve(static_cast<std::size_t>(per_rank_));
  for (int64_t k = 0; k < per_rank_; ++k) {
    const int64_t pos = rank_ + k * world_size_;  // in the padded order
    mine.push_back(order[static_cast<std::size_t>(pos % n_)]);  // wrap around to pad
  }
  return mine;
}

}  // namespace kiln
