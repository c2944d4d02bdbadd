// TokenLoader: batches of token windows from llm.c-format shards (data/token_shards.h) for
// language-model training: inputs and targets are i64 [B, T], targets = inputs shifted by one.
//
//   TokenLoader train({"data/kjv/bpe/train_*.bin"}, {.batch_size = 8, .seq_len = 256, .seed = 1});
//   Batch b;
//   train.next(b);                     // random windows; training never runs out
//
//   TokenLoader val({"data/kjv/bpe/val_*.bin"}, {.batch_size = 8, .seq_len = 256, .random = false});
//   while (val.next(b)) eval_step(b);  // one pass of sequential windows, then false
//   val.reset();                       // back to the first window for the next evaluation
//
// A window is T + 1 consecutive tokens of one shard (windows never cross shard boundaries):
// inputs are its first T tokens, targets its last T.
//
// Training (random = true): window starts are uniform over every window position of every
// shard, drawn from Philox with key = seed, offset = batch counter, element = row * world_size
// + rank. So batch k is a pure function of (seed, k, rank, world_size): each rank has its own
// windows, prefetching changes nothing, and a run resumed with set_state(k) continues exactly.
//
// Evaluation (random = false): windows start at 0, T, 2T, ... in each shard (the inputs do not
// overlap), shards in order. Batch k of rank r holds global windows (k * world_size + r) * B
// ... + B - 1. A pass is num_batches() batches; with world_size 1 the last batch may be short
// (fewer rows), with world_size > 1 the tail that does not fill a batch on every rank is left
// out so all ranks run the same number of full batches.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/device.h"
#include "data/dataloader.h"  // Batch, batch_host_tensor, stage_to_device
#include "data/prefetcher.h"
#include "data/token_shards.h"

namespace kiln {

struct TokenLoaderOptions {
  int64_t batch_size = 8;   // B, rows per batch on this rank
  int64_t seq_len = 256;    // T, tokens per row
  uint64_t seed = 0;        // keys the random windows
  int64_t rank = 0;         // this process among world_size data-parallel ones
  int64_t world_size = 1;
  bool random = true;       // true: random training windows, endless; false: one sequential pass
  int64_t max_batches = 0;  // sequential mode: cap a pass at this many batches (0 = the full pass)
  int64_t prefetch = 2;     // batches built ahead on a background thread; 0 builds them in next()
  Device device = kCPU;     // where batches are delivered; CUDA batches are staged in pinned memory
};

// The shard files named by `patterns`: each entry is a path or a glob pattern
// ("data/kjv/train_*.bin"), matches sorted by name. A pattern without a match is an error.
std::vector<std::string> expand_shard_patterns(const std::vector<std::string>& patterns);

class TokenLoader {
 public:
  // `shards`: paths or glob patterns (expand_shard_patterns). Throws kiln::Error on a bad shard,
  // bad options, or when no shard holds a full window of seq_len + 1 tokens.
  TokenLoader(const std::vector<std::string>& shards, TokenLoaderOptions options);
  ~TokenLoader();  // stops and joins the prefetch thread before the members it reads go
  TokenLoader(const TokenLoader&) = delete;
  TokenLoader& operator=(const TokenLoader&) = delete;

  // The next batch into `out`. Batch::index is the batch counter, Batch::indices the global
  // token position (over the concatenated shards) of each row's first input token. Training
  // always returns true; a sequential pass returns false at its end (and keeps returning false
  // until reset()). A build error on the prefetch thread is rethrown here.
  bool next(Batch& out);

  // The batch counter: next() returns batch state() next. Save it with a checkpoint.
  int64_t state() const { return position_; }
  void set_state(int64_t position);  // drops batches already built ahead
  void reset() { set_state(0); }

  // Sequential: batches in a pass (after max_batches). Random: batches of this rank in one
  // epoch-equivalent, num_tokens() / (B * T * world_size), at least 1 (for progress reports).
  int64_t num_batches() const { return num_batches_; }
  int64_t num_tokens() const { return total_tokens_; }
  int64_t num_windows() const { return total_windows_; }  // window positions (random) or windows (sequential)
  const std::vector<std::string>& files() const { return files_; }
  const TokenLoaderOptions& options() const { return options_; }

 private:
  struct Item {
    Batch batch;
    bool end = false;  // the end of a sequential pass
  };
  struct Window {
    int64_t shard;
    int64_t start;  // within the shard
  };

  Window window_at(int64_t w) const;  // the w-th window over all shards
  Batch build(int64_t position);       // a host batch; safe on the prefetch thread
  Item produce(int64_t& position);

  TokenLoaderOptions options_;
  std::vector<std::string> files_;
  std::vector<TokenShard> shards_;
  std::vector<int64_t> token_offset_;   // global position of each shard's first token
  std::vector<int64_t> window_prefix_;  // windows before each shard (size shards + 1)
  int64_t total_tokens_ = 0;
  int64_t total_windows_ = 0;
  int64_t num_batches_ = 0;
  int64_t position_ = 0;

  // The prefetch thread; it stops after an error or the end of a pass.
  Prefetcher<Item> prefetcher_;
};

}  // namespace kiln
