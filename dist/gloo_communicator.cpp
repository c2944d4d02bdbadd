// Gloo backend. Design notes:
// - One worker thread runs the collectives in issue order. Gloo matches messages by tag, and
//   every rank issues the same collectives in the same order, so the ranks agree on the tags.
// - Gloo reduces f32/f64/i32/i64 with its own sum/max. It has no bf16 and its f16 differs from
//   ours, so 16-bit floats reduce with our own functions: each step widens to f32, adds, and
//   rounds back, as NCCL does; the wire carries 16 bits per element.
// - avg is sum, then a multiply by 1/world_size (floating types only).
// - reduce_scatter is an all-reduce of a copy of the input, then this rank's chunk: it moves
//   2(n-1)/n of the data per rank where a ring reduce-scatter would move (n-1)/n. Gloo 0.5's
//   only reduce-scatter is the older halving-doubling algorithm with its own buffer setup; the
//   all-reduce keeps one code path. Revisit when ZeRO makes it hot.
// - Every collective has the communicator's timeout. A failure (timeout, a peer gone) marks
//   the communicator broken: Gloo's pairs are then in an unknown state, so later collectives
//   fail at once with the first error instead of hanging.
#include "dist/gloo_communicator.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/hash_store.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/address.h>
#include <gloo/transport/tcp/device.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <functional>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "dist/collective_checks.h"
#include "dist/store.h"

namespace kiln::dist {
namespace {

// Gloo's rendezvous talks to our TCP store, under a per-run prefix (like PyTorch's GlooStore).
class GlooStore : public gloo::rendezvous::Store {
 public:
  GlooStore(std::shared_ptr<TCPStore> store, std::string prefix)
      : store_(std::move(store)), prefix_(std::move(prefix)) {}
  void set(const std::string& key, const std::vector<char>& data) override {
    store_->set(prefix_ + key, std::vector<uint8_t>(data.begin(), data.end()));
    seen_[key] = data;
  }
  std::vector<char> get(const std::string& key) override {
    auto v = store_->get(prefix_ + key);
    std::vector<char> value(v.begin(), v.end());
    seen_[key] = value;
    return value;
  }
  // What set() and get() carried, by key: Gloo's address exchange, to name peers in errors.
  const std::map<std::string, std::vector<char>>& seen() const { return seen_; }
  void wait(const std::vector<std::string>& keys) override { wait(keys, store_->timeout()); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    std::vector<std::string> full;
    for (const auto& k : keys) full.push_back(prefix_ + k);
    store_->wait(full, timeout);
  }

 private:
  std::shared_ptr<TCPStore> store_;
  std::string prefix_;
  std::map<std::string, std::vector<char>> seen_;
};

// Gloo's errors name a pair by an address ("Connection closed by peer [127.0.0.1]:41235"). Its
// full mesh setup (gloo 0.5) stores, under key "<r>", rank r's listening address for each of its
// pairs, in rank order without r itself. Which end's address a pair reports depends on which
// end connected, so both ends of our pair with rank r map to r.
std::map<std::string, int> peer_addresses(const GlooStore& store, int rank, int world_size) {
  std::map<std::string, int> peers;
  auto address_in = [&](const std::vector<char>& all, int slot) {
    const size_t chunk = all.size() / (world_size - 1);
    const size_t at = static_cast<size_t>(slot) * chunk;
    return gloo::transport::tcp::Address(std::vector<char>(all.begin() + at, all.begin() + at + chunk)).str();
  };
  try {
    for (const auto& [key, all] : store.seen()) {
      if (key.empty() || key.find_first_not_of("0123456789") != std::string::npos) continue;
      if (all.empty() || all.size() % (world_size - 1) != 0) continue;
      const int r = std::stoi(key);
      if (r == rank) {
        for (int peer = 0; peer < world_size; ++peer)
          if (peer != rank) peers[address_in(all, peer > rank ? peer - 1 : peer)] = peer;
      } else if (r >= 0 && r < world_size) {
        peers[address_in(all, rank > r ? rank - 1 : rank)] = r;
      }
    }
  } catch (const std::exception&) {
    // Not address records (another Gloo version): errors just won't name the rank.
  }
  return peers;
}

// The address other ranks reach this one at: GLOO_SOCKET_IFNAME when set; loopback when the
// master is local; else the local address the kernel routes towards the master.
gloo::transport::tcp::attr device_attr(const InitOptions& o) {
  gloo::transport::tcp::attr attr;
  if (const char* iface = std::getenv("GLOO_SOCKET_IFNAME"); iface && *iface) {
    attr.iface = iface;
    return attr;
  }
  attr.hostname = "127.0.0.1";
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(o.master_addr.c_str(), std::to_string(o.master_port).c_str(), &hints, &res) != 0 || !res)
    return attr;
  const auto* master = reinterpret_cast<const sockaddr_in*>(res->ai_addr);
  const bool loopback = (ntohl(master->sin_addr.s_addr) >> 24) == 127;
  if (!loopback) {
    // connect() on a UDP socket sends nothing; it only picks the route and the source address.
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in local{};
    socklen_t len = sizeof(local);
    char buf[INET_ADDRSTRLEN];
    if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0 &&
        getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0 &&
        inet_ntop(AF_INET, &local.sin_addr, buf, sizeof(buf)))
      attr.hostname = buf;
    if (fd >= 0) close(fd);
  }
  freeaddrinfo(res);
  return attr;
}

