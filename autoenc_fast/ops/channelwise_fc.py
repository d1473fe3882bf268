"""Registration of autoenc_fast::channelwise_fc: fake kernels. The C++ kernels register
themselves from csrc/cpu (CPU) and csrc/cuda (CUDA), the autograd from
csrc/autograd/channelwise_fc.cpp.

    y[b, c, j] = sum_i x[b, c, i] * weight[c, i, j] + bias[c, j]
    grad_x = grad_y @ weight^T,  grad_weight = x^T @ grad_y,  grad_bias = sum_b grad_y
"""
from __future__ import annotations

import torch

from .channelwise_fc_checks import check_backward_inputs, check_inputs, output_memory_format  # noqa: F401

OP = "autoenc_fast::channelwise_fc"
BACKWARD_OP = "autoenc_fast::channelwise_fc_backward"


@torch.library.register_fake(OP)
def _channelwise_fc_fake(x, weight, bias):
    check_inputs(x, weight, bias)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))


@torch.library.register_fake(BACKWARD_OP)
def _channelwise_fc_backward_fake(grad_y, x, weight):
    check_backward_inputs(grad_y, x, weight)
    _, C, H, W = x.shape
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
    grad_weight = torch.empty((C, H * W, H * W), dtype=x.dtype, device=x.device)
    grad_bias = torch.empty((C, H * W), dtype=x.dtype, device=x.device)
    return grad_x, grad_weight, grad_bias
