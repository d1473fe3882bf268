// Every autoenc_fast operator schema, declared once. Kernels register per
// backend: csrc/cpu/*.cpp (CPU), csrc/cuda/*.cu (CUDA), autoenc_fast/triton/*.py
// (CUDA, from Python); autograd in csrc/autograd/*.cpp; fake kernels in autoenc_fast/ops/.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import autoenc_fast._C` loads this library (and so runs the registrations below);
// the module itself is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(autoenc_fast, m) {
  // z = mu + exp(logvar / 2) * eps and kl[b] = -1/2 sum(1 + logvar - mu^2 - exp(logvar)).
  // eps given: used as is. eps None, seed given: eps drawn by Philox from seed = (key, offset).
  // Both None: no noise, z = mu.
  m.def("reparametrize_kl(Tensor mu, Tensor logvar, Tensor? eps, Tensor? seed) -> (Tensor z, Tensor kl)");
  // dmu = dz + dkl[b] * mu, dlogvar = 1/2 dz * sigma * eps + 1/2 dkl[b] * (exp(logvar) - 1), with
  // sigma * eps = exp(logvar / 2) * eps from eps when given, else with eps re-drawn from seed
  // when given (the forward's noise), else z - mu from z when given; none of them: no noise.
  m.def(
      "reparametrize_kl_backward(Tensor? grad_z, Tensor? grad_kl, Tensor mu, Tensor logvar, Tensor? z, "
      "Tensor? eps=None, Tensor? seed=None) -> (Tensor grad_mu, Tensor grad_logvar)");
  // Channel-wise fully connected layer (Context Encoders' bottleneck), P = H * W:
  //   y[b, c, j] = sum_i x[b, c, i] * weight[c, i, j] + bias[c, j]
  // x: (B, C, H, W) of any layout, weight: (C, P, P), bias: (C, P) or None.
  // y is channels_last when x is channels_last (and not also contiguous), else contiguous.
  m.def("channelwise_fc(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // grad_x = grad_y @ weight^T, grad_weight = x^T @ grad_y, grad_bias = sum_b grad_y (per channel).
  m.def(
      "channelwise_fc_backward(Tensor grad_y, Tensor x, Tensor weight)"
      " -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");

  // SPADE normalization: y = act(xhat * (1 + gamma) + beta), xhat = (x - mean) * invstd,
  // act = leaky_relu(negative_slope) when given. Statistics are per channel over
  // (N, H, W) (instance=False) or per (n, c) over (H, W) (instance=True); mean/var are
  // float32 (float64 for float64 x), var is biased. Outputs follow x's memory format
  // (channels_last when x is channels_last, else contiguous).
  // Fused single-process forward, as aten::native_batch_norm: with use_input_stats the
  // batch statistics, and running_mean/running_var (when given, batch norm only) updated
  // in place with them, running += momentum * (batch - running), the variance unbiased;
  // without, the running statistics are used. Returns the mean and invstd =
  // 1 / sqrt(var + eps) it normalized with, which its backward takes.
  m.def(
      "spade_norm(Tensor x, Tensor gamma, Tensor beta, Tensor(a!)? running_mean, Tensor(b!)? running_var,"
      " bool use_input_stats, bool instance, float momentum, float eps, float? negative_slope)"
      " -> (Tensor y, Tensor mean, Tensor invstd)");
  // The same with gamma and beta given as one tensor, gamma_beta = cat([gamma, beta], 1) of
  // shape (N, 2C, H, W), as nn.SPADE's merged modulation convolution makes them: its
  // backward returns the gradient of gamma_beta as one tensor, so autograd does not
  // concatenate grad_gamma and grad_beta (a copy of both) for that convolution.
  m.def(
      "spade_norm_merged(Tensor x, Tensor gamma_beta, Tensor(a!)? running_mean, Tensor(b!)? running_var,"
      " bool use_input_stats, bool instance, float momentum, float eps, float? negative_slope)"
      " -> (Tensor y, Tensor mean, Tensor invstd)");
  // The pieces, for synchronized statistics (all_reduce between them, in Python):
  m.def("spade_norm_stats(Tensor x, bool instance) -> (Tensor mean, Tensor var)");
  m.def(
      "spade_norm_apply(Tensor x, Tensor gamma, Tensor beta, Tensor mean, Tensor invstd,"
      " float? negative_slope) -> Tensor");
  // Single-process backward, both passes below in one op (so a backend may run them group
  // by group while the group is in cache); use_input_stats as in the forward.
  m.def(
      "spade_norm_backward(Tensor grad_y, Tensor x, Tensor gamma, Tensor beta, Tensor mean,"
      " Tensor invstd, bool use_input_stats, float? negative_slope)"
      " -> (Tensor grad_x, Tensor grad_gamma, Tensor grad_beta)");
  m.def(
      "spade_norm_merged_backward(Tensor grad_y, Tensor x, Tensor gamma_beta, Tensor mean, Tensor invstd,"
      " bool use_input_stats, float? negative_slope) -> (Tensor grad_x, Tensor grad_gamma_beta)");
  // Backward: sums over each statistics group of dxhat = dz * (1 + gamma) and dxhat * xhat.
  m.def(
      "spade_norm_backward_reduce(Tensor grad_y, Tensor x, Tensor gamma, Tensor beta, Tensor mean,"
      " Tensor invstd, float? negative_slope) -> (Tensor sum_dxhat, Tensor sum_dxhat_xhat)");
  // dx = invstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat) (the means omitted: fixed
  // statistics, dx = invstd * dxhat), dgamma = dz * xhat, dbeta = dz.
  m.def(
      "spade_norm_backward_elemt(Tensor grad_y, Tensor x, Tensor gamma, Tensor beta, Tensor mean,"
      " Tensor invstd, Tensor? mean_dxhat, Tensor? mean_dxhat_xhat, float? negative_slope)"
      " -> (Tensor grad_x, Tensor grad_gamma, Tensor grad_beta)");
  // The same for gamma_beta (N, 2C, H, W) as spade_norm_merged takes it: its gradient whole.
  m.def(
      "spade_norm_merged_backward_elemt(Tensor grad_y, Tensor x, Tensor gamma_beta, Tensor mean, Tensor invstd,"
      " Tensor? mean_dxhat, Tensor? mean_dxhat_xhat, float? negative_slope)"
      " -> (Tensor grad_x, Tensor grad_gamma_beta)");
}
