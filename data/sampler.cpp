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

}  // namespace kiln
