#include "data/token_loader.h"

#include <glob.h>

#include <algorithm>
#include <utility>

#include "core/philox.h"

namespace kiln {

namespace {

bool has_glob_chars(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }

}  // namespace

std::vector<std::string> expand_shard_patterns(const std::vector<std::string>& patterns) {
  std::vector<std::string> files;
  for (const std::string& p : patterns) {
    if (!has_glob_chars(p)) {
      files.push_back(p);  // a plain path; TokenShard says if it cannot be opened
      continue;
    }
    glob_t g{};
    const int rc = ::glob(p.c_str(), 0, nullptr, &g);  // matches come sorted
    if (rc == 0) {
      for (std::size_t i = 0; i < g.gl_pathc; ++i) files.emplace_back(g.gl_pathv[i]);
    }
    ::globfree(&g);
    KILN_CHECK(rc == 0, "token shards: no file matches '", p, "'",
               rc == GLOB_NOMATCH ? "" : " (glob failed: cannot read a directory)");
  }
  KILN_CHECK(!files.empty(), "token shards: no shard files given");
  return files;
}

TokenLoader::TokenLoader(const std::vector<std::string>& shards, TokenLoaderOptions options)
    : options_(std::move(options)), prefetcher_(options_.prefetch) {
  const TokenLoaderOptions& o = options_;
  KILN_CHECK(o.batch_size > 0, "TokenLoader: batch_size must be positive, got ", o.batch_size);
  KILN_CHECK(o.seq_len > 0, "TokenLoader: seq_len must be positive, got ", o.seq_len);
  KILN_CHECK(o.world_size > 0 && o.rank >= 0 && o.rank < o.world_size, "TokenLoader: rank ", o.rank,
             " is not in [0, world_size = ", o.world_size, ")");
  KILN_CHECK(o.prefetch >= 0, "TokenLoader: prefetch must be >= 0, got ", o.prefetch);
  KILN_CHECK(o.max_batches >= 0, "TokenLoader: max_batches must be >= 0, got ", o.max_batches);
  KILN_CHECK(o.device.is_cpu() || o.device.index < cuda_device_count(), "TokenLoader: device ", o.device,
             " is not available (", cuda_device_count(), " CUDA devices visible)");

  files_ = expand_shard_patterns(shards);
  const int64_t T = o.seq_len;
  window_prefix_.push_back(0);
  for (const std::string& f : files_) {
    shards_.emplace_back(f);
    const int64_t n = shards_.back().size();
    token_offset_.push_back(total_tokens_);
    total_tokens_ += n;
    // Random: every start with T + 1 tokens left. Sequential: starts 0, T, 2T, ...
    const int64_t windows = o.random ? std::max<int64_t>(0, n - T) : std::max<int64_t>(0, (n - 1) / T);
    window_prefix_.push_back(window_prefix_.back() + windows);
  }
  total_windows_ = window_prefix_.back();
  KILN_CHECK(total_windows_ > 0, "TokenLoader: no shard of ", files_.size(), " (", files_.front(),
             files_.size() > 1 ? ", ..." : "", ") holds a window of seq_len + 1 = ", T + 1, " tokens (",
             total_tokens_, " tokens in all)");

  const int64_t per_batch = o.batch_size * o.world_size;
  if (o.random) {
    num_batches_ = std::max<int64_t>(1, total_tokens_ / (per_batch * T));
  } else {
    num_batches_ = o.world_size == 1 ? (total_windows_ + per_batch - 1) / per_batch : total_windows_ / per_batch;
    KILN_CHECK(num_batches_ > 0, "TokenLoader: ", total_windows_, " windows of ", T, " tokens do not fill one batch of ",
               o.batch_size, " rows on each of ", o.world_size, " ranks");
    if (o.max_batches > 0) num_batches_ = std::min(num_batches_, o.max_batches);
  }
}

TokenLoader::~TokenLoader() { prefetcher_.stop(); }

TokenLoader::Window TokenLoader::window_at(int64_t w) const {
  // The last shard whose first window is <= w.
  const auto it = std::upper_bound(window_prefix_.begin(), window_prefix_.end(), w);
  const int64_t s = (it - window_prefix_.begin()) - 1;
  const int64_t local = w - window_prefix_[s];
  return {s, options_.random ? local : local * options_.seq_len};
}

Batch TokenLoader::build(int64_t position) {
  const TokenLoaderOptions& o = options_;
  const int64_t B = o.batch_size, T = o.seq_len;
  int64_t rows = B;
  int64_t first = 0;  // sequential: the first global window of this batch on this rank
  if (!o.random) {
    first = (position * o.world_size + o.rank) * B;
    rows = std::clamp<int64_t>(total_windows_ - first, 0, B);
  }

  Batch b;
  b.inputs = batch_host_tensor({rows, T}, DType::i64, o.device);
  b.targets = batch_host_tensor({rows, T}, DType::i64, o.device);
  b.indices.resize(static_cast<std::size_t>(rows));
  b.epoch = 0;
  b.index = position;

  std::vector<int64_t> window(static_cast<std::size_t>(T + 1));
  int64_t* inputs = b.inputs.data<int64_t>();
  int64_t* targets = b.targets.data<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    int64_t w;
    if (o.random) {
      const auto element = static_cast<uint64_t>(r * o.world_size + o.rank);
      w = uniform_int(o.seed, static_cast<uint64_t>(position), element, 0, total_windows_);
    } else {
      w = first + r;
    }
    const Window at = window_at(w);
    shards_[static_cast<std::size_t>(at.shard)].read(at.start, T + 1, window.data());
    std::copy(window.begin(), window.end() - 1, inputs + r * T);
    std::copy(window.begin() + 1, window.end(), targets + r * T);
    b.indices[static_cast<std::size_t>(r)] = token_offset_[static_cast<std::size_t>(at.shard)] + at.start;
  }
  return b;
}

TokenLoader::Item TokenLoader::produce(int64_t& position) {
  Item item;
  if (!options_.random && position >= num_batches_) {
    item.end = true;  // the position stays at the end until reset()
    return item;
  }
  try {
    item.batch = build(position);
  } catch (const Error& e) {
    throw Error(detail::str_cat("TokenLoader: building batch ", position, ": ", e.what()));
  }
  ++position;
  return item;
}

bool TokenLoader::next(Batch& out) {
  Item item;
  if (options_.prefetch == 0) {
    int64_t at = position_;
    item = produce(at);
  } else {
    // The thread ends after an error (the next call restarts it at position_) or at the end of
    // a pass (reset() or set_state() restarts it).
    prefetcher_.start([this, at = position_](Item& built) mutable {
      built = produce(at);
      return !built.end;
    });
    item = prefetcher_.pop();
  }
  if (item.end) return false;
  out = stage_to_device(std::move(item.batch), options_.device);
  position_ = out.index + 1;
  return true;
}

void TokenLoader::set_state(int64_t position) {
  KILN_CHECK(position >= 0 && (options_.random || position <= num_batches_), "TokenLoader::set_state: ", position,
             " is not a batch position", options_.random ? "" : detail::str_cat(" (", num_batches_, " batches per pass)"));
  prefetcher_.stop();  // drops batches built for the old position
  position_ = position;
}

}  // namespace kiln
