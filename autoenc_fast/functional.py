"""The public functional API: argument checks, defaults and seeding, then the
registered ops (torch.ops.autoenc_fast.*)."""
from __future__ import annotations

import warnings

import torch

from . import _ext
from .ops.channelwise_fc_checks import check_inputs as check_channelwise_fc_inputs
from .ops.reparametrize_kl_checks import check_inputs
from .reference.channelwise_fc import channelwise_fc as _channelwise_fc_reference
from .reference.philox import philox_normal
from .reference.reparametrize_kl import draw_seed, reparametrize_kl_math, seed_tensor
from .reference import spade_norm as _spade_norm_reference
from .ops.spade_norm_checks import check_inputs as _spade_check_inputs
from .ops.spade_norm_checks import group_count as _group_count

__all__ = ["channelwise_fc", "reparametrize_kl", "spade_norm", "spade_norm_merged"]

_HALF_TYPES = (torch.float16, torch.bfloat16)


def _autocast_dtype(x) -> torch.dtype | None:
    """The autocast dtype of x's device when autocast is on there, else None. Custom ops
    get no autocast kernel of their own, so the functions apply its policy here."""
    if not isinstance(x, torch.Tensor) or x.device.type not in ("cpu", "cuda"):
        return None
    if not torch.is_autocast_enabled(x.device.type):
        return None
    return torch.get_autocast_dtype(x.device.type)


# Which device types this build has compiled kernels for, per op, read once: every kernel
# registers when the package is imported. A build without CUDA (no toolkit, or
# AUTOENC_FAST_CUDA=0) used on CUDA tensors, or tensors on a device we have no kernels for
# (MPS, XPU), take the reference path instead of failing in the dispatcher. Other device
# types (meta, under tracing) go to the op, whose fake kernel serves them.
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA", "mps": "MPS", "xpu": "XPU"}
_HAS_KERNEL = {(op, device): _ext.has_kernel(op, key)
               for op in ("reparametrize_kl", "channelwise_fc", "spade_norm", "spade_norm_merged")
               for device, key in _DISPATCH_KEYS.items()}
_WARNED_NO_KERNEL: set = set()


def _use_reference(op: str, device: torch.device) -> bool:
    """Whether a call must take the reference path (the same math in plain PyTorch ops):

    - the compiled extension is missing (one warning at import says why);
    - a torch.func transform (grad, vjp, jacrev, jvp, vmap, ...) is active: the ops' C++
      autograd has no transform rules (PyTorch refuses a C++ autograd.Function under
      them), while every transform supports the reference;
    - this build has no kernel of `op` for the device (one warning per op and device)."""
    if not _ext.LOADED or torch._C._are_functorch_transforms_active():
        return True
    if _HAS_KERNEL.get((op, device.type), True):
        return False
    if (op, device.type) not in _WARNED_NO_KERNEL and not torch.compiler.is_compiling():
        _WARNED_NO_KERNEL.add((op, device.type))
        warnings.warn(f"autoenc_fast: this install has no {_DISPATCH_KEYS[device.type]} kernel for {op}; "
                      f"{device.type} tensors run its plain-PyTorch reference. autoenc_fast.info() lists the "
                      "kernels; the CUDA ones need a build with a CUDA toolkit (AUTOENC_FAST_CUDA=1 pip install "
                      "--no-build-isolation -e .), reparametrize_kl's also triton", stacklevel=3)
    return True


