#include "optim/param_groups.h"

#include <set>

namespace kiln {

std::vector<ParamGroup> make_param_groups(
    const std::vector<std::pair<std::string, Tensor>>& named_parameters, double weight_decay) {
  KILN_CHECK(!named_parameters.empty(), "make_param_groups: no parameters given");
  KILN_CHECK(weight_decay >= 0.0, "make_param_groups: weight_decay must be >= 0, got ",
             weight_decay);
  ParamGroup decay, no_decay;
  decay.weight_decay = weight_decay;
  no_decay.weight_decay = 0.0;
  std::set<std::string> names;
  for (const auto& [name, p] : named_parameters) {
    KILN_CHECK(names.insert(name).second, "make_param_groups: parameter '", name,
               "' is listed twice");
    KILN_CHECK(p.defined(), "make_param_groups: parameter '", name, "' is undefined");
    if (!p.requires_grad()) continue;
    (p.dim() >= 2 ? decay : no_decay).params.push_back(p);
  }
  return {decay, no_decay};
}

}  // namespace kiln
