#include "dist/used_flags.h"

#include <algorithm>

#include "core/autograd.h"
#include "core/error.h"
#include "core/ops.h"

namespace kiln::dist {

UsedFlags::UsedFlags(std::vector<bool> tracked) : tracked_(std::move(tracked)) { reset(); }

void UsedFlags::reset() {
  used_.resize(tracked_.size());
  for (size_t i = 0; i < tracked_.size(); ++i) used_[i] = !tracked_[i];
}

void UsedFlags::write(Tensor slots) {
  NoGradGuard no_grad;
  const int64_t n = static_cast<int64_t>(used_.size());
  KILN_CHECK(slots.dim() >= 1 && slots.size(-1) == n, "UsedFlags: ", n, " flags do not fit slots ",
             slots.meta_str());
  all_used_ = std::all_of(used_.begin(), used_.end(), [](bool u) { return u; });
  if (all_used_) {
    slots.fill_(1.0);
    return;
  }
  std::vector<float> flags(used_.size());
  for (size_t i = 0; i < used_.size(); ++i) flags[i] = used_[i] ? 1.0f : 0.0f;
  // One host-to-device copy of n flags, then broadcast over any leading dimensions there.
  slots.copy_(from_vector(flags, {n}, {.device = slots.device()}));
}

std::vector<int> UsedFlags::unused_everywhere(const Tensor& averaged_slots) const {
  std::vector<int> unused;
  if (all_used_) return unused;
  NoGradGuard no_grad;
  // Any rank's 1 averages to at least 1/world, so only "no rank" gives an exact 0.
  const std::vector<float> used_by = averaged_slots.to_vector<float>();
  KILN_CHECK(used_by.size() == used_.size(), "UsedFlags: ", used_.size(), " flags, but the averaged slots are ",
             averaged_slots.meta_str());
  for (size_t i = 0; i < used_.size(); ++i)
    if (!used_[i] && used_by[i] == 0.0f) unused.push_back(static_cast<int>(i));
  return unused;
}

}  // namespace kiln::dist
