"""Runs the Triton spade_norm kernels on the CPU under TRITON_INTERPRET=1.

Used by tests/test_spade_norm.py in a subprocess (the variable must be set before triton
is imported). Reads the cases from argv[1] (.in) and writes the outputs to argv[1].
"""
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from autoenc_fast.triton import spade_norm as kernels  # noqa: E402


def main(path: str) -> None:
    cases = torch.load(path.replace(".out", ".in"))
    results = {}
    for (name, case), fused in ((item, fused) for item in cases.items() for fused in (False, True)):
        kw = dict(instance=case["instance"], negative_slope=case["slope"], fused=fused)
        y, mean, var, invstd = kernels.spade_norm_forward(case["x"], case["gamma"], case["beta"], eps=1e-5, **kw)
        grads = kernels.spade_norm_backward(case["grad"], case["x"], case["gamma"], case["beta"], mean, invstd, **kw)
        # The same through the autograd.Function the GPU timing uses.
        leaves = [case[k].clone().requires_grad_() for k in ("x", "gamma", "beta")]
        y_fn = kernels.SpadeNormTriton.apply(*leaves, case["instance"], 1e-5, case["slope"], fused)
        y_fn.backward(case["grad"])
        results[(name, fused)] = dict(y=y, mean=mean, var=var, invstd=invstd, grads=grads, y_fn=y_fn.detach(),
                                      grads_fn=tuple(t.grad for t in leaves))
    torch.save(results, path)


if __name__ == "__main__":
    main(sys.argv[1])
