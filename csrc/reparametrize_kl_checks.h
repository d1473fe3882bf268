// Argument checks of reparametrize_kl shared by every C++ backend: each message
// names the argument and says what was expected.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace autoenc_fast {

inline void check_same_as_mu(const at::Tensor& t, const char* name, const at::Tensor& mu) {
  TORCH_CHECK(t.sizes() == mu.sizes(), "reparametrize_kl: `", name, "` must have mu's shape ",
              mu.sizes(), "; got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == mu.scalar_type(), "reparametrize_kl: `", name,
              "` must have mu's dtype ", mu.scalar_type(), "; got ", t.scalar_type());
  TORCH_CHECK(t.device() == mu.device(), "reparametrize_kl: `", name, "` must be on mu's device ",
              mu.device(), "; got ", t.device());
}

inline void check_reparametrize_kl_seed(const at::Tensor& seed, const at::Tensor& mu) {
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.numel() == 2,
              "reparametrize_kl: `seed` must be an int64 tensor of two elements (key, offset); got ",
              seed.scalar_type(), " of shape ", seed.sizes());
  TORCH_CHECK(seed.is_cpu() || seed.device() == mu.device(),
              "reparametrize_kl: `seed` must be on the CPU or on mu's device ", mu.device(), "; got ",
              seed.device());
}

inline void check_reparametrize_kl_inputs(const at::Tensor& mu, const at::Tensor& logvar,
                                          const std::optional<at::Tensor>& eps,
                                          const std::optional<at::Tensor>& seed) {
  TORCH_CHECK(mu.dim() >= 1,
              "reparametrize_kl: `mu` must have at least one dimension (the batch); got a 0-dim tensor");
  TORCH_CHECK(at::isFloatingType(mu.scalar_type()),
              "reparametrize_kl: `mu` must be a floating-point tensor; got ", mu.scalar_type());
  check_same_as_mu(logvar, "logvar", mu);
  if (eps.has_value()) check_same_as_mu(*eps, "eps", mu);
  if (seed.has_value()) check_reparametrize_kl_seed(*seed, mu);
}

inline void check_reparametrize_kl_backward_inputs(const std::optional<at::Tensor>& grad_z,
                                                   const std::optional<at::Tensor>& grad_kl,
                                                   const at::Tensor& mu, const at::Tensor& logvar,
                                                   const std::optional<at::Tensor>& z,
                                                   const std::optional<at::Tensor>& eps,
                                                   const std::optional<at::Tensor>& seed) {
  TORCH_CHECK(mu.dim() >= 1, "reparametrize_kl_backward: `mu` must have at least one dimension");
  check_same_as_mu(logvar, "logvar", mu);
  if (z.has_value()) check_same_as_mu(*z, "z", mu);
  if (eps.has_value()) check_same_as_mu(*eps, "eps", mu);
  if (seed.has_value()) check_reparametrize_kl_seed(*seed, mu);
  if (grad_z.has_value()) check_same_as_mu(*grad_z, "grad_z", mu);
  if (grad_kl.has_value()) {
    TORCH_CHECK(grad_kl->dim() == 1 && grad_kl->size(0) == mu.size(0),
                "reparametrize_kl_backward: `grad_kl` must have shape (", mu.size(0), ",); got ",
                grad_kl->sizes());
    TORCH_CHECK(grad_kl->device() == mu.device(),
                "reparametrize_kl_backward: `grad_kl` must be on mu's device");
    TORCH_CHECK(grad_kl->scalar_type() == mu.scalar_type(),
                "reparametrize_kl_backward: the CPU kernel takes `grad_kl` of mu's dtype ",
                mu.scalar_type(), "; got ", grad_kl->scalar_type());
  }
}

}  // namespace autoenc_fast
