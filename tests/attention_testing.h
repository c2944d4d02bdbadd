// What the attention tests share: the backends of scaled_dot_product_attention and their names.
#pragma once

#include "core/ops.h"

namespace kiln::testing {

inline constexpr AttentionBackend kAttentionBackends[] = {AttentionBackend::naive, AttentionBackend::flash,
                                                          AttentionBackend::batched};

// As the config spells it (model.attention).
inline const char* backend_name(AttentionBackend b) {
  switch (b) {
    case AttentionBackend::naive: return "naive";
    case AttentionBackend::flash: return "flash";
    case AttentionBackend::batched: return "batched";
  }
  return "?";
}

}  // namespace kiln::testing
