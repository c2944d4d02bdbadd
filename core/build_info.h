// What this build of kiln contains and what it can see: for `kiln --version` and bug reports.
#pragma once

#include <string>

namespace kiln {

struct BuildInfo {
  std::string version;     // "0.1.0"
  std::string build_type;  // "Release", ...
  std::string cuda;        // "13.0" compiled in, or "" when built without CUDA
  std::string cudnn;       // "9.x.y" or ""
  std::string nccl;        // "2.x.y" or ""
  int gpu_count = 0;
  std::string gpu_name;    // name of cuda:0 when visible
  std::string driver;      // CUDA driver version when visible
};

BuildInfo build_info();
std::string version_report();  // multi-line, one fact a line

}  // namespace kiln
