// The caching allocator's policy, driven through a fake device: no GPU needed.
#include "core/caching_allocator.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"

namespace kiln {
namespace {

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;
constexpr std::size_t GiB = 1024 * MiB;

constexpr StreamId kStream1 = 0x1000;
constexpr StreamId kStream2 = 0x2000;

// A device with a byte budget. Addresses are fake (nothing is dereferenced) and far apart, so
// segments can never look adjacent. Events stay pending until the test completes them.
class FakeDevice : public RawDeviceMemory {
 public:
  explicit FakeDevice(std::size_t budget = 64 * GiB) : budget_(budget) {}

  void* malloc(std::size_t bytes) override {
    if (used_ + bytes > budget_) return nullptr;
    ++mallocs;
    last_malloc_size = bytes;
    used_ += bytes;
    void* ptr = reinterpret_cast<void*>(next_address_);
    next_address_ += bytes + GiB;
    segments_[ptr] = bytes;
    return ptr;
  }
  void free(void* ptr) override {
    auto it = segments_.find(ptr);
    ASSERT_NE(it, segments_.end()) << "raw free of an address the fake device never gave out";
    ++frees;
    used_ -= it->second;
    segments_.erase(it);
  }
  EventId record_event(StreamId stream) override {
    const EventId event = next_event_++;
    events_[event] = {stream, false};
    return event;
  }
  bool event_done(EventId event) override { return events_.at(event).done; }
  void destroy_event(EventId event) override { EXPECT_EQ(events_.erase(event), 1u); }

  void complete_events_on(StreamId stream) {
    for (auto& [id, event] : events_)
      if (event.stream == stream) event.done = true;
  }
  std::size_t live_events() const { return events_.size(); }
  std::size_t used() const { return used_; }

  int mallocs = 0;
  int frees = 0;
  std::size_t last_malloc_size = 0;

