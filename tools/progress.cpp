#include "tools/progress.h"

#include <unistd.h>

#include <cstdio>

namespace kiln {

std::string format_duration(double s) {
  char buf[32];
  const auto t = static_cast<long>(s + 0.5);
  if (t >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, t % 3600 / 60);
  else if (t >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

Progress::Progress(int64_t total_steps, int64_t first_step)
    : total_(total_steps), first_(first_step), start_(std::chrono::steady_clock::now()),
      tty_(isatty(STDOUT_FILENO) != 0) {}

std::string Progress::status(int64_t step, double loss, double lr, double rate, const char* unit) const {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double done = static_cast<double>(step - first_);
  const double eta = done > 0 ? elapsed / done * static_cast<double>(total_ - step) : 0.0;
  char buf[160];
  std::snprintf(buf, sizeof buf, "step %lld/%lld | loss %.4f | lr %.2e | %.0f %s/s | ETA %s",
                static_cast<long long>(step), static_cast<long long>(total_), loss, lr, rate, unit,
                format_duration(eta).c_str());
  return buf;
}

void Progress::draw(int64_t step, double loss, double lr, double rate, const char* unit) {
  if (!tty_) return;
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(kWidth * step / (total_ > 0 ? total_ : 1));
  std::string bar(filled, '#');
  bar.resize(kWidth, '.');
  std::printf("\r[%s] %s\033[K", bar.c_str(), status(step, loss, lr, rate, unit).c_str());
  std::fflush(stdout);
  drawn_ = true;
}

void Progress::finish() {
  if (tty_ && drawn_) std::printf("\n");
  drawn_ = false;
}

}  // namespace kiln
