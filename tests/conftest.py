"""Shared test helpers: devices, tolerances, fresh random inputs."""
from __future__ import annotations

import pytest
import torch

import autoenc_fast  # noqa: F401  (registers the ops)

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU; this machine has none")


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def run_under_triton_interpreter(script: str, out_path, timeout: int = 300) -> None:
    """Runs tests/<script> in a subprocess with TRITON_INTERPRET=1 (it must be set before
    triton is imported) and argv[1] = out_path; skips, saying why, where the interpreter
    cannot run."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np

    triton = pytest.importorskip("triton")
    # Triton's interpreter before 3.7 calls int() on a 1-element array for a loop bound
    # (runtime/interpreter.py, `__index__`); numpy 2.4 rejects that. Seen with 3.2 and 3.6
    # (the GPU machines' version); 3.7 squeezes the array first.
    if _version(triton.__version__) < (3, 7) and _version(np.__version__) >= (2, 4):
        pytest.skip(f"Triton {triton.__version__}'s interpreter calls int() on 1-element arrays, which "
                    f"numpy {np.__version__} rejects: install numpy<2.4 or triton>=3.7 to run this test")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, str(Path(__file__).with_name(script)), str(out_path)], check=True, env=env,
                   timeout=timeout)


def compile_for_sm90(fn, signature: dict, constexprs: dict) -> None:
    """Compiles a Triton kernel to sm_90 machine code here, with no GPU (Triton ships its
    own ptxas); fails on any error. Skips, saying why, where Triton's offline API differs."""
    triton = pytest.importorskip("triton")
    if _version(triton.__version__) < (3, 3):
        pytest.skip(f"Triton {triton.__version__}'s ASTSource takes another signature format (3.3+ needed)")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(fn=fn, signature={**signature, **dict.fromkeys(constexprs, "constexpr")},
                       constexprs=constexprs)
    assert triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm.get("cubin"), fn.__name__


# Tolerances against a float64 reference (DESIGN.md).
TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-8),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-2, rtol=2e-2),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}


def devices() -> list:
    """CPU always; CUDA as a real parameter that skips, saying why, without a GPU."""
    return ["cpu", pytest.param("cuda", marks=requires_cuda)]


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """A different but reported seed per test: fresh inputs, reproducible failures."""
    seed = torch.seed() % 2**31
    torch.manual_seed(seed)
    request.node.user_properties.append(("torch_seed", seed))
    yield


def assert_double_backward_refused(loss, inputs, op: str) -> None:
    """A gradient of loss() taken with create_graph=True equals the plain one, and
    differentiating it again raises, naming autoenc_fast::<op>_backward: the backward
    ops have no derivative of their own, and autograd's fallback for such an op only
    warns and leaves the second-order term out."""
    first = torch.autograd.grad(loss(), inputs, create_graph=True)
    plain = torch.autograd.grad(loss(), inputs)
    for with_graph, without in zip(first, plain):
        assert with_graph.requires_grad
        torch.testing.assert_close(with_graph, without, atol=0, rtol=0)
    with pytest.raises(RuntimeError, match=f"autoenc_fast::{op}_backward: differentiating this op's gradient again"):
        sum(g.square().sum() for g in first).backward()


# Memory layouts of a 4-D test input (make_x).
LAYOUTS = ["contiguous", "channels_last", "strided", "channel_slice"]


