#include "core/caching_allocator.h"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <unordered_set>

#include "core/error.h"

namespace kiln {

// One contiguous piece of a segment. The blocks of a segment form a doubly linked list by address,
// so that a freed block can find its neighbours and merge with them.
struct CachingAllocator::Block {
  StreamId stream = 0;  // the stream it was allocated on; it is reused only there
  std::size_t size = 0;
  void* ptr = nullptr;
  BlockPool* pool = nullptr;
  Block* prev = nullptr;
  Block* next = nullptr;
  bool allocated = false;
  int pending_events = 0;          // events recorded at free time that have not completed yet
  std::set<StreamId> stream_uses;  // other streams that used it (record_stream)

  bool is_whole_segment() const { return prev == nullptr && next == nullptr; }
};

namespace {

std::size_t round_size(std::size_t bytes) {
  const std::size_t unit = CachingAllocator::kMinBlockSize;
  return (bytes + unit - 1) / unit * unit;
}

// The segment requested from the device when no cached block fits `size` (already rounded).
std::size_t segment_size(std::size_t size) {
  if (size <= CachingAllocator::kSmallSize) return CachingAllocator::kSmallBuffer;
  if (size < CachingAllocator::kMinLargeAlloc) return CachingAllocator::kLargeBuffer;
  const std::size_t unit = CachingAllocator::kRoundLarge;
  return (size + unit - 1) / unit * unit;
}

char* byte_ptr(void* ptr) { return static_cast<char*>(ptr); }

}  // namespace

std::string format_bytes(std::size_t bytes) {
  if (bytes < 1024) return std::to_string(bytes) + " B";
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double value = static_cast<double>(bytes) / 1024.0;
  std::size_t unit = 0;
  while (value >= 1024.0 && unit + 1 < std::size(kUnits)) {
    value /= 1024.0;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof(text), "%.2f %s", value, kUnits[unit]);
  return text;
}

bool CachingAllocator::BlockOrder::operator()(const Block* a, const Block* b) const {
  if (a->stream != b->stream) return a->stream < b->stream;
  if (a->size != b->size) return a->size < b->size;
  return reinterpret_cast<std::uintptr_t>(a->ptr) < reinterpret_cast<std::uintptr_t>(b->ptr);
}

CachingAllocator::CachingAllocator(RawDeviceMemory& raw, std::string device_name)
    : raw_(raw), device_name_(std::move(device_name)) {}

CachingAllocator::~CachingAllocator() {
  // A destructor must not throw; a device error at this point has nowhere useful to go.
  try {
    for (const auto& [event, block] : pending_events_) raw_.destroy_event(event);
    release_cached_segments();
  } catch (...) {
  }
  // What is left belongs to segments still in use: their device memory is leaked on purpose
  // (see the header), only the bookkeeping goes.
  std::unordered_set<Block*> blocks;
  for (BlockPool* pool : {&small_pool_, &large_pool_}) blocks.insert(pool->begin(), pool->end());
  for (const auto& [ptr, block] : active_) blocks.insert(block);
  for (const auto& [event, block] : pending_events_) blocks.insert(block);
  for (Block* block : blocks) delete block;
}

void* CachingAllocator::allocate(std::size_t bytes, StreamId stream) {
  if (bytes == 0) return nullptr;
  std::lock_guard<std::mutex> lock(mutex_);
  // Far beyond any device; also keeps the rounding below from overflowing.
  KILN_CHECK(bytes <= std::numeric_limits<std::size_t>::max() / 2, "allocation of ", bytes,
             " bytes on ", device_name_, " is impossibly large (a size computation overflowed?)");
  process_events();

  const std::size_t size = round_size(bytes);
  BlockPool& pool = size <= kSmallSize ? small_pool_ : large_pool_;
  Block* block = take_free_block(pool, stream, size);
  if (block == nullptr) block = new_segment(pool, stream, segment_size(size));
  if (block == nullptr) {
    // The device may be full of our own cached segments: give them back and try once more.
    release_cached_segments();
    block = new_segment(pool, stream, segment_size(size));
  }
  if (block == nullptr) throw_oom(bytes, segment_size(size));

  split(block, size);
  block->allocated = true;
  active_.emplace(block->ptr, block);
  stats_.allocated_bytes += block->size;
  stats_.peak_allocated_bytes = std::max(stats_.peak_allocated_bytes, stats_.allocated_bytes);
  ++stats_.num_allocs;
  return block->ptr;
}

void CachingAllocator::free(void* ptr) {
  if (ptr == nullptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = active_.find(ptr);
  KILN_CHECK(it != active_.end(), "free of ", ptr, " on ", device_name_,
             ": not allocated by this caching allocator, or already freed");
  Block* block = it->second;
  active_.erase(it);
  block->allocated = false;
  stats_.allocated_bytes -= block->size;
  ++stats_.num_frees;

  if (block->stream_uses.empty()) {
    return_to_pool(block);
    return;
  }
  // Work queued on the other streams may still touch the block: it becomes reusable once
  // everything queued there up to now is done.
  for (StreamId stream : block->stream_uses) {
    pending_events_.emplace_back(raw_.record_event(stream), block);
    ++block->pending_events;
  }
  block->stream_uses.clear();
}

void CachingAllocator::record_stream(void* ptr, StreamId stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = active_.find(ptr);
  KILN_CHECK(it != active_.end(), "record_stream of ", ptr, " on ", device_name_,
             ": not allocated by this caching allocator, or already freed");
  Block* block = it->second;
  // The allocation stream needs no event: its own later work is ordered after the block's uses.
  if (stream != block->stream) block->stream_uses.insert(stream);
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mutex_);
  process_events();
  release_cached_segments();
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void CachingAllocator::reset_peak_stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.peak_allocated_bytes = stats_.allocated_bytes;
  stats_.peak_reserved_bytes = stats_.reserved_bytes;
}

std::string CachingAllocator::stats_string() const {
  const AllocatorStats s = stats();
  return detail::str_cat(device_name_, " caching allocator: allocated ",
                         format_bytes(s.allocated_bytes), " (peak ",
                         format_bytes(s.peak_allocated_bytes), "), reserved ",
                         format_bytes(s.reserved_bytes), " (peak ",
                         format_bytes(s.peak_reserved_bytes), ") in ", s.num_segments,
                         " segments; ", s.num_allocs, " allocs, ", s.num_frees, " frees, ",
                         s.num_ooms, " OOMs");
}

CachingAllocator::Block* CachingAllocator::take_free_block(BlockPool& pool, StreamId stream,
                                                           std::size_t size) {
  Block key;
  key.stream = stream;
  key.size = size;
  auto it = pool.lower_bound(&key);
  if (it == pool.end() || (*it)->stream != stream) return nullptr;
  Block* block = *it;
  pool.erase(it);
  return block;
}

// nullptr when the device has no room.
CachingAllocator::Block* CachingAllocator::new_segment(BlockPool& pool, StreamId stream,
                                                       std::size_t size) {
  void* ptr = raw_.malloc(size);
  if (ptr == nullptr) return nullptr;
  stats_.reserved_bytes += size;
  stats_.peak_reserved_bytes = std::max(stats_.peak_reserved_bytes, stats_.reserved_bytes);
  ++stats_.num_segments;
  Block* block = new Block;
  block->stream = stream;
  block->size = size;
  block->ptr = ptr;
  block->pool = &pool;
  return block;
}

// Keeps the first `size` bytes in `block` and puts the rest back in the pool, when the rest is
// worth keeping. In the large pool a rest of 1 MiB or less stays attached: it could only serve
// small requests, which never come from this pool.
void CachingAllocator::split(Block* block, std::size_t size) {
  const std::size_t rest_size = block->size - size;
  const bool worth_it =
      block->pool == &small_pool_ ? rest_size >= kMinBlockSize : rest_size > kSmallSize;
  if (!worth_it) return;

  Block* rest = new Block;
  rest->stream = block->stream;
  rest->size = rest_size;
  rest->ptr = byte_ptr(block->ptr) + size;
  rest->pool = block->pool;
  rest->prev = block;
  rest->next = block->next;
  if (block->next != nullptr) block->next->prev = rest;
  block->next = rest;
  block->size = size;
  block->pool->insert(rest);
}

// `block` is free and waits on no event.
void CachingAllocator::return_to_pool(Block* block) {
  merge_neighbour(block, block->prev);
  merge_neighbour(block, block->next);
  block->pool->insert(block);
}

// Absorbs `neighbour` into `block` when it is free too. A free neighbour that waits on no event is
// in the pool, and must leave it before its key changes.
void CachingAllocator::merge_neighbour(Block* block, Block* neighbour) {
  if (neighbour == nullptr || neighbour->allocated || neighbour->pending_events > 0) return;
  const std::size_t erased = block->pool->erase(neighbour);
  KILN_CHECK(erased == 1, "caching allocator on ", device_name_, ": free block ", neighbour->ptr,
             " missing from its pool (bookkeeping bug)");
  if (neighbour == block->prev) {
    block->ptr = neighbour->ptr;
    block->prev = neighbour->prev;
    if (block->prev != nullptr) block->prev->next = block;
  } else {
    block->next = neighbour->next;
    if (block->next != nullptr) block->next->prev = block;
  }
  block->size += neighbour->size;
  delete neighbour;
}

// Returns to the pool the blocks whose streams have caught up. Streams are independent, so every
// pending event is queried rather than stopping at the first one not done.
void CachingAllocator::process_events() {
  std::erase_if(pending_events_, [this](const std::pair<EventId, Block*>& pending) {
    const auto& [event, block] = pending;
    if (!raw_.event_done(event)) return false;
    raw_.destroy_event(event);
    if (--block->pending_events == 0) return_to_pool(block);
    return true;
  });
}

void CachingAllocator::release_cached_segments() {
  for (BlockPool* pool : {&small_pool_, &large_pool_}) {
    for (auto it = pool->begin(); it != pool->end();) {
      Block* block = *it;
      if (!block->is_whole_segment()) {
        ++it;
        continue;
      }
      raw_.free(block->ptr);
      stats_.reserved_bytes -= block->size;
      --stats_.num_segments;
      it = pool->erase(it);
      delete block;
    }
  }
}

void CachingAllocator::throw_oom(std::size_t requested, std::size_t segment_size) {
  ++stats_.num_ooms;
  // A small request can fail for want of a whole segment; say so, or the numbers look wrong.
  const std::string segment_note =
      segment_size > round_size(requested)
          ? detail::str_cat(" (as part of a ", format_bytes(segment_size), " segment)")
          : std::string();
  KILN_FAIL("CUDA out of memory on ", device_name_, ": tried to allocate ",
            format_bytes(requested), segment_note, "; allocated ",
            format_bytes(stats_.allocated_bytes), ", reserved ",
            format_bytes(stats_.reserved_bytes),
            " (peak allocated ", format_bytes(stats_.peak_allocated_bytes), ", peak reserved ",
            format_bytes(stats_.peak_reserved_bytes), "), ", active_.size(), " allocations, ",
            stats_.num_ooms, " OOMs");
}

}  // namespace kiln
