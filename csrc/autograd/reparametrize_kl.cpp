// Autograd of autoenc_fast::reparametrize_kl, without storing a noise tensor of its own:
//   forward   z, kl = reparametrize_kl(mu, logvar, eps, seed)
//   backward  dmu, dlogvar = reparametrize_kl_backward(dz, dkl, mu, logvar, z?, eps?, seed?)
// logvar's gradient through z needs sigma * eps:
//   - eps given: from eps (saved; the caller holds it anyway);
//   - drawn from seed on a GPU or in a half type: re-drawn from the saved seed (two int64).
//     z - mu would carry z's rounding, |mu| / sigma times eps's own: a few percent of the
//     gradient in bfloat16 (README); the GPU's forward draws at copy bandwidth;
//   - drawn from seed in float32/float64 on the CPU: z - mu from the saved z (drawing again
//     would cost more than the rest of the backward; exact to 2^-24 |mu| / sigma in float32);
//   - no noise: nothing (z = mu).
// An output the loss does not use arrives undefined and its term is skipped. eps and seed
// get no gradient: the noise is data.
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
                                  const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                  const std::optional<at::Tensor>&, const std::optional<at::Tensor>&);

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
                                           const at::Tensor& logvar, const std::optional<at::Tensor>& z,
                                           const std::optional<at::Tensor>& eps,
                                           const std::optional<at::Tensor>& seed) {
  static const auto op = find_op<BackwardSignature>("autoenc_fast::reparametrize_kl_backward");
  return refuse_double_backward(
      "autoenc_fast::reparametrize_kl_backward",
      {grad_z.value_or(at::Tensor()), grad_kl.value_or(at::Tensor()), mu, logvar, z.value_or(at::Tensor()),
       eps.value_or(at::Tensor())},
      call_below_autograd(op, grad_z, grad_kl, mu, logvar, z, eps, seed));
}

// Whether the backward re-draws the noise from the seed instead of reading z (see the top).
bool redraws_noise(const at::Tensor& mu) {
  const auto dtype = mu.scalar_type();
  return !mu.is_cpu() || dtype == at::kHalf || dtype == at::kBFloat16;
}

class ReparametrizeKlFunction : public torch::autograd::Function<ReparametrizeKlFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& logvar,
                               const std::optional<at::Tensor>& eps, const std::optional<at::Tensor>& seed) {
    auto [z, kl] = reparametrize_kl_below_autograd(mu, logvar, eps, seed);
    const bool has_eps = eps.has_value() && eps->defined(), has_seed = seed.has_value() && seed->defined();
    // Saved: mu, logvar, then z, eps and seed (undefined where the backward does not need them).
    const bool redraw = !has_eps && has_seed && redraws_noise(mu);
    ctx->save_for_backward({mu, logvar, has_eps || redraw || !has_seed ? at::Tensor() : z,
                            has_eps ? *eps : at::Tensor(), redraw ? *seed : at::Tensor()});
    ctx->saved_data["eps_needs_grad"] = has_eps && eps->requires_grad();
    ctx->set_materialize_grads(false);
    return {z, kl};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list result(4);  // one per forward argument: mu, logvar, eps, seed
    if (!grads[0].defined() && !grads[1].defined()) return result;
    const variable_list saved = ctx->get_saved_variables();
    std::tie(result[0], result[1]) = reparametrize_kl_backward_autograd(
        defined_or_none(grads[0]), defined_or_none(grads[1]), saved[0], saved[1], defined_or_none(saved[2]),
        defined_or_none(saved[3]), defined_or_none(saved[4]));
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
