// TCPStore: a poll()-driven server thread on rank 0 and a blocking client on every rank.
//
// Wire format, both directions: a u32 payload length, then the payload. Requests start with a
// command byte; replies with a status byte. Blocking get/wait time out on the server, which
// answers kTimeout at the deadline, so a client's stream never holds a stale reply.
#include "dist/store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <list>
#include <map>
#include <sstream>
#include <thread>

#include "core/error.h"

namespace kiln::dist {

std::string seconds_str(std::chrono::milliseconds ms) {
  std::ostringstream os;
  os << static_cast<double>(ms.count()) / 1000.0 << " s";
  return os.str();
}

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

enum Command : uint8_t { kSet = 1, kGet = 2, kAdd = 3, kWait = 4, kCheck = 5 };
enum Status : uint8_t { kOk = 0, kTimeout = 1, kBadRequest = 2 };

// ---- payload encoding
void put_u32(std::vector<uint8_t>& b, uint32_t v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  b.insert(b.end(), p, p + 4);
}
void put_i64(std::vector<uint8_t>& b, int64_t v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  b.insert(b.end(), p, p + 8);
}
void put_bytes(std::vector<uint8_t>& b, const void* data, size_t n) {
  put_u32(b, static_cast<uint32_t>(n));
  const auto* p = static_cast<const uint8_t*>(data);
  b.insert(b.end(), p, p + n);
}
void put_str(std::vector<uint8_t>& b, const std::string& s) { put_bytes(b, s.data(), s.size()); }

// Reads fields from a payload; a short payload throws (the server drops such a client).
struct Reader {
  const uint8_t* p;
  const uint8_t* end;
  void need(size_t n) const {
    if (static_cast<size_t>(end - p) < n) throw std::runtime_error("truncated store message");
  }
  uint8_t u8() { need(1); return *p++; }
  uint32_t u32() { need(4); uint32_t v; std::memcpy(&v, p, 4); p += 4; return v; }
  int64_t i64() { need(8); int64_t v; std::memcpy(&v, p, 8); p += 8; return v; }
  std::vector<uint8_t> bytes() {
    const uint32_t n = u32();
    need(n);
    std::vector<uint8_t> v(p, p + n);
    p += n;
    return v;
  }
  std::string str() {
    auto v = bytes();
    return {v.begin(), v.end()};
  }
};

std::vector<uint8_t> frame(const std::vector<uint8_t>& payload) {
  std::vector<uint8_t> out;
  out.reserve(payload.size() + 4);
  put_u32(out, static_cast<uint32_t>(payload.size()));
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

void set_nonblocking(int fd, bool on) {
  int flags = fcntl(fd, F_GETFL, 0);
  fcntl(fd, F_SETFL, on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Server: one thread, one poll() over the listening socket, a wake-up pipe and the clients.

class TCPStore::Server {
 public:
  explicit Server(const StoreOptions& o) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    KILN_CHECK(listen_fd_ >= 0, "rendezvous store: socket() failed: ", std::strerror(errno));
    int one = 1;
    setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);  // as torch's TCPStore: reachable from other nodes
    addr.sin_port = htons(static_cast<uint16_t>(o.port));
    if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      const int err = errno;
      close(listen_fd_);
      KILN_CHECK(err != EADDRINUSE, "the rendezvous store cannot listen on port ", o.port, " (",
                 o.host, ":", o.port, "): the port is already in use; another job or a leftover "
                 "process holds it, so pick a free MASTER_PORT");
      KILN_FAIL("the rendezvous store cannot listen on ", o.host, ":", o.port, ": bind() failed: ",
                std::strerror(err));
    }
    KILN_CHECK(listen(listen_fd_, 128) == 0, "rendezvous store: listen() on port ", o.port,
               " failed: ", std::strerror(errno));
    socklen_t len = sizeof(addr);
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    set_nonblocking(listen_fd_, true);
    KILN_CHECK(pipe2(wake_, O_NONBLOCK | O_CLOEXEC) == 0, "rendezvous store: pipe2 failed");
    thread_ = std::thread([this] { run(); });
  }

  ~Server() {
    stop_ = true;
    const char c = 0;
    [[maybe_unused]] ssize_t n = write(wake_[1], &c, 1);
    thread_.join();
    for (auto& [fd, conn] : conns_) close(fd);
    close(listen_fd_);
    close(wake_[0]);
    close(wake_[1]);
  }

  int port() const { return port_; }

 private:
  struct Conn {
    std::vector<uint8_t> in, out;
  };
  struct Waiter {  // a get or wait that blocks until its keys are set or its deadline
    int fd;
    Command cmd;
    std::vector<std::string> keys;
    Clock::time_point deadline;
  };

  void run() {
    while (!stop_) {
      std::vector<pollfd> fds;
      fds.push_back({wake_[0], POLLIN, 0});
      fds.push_back({listen_fd_, POLLIN, 0});
      for (auto& [fd, conn] : conns_)
        fds.push_back({fd, static_cast<short>(POLLIN | (conn.out.empty() ? 0 : POLLOUT)), 0});
      int wait_ms = -1;
      const auto now = Clock::now();
      for (const Waiter& w : waiters_) {
        auto left = std::chrono::duration_cast<milliseconds>(w.deadline - now).count() + 1;
        left = std::max<int64_t>(left, 0);
        if (wait_ms < 0 || left < wait_ms) wait_ms = static_cast<int>(left);
      }
      if (poll(fds.data(), fds.size(), wait_ms) < 0 && errno != EINTR) break;
      if (stop_) break;
      if (fds[1].revents & POLLIN) accept_clients();
      for (size_t i = 2; i < fds.size(); ++i) {
        const int fd = fds[i].fd;
        if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) {
          if (!read_from(fd)) { drop(fd); continue; }
        }
        if (fds[i].revents & POLLOUT) {
          if (!flush(fd)) drop(fd);
        }
      }
      expire_waiters();
    }
  }

