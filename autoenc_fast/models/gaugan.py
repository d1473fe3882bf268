"""GauGAN (Park et al. 2019, SPADE): the SPADE residual generator, the image encoder
of its VAE mode, the multiscale PatchGAN discriminator and the losses.

Submodule and parameter names follow the original code (fc, head_0, G_middle_0/1,
up_0..up_4, conv_img; conv_0, conv_1, conv_s, norm_0, norm_1, norm_s; layer1..,
fc_mu, fc_var), so its generator and encoder state_dicts load with strict=True,
spectral norm's weight_orig / weight_u / weight_v included.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._args import check_codes, check_maps, choice, positive_int
from ._backend import block_class, check_backend
from .losses import GAUGAN_KL_WEIGHT

__all__ = ["ConvEncoder", "MultiscaleDiscriminator", "SPADEGenerator", "SPADEResnetBlock",
           "feature_matching_loss", "gaugan_kl_loss", "hinge_discriminator_loss", "hinge_generator_loss"]

NORMS = ("syncbatch", "batch", "instance")
UPSAMPLING = {"normal": 5, "more": 6, "most": 7}  # nearest 2x upsamplings from the latent map
SPADE_HIDDEN = 128  # nhidden of the original SPADE
FEATURE_MATCHING_WEIGHT = 10.0  # lambda_feat


def _maybe_spectral(module: nn.Module, enabled: bool) -> nn.Module:
    """torch.nn.utils.spectral_norm (weight_orig, weight_u, weight_v) when enabled."""
    return nn.utils.spectral_norm(module) if enabled else module


class SPADEResnetBlock(nn.Module):
    """GauGAN's residual block: (B, fin, H, W) and a segmap (B, label_nc, h, w) -> (B, fout, H, W).

    dx = conv_1(SPADE_1(conv_0(SPADE_0(x)))), each SPADE with the leaky_relu(0.2)
    fused into its normalization (negative_slope); the shortcut is conv_s(norm_s(x)),
    a 1x1 convolution without bias after a SPADE without activation, when fin != fout,
    else x. conv_0 maps to min(fin, fout) channels. Spectral norm on conv_0, conv_1,
    conv_s when `spectral_norm`. The SPADEs' norm is "syncbatch" (batch statistics,
    all-reduced over the default process group under torch.distributed), "batch" or
    "instance"; `spade_hidden` is their shared-MLP width (128).
    """

    def __init__(self, fin: int, fout: int, label_nc: int, spectral_norm: bool = True, norm: str = "syncbatch",
                 backend: str = "fused", *, spade_hidden: int = SPADE_HIDDEN):
        super().__init__()
        owner = "SPADEResnetBlock"
        for name, value in (("fin", fin), ("fout", fout), ("label_nc", label_nc), ("spade_hidden", spade_hidden)):
            positive_int(value, name, owner)
        choice(norm, NORMS, "norm", owner)
        self.backend = check_backend(backend, owner)
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = _maybe_spectral(nn.Conv2d(fin, fmiddle, 3, padding=1), spectral_norm)
        self.conv_1 = _maybe_spectral(nn.Conv2d(fmiddle, fout, 3, padding=1), spectral_norm)
        spade = block_class("SPADE", backend)
        self.norm_0 = spade(fin, label_nc, hidden=spade_hidden, norm=norm, negative_slope=0.2)
        self.norm_1 = spade(fmiddle, label_nc, hidden=spade_hidden, norm=norm, negative_slope=0.2)
        if self.learned_shortcut:
            self.conv_s = _maybe_spectral(nn.Conv2d(fin, fout, 1, bias=False), spectral_norm)
            self.norm_s = spade(fin, label_nc, hidden=spade_hidden, norm=norm)

    def shortcut(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        return self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        dx = self.conv_0(self.norm_0(x, seg))
        dx = self.conv_1(self.norm_1(dx, seg))
        return self.shortcut(x, seg) + dx


def latent_size(crop_size: int, aspect_ratio: float, num_upsampling_layers: str, owner: str) -> tuple[int, int]:
    """(sh, sw): the side of the generator's first map, crop_size / 2**n wide and
    round(width / aspect_ratio) high, n = 5, 6, 7 for "normal", "more", "most"."""
    n = UPSAMPLING[num_upsampling_layers]
    if crop_size % 2**n:
        raise ValueError(f"{owner}: `crop_size` must be a multiple of 2**{n} = {2**n} for "
                         f"num_upsampling_layers={num_upsampling_layers!r}; got {crop_size}")
    sw = crop_size // 2**n
    sh = round(sw / aspect_ratio)
    if sh < 1:  # rounded as the original does; it must leave at least one row
        raise ValueError(f"{owner}: `aspect_ratio` {aspect_ratio} leaves no row: the latent width {sw} "
                         f"(crop_size / 2**{n}) / aspect_ratio rounds to {sh}")
    return sh, sw


class SPADEGenerator(nn.Module):
    """GauGAN's generator: a segmap (B, label_nc, H, W) (one-hot) -> image (B, 3, H, W) in [-1, 1].

    use_vae: z (B, z_dim) (drawn from N(0, I) when None) -> fc (Linear) -> (B, 16 ngf, sh, sw);
    else the segmap resized to (sh, sw) -> fc (3x3 Conv2d). Then SPADE residual blocks
    with nearest 2x upsampling: head_0, [up], G_middle_0, [up if "more"/"most"],
    G_middle_1, up, up_0 (16 -> 8 ngf), up, up_1 (-> 4 ngf), up, up_2 (-> 2 ngf), up,
    up_3 (-> ngf), ["most": up, up_4 (-> ngf / 2)], then conv_img(leaky_relu(0.2)) -> tanh.
    The output is crop_size wide and crop_size / aspect_ratio high: (sh, sw) * 2**n,
    n = 5 / 6 / 7 for num_upsampling_layers "normal" / "more" / "most".

    Args (the original's defaults): label_nc; ngf=64; z_dim=256; crop_size=256;
    aspect_ratio=1.0; num_upsampling_layers="normal"; use_vae=True; norm="syncbatch";
    spectral_norm=True (on every block convolution; fc and conv_img stay plain, as in
    the original); backend "fused" / "reference" (the SPADE blocks); spade_hidden=128.
    """

    def __init__(self, label_nc: int, ngf: int = 64, z_dim: int = 256, crop_size: int = 256,
                 aspect_ratio: float = 1.0, num_upsampling_layers: str = "normal", use_vae: bool = True,
                 norm: str = "syncbatch", spectral_norm: bool = True, backend: str = "fused", *,
                 spade_hidden: int = SPADE_HIDDEN):
        super().__init__()
        owner = "SPADEGenerator"
        self.label_nc = positive_int(label_nc, "label_nc", owner)
        self.ngf = positive_int(ngf, "ngf", owner)
        self.z_dim = positive_int(z_dim, "z_dim", owner)
        self.crop_size = positive_int(crop_size, "crop_size", owner)
        self.num_upsampling_layers = choice(num_upsampling_layers, tuple(UPSAMPLING), "num_upsampling_layers", owner)
        if not isinstance(aspect_ratio, (int, float)) or not aspect_ratio > 0:
            raise ValueError(f"{owner}: `aspect_ratio` must be a number > 0; got {aspect_ratio!r}")
        if num_upsampling_layers == "most" and ngf < 2:
            raise ValueError(f"{owner}: `ngf` must be >= 2 for num_upsampling_layers='most' (up_4 has ngf // 2)")
        self.backend = check_backend(backend, owner)
        self.use_vae = bool(use_vae)
        self.sh, self.sw = latent_size(crop_size, aspect_ratio, num_upsampling_layers, owner)
        nf = ngf
        self.fc = nn.Linear(z_dim, 16 * nf * self.sh * self.sw) if use_vae else \
            nn.Conv2d(label_nc, 16 * nf, 3, padding=1)
        block = lambda fin, fout: SPADEResnetBlock(fin, fout, label_nc, spectral_norm, norm, backend,  # noqa: E731
                                                   spade_hidden=spade_hidden)
        self.head_0 = block(16 * nf, 16 * nf)
        self.G_middle_0 = block(16 * nf, 16 * nf)
        self.G_middle_1 = block(16 * nf, 16 * nf)
        self.up_0 = block(16 * nf, 8 * nf)
        self.up_1 = block(8 * nf, 4 * nf)
        self.up_2 = block(4 * nf, 2 * nf)
        self.up_3 = block(2 * nf, nf)
        final_nc = nf
        if num_upsampling_layers == "most":
            self.up_4 = block(nf, nf // 2)
            final_nc = nf // 2
        self.conv_img = nn.Conv2d(final_nc, 3, 3, padding=1)

    @property
    def output_size(self) -> tuple[int, int]:
        """(H, W) of the generated image."""
        scale = 2 ** UPSAMPLING[self.num_upsampling_layers]
        return self.sh * scale, self.sw * scale

    def _initial_map(self, seg: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        if not self.use_vae:
            if z is not None:  # GauGAN's code ignores it here; a caller passing one expects it used
                raise ValueError("SPADEGenerator: `z` is only read with use_vae=True; this generator starts "
                                 "from the downsampled segmap: pass z=None")
            return self.fc(F.interpolate(seg, size=(self.sh, self.sw)))
        if z is None:
            z = torch.randn(seg.shape[0], self.z_dim, dtype=seg.dtype, device=seg.device)
        else:
            check_codes(z, self.z_dim, "z", "SPADEGenerator", batch=seg.shape[0])  # the segmap's batch
        return self.fc(z).view(-1, 16 * self.ngf, self.sh, self.sw)

    def forward(self, segmap: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """segmap (B, label_nc, H, W), z (B, z_dim) or None -> (B, 3, H, W) in [-1, 1]."""
        check_maps(segmap, self.label_nc, "segmap", "SPADEGenerator")
        up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
        more = self.num_upsampling_layers in ("more", "most")
        x = self.head_0(self._initial_map(segmap, z), segmap)
        x = self.G_middle_0(up(x), segmap)
        x = up(x) if more else x
        x = self.G_middle_1(x, segmap)
        for block in (self.up_0, self.up_1, self.up_2, self.up_3):
            x = block(up(x), segmap)
        if self.num_upsampling_layers == "most":
            x = self.up_4(up(x), segmap)
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))

    def extra_repr(self) -> str:
        return (f"label_nc={self.label_nc}, ngf={self.ngf}, z_dim={self.z_dim}, output_size={self.output_size}, "
                f"num_upsampling_layers={self.num_upsampling_layers!r}, use_vae={self.use_vae}, "
                f"backend={self.backend!r}")


class ConvEncoder(nn.Module):
    """GauGAN's image encoder of the VAE mode: image (B, 3, H, W) -> (mu, logvar), (B, z_dim) each.

    The image is resized (bilinear) to input_size x input_size (256, as the original)
    first; then layer1.. 3x3 stride-2 convolutions, each followed by InstanceNorm2d
    (affine=False; spectral norm on the convolution: the original's "spectralinstance"),
    ngf, 2, 4, 8, 8, 8 ngf channels, with LeakyReLU(0.2) between them and after the last,
    down to 4x4 (six layers at 256); fc_mu and fc_var read the flattened 8 ngf x 4 x 4.
    """

    def __init__(self, ngf: int = 64, z_dim: int = 256, spectral_norm: bool = True, *, input_size: int = 256):
        super().__init__()
        owner = "ConvEncoder"
        self.ngf = positive_int(ngf, "ngf", owner)
        self.z_dim = positive_int(z_dim, "z_dim", owner)
        self.input_size = positive_int(input_size, "input_size", owner)
        depth = int(math.log2(input_size)) - 2
        if input_size < 8 or 2 ** (depth + 2) != input_size:
            raise ValueError(f"{owner}: `input_size` must be a power of two >= 8 (halved down to 4x4); "
                             f"got {input_size}")
        widths = [ngf * min(2**i, 8) for i in range(depth)]
        cin = 3
        for i, width in enumerate(widths, start=1):
            # No bias, as the original (its norm layer helper deletes it): instance norm
            # would subtract it again.
            conv = _maybe_spectral(nn.Conv2d(cin, width, 3, stride=2, padding=1, bias=False), spectral_norm)
            self.add_module(f"layer{i}", nn.Sequential(conv, nn.InstanceNorm2d(width, affine=False)))
            cin = width
        self.depth = depth
        self._register_load_state_dict_pre_hook(self._drop_convolution_biases)
        self.fc_mu = nn.Linear(widths[-1] * 16, z_dim)
        self.fc_var = nn.Linear(widths[-1] * 16, z_dim)

    def _drop_convolution_biases(self, state_dict, prefix, *args) -> None:
        """State dicts saved before the convolutions lost their biases (autoenc_fast <=
        2026-11-28) still load: those biases had no effect on any output."""
        for i in range(1, self.depth + 1):
            state_dict.pop(f"{prefix}layer{i}.0.bias", None)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_maps(image, 3, "image", "ConvEncoder")  # any H, W: resized to input_size below
        if image.shape[-2:] != (self.input_size, self.input_size):
            image = F.interpolate(image, size=(self.input_size, self.input_size), mode="bilinear",
                                  align_corners=False)
        x = image
        for i in range(1, self.depth + 1):
            x = F.leaky_relu(getattr(self, f"layer{i}")(x), 0.2)
        x = x.flatten(1)
        return self.fc_mu(x), self.fc_var(x)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: model0 (4x4 stride-2 conv, LeakyReLU 0.2), model1..model{n-1} (4x4
    conv with spectral norm + InstanceNorm, stride 2 but 1 for the last, channels
    doubling to at most 512, LeakyReLU), model{n} (4x4 conv to 1 logit per patch).
    forward returns every stage's output: the features for feature matching, the last
    the patch logits."""

    def __init__(self, input_nc: int, ndf: int, n_layers: int, spectral_norm: bool):
        super().__init__()
        nf = ndf
        stages = [[nn.Conv2d(input_nc, nf, 4, stride=2, padding=2), nn.LeakyReLU(0.2)]]
        for n in range(1, n_layers):
            nf_prev, nf = nf, min(nf * 2, 512)
            conv = _maybe_spectral(nn.Conv2d(nf_prev, nf, 4, stride=1 if n == n_layers - 1 else 2, padding=2),
                                   spectral_norm)
            stages.append([conv, nn.InstanceNorm2d(nf, affine=False), nn.LeakyReLU(0.2)])
        stages.append([nn.Conv2d(nf, 1, 4, stride=1, padding=2)])
        for i, stage in enumerate(stages):
            self.add_module(f"model{i}", nn.Sequential(*stage))
        self.stages = len(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for i in range(self.stages):
            x = getattr(self, f"model{i}")(x)
            outputs.append(x)
        return outputs


class MultiscaleDiscriminator(nn.Module):
    """num_D PatchGANs (discriminator_0, ..) on the input (B, input_nc, H, W) (label map
    and image concatenated) at full size and then halved each time (3x3 average pool,
    stride 2). forward -> one list per scale of the stage outputs, the last of each
    list the patch logits (B, 1, h, w)."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 4, num_D: int = 2, spectral_norm: bool = True):
        super().__init__()
        owner = "MultiscaleDiscriminator"
        for name, value in (("input_nc", input_nc), ("ndf", ndf), ("n_layers", n_layers), ("num_D", num_D)):
            positive_int(value, name, owner)
        self.num_D = num_D
        for i in range(num_D):
            self.add_module(f"discriminator_{i}", NLayerDiscriminator(input_nc, ndf, n_layers, spectral_norm))

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        results = []
        for i in range(self.num_D):
            results.append(getattr(self, f"discriminator_{i}")(x))
            if i < self.num_D - 1:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
        return results


# ---------------------------------------------------------------- losses


def _check_scales(owner: str, **outputs: list) -> None:
    """The discriminator outputs (one list per scale) are non-empty and, when there are
    two, have one count of scales: a zip over them would silently drop a scale."""
    counts = {name: len(value) if isinstance(value, (list, tuple)) else None for name, value in outputs.items()}
    for name, count in counts.items():
        if not count:
            raise ValueError(f"{owner}: `{name}` must be a non-empty list of per-scale discriminator outputs "
                             f"(MultiscaleDiscriminator's); got {outputs[name]!r:.80}")
    if len(set(counts.values())) > 1:
        raise ValueError(f"{owner}: the outputs must have one count of scales; got " +
                         ", ".join(f"`{name}` {count}" for name, count in counts.items()))


def hinge_discriminator_loss(real: list, fake: list) -> torch.Tensor:
    """mean over scales of mean(relu(1 - D(real))) + mean(relu(1 + D(fake))), reading
    each scale's patch logits (the last entry of its list)."""
    _check_scales("hinge_discriminator_loss", real=real, fake=fake)
    loss_real = sum(F.relu(1 - scale[-1]).mean() for scale in real) / len(real)
    loss_fake = sum(F.relu(1 + scale[-1]).mean() for scale in fake) / len(fake)
    return loss_real + loss_fake


def hinge_generator_loss(fake: list) -> torch.Tensor:
    """mean over scales of -mean(D(fake))."""
    _check_scales("hinge_generator_loss", fake=fake)
    return -sum(scale[-1].mean() for scale in fake) / len(fake)


def feature_matching_loss(fake: list, real: list, weight: float = FEATURE_MATCHING_WEIGHT) -> torch.Tensor:
    """weight / num_D * sum over scales and intermediate stages (the logits excluded)
    of L1(D_feature(fake), D_feature(real).detach())."""
    _check_scales("feature_matching_loss", fake=fake, real=real)
    total = fake[0][-1].new_zeros(())
    for fake_scale, real_scale in zip(fake, real):
        for f, r in zip(fake_scale[:-1], real_scale[:-1]):
            total = total + F.l1_loss(f, r.detach())
    return total * weight / len(fake)


def gaugan_kl_loss(kl: torch.Tensor) -> torch.Tensor:
    """0.05 * KL summed over the batch and latent dims, from Reparametrize's per-sample kl (B,)."""
    return GAUGAN_KL_WEIGHT * kl.sum()
