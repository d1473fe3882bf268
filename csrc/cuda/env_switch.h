// The environment switches that select a CUDA kernel variant (AUTOENC_FAST_SPADE_NORM_FUSED,
// AUTOENC_FAST_CHANNELWISE_FC_COLS, AUTOENC_FAST_CHANNELWISE_FC_PAIRED): read on every call,
// so that a benchmark can time the variants against each other in one process before one
// becomes the default.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <initializer_list>
#include <string>

namespace autoenc_fast {

// The switch's value: "" when unset or empty, else one of `allowed`; any other value is an
// error naming the op, the variable and the values it takes ("must be 0, 1 or auto").
inline std::string env_switch(const char* op, const char* name, std::initializer_list<const char*> allowed) {
  const char* env = std::getenv(name);
  const std::string value = env != nullptr ? env : "";
  bool known = value.empty();
  std::string choices;
  size_t i = 0;
  for (const char* choice : allowed) {
    known = known || value == choice;
    choices += (i == 0 ? "" : i + 1 == allowed.size() ? " or " : ", ") + std::string(choice);
    ++i;
  }
  TORCH_CHECK(known, op, ": ", name, " must be ", choices, "; got '", value, "'");
  return value;
}

}  // namespace autoenc_fast
