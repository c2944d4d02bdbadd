// Training progress on the terminal: a redrawn bar on a TTY, plain lines otherwise (logs, CI).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace kiln {

class Progress {
 public:
  explicit Progress(int64_t total_steps, int64_t first_step = 0);
  // Formats "step 120/2000 | loss 0.4123 | lr 1.00e-03 | 5123 samples/s | ETA 1m12s"; `unit`
  // names what `rate` counts ("tokens" for language models).
  std::string status(int64_t step, double loss, double lr, double rate, const char* unit = "samples") const;
  // Redraws the bar in place when stdout is a terminal; does nothing otherwise.
  void draw(int64_t step, double loss, double lr, double rate, const char* unit = "samples");
  void finish();  // ends the bar's line
  bool is_tty() const { return tty_; }

 private:
  int64_t total_, first_;
  std::chrono::steady_clock::time_point start_;
  bool tty_;
  bool drawn_ = false;
};

std::string format_duration(double seconds);  // "1h02m", "3m12s", "42s"

}  // namespace kiln
