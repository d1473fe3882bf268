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


class Family:
    name = ""
    help = ""
    image_size = 32
    channels = 1
    batch_size = 64
    lr = 1e-3

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Family options beyond the common ones."""

    def dataset(self, args, log) -> data.TensorImages:
        if args.data:
            return data.image_folder(args.data, args.image_size, self.channels, log)
        return data.digits(args.image_size)

    def build(self, args) -> dict:
        raise NotImplementedError

    def optimizers(self, modules: dict, args) -> dict:
        return {"model": torch.optim.Adam(modules["model"].parameters(), lr=args.lr)}

    def step(self, ctx: StepContext, batch) -> dict:
        raise NotImplementedError

    @torch.no_grad()
    def picture(self, modules: dict, batch, args) -> torch.Tensor:
        """Images (N, C, H, W) in [0, 1] laid out in rows of `row` images."""
        raise NotImplementedError


class AutoencoderFamily(Family):
    name = "ae"
    help = "convolutional autoencoder (AlexNet encoder, mirrored decoder) on 8x8 digits upsampled"
    image_size = 67  # the smallest size AlexNet's strides and pools keep >= 1x1

    def add_arguments(self, parser):
        parser.add_argument("--latent-dim", type=int, default=64, help="size of the code (default 64)")
        parser.add_argument("--widths", type=int, nargs=5, default=[16, 32, 48, 48, 32], metavar="C",
                            help="channels of conv1..conv5 (AlexNet: 96 256 384 384 256)")

    def build(self, args):
        from ..models import ConvAutoencoder

        return {"model": ConvAutoencoder(self.channels, args.image_size, args.latent_dim, backend=args.backend,
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
        return torch.cat([shown, modules["model"](shown).float()])


class VAEFamily(Family):
    name = "vae"
    help = "variational autoencoder with the fused reparametrize+KL kernel on 8x8 digits upsampled"

    def add_arguments(self, parser):
        parser.add_argument("--latent-dim", type=int, default=16, help="size of z (default 16)")
        parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128], metavar="C",
                            help="channels of the encoder's stride-2 stages (default 32 64 128)")
        parser.add_argument("--beta", type=float, default=1.0, help="KL weight (default 1)")
        parser.add_argument("--beta-warmup", type=int, default=200, metavar="STEPS",
                            help="steps over which the KL weight rises from 0 to --beta (default 200)")

    def build(self, args):
        from ..models import VAE

        return {"model": VAE(self.channels, args.image_size, args.latent_dim, backend=args.backend,
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
        return torch.cat([shown, model(shown).recon.float(), samples])


def args_warmup(args) -> int:
    return max(0, int(args.beta_warmup))


FAMILIES: dict[str, Family] = {f.name: f for f in (AutoencoderFamily(), VAEFamily())}
