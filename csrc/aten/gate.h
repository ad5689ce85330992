// The VL-PET gate granularity named by the ops' `str granularity` argument, parsed once for the CPU
// kernels and the C++ autograd op (torch headers: included by .cpp files only, never by a .cu file).
#pragma once

#include <c10/util/Exception.h>

#include <string_view>

namespace petal_C {

enum class Gate { large, middleX, middleY, small };

inline Gate parse_gate(std::string_view name) {
  if (name == "large") return Gate::large;
  if (name == "middleX") return Gate::middleX;
  if (name == "middleY") return Gate::middleY;
  TORCH_CHECK_VALUE(name == "small", "granularity must be one of ('large', 'middleX', 'middleY', 'small'), got '",
                    name, "'");
  return Gate::small;
}

}  // namespace petal_C
