"""Context Encoders (Pathak et al. 2016): the AlexNet feature-learning network and the
128x128 centre-inpainting network, both with the channel-wise FC bottleneck, plus
masks, the weighted reconstruction loss, the adversarial discriminator and `inpaint`."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .._args import check_broadcasts_to, check_codes, check_images, choice, positive_int, positive_ints
from ._backend import block_class, check_backend
from .conv_autoencoder import ALEXNET_WIDTHS, _alexnet_encoder, alexnet_feature_sizes

__all__ = ["CONTEXT_LAMBDA_ADV", "CONTEXT_LAMBDA_REC", "ContextDiscriminator", "ContextEncoder",
           "apply_mask", "center_mask", "context_discriminator_loss", "context_generator_loss",
           "masked_reconstruction_loss", "overlap_weights", "random_block_mask"]

_OWNER = "ContextEncoder"
VARIANTS = ("alexnet", "center128")
OUTPUT_ACTIVATIONS = ("tanh", "sigmoid")
CENTER128_WIDTHS = (64, 64, 128, 256, 512)  # 128 -> 64 -> 32 -> 16 -> 8 -> 4
ALEXNET_DECODER_WIDTHS = (128, 64, 64, 32)  # four up-convolutions before the one to the image
DISCRIMINATOR_WIDTHS = (64, 128, 256, 512)  # DCGAN: 64 -> 32 -> 16 -> 8 -> 4, then 4x4 -> 1
CONTEXT_LAMBDA_REC = 0.999  # the paper's joint-loss weights
CONTEXT_LAMBDA_ADV = 0.001
OVERLAP = 4  # pixels of known context the centre prediction also covers
OVERLAP_WEIGHT = 10.0  # the loss weight of those pixels, relative to the hidden ones


# ---------------------------------------------------------------- masks and losses


def center_mask(image_size: int, overlap: int = OVERLAP, *, device=None) -> torch.Tensor:
    """(1, 1, S, S) float mask, 1 where the input is hidden: the centre S/2 square
    shrunk by `overlap` pixels on each side (Pathak's 128 case: rows/cols 36..91)."""
    positive_int(image_size, "image_size", "center_mask")
    start, stop = image_size // 4 + overlap, image_size // 4 + image_size // 2 - overlap
    if stop <= start or overlap < 0:
        raise ValueError(f"center_mask: `overlap` must be in [0, {image_size // 4}) for image_size "
                         f"{image_size}; got {overlap}")
    mask = torch.zeros(1, 1, image_size, image_size, device=device)
    mask[..., start:stop, start:stop] = 1
    return mask


def random_block_mask(batch: int, image_size: int, *, coverage: float = 0.25, block_range=(0.125, 0.375),
                      generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """(B, 1, S, S) float mask of random square blocks, 1 where hidden: blocks with
    sides drawn uniformly from `block_range` * S are added per image until at least
    `coverage` of it is hidden (the paper's random-block masks cover about 1/4)."""
    positive_int(batch, "batch", "random_block_mask")
    positive_int(image_size, "image_size", "random_block_mask")
    if not 0 < coverage < 1:
        raise ValueError(f"random_block_mask: `coverage` must be in (0, 1); got {coverage}")
    low, high = (max(1, round(f * image_size)) for f in block_range)
    if not 1 <= low <= high <= image_size:
        raise ValueError(f"random_block_mask: `block_range` must give sides in [1, {image_size}]; got {block_range}")
    mask = torch.zeros(batch, 1, image_size, image_size)
    draw = lambda lo, hi: int(torch.randint(lo, hi + 1, (), generator=generator))  # noqa: E731
    for b in range(batch):
        while mask[b].mean() < coverage:
            side = draw(low, high)
            top, left = draw(0, image_size - side), draw(0, image_size - side)
            mask[b, :, top:top + side, left:left + side] = 1
    return mask.to(device)


def apply_mask(image: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """The network's input: `image` (B, C, S, S) with the hidden pixels (mask 1,
    broadcast over B and C) set to `fill` (0: the mid-grey of tanh-range images)."""
    check_broadcasts_to(mask, image, "mask", "image", "apply_mask")
    return image * (1 - mask) + fill * mask


def overlap_weights(center_size: int, overlap: int = OVERLAP, weight: float = OVERLAP_WEIGHT,
                    *, device=None) -> torch.Tensor:
    """(1, 1, c, c) per-pixel loss weights of a centre prediction: 1 inside, `weight`
    on the `overlap`-pixel border (known context the prediction must blend into)."""
    weights = torch.full((1, 1, center_size, center_size), float(weight), device=device)
    weights[..., overlap:center_size - overlap, overlap:center_size - overlap] = 1.0
    return weights


def masked_reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(weights * (pred - target)^2) / (B * C * H * W): the weighted L2 over every
    element (weights broadcast to pred's shape; 0 where a pixel does not count)."""
    if pred.shape != target.shape:
        raise ValueError(f"masked_reconstruction_loss: `pred` {tuple(pred.shape)} and `target` "
                         f"{tuple(target.shape)} must have one shape")
    check_broadcasts_to(weights, pred, "weights", "pred", "masked_reconstruction_loss")
    return (weights * (pred - target).pow(2)).sum() / pred.numel()


def context_generator_loss(pred, target, weights, fake_logits, *, lambda_rec: float = CONTEXT_LAMBDA_REC,
                           lambda_adv: float = CONTEXT_LAMBDA_ADV) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, rec, adv): lambda_rec * weighted L2 + lambda_adv * BCE(D(pred), real),
    with D's logits `fake_logits` (B,) (the non-saturating generator loss)."""
    rec = masked_reconstruction_loss(pred, target, weights)
    adv = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    return lambda_rec * rec + lambda_adv * adv, rec, adv


def context_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """BCE(D(real), 1) + BCE(D(fake), 0) on the logits (B,)."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


# ---------------------------------------------------------------- networks


def _down_stack(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    """4x4 stride-2 convolutions, each halving the side; BatchNorm on all but the
    first (DCGAN), LeakyReLU(0.2) after every one."""
    layers, cin = [], in_channels
    for i, width in enumerate(widths):
        layers.append((f"conv{i}", nn.Conv2d(cin, width, 4, stride=2, padding=1, bias=i == 0)))
        if i > 0:
            layers.append((f"bn{i}", nn.BatchNorm2d(width)))
        layers.append((f"act{i}", nn.LeakyReLU(0.2, inplace=True)))
        cin = width
    return nn.Sequential(OrderedDict(layers))


def _up_stack(in_channels: int, widths: tuple[int, ...], out_channels: int, batch_norm: bool) -> nn.Sequential:
    """4x4 stride-2 up-convolutions, each doubling the side, through `widths` and then
    to `out_channels`; (BatchNorm +) ReLU after all but the last, which gives the logits."""
    channels = (in_channels, *widths, out_channels)
    layers = []
    for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
        last = i == len(channels) - 2
        layers.append((f"upconv{i}", nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1,
                                                        bias=last or not batch_norm)))
        if not last:
            if batch_norm:
                layers.append((f"bn{i}", nn.BatchNorm2d(cout)))
            layers.append((f"relu{i}", nn.ReLU(inplace=True)))
    return nn.Sequential(OrderedDict(layers))


def _variant_defaults(variant: str, image_size, widths, decoder_widths):
    if variant == "alexnet":
        return (227 if image_size is None else image_size, ALEXNET_WIDTHS if widths is None else widths,
                ALEXNET_DECODER_WIDTHS if decoder_widths is None else decoder_widths)
    if decoder_widths is not None:
        raise ValueError(f"{_OWNER}: `decoder_widths` is for variant='alexnet'; the center128 decoder "
                         "mirrors `widths`")
    return 128 if image_size is None else image_size, CENTER128_WIDTHS if widths is None else widths, None


class ContextEncoder(nn.Module):
    """A Context Encoder: encoder -> channel-wise FC bottleneck -> up-convolutions.

    variant="alexnet" (feature learning, random-region masks): AlexNet's encoder to
    pool5, (B, C, 227, 227) -> (B, 256, 6, 6); the bottleneck (channel-wise FC 256 x
    36 x 36 -> dropout -> 1x1 conv); five 4x4 stride-2 up-convolutions with ReLU
    (`decoder_widths` then C; the last one gives the output activation), so the output
    side is 6 * 2**5 = 192 for a 227 input: (B, C, 192, 192), a prediction of the whole
    image at 192 / 227 scale (`prediction_size`). `inpaint` resizes it back.

    variant="center128" (inpainting): (B, C, 128, 128) -> 4x4 stride-2 convolutions
    with BatchNorm + LeakyReLU(0.2) through `widths` (64, 64, 128, 256, 512) down to
    (B, 512, 4, 4); the bottleneck; 4x4 stride-2 up-convolutions with BatchNorm + ReLU
    through widths[-2:0:-1] (256, 128, 64) and then to C, (B, C, 64, 64): the centre
    square, with the 4-pixel overlap border (`center_mask`).

    Output activation: "tanh" (default, as the original code: images in [-1, 1], the
    hidden region filled with 0) or "sigmoid" (images in [0, 1]).

    Args:
        variant: "alexnet" or "center128".
        backend: "fused" (autoenc_fast.nn.ChannelwiseFCBottleneck) or "reference".
        in_channels: image channels C.
        image_size: input side (defaults 227 / 128). center128: a multiple of 2**len(widths).
        widths: encoder channels (alexnet: conv1..conv5; center128: one per stage).
        decoder_widths: alexnet only, the four inner up-convolutions' channels.
        dropout: the bottleneck's dropout probability (0.5).
        output_activation: "tanh" or "sigmoid".
    """

    def __init__(self, variant: str = "center128", backend: str = "fused", *, in_channels: int = 3,
                 image_size: int | None = None, widths=None, decoder_widths=None, dropout: float = 0.5,
                 output_activation: str = "tanh"):
        super().__init__()
        self.variant = choice(variant, VARIANTS, "variant", _OWNER)
        self.backend = check_backend(backend, _OWNER)
        self.in_channels = positive_int(in_channels, "in_channels", _OWNER)
        image_size, widths, decoder_widths = _variant_defaults(variant, image_size, widths, decoder_widths)
        self.image_size = positive_int(image_size, "image_size", _OWNER)
        self.output_activation = choice(output_activation, OUTPUT_ACTIVATIONS, "output_activation", _OWNER)
        if not 0 <= dropout < 1:
            raise ValueError(f"{_OWNER}: `dropout` must be in [0, 1); got {dropout}")
        if variant == "alexnet":
            self._build_alexnet(positive_ints(widths, 5, "widths", _OWNER),
                                positive_ints(decoder_widths, 4, "decoder_widths", _OWNER), dropout)
        else:
            self._build_center(positive_ints(widths, None, "widths", _OWNER), dropout)
        self.widths = widths

    def _build_alexnet(self, widths, decoder_widths, dropout):
        side = alexnet_feature_sizes(self.image_size)["pool3"]
        self.encoder = _alexnet_encoder(self.in_channels, widths)
        self.bottleneck = block_class("ChannelwiseFCBottleneck", self.backend)(widths[-1], side, side, dropout)
        self.decoder = _up_stack(widths[-1], decoder_widths, self.in_channels, batch_norm=False)
        self.feature_shape = (widths[-1], side, side)
        self.prediction_size = side * 2**5

    def _build_center(self, widths, dropout):
        depth = len(widths)
        if depth < 2 or self.image_size % 2**depth:
            raise ValueError(f"{_OWNER}: `image_size` must be a multiple of 2**len(widths) = {2**depth} and "
                             f"`widths` needs >= 2 stages; got image_size {self.image_size}, widths {widths}")
        side = self.image_size // 2**depth
        self.encoder = _down_stack(self.in_channels, widths)
        self.bottleneck = block_class("ChannelwiseFCBottleneck", self.backend)(widths[-1], side, side, dropout)
        self.decoder = _up_stack(widths[-1], tuple(reversed(widths[1:-1])), self.in_channels, batch_norm=True)
        self.feature_shape = (widths[-1], side, side)
        self.prediction_size = self.image_size // 2

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.tanh(logits) if self.output_activation == "tanh" else torch.sigmoid(logits)

    def forward(self, masked_image: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) image with its hidden region filled -> prediction
        (B, C, P, P), P = prediction_size (center128: the centre S/2; alexnet: 192 at 227)."""
        check_images(masked_image, self.in_channels, self.image_size, "masked_image", _OWNER)
        return self._activate(self.decoder(self.bottleneck(self.encoder(masked_image))))

    def center(self, image: torch.Tensor) -> torch.Tensor:
        """The centre S/2 square of (B, C, S, S) images: what center128 predicts."""
        start = self.image_size // 4
        return image[..., start:start + self.prediction_size, start:start + self.prediction_size]

    def fill_value(self) -> float:
        """What hidden pixels are set to: the middle of the output range."""
        return 0.0 if self.output_activation == "tanh" else 0.5

    def prediction_as_image(self, pred: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """The prediction placed on the full (B, C, S, S) canvas: center128 writes the
        centre into `image`, alexnet resizes its (P, P) output to (S, S)."""
        if self.variant == "alexnet":
            return F.interpolate(pred, size=image.shape[-2:], mode="bilinear", align_corners=False)
        canvas = image.clone()
        start = self.image_size // 4
        canvas[..., start:start + self.prediction_size, start:start + self.prediction_size] = pred
        return canvas

    def reconstruction_target(self, image: torch.Tensor, mask: torch.Tensor, overlap: int = OVERLAP
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(target, weights) for masked_reconstruction_loss against forward's output.

        center128: the centre of `image` and overlap_weights (1 inside, 10 on the
        `overlap`-pixel border; `mask` is not read: it should be center_mask with the
        same overlap). alexnet: `image`
        resized (antialiased bilinear) to the prediction size and `mask` resized
        (nearest) as the weights, so only hidden pixels count.
        """
        if self.variant == "center128":
            weights = overlap_weights(self.prediction_size, overlap, device=image.device)
            return self.center(image), weights.to(image.dtype)
        size = (self.prediction_size, self.prediction_size)
        target = F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False)
        return target, F.interpolate(mask.to(image.dtype), size=size, mode="nearest")

    def inpaint(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`image` (B, C, S, S) with its hidden pixels (mask 1, (B or 1, 1, S, S)) replaced
        by the network's prediction from the masked image; known pixels kept as they are."""
        check_images(image, self.in_channels, self.image_size, "image", f"{_OWNER}.inpaint")
        check_broadcasts_to(mask, image, "mask", "image", f"{_OWNER}.inpaint")
        mask = mask.to(image.dtype)
        pred = self(apply_mask(image, mask, self.fill_value()))
        return image * (1 - mask) + self.prediction_as_image(pred, image) * mask

    def extra_repr(self) -> str:
        return (f"variant={self.variant!r}, backend={self.backend!r}, in_channels={self.in_channels}, "
                f"image_size={self.image_size}, prediction_size={self.prediction_size}, "
                f"output_activation={self.output_activation!r}")


class ContextDiscriminator(nn.Module):
    """DCGAN discriminator on the predicted region: (B, C, P, P) -> logits (B,).

    4x4 stride-2 convolutions through `widths` (BatchNorm on all but the first,
    LeakyReLU(0.2)), (64, 128, 256, 512): 64 -> 4, then one convolution over the
    remaining P / 2**len(widths) square to a single logit (no sigmoid: the losses take
    logits). `region_size` must be a multiple of 2**len(widths).
    """

    def __init__(self, in_channels: int = 3, region_size: int = 64, widths=DISCRIMINATOR_WIDTHS):
        super().__init__()
        owner = "ContextDiscriminator"
        self.in_channels = positive_int(in_channels, "in_channels", owner)
        self.region_size = positive_int(region_size, "region_size", owner)
        self.widths = positive_ints(widths, None, "widths", owner)
        if region_size % 2 ** len(self.widths):
            raise ValueError(f"{owner}: `region_size` must be a multiple of 2**len(widths) = "
                             f"{2 ** len(self.widths)}; got {region_size}")
        self.features = _down_stack(in_channels, self.widths)
        self.classifier = nn.Conv2d(self.widths[-1], 1, region_size // 2 ** len(self.widths))

    def forward(self, region: torch.Tensor) -> torch.Tensor:
        check_images(region, self.in_channels, self.region_size, "region", "ContextDiscriminator")
        return self.classifier(self.features(region)).flatten()
