// The caching allocator on a real CUDA device. Skips when the build has no CUDA or the machine has
// no GPU; the policy itself is tested without a GPU in test_caching_allocator.cpp.
#include <gtest/gtest.h>

#ifdef KILN_WITH_CUDA

#include <cuda_runtime.h>

#include <atomic>
#include <string>
#include <vector>

#include "core/cuda_allocator.h"
#include "core/cuda_check.h"
#include "core/error.h"

namespace kiln {
namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;

bool have_cuda_device() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver: not an error for the tests that follow
    return false;
  }
  return count > 0;
}

#define SKIP_WITHOUT_CUDA_DEVICE() \
  if (!have_cuda_device()) GTEST_SKIP() << "no CUDA device"

StreamId as_stream(cudaStream_t stream) { return reinterpret_cast<StreamId>(stream); }

TEST(CudaAllocator, AllocatedMemoryIsUsableAndReused) {
  SKIP_WITHOUT_CUDA_DEVICE();
  CachingAllocator& allocator = cuda_caching_allocator(0);
  void* a = allocator.allocate(3 * MiB, 0);
  ASSERT_NE(a, nullptr);
  KILN_CUDA_CHECK(cudaMemset(a, 0x5a, 3 * MiB));
  unsigned char last = 0;
  const char* last_byte = static_cast<char*>(a) + 3 * MiB - 1;
  KILN_CUDA_CHECK(cudaMemcpy(&last, last_byte, 1, cudaMemcpyDeviceToHost));
  EXPECT_EQ(last, 0x5a);

  allocator.free(a);
  void* b = allocator.allocate(3 * MiB, 0);
  EXPECT_EQ(b, a) << "the freed block comes back without a new cudaMalloc";
  KILN_CUDA_CHECK(cudaMemset(b, 0, 3 * MiB));
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  allocator.free(b);
}

TEST(CudaAllocator, StatsFollowAllocationsAndEmptyCache) {
  SKIP_WITHOUT_CUDA_DEVICE();
  cuda_empty_cache(0);
  const AllocatorStats before = cuda_memory_stats(0);
  CachingAllocator& allocator = cuda_caching_allocator(0);

  std::vector<void*> blocks;
  for (std::size_t bytes : {std::size_t{1000}, 3 * MiB, 12 * MiB}) {
    blocks.push_back(allocator.allocate(bytes, 0));
    KILN_CUDA_CHECK(cudaMemset(blocks.back(), 1, bytes));
  }
  AllocatorStats s = cuda_memory_stats(0);
  EXPECT_EQ(s.allocated_bytes - before.allocated_bytes, 1024 + 3 * MiB + 12 * MiB);
  EXPECT_EQ(s.num_allocs - before.num_allocs, 3u);
  EXPECT_GE(s.reserved_bytes, s.allocated_bytes);
  EXPECT_GE(s.peak_allocated_bytes, s.allocated_bytes);

  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  for (void* ptr : blocks) allocator.free(ptr);
  cuda_empty_cache(0);
  s = cuda_memory_stats(0);
  EXPECT_EQ(s.allocated_bytes, before.allocated_bytes);
  EXPECT_EQ(s.num_frees - before.num_frees, 3u);
  EXPECT_EQ(s.reserved_bytes, before.reserved_bytes) << "the new segments went back to the driver";
}

// Holds a stream until the test lets it go, so that its events stay "not ready" meanwhile.
void CUDART_CB wait_for_release(void* flag) {
  while (!static_cast<std::atomic<bool>*>(flag)->load()) {
  }
}

TEST(CudaAllocator, RecordStreamDelaysReuseUntilTheStreamCatchesUp) {
  SKIP_WITHOUT_CUDA_DEVICE();
  CachingAllocator& allocator = cuda_caching_allocator(0);
  // Non-blocking streams: work on the legacy default stream must not wait for the held stream.
  cudaStream_t producer = nullptr;
  cudaStream_t consumer = nullptr;
  KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&producer, cudaStreamNonBlocking));
  KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&consumer, cudaStreamNonBlocking));

  void* a = allocator.allocate(256 * 1024, as_stream(producer));
  std::atomic<bool> release{false};
  KILN_CUDA_CHECK(cudaLaunchHostFunc(consumer, wait_for_release, &release));
  allocator.record_stream(a, as_stream(consumer));
  allocator.free(a);

  // Nothing between holding and releasing the consumer may synchronize with it (no cudaFree, no
  // ASSERT that skips the release), or the test would hang.
  void* b = allocator.allocate(256 * 1024, as_stream(producer));
  EXPECT_NE(b, a) << "the consumer stream may still be reading a";
  release = true;
  KILN_CUDA_CHECK(cudaStreamSynchronize(consumer));

  void* c = allocator.allocate(256 * 1024, as_stream(producer));
  EXPECT_EQ(c, a) << "the consumer is done: a is back in the pool";
  allocator.free(b);
  allocator.free(c);
  KILN_CUDA_CHECK(cudaStreamDestroy(producer));
  KILN_CUDA_CHECK(cudaStreamDestroy(consumer));
}

TEST(CudaAllocator, OutOfMemoryReportsTheRequestAndLeavesTheDeviceUsable) {
  SKIP_WITHOUT_CUDA_DEVICE();
  CachingAllocator& allocator = cuda_caching_allocator(0);
  const std::uint64_t ooms_before = cuda_memory_stats(0).num_ooms;
  try {
    allocator.allocate(std::size_t{1} << 50, 0);
    FAIL() << "1 PiB should not fit any GPU";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("CUDA out of memory on cuda:0"), std::string::npos) << message;
    EXPECT_NE(message.find("tried to allocate 1.00 PiB"), std::string::npos) << message;
    EXPECT_NE(message.find("allocated"), std::string::npos) << message;
    EXPECT_NE(message.find("reserved"), std::string::npos) << message;
  }
  EXPECT_EQ(cuda_memory_stats(0).num_ooms, ooms_before + 1);

  // The sticky error was cleared: the next calls succeed.
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  void* a = allocator.allocate(MiB, 0);
  KILN_CUDA_CHECK(cudaMemset(a, 0, MiB));
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  allocator.free(a);
}

TEST(CudaAllocator, UnknownDeviceIsAnError) {
  SKIP_WITHOUT_CUDA_DEVICE();
  EXPECT_THROW(cuda_caching_allocator(1 << 20), Error);
  EXPECT_THROW(cuda_caching_allocator(-1), Error);
}

}  // namespace
}  // namespace kiln

#else  // !KILN_WITH_CUDA

TEST(CudaAllocator, NeedsACudaBuild) { GTEST_SKIP() << "built without CUDA (KILN_WITH_CUDA)"; }

#endif