// Element-wise reductions for the 16-bit floats, through f32.
template <class T>
void sum16(void* c, const void* a, const void* b, size_t n) {
  auto* out = static_cast<T*>(c);
  const auto* x = static_cast<const T*>(a);
  const auto* y = static_cast<const T*>(b);
  for (size_t i = 0; i < n; ++i) out[i] = T(static_cast<float>(x[i]) + static_cast<float>(y[i]));
}
template <class T>
void max16(void* c, const void* a, const void* b, size_t n) {
  auto* out = static_cast<T*>(c);
  const auto* x = static_cast<const T*>(a);
  const auto* y = static_cast<const T*>(b);
  for (size_t i = 0; i < n; ++i) {
    const float fx = static_cast<float>(x[i]), fy = static_cast<float>(y[i]);
    out[i] = (fx > fy || fx != fx) ? x[i] : y[i];  // NaN wins, as in torch.maximum
  }
}

using ReduceFn = std::function<void(void*, const void*, const void*, size_t)>;
using RawReduceFn = void (*)(void*, const void*, const void*, size_t);

template <class T>
ReduceFn gloo_reduce(bool is_max) {  // gloo::sum/max are overloaded: pick the void* form
  return is_max ? static_cast<RawReduceFn>(&gloo::max<T>) : static_cast<RawReduceFn>(&gloo::sum<T>);
}

ReduceFn reduce_fn(DType dtype, ReduceOp op) {
  const bool is_max = op == ReduceOp::max;
  switch (dtype) {
    case DType::f32: return gloo_reduce<float>(is_max);
    case DType::f64: return gloo_reduce<double>(is_max);
    case DType::i32: return gloo_reduce<int32_t>(is_max);
    case DType::i64: return gloo_reduce<int64_t>(is_max);
    case DType::f16: return is_max ? ReduceFn(&max16<Half>) : ReduceFn(&sum16<Half>);
    case DType::bf16: return is_max ? ReduceFn(&max16<BFloat16>) : ReduceFn(&sum16<BFloat16>);
    default: break;
  }
  KILN_FAIL("gloo all_reduce: unsupported dtype ", dtype, " (supported: f32, f64, f16, bf16, i32, i64)");
}

// Multiplies n elements at p by s in place (avg after sum).
void scale(void* p, DType dtype, size_t n, double s) {
  switch (dtype) {
    case DType::f32: { auto* x = static_cast<float*>(p); for (size_t i = 0; i < n; ++i) x[i] *= static_cast<float>(s); return; }
    case DType::f64: { auto* x = static_cast<double*>(p); for (size_t i = 0; i < n; ++i) x[i] *= s; return; }
    case DType::f16: { auto* x = static_cast<Half*>(p); for (size_t i = 0; i < n; ++i) x[i] = Half(static_cast<float>(x[i]) * static_cast<float>(s)); return; }
    case DType::bf16: { auto* x = static_cast<BFloat16*>(p); for (size_t i = 0; i < n; ++i) x[i] = BFloat16(static_cast<float>(x[i]) * static_cast<float>(s)); return; }
    default: KILN_FAIL("avg needs a floating dtype, got ", dtype);
  }
}

class GlooWork : public Work {
 public:
  void wait() override {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return done_; });
    if (error_) std::rethrow_exception(error_);
  }
  void finish(std::exception_ptr error) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
      error_ = std::move(error);
    }
    cv_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
};

