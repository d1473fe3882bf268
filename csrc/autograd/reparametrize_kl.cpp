// Autograd of autoenc_fast::reparametrize_kl, without storing eps:
//   forward   z, kl = reparametrize_kl(mu, logvar, eps, seed)          saves mu, logvar, z
//   backward  dmu, dlogvar = reparametrize_kl_backward(dz, dkl, mu, logvar, z)
//             (sigma * eps = z - mu; an output the loss does not use arrives undefined
//             and its term is skipped). eps and seed get no gradient: the noise is data.
#include "dispatch.h"

#include <torch/library.h>

namespace autoenc_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Outputs = std::tuple<at::Tensor, at::Tensor>;
using ForwardSignature = Outputs(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                 const std::optional<at::Tensor>&);
using BackwardSignature = Outputs(const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                  const at::Tensor&, const at::Tensor&, const at::Tensor&);

Outputs reparametrize_kl_below_autograd(const at::Tensor& mu, const at::Tensor& logvar,
                                        const std::optional<at::Tensor>& eps, const std::optional<at::Tensor>& seed) {
  static const auto op = find_op<ForwardSignature>("autoenc_fast::reparametrize_kl");
  return call_below_autograd(op, mu, logvar, eps, seed);
}

std::optional<at::Tensor> defined_or_none(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

Outputs reparametrize_kl_backward_autograd(const std::optional<at::Tensor>& grad_z,
                                           const std::optional<at::Tensor>& grad_kl, const at::Tensor& mu,
                                           const at::Tensor& logvar, const at::Tensor& z) {
  static const auto op = find_op<BackwardSignature>("autoenc_fast::reparametrize_kl_backward");
  return refuse_double_backward("autoenc_fast::reparametrize_kl_backward",
                                {grad_z.value_or(at::Tensor()), grad_kl.value_or(at::Tensor()), mu, logvar, z},
                                call_below_autograd(op, grad_z, grad_kl, mu, logvar, z));
}

class ReparametrizeKlFunction : public torch::autograd::Function<ReparametrizeKlFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& logvar,
                               const std::optional<at::Tensor>& eps, const std::optional<at::Tensor>& seed) {
    auto [z, kl] = reparametrize_kl_below_autograd(mu, logvar, eps, seed);
    ctx->save_for_backward({mu, logvar, z});
    ctx->saved_data["eps_needs_grad"] = eps.has_value() && eps->defined() && eps->requires_grad();
    ctx->set_materialize_grads(false);
    return {z, kl};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list result(4);  // one per forward argument: mu, logvar, eps, seed
    if (!grads[0].defined() && !grads[1].defined()) return result;
    const variable_list saved = ctx->get_saved_variables();
    std::tie(result[0], result[1]) = reparametrize_kl_backward_autograd(
        defined_or_none(grads[0]), defined_or_none(grads[1]), saved[0], saved[1], saved[2]);
    // A given eps that requires grad (rare: the noise is normally data): dz/deps = sigma =
    // exp(logvar / 2); kl does not depend on eps. ATen ops, so it differentiates again.
    if (ctx->saved_data["eps_needs_grad"].toBool() && grads[0].defined()) {
      result[2] = grads[0].mul(saved[1].mul(0.5).exp());
    }
    return result;
  }
};

Outputs reparametrize_kl_autograd(const at::Tensor& mu, const at::Tensor& logvar,
                                  const std::optional<at::Tensor>& eps, const std::optional<at::Tensor>& seed) {
  if (!needs_graph(mu, logvar, eps)) return reparametrize_kl_below_autograd(mu, logvar, eps, seed);
  const variable_list out = ReparametrizeKlFunction::apply(mu, logvar, eps, seed);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(autoenc_fast, Autograd, m) {
  m.impl("reparametrize_kl", &reparametrize_kl_autograd);
  m.impl("reparametrize_kl_backward", &reparametrize_kl_backward_autograd);
}

}  // namespace autoenc_fast
