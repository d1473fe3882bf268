"""Runs the Triton reparametrize_kl kernels on the CPU under TRITON_INTERPRET=1.

Used by tests/test_reparametrize_kl.py in a subprocess (the variable must be set
before triton is imported). Writes the kernels' outputs to the file in argv[1].
"""
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from autoenc_fast.triton import reparametrize_kl as kernels  # noqa: E402


@triton.jit
def _triton_randn4x(seed, out_ptr, N_GROUPS: tl.constexpr):
    groups = tl.arange(0, N_GROUPS)
    n0, n1, n2, n3 = tl.randn4x(seed, groups)
    tl.store(out_ptr + 4 * groups + 0, n0)
    tl.store(out_ptr + 4 * groups + 1, n1)
    tl.store(out_ptr + 4 * groups + 2, n2)
    tl.store(out_ptr + 4 * groups + 3, n3)


def main(path: str) -> None:
    inputs = torch.load(path.replace(".out", ".in"))
    results = {}
    for name, case in inputs.items():
        mu, logvar, eps, seed = case["mu"], case["logvar"], case.get("eps"), case.get("seed")
        z, kl = kernels.reparametrize_kl_forward(mu, logvar, eps, seed, slices=case.get("slices"))
        results[name] = dict(z=z, kl=kl)
        # The backward with sigma * eps from each source the case has: z - mu, eps, the
        # noise re-drawn from the seed.
        sources = dict(z=dict(z=z), eps=dict(eps=eps), seed=dict(seed=seed))
        for source, given in sources.items():
            if all(value is not None for value in given.values()):
                results[name]["grads_" + source] = kernels.reparametrize_kl_backward(
                    case.get("grad_z"), case.get("grad_kl"), mu, logvar, **given, slices=case.get("slices"))
    # Triton's own randn4x for key 1234, counters 0..63 (row 0 of a zero offset).
    own = torch.empty(256, dtype=torch.float32)
    _triton_randn4x[(1,)](1234, own, N_GROUPS=64)
    results["triton_randn4x"] = own
    torch.save(results, path)


if __name__ == "__main__":
    main(sys.argv[1])
