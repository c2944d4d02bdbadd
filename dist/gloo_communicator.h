// The Gloo backend: collectives on contiguous CPU tensors over TCP (Debian's libgloo).
// Collectives run on one worker thread per communicator, in the order they were issued, so
// every rank runs them in the same order; all_reduce_async returns at once.
#pragma once

#include <memory>
#include <string>

#include "dist/communicator.h"

namespace kiln::dist {

class TCPStore;

// `store` carries the Gloo address exchange (under a prefix made from run_id); it may be null
// when world_size is 1. The communicator keeps the store alive (rank 0 serves it).
std::unique_ptr<Communicator> make_gloo_communicator(std::shared_ptr<TCPStore> store,
                                                     const InitOptions& options,
                                                     const std::string& run_id);

}  // namespace kiln::dist