 private:
  struct Event {
    StreamId stream;
    bool done;
  };
  std::size_t budget_;
  std::size_t used_ = 0;
  std::uintptr_t next_address_ = std::uintptr_t{1} << 40;
  std::map<void*, std::size_t> segments_;
  EventId next_event_ = 1;
  std::map<EventId, Event> events_;
};

char* at(void* ptr, std::size_t offset) { return static_cast<char*>(ptr) + offset; }

TEST(CachingAllocator, FormatsBytesForHumans) {
  EXPECT_EQ(format_bytes(0), "0 B");
  EXPECT_EQ(format_bytes(512), "512 B");
  EXPECT_EQ(format_bytes(1536), "1.50 KiB");
  EXPECT_EQ(format_bytes(20 * MiB), "20.00 MiB");
  EXPECT_EQ(format_bytes(2 * GiB), "2.00 GiB");
  EXPECT_EQ(format_bytes(std::size_t{1} << 50), "1.00 PiB");
}

TEST(CachingAllocator, RoundsRequestsUpTo512Bytes) {
  FakeDevice device;
  CachingAllocator allocator(device);
  EXPECT_EQ(allocator.allocate(0, 0), nullptr);
  EXPECT_EQ(allocator.stats().num_allocs, 0u);

  void* a = allocator.allocate(1, 0);
  EXPECT_EQ(allocator.stats().allocated_bytes, 512u);
  void* b = allocator.allocate(513, 0);
  EXPECT_EQ(allocator.stats().allocated_bytes, 512u + 1024u);
  EXPECT_EQ(b, at(a, 512)) << "the second block starts where the rounded first one ends";
  void* c = allocator.allocate(1024, 0);
  EXPECT_EQ(allocator.stats().allocated_bytes, 512u + 1024u + 1024u);
  EXPECT_EQ(c, at(b, 1024));
}

TEST(CachingAllocator, SmallRequestsShareTwoMiBSegments) {
  FakeDevice device;
  CachingAllocator allocator(device);
  allocator.allocate(1000, 0);
  EXPECT_EQ(device.mallocs, 1);
  EXPECT_EQ(device.last_malloc_size, 2 * MiB);
  allocator.allocate(1 * MiB, 0);  // the largest small request still fits the same segment
  EXPECT_EQ(device.mallocs, 1);
  allocator.allocate(1 * MiB, 0);  // 1024 + 1 MiB used: no room left for another 1 MiB
  EXPECT_EQ(device.mallocs, 2);
  EXPECT_EQ(device.last_malloc_size, 2 * MiB);
  EXPECT_EQ(allocator.stats().reserved_bytes, 4 * MiB);
  EXPECT_EQ(allocator.stats().num_segments, 2u);
}

TEST(CachingAllocator, LargeRequestsBelowTenMiBShareTwentyMiBSegments) {
  FakeDevice device;
  CachingAllocator allocator(device);
  void* a = allocator.allocate(1 * MiB + 1, 0);  // just past the small pool
  EXPECT_EQ(device.last_malloc_size, 20 * MiB);
  void* b = allocator.allocate(8 * MiB, 0);
  EXPECT_EQ(device.mallocs, 1);
  EXPECT_EQ(b, at(a, 1 * MiB + 512));
}

TEST(CachingAllocator, RequestsFromTenMiBGetTheirOwnSegmentRoundedTo2MiB) {
  FakeDevice device;
  CachingAllocator allocator(device);
  allocator.allocate(10 * MiB, 0);
  EXPECT_EQ(device.last_malloc_size, 10 * MiB);
  allocator.allocate(11 * MiB, 0);
  EXPECT_EQ(device.last_malloc_size, 12 * MiB);
  // The 1 MiB left over is too small to split off in the large pool: it stays in the block.
  EXPECT_EQ(allocator.stats().allocated_bytes, 22 * MiB);
  allocator.allocate(12 * MiB + 1, 0);
  EXPECT_EQ(device.last_malloc_size, 14 * MiB);
  EXPECT_EQ(device.mallocs, 3);
}

TEST(CachingAllocator, SplitRemainderServesTheNextRequest) {
  FakeDevice device;
  CachingAllocator allocator(device);
  void* a = allocator.allocate(4096, 0);
  void* b = allocator.allocate(4096, 0);
  EXPECT_EQ(b, at(a, 4096));
  EXPECT_EQ(device.mallocs, 1);
  // Freed, a's block is the best fit for an equal request, ahead of the big remainder.
  allocator.free(a);
  EXPECT_EQ(allocator.allocate(4000, 0), a);
  EXPECT_EQ(device.mallocs, 1);
}

TEST(CachingAllocator, FreedNeighboursMergeBackIntoTheWholeSegment) {
  FakeDevice device;
  CachingAllocator allocator(device);
  void* a = allocator.allocate(4 * MiB, 0);
  void* b = allocator.allocate(4 * MiB, 0);
  void* c = allocator.allocate(4 * MiB, 0);
  ASSERT_EQ(device.mallocs, 1);
  // Middle first (no free neighbour yet), then each side.
  allocator.free(b);
  allocator.free(a);
  allocator.free(c);
  EXPECT_EQ(allocator.allocate(20 * MiB, 0), a) << "the whole 20 MiB segment in one block";
  EXPECT_EQ(device.mallocs, 1);
}

TEST(CachingAllocator, MergeWorksInTheSmallPoolToo) {
  FakeDevice device;
  CachingAllocator allocator(device);
  std::vector<void*> quarters;
  for (int i = 0; i < 4; ++i) quarters.push_back(allocator.allocate(512 * KiB, 0));
  ASSERT_EQ(device.mallocs, 1) << "four quarters fill one 2 MiB segment exactly";
  for (int i : {2, 0, 3, 1}) allocator.free(quarters[i]);
  // Two 1 MiB halves need the quarters merged back together.
  void* first = allocator.allocate(1 * MiB, 0);
  void* second = allocator.allocate(1 * MiB, 0);
  EXPECT_EQ(first, quarters[0]);
  EXPECT_EQ(second, quarters[2]);
  EXPECT_EQ(device.mallocs, 1);
}

TEST(CachingAllocator, BlocksAreNotReusedAcrossStreams) {
  FakeDevice device;
  CachingAllocator allocator(device);
  void* a = allocator.allocate(4096, kStream1);
  allocator.free(a);
  void* b = allocator.allocate(4096, kStream2);
  EXPECT_NE(b, a);
  EXPECT_EQ(device.mallocs, 2) << "stream 2 gets a segment of its own";
  EXPECT_EQ(allocator.allocate(4096, kStream1), a);
  EXPECT_EQ(device.mallocs, 2);
}

TEST(CachingAllocator, RecordStreamDelaysReuseUntilTheEventIsDone) {
  FakeDevice device;
  CachingAllocator allocator(device);
  void* a = allocator.allocate(4096, kStream1);
  allocator.record_stream(a, kStream1);  // the allocation stream itself needs no event
  allocator.record_stream(a, kStream2);
  allocator.free(a);
  EXPECT_EQ(device.live_events(), 1u);
  EXPECT_EQ(allocator.stats().allocated_bytes, 0u) << "freed for the caller's accounting";

  void* b = allocator.allocate(4096, kStream1);
  EXPECT_NE(b, a) << "stream 2 may still be using a";
  allocator.free(b);

  device.complete_events_on(kStream2);
  EXPECT_EQ(allocator.allocate(4096, kStream1), a);
  EXPECT_EQ(device.live_events(), 0u) << "completed events are destroyed";
  EXPECT_EQ(device.mallocs, 1);
}

TEST(CachingAllocator, BlockUsedByTwoStreamsWaitsForBoth) {
  FakeDevice device;
  CachingAllocator allocator(device);
  void* a = allocator.allocate(20 * MiB, kStream1);
  allocator.record_stream(a, kStream2);
  allocator.record_stream(a, 0);
  allocator.free(a);
  EXPECT_EQ(device.live_events(), 2u);

  device.complete_events_on(kStream2);
  void* b = allocator.allocate(20 * MiB, kStream1);
  EXPECT_NE(b, a) << "the default stream has not caught up yet";
  device.complete_events_on(0);
  EXPECT_EQ(allocator.allocate(20 * MiB, kStream1), a);
}

TEST(CachingAllocator, EmptyCacheReleasesOnlyFullyFreeSegments) {
  FakeDevice device;
  CachingAllocator allocator(device);
  void* kept = allocator.allocate(4096, 0);  // keeps a 2 MiB small segment in use
  void* dropped = allocator.allocate(8 * MiB, 0);  // a 20 MiB segment, about to be all free
  allocator.free(dropped);
  ASSERT_EQ(allocator.stats().reserved_bytes, 22 * MiB);

  allocator.empty_cache();
  EXPECT_EQ(device.frees, 1);
  EXPECT_EQ(allocator.stats().reserved_bytes, 2 * MiB);
  EXPECT_EQ(allocator.stats().num_segments, 1u);
  EXPECT_EQ(device.used(), 2 * MiB);

  allocator.free(kept);
  allocator.empty_cache();
  EXPECT_EQ(device.frees, 2);
  EXPECT_EQ(allocator.stats().reserved_bytes, 0u);
  EXPECT_EQ(allocator.stats().num_segments, 0u);
  EXPECT_EQ(device.used(), 0u);
}

TEST(CachingAllocator, EmptyCacheKeepsBlocksStillWaitingOnEvents) {
  FakeDevice device;
  CachingAllocator allocator(device);
  void* a = allocator.allocate(4096, kStream1);
  allocator.record_stream(a, kStream2);
  allocator.free(a);
  allocator.empty_cache();
  EXPECT_EQ(device.frees, 0);
  device.complete_events_on(kStream2);
  allocator.empty_cache();
  EXPECT_EQ(device.frees, 1);
  EXPECT_EQ(allocator.stats().reserved_bytes, 0u);
}

TEST(CachingAllocator, StatsAreExact) {
  FakeDevice device;
  CachingAllocator allocator(device);
  void* a = allocator.allocate(1000, 0);         // 1024 in a 2 MiB segment
  void* b = allocator.allocate(3 * MiB, 0);      // 3 MiB in a 20 MiB segment
  // On another stream, so not from b's 17 MiB remainder: a 16 MiB segment of its own, whose
  // 1 MiB - 512 left over is not worth splitting off, so the block is the whole segment.
  void* c = allocator.allocate(15 * MiB + 1, kStream1);
  AllocatorStats s = allocator.stats();
  EXPECT_EQ(s.allocated_bytes, 1024 + 3 * MiB + 16 * MiB);
  EXPECT_EQ(s.reserved_bytes, 2 * MiB + 20 * MiB + 16 * MiB);
  EXPECT_EQ(s.num_allocs, 3u);
  EXPECT_EQ(s.num_segments, 3u);

  allocator.free(c);
  allocator.free(b);
  s = allocator.stats();
  EXPECT_EQ(s.allocated_bytes, 1024u);
  EXPECT_EQ(s.reserved_bytes, 38 * MiB) << "freed blocks stay reserved";
  EXPECT_EQ(s.peak_allocated_bytes, 1024 + 3 * MiB + 16 * MiB);
  EXPECT_EQ(s.peak_reserved_bytes, 38 * MiB);
  EXPECT_EQ(s.num_frees, 2u);

  allocator.empty_cache();
  allocator.reset_peak_stats();
  s = allocator.stats();
  EXPECT_EQ(s.reserved_bytes, 2 * MiB);
  EXPECT_EQ(s.peak_allocated_bytes, 1024u);
  EXPECT_EQ(s.peak_reserved_bytes, 2 * MiB);
  EXPECT_EQ(s.num_allocs, 3u) << "counters are not peaks and are not reset";

  allocator.free(a);
  EXPECT_EQ(allocator.stats().allocated_bytes, 0u);
  EXPECT_EQ(allocator.stats().num_frees, 3u);
  const std::string text = allocator.stats_string();
  EXPECT_NE(text.find("cuda:0"), std::string::npos) << text;
  EXPECT_NE(text.find("reserved 2.00 MiB"), std::string::npos) << text;
}

TEST(CachingAllocator, OutOfMemoryEmptiesTheCacheAndRetries) {
  FakeDevice device(40 * MiB);
  CachingAllocator allocator(device);
  allocator.free(allocator.allocate(30 * MiB, kStream1));  // 30 MiB now cached for stream 1
  void* a = allocator.allocate(12 * MiB, kStream2);         // needs 12 MiB more than is left
  EXPECT_NE(a, nullptr);
  EXPECT_EQ(device.frees, 1) << "the cached segment went back to the device";
  EXPECT_EQ(allocator.stats().reserved_bytes, 12 * MiB);
  EXPECT_EQ(allocator.stats().num_ooms, 0u);
}

TEST(CachingAllocator, OutOfMemoryThrowsWithTheStatistics) {
  FakeDevice device(32 * MiB);
  CachingAllocator allocator(device);
  void* held = allocator.allocate(16 * MiB, 0);
  try {
    allocator.allocate(2 * GiB, 0);
    FAIL() << "2 GiB cannot fit a 32 MiB device";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("out of memory on cuda:0"), std::string::npos) << message;
    EXPECT_NE(message.find("tried to allocate 2.00 GiB"), std::string::npos) << message;
    EXPECT_NE(message.find("allocated 16.00 MiB"), std::string::npos) << message;
    EXPECT_NE(message.find("reserved 16.00 MiB"), std::string::npos) << message;
    EXPECT_NE(message.find("1 OOMs"), std::string::npos) << message;
  }
  EXPECT_EQ(allocator.stats().num_ooms, 1u);
  EXPECT_EQ(allocator.stats().num_allocs, 1u);
  EXPECT_THROW(allocator.allocate(17 * MiB, 0), Error);
  EXPECT_EQ(allocator.stats().num_ooms, 2u);

