// How the data pipeline keys its Philox draws, so that every random choice is a pure function
// of (seed, epoch, what it is for, which sample) and never of the order in which batches were
// built: that is what makes shuffles and augmentations reproducible, resumable mid-epoch, and
// the same with or without the prefetch thread.
//
// One Philox key (the loader's seed); the 64-bit counter offset names the stream:
//   offset = epoch * kNumStreams + stream
// and the element index runs within it (the shuffle's swap index, or sample * 4 + draw for
// augmentations: one Philox block per sample).
#pragma once

#include <cstdint>

namespace kiln::data_streams {

enum Stream : uint64_t { kShuffle = 0, kAugment = 1, kNumStreams = 2 };

inline uint64_t offset(uint64_t epoch, Stream stream) { return epoch * kNumStreams + stream; }

}  // namespace kiln::data_streams