class GlooCommunicator : public Communicator {
 public:
  GlooCommunicator(std::shared_ptr<TCPStore> store, const InitOptions& o, const std::string& run_id)
      : store_(store), rank_(o.rank), world_size_(o.world_size), timeout_(o.timeout), run_id_(run_id) {
    auto attr = device_attr(o);
    try {
      device_ = gloo::transport::tcp::CreateDevice(attr);
    } catch (const std::exception& e) {
      KILN_FAIL("gloo: could not create a TCP device on ", attr.iface.empty() ? attr.hostname : attr.iface,
                " (", who(), "): ", e.what(), ". Set GLOO_SOCKET_IFNAME to the network interface to use.");
    }
    auto context = std::make_shared<gloo::rendezvous::Context>(rank_, world_size_);
    context->setTimeout(timeout_);
    try {
      if (store) {
        GlooStore gloo_store(store, "gloo/" + run_id + "/");
        context->connectFullMesh(gloo_store, device_);
        peers_ = peer_addresses(gloo_store, rank_, world_size_);
      } else {
        gloo::rendezvous::HashStore local;
        context->connectFullMesh(local, device_);
      }
    } catch (const Error& e) {
      KILN_FAIL("gloo: connecting the ranks failed (", who(), "): ", e.what());
    } catch (const std::exception& e) {
      KILN_FAIL("gloo: connecting the ranks failed (", who(), ", timeout ", seconds_str(timeout_),
                "): ", e.what());
    }
    context_ = std::move(context);
    worker_ = std::thread([this] { run(); });
  }

  ~GlooCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  std::string backend() const override { return "gloo"; }
  std::string run_id() const override { return run_id_; }

  std::shared_ptr<Work> all_reduce_async(Tensor& t, ReduceOp op) override {
    check_cpu_contiguous("all_reduce", t);
    check_reduce_op("all_reduce", t, op);
    ReduceFn fn = reduce_fn(t.dtype(), op);
    const std::string what = "all_reduce(" + std::string(op_name(op)) + ", " + t.meta_str() + ")";
    t.bump_version();  // here, not on the worker: the version counter is not atomic
    return enqueue(what, [this, t, op, fn = std::move(fn)] {
      all_reduce_raw(t.data_ptr(), t.dtype(), static_cast<size_t>(t.numel()), op, fn);
    });
  }

  void broadcast(Tensor& t, int root) override {
    check_cpu_contiguous("broadcast", t);
    check_root(root, world_size_, who());
    t.bump_version();
    run_sync("broadcast(root " + std::to_string(root) + ", " + t.meta_str() + ")", [&] {
      if (t.numel() == 0) return;
      gloo::BroadcastOptions opts(context_);
      opts.setOutput(static_cast<uint8_t*>(t.data_ptr()), t.numel() * t.element_size());
      opts.setRoot(root);
      opts.setTag(next_tag());
      opts.setTimeout(timeout_);
      gloo::broadcast(opts);
    });
  }

  void all_gather(Tensor& out, const Tensor& in) override {
    check_cpu_contiguous("all_gather", out);
    check_cpu_contiguous("all_gather", in);
    check_all_gather(out, in, world_size_);
    out.bump_version();
    run_sync("all_gather(" + in.meta_str() + ")", [&] {
      const size_t bytes = static_cast<size_t>(in.numel()) * in.element_size();
      if (bytes == 0) return;
      gloo::AllgatherOptions opts(context_);
      opts.setInput(static_cast<uint8_t*>(in.data_ptr()), bytes);
      opts.setOutput(static_cast<uint8_t*>(out.data_ptr()), bytes * world_size_);
      opts.setTag(next_tag());
      opts.setTimeout(timeout_);
      gloo::allgather(opts);
    });
  }

  void reduce_scatter(Tensor& out, const Tensor& in, ReduceOp op) override {
    check_cpu_contiguous("reduce_scatter", out);
    check_cpu_contiguous("reduce_scatter", in);
    check_reduce_scatter(out, in, op, world_size_);
    ReduceFn fn = reduce_fn(in.dtype(), op);
    out.bump_version();
    run_sync("reduce_scatter(" + std::string(op_name(op)) + ", " + in.meta_str() + ")", [&] {
      const size_t chunk = static_cast<size_t>(out.numel()) * out.element_size();
      // Reused across calls: ZeRO-1 reduce-scatters all gradients every step, and a fresh
      // zero-filled vector of that size each time would cost an allocation, page faults and a pass.
      scratch_.resize(std::max(scratch_.size(), chunk * world_size_));
      std::memcpy(scratch_.data(), in.data_ptr(), chunk * world_size_);
      all_reduce_raw(scratch_.data(), in.dtype(), static_cast<size_t>(in.numel()), op, fn);
      std::memcpy(out.data_ptr(), scratch_.data() + chunk * rank_, chunk);
    });
  }

  void barrier() override {
    run_sync("barrier", [&] {
      gloo::BarrierOptions opts(context_);
      opts.setTag(next_tag());
      opts.setTimeout(timeout_);
      gloo::barrier(opts);
    });
  }

 private:
  std::string who() const {
    return "rank " + std::to_string(rank_) + " of " + std::to_string(world_size_);
  }

