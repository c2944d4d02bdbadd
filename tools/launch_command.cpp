// `kiln launch --nproc N [options] CMD...`: torchrun for kiln. Starts N copies of CMD with the
// environment of one rank each (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT, KILN_DIST_BACKEND), prefixes every line they print with "[rank R] ", forwards
// SIGINT/SIGTERM to them, and when one fails stops the rest, so that no rank is left waiting in
// a collective for a peer that is gone:
//   a rank exits non-zero or dies by a signal -> SIGTERM to the others, SIGKILL after --grace-s,
//   then exit with that rank's status and a message naming it.
// Each child runs in its own process group, so a signal reaches everything it started (a shell
// command's children too), and Ctrl-C in a terminal reaches the launcher alone, which forwards it.
#include <CLI/CLI.hpp>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/error.h"
#include "tools/commands.h"

namespace kiln::cli {

namespace {

struct LaunchOptions {
  int nproc = 1;
  std::string backend = "auto";
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;  // 0: a free port of this machine (single node only)
  int nnodes = 1;
  int node_rank = 0;
  double grace_s = 5.0;
  std::vector<std::string> command;
};

// ---- signals reach the poll loop through a self-pipe
int signal_pipe[2] = {-1, -1};
extern "C" void on_launcher_signal(int sig) {
  const int saved = errno;
  const unsigned char b = static_cast<unsigned char>(sig);
  [[maybe_unused]] ssize_t n = write(signal_pipe[1], &b, 1);
  errno = saved;
}

void write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// One of a child's output streams: bytes are cut into lines, each written whole with the prefix.
struct Stream {
  int fd = -1;       // read end of the child's pipe; -1 once closed
  int out_fd = 1;    // where its lines go (our stdout or stderr)
  std::string prefix;
  std::string partial;

  void emit(const std::string& line) {
    const std::string s = prefix + line + "\n";
    write_all(out_fd, s.data(), s.size());
  }
  // Reads what is there; false at end of file.
  bool drain() {
    char buf[65536];
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return true;
    if (n <= 0) {
      if (!partial.empty()) emit(partial);
      partial.clear();
      close(fd);
      fd = -1;
      return false;
    }
    partial.append(buf, static_cast<size_t>(n));
    size_t start = 0;
    for (size_t nl; (nl = partial.find('\n', start)) != std::string::npos; start = nl + 1)
      emit(partial.substr(start, nl - start));
    partial.erase(0, start);
    return true;
  }
};

struct Child {
  int rank = 0;
  pid_t pid = -1;
  bool running = false;
  int status = 0;  // waitpid's, once it has exited
  Stream out, err;
};

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    const char* name = sigabbrev_np(sig);
    return std::string("was killed by signal ") + (name ? std::string("SIG") + name : "") + " (" +
           std::to_string(sig) + ")";
  }
  return "stopped with wait status " + std::to_string(status);
}

int exit_code_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

