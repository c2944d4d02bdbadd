// kiln::Error and the checks that throw it. Messages name the shapes, dtypes, devices,
// files or keys involved, so a user can act on them without a debugger.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace kiln {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
[[noreturn]] void throw_error(const char* file, int line, const std::string& msg);
}  // namespace detail

}  // namespace kiln

// KILN_CHECK(cond, "message parts", shape, ...) throws kiln::Error when cond is false.
#define KILN_CHECK(cond, ...)                                                            \
  do {                                                                                   \
    if (!(cond)) ::kiln::detail::throw_error(__FILE__, __LINE__,                         \
                                             ::kiln::detail::str_cat(__VA_ARGS__));      \
  } while (0)

#define KILN_FAIL(...) \
  ::kiln::detail::throw_error(__FILE__, __LINE__, ::kiln::detail::str_cat(__VA_ARGS__))
