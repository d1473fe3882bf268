// Autograd of autoenc_fast::channelwise_fc:
//   forward   y = channelwise_fc(x, weight, bias)                       saves x, weight
//   backward  dx, dweight, dbias = channelwise_fc_backward(dy, x, weight)  (dbias dropped without a bias)
#include "dispatch.h"

#include <torch/library.h>

namespace autoenc_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using ForwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&);
using BackwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                         const at::Tensor&);

at::Tensor channelwise_fc_below_autograd(const at::Tensor& x, const at::Tensor& weight,
                                         const std::optional<at::Tensor>& bias) {
  static const auto op = find_op<ForwardSignature>("autoenc_fast::channelwise_fc");
  return call_below_autograd(op, x, weight, bias);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> channelwise_fc_backward_autograd(const at::Tensor& grad_y,
                                                                                const at::Tensor& x,
                                                                                const at::Tensor& weight) {
  static const auto op = find_op<BackwardSignature>("autoenc_fast::channelwise_fc_backward");
  return refuse_double_backward("autoenc_fast::channelwise_fc_backward", {grad_y, x, weight},
                                call_below_autograd(op, grad_y, x, weight));
}

class ChannelwiseFcFunction : public torch::autograd::Function<ChannelwiseFcFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias) {
    at::Tensor y = channelwise_fc_below_autograd(x, weight, bias);
    ctx->save_for_backward({x, weight});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return {y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    auto [grad_x, grad_weight, grad_bias] = channelwise_fc_backward_autograd(grads[0], saved[0], saved[1]);
    return {grad_x, grad_weight, ctx->saved_data["has_bias"].toBool() ? grad_bias : at::Tensor()};
  }
};

at::Tensor channelwise_fc_autograd(const at::Tensor& x, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias) {
  if (!needs_graph(x, weight, bias)) return channelwise_fc_below_autograd(x, weight, bias);
  return ChannelwiseFcFunction::apply(x, weight, bias)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(autoenc_fast, Autograd, m) {
  m.impl("channelwise_fc", &channelwise_fc_autograd);
  m.impl("channelwise_fc_backward", &channelwise_fc_backward_autograd);
}

}  // namespace autoenc_fast
