"""One training step (forward + loss + backward + Adam step) of each model family:
backend="fused" vs backend="reference" eager vs the reference under torch.compile.

    python -m pytest benchmarks/bench_models.py --benchmark-group-by=group

CPU-sized configurations on the CPU, the papers' sizes on CUDA (skipped without a GPU);
the configurations and step builders live in autoenc_fast.bench (shared with
`autoenc-fast bench`). The ConvAutoencoder has no fused block yet, so its fused and
reference steps run the same layers: their ratio measures noise, not a kernel. The
GauGAN step is the generator's (the discriminator has no fused block). On CUDA every step
also runs under bfloat16 autocast, and records the memory it allocates at its peak
(extra_info step_peak_MiB).
"""
from __future__ import annotations

import pytest
import torch
from conftest import devices

from autoenc_fast.bench import MODEL_CONFIGS, make_model_step, step_peak_mib

PROVIDERS = ("fused", "reference", "reference_compiled")


def device_amps() -> list:
    """float32 on every device; also bfloat16 autocast on CUDA (skipped, saying why,
    without a GPU), where the papers' sizes run."""
    out = [pytest.param("cpu", None, id="cpu-fp32")]
    for p in devices():
        if not isinstance(p, str):  # the CUDA parameter, with its skip mark
            out += [pytest.param(p.values[0], amp, marks=p.marks, id=f"{p.values[0]}-{amp or 'fp32'}")
                    for amp in (None, "bf16")]
    return out


@pytest.mark.parametrize("device,amp", device_amps())
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("family", list(MODEL_CONFIGS))
def test_train_step(benchmark, family, provider, device, amp):
    torch._dynamo.reset()
    step = make_model_step(family, provider, device, amp=amp)
    step()  # warm-up: compilation and first-call costs stay out of the numbers
    step()
    benchmark.group = f"{family} train step {device}" + (f" {amp}" if amp else "")
    peak = step_peak_mib(step, device)
    if peak is not None:
        benchmark.extra_info["step_peak_MiB"] = peak
    benchmark.pedantic(step, rounds=15, warmup_rounds=1)