def _autocast_to(t, dtype: torch.dtype, *, float64_too: bool = False):
    """t cast to dtype if autocast would cast it: a floating-point tensor, and not float64
    (autocast leaves float64 alone) unless float64_too. Integer tensors and None pass
    unchanged, so the argument checks still name them."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        return t
    if t.dtype == torch.float64 and not float64_too:
        return t
    return t.to(dtype)


def reparametrize_kl(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None, *,
                     generator: torch.Generator | None = None, seed=None):
    r"""Reparametrized sample and KL divergence to N(0, I), fused.

    .. math::
        z = \mu + e^{\log\sigma^2 / 2} \varepsilon, \qquad
        \mathrm{kl}_b = -\tfrac12 \sum_{d} \left(1 + \log\sigma^2_{bd} - \mu_{bd}^2 - e^{\log\sigma^2_{bd}}\right)

    Args:
        mu, logvar: tensors of one shape and floating dtype, rank >= 1; dim 0 is the batch.
        eps: the noise, mu's shape and dtype; drawn inside the kernel when None.
        generator: where the (key, offset) of the drawn noise comes from (default: torch's
            default generator of mu's device). It advances on every call, so
            ``torch.manual_seed`` reproduces a run and two calls draw different noise.
        seed: instead of a generator, an explicit Philox key (int), (key, offset) pair or
            integer tensor of two: the CPU and CUDA kernels draw the same noise for it.

    Returns:
        ``(z, kl)``: z like mu (contiguous); kl of shape (B,), float64 for float64
        inputs and float32 otherwise.
    """
    if not isinstance(mu, torch.Tensor) or not isinstance(logvar, torch.Tensor):
        raise TypeError("reparametrize_kl: `mu` and `logvar` must be tensors")
    seed_t = None
    if eps is None:
        seed_t = seed_tensor(seed, mu.device) if seed is not None else draw_seed(generator, mu.device)
    return _reparametrize_kl(mu, logvar, eps, seed_t)


def _seed_values(seed_t: torch.Tensor) -> list[int]:
    """[key, offset] of a seed tensor as Python ints. Under a torch.func transform the
    tensor is wrapped, and torch 2.6 cannot read a wrapped tensor's data: read it with the
    transforms set aside (its value is the same)."""
    if torch._C._are_functorch_transforms_active():
        with torch._C._DisableFuncTorch():
            return seed_t.tolist()
    return seed_t.tolist()


def _reparametrize_kl(mu, logvar, eps, seed_t):
    """The op on prepared arguments; seed_t None and eps None means z = mu."""
    check_inputs(mu, logvar, eps, seed_t)
    if _use_reference("reparametrize_kl", mu.device):
        if eps is None and seed_t is not None:
            if torch._C._functorch.is_batchedtensor(seed_t):
                raise RuntimeError("reparametrize_kl: under vmap(randomness='different') each sample would "
                                   "need its own Philox seed; pass `eps` (e.g. torch.randn_like(mu)) or use "
                                   "randomness='same'")
            key, offset = _seed_values(seed_t)
            eps = philox_normal(tuple(mu.shape), key, offset).to(device=mu.device, dtype=mu.dtype)
        return reparametrize_kl_math(mu, logvar, eps)
    if mu.device.type == "cpu" and mu.dtype in _HALF_TYPES:
        # The C++ kernel computes in float32/float64: half types go through float32.
        z, kl = torch.ops.autoenc_fast.reparametrize_kl(
            mu.float(), logvar.float(), eps.float() if eps is not None else None, seed_t)
        return z.to(mu.dtype), kl
    return torch.ops.autoenc_fast.reparametrize_kl(mu, logvar, eps, seed_t)


def channelwise_fc(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    r"""Channel-wise fully connected layer (Pathak et al. 2016, Context Encoders).

    Each of the C feature maps of H x W is fully connected to its own output map;
    nothing is shared or mixed across channels. With positions flattened row-major
    (P = H * W):

    .. math::
        y_{b,c,j} = \sum_{i=1}^{P} x_{b,c,i}\, w_{c,i,j} + \mathrm{bias}_{c,j}

    Args:
        x: (B, C, H, W), floating point, any layout (contiguous, channels_last, views).
        weight: (C, H*W, H*W) laid out [channel, input position, output position].
        bias: (C, H*W) or None.

    Returns:
        y of x's shape; channels_last when x is channels_last, contiguous otherwise.
        Differentiable in x, weight and bias.
    """
    dtype = _autocast_dtype(x)
    if dtype is not None:  # a matrix product: autocast runs it in its lower precision
        x, weight, bias = (_autocast_to(t, dtype) for t in (x, weight, bias))
    check_channelwise_fc_inputs(x, weight, bias)
    if _use_reference("channelwise_fc", x.device):
        return _channelwise_fc_reference(x, weight, bias)
    if x.device.type == "cpu" and x.dtype in _HALF_TYPES:
        # The C++ CPU kernel computes in float32/float64: half types go through float32.
        y = torch.ops.autoenc_fast.channelwise_fc(x.float(), weight.float(),
                                                  bias.float() if bias is not None else None)
        return y.to(x.dtype)
    return torch.ops.autoenc_fast.channelwise_fc(x, weight, bias)


def spade_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, *, norm: str = "batch",
               running_mean: torch.Tensor | None = None, running_var: torch.Tensor | None = None,
               training: bool = True, momentum: float = 0.1, eps: float = 1e-5,
               negative_slope: float | None = None, process_group=None) -> torch.Tensor:
    r"""SPADE normalization (GauGAN), fused: parameter-free batch or instance norm,
    the spatially varying affine, and an optional leaky ReLU.

    .. math::
        \hat x = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}, \qquad
        y = \mathrm{act}\left(\hat x \, (1 + \gamma) + \beta\right)

    Args:
        x: (N, C, H, W), NCHW or channels_last; y has x's layout.
        gamma, beta: x's shape, dtype and device (the SPADE modulation maps).
        norm: ``"batch"`` (statistics per channel over N, H, W) or ``"instance"``
            (per (n, c) over H, W; no running statistics).
        running_mean, running_var: (C,) buffers. Batch norm in training updates them in
            place as ``F.batch_norm`` does (unbiased variance, `momentum`); in eval
            (``training=False``) they are the statistics used and are required.
        negative_slope: apply ``leaky_relu(negative_slope)`` to the result when given.
        process_group: batch norm in training only: statistics (and their gradients)
            are all-reduced over this group, as torch.nn.SyncBatchNorm does, so N
            processes with batch b match one process with batch N*b.

    Statistics are float32 for float32/float16/bfloat16 x and float64 for float64 x.
    """
    if _autocast_dtype(x) is not None and x.is_floating_point():
        # A normalization: under autocast it runs in x's precision (statistics in float32).
        gamma, beta = (_autocast_to(t, x.dtype, float64_too=True) for t in (gamma, beta))
    _spade_check_inputs(x, gamma, beta, norm, running_mean, running_var, training)
    instance = norm == "instance"
    if _use_reference("spade_norm", x.device):
        return _spade_norm_reference(x, gamma, beta, norm=norm, running_mean=running_mean,
                                     running_var=running_var, training=training, momentum=momentum,
                                     eps=eps, negative_slope=negative_slope,
                                     process_group=process_group)
    if x.device.type == "cpu" and x.dtype in _HALF_TYPES:
        # The C++ CPU kernels compute in float32/float64: half types go through float32.
        return spade_norm(x.float(), gamma.float(), beta.float(), norm=norm,
                          running_mean=running_mean, running_var=running_var, training=training,
                          momentum=momentum, eps=eps, negative_slope=negative_slope,
                          process_group=process_group).to(x.dtype)
    if process_group is not None and training and not instance:
        from .ops.spade_norm import SyncSpadeNormFunction

        # The global count is checked there, after the all_reduce.
        return SyncSpadeNormFunction.apply(x, gamma, beta, running_mean, running_var, eps, momentum,
                                           negative_slope, process_group)
    return _spade_norm_single_process(torch.ops.autoenc_fast.spade_norm, x, (gamma, beta), instance,
                                      running_mean, running_var, training, momentum, eps, negative_slope)


def spade_norm_merged(x: torch.Tensor, gamma_beta: torch.Tensor, *, norm: str = "batch",
                      running_mean: torch.Tensor | None = None, running_var: torch.Tensor | None = None,
                      training: bool = True, momentum: float = 0.1, eps: float = 1e-5,
                      negative_slope: float | None = None, process_group=None) -> torch.Tensor:
    r""":func:`spade_norm` with gamma and beta given as one tensor,
    ``gamma_beta = torch.cat([gamma, beta], dim=1)`` of shape (N, 2C, H, W), as SPADE's one
    modulation convolution with 2C outputs makes them (nn.SPADE calls this).

    Same result as ``spade_norm(x, *gamma_beta.chunk(2, dim=1), ...)``, and the same
    arguments. The kernels read the two halves in place, and the backward writes the
    gradient of gamma_beta as one tensor: with separate gamma and beta views, autograd
    would concatenate their two gradients for the convolution (a copy of both). With a
    `process_group` the statistics are synchronized as in spade_norm.
    """
    if _autocast_dtype(x) is not None and x.is_floating_point():
        gamma_beta = _autocast_to(gamma_beta, x.dtype, float64_too=True)  # as spade_norm: in x's precision
    _spade_check_inputs(x, gamma_beta, None, norm, running_mean, running_var, training)
    instance = norm == "instance"
    if _use_reference("spade_norm_merged", x.device) or (x.device.type == "cpu" and x.dtype in _HALF_TYPES):
        gamma, beta = gamma_beta.chunk(2, dim=1)
        return spade_norm(x, gamma, beta, norm=norm, running_mean=running_mean, running_var=running_var,
                          training=training, momentum=momentum, eps=eps, negative_slope=negative_slope,
                          process_group=process_group)
    if process_group is not None and training and not instance:
        from .ops.spade_norm import SyncSpadeNormFunction

        return SyncSpadeNormFunction.apply(x, gamma_beta, None, running_mean, running_var, eps, momentum,
                                           negative_slope, process_group)
    return _spade_norm_single_process(torch.ops.autoenc_fast.spade_norm_merged, x, (gamma_beta,), instance,
                                      running_mean, running_var, training, momentum, eps, negative_slope)


def _spade_norm_single_process(op, x, params, instance, running_mean, running_var, training, momentum, eps,
                               negative_slope):
    """op(x, *params, ...): spade_norm or spade_norm_merged without a process group. The op
    updates the running statistics itself in training, as F.batch_norm does."""
    use_input_stats = training or instance
    if use_input_stats and x.numel() > 0 and _group_count(x, instance) <= 1:
        raise ValueError(f"spade_norm: expected more than 1 value per {'instance' if instance else 'channel'}"
                         f" when using batch statistics; `x` has shape {tuple(x.shape)}")
    return op(x, *params, running_mean, running_var, use_input_stats, instance, momentum, eps, negative_slope)[0]