  void check_cpu_contiguous(const char* what, const Tensor& t) const {
    KILN_CHECK(t.defined(), "gloo ", what, ": undefined tensor");
    KILN_CHECK(t.device().is_cpu(), "gloo ", what, " expects a CPU tensor, got ", t.meta_str(),
               " (CUDA tensors need the nccl backend)");
    KILN_CHECK(t.is_contiguous(), "gloo ", what, " expects a contiguous tensor, got ", t.meta_str(),
               " with strides that are not row-major; call .contiguous() first");
  }

  uint32_t next_tag() { return tag_++; }  // worker thread only

  // " (the peer at [127.0.0.1]:41235 is rank 1)" when the message names a peer we know.
  std::string name_peer(const std::string& message) const {
    for (const auto& [address, r] : peers_)
      if (message.find(address) != std::string::npos)
        return " (the peer at " + address + " is rank " + std::to_string(r) + ")";
    // A pair that the peer connected reports the peer's outgoing port, which no record holds;
    // with two ranks there is only one peer anyway.
    if (world_size_ == 2 && message.find("peer") != std::string::npos)
      return " (the peer is rank " + std::to_string(1 - rank_) + ")";
    return "";
  }

  // In place on n elements at data; runs on the worker thread.
  void all_reduce_raw(void* data, DType dtype, size_t n, ReduceOp op, const ReduceFn& fn) {
    if (n == 0) return;
    gloo::AllreduceOptions opts(context_);
    const size_t esize = element_size(dtype);
    // The element type only sets the element size; `fn` knows the real type.
    switch (esize) {
      case 2: opts.setOutput(static_cast<uint16_t*>(data), n); break;
      case 4: opts.setOutput(static_cast<uint32_t*>(data), n); break;
      case 8: opts.setOutput(static_cast<uint64_t*>(data), n); break;
      default: KILN_FAIL("all_reduce: unsupported element size ", esize);
    }
    opts.setReduceFunction(fn);
    opts.setTag(next_tag());
    opts.setTimeout(timeout_);
    gloo::allreduce(opts);
    if (op == ReduceOp::avg) scale(data, dtype, n, 1.0 / world_size_);
  }

  std::shared_ptr<Work> enqueue(std::string what, std::function<void()> fn) {
    auto work = std::make_shared<GlooWork>();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back({std::move(what), std::move(fn), work});
    }
    cv_.notify_all();
    return work;
  }

  void run_sync(std::string what, std::function<void()> fn) { enqueue(std::move(what), std::move(fn))->wait(); }

  void run() {
    while (true) {
      Task task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stop_ and nothing left
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      std::exception_ptr error;
      if (!broken_.empty()) {
        error = std::make_exception_ptr(Error("gloo " + task.what + " on " + who() +
                                              " not run: the communicator failed earlier: " + broken_));
      } else {
        try {
          task.fn();
        } catch (const Error&) {
          error = std::current_exception();  // a check of ours: the communicator is still fine
        } catch (const std::exception& e) {
          broken_ = "gloo " + task.what + " failed on " + who() + " (timeout " + seconds_str(timeout_) +
                    "): " + e.what() + name_peer(e.what()) +
                    ". A peer rank may have exited, crashed, or not reached this collective; every rank "
                    "must issue the same collectives in the same order.";
          error = std::make_exception_ptr(Error(broken_));
        }
      }
      task.work->finish(error);
    }
  }

  struct Task {
    std::string what;
    std::function<void()> fn;
    std::shared_ptr<GlooWork> work;
  };

  std::shared_ptr<TCPStore> store_;  // rank 0 serves it: keep it up while the group lives
  int rank_, world_size_;
  std::chrono::milliseconds timeout_;
  std::string run_id_;
  std::shared_ptr<gloo::transport::Device> device_;
  std::shared_ptr<gloo::Context> context_;
  std::map<std::string, int> peers_;  // Gloo pair address -> rank

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Task> queue_;
  bool stop_ = false;
  std::thread worker_;
  uint32_t tag_ = 0;     // worker thread only
  std::string broken_;  // worker thread only
  std::vector<uint8_t> scratch_;  // reduce_scatter's copy of its input; worker thread only
};

}  // namespace

std::unique_ptr<Communicator> make_gloo_communicator(std::shared_ptr<TCPStore> store,
                                                     const InitOptions& options,
                                                     const std::string& run_id) {
  KILN_CHECK(store || options.world_size == 1, "gloo: a rendezvous store is needed for world size ",
             options.world_size);
  return std::make_unique<GlooCommunicator>(std::move(store), options, run_id);
}

}  // namespace kiln::dist
