// What the autograd kernels of csrc/autograd/ share: looking an op up in the
// dispatcher, and running it either below autograd (no graph wanted) or through a
// torch::autograd::Function.
//
// Why autograd is registered in C++ (as torchvision does) and not with
// torch.library.register_autograd: the Python path wraps every call in a Python
// autograd.Function and re-fills the schema's default arguments on each call
// (torch/_library/utils.py's fill_defaults), about 30 us per forward and 80 us per
// backward of host time on this project's CPU, more than the whole eager reference
// of a small spade_norm step. On the H200 that host time was the step's wall clock at
// spade_norm's 16x16 and 64x64 GauGAN shapes. Fake kernels stay in Python
// (autoenc_fast/ops/).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <algorithm>
#include <string>
#include <tuple>
#include <utility>

namespace autoenc_fast {

// The typed handle of an op; callers keep it in a function-local static, so the
// lookup runs once.
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// op(args...) with autograd (and ADInplaceOrView) excluded: the backend kernel itself.
template <typename Signature, typename... Args>
auto call_below_autograd(const c10::TypedOperatorHandle<Signature>& op, Args&&... args) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(std::forward<Args>(args)...);
}

inline bool requires_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
inline bool requires_grad(const std::optional<at::Tensor>& t) { return t.has_value() && requires_grad(*t); }

// Whether a call must record a graph: grad mode on and some tensor input requiring
// grad. Otherwise the autograd kernels call the op below autograd directly, without
// building a Function node that nothing would run.
template <typename... Tensors>
bool needs_graph(const Tensors&... inputs) {
  return at::GradMode::is_enabled() && (requires_grad(inputs) || ...);
}

// The node a backward op's outputs get when autograd records the backward itself
// (create_graph=True, as a gradient penalty does). The backward ops have no
// derivative of their own: differentiating through one raises, naming the op, instead
// of leaving the second-order term silently out (autograd's fallback only warns).
class NotTwiceDifferentiable : public torch::autograd::Function<NotTwiceDifferentiable> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const std::string& op,
                                                at::TensorList inputs, torch::autograd::variable_list outputs) {
    ctx->saved_data["op"] = op;
    return outputs;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list) {
    TORCH_CHECK(false, ctx->saved_data["op"].toStringRef(),
                ": differentiating this op's gradient again (double backward, e.g. torch.autograd.grad "
                "with create_graph=True followed by a backward through the result) is not supported");
  }
};

template <typename Tuple, size_t... I>
Tuple tuple_of(const torch::autograd::variable_list& values, std::index_sequence<I...>) {
  return Tuple{values[I]...};
}

// A backward op's outputs, attached to a NotTwiceDifferentiable node when a graph is
// being recorded through `inputs`; as they are otherwise.
template <typename... Outputs>
std::tuple<Outputs...> refuse_double_backward(const char* op, std::initializer_list<at::Tensor> inputs,
                                              std::tuple<Outputs...> outputs) {
  const auto grad_input = [](const at::Tensor& t) { return requires_grad(t); };
  if (!at::GradMode::is_enabled() || std::none_of(inputs.begin(), inputs.end(), grad_input)) return outputs;
  std::vector<at::Tensor> defined;  // the node's inputs: undefined ones (absent gradients) left out
  std::copy_if(inputs.begin(), inputs.end(), std::back_inserter(defined),
               [](const at::Tensor& t) { return t.defined(); });
  const auto as_list = [](auto&... t) { return torch::autograd::variable_list{t...}; };
  const torch::autograd::variable_list wrapped =
      NotTwiceDifferentiable::apply(std::string(op), at::TensorList(defined), std::apply(as_list, outputs));
  return tuple_of<std::tuple<Outputs...>>(wrapped, std::index_sequence_for<Outputs...>{});
}

}  // namespace autoenc_fast
