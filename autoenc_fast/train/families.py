"""The model families `autoenc-fast train` knows: what each builds, trains and draws.

A family turns the command-line arguments into modules, optimizers and a dataset,
runs one optimization step on a batch, and makes the picture saved each epoch.
Defaults are sized for a CPU; every size is an option.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from . import data
from .optim import adam
from .errors import OptionError
from .options import COUNT, STEPS, WEIGHT


@dataclass
class StepContext:
    """What a step needs besides the batch: the modules as trained (wrapped in DDP or
    compiled where asked), their optimizers, autocast and the step number."""

    modules: dict
    optimizers: dict
    autocast: Callable
    scaler: torch.amp.GradScaler | None
    step: int
    args: argparse.Namespace
    extras: dict = field(default_factory=dict)


def _backward_and_step(ctx: StepContext, loss: torch.Tensor, name: str) -> None:
    optimizer = ctx.optimizers[name]
    optimizer.zero_grad(set_to_none=True)
    if ctx.scaler is not None:
        ctx.scaler.scale(loss).backward()
        ctx.scaler.step(optimizer)
        ctx.scaler.update()
    else:
        loss.backward()
        optimizer.step()


# The [train] extra's packages every run imports: checkpoints, the progress bar, the
# pictures and the loss curve.
RUN_PACKAGES = ("safetensors", "tqdm", "pillow", "matplotlib")


class Family:
    name = ""
    help = ""
    image_size = 32
    batch_size = 64
    lr = 1e-3
    default_data_packages: tuple[str, ...] = ()  # what the embedded data set (no --data) imports

    def packages(self, args) -> list[str]:
        """The [train] extra's packages (pip names) this run will import."""
        return [*RUN_PACKAGES, *(() if args.data else self.default_data_packages)]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Family options beyond the common ones."""

    def dataset(self, args, log, run_options: dict | None = None) -> data.TensorImages:
        """The training data; `run_options`, on --resume, are the options the run started with."""
        raise NotImplementedError

    def build(self, args) -> dict:
        raise NotImplementedError

    def check_batch(self, modules: dict, args, world: int) -> None:
        """Refuses, naming --batch-size, a batch the built model cannot train on."""

    def optimizers(self, modules: dict, args) -> dict:
        return {"model": adam(modules["model"].parameters(), lr=args.lr)}

    def step(self, ctx: StepContext, batch) -> dict:
        raise NotImplementedError

    @torch.no_grad()
    def picture(self, modules: dict, batch, args) -> list[torch.Tensor]:
        """Groups of images (N, C, H, W) in [0, 1], each kind (inputs, outputs, samples) one
        group: the grid starts each on a row of its own."""
        raise NotImplementedError


class _DigitsFamily(Family):
    """ae and vae: the embedded 8x8 digits, or a folder of images with --channels 1 or 3."""

    default_data_packages = ("scikit-learn",)

    def add_arguments(self, parser):
        parser.add_argument("--channels", type=int, choices=(1, 3), default=None,
                            help="image channels, 1 (greyscale) or 3 (RGB); default: 1 for the embedded digits, "
                                 "and with --data 3 if any image has colour, else 1; --resume keeps the run's")

    def dataset(self, args, log, run_options=None) -> data.TensorImages:
        """The images, with args.channels resolved where it was not given: the resumed run's,
        else from the data."""
        given = args.channels
        resumed = given is None and run_options is not None
        channels = run_options["channels"] if resumed else given
        if args.data:
            images = data.image_folder(args.data, args.image_size, channels, log)
        else:
            images = data.digits(args.image_size)
            if channels == 3:
                images = data.TensorImages(images.images.expand(-1, 3, -1, -1).contiguous())
        args.channels = images.images.shape[1]
        log(_channels_line(args.channels, "the run's" if resumed else given, args.data))
        return images


def _channels_line(channels: int, given: int | str | None, folder) -> str:
    """The line a run prints: how many channels its images have, and why (`given`: the
    --channels value, "the run's" on a resume, None where taken from the data)."""
    kind = "1 channel (greyscale)" if channels == 1 else "3 channels (RGB)"
    if given == "the run's":
        why = "the run's, as it started (--resume)"
    elif given is not None:
        why = f"--channels {given}" + ("; the greyscale digits repeated in each" if given == 3 and not folder else "")
    elif not folder:
        why = "the embedded digits are greyscale; --channels 3 repeats them in RGB"
    elif channels == 3:
        why = "--data holds colour images; --channels 1 trains on them in greyscale"
    else:
        why = "every --data image is grey; --channels 3 would repeat it in RGB"
    return f"images: {kind}: {why}"


class AutoencoderFamily(_DigitsFamily):
    name = "ae"
    help = ("convolutional autoencoder (AlexNet encoder, mirrored decoder) on 8x8 digits upsampled, or --data DIR "
            "(greyscale or RGB: --channels)")
    image_size = 67  # the smallest size AlexNet's strides and pools keep >= 1x1

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--latent-dim", type=COUNT, default=64, help="size of the code (default 64)")
        parser.add_argument("--widths", type=COUNT, nargs=5, default=[16, 32, 48, 48, 32], metavar="C",
                            help="channels of conv1..conv5 (AlexNet: 96 256 384 384 256)")

    def build(self, args):
        from ..models import ConvAutoencoder

        return {"model": ConvAutoencoder(args.channels, args.image_size, args.latent_dim, backend=args.backend,
                                         widths=tuple(args.widths))}

    def step(self, ctx, batch):
        from ..models.losses import mse_reconstruction_loss

        with ctx.autocast():
            recon = ctx.modules["model"](batch)
            loss = mse_reconstruction_loss(recon.float(), batch)
        _backward_and_step(ctx, loss, "model")
        return {"loss": loss.detach()}

    @torch.no_grad()
    def picture(self, modules, batch, args):
        shown = batch[:8]
        return [shown, modules["model"](shown).float()]


class VAEFamily(_DigitsFamily):
    name = "vae"
    help = ("variational autoencoder with the fused reparametrize+KL kernel on 8x8 digits upsampled, or --data DIR "
            "(greyscale or RGB: --channels)")

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--latent-dim", type=COUNT, default=16, help="size of z (default 16)")
        parser.add_argument("--widths", type=COUNT, nargs="+", default=[32, 64, 128], metavar="C",
                            help="channels of the encoder's stride-2 stages (default 32 64 128)")
        parser.add_argument("--beta", type=WEIGHT, default=1.0, help="KL weight (default 1)")
        parser.add_argument("--beta-warmup", type=STEPS, default=200, metavar="STEPS",
                            help="steps over which the KL weight rises from 0 to --beta (default 200)")

    def build(self, args):
        from ..models import VAE

        return {"model": VAE(args.channels, args.image_size, args.latent_dim, backend=args.backend,
                             widths=tuple(args.widths))}

    def step(self, ctx, batch):
        from ..models.losses import beta_warmup, vae_loss

        beta = beta_warmup(ctx.step, args_warmup(ctx.args), ctx.args.beta)
        with ctx.autocast():
            out = ctx.modules["model"](batch)
        terms = vae_loss(out._replace(logits=out.logits.float(), recon=out.recon.float()), batch,
                         recon="bce", reduction="sum_mean", beta=beta)
        _backward_and_step(ctx, terms.loss, "model")
        return {"loss": terms.loss.detach(), "recon": terms.recon.detach(), "kl": terms.kl.detach()}

    @torch.no_grad()
    def picture(self, modules, batch, args):
        model = modules["model"]
        gen = torch.Generator(device=batch.device).manual_seed(args.seed)
        samples = model.sample(16, generator=gen).float()
        shown = batch[:8]
        return [shown, model(shown).recon.float(), samples]


def args_warmup(args) -> int:
    return max(0, int(args.beta_warmup))


def _unwrap(module: nn.Module) -> nn.Module:
    """The model inside torch.compile's and DistributedDataParallel's wrappers."""
    module = getattr(module, "_orig_mod", module)
    return getattr(module, "module", module)


def _to_tanh_range(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1], the range of the GAN generators' tanh output."""
    return images * 2 - 1


