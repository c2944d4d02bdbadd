// Which parameters no rank used, learned without a collective of its own (DDP and ZeRO-1 share
// it). Each rank marks the parameters it gave a gradient and writes one flag per parameter (1:
// used here, 0: not) into spare slots at the end of a buffer it averages over the ranks anyway;
// after the average a slot is 0 exactly when no rank used that parameter. Such a parameter keeps
// its .grad as it was (undefined after zero_grad()), so the optimizer skips it as in one process.
//
//   UsedFlags flags(tracked);            // per parameter: false for those that never get gradients
//   flags.mark(i);                       // parameter i got a gradient on this rank
//   flags.write(slots);                  // into the buffer, just before it is averaged
//   ... all_reduce / reduce_scatter (avg) ...
//   flags.unused_everywhere(slots);      // the averaged slots -> parameters no rank used
//   flags.reset();                       // a new window
#pragma once

#include <vector>

#include "core/tensor.h"

namespace kiln::dist {

class UsedFlags {
 public:
  // One flag per parameter; an untracked parameter counts as used (it takes no part).
  explicit UsedFlags(std::vector<bool> tracked);

  void mark(size_t i) { used_[i] = true; }
  void reset();  // every tracked parameter unused again

  // Writes the flags into `slots`, whose last dimension has one element per parameter (leading
  // dimensions get a copy each). All used, the common case, is a fill: no host-to-device copy.
  void write(Tensor slots);
  // The tracked parameters that no rank used, ascending, from the averaged slots of the last
  // write(). Reads them back (a device sync on CUDA) only when this rank left one unused: a
  // parameter used here is used.
  std::vector<int> unused_everywhere(const Tensor& averaged_slots) const;

  size_t size() const { return used_.size(); }

 private:
  std::vector<bool> tracked_, used_;
  bool all_used_ = true;  // at the last write(), this rank used every tracked parameter
};

}  // namespace kiln::dist
