// Autograd of autoenc_fast::spade_norm and spade_norm_merged (single process; the
// synchronized-statistics path is a Python autograd.Function in autoenc_fast/ops/spade_norm.py):
//   forward   y, mean, invstd = spade_norm(x, gamma, beta, ...)     saves x, gamma, beta, mean, invstd
//   backward  dx, dgamma, dbeta = spade_norm_backward(dy, x, gamma, beta, mean, invstd, ...)
//   merged    y, mean, invstd = spade_norm_merged(x, gamma_beta, ...)  saves x, gamma_beta, mean, invstd
//             dx, dgamma_beta = spade_norm_merged_backward(dy, x, gamma_beta, mean, invstd, ...)
// xhat is recomputed in the backward, not saved. mean and invstd are not differentiable.
// The forward ops update the running statistics in place (their schemas say so): as the
// ADInplaceOrView kernel of an aten op would, the version counters of the buffers are
// bumped, so that autograd refuses a graph that saved their old values.
#include "dispatch.h"

#include <torch/library.h>

namespace autoenc_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using ForwardSignature = Outputs(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, bool, bool,
                                 double, double, std::optional<double>);
using BackwardSignature = Outputs(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  const at::Tensor&, const at::Tensor&, bool, std::optional<double>);
using MergedSignature = Outputs(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                const std::optional<at::Tensor>&, bool, bool, double, double,
                                std::optional<double>);
using MergedBackwardOutputs = std::tuple<at::Tensor, at::Tensor>;
using MergedBackwardSignature = MergedBackwardOutputs(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                      const at::Tensor&, const at::Tensor&, bool,
                                                      std::optional<double>);

// After a forward that may have updated them in place (not for an empty batch; bumped
// then too: x's size may be symbolic here, under torch.compile): the buffers' version
// counters.
void bump_running_versions(const std::optional<at::Tensor>& running_mean,
                           const std::optional<at::Tensor>& running_var, bool use_input_stats) {
  if (!use_input_stats || !running_mean.has_value() || !running_var.has_value()) return;
  // Inference tensors have no version counter (F.batch_norm updates them outside
  // inference mode too).
  if (!running_mean->is_inference()) torch::autograd::impl::bump_version(*running_mean);
  if (!running_var->is_inference()) torch::autograd::impl::bump_version(*running_var);
}

Outputs spade_norm_below_autograd(const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta,
                                  const std::optional<at::Tensor>& running_mean,
                                  const std::optional<at::Tensor>& running_var, bool use_input_stats,
                                  bool instance, double momentum, double eps, std::optional<double> negative_slope) {
  static const auto op = find_op<ForwardSignature>("autoenc_fast::spade_norm");
  Outputs out = call_below_autograd(op, x, gamma, beta, running_mean, running_var, use_input_stats, instance,
                                    momentum, eps, negative_slope);
  bump_running_versions(running_mean, running_var, use_input_stats);
  return out;
}

Outputs spade_norm_backward_autograd(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& gamma,
                                     const at::Tensor& beta, const at::Tensor& mean, const at::Tensor& invstd,
                                     bool use_input_stats, std::optional<double> negative_slope) {
  static const auto op = find_op<BackwardSignature>("autoenc_fast::spade_norm_backward");
  return refuse_double_backward(
      "autoenc_fast::spade_norm_backward", {grad_y, x, gamma, beta, mean, invstd},
      call_below_autograd(op, grad_y, x, gamma, beta, mean, invstd, use_input_stats, negative_slope));
}

Outputs spade_norm_merged_below_autograd(const at::Tensor& x, const at::Tensor& gamma_beta,
                                         const std::optional<at::Tensor>& running_mean,
                                         const std::optional<at::Tensor>& running_var, bool use_input_stats,
                                         bool instance, double momentum, double eps,
                                         std::optional<double> negative_slope) {
  static const auto op = find_op<MergedSignature>("autoenc_fast::spade_norm_merged");
  Outputs out = call_below_autograd(op, x, gamma_beta, running_mean, running_var, use_input_stats, instance,
                                    momentum, eps, negative_slope);
  bump_running_versions(running_mean, running_var, use_input_stats);
  return out;
}

MergedBackwardOutputs spade_norm_merged_backward_autograd(const at::Tensor& grad_y, const at::Tensor& x,
                                                          const at::Tensor& gamma_beta, const at::Tensor& mean,
                                                          const at::Tensor& invstd, bool use_input_stats,
                                                          std::optional<double> negative_slope) {
  static const auto op = find_op<MergedBackwardSignature>("autoenc_fast::spade_norm_merged_backward");
  return refuse_double_backward(
      "autoenc_fast::spade_norm_merged_backward", {grad_y, x, gamma_beta, mean, invstd},
      call_below_autograd(op, grad_y, x, gamma_beta, mean, invstd, use_input_stats, negative_slope));
}

