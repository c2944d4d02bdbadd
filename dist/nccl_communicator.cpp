// NCCL backend. Design notes:
// - Collectives run on the communicator's own stream. Each first waits (an event) for the work
//   already queued on kiln's current stream, so it reads finished inputs; Work::wait makes the
//   current stream wait for the collective in turn. No host blocking except barrier().
// - The tensors' memory is recorded on the NCCL stream (record_stream), so the caching
//   allocator does not hand it out again before the collective is done with it.
// - The communicator is nonblocking (config.blocking = 0): calls return at once, and a
//   watchdog thread polls ncclCommGetAsyncError and the pending collectives' events. An NCCL
//   error, or a collective unfinished after the timeout, aborts the communicator
//   (ncclCommAbort: the stuck kernels exit) and later calls and waits throw a kiln::Error
//   naming the collective and the rank.
// - avg is ncclAvg (floating types only, as in the Gloo backend).
#ifdef KILN_WITH_NCCL

#include "dist/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "core/cuda_allocator.h"
#include "core/cuda_check.h"
#include "core/cuda_context.h"
#include "core/error.h"
#include "dist/collective_checks.h"
#include "dist/store.h"

namespace kiln::dist {
namespace {

using Clock = std::chrono::steady_clock;

ncclDataType_t nccl_type(DType dt) {
  switch (dt) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::f16: return ncclFloat16;
    case DType::bf16: return ncclBfloat16;
    case DType::i32: return ncclInt32;
    case DType::i64: return ncclInt64;
    case DType::u8: return ncclUint8;
    default: break;
  }
  KILN_FAIL("nccl: unsupported dtype ", dt, " (supported: f32, f64, f16, bf16, i32, i64, u8)");
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return ncclSum;
    case ReduceOp::avg: return ncclAvg;
    case ReduceOp::max: return ncclMax;
  }
  return ncclSum;
}

// A CUDA event shared by the watchdog's pending list and the Work that waits on it.
struct Event {
  cudaEvent_t event = nullptr;
  Event() { KILN_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming)); }
  ~Event() { cudaEventDestroy(event); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
};
using EventPtr = std::shared_ptr<Event>;

class NcclCommunicator;

// Valid while its communicator lives.
class NcclWork : public Work {
 public:
  NcclWork(NcclCommunicator* comm, EventPtr done, std::string what)
      : comm_(comm), done_(std::move(done)), what_(std::move(what)) {}
  void wait() override;

