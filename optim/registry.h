// Optimizers by name, as configs name them: "sgd", "adam", "adamw". An unknown name fails
// with the list of known ones; register_optimizer adds more.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "optim/optimizer.h"

namespace kiln {

using OptimizerFactory = std::function<std::unique_ptr<Optimizer>(std::vector<ParamGroup> groups,
                                                                  const OptimizerOptions& options)>;

std::unique_ptr<Optimizer> make_optimizer(const std::string& name, std::vector<ParamGroup> groups,
                                          const OptimizerOptions& options = {});
// Throws when `name` is taken.
void register_optimizer(const std::string& name, OptimizerFactory factory);
std::vector<std::string> optimizer_names();  // sorted

}  // namespace kiln
