"""Every op inside a CUDA graph: a forward + backward step captured with
torch.cuda.graph (as torch.compile(mode="reduce-overhead") and hand-written capture
use it) must not synchronize with the host or allocate outside the graph's pool, and
replaying it on new input values must give what an eager call on those values gives.
Launch-bound small steps are where users reach for graphs, and where our ops' host
time matters. CUDA only: there are no CUDA graphs elsewhere."""
from __future__ import annotations

import pytest
import torch
from conftest import TOLERANCES, requires_cuda

from autoenc_fast import _ext
from autoenc_fast import functional as F

pytestmark = [requires_cuda, pytest.mark.gpu,
              pytest.mark.skipif(not _ext.LOADED, reason=f"compiled extension not loaded: {_ext.STATUS}")]


def capture(run):
    """Warm run() up on a side stream (as torch.cuda.graph requires), then capture it in
    a graph. Returns (graph, what run() returned while captured: the static outputs)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = run()
    return graph, outputs


def capture_step(step, leaves, grad_outputs):
    """Forward + backward of step(*leaves) captured; the leaves' .grad are the static
    gradients (reset first, so the captured backward allocates them from the graph's pool)."""
    def run():
        for leaf in leaves:
            leaf.grad = None
        outputs = step(*leaves)
        torch.autograd.backward(outputs, grad_outputs)
        return outputs
    return capture(run)


def as_tuple(outputs):
    return outputs if isinstance(outputs, tuple) else (outputs,)


def replay_matches_eager(step, make_inputs, grad_outputs, dtype, reset=lambda: None, state=lambda: ()):
    """Capture on one draw of the inputs, replay on a fresh draw copied into the static
    inputs, and compare outputs and gradients with an eager step on that fresh draw.
    reset() runs before the replay and before the eager step; state() (tensors the step
    updates in place) is compared after each."""
    leaves = [t.requires_grad_() for t in make_inputs()]
    graph, outputs = capture_step(step, leaves, grad_outputs)
    fresh = make_inputs()
    with torch.no_grad():
        for leaf, value in zip(leaves, fresh):
            leaf.copy_(value)
    reset()
    graph.replay()
    torch.cuda.synchronize()
    replayed_state = [t.clone() for t in state()]
    eager_leaves = [t.clone().requires_grad_() for t in fresh]
    reset()
    eager_outputs = step(*eager_leaves)
    torch.autograd.backward(eager_outputs, grad_outputs)
    tol = TOLERANCES[dtype]
    for got, want in zip(as_tuple(outputs), as_tuple(eager_outputs), strict=True):
        torch.testing.assert_close(got, want, **tol)
    for leaf, eager_leaf in zip(leaves, eager_leaves):
        torch.testing.assert_close(leaf.grad, eager_leaf.grad, **tol)
    for got, want in zip(replayed_state, state(), strict=True):
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reparametrize_kl_with_given_noise_replays_as_eager(dtype):
    shape = (8, 300)
    eps = torch.randn(shape, device="cuda", dtype=dtype)
    grads = (torch.randn(shape, device="cuda", dtype=dtype), torch.randn(shape[0], device="cuda"))

    def make_inputs():
        return [torch.randn(shape, device="cuda", dtype=dtype), torch.randn(shape, device="cuda", dtype=dtype)]

    replay_matches_eager(lambda mu, logvar: F.reparametrize_kl(mu, logvar, eps), make_inputs, grads, dtype)


def test_reparametrize_kl_drawn_noise_is_fresh_on_every_replay():
    """The seed comes from torch's CUDA generator, whose state graphs advance per replay:
    two replays draw different noise, each of it standard normal."""
    mu = torch.zeros(4, 4096, device="cuda")
    logvar = torch.zeros(4, 4096, device="cuda")
    graph, (z, _) = capture(lambda: F.reparametrize_kl(mu, logvar))
    draws = []
    for _ in range(2):
        graph.replay()
        draws.append(z.clone())
    assert not torch.equal(draws[0], draws[1])
    for draw in draws:  # mu = 0, sigma = 1: z is the noise itself
        assert abs(draw.mean().item()) < 0.05 and abs(draw.std().item() - 1) < 0.05


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_channelwise_fc_replays_as_eager(layout, dtype):
    B, C, H, W = 16, 32, 6, 6
    grad_y = torch.randn(B, C, H, W, device="cuda", dtype=dtype)

    def make_inputs():
        x = torch.randn(B, C, H, W, device="cuda", dtype=dtype).contiguous(memory_format=layout)
        weight = (torch.randn(C, H * W, H * W, device="cuda") / (H * W) ** 0.5).to(dtype)
        return [x, weight, torch.randn(C, H * W, device="cuda", dtype=dtype)]

    replay_matches_eager(lambda x, w, b: F.channelwise_fc(x, w, b), make_inputs, grad_y, dtype)


@pytest.mark.parametrize("norm", ["batch", "instance"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_spade_norm_replays_as_eager_and_updates_running_statistics(layout, norm):
    shape = (4, 16, 12, 10)
    grad_y = torch.randn(shape, device="cuda").contiguous(memory_format=layout)
    running_mean = torch.zeros(shape[1], device="cuda")
    running_var = torch.ones(shape[1], device="cuda")
    start_mean, start_var = torch.randn(shape[1], device="cuda"), torch.rand(shape[1], device="cuda") + 0.5
    batch = norm == "batch"

    def reset_running_statistics():
        running_mean.copy_(start_mean)
        running_var.copy_(start_var)

    def step(x, gamma, beta):
        stats = dict(running_mean=running_mean, running_var=running_var) if batch else {}
        return F.spade_norm(x, gamma, beta, norm=norm, negative_slope=0.2, **stats)

    def make_inputs():
        return [(torch.randn(shape, device="cuda") * 2 + 1).contiguous(memory_format=layout) for _ in range(3)]

    updated = (lambda: (running_mean, running_var)) if batch else (lambda: ())
    replay_matches_eager(step, make_inputs, grad_y, torch.float32, reset_running_statistics, updated)
    if batch:  # the step did update them (and the replay as the eager step did, checked above)
        assert not torch.equal(running_mean, start_mean) and not torch.equal(running_var, start_var)
