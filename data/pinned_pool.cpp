#include "data/pinned_pool.h"

#include <utility>

#include "core/error.h"

namespace kiln {

PinnedBufferPool::~PinnedBufferPool() {
  for (auto& [ptr, buffer] : buffers_) {
    if (buffer.in_use) continue;
    for (EventId event : buffer.events) {
      memory_.wait_event(event);
      memory_.destroy_event(event);
    }
    memory_.free(ptr);
  }
}

bool PinnedBufferPool::copies_done(Buffer& buffer) {
  std::erase_if(buffer.events, [&](EventId event) {
    if (!memory_.event_done(event)) return false;
    memory_.destroy_event(event);
    return true;
  });
  return buffer.events.empty();
}

void* PinnedBufferPool::allocate(std::size_t bytes) {
  std::unique_lock<std::mutex> lock(mutex_);
  void* best = nullptr;     // the smallest free buffer that fits and is no longer read
  void* oldest = nullptr;   // the longest-freed buffer that fits but may still be read
  int pending = 0;
  for (auto& [ptr, buffer] : buffers_) {
    if (buffer.in_use || buffer.bytes < bytes) continue;
    if (copies_done(buffer)) {
      if (!best || buffer.bytes < buffers_.at(best).bytes) best = ptr;
    } else {
      ++pending;
      if (!oldest || buffer.freed_at < buffers_.at(oldest).freed_at) oldest = ptr;
    }
  }
  if (best) {
    buffers_.at(best).in_use = true;
    return best;
  }
  if (pending >= kMaxPending) {
    // The pool is exhausted: wait for the oldest copy rather than pin ever more memory. The
    // buffer is ours once marked in use, so the wait can run without the lock.
    Buffer& buffer = buffers_.at(oldest);
    buffer.in_use = true;
    std::vector<EventId> events = std::move(buffer.events);
    buffer.events.clear();
    ++waits_;
    lock.unlock();
    for (EventId event : events) {
      memory_.wait_event(event);
      memory_.destroy_event(event);
    }
    return oldest;
  }
  lock.unlock();
  void* ptr = memory_.malloc(bytes);  // slow (it pins pages), so outside the lock
  lock.lock();
  Buffer& buffer = buffers_[ptr];
  buffer.bytes = bytes;
  buffer.in_use = true;
  return ptr;
}

void PinnedBufferPool::deallocate(void* ptr) {
  if (!ptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = buffers_.find(ptr);
  KILN_CHECK(it != buffers_.end() && it->second.in_use, "PinnedBufferPool: ", ptr,
             " is not a pinned buffer in use");
  it->second.in_use = false;
  it->second.freed_at = ++frees_;
}

bool PinnedBufferPool::record_use(void* ptr, int device, StreamId stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = buffers_.find(ptr);
  if (it == buffers_.end()) return false;
  KILN_CHECK(it->second.in_use, "PinnedBufferPool: record_use of ", ptr, ", a buffer already freed");
  it->second.events.push_back(memory_.record_event(device, stream));
  return true;
}

PinnedBufferPool::Stats PinnedBufferPool::stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  Stats s;
  s.waits = waits_;
  for (auto& [ptr, buffer] : buffers_) {
    ++s.buffers;
    s.pinned_bytes += buffer.bytes;
    if (buffer.in_use) ++s.in_use;
    else if (!copies_done(buffer)) ++s.pending;
  }
  return s;
}

}  // namespace kiln
