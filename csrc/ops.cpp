// Every autoenc_fast operator schema, declared once. Kernels register per
// backend: csrc/cpu/*.cpp (CPU), csrc/cuda/*.cu (CUDA), autoenc_fast/triton/*.py
// (CUDA, from Python); fake kernels and autograd are registered in autoenc_fast/ops/.
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
  m.def(
      "reparametrize_kl_backward(Tensor? grad_z, Tensor? grad_kl, Tensor mu, Tensor logvar, Tensor z)"
      " -> (Tensor grad_mu, Tensor grad_logvar)");
  // Channel-wise fully connected layer (Context Encoders' bottleneck), P = H * W:
  //   y[b, c, j] = sum_i x[b, c, i] * weight[c, i, j] + bias[c, j]
  // x: (B, C, H, W) of any layout, weight: (C, P, P), bias: (C, P) or None.
  // y is channels_last when x is channels_last (and not also contiguous), else contiguous.
  m.def("channelwise_fc(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // grad_x = grad_y @ weight^T, grad_weight = x^T @ grad_y, grad_bias = sum_b grad_y (per channel).
  m.def(
      "channelwise_fc_backward(Tensor grad_y, Tensor x, Tensor weight)"
      " -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
}
