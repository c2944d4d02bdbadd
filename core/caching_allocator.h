// The caching device allocator, after PyTorch's CUDACachingAllocator.
//
// cudaMalloc and cudaFree are slow and cudaFree synchronizes the whole device, so freed blocks are
// kept and handed out again instead of going back to the driver. The bookkeeping here is plain C++:
// the device is reached only through RawDeviceMemory, so tests can drive it with a fake device on a
// machine without a GPU (core/cuda_allocator.cpp provides the real one).
//
// Policy (the same numbers as PyTorch):
//   - request sizes are rounded up to a multiple of 512 bytes;
//   - requests up to 1 MiB come from the small pool, carved out of 2 MiB segments;
//   - larger requests come from the large pool: below 10 MiB from 20 MiB segments, from 10 MiB up
//     from a segment of the size rounded up to 2 MiB;
//   - best fit within a pool, among the blocks of the same stream; a block is split when the rest
//     is worth keeping, and merged with its free neighbours in the segment when freed;
//   - a block that other streams used (record_stream) returns to the pool only once events recorded
//     on those streams at free time have completed;
//   - when the device is out of memory, the cached free segments are released and the request is
//     tried once more before failing with an OOM error that prints the statistics.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace kiln {

using StreamId = std::uintptr_t;  // opaque (a cudaStream_t cast), 0 = default stream
using EventId = std::uintptr_t;   // opaque (a cudaEvent_t cast)

// What the caching allocator asks of the device.
struct RawDeviceMemory {
  virtual ~RawDeviceMemory() = default;
  virtual void* malloc(std::size_t bytes) = 0;  // nullptr when out of memory
  virtual void free(void* ptr) = 0;
  virtual EventId record_event(StreamId stream) = 0;
  virtual bool event_done(EventId event) = 0;  // query, non-blocking
  virtual void destroy_event(EventId event) = 0;
};

// Byte counts are of rounded block sizes, as in PyTorch's "allocated_bytes"/"reserved_bytes".
struct AllocatorStats {
  std::size_t allocated_bytes = 0;  // in blocks handed out to callers
  std::size_t reserved_bytes = 0;   // in segments obtained from the device (allocated + cached)
  std::size_t peak_allocated_bytes = 0;
  std::size_t peak_reserved_bytes = 0;
  std::uint64_t num_allocs = 0;     // successful allocate() calls since construction
  std::uint64_t num_frees = 0;
  std::uint64_t num_ooms = 0;       // allocate() calls that failed even after emptying the cache
  std::uint64_t num_segments = 0;   // segments currently held from the device
};

// "512 B", "1.50 KiB", "2.00 GiB".
std::string format_bytes(std::size_t bytes);

class CachingAllocator {
 public:
  static constexpr std::size_t kMinBlockSize = 512;                 // rounding of every request
  static constexpr std::size_t kSmallSize = std::size_t{1} << 20;   // largest small-pool request
  static constexpr std::size_t kSmallBuffer = std::size_t{2} << 20;  // small-pool segment size
  static constexpr std::size_t kMinLargeAlloc = std::size_t{10} << 20;  // own segment from here up
  static constexpr std::size_t kLargeBuffer = std::size_t{20} << 20;   // shared large segment size
  static constexpr std::size_t kRoundLarge = std::size_t{2} << 20;     // rounding of own segments

  // `raw` must outlive the allocator. `device_name` only appears in messages.
  explicit CachingAllocator(RawDeviceMemory& raw, std::string device_name = "cuda:0");
  // Returns the cached free segments to the device; segments with blocks still in use are leaked,
  // since a kernel may still be writing to them.
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // Memory for `bytes` bytes, to be used on `stream`. Returns nullptr for 0 bytes; throws
  // kiln::Error when the device is out of memory.
  void* allocate(std::size_t bytes, StreamId stream);
  // Gives a block back to the cache. nullptr is ignored; any other pointer not returned by
  // allocate() (or already freed) is an error.
  void free(void* ptr);
  // Marks the block at `ptr` as used by `stream` too, so that free() does not make it available
  // before the work already queued on `stream` is done.
  void record_stream(void* ptr, StreamId stream);
  // Returns every fully free cached segment to the device.
  void empty_cache();

  AllocatorStats stats() const;
  void reset_peak_stats();  // peaks restart from the current values
  std::string stats_string() const;

 private:
  struct Block;
  // Best fit: a lookup of (stream, size, nullptr) lands on the smallest block of that stream that
  // is large enough.
  struct BlockOrder {
    bool operator()(const Block* a, const Block* b) const;
  };
  using BlockPool = std::set<Block*, BlockOrder>;

  // All helpers below run with mutex_ held.
  Block* take_free_block(BlockPool& pool, StreamId stream, std::size_t size);
  Block* new_segment(BlockPool& pool, StreamId stream, std::size_t size);
  void split(Block* block, std::size_t size);
  void return_to_pool(Block* block);
  void merge_neighbour(Block* block, Block* neighbour);
  void process_events();
  void release_cached_segments();
  [[noreturn]] void throw_oom(std::size_t requested, std::size_t segment_size);

  RawDeviceMemory& raw_;
  std::string device_name_;
  mutable std::mutex mutex_;
  BlockPool small_pool_;
  BlockPool large_pool_;
  std::unordered_map<void*, Block*> active_;                // blocks handed out, by address
  std::vector<std::pair<EventId, Block*>> pending_events_;  // freed blocks waiting on streams
  AllocatorStats stats_;
};

}  // namespace kiln
