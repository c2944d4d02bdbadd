// A TCP key-value store for rendezvous, like torch.distributed's TCPStore: rank 0 serves it at
// MASTER_ADDR:MASTER_PORT from a background thread, and every rank (rank 0 included) talks to
// it as a client. Ranks use it to agree on the world size, publish a run id, and exchange the
// backends' connection details (Gloo addresses, the NCCL unique id). IPv4 only.
//
//   TCPStore store({.host = "127.0.0.1", .port = 29500, .is_server = rank == 0,
//                   .rank = rank, .world_size = n, .timeout = std::chrono::seconds(30)});
//   store.set("x", "hello");
//   std::string x = store.get_string("x");  // blocks until some rank set it, or the timeout
//   int64_t joined = store.add("joined", 1);
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::dist {

// "2.5 s": how the store, the rendezvous and the communicators print a timeout.
std::string seconds_str(std::chrono::milliseconds ms);

struct StoreOptions {
  std::string host = "127.0.0.1";  // where the server runs (the clients connect here)
  int port = 29500;                // 0 on the server: pick a free port (see TCPStore::port())
  bool is_server = false;          // true on exactly one rank (rank 0)
  int rank = 0;                    // for error messages
  int world_size = 1;              // for error messages
  // Connecting, and every blocking get/wait, give up after this long with a kiln::Error.
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
};

class TCPStore {
 public:
  // The server (if is_server) listens first; then this rank connects, retrying until the
  // timeout. Throws kiln::Error when the port is in use or the server cannot be reached.
  explicit TCPStore(const StoreOptions& options);
  ~TCPStore();
  TCPStore(const TCPStore&) = delete;
  TCPStore& operator=(const TCPStore&) = delete;

  void set(const std::string& key, const std::vector<uint8_t>& value);
  void set(const std::string& key, std::string_view value);
  // Blocks until the key is set (by any rank) or the timeout passes.
  std::vector<uint8_t> get(const std::string& key);
  std::string get_string(const std::string& key);
  // Adds delta to the integer stored at key (0 when unset) and returns the new value. The value
  // is stored as decimal text, so get_string() of a counter reads "3".
  int64_t add(const std::string& key, int64_t delta);
  // Blocks until every key is set, or throws after `timeout` (the store's timeout by default).
  void wait(const std::vector<std::string>& keys);
  void wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout);
  // Whether every key is set, without waiting.
  bool check(const std::vector<std::string>& keys);

  int port() const { return port_; }  // the bound port (useful when options.port was 0)
  const std::string& host() const { return options_.host; }
  std::chrono::milliseconds timeout() const { return options_.timeout; }
  // "127.0.0.1:29500": what error messages print.
  std::string address() const;

 private:
  class Server;
  // One request/response exchange; the mutex keeps exchanges from several threads apart.
  std::vector<uint8_t> request(const std::vector<uint8_t>& message, std::chrono::milliseconds wait_hint,
                               const std::string& what);
  void connect_client();
  std::string who() const;  // "rank 1 of 2"

  StoreOptions options_;
  int port_ = 0;
  std::unique_ptr<Server> server_;
  int fd_ = -1;
  std::mutex mutex_;
};

}  // namespace kiln::dist
