// The NCCL backend: collectives on contiguous CUDA tensors, on the communicator's own stream,
// ordered after the work already queued on kiln's current stream. Only in builds with
// KILN_WITH_NCCL; init_process_group reports a clear error otherwise.
#pragma once

#include <memory>
#include <string>

#include "dist/communicator.h"

namespace kiln::dist {

class TCPStore;

// Rank 0 creates the ncclUniqueId and shares it through `store` (null when world_size is 1).
// `device` is the rank's GPU: the caller picks it (cuda:LOCAL_RANK when every rank sees all
// of the node's GPUs).
std::unique_ptr<Communicator> make_nccl_communicator(std::shared_ptr<TCPStore> store,
                                                     const InitOptions& options, Device device,
                                                     const std::string& run_id);

}  // namespace kiln::dist
