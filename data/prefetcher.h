// Prefetcher<T>: the background thread and bounded queue behind DataLoader and TokenLoader.
//
// start(produce) runs `produce` on a thread until it reports the last item or throws, keeping
// at most `depth` items queued ahead of pop(). The thread ends after the last item or an
// exception; the pop() that reaches it joins the thread (so the next start() begins a new one)
// and rethrows the exception there, on the caller's thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>

namespace kiln {

template <class T>
class Prefetcher {
 public:
  explicit Prefetcher(int64_t depth) : depth_(depth) {}
  ~Prefetcher() { stop(); }
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;

  // Starts the thread unless one is running. `produce(T& item)` fills the next item and
  // returns false when it was the last.
  template <class F>
  void start(F produce) {
    if (thread_.joinable()) return;
    stop_ = false;
    thread_ = std::thread([this, produce = std::move(produce)]() mutable { loop(produce); });
  }

  // The next item, waiting for it; needs a start() since the last item or error was popped.
  T pop() {
    std::unique_lock<std::mutex> lock(mu_);
    ready_.wait(lock, [&] { return !queue_.empty(); });
    Slot slot = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    space_.notify_one();
    if (slot.last) stop();  // the thread has ended: join it
    if (slot.error) std::rethrow_exception(slot.error);
    return std::move(slot.item);
  }

  // Stops and joins the thread; items built ahead are dropped.
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    space_.notify_all();
    if (thread_.joinable()) thread_.join();
    queue_.clear();
    stop_ = false;
  }

 private:
  struct Slot {
    T item{};
    bool last = false;
    std::exception_ptr error;
  };

  template <class F>
  void loop(F& produce) {
    for (;;) {
      Slot slot;
      try {
        slot.last = !produce(slot.item);
      } catch (...) {
        slot.error = std::current_exception();
        slot.last = true;
      }
      const bool last = slot.last;
      {
        std::unique_lock<std::mutex> lock(mu_);
        space_.wait(lock, [&] { return stop_ || static_cast<int64_t>(queue_.size()) < depth_; });
        if (stop_) return;
        queue_.push_back(std::move(slot));
      }
      ready_.notify_one();
      if (last) return;
    }
  }

  int64_t depth_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable ready_;  // an item was queued
  std::condition_variable space_;  // an item was taken, or stop was asked
  std::deque<Slot> queue_;
  bool stop_ = false;
};

}  // namespace kiln