  void accept_clients() {
    while (true) {
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      conns_[fd] = Conn{};
    }
  }

  // Reads what is there and handles every complete request; false when the client is gone.
  bool read_from(int fd) {
    Conn& c = conns_[fd];
    uint8_t buf[65536];
    while (true) {
      ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n > 0) { c.in.insert(c.in.end(), buf, buf + n); continue; }
      if (n == 0) return false;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (errno == EINTR) continue;
      return false;
    }
    size_t pos = 0;
    while (c.in.size() - pos >= 4) {
      uint32_t len;
      std::memcpy(&len, c.in.data() + pos, 4);
      if (c.in.size() - pos - 4 < len) break;
      try {
        handle(fd, Reader{c.in.data() + pos + 4, c.in.data() + pos + 4 + len});
      } catch (const std::exception&) {
        return false;  // a malformed request: not one of our clients
      }
      pos += 4 + len;
    }
    // handle() may have added to conns_ (never removes), so `c` is still valid.
    conns_[fd].in.erase(conns_[fd].in.begin(), conns_[fd].in.begin() + static_cast<long>(pos));
    return flush(fd);
  }

  void handle(int fd, Reader r) {
    const auto cmd = static_cast<Command>(r.u8());
    switch (cmd) {
      case kSet: {
        std::string key = r.str();
        data_[key] = r.bytes();
        reply(fd, {kOk});
        wake_waiters();
        return;
      }
      case kAdd: {
        std::string key = r.str();
        const int64_t delta = r.i64();
        int64_t value = 0;
        if (auto it = data_.find(key); it != data_.end())
          value = std::stoll(std::string(it->second.begin(), it->second.end()));
        value += delta;
        const std::string text = std::to_string(value);
        data_[key] = std::vector<uint8_t>(text.begin(), text.end());
        std::vector<uint8_t> out{kOk};
        put_i64(out, value);
        reply(fd, out);
        wake_waiters();
        return;
      }
      case kGet:
      case kWait: {
        Waiter w{fd, cmd, {}, {}};
        if (cmd == kGet) {
          w.keys.push_back(r.str());
        } else {
          const uint32_t n = r.u32();
          for (uint32_t i = 0; i < n; ++i) w.keys.push_back(r.str());
        }
        w.deadline = Clock::now() + milliseconds(r.i64());
        if (!try_answer(w)) waiters_.push_back(std::move(w));
        return;
      }
      case kCheck: {
        const uint32_t n = r.u32();
        bool all = true;
        for (uint32_t i = 0; i < n; ++i) all = all && data_.count(r.str()) > 0;
        reply(fd, {kOk, static_cast<uint8_t>(all)});
        return;
      }
    }
    reply(fd, {kBadRequest});
  }

  bool try_answer(const Waiter& w) {
    for (const std::string& k : w.keys)
      if (!data_.count(k)) return false;
    std::vector<uint8_t> out{kOk};
    if (w.cmd == kGet) {
      const auto& v = data_[w.keys[0]];
      put_bytes(out, v.data(), v.size());
    }
    reply(w.fd, out);
    return true;
  }

  void wake_waiters() {
    for (auto it = waiters_.begin(); it != waiters_.end();)
      it = try_answer(*it) ? waiters_.erase(it) : std::next(it);
  }

  void expire_waiters() {
    const auto now = Clock::now();
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (now >= it->deadline) {
        reply(it->fd, {kTimeout});
        flush(it->fd);
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
  }

  // Sends at once what the socket takes (the rest on POLLOUT): a rank may shut the server down
  // right after its own answer, and the others' answers must be out by then.
  void reply(int fd, const std::vector<uint8_t>& payload) {
    auto f = frame(payload);
    auto& out = conns_[fd].out;
    out.insert(out.end(), f.begin(), f.end());
    flush(fd);
  }

  bool flush(int fd) {
    auto it = conns_.find(fd);
    if (it == conns_.end()) return false;
    auto& out = it->second.out;
    while (!out.empty()) {
      ssize_t n = send(fd, out.data(), out.size(), MSG_NOSIGNAL);
      if (n > 0) { out.erase(out.begin(), out.begin() + n); continue; }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;  // POLLOUT later
      if (n < 0 && errno == EINTR) continue;
      return false;
    }
    return true;
  }

  void drop(int fd) {
    close(fd);
    conns_.erase(fd);
    waiters_.remove_if([fd](const Waiter& w) { return w.fd == fd; });
  }

  int listen_fd_ = -1;
  int port_ = 0;
  int wake_[2] = {-1, -1};
  std::atomic<bool> stop_{false};
  std::map<int, Conn> conns_;
  std::list<Waiter> waiters_;
  std::map<std::string, std::vector<uint8_t>> data_;
  std::thread thread_;
};

