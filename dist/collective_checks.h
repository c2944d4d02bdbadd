// Argument checks shared by the communicator backends (dist/gloo_communicator.cpp,
// dist/nccl_communicator.cpp): the same bad call gives the same kiln::Error on either backend.
// Each backend checks device and layout itself (check_cpu_contiguous / check_tensor) first.
#pragma once

#include <string>

#include "core/error.h"
#include "core/tensor.h"
#include "dist/communicator.h"

namespace kiln::dist {

// avg divides by the world size, which integer tensors cannot hold exactly.
inline void check_reduce_op(const char* what, const Tensor& t, ReduceOp op) {
  KILN_CHECK(op != ReduceOp::avg || is_floating(t.dtype()), what, " avg needs a floating dtype, got ",
             t.meta_str(), "; use sum and divide");
}

// `who` names the calling rank for the message.
inline void check_root(int root, int world_size, const std::string& who) {
  KILN_CHECK(root >= 0 && root < world_size, "broadcast: root ", root, " is outside 0..", world_size - 1,
             " (", who, ")");
}

inline void check_all_gather(const Tensor& out, const Tensor& in, int world_size) {
  KILN_CHECK(in.dtype() == out.dtype() && out.numel() == in.numel() * world_size,
             "all_gather: out must hold world_size (", world_size, ") x in.numel() elements of in's dtype; "
             "got in ", in.meta_str(), ", out ", out.meta_str());
}

inline void check_reduce_scatter(const Tensor& out, const Tensor& in, ReduceOp op, int world_size) {
  KILN_CHECK(in.dtype() == out.dtype() && in.numel() == out.numel() * world_size,
             "reduce_scatter: in must hold world_size (", world_size, ") x out.numel() elements of out's "
             "dtype; got in ", in.meta_str(), ", out ", out.meta_str());
  check_reduce_op("reduce_scatter", in, op);
}

}  // namespace kiln::dist
