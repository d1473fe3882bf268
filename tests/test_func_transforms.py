"""torch.func transforms (grad, vjp, jacrev, jvp, vmap) over the functional API.

The ops' C++ autograd has no functorch rules (PyTorch refuses a C++ autograd.Function
under a transform), so under a transform the calls take the reference path: the same
math in plain PyTorch ops. These tests hold what a transform returns to the fused
kernels' own autograd, or to finite differences where nothing else computes it."""
from __future__ import annotations

import pytest
import torch

from autoenc_fast import functional as AF

DT = torch.float64


def kernel_grads(fn, *inputs):
    """Gradients of fn(*inputs).square().sum() by ordinary autograd (the fused kernels)."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    fn(*leaves).square().sum().backward()
    return [leaf.grad for leaf in leaves]


def func_grads(fn, *inputs):
    return torch.func.grad(lambda *args: fn(*args).square().sum(), argnums=tuple(range(len(inputs))))(*inputs)


def _spade(norm):
    return lambda x, gamma, beta: AF.spade_norm(x, gamma, beta, norm=norm, negative_slope=0.2)


CASES = {
    "channelwise_fc": (lambda x, w, b: AF.channelwise_fc(x, w, b),
                       lambda: (torch.randn(3, 4, 2, 3, dtype=DT), torch.randn(4, 6, 6, dtype=DT),
                                torch.randn(4, 6, dtype=DT))),
    "spade_norm batch": (_spade("batch"), lambda: tuple(torch.randn(3, 4, 5, 2, dtype=DT) for _ in range(3))),
    "spade_norm instance": (_spade("instance"), lambda: tuple(torch.randn(3, 4, 5, 2, dtype=DT) for _ in range(3))),
    "spade_norm_merged": (lambda x, gb: AF.spade_norm_merged(x, gb, negative_slope=0.2),
                          lambda: (torch.randn(3, 4, 5, 2, dtype=DT), torch.randn(3, 8, 5, 2, dtype=DT))),
    "reparametrize_kl, eps given": (lambda mu, lv, eps: torch.cat([t.flatten() for t in AF.reparametrize_kl(mu, lv, eps)]),
                                    lambda: tuple(torch.randn(4, 7, dtype=DT) for _ in range(3))),
    "reparametrize_kl, in-kernel noise": (lambda mu, lv: torch.cat([t.flatten() for t in AF.reparametrize_kl(
                                              mu, lv, seed=(1234, 56))]),
                                          lambda: tuple(torch.randn(4, 7, dtype=DT) for _ in range(2))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_func_grad_and_vjp_match_the_kernels(case):
    fn, make = CASES[case]
    inputs = make()
    # The in-kernel noise is the same Philox stream drawn in Python on the reference path:
    # equal to float32 rounding of the normal draws (as the CPU and GPU kernels are).
    tol = dict(atol=1e-6, rtol=1e-6) if "noise" in case else dict(atol=1e-12, rtol=1e-10)
    for ours, transformed in zip(kernel_grads(fn, *inputs), func_grads(fn, *inputs)):
        torch.testing.assert_close(transformed, ours, **tol)
    # vjp's primal is the value computed under the transform: the kernels' forward value.
    primal, _ = torch.func.vjp(fn, *inputs)
    torch.testing.assert_close(primal, fn(*inputs), **tol)


def test_jvp_matches_finite_differences():
    x, gamma, beta = (torch.randn(2, 3, 4, 4, dtype=DT) for _ in range(3))
    tangent = torch.randn_like(x)
    fn = _spade("batch")
    _, jvp_out = torch.func.jvp(lambda t: fn(t, gamma, beta), (x,), (tangent,))
    h = 1e-6
    finite = (fn(x + h * tangent, gamma, beta) - fn(x - h * tangent, gamma, beta)) / (2 * h)
    torch.testing.assert_close(jvp_out, finite, atol=1e-6, rtol=1e-5)


def test_jacrev_of_channelwise_fc_is_its_weight():
    """y[c, j] = sum_i x[c, i] w[c, i, j]: the Jacobian dy[c, j]/dx[c, i] is w[c, i, j]."""
    w = torch.randn(2, 4, 4, dtype=DT)
    jac = torch.func.jacrev(lambda x: AF.channelwise_fc(x, w))(torch.randn(1, 2, 2, 2, dtype=DT))
    jac = jac.reshape(2, 4, 2, 4)  # (c_out, j, c_in, i) with the batch of 1 dropped
    for c in range(2):
        torch.testing.assert_close(jac[c, :, c, :], w[c].T)
        assert not jac[c, :, 1 - c, :].any()


def test_vmap_of_channelwise_fc_equals_the_batched_call():
    x, w, b = torch.randn(5, 3, 2, 2, dtype=DT), torch.randn(3, 4, 4, dtype=DT), torch.randn(3, 4, dtype=DT)
    per_sample = torch.vmap(lambda xi: AF.channelwise_fc(xi.unsqueeze(0), w, b).squeeze(0))(x)
    torch.testing.assert_close(per_sample, AF.channelwise_fc(x, w, b), atol=1e-12, rtol=1e-12)


def test_vmap_with_different_randomness_asks_for_eps():
    mu, lv = torch.randn(4, 5, dtype=DT), torch.randn(4, 5, dtype=DT)
    draw = lambda m, l: AF.reparametrize_kl(m.unsqueeze(0), l.unsqueeze(0))[0]  # noqa: E731
    with pytest.raises(RuntimeError, match="randomness='different'.*pass `eps`"):
        torch.func.vmap(draw, randomness="different")(mu, lv)
    eps = torch.randn_like(mu)
    z = torch.func.vmap(lambda m, l, e: AF.reparametrize_kl(m.unsqueeze(0), l.unsqueeze(0), e.unsqueeze(0))[0])(
        mu, lv, eps)
    torch.testing.assert_close(z.squeeze(1), mu + (0.5 * lv).exp() * eps)