def _to_unit_range(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() + 1) / 2).clamp(0, 1)


class ContextEncoderFamily(Family):
    name = "context-encoder"
    help = ("Context Encoder inpainting (center128 network, channel-wise FC bottleneck, adversarial loss) "
            "on crops of scikit-image's photographs")
    image_size = 32
    channels = 3
    batch_size = 32
    lr = 2e-4  # the original code's Adam: lr 2e-4, beta1 0.5
    default_data_packages = ("scikit-image",)

    def add_arguments(self, parser):
        parser.add_argument("--widths", type=COUNT, nargs="+", default=[16, 32, 64, 128], metavar="C",
                            help="encoder channels, one 4x4 stride-2 stage each (paper at 128: 64 64 128 256 512)")
        parser.add_argument("--disc-widths", type=COUNT, nargs="+", default=[32, 64], metavar="C",
                            help="discriminator channels (paper: 64 128 256 512)")
        parser.add_argument("--overlap", type=STEPS, default=2,
                            help="pixels of context the centre prediction overlaps, weighted 10x (paper: 4 at 128)")

    def dataset(self, args, log, run_options=None):
        if args.data:
            return data.image_folder(args.data, args.image_size, self.channels, log)
        return data.photo_crops(args.image_size)

    def build(self, args):
        from ..models import ContextDiscriminator, ContextEncoder, center_mask

        model = ContextEncoder("center128", backend=args.backend, image_size=args.image_size,
                               widths=tuple(args.widths))
        center_mask(args.image_size, args.overlap)  # refuses an --overlap the steps' masks could not have
        return {"model": model,
                "discriminator": ContextDiscriminator(3, model.prediction_size, widths=tuple(args.disc_widths))}

    def optimizers(self, modules, args):
        return {name: adam(modules[name].parameters(), lr=args.lr, betas=(0.5, 0.999))
                for name in ("model", "discriminator")}

    def step(self, ctx, batch):
        from ..models import apply_mask, center_mask, context_discriminator_loss, context_generator_loss

        model, disc = ctx.modules["model"], ctx.modules["discriminator"]
        image = _to_tanh_range(batch)
        mask = center_mask(image.shape[-1], ctx.args.overlap, device=image.device)
        target, weights = _unwrap(model).reconstruction_target(image, mask, ctx.args.overlap)
        with ctx.autocast():
            pred = model(apply_mask(image, mask))
            # Real and predicted regions in one discriminator call: one forward per backward under DDP.
            logits = disc(torch.cat([target, pred.detach().to(target.dtype)])).float()
        real_logits, fake_logits = logits.chunk(2)
        d_loss = context_discriminator_loss(real_logits, fake_logits)
        _backward_and_step(ctx, d_loss, "discriminator")
        with ctx.autocast():
            fake_logits = disc(pred).float()
        loss, rec, adv = context_generator_loss(pred.float(), target, weights, fake_logits)
        _backward_and_step(ctx, loss, "model")
        return {"loss": loss.detach(), "rec": rec.detach(), "adv": adv.detach(), "d_loss": d_loss.detach()}

    @torch.no_grad()
    def picture(self, modules, batch, args):
        """Rows: masked input / inpainting / original."""
        from ..models import apply_mask, center_mask

        model = modules["model"]
        image = _to_tanh_range(batch[:8])
        mask = center_mask(image.shape[-1], args.overlap, device=image.device)
        masked = apply_mask(image, mask, model.fill_value())
        return [_to_unit_range(masked), _to_unit_range(model.inpaint(image, mask)), batch[:8]]