  // The allocator is still usable afterwards.
  allocator.free(held);
  EXPECT_NE(allocator.allocate(16 * MiB, 0), nullptr);
}

TEST(CachingAllocator, OutOfMemoryNamesTheSegmentASmallRequestNeeded) {
  FakeDevice device(1 * MiB);
  CachingAllocator allocator(device, "cuda:3");
  try {
    allocator.allocate(4096, 0);
    FAIL() << "a 2 MiB segment cannot fit a 1 MiB device";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("cuda:3"), std::string::npos) << message;
    EXPECT_NE(message.find("4.00 KiB"), std::string::npos) << message;
    EXPECT_NE(message.find("2.00 MiB segment"), std::string::npos) << message;
  }
}

TEST(CachingAllocator, FreeingAnUnknownPointerThrows) {
  FakeDevice device;
  CachingAllocator allocator(device);
  int not_device_memory = 0;
  EXPECT_THROW(allocator.free(&not_device_memory), Error);
  EXPECT_THROW(allocator.record_stream(&not_device_memory, kStream1), Error);
  EXPECT_NO_THROW(allocator.free(nullptr));

  void* a = allocator.allocate(4096, 0);
  void* b = allocator.allocate(4096, 0);
  EXPECT_THROW(allocator.free(at(a, 512)), Error) << "an interior pointer is not an allocation";
  allocator.free(a);
  EXPECT_THROW(allocator.free(a), Error) << "double free";
  EXPECT_EQ(allocator.stats().num_frees, 1u);
  allocator.free(b);
}