// ---------------------------------------------------------------------------------------------
// Client

TCPStore::TCPStore(const StoreOptions& options) : options_(options), port_(options.port) {
  KILN_CHECK(options.timeout.count() > 0, "rendezvous store: the timeout must be positive, got ",
             options.timeout.count(), " ms");
  if (options.is_server) {
    server_ = std::make_unique<Server>(options);
    port_ = server_->port();
  }
  KILN_CHECK(port_ > 0 && port_ < 65536, "rendezvous store: bad port ", port_, " for ",
             options.host, " (", who(), "); set MASTER_PORT to a port in 1..65535");
  connect_client();
}

TCPStore::~TCPStore() {
  if (fd_ >= 0) close(fd_);
  server_.reset();
}

std::string TCPStore::address() const { return options_.host + ":" + std::to_string(port_); }

std::string TCPStore::who() const {
  return "rank " + std::to_string(options_.rank) + " of " + std::to_string(options_.world_size);
}

void TCPStore::connect_client() {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string port_str = std::to_string(port_);
  const int gai = getaddrinfo(options_.host.c_str(), port_str.c_str(), &hints, &res);
  KILN_CHECK(gai == 0 && res, "could not resolve the rendezvous store address '", options_.host,
             "' (MASTER_ADDR): ", gai_strerror(gai), " (", who(), ")");
  sockaddr_in target;
  std::memcpy(&target, res->ai_addr, sizeof(target));
  freeaddrinfo(res);

  const auto deadline = Clock::now() + options_.timeout;
  std::string last_error = "connection refused";
  while (true) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    KILN_CHECK(fd >= 0, "rendezvous store: socket() failed: ", std::strerror(errno));
    set_nonblocking(fd, true);
    int rc = connect(fd, reinterpret_cast<sockaddr*>(&target), sizeof(target));
    if (rc != 0 && errno == EINPROGRESS) {
      const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
      pollfd p{fd, POLLOUT, 0};
      int ready = poll(&p, 1, static_cast<int>(std::clamp<int64_t>(left.count(), 0, 1000)));
      int err = 0;
      socklen_t len = sizeof(err);
      if (ready > 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) rc = 0;
      else errno = ready > 0 ? err : ETIMEDOUT;
    }
    if (rc == 0) {
      set_nonblocking(fd, false);
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      // Replies are awaited with poll() and a deadline; this bounds the sends the same way (a
      // server that stopped reading would otherwise block a request forever).
      const timeval send_timeout{.tv_sec = static_cast<time_t>(options_.timeout.count() / 1000),
                                 .tv_usec = static_cast<suseconds_t>(options_.timeout.count() % 1000 * 1000)};
      setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof(send_timeout));
      fd_ = fd;
      return;
    }
    last_error = std::strerror(errno);
    close(fd);
    if (Clock::now() + milliseconds(50) >= deadline) break;
    std::this_thread::sleep_for(milliseconds(50));  // the server may not be up yet: retry
  }
  KILN_FAIL("could not reach the rendezvous store at ", address(), " within ",
            seconds_str(options_.timeout), " (", who(), "; last error: ", last_error,
            "). Is rank 0 running, and are MASTER_ADDR/MASTER_PORT the same on every rank?");
}

