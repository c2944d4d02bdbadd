// Process-group setup: torchrun's environment, the rendezvous through the TCP store, and the
// choice of backend.
//
// Rendezvous keys (prefix "kiln/"): rank 0 sets world_size; the others compare theirs with it.
// Every rank claims rank/<r> (a second claim is an error) and adds to `joined`; the rank that
// brings it to world_size sets all_joined. A rank that finds a problem sets rendezvous_error,
// so the others stop waiting and report it too. Rank 0 then publishes run_id.
#include "dist/communicator.h"

#include <cstdlib>
#include <random>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "dist/gloo_communicator.h"
#include "dist/nccl_communicator.h"
#include "dist/store.h"

namespace kiln::dist {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  KILN_CHECK(end && *end == '\0', "environment variable ", name, "='", v, "' is not an integer");
  return static_cast<int>(x);
}

std::string make_run_id() {
  std::random_device rd;
  const uint64_t t = static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
  const uint64_t id = (static_cast<uint64_t>(rd()) << 32 ^ rd()) ^ t;
  std::ostringstream os;
  os << std::hex << id;
  return os.str();
}

// Fails this rank with `msg` after telling the other ranks (they stop waiting and report it).
[[noreturn]] void fail_rendezvous(TCPStore& store, const std::string& msg) {
  try {
    store.set("kiln/rendezvous_error", msg);
  } catch (const Error&) {
    // The store itself is gone; our own error says enough.
  }
  KILN_FAIL(msg);
}

std::string rendezvous(TCPStore& store, const InitOptions& o) {
  const std::string who = "rank " + std::to_string(o.rank) + " of " + std::to_string(o.world_size);
  if (o.rank == 0) {
    store.set("kiln/world_size", std::to_string(o.world_size));
  } else {
    const int declared = std::stoi(store.get_string("kiln/world_size"));
    if (declared != o.world_size)
      fail_rendezvous(store, "WORLD_SIZE mismatch at the rendezvous store " + store.address() +
                                 ": rank " + std::to_string(o.rank) + " declared " +
                                 std::to_string(o.world_size) + " but rank 0 declared " +
                                 std::to_string(declared));
  }
  if (store.add("kiln/rank/" + std::to_string(o.rank), 1) != 1)
    fail_rendezvous(store, "two processes claim rank " + std::to_string(o.rank) + " of " +
                               std::to_string(o.world_size) + " at the rendezvous store " +
                               store.address() + "; give each process its own RANK");
  const int64_t joined = store.add("kiln/joined", 1);
  if (joined == o.world_size) store.set("kiln/all_joined", "1");

  const auto deadline = Clock::now() + o.timeout;
  while (!store.check({"kiln/all_joined"})) {
    if (store.check({"kiln/rendezvous_error"}))
      KILN_FAIL("rendezvous failed on another rank (seen by ", who, "): ",
                store.get_string("kiln/rendezvous_error"));
    if (Clock::now() > deadline)
      KILN_FAIL("rendezvous timed out after ", seconds_str(o.timeout), " at ", store.address(),
                ": only ", store.add("kiln/joined", 0), " of ", o.world_size,
                " ranks joined (", who, "). Are all ranks started, with the same MASTER_ADDR, "
                "MASTER_PORT and WORLD_SIZE?");
    std::this_thread::sleep_for(milliseconds(10));
  }
  if (store.check({"kiln/rendezvous_error"}))
    KILN_FAIL("rendezvous failed on another rank (seen by ", who, "): ",
              store.get_string("kiln/rendezvous_error"));

  if (o.rank == 0) store.set("kiln/run_id", make_run_id());
  return store.get_string("kiln/run_id");
}

}  // namespace

InitOptions options_from_env() {
  InitOptions o;
  o.world_size = env_int("WORLD_SIZE", 1);
  KILN_CHECK(o.world_size >= 1, "WORLD_SIZE must be at least 1, got ", o.world_size);
  KILN_CHECK(o.world_size == 1 || std::getenv("RANK"), "WORLD_SIZE=", o.world_size,
             " but RANK is not set; launch with `kiln launch` or torchrun-style RANK/WORLD_SIZE");
  o.rank = env_int("RANK", 0);
  KILN_CHECK(o.rank >= 0 && o.rank < o.world_size, "RANK=", o.rank, " is outside 0..",
             o.world_size - 1, " (WORLD_SIZE=", o.world_size, ")");
  o.local_rank = env_int("LOCAL_RANK", o.rank);
  KILN_CHECK(o.local_rank >= 0, "LOCAL_RANK must not be negative, got ", o.local_rank);
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) o.master_addr = a;
  o.master_port = env_int("MASTER_PORT", o.master_port);
  KILN_CHECK(o.master_port > 0 && o.master_port < 65536, "MASTER_PORT=", o.master_port,
             " is not a port (1..65535)");
  if (const char* t = std::getenv("KILN_DIST_TIMEOUT_S"); t && *t) {
    char* end = nullptr;
    const double s = std::strtod(t, &end);
    KILN_CHECK(end && *end == '\0' && s > 0, "KILN_DIST_TIMEOUT_S='", t,
               "' is not a positive number of seconds");
    o.timeout = milliseconds(static_cast<int64_t>(s * 1000.0));
  }
  return o;
}

std::unique_ptr<Communicator> init_process_group(const InitOptions& options, Device device) {
  const InitOptions& o = options;
  KILN_CHECK(o.world_size >= 1 && o.rank >= 0 && o.rank < o.world_size, "init_process_group: rank ",
             o.rank, " is outside 0..", o.world_size - 1, " (world size ", o.world_size, ")");
  KILN_CHECK(o.timeout.count() > 0, "init_process_group: the timeout must be positive");

  std::string backend = o.backend;
  if (backend == "auto") {
#ifdef KILN_WITH_NCCL
    backend = device.is_cuda() ? "nccl" : "gloo";
#else
    backend = "gloo";
#endif
  }
  KILN_CHECK(backend == "gloo" || backend == "nccl", "unknown distributed backend '", backend,
             "' (known: auto, gloo, nccl)");
  if (backend == "nccl") {
    KILN_CHECK(device.is_cuda(), "the nccl backend needs a CUDA device, got ", device.str(),
               "; use backend gloo for CPU training");
#ifndef KILN_WITH_NCCL
    KILN_FAIL("the nccl backend is not available: kiln was built without NCCL (see docs/building.md)");
#endif
  }

  // One process needs no rendezvous (and no port): the backends run locally.
  std::shared_ptr<TCPStore> store;
  std::string run_id;
  if (o.world_size == 1) {
    run_id = make_run_id();
  } else {
    store = std::make_shared<TCPStore>(StoreOptions{.host = o.master_addr,
                                                    .port = o.master_port,
                                                    .is_server = o.rank == 0,
                                                    .rank = o.rank,
                                                    .world_size = o.world_size,
                                                    .timeout = o.timeout});
    run_id = rendezvous(*store, o);
  }

  std::unique_ptr<Communicator> comm;
  if (backend == "gloo") {
    comm = make_gloo_communicator(store, o, run_id);
  } else {
#ifdef KILN_WITH_NCCL
    comm = make_nccl_communicator(store, o, device, run_id);
#endif
  }
  // Every rank's backend is up before any returns: the backends read the store while they
  // connect, and rank 0 (its server) may otherwise finish and exit while a peer still reads.
  if (store) {
    if (store->add("kiln/backend_ready", 1) == o.world_size) store->set("kiln/all_ready", "1");
    store->wait({"kiln/all_ready"});
  }
  return comm;
}

}  // namespace kiln::dist