// What both forwards keep for their backward besides the tensors: only y carries a
// gradient; mean's and invstd's arrive undefined, not zero-filled.
void save_settings(AutogradContext* ctx, const at::Tensor& mean, const at::Tensor& invstd, bool use_input_stats,
                   std::optional<double> negative_slope) {
  ctx->saved_data["use_input_stats"] = use_input_stats;
  ctx->saved_data["negative_slope"] = negative_slope;
  ctx->mark_non_differentiable({mean, invstd});
  ctx->set_materialize_grads(false);
}

class SpadeNormFunction : public torch::autograd::Function<SpadeNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& gamma,
                               const at::Tensor& beta, const std::optional<at::Tensor>& running_mean,
                               const std::optional<at::Tensor>& running_var, bool use_input_stats, bool instance,
                               double momentum, double eps, std::optional<double> negative_slope) {
    auto [y, mean, invstd] = spade_norm_below_autograd(x, gamma, beta, running_mean, running_var, use_input_stats,
                                                       instance, momentum, eps, negative_slope);
    ctx->save_for_backward({x, gamma, beta, mean, invstd});
    save_settings(ctx, mean, invstd, use_input_stats, negative_slope);
    return {y, mean, invstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list result(10);  // one per forward argument; only x, gamma, beta get one
    const at::Tensor& grad_y = grads[0];
    if (!grad_y.defined()) return result;
    const variable_list saved = ctx->get_saved_variables();
    std::tie(result[0], result[1], result[2]) = spade_norm_backward_autograd(
        grad_y, saved[0], saved[1], saved[2], saved[3], saved[4],
        ctx->saved_data["use_input_stats"].toBool(), ctx->saved_data["negative_slope"].toOptional<double>());
    return result;
  }
};

class SpadeNormMergedFunction : public torch::autograd::Function<SpadeNormMergedFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& gamma_beta,
                               const std::optional<at::Tensor>& running_mean,
                               const std::optional<at::Tensor>& running_var, bool use_input_stats, bool instance,
                               double momentum, double eps, std::optional<double> negative_slope) {
    auto [y, mean, invstd] = spade_norm_merged_below_autograd(x, gamma_beta, running_mean, running_var,
                                                              use_input_stats, instance, momentum, eps,
                                                              negative_slope);
    ctx->save_for_backward({x, gamma_beta, mean, invstd});
    save_settings(ctx, mean, invstd, use_input_stats, negative_slope);
    return {y, mean, invstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list result(9);  // one per forward argument; only x and gamma_beta get one
    const at::Tensor& grad_y = grads[0];
    if (!grad_y.defined()) return result;
    const variable_list saved = ctx->get_saved_variables();
    std::tie(result[0], result[1]) = spade_norm_merged_backward_autograd(
        grad_y, saved[0], saved[1], saved[2], saved[3],
        ctx->saved_data["use_input_stats"].toBool(), ctx->saved_data["negative_slope"].toOptional<double>());
    return result;
  }
};

Outputs spade_norm_autograd(const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta,
                            const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
                            bool use_input_stats, bool instance, double momentum, double eps,
                            std::optional<double> negative_slope) {
  if (!needs_graph(x, gamma, beta))
    return spade_norm_below_autograd(x, gamma, beta, running_mean, running_var, use_input_stats, instance, momentum,
                                     eps, negative_slope);
  const variable_list out = SpadeNormFunction::apply(x, gamma, beta, running_mean, running_var, use_input_stats,
                                                     instance, momentum, eps, negative_slope);
  return {out[0], out[1], out[2]};
}

Outputs spade_norm_merged_autograd(const at::Tensor& x, const at::Tensor& gamma_beta,
                                   const std::optional<at::Tensor>& running_mean,
                                   const std::optional<at::Tensor>& running_var, bool use_input_stats, bool instance,
                                   double momentum, double eps, std::optional<double> negative_slope) {
  if (!needs_graph(x, gamma_beta))
    return spade_norm_merged_below_autograd(x, gamma_beta, running_mean, running_var, use_input_stats, instance,
                                            momentum, eps, negative_slope);
  const variable_list out = SpadeNormMergedFunction::apply(x, gamma_beta, running_mean, running_var,
                                                           use_input_stats, instance, momentum, eps,
                                                           negative_slope);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(autoenc_fast, Autograd, m) {
  m.impl("spade_norm", &spade_norm_autograd);
  m.impl("spade_norm_backward", &spade_norm_backward_autograd);
  m.impl("spade_norm_merged", &spade_norm_merged_autograd);
  m.impl("spade_norm_merged_backward", &spade_norm_merged_backward_autograd);
}

}  // namespace autoenc_fast
