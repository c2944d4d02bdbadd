// The pinned batch-buffer pool's policy, driven through a fake CUDA runtime: no GPU needed.
#include "data/pinned_pool.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <set>
#include <vector>

#include "core/error.h"

namespace kiln {
namespace {

constexpr StreamId kStream = 0x1000;

// Fake host memory and events. Addresses are never dereferenced; events stay pending until the
// test completes them (or the pool waits for them, which completes them).
class FakePinnedMemory : public PinnedMemory {
 public:
  void* malloc(std::size_t bytes) override {
    void* ptr = reinterpret_cast<void*>(next_address_);
    next_address_ += bytes + 4096;
    live[ptr] = bytes;
    ++mallocs;
    return ptr;
  }
  void free(void* ptr) override {
    ASSERT_EQ(live.erase(ptr), 1u) << "free of " << ptr;
  }
  EventId record_event(int device, StreamId stream) override {
    EXPECT_EQ(stream, kStream);
    last_device = device;
    const EventId event = next_event_++;
    pending.insert(event);
    return event;
  }
  bool event_done(EventId event) override { return !pending.count(event); }
  void wait_event(EventId event) override {
    waited.push_back(event);
    pending.erase(event);
  }
  void destroy_event(EventId event) override { ++destroyed; pending.erase(event); }

  void complete_all() { pending.clear(); }

  std::map<void*, std::size_t> live;  // buffers allocated and not freed
  std::set<EventId> pending;
  std::vector<EventId> waited;
  int mallocs = 0;
  int destroyed = 0;
  int last_device = -1;

 private:
  std::uintptr_t next_address_ = 0x10000;
  EventId next_event_ = 1;
};

TEST(PinnedBufferPool, BufferFreedWithoutACopyIsReusedAtOnce) {
  FakePinnedMemory memory;
  PinnedBufferPool pool(memory);
  void* a = pool.allocate(1000);
  pool.deallocate(a);
  EXPECT_EQ(pool.allocate(1000), a);
  EXPECT_EQ(memory.mallocs, 1);
}

TEST(PinnedBufferPool, BufferIsNotReusedWhileItsCopyRuns) {
  FakePinnedMemory memory;
  PinnedBufferPool pool(memory);
  void* a = pool.allocate(1000);
  EXPECT_TRUE(pool.record_use(a, 1, kStream));
  EXPECT_EQ(memory.last_device, 1);
  pool.deallocate(a);  // the copy is still queued: the buffer must not be written

  void* b = pool.allocate(1000);
  EXPECT_NE(b, a);
  EXPECT_EQ(memory.mallocs, 2);
  EXPECT_TRUE(memory.waited.empty()) << "allocate waited although the pool was not exhausted";
  EXPECT_EQ(pool.stats().pending, 1u);

  memory.complete_all();
  EXPECT_EQ(pool.allocate(1000), a);  // its copy is done now
  EXPECT_EQ(memory.mallocs, 2);
  EXPECT_EQ(memory.destroyed, 1);     // the completed event is released
}

TEST(PinnedBufferPool, EveryRecordedCopyMustFinish) {
  FakePinnedMemory memory;
  PinnedBufferPool pool(memory);
  void* a = pool.allocate(64);
  pool.record_use(a, 0, kStream);
  pool.record_use(a, 0, kStream);
  pool.deallocate(a);
  memory.pending.erase(*memory.pending.begin());  // the first copy is done, the second is not
  EXPECT_NE(pool.allocate(64), a);
  memory.complete_all();
  EXPECT_EQ(pool.allocate(64), a);
}

TEST(PinnedBufferPool, SmallestFreeBufferThatFitsIsChosen) {
  FakePinnedMemory memory;
  PinnedBufferPool pool(memory);
  void* small = pool.allocate(100);
  void* medium = pool.allocate(500);
  void* large = pool.allocate(2000);
  pool.deallocate(small);
  pool.deallocate(large);
  pool.deallocate(medium);
  EXPECT_EQ(pool.allocate(400), medium);
  EXPECT_EQ(pool.allocate(400), large);
  void* fresh = pool.allocate(400);  // only the 100-byte buffer is free, too small
  EXPECT_NE(fresh, small);
  EXPECT_EQ(memory.live.at(fresh), 400u);
  EXPECT_EQ(memory.mallocs, 4);
}

TEST(PinnedBufferPool, ExhaustedPoolWaitsForTheOldestCopyInsteadOfPinningMore) {
  FakePinnedMemory memory;
  PinnedBufferPool pool(memory);
  std::vector<void*> freed;
  for (int i = 0; i < PinnedBufferPool::kMaxPending; ++i) {
    void* p = pool.allocate(256);
    pool.record_use(p, 0, kStream);
    freed.push_back(p);
  }
  for (void* p : freed) pool.deallocate(p);  // freed in allocation order: freed[0] is the oldest
  const int mallocs = memory.mallocs;

  void* reused = pool.allocate(256);
  EXPECT_EQ(reused, freed.front());
  EXPECT_EQ(memory.mallocs, mallocs);
  ASSERT_EQ(memory.waited.size(), 1u);
  EXPECT_EQ(pool.stats().waits, 1u);
  EXPECT_EQ(pool.stats().pending, static_cast<std::size_t>(PinnedBufferPool::kMaxPending - 1));
  EXPECT_EQ(pool.stats().in_use, 1u);
}

TEST(PinnedBufferPool, PendingBuffersTooSmallDoNotCountTowardsExhaustion) {
  FakePinnedMemory memory;
  PinnedBufferPool pool(memory);
  for (int i = 0; i < PinnedBufferPool::kMaxPending; ++i) {
    void* p = pool.allocate(64);
    pool.record_use(p, 0, kStream);
    pool.deallocate(p);
  }
  void* big = pool.allocate(4096);  // none of the pending buffers could serve it: pin a new one
  EXPECT_EQ(memory.live.at(big), 4096u);
  EXPECT_TRUE(memory.waited.empty());
}

TEST(PinnedBufferPool, ForeignPointersAreRejected) {
  FakePinnedMemory memory;
  PinnedBufferPool pool(memory);
  int not_pooled = 0;
  EXPECT_FALSE(pool.record_use(&not_pooled, 0, kStream));
  EXPECT_TRUE(memory.pending.empty());
  EXPECT_THROW(pool.deallocate(&not_pooled), Error);
  void* a = pool.allocate(8);
  pool.deallocate(a);
  EXPECT_THROW(pool.deallocate(a), Error);            // freed twice
  EXPECT_THROW(pool.record_use(a, 0, kStream), Error);  // a copy from a freed buffer
  pool.deallocate(nullptr);                           // ignored, as free(nullptr)
}

TEST(PinnedBufferPool, DestructorWaitsForCopiesAndFreesOnlyIdleBuffers) {
  FakePinnedMemory memory;
  void* held = nullptr;
  {
    PinnedBufferPool pool(memory);
    void* copied = pool.allocate(128);
    pool.record_use(copied, 0, kStream);
    pool.deallocate(copied);
    held = pool.allocate(128);  // never freed: the pool must not free it under its owner
    EXPECT_NE(held, copied);
  }
  EXPECT_EQ(memory.waited.size(), 1u);
  ASSERT_EQ(memory.live.size(), 1u);
  EXPECT_EQ(memory.live.begin()->first, held);
}

}  // namespace
}  // namespace kiln
