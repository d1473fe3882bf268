"""The convolutional autoencoder: an AlexNet encoder, a dense bottleneck and a decoder
that mirrors AlexNet with upsampling."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .._args import check_codes, check_images, choice, positive_int, positive_ints
from ._backend import check_backend

__all__ = ["ConvAutoencoder", "alexnet_feature_sizes"]

_OWNER = "ConvAutoencoder"
ALEXNET_WIDTHS = (96, 256, 384, 384, 256)
OUTPUT_ACTIVATIONS = ("sigmoid", "none")
UPSAMPLE_MODES = ("nearest", "bilinear")


def _conv_out(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def alexnet_feature_sizes(image_size: int) -> dict[str, int]:
    """Spatial side of every AlexNet stage for a square `image_size` input.

    conv1 (11x11, stride 4) -> pool1 (3, stride 2) -> conv2 (5x5, pad 2, same size)
    -> pool2 -> conv3..5 (3x3, pad 1, same size) -> pool3. For 227: 55, 27, 13, 6.
    Raises ValueError naming `image_size` when the input is too small for pool3
    to keep at least one pixel (image_size < 67).
    """
    conv1 = _conv_out(image_size, 11, 4)
    pool1 = _conv_out(conv1, 3, 2) if conv1 >= 3 else 0
    pool2 = _conv_out(pool1, 3, 2) if pool1 >= 3 else 0
    pool3 = _conv_out(pool2, 3, 2) if pool2 >= 3 else 0
    if pool3 < 1:
        raise ValueError(f"{_OWNER}: `image_size` must be >= 67 for the AlexNet encoder "
                         f"(three 3/2 max-pools after an 11x11 stride-4 convolution); got {image_size}")
    return {"conv1": conv1, "pool1": pool1, "pool2": pool2, "pool3": pool3}


def _conv_relu(name: str, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0):
    return [(name, nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding)),
            (f"{name}_relu", nn.ReLU(inplace=True))]


def _alexnet_encoder(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    """AlexNet's five convolutions (no LRN, no dropout) up to pool5."""
    w1, w2, w3, w4, w5 = widths
    return nn.Sequential(OrderedDict([
        *_conv_relu("conv1", in_channels, w1, 11, stride=4),
        ("pool1", nn.MaxPool2d(3, stride=2)),
        *_conv_relu("conv2", w1, w2, 5, padding=2),
        ("pool2", nn.MaxPool2d(3, stride=2)),
        *_conv_relu("conv3", w2, w3, 3, padding=1),
        *_conv_relu("conv4", w3, w4, 3, padding=1),
        *_conv_relu("conv5", w4, w5, 3, padding=1),
        ("pool5", nn.MaxPool2d(3, stride=2)),
    ]))


def _mirrored_decoder(out_channels: int, widths: tuple[int, ...], sizes: dict[str, int],
                      image_size: int, upsample_mode: str) -> nn.Sequential:
    """AlexNet run backwards: every pooling (and conv1's stride 4) becomes an upsampling
    to the size the encoder had there, every convolution keeps its kernel with 'same'
    padding and maps the widths back; the last one outputs `out_channels` without ReLU."""
    w1, w2, w3, w4, w5 = widths
    up = lambda size: nn.Upsample(size=(size, size), mode=upsample_mode)  # noqa: E731
    return nn.Sequential(OrderedDict([
        ("unpool5", up(sizes["pool2"])),
        *_conv_relu("deconv5", w5, w4, 3, padding=1),
        *_conv_relu("deconv4", w4, w3, 3, padding=1),
        *_conv_relu("deconv3", w3, w2, 3, padding=1),
        ("unpool2", up(sizes["pool1"])),
        *_conv_relu("deconv2", w2, w1, 5, padding=2),
        ("unpool1", up(sizes["conv1"])),
        ("unstride1", up(image_size)),
        ("deconv1", nn.Conv2d(w1, out_channels, 11, padding=5)),
    ]))


class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder with an AlexNet encoder and a mirrored decoder.

    Encoder: AlexNet's five convolutions with ReLU and three 3/2 max-pools,
    (B, C, 227, 227) -> (B, 256, 6, 6) = 9,216 units, then a dense layer to the
    latent code (B, latent_dim): 9,216 -> 2,304 is AlexNet's 4:1 compression. The code
    is linear (no activation) so it can take any sign.

    Decoder: a dense layer back to (B, 256, 6, 6) with ReLU (the encoder's pool5
    features are non-negative), then five convolutions with ReLU alternating with
    upsampling to the encoder's intermediate sizes (6 -> 13 -> 27 -> 55 -> 227 at the
    paper size; computed from `image_size`, so any image_size >= 67 comes back exactly).

    Output activation: ``"sigmoid"`` (default) for images scaled to [0, 1], the usual
    target of the MSE loss; ``"none"`` leaves the last convolution linear, for inputs
    standardized to zero mean and unit variance.

    Args:
        in_channels: image channels (the reconstruction has as many).
        image_size: side of the square input, >= 67 (AlexNet: 227).
        latent_dim: size of the code (AlexNet: 2,304 = 9,216 / 4).
        backend: "fused" or "reference". No block of this model has a fused kernel yet:
            both build the same torch.nn layers, kept so every model takes the argument.
        widths: channels of conv1..conv5 (AlexNet: 96, 256, 384, 384, 256); smaller
            widths give a variant that trains on a CPU.
        output_activation: "sigmoid" or "none" (see above).
        upsample_mode: "nearest" (default) or "bilinear" interpolation in the decoder.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 227, latent_dim: int = 2304,
                 backend: str = "fused", widths=ALEXNET_WIDTHS, *,
                 output_activation: str = "sigmoid", upsample_mode: str = "nearest"):
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels", _OWNER)
        self.image_size = positive_int(image_size, "image_size", _OWNER)
        self.latent_dim = positive_int(latent_dim, "latent_dim", _OWNER)
        self.backend = check_backend(backend, _OWNER)
        self.widths = positive_ints(widths, 5, "widths", _OWNER)
        self.output_activation = choice(output_activation, OUTPUT_ACTIVATIONS, "output_activation", _OWNER)
        self.upsample_mode = choice(upsample_mode, UPSAMPLE_MODES, "upsample_mode", _OWNER)
        self.feature_sizes = alexnet_feature_sizes(image_size)

        side = self.feature_sizes["pool3"]
        self.feature_shape = (self.widths[-1], side, side)
        features = self.widths[-1] * side * side
        self.encoder = _alexnet_encoder(in_channels, self.widths)
        self.to_latent = nn.Linear(features, latent_dim)
        self.from_latent = nn.Linear(latent_dim, features)
        self.decoder = _mirrored_decoder(in_channels, self.widths, self.feature_sizes,
                                         image_size, upsample_mode)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, image_size, image_size) -> code (B, latent_dim)."""
        check_images(x, self.in_channels, self.image_size, "x", f"{_OWNER}.encode")
        return self.to_latent(self.encoder(x).flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """code (B, latent_dim) -> reconstruction (B, in_channels, image_size, image_size)."""
        check_codes(z, self.latent_dim, "z", f"{_OWNER}.decode")
        features = torch.relu(self.from_latent(z)).view(z.shape[0], *self.feature_shape)
        out = self.decoder(features)
        return torch.sigmoid(out) if self.output_activation == "sigmoid" else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, image_size, image_size) -> reconstruction of the same shape."""
        return self.decode(self.encode(x))

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, image_size={self.image_size}, "
                f"latent_dim={self.latent_dim}, backend={self.backend!r}, widths={self.widths}, "
                f"output_activation={self.output_activation!r}")