class GauGANFamily(Family):
    name = "gaugan"
    help = ("GauGAN (SPADE generator, VAE image encoder, multiscale PatchGAN; hinge + feature matching + KL) "
            "on procedural label-map scenes, or --data DIR with DIR/images and DIR/labels (one class id a "
            "pixel: greyscale, palette or 16-bit PNGs)")
    image_size = 32
    channels = 3
    batch_size = 8
    lr = 2e-4  # the original's lr; two time-scale update: generator lr / 2, discriminator lr * 2

    def add_arguments(self, parser):
        parser.add_argument("--ngf", type=COUNT, default=8, help="generator/encoder width (paper: 64)")
        parser.add_argument("--ndf", type=COUNT, default=16, help="discriminator width (paper: 64)")
        parser.add_argument("--z-dim", type=COUNT, default=32, help="size of z (paper: 256)")
        parser.add_argument("--spade-hidden", type=COUNT, default=32, help="SPADE's shared-MLP width (paper: 128)")
        parser.add_argument("--n-layers-d", type=COUNT, default=3, help="PatchGAN convolutions (paper: 4)")
        parser.add_argument("--num-d", type=COUNT, default=2, help="discriminator scales (paper: 2)")
        parser.add_argument("--label-nc", type=COUNT, default=None,
                            help="label classes (default: the data's largest id + 1; 6 for the procedural scenes)")
        parser.add_argument("--lambda-feat", type=WEIGHT, default=10.0, help="feature-matching weight (paper: 10)")
        parser.add_argument("--no-vae", dest="use_vae", action="store_false",
                            help="no image encoder: the generator starts from the downsampled label map")

    def dataset(self, args, log, run_options=None):
        if args.data:
            images = data.paired_folder(args.data, args.image_size, log)
        else:
            images = data.procedural_scenes(args.image_size)
        present = int(images.extra["labels"].max()) + 1
        if args.label_nc is None:
            args.label_nc = len(data.SCENE_CLASSES) if not args.data else present
        elif args.label_nc < present:
            raise data.DataError(f"--label-nc {args.label_nc}: the label maps hold class ids up to {present - 1}")
        return images

    def build(self, args):
        from ..models import ConvEncoder, MultiscaleDiscriminator, SPADEGenerator

        generator = SPADEGenerator(args.label_nc, ngf=args.ngf, z_dim=args.z_dim, crop_size=args.image_size,
                                   use_vae=args.use_vae, backend=args.backend, spade_hidden=args.spade_hidden)
        modules = {"generator": generator,
                   "discriminator": MultiscaleDiscriminator(args.label_nc + 3, ndf=args.ndf,
                                                            n_layers=args.n_layers_d, num_D=args.num_d)}
        if args.use_vae:
            modules["encoder"] = ConvEncoder(ngf=args.ngf, z_dim=args.z_dim, input_size=args.image_size)
        return modules

    def check_batch(self, modules, args, world):
        # The generator's first SPADE blocks normalize with batch statistics over every
        # process: at a 1x1 latent map, one value per sample.
        generator = modules["generator"]
        if generator.sh * generator.sw == 1 and args.batch_size * world < 2:
            raise OptionError(f"--batch-size {args.batch_size}: GauGAN's batch statistics at its 1x1 latent map "
                              f"(--image-size {args.image_size}) need at least 2 images a step over all processes")

    def optimizers(self, modules, args):
        trained = [p for name in ("generator", "encoder") if name in modules for p in modules[name].parameters()]
        return {"generator": adam(trained, lr=args.lr / 2, betas=(0.0, 0.9)),
                "discriminator": adam(modules["discriminator"].parameters(), lr=args.lr * 2, betas=(0.0, 0.9))}

    @staticmethod
    def _discriminate(disc, seg, fake, real):
        """Fake and real pairs in one call (as the original: one forward per backward
        under DDP), each scale's outputs split back into (fake, real)."""
        outputs = disc(torch.cat([torch.cat([seg, fake], 1), torch.cat([seg, real], 1)]))
        fake_out = [[t[:fake.shape[0]].float() for t in scale] for scale in outputs]
        real_out = [[t[fake.shape[0]:].float() for t in scale] for scale in outputs]
        return fake_out, real_out

    def _generate(self, ctx, seg, real):
        """(fake, kl loss): z from the encoder through Reparametrize (the fused kernel for
        --backend fused) when the VAE is on."""
        from ..models import gaugan_kl_loss
        from ..models._backend import block_class

        if "encoder" not in ctx.modules:
            return ctx.modules["generator"](seg), real.new_zeros(())
        mu, logvar = ctx.modules["encoder"](real)
        z, kl = block_class("Reparametrize", ctx.args.backend)()(mu.float(), logvar.float())
        return ctx.modules["generator"](seg, z.to(mu.dtype)), gaugan_kl_loss(kl)

    def step(self, ctx, batch):
        from ..models import feature_matching_loss, hinge_discriminator_loss, hinge_generator_loss

        image, labels = batch
        real = _to_tanh_range(image)
        seg = one_hot(labels, ctx.args.label_nc, real.dtype)
        disc = ctx.modules["discriminator"]
        with ctx.autocast():
            fake, kld = self._generate(ctx, seg, real)
            pred_fake, pred_real = self._discriminate(disc, seg, fake, real)
        g_hinge = hinge_generator_loss(pred_fake)
        g_feat = feature_matching_loss(pred_fake, pred_real, ctx.args.lambda_feat)
        loss = g_hinge + g_feat + kld
        _backward_and_step(ctx, loss, "generator")
        with ctx.autocast():
            pred_fake, pred_real = self._discriminate(disc, seg, fake.detach(), real)
        d_loss = hinge_discriminator_loss(pred_real, pred_fake)
        _backward_and_step(ctx, d_loss, "discriminator")
        return {"loss": loss.detach(), "g_hinge": g_hinge.detach(), "g_feat": g_feat.detach(),
                "kld": kld.detach(), "d_loss": d_loss.detach()}

    @torch.no_grad()
    def picture(self, modules, batch, args):
        """Rows: label map colours / generated from z ~ N(0, I) (seeded) / real."""
        image, labels = batch[0][:8], batch[1][:8]
        seg = one_hot(labels, args.label_nc, image.dtype)
        generator = modules["generator"]
        gen = torch.Generator(device=image.device).manual_seed(args.seed)
        z = torch.randn(image.shape[0], generator.z_dim, generator=gen, device=image.device)
        fake = generator(seg, z if generator.use_vae else None)
        return [label_colours(labels, args.label_nc), _to_unit_range(fake), image]


def one_hot(labels: torch.Tensor, label_nc: int, dtype) -> torch.Tensor:
    """Class ids (B, H, W) -> one-hot segmap (B, label_nc, H, W)."""
    return torch.nn.functional.one_hot(labels.long(), label_nc).permute(0, 3, 1, 2).to(dtype)


def label_colours(labels: torch.Tensor, label_nc: int) -> torch.Tensor:
    """Class ids (B, H, W) -> (B, 3, H, W) in [0, 1]: the procedural scenes' class colours,
    then evenly spaced hues for further classes."""
    import colorsys

    colours = list(data.SCENE_CLASSES.values())
    colours += [colorsys.hsv_to_rgb(k / label_nc, 0.8, 0.9) for k in range(len(colours), label_nc)]
    palette = torch.tensor(colours[:label_nc], device=labels.device)
    return palette[labels.long()].permute(0, 3, 1, 2)


FAMILIES: dict[str, Family] = {f.name: f for f in (AutoencoderFamily(), VAEFamily(), ContextEncoderFamily(),
                                                   GauGANFamily())}
