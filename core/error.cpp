#include "core/error.h"

#include <cstring>

namespace kiln::detail {

[[noreturn]] void throw_error(const char* file, int line, const std::string& msg) {
  // Keep only the path from the project root: "core/tensor.cpp:42".
  const char* rel = file;
  for (const char* root : {"/core/", "/kernels/", "/nn/", "/optim/", "/models/", "/data/",
                           "/dist/", "/tools/", "/tests/", "/bench/"}) {
    if (const char* p = std::strstr(file, root)) { rel = p + 1; break; }
  }
  throw Error(msg + " (" + rel + ":" + std::to_string(line) + ")");
}

}  // namespace kiln::detail