TEST(CachingAllocator, DestructorReturnsCachedSegmentsAndEvents) {
  FakeDevice device;
  {
    CachingAllocator allocator(device);
    allocator.free(allocator.allocate(4096, 0));
    allocator.free(allocator.allocate(30 * MiB, 0));
    void* waiting = allocator.allocate(4096, kStream1);
    allocator.record_stream(waiting, kStream2);
    allocator.free(waiting);
  }
  EXPECT_EQ(device.frees, 2) << "the stream-1 segment may still be in use on stream 2";
  EXPECT_EQ(device.live_events(), 0u);
}

TEST(CachingAllocator, ConcurrentAllocateAndFreeKeepTheBooksBalanced) {
  FakeDevice device;
  CachingAllocator allocator(device);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&allocator, t] {
      std::mt19937 rng(t);
      std::uniform_int_distribution<std::size_t> size(1, 24 * MiB);
      std::vector<void*> live;
      for (int i = 0; i < 2000; ++i) {
        if (live.size() < 8 && rng() % 2 == 0) {
          live.push_back(allocator.allocate(size(rng), static_cast<StreamId>(t % 2)));
        } else if (!live.empty()) {
          allocator.free(live.back());
          live.pop_back();
        }
      }
      for (void* ptr : live) allocator.free(ptr);
    });
  }
  for (std::thread& thread : threads) thread.join();
  const AllocatorStats s = allocator.stats();
  EXPECT_EQ(s.allocated_bytes, 0u);
  EXPECT_EQ(s.num_allocs, s.num_frees);
  allocator.empty_cache();
  EXPECT_EQ(allocator.stats().reserved_bytes, 0u) << "everything merged back into whole segments";
  EXPECT_EQ(device.used(), 0u);
}

}  // namespace
}  // namespace kiln
