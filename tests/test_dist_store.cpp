// The rendezvous store: set/get/add/wait/check within one process and across spawned ranks,
// and the errors for timeouts, an unreachable master and a port in use.
#include "dist/store.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "tests/dist_spawn.h"
#include "tests/expect_error.h"

namespace kiln::dist {
namespace {

using namespace std::chrono_literals;
using kiln::testing::expect_error;

StoreOptions server_options(std::chrono::milliseconds timeout = 5s) {
  return {.host = "127.0.0.1", .port = 0, .is_server = true, .rank = 0, .world_size = 1,
          .timeout = timeout};
}

TEST(TCPStore, SetGetAddCheckInOneProcess) {
  TCPStore store(server_options());
  EXPECT_GT(store.port(), 0);
  store.set("a", "hello");
  EXPECT_EQ(store.get_string("a"), "hello");
  store.set("a", "again");  // overwrite
  EXPECT_EQ(store.get_string("a"), "again");
  const std::vector<uint8_t> blob = {0, 1, 255, 0, 7};  // bytes, not text
  store.set("blob", blob);
  EXPECT_EQ(store.get("blob"), blob);
  store.set("empty", "");
  EXPECT_EQ(store.get_string("empty"), "");
  EXPECT_EQ(store.add("n", 5), 5);
  EXPECT_EQ(store.add("n", -2), 3);
  EXPECT_EQ(store.get_string("n"), "3");
  EXPECT_TRUE(store.check({"a", "n"}));
  EXPECT_FALSE(store.check({"a", "missing"}));
  store.wait({"a", "blob"});
}

TEST(TCPStore, LargeValueRoundTrips) {
  TCPStore store(server_options());
  std::vector<uint8_t> big(8 << 20);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>(i * 131 + 7);
  store.set("big", big);
  EXPECT_EQ(store.get("big"), big);
}

TEST(TCPStore, GetBlocksUntilAnotherClientSets) {
  TCPStore server(server_options());
  std::thread setter([port = server.port()] {
    TCPStore client({.host = "127.0.0.1", .port = port, .rank = 1, .world_size = 2, .timeout = 5s});
    std::this_thread::sleep_for(200ms);
    client.set("late", "here");
  });
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(server.get_string("late"), "here");
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 150ms);
  setter.join();
}

TEST(TCPStore, GetTimesOutNamingKeyAddressAndTimeout) {
  TCPStore store(server_options(300ms));
  const auto t0 = std::chrono::steady_clock::now();
  expect_error([&] { store.get("never"); },
               {"'never'", "127.0.0.1:" + std::to_string(store.port()), "0.3 s", "rank 0 of 1"});
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(took, 250ms);
  EXPECT_LT(took, 3s);
  // The stream stays in step after a timeout: the next request gets its own answer.
  store.set("k", "v");
  EXPECT_EQ(store.get_string("k"), "v");
}

TEST(TCPStore, WaitTimesOutNamingTheMissingKeys) {
  TCPStore store(server_options());
  store.set("present", "1");
  expect_error([&] { store.wait({"present", "absent"}, 200ms); },
               {"'absent'", "still missing: 'absent'", "0.2 s"});
}

TEST(TCPStore, UnreachableMasterNamesAddressTimeoutAndRank) {
  const int port = kiln::testing::free_port();  // nothing listens here
  const auto t0 = std::chrono::steady_clock::now();
  expect_error(
      [&] {
        TCPStore({.host = "127.0.0.1", .port = port, .rank = 1, .world_size = 2, .timeout = 1s});
      },
      {"could not reach the rendezvous store at 127.0.0.1:" + std::to_string(port) +
           " within 1 s (rank 1 of 2"});
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(took, 900ms);  // it retried until the timeout, in case rank 0 was just slow
  EXPECT_LT(took, 4s);
}

TEST(TCPStore, PortInUseIsAClearError) {
  TCPStore first(server_options());
  expect_error(
      [&] {
        TCPStore({.host = "127.0.0.1", .port = first.port(), .is_server = true, .timeout = 1s});
      },
      {std::to_string(first.port()), "already in use", "MASTER_PORT"});
}

TEST(TCPStore, LostServerIsAnErrorNotAHang) {
  auto server = std::make_unique<TCPStore>(server_options());
  TCPStore client({.host = "127.0.0.1", .port = server->port(), .rank = 1, .world_size = 2,
                   .timeout = 5s});
  server.reset();
  expect_error([&] { client.get("x"); }, {"lost the connection", "rank 1 of 2"});
}

// ---- across processes: each rank sets its key, bumps a counter, then reads everyone's keys.

TEST(TCPStoreWorker, Exchange) {
  if (!kiln::testing::is_dist_worker()) GTEST_SKIP() << "runs as a spawned rank";
  const int rank = kiln::testing::env_int("RANK");
  const int world = kiln::testing::env_int("WORLD_SIZE");
  TCPStore store({.host = "127.0.0.1", .port = kiln::testing::env_int("MASTER_PORT"),
                  .is_server = rank == 0, .rank = rank, .world_size = world, .timeout = 20s});
  const int64_t after = store.add("counter", 10 + rank);
  EXPECT_GE(after, 10 + rank);
  store.set("key/" + std::to_string(rank), "value of " + std::to_string(rank));
  std::vector<std::string> keys;
  for (int r = 0; r < world; ++r) keys.push_back("key/" + std::to_string(r));
  store.wait(keys);  // every rank has added to the counter before setting its key
  for (int r = 0; r < world; ++r) EXPECT_EQ(store.get_string(keys[r]), "value of " + std::to_string(r));
  int64_t sum = 0;
  for (int r = 0; r < world; ++r) sum += 10 + r;
  EXPECT_EQ(store.add("counter", 0), sum);
  // Rank 0 serves the store, so it leaves last: once every rank has made its last request.
  if (store.add("finished", 1) == world) store.set("all_finished", "1");
  if (rank == 0) store.wait({"all_finished"});
}

TEST(TCPStore, ExchangeAcrossThreeProcesses) {
  EXPECT_EQ(kiln::testing::run_ranks("TCPStoreWorker.Exchange", 3), std::vector<int>(3, 0));
}

// Rank 0 starts late; the others must retry their connection until it is up.
TEST(TCPStoreWorker, LateServer) {
  if (!kiln::testing::is_dist_worker()) GTEST_SKIP() << "runs as a spawned rank";
  const int rank = kiln::testing::env_int("RANK");
  if (rank == 0) std::this_thread::sleep_for(1s);
  TCPStore store({.host = "127.0.0.1", .port = kiln::testing::env_int("MASTER_PORT"),
                  .is_server = rank == 0, .rank = rank, .world_size = 2, .timeout = 20s});
  if (rank == 1) store.set("hello", "from 1");
  EXPECT_EQ(store.get_string("hello"), "from 1");
  if (rank == 0) store.wait({"bye"});
  if (rank == 1) store.set("bye", "1");
}

TEST(TCPStore, ClientsRetryUntilTheServerIsUp) {
  EXPECT_EQ(kiln::testing::run_ranks("TCPStoreWorker.LateServer", 2), std::vector<int>(2, 0));
}

}  // namespace
}  // namespace kiln::dist
