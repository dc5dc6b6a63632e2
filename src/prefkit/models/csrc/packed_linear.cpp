// prefkit_native::packed_linear -- the decode step's linear layer through a oneDNN packed copy
// of its weight, as a C++ operator (prefkit/models/packed_linear.py, prefkit/models/native.py).
//
// Why C++: a compiled decode step calls this operator once per linear layer (29 times a step
// for a 4-layer Llama). Registered in C++, inductor's C++ wrapper calls it through the
// dispatcher without entering Python, so the whole step runs from C++; a Python operator
// there costs more than it saves.
//
// packed_linear(x, weight, bias) = x weight^T + bias, through the packed copy held for
// `weight` (keyed by the weight's storage address, as the Python side keys its copies), or
// at::linear when none is held or x is not float32. hold/release keep the copies; held_count
// says how many are held (0 outside every packing context).

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/linear.h>
#include <torch/library.h>

#include <mutex>
#include <optional>
#include <unordered_map>

namespace {

std::mutex held_lock;
std::unordered_map<const void*, at::Tensor> held;

at::Tensor packed_copy(const at::Tensor& weight) {
  std::lock_guard<std::mutex> guard(held_lock);
  auto found = held.find(weight.data_ptr());
  return found == held.end() ? at::Tensor() : found->second;
}

at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias) {
  at::Tensor packed = packed_copy(weight);
  if (!packed.defined() || x.scalar_type() != at::kFloat) {
    return at::linear(x, weight, bias);
  }
  static auto onednn_linear =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                            const std::optional<at::Tensor>&, c10::string_view,
                            c10::List<std::optional<c10::Scalar>>,
                            std::optional<c10::string_view>)>();
  return onednn_linear.call(x, packed, bias, "none",
                            c10::List<std::optional<c10::Scalar>>(), "");
}

void hold(const at::Tensor& weight, const at::Tensor& packed) {
  std::lock_guard<std::mutex> guard(held_lock);
  held[weight.data_ptr()] = packed;
}

void release(const at::Tensor& weight) {
  std::lock_guard<std::mutex> guard(held_lock);
  held.erase(weight.data_ptr());
}

int64_t held_count() {
  std::lock_guard<std::mutex> guard(held_lock);
  return static_cast<int64_t>(held.size());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(prefkit_native, m) {
  m.def("packed_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("hold(Tensor weight, Tensor packed) -> ()");
  m.def("release(Tensor weight) -> ()");
  m.def("held_count() -> int");
}

TORCH_LIBRARY_IMPL(prefkit_native, CPU, m) {
  m.impl("packed_linear", packed_linear);
}

TORCH_LIBRARY_IMPL(prefkit_native, CatchAll, m) {
  m.impl("hold", hold);
  m.impl("release", release);
  m.impl("held_count", held_count);
}