std::vector<uint8_t> TCPStore::request(const std::vector<uint8_t>& message, milliseconds wait_hint,
                                       const std::string& what) {
  std::lock_guard<std::mutex> lock(mutex_);
  KILN_CHECK(fd_ >= 0, "the connection to the rendezvous store at ", address(),
             " was lost earlier (", who(), ")");
  const auto lost = [&](const char* why) {
    close(fd_);
    fd_ = -1;
    KILN_FAIL("lost the connection to the rendezvous store at ", address(), " during ", what, " (",
              who(), "): ", why, ". Did rank 0 exit?");
  };
  const auto out = frame(message);
  for (size_t sent = 0; sent < out.size();) {
    ssize_t n = send(fd_, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) lost("the server stopped reading (send timeout)");
    if (n <= 0) lost(std::strerror(errno));
    sent += static_cast<size_t>(n);
  }
  // The server answers blocking requests at their deadline; allow it some slack beyond that.
  const auto deadline = Clock::now() + wait_hint + std::chrono::seconds(30);
  auto read_exact = [&](uint8_t* dst, size_t n) {
    for (size_t got = 0; got < n;) {
      const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) lost("the server stopped answering");
      pollfd p{fd_, POLLIN, 0};
      int ready = poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) continue;
      ssize_t r = recv(fd_, dst + got, n - got, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r == 0) lost("the server closed the connection");
      if (r < 0) lost(std::strerror(errno));
      got += static_cast<size_t>(r);
    }
  };
  uint32_t len = 0;
  read_exact(reinterpret_cast<uint8_t*>(&len), 4);
  std::vector<uint8_t> payload(len);
  read_exact(payload.data(), len);
  KILN_CHECK(!payload.empty() && payload[0] != kBadRequest, "the rendezvous store at ", address(),
             " rejected ", what, " (", who(), ")");
  return payload;
}

void TCPStore::set(const std::string& key, const std::vector<uint8_t>& value) {
  std::vector<uint8_t> m{kSet};
  put_str(m, key);
  put_bytes(m, value.data(), value.size());
  request(m, milliseconds(0), "set('" + key + "')");
}

void TCPStore::set(const std::string& key, std::string_view value) {
  set(key, std::vector<uint8_t>(value.begin(), value.end()));
}

std::vector<uint8_t> TCPStore::get(const std::string& key) {
  std::vector<uint8_t> m{kGet};
  put_str(m, key);
  put_i64(m, options_.timeout.count());
  auto reply = request(m, options_.timeout, "get('" + key + "')");
  KILN_CHECK(reply[0] == kOk, "timed out after ", seconds_str(options_.timeout), " waiting for key '",
             key, "' in the rendezvous store at ", address(), " (", who(),
             "): no rank has set it. A rank may have failed or not started.");
  Reader r{reply.data() + 1, reply.data() + reply.size()};
  return r.bytes();
}

std::string TCPStore::get_string(const std::string& key) {
  auto v = get(key);
  return {v.begin(), v.end()};
}

int64_t TCPStore::add(const std::string& key, int64_t delta) {
  std::vector<uint8_t> m{kAdd};
  put_str(m, key);
  put_i64(m, delta);
  auto reply = request(m, milliseconds(0), "add('" + key + "')");
  Reader r{reply.data() + 1, reply.data() + reply.size()};
  return r.i64();
}

void TCPStore::wait(const std::vector<std::string>& keys) { wait(keys, options_.timeout); }

void TCPStore::wait(const std::vector<std::string>& keys, milliseconds timeout) {
  std::vector<uint8_t> m{kWait};
  put_u32(m, static_cast<uint32_t>(keys.size()));
  std::string names;
  for (const std::string& k : keys) {
    put_str(m, k);
    names += (names.empty() ? "'" : ", '") + k + "'";
  }
  put_i64(m, timeout.count());
  auto reply = request(m, timeout, "wait(" + names + ")");
  if (reply[0] == kOk) return;
  std::string missing;
  for (const std::string& k : keys)
    if (!check({k})) missing += (missing.empty() ? "'" : ", '") + k + "'";
  KILN_FAIL("timed out after ", seconds_str(timeout), " waiting for key(s) ", names,
            " in the rendezvous store at ", address(), " (", who(), "); still missing: ",
            missing.empty() ? "none (set just now)" : missing);
}

bool TCPStore::check(const std::vector<std::string>& keys) {
  std::vector<uint8_t> m{kCheck};
  put_u32(m, static_cast<uint32_t>(keys.size()));
  for (const std::string& k : keys) put_str(m, k);
  auto reply = request(m, milliseconds(0), "check");
  return reply.size() > 1 && reply[1] != 0;
}

}  // namespace kiln::dist