int free_port() {
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  KILN_CHECK(s >= 0, "kiln launch: socket(): ", std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  const bool ok = bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                  getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  close(s);
  KILN_CHECK(ok, "kiln launch: could not find a free port: ", std::strerror(errno));
  return ntohs(a.sin_port);
}

// What one rank's exec needs, built before fork(): the child of a fork may only make
// async-signal-safe calls, so it allocates nothing and formats nothing.
struct ChildExec {
  std::vector<std::string> env_storage;
  std::vector<char*> envp, argv;
  std::string exec_error;  // written when execvpe fails, followed by strerror's text

  ChildExec(const LaunchOptions& o, int local_rank, int port) {
    const int rank = o.node_rank * o.nproc + local_rank;
    const std::pair<const char*, std::string> vars[] = {
        {"RANK", std::to_string(rank)},
        {"WORLD_SIZE", std::to_string(o.nnodes * o.nproc)},
        {"LOCAL_RANK", std::to_string(local_rank)},
        {"LOCAL_WORLD_SIZE", std::to_string(o.nproc)},
        {"GROUP_RANK", std::to_string(o.node_rank)},
        {"MASTER_ADDR", o.master_addr},
        {"MASTER_PORT", std::to_string(port)},
        {"KILN_DIST_BACKEND", o.backend},
    };
    for (char** e = environ; *e; ++e) {
      const std::string_view entry(*e);
      const std::string_view name = entry.substr(0, entry.find('='));
      bool replaced = false;
      for (const auto& [var, value] : vars) replaced |= name == var;
      if (!replaced) env_storage.emplace_back(entry);
    }
    for (const auto& [var, value] : vars) env_storage.push_back(std::string(var) + "=" + value);
    for (std::string& e : env_storage) envp.push_back(e.data());
    envp.push_back(nullptr);
    for (const std::string& a : o.command) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    exec_error = "kiln launch: cannot run " + o.command[0] + ": ";
  }
};

[[noreturn]] void exec_child(const ChildExec& x, pid_t launcher, int out_fd, int err_fd) {
  setpgid(0, 0);
  // The rank must not outlive a launcher killed outright (SIGKILL leaves no chance to stop
  // it): it lives in its own process group, so nothing else would reach it.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != launcher) _exit(128 + SIGKILL);  // the launcher died before prctl
  // Default dispositions and an empty mask for the command, whatever the launcher set.
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  signal(SIGPIPE, SIG_DFL);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  const int devnull = open("/dev/null", O_RDONLY);
  if (devnull >= 0) dup2(devnull, STDIN_FILENO);  // a background process group must not read the tty
  dup2(out_fd, STDOUT_FILENO);
  dup2(err_fd, STDERR_FILENO);
  execvpe(x.argv[0], x.argv.data(), x.envp.data());
  const char* why = strerrordesc_np(errno);
  write_all(STDERR_FILENO, x.exec_error.data(), x.exec_error.size());
  if (why) write_all(STDERR_FILENO, why, std::strlen(why));
  write_all(STDERR_FILENO, "\n", 1);
  _exit(127);
}

void signal_all(std::vector<Child>& children, int sig) {
  for (Child& c : children)
    if (c.running) kill(-c.pid, sig);  // the child's process group
}

int run_launch(LaunchOptions o) {
  if (!o.command.empty() && o.command[0] == "--") o.command.erase(o.command.begin());
  KILN_CHECK(!o.command.empty(), "kiln launch: no command given (kiln launch --nproc N CMD ...)");
  KILN_CHECK(o.nproc >= 1, "kiln launch: --nproc must be >= 1, got ", o.nproc);
  KILN_CHECK(o.nnodes >= 1, "kiln launch: --nnodes must be >= 1, got ", o.nnodes);
  KILN_CHECK(o.node_rank >= 0 && o.node_rank < o.nnodes, "kiln launch: --node-rank ", o.node_rank,
             " is outside [0, ", o.nnodes, ")");
  KILN_CHECK(o.master_port != 0 || o.nnodes == 1,
             "kiln launch: --master-port 0 (pick a free port) works on one node only; pass a port");
  const int port = o.master_port == 0 ? free_port() : o.master_port;

  KILN_CHECK(pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) == 0, "kiln launch: pipe(): ", std::strerror(errno));
  struct sigaction sa {};
  sa.sa_handler = on_launcher_signal;
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int {}, old_term {};
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  signal(SIGPIPE, SIG_IGN);  // a closed stdout must not kill the launcher before its children

  std::vector<Child> children(static_cast<size_t>(o.nproc));
  const pid_t launcher = getpid();
  const auto restore_signals = [&] {
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
    close(signal_pipe[0]);
    close(signal_pipe[1]);
  };
  try {
    for (int i = 0; i < o.nproc; ++i) {
      Child& c = children[static_cast<size_t>(i)];
      c.rank = o.node_rank * o.nproc + i;
      const ChildExec exec(o, i, port);
      int out[2], err[2];
      KILN_CHECK(pipe2(out, O_CLOEXEC) == 0, "kiln launch: pipe(): ", std::strerror(errno));
      c.out = {out[0], STDOUT_FILENO, {}, {}};
      if (pipe2(err, O_CLOEXEC) != 0) {
        close(out[1]);
        KILN_FAIL("kiln launch: pipe(): ", std::strerror(errno));
      }
      c.err = {err[0], STDERR_FILENO, {}, {}};
      const pid_t pid = fork();
      if (pid == 0) exec_child(exec, launcher, out[1], err[1]);  // dup2 clears O_CLOEXEC on 1 and 2
      close(out[1]);
      close(err[1]);
      KILN_CHECK(pid > 0, "kiln launch: fork(): ", std::strerror(errno));
      setpgid(pid, pid);  // also here, so that a signal sent right away reaches the group
      c.pid = pid;
      c.running = true;
      c.out.prefix = c.err.prefix = "[rank " + std::to_string(c.rank) + "] ";
    }
  } catch (...) {
    // Ranks already started would wait for the missing ones until their timeout: stop them.
    signal_all(children, SIGKILL);
    for (Child& c : children) {
      if (c.running) waitpid(c.pid, nullptr, 0);
      for (Stream* s : {&c.out, &c.err})
        if (s->fd >= 0) close(s->fd);
    }
    restore_signals();
    throw;
  }

  using Clock = std::chrono::steady_clock;
  bool failed = false;            // a rank failed; the others are being stopped
  int exit_code = 0;
  int signals_forwarded = 0;
  Clock::time_point kill_at = Clock::time_point::max();
  auto say = [](const std::string& s) {
    const std::string line = "kiln launch: " + s + "\n";
    write_all(STDERR_FILENO, line.data(), line.size());
  };

  for (;;) {
    // Reap: note the first failure and stop the others.
    for (Child& c : children) {
      if (!c.running) continue;
      int st = 0;
      const pid_t r = waitpid(c.pid, &st, WNOHANG);
      if (r != c.pid) continue;
      c.running = false;
      c.status = st;
      const int code = exit_code_of(st);
      // After a forwarded SIGINT/SIGTERM, exiting 130 or 143 is the rank doing as asked.
      const bool expected_stop = signals_forwarded > 0 && (code == 130 || code == 143);
      if (code != 0 && !expected_stop && !failed) {
        failed = true;
        exit_code = code;
        say("rank " + std::to_string(c.rank) + " (pid " + std::to_string(c.pid) + ") " +
            describe_status(st) + "; stopping the other ranks");
        signal_all(children, SIGTERM);
        kill_at = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                     std::chrono::duration<double>(o.grace_s));
      } else if (code != 0 && exit_code == 0) {
        exit_code = code;
      }
    }
    bool any_running = false, any_open = false;
    for (const Child& c : children) {
      any_running |= c.running;
      any_open |= c.out.fd >= 0 || c.err.fd >= 0;
    }
    if (!any_running && !any_open) break;
    if (any_running && Clock::now() >= kill_at) {
      std::ostringstream msg;
      msg << "ranks still running " << o.grace_s << " s after SIGTERM; sending SIGKILL";
      say(msg.str());
      signal_all(children, SIGKILL);
      kill_at = Clock::time_point::max();
    }
    // Output left open by a grandchild after its rank exited would keep us here: once every
    // rank has exited, read what is there and stop.
    std::vector<pollfd> fds;
    std::vector<Stream*> streams;
    fds.push_back({signal_pipe[0], POLLIN, 0});
    for (Child& c : children)
      for (Stream* s : {&c.out, &c.err})
        if (s->fd >= 0) {
          fds.push_back({s->fd, POLLIN, 0});
          streams.push_back(s);
        }
    const int ready = poll(fds.data(), fds.size(), any_running ? 50 : 0);
    if (ready < 0 && errno != EINTR) {  // cannot watch the ranks any more: none may go on alone
      say(std::string("poll(): ") + std::strerror(errno) + "; killing every rank");
      signal_all(children, SIGKILL);
      for (Child& c : children)
        if (c.running) waitpid(c.pid, &c.status, 0);
      failed = true;
      exit_code = 1;
      break;
    }
    if (fds[0].revents & POLLIN) {
      unsigned char sig = 0;
      while (read(signal_pipe[0], &sig, 1) == 1) {
        ++signals_forwarded;
        if (signals_forwarded >= 3) {
          say("third signal: killing every rank");
          signal_all(children, SIGKILL);
        } else {
          say(std::string("forwarding ") + (sig == SIGINT ? "SIGINT" : "SIGTERM") + " to every rank");
          signal_all(children, sig);
        }
      }
    }
    for (size_t i = 1; i < fds.size(); ++i)
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) streams[i - 1]->drain();
    if (!any_running && ready <= 0) {
      for (Child& c : children)
        for (Stream* s : {&c.out, &c.err})
          if (s->fd >= 0) {
            if (!s->partial.empty()) s->emit(s->partial);
            close(s->fd);
            s->fd = -1;
          }
    }
  }

  restore_signals();
  if (failed) say("failed with exit code " + std::to_string(exit_code));
  return exit_code;
}

}  // namespace

