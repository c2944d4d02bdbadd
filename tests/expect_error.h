// Checking the kiln::Error a call throws: errors in kiln name the shapes, dtypes, files or
// keys involved, and the tests hold them to it.
//
//   expect_error([&] { conv2d(x, w); }, "expects 2");
//   expect_error([&] { read_idx_images(path); }, {path, "truncated", "got 10"});
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <initializer_list>
#include <string>

#include "core/error.h"

namespace kiln::testing {

// The message of the kiln::Error that `f` throws, or "<no error>".
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

// Expects `fn` to throw a kiln::Error whose message contains every one of `parts`.
inline void expect_error(const std::function<void()>& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "message \"" << msg << "\" lacks \"" << p << "\"";
    return;
  }
  ADD_FAILURE() << "expected a kiln::Error containing \"" << (parts.size() ? *parts.begin() : "") << "\"";
}

inline void expect_error(const std::function<void()>& fn, const std::string& part) { expect_error(fn, {part}); }

}  // namespace kiln::testing
