"""The convolutional variational autoencoder, sampling through the fused
reparametrize+KL op (``backend="fused"``) or its plain-PyTorch twin."""
from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import nn

from .._args import check_codes, check_images, choice, positive_int, positive_ints
from ._backend import block_class, check_backend

__all__ = ["VAE", "VAEOutput"]

_OWNER = "VAE"
VAE_WIDTHS = (32, 64, 128, 256)
OUTPUT_ACTIVATIONS = ("sigmoid", "none")


class VAEOutput(NamedTuple):
    """What VAE.forward returns (B = batch, D = latent_dim).

    recon: (B, C, H, W), the decoder's output after the output activation.
    mu, logvar: (B, D), the posterior's mean and log variance.
    z: (B, D), the sample decoded (mu in eval mode).
    kl: (B,), KL(q(z|x) || N(0, I)) summed over the latent dims, one per sample
        (float32, or float64 for a float64 model).
    logits: (B, C, H, W), the decoder's output before the activation
        (what vae_loss(recon="bce") reads, for a numerically stable BCE).
    """
    recon: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor
    kl: torch.Tensor
    logits: torch.Tensor


def _check_image_size(image_size: int, depth: int) -> int:
    """Each of the `depth` stride-2 convolutions halves the side exactly."""
    if image_size % 2**depth:
        raise ValueError(f"{_OWNER}: `image_size` must be a multiple of 2**len(widths) = {2**depth} "
                         f"(one halving per encoder stage); got {image_size}")
    return image_size


def _encoder(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    """4x4 stride-2 convolutions with LeakyReLU(0.2), each halving the side (DCGAN style)."""
    layers, cin = [], in_channels
    for i, width in enumerate(widths):
        layers += [(f"down{i}", nn.Conv2d(cin, width, 4, stride=2, padding=1)),
                   (f"down{i}_act", nn.LeakyReLU(0.2, inplace=True))]
        cin = width
    return nn.Sequential(OrderedDict(layers))


def _decoder(out_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    """4x4 stride-2 transposed convolutions, each doubling the side, widths reversed;
    ReLU between them, the last one linear (the logits)."""
    channels = list(reversed(widths)) + [out_channels]
    layers = []
    for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
        layers.append((f"up{i}", nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)))
        if i < len(widths) - 1:
            layers.append((f"up{i}_act", nn.ReLU(inplace=True)))
    return nn.Sequential(OrderedDict(layers))


class VAE(nn.Module):
    """Convolutional VAE: encoder to (mu, logvar), Reparametrize to (z, kl), decoder.

    Encoder: len(widths) 4x4 stride-2 convolutions with LeakyReLU(0.2),
    (B, C, S, S) -> (B, widths[-1], S / 2**len(widths), ...), flattened, then two dense
    heads to mu and logvar (log sigma^2), (B, latent_dim) each.
    Reparametrize: ``autoenc_fast.nn.Reparametrize`` (fused kernel) for
    ``backend="fused"``, ``autoenc_fast.reference.Reparametrize`` for "reference";
    in training z = mu + exp(logvar / 2) * eps, in eval mode z = mu.
    Decoder: a dense layer with ReLU back to the encoder's last feature map, then
    transposed convolutions mirroring the encoder back to (B, C, S, S).

    Output activation: ``"sigmoid"`` (default) for images in [0, 1], the mean of a
    Bernoulli likelihood (recon="bce") or the target of MSE; ``"none"`` for
    standardized inputs (recon="mse").

    Args:
        in_channels: image channels.
        image_size: side S of the square input, a multiple of 2**len(widths) (default 64).
        latent_dim: size D of z (default 128).
        backend: "fused" or "reference"; the parameter names are the same in both.
        widths: channels of the encoder stages (default 32, 64, 128, 256: 64 -> 4x4).
        output_activation: "sigmoid" or "none".
    """

    def __init__(self, in_channels: int = 3, image_size: int = 64, latent_dim: int = 128,
                 backend: str = "fused", widths=VAE_WIDTHS, *, output_activation: str = "sigmoid"):
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels", _OWNER)
        self.image_size = positive_int(image_size, "image_size", _OWNER)
        self.latent_dim = positive_int(latent_dim, "latent_dim", _OWNER)
        self.backend = check_backend(backend, _OWNER)
        self.widths = positive_ints(widths, None, "widths", _OWNER)
        self.output_activation = choice(output_activation, OUTPUT_ACTIVATIONS, "output_activation", _OWNER)
        _check_image_size(image_size, len(self.widths))

        side = image_size // 2 ** len(self.widths)
        self.feature_shape = (self.widths[-1], side, side)
        features = self.widths[-1] * side * side
        self.encoder = _encoder(in_channels, self.widths)
        self.fc_mu = nn.Linear(features, latent_dim)
        self.fc_logvar = nn.Linear(features, latent_dim)
        self.reparametrize = block_class("Reparametrize", backend)()
        self.from_latent = nn.Linear(latent_dim, features)
        self.decoder = _decoder(in_channels, self.widths)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, S, S) -> (mu, logvar), (B, latent_dim) each."""
        check_images(x, self.in_channels, self.image_size, "x", f"{_OWNER}.encode")
        features = self.encoder(x).flatten(1)
        return self.fc_mu(features), self.fc_logvar(features)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> the decoder's output before the activation, (B, C, S, S)."""
        check_codes(z, self.latent_dim, "z", f"{_OWNER}.decode")
        features = torch.relu(self.from_latent(z)).view(z.shape[0], *self.feature_shape)
        return self.decoder(features)

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.output_activation == "sigmoid" else logits

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> image (B, C, S, S), after the output activation."""
        return self._activate(self.decode_logits(z))

    def forward(self, x: torch.Tensor, *, eps: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> VAEOutput:
        """(B, C, S, S) -> VAEOutput(recon, mu, logvar, z, kl, logits).

        eps: (B, latent_dim) noise for the training-mode sample, e.g. to give both
            backends the same noise; drawn inside (from `generator`) when None.
            Unused in eval mode, where z = mu.
        """
        mu, logvar = self.encode(x)
        z, kl = self.reparametrize(mu, logvar, eps=eps, generator=generator)
        logits = self.decode_logits(z)
        return VAEOutput(self._activate(logits), mu, logvar, z, kl, logits)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images (n, C, S, S) decoded from z ~ N(0, I), drawn from `generator` (on the
        model's device) or the default generator. Gradients are recorded unless called
        under torch.no_grad()."""
        positive_int(n, "n", f"{_OWNER}.sample")
        weight = self.from_latent.weight
        z = torch.randn(n, self.latent_dim, generator=generator, device=weight.device, dtype=weight.dtype)
        return self.decode(z)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, image_size={self.image_size}, "
                f"latent_dim={self.latent_dim}, backend={self.backend!r}, widths={self.widths}, "
                f"output_activation={self.output_activation!r}")