def make_x(shape, layout, dtype=torch.float32, device="cpu"):
    """Fresh standard-normal x of `shape` laid out as asked."""
    B, C, H, W = shape
    if layout == "strided":
        # Every other channel and column of a larger tensor, rows offset by one: a view
        # that is neither contiguous nor channels_last.
        big = torch.randn(B, 2 * C, H + 1, 2 * W, dtype=dtype, device=device)
        x = big[:, ::2, 1:, ::2]
        assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last) or C * H * W == 1
        return x
    if layout == "channel_slice":
        # The first C channels of a 2C-channel tensor (as chunk() gives): rows of a sample
        # adjacent, samples 2*C*H*W apart; the CPU kernel reads and writes these in place.
        return torch.randn(B, 2 * C, H, W, dtype=dtype, device=device)[:, :C]
    x = torch.randn(shape, dtype=dtype, device=device)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def assert_gamma_beta_readers_agree(ops, ref_ops, x, grad_y, halves, dense, instance, close) -> None:
    """Every spade_norm op that reads gamma and beta, run through `ops` with `halves` (the
    two channel halves of one (N, 2C, H, W) tensor, as nn.SPADE hands them over) and
    through `ref_ops` with `dense` copies of them: close(actual, expected) holds for each
    output. Slope 0.2; the backward with batch and with fixed statistics."""
    N, _, H, W = x.shape
    args = (None, None, True, instance, 0.1, 1e-5, 0.2)
    y, mean, invstd = ops.spade_norm(x, *halves, *args)
    for actual, expected in zip((y, mean, invstd), ref_ops.spade_norm(x, *dense, *args), strict=True):
        close(actual, expected)
    for use_input_stats in (True, False):
        for actual, expected in zip(
                ops.spade_norm_backward(grad_y, x, *halves, mean, invstd, use_input_stats, 0.2),
                ref_ops.spade_norm_backward(grad_y, x, *dense, mean, invstd, use_input_stats, 0.2), strict=True):
            close(actual, expected)
    close(ops.spade_norm_apply(x, *halves, mean, invstd, 0.2), ref_ops.spade_norm_apply(x, *dense, mean, invstd, 0.2))
    sums = ops.spade_norm_backward_reduce(grad_y, x, *halves, mean, invstd, 0.2)
    for actual, expected in zip(sums, ref_ops.spade_norm_backward_reduce(grad_y, x, *dense, mean, invstd, 0.2),
                                strict=True):
        close(actual, expected)
    means = [t / (H * W if instance else N * H * W) for t in sums]
    for actual, expected in zip(ops.spade_norm_backward_elemt(grad_y, x, *halves, mean, invstd, *means, 0.2),
                                ref_ops.spade_norm_backward_elemt(grad_y, x, *dense, mean, invstd, *means, 0.2),
                                strict=True):
        close(actual, expected)


def assert_merged_ops_agree_with_separate(ops, ref_ops, x, grad_y, gamma_beta, instance, close) -> None:
    """ops.spade_norm_merged(x, gamma_beta), its backward and its synchronized-path
    elementwise backward against ref_ops' separate ops on dense copies of gamma_beta's
    halves, train (batch statistics) and eval (fixed), slope 0.2: close(actual, expected)
    for y, mean, invstd, the running statistics the forward updates in training (batch
    norm), grad_x, and grad_gamma_beta against cat([grad_gamma, grad_beta]), which comes
    out in x's layout."""
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format
    dense = [t.contiguous(memory_format=layout) for t in gamma_beta.chunk(2, dim=1)]
    C = x.shape[1]
    rm, rv = torch.randn(C, dtype=x.dtype), torch.rand(C, dtype=x.dtype) + 0.5
    for use_input_stats in ([True] if instance else [True, False]):
        running = (None, None) if instance else (rm.clone(), rv.clone())
        running_ref = (None, None) if instance else (rm.clone(), rv.clone())
        rest = (use_input_stats, instance, 0.1, 1e-5, 0.2)
        outputs = ops.spade_norm_merged(x, gamma_beta, *running, *rest)
        expected = ref_ops.spade_norm(x, *dense, *running_ref, *rest)
        for actual, want in zip((*outputs, *running), (*expected, *running_ref), strict=True):
            if want is not None:  # instance norm: no running statistics
                close(actual, want)
        mean, invstd = expected[1], expected[2]
        grad_x, grad_gamma_beta = ops.spade_norm_merged_backward(grad_y, x, gamma_beta, mean, invstd,
                                                                 use_input_stats, 0.2)
        want_x, want_gamma, want_beta = ref_ops.spade_norm_backward(grad_y, x, *dense, mean, invstd,
                                                                    use_input_stats, 0.2)
        close(grad_x, want_x)
        assert grad_gamma_beta.shape == gamma_beta.shape and grad_gamma_beta.is_contiguous(memory_format=layout)
        close(grad_gamma_beta, torch.cat([want_gamma, want_beta], dim=1))
        # the synchronized path's elementwise pass, given the means of the two reduced sums
        means = [torch.randn_like(mean), torch.randn_like(mean)] if use_input_stats else [None, None]
        grad_x, grad_gamma_beta = ops.spade_norm_merged_backward_elemt(grad_y, x, gamma_beta, mean, invstd,
                                                                       *means, 0.2)
        want_x, want_gamma, want_beta = ref_ops.spade_norm_backward_elemt(grad_y, x, *dense, mean, invstd,
                                                                          *means, 0.2)
        close(grad_x, want_x)
        close(grad_gamma_beta, torch.cat([want_gamma, want_beta], dim=1))