void add_launch_command(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<LaunchOptions>();
  auto* launch = app.add_subcommand(
      "launch", "run a command as N ranks of one data-parallel job (torchrun's environment)");
  launch->add_option("--nproc", o->nproc, "processes (ranks) on this node, usually one per GPU")->required();
  launch->add_option("--backend", o->backend, "collective backend: nccl, gloo or auto (KILN_DIST_BACKEND)")
      ->check(CLI::IsMember({"nccl", "gloo", "auto"}));
  launch->add_option("--master-addr", o->master_addr, "address of rank 0's node (MASTER_ADDR)");
  launch->add_option("--master-port", o->master_port, "port of rank 0's store (MASTER_PORT); 0: a free one");
  launch->add_option("--nnodes", o->nnodes, "nodes in the job");
  launch->add_option("--node-rank", o->node_rank, "this node's index: its ranks are node_rank*nproc + i");
  launch->add_option("--grace-s", o->grace_s, "seconds between SIGTERM and SIGKILL when stopping ranks");
  // Everything from the command on (after an optional "--") is passed through untouched, its
  // own flags included: the first positional argument ends the launcher's options.
  launch->add_option("command", o->command, "the command each rank runs, with its arguments")->required();
  launch->positionals_at_end();
  launch->footer("Example: kiln launch --nproc 2 kiln train configs/mlp.yaml dist.zero=1");
  launch->callback([o, &exit_code] { exit_code = run_launch(*o); });
}

}  // namespace kiln::cli
