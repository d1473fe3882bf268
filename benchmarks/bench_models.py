"""One training step (forward + loss + backward + Adam step) of each model family:
backend="fused" vs backend="reference" eager vs the reference under torch.compile.

    python -m pytest benchmarks/bench_models.py --benchmark-group-by=group

CPU-sized configurations on the CPU, the papers' sizes on CUDA (skipped without a GPU).
The ConvAutoencoder has no fused block yet, so its fused and reference steps run the
same layers: their ratio measures noise, not a kernel.
"""
from __future__ import annotations

import pytest
import torch
from conftest import devices

from autoenc_fast.models import (VAE, ContextEncoder, ConvAutoencoder, SPADEGenerator, apply_mask, center_mask,
                                 masked_reconstruction_loss, mse_reconstruction_loss, vae_loss)

PROVIDERS = ("fused", "reference", "reference_compiled")

# family -> device type -> (constructor kwargs, batch)
CONFIGS = {
    "conv_autoencoder": {
        "cpu": (dict(image_size=99, latent_dim=256, widths=(32, 64, 96, 96, 64)), 8),
        "cuda": (dict(), 32),  # 227 x 227, AlexNet widths, latent 2,304
    },
    "vae": {
        "cpu": (dict(image_size=64, latent_dim=128), 16),
        "cuda": (dict(image_size=64, latent_dim=128), 128),
    },
}
FAMILIES = {"conv_autoencoder": ConvAutoencoder, "vae": VAE}

# The GAN families' model steps: the Context Encoder (center128 network, masked
# reconstruction loss) and the GauGAN generator (a loss on its output; the
# discriminator has no fused block, so it stays out of the timed step).
GAN_CONFIGS = {
    "context_encoder": {
        "cpu": (dict(image_size=64, widths=(32, 64, 128, 256)), 16),  # 64 -> 4x4, centre 32
        "cuda": (dict(), 64),  # the paper's 128 -> 4x4x512 -> 64 centre
    },
    "gaugan_generator": {
        "cpu": (dict(label_nc=8, ngf=8, z_dim=64, crop_size=64, spade_hidden=32), 4),
        "cuda": (dict(label_nc=35, ngf=64, crop_size=256), 4),
    },
}


def _loss(model_out, x, family: str) -> torch.Tensor:
    if family == "vae":
        return vae_loss(model_out, x).loss
    return mse_reconstruction_loss(model_out, x)


def make_train_step(family: str, provider: str, device: str):
    """A no-argument callable running one training step on a fixed batch; it
    synchronizes on CUDA so the timer sees the whole step."""
    kwargs, batch = CONFIGS[family][torch.device(device).type]
    backend = "fused" if provider == "fused" else "reference"
    model = FAMILIES[family](**kwargs, backend=backend).to(device)
    forward = torch.compile(model) if provider == "reference_compiled" else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch, model.in_channels, model.image_size, model.image_size, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def step():
        optimizer.zero_grad(set_to_none=True)
        _loss(forward(x), x, family).backward()
        optimizer.step()
        sync()
    return step


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_train_step(benchmark, family, provider, device):
    torch._dynamo.reset()
    step = make_train_step(family, provider, device)
    step()  # warm-up: compilation and first-call costs stay out of the numbers
    step()
    benchmark.group = f"{family} train step {device}"
    benchmark.pedantic(step, rounds=15, warmup_rounds=1)


def make_gan_step(family: str, provider: str, device: str):
    """One training step (forward, loss, backward, Adam) of the Context Encoder or the
    GauGAN generator on a fixed batch."""
    kwargs, batch = GAN_CONFIGS[family][torch.device(device).type]
    backend = "fused" if provider == "fused" else "reference"
    if family == "context_encoder":
        model = ContextEncoder("center128", backend=backend, **kwargs).to(device)
        size = model.image_size
        image = torch.rand(batch, 3, size, size, device=device) * 2 - 1
        mask = center_mask(size, device=device)
        target, weights = model.reconstruction_target(image, mask)
        inputs = (apply_mask(image, mask),)
        loss_of = lambda out: masked_reconstruction_loss(out, target, weights)  # noqa: E731
    else:
        model = SPADEGenerator(**kwargs, backend=backend).to(device)
        h, w = model.output_size
        labels = torch.randint(0, model.label_nc, (batch, h, w), device=device)
        seg = torch.nn.functional.one_hot(labels, model.label_nc).permute(0, 3, 1, 2).float()
        inputs = (seg, torch.randn(batch, model.z_dim, device=device))
        loss_of = lambda out: out.square().mean()  # noqa: E731
    forward = torch.compile(model) if provider == "reference_compiled" else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_of(forward(*inputs)).backward()
        optimizer.step()
        sync()
    return step


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("family", list(GAN_CONFIGS))
def test_gan_train_step(benchmark, family, provider, device):
    torch._dynamo.reset()
    step = make_gan_step(family, provider, device)
    step()
    step()
    benchmark.group = f"{family} train step {device}"
    benchmark.pedantic(step, rounds=15, warmup_rounds=1)