 private:
  NcclCommunicator* comm_;
  EventPtr done_;
  std::string what_;
};

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(std::shared_ptr<TCPStore> store, const InitOptions& o, Device device,
                   const std::string& run_id)
      : store_(std::move(store)), rank_(o.rank), world_size_(o.world_size),
        device_(device.index), timeout_(o.timeout), run_id_(run_id) {
    cuda::DeviceGuard guard(device_);
    ncclUniqueId id;
    const std::string key = "nccl/" + run_id + "/unique_id";
    if (rank_ == 0) {
      KILN_NCCL_CHECK(ncclGetUniqueId(&id));
      if (store_) store_->set(key, std::vector<uint8_t>(id.internal, id.internal + sizeof(id.internal)));
    } else {
      auto bytes = store_->get(key);
      KILN_CHECK(bytes.size() == sizeof(id.internal), "nccl: bad unique id in the store (", bytes.size(),
                 " bytes) on ", who());
      std::memcpy(id.internal, bytes.data(), sizeof(id.internal));
    }
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // errors and timeouts are ours to handle; see the watchdog
    ncclResult_t r = ncclCommInitRankConfig(&comm_, world_size_, id, rank_, &config);
    if (r != ncclSuccess && r != ncclInProgress)
      KILN_FAIL("nccl: ncclCommInitRankConfig failed on ", who(), " (cuda:", device_, "): ", ncclGetErrorString(r));
    wait_ready("ncclCommInitRankConfig", Clock::now() + timeout_);
    KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    KILN_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
    KILN_CUDA_CHECK(cudaMalloc(&barrier_buf_, sizeof(float)));
    watchdog_ = std::thread([this] { watch(); });
  }

  ~NcclCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    watchdog_.join();
    cuda::DeviceGuard guard(device_);
    if (aborted_) {
      // ncclCommAbort already released it.
    } else if (comm_) {
      // Bounded like every collective: the watchdog is gone, and a collective or the finalize
      // waiting for a peer that exited would otherwise hang the process at exit.
      const auto deadline = Clock::now() + timeout_;
      bool clean = true;
      for (cudaError_t q; (q = cudaStreamQuery(stream_)) != cudaSuccess;) {
        if (q != cudaErrorNotReady || Clock::now() > deadline) { clean = false; break; }
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
      ncclResult_t st = clean ? ncclCommFinalize(comm_) : ncclInternalError;
      while (st == ncclInProgress) {
        if (Clock::now() > deadline || ncclCommGetAsyncError(comm_, &st) != ncclSuccess) st = ncclInternalError;
        std::this_thread::yield();
      }
      if (st == ncclSuccess) ncclCommDestroy(comm_);
      else ncclCommAbort(comm_);
    }
    pending_.clear();
    cudaFree(barrier_buf_);
    cudaEventDestroy(ready_);
    cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  std::string backend() const override { return "nccl"; }
  std::string run_id() const override { return run_id_; }

  std::shared_ptr<Work> all_reduce_async(Tensor& t, ReduceOp op) override {
    check_tensor("all_reduce", t);
    check_reduce_op("all_reduce", t, op);
    const std::string what = "all_reduce(" + std::string(op_name(op)) + ", " + t.meta_str() + ")";
    t.bump_version();  // outputs only: autograd must not see inputs as modified
    return launch(what, {t}, [&] {
      return ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(), nccl_type(t.dtype()), nccl_op(op), comm_, stream_);
    });
  }

  void broadcast(Tensor& t, int root) override {
    check_tensor("broadcast", t);
    check_root(root, world_size_, who());
    const size_t bytes = static_cast<size_t>(t.numel()) * t.element_size();
    t.bump_version();
    launch("broadcast(root " + std::to_string(root) + ", " + t.meta_str() + ")", {t}, [&] {
      return ncclBroadcast(t.data_ptr(), t.data_ptr(), bytes, ncclUint8, root, comm_, stream_);
    })->wait();
  }

  void all_gather(Tensor& out, const Tensor& in) override {
    check_tensor("all_gather", out);
    check_tensor("all_gather", in);
    check_all_gather(out, in, world_size_);
    const size_t bytes = static_cast<size_t>(in.numel()) * in.element_size();
    out.bump_version();
    launch("all_gather(" + in.meta_str() + ")", {in, out}, [&] {
      return ncclAllGather(in.data_ptr(), out.data_ptr(), bytes, ncclUint8, comm_, stream_);
    })->wait();
  }

  void reduce_scatter(Tensor& out, const Tensor& in, ReduceOp op) override {
    check_tensor("reduce_scatter", out);
    check_tensor("reduce_scatter", in);
    check_reduce_scatter(out, in, op, world_size_);
    out.bump_version();
    launch("reduce_scatter(" + std::string(op_name(op)) + ", " + in.meta_str() + ")", {in, out}, [&] {
      return ncclReduceScatter(in.data_ptr(), out.data_ptr(), out.numel(), nccl_type(in.dtype()), nccl_op(op),
                               comm_, stream_);
    })->wait();
  }

  // An all-reduce of one float, then the host waits for it (polling, so the watchdog's abort
  // turns a stuck barrier into an error).
  void barrier() override {
    cuda::DeviceGuard guard(device_);
    EventPtr done = launch_raw("barrier", {}, [&] {
      return ncclAllReduce(barrier_buf_, barrier_buf_, 1, ncclFloat32, ncclSum, comm_, stream_);
    });
    while (true) {
      throw_if_failed("barrier");
      const cudaError_t q = cudaEventQuery(done->event);
      if (q == cudaSuccess) return;
      KILN_CHECK(q == cudaErrorNotReady, "nccl barrier on ", who(), ": ", cudaGetErrorString(q));
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

  void wait_on(const Event& done, const std::string& what) {
    throw_if_failed(what);
    cuda::DeviceGuard guard(device_);
    KILN_CUDA_CHECK(cudaStreamWaitEvent(cuda::current_stream(device_), done.event, 0));
  }

 private:
  struct Pending {
    EventPtr done;
    std::string what;
    Clock::time_point started;
    bool finished = false;
  };

  std::string who() const {
    return "rank " + std::to_string(rank_) + " of " + std::to_string(world_size_) + " (cuda:" +
           std::to_string(device_) + ")";
  }

  void check_tensor(const char* what, const Tensor& t) const {
    KILN_CHECK(t.defined(), "nccl ", what, ": undefined tensor");
    KILN_CHECK(t.is_cuda() && t.device().index == device_, "nccl ", what, " expects a tensor on cuda:", device_,
               ", got ", t.meta_str());
    KILN_CHECK(t.is_contiguous(), "nccl ", what, " expects a contiguous tensor, got ", t.meta_str(),
               "; call .contiguous() first");
    nccl_type(t.dtype());  // checks the dtype
  }

  void throw_if_failed(const std::string& what) {
    std::lock_guard<std::mutex> lock(mutex_);
    KILN_CHECK(failure_.empty(), "nccl ", what, " on ", who(), ": the communicator failed: ", failure_);
  }

  // Waits (with the timeout) while a nonblocking NCCL call is still in progress; on timeout
  // aborts the communicator. mutex_ held once the watchdog runs (it may abort comm_).
  void wait_ready(const std::string& what, Clock::time_point deadline) {
    ncclResult_t st = ncclInProgress;
    while (true) {
      KILN_NCCL_CHECK(ncclCommGetAsyncError(comm_, &st));
      if (st != ncclInProgress) break;
      if (Clock::now() > deadline) {
        abort(what + " did not complete within " + seconds_str(timeout_));
        KILN_FAIL("nccl ", what, " did not complete within ", seconds_str(timeout_), " on ", who(),
                  "; a peer rank may not have arrived");
      }
      std::this_thread::yield();
    }
    KILN_CHECK(st == ncclSuccess, "nccl ", what, " failed on ", who(), ": ", ncclGetErrorString(st), " (",
               ncclGetLastError(comm_), ")");
  }

  template <class Call>
  EventPtr launch_raw(const std::string& what, std::initializer_list<Tensor> tensors, Call&& call) {
    throw_if_failed(what);  // before any work, as the checks of the arguments
    cuda::DeviceGuard guard(device_);
    // Inputs are ready once the work already queued on kiln's stream is.
    KILN_CUDA_CHECK(cudaEventRecord(ready_, cuda::current_stream(device_)));
    KILN_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
    for (const Tensor& t : tensors)
      if (t.numel() > 0)
        cuda_caching_allocator(device_).record_stream(t.storage()->data(),
                                                      reinterpret_cast<StreamId>(stream_));
    auto done = std::make_shared<Event>();
    {
      // Under the watchdog's lock: an abort (which frees comm_) cannot come between the check
      // and the NCCL calls. Enqueueing is quick; wait_ready bounds it by the timeout.
      std::lock_guard<std::mutex> lock(mutex_);
      KILN_CHECK(failure_.empty(), "nccl ", what, " on ", who(), ": the communicator failed: ", failure_);
      const ncclResult_t r = call();
      if (r != ncclSuccess && r != ncclInProgress)
        KILN_FAIL("nccl ", what, " failed on ", who(), ": ", ncclGetErrorString(r), " (", ncclGetLastError(comm_), ")");
      if (r == ncclInProgress) wait_ready(what, Clock::now() + timeout_);  // enqueueing, not the collective
      KILN_CUDA_CHECK(cudaEventRecord(done->event, stream_));
      pending_.push_back({done, what, Clock::now()});
    }
    cv_.notify_all();
    return done;
  }

  template <class Call>
  std::shared_ptr<Work> launch(const std::string& what, std::initializer_list<Tensor> tensors, Call&& call) {
    return std::make_shared<NcclWork>(this, launch_raw(what, tensors, std::forward<Call>(call)), what);
  }

  // The watchdog: NCCL's asynchronous errors, and collectives that outlive the timeout.
  void watch() {
    cudaSetDevice(device_);
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stop_) {
      cv_.wait_for(lock, std::chrono::milliseconds(100));
      if (!failure_.empty() || aborted_) continue;
      ncclResult_t st = ncclSuccess;
      if (ncclCommGetAsyncError(comm_, &st) == ncclSuccess && st != ncclSuccess && st != ncclInProgress) {
        abort(std::string("NCCL reported ") + ncclGetErrorString(st) + " (" + ncclGetLastError(comm_) + ")");
        continue;
      }
      const auto now = Clock::now();
      for (Pending& p : pending_) {
        if (p.finished) continue;
        const cudaError_t q = cudaEventQuery(p.done->event);
        if (q == cudaSuccess) {
          p.finished = true;
        } else if (q != cudaErrorNotReady) {
          abort(p.what + " failed: " + cudaGetErrorString(q));
          break;
        } else if (now - p.started > timeout_) {
          abort(p.what + " did not finish within " + seconds_str(timeout_) +
                "; a peer rank may have exited or not reached it (every rank must issue the same "
                "collectives in the same order)");
          break;
        }
      }
      while (!pending_.empty() && pending_.front().finished) pending_.pop_front();
    }
  }

  void abort(const std::string& why) {  // mutex_ held (or no watchdog yet)
    if (aborted_) return;
    failure_ = why + " [" + who() + "]";
    ncclCommAbort(comm_);
    aborted_ = true;
  }

  std::shared_ptr<TCPStore> store_;
  int rank_, world_size_, device_;
  std::chrono::milliseconds timeout_;
  std::string run_id_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;
  float* barrier_buf_ = nullptr;

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Pending> pending_;
  std::string failure_;
  bool aborted_ = false;
  bool stop_ = false;
  std::thread watchdog_;
};

void NcclWork::wait() { comm_->wait_on(*done_, what_); }

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(std::shared_ptr<TCPStore> store, const InitOptions& options,
                                                     Device device, const std::string& run_id) {
  KILN_CHECK(store || options.world_size == 1, "nccl: a rendezvous store is needed for world size ",
             options.world_size);
  KILN_CHECK(device.is_cuda(), "nccl: needs a CUDA device, got ", device.str());
  KILN_CHECK(device.index < cuda_device_count(), "nccl: ", device.str(), " does not exist (",
             cuda_device_count(), " visible GPUs; LOCAL_RANK=", options.local_rank, ")");
  return std::make_unique<NcclCommunicator>(std::move(store), options, device, run_id);
}

}  // namespace kiln::dist

#endif  // KILN_WITH_NCCL
