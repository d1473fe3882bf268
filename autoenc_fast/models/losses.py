"""Loss helpers of the autoencoder models, every reduction stated explicitly."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .._args import choice

__all__ = ["VAELoss", "beta_warmup", "mse_reconstruction_loss", "vae_loss"]

MSE_REDUCTIONS = ("mean", "sum_mean")
VAE_REDUCTIONS = ("sum_mean", "gaugan", "mean")
RECON_LOSSES = ("mse", "bce")
GAUGAN_KL_WEIGHT = 0.05  # lambda_kld of GauGAN's training options


def _check_same_shape(recon: torch.Tensor, target: torch.Tensor, owner: str) -> None:
    if recon.shape != target.shape:
        raise ValueError(f"{owner}: the reconstruction {tuple(recon.shape)} and `x` "
                         f"{tuple(target.shape)} must have one shape")


def _reduce(per_element: torch.Tensor, reduction: str) -> torch.Tensor:
    """"mean": over every element; "sum_mean": summed per sample (dim 0), then the batch mean."""
    if reduction == "sum_mean":
        return per_element.flatten(1).sum(dim=1).mean()
    return per_element.mean()


def mse_reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Squared error between a reconstruction and its input, both (B, ...), as a scalar.

    reduction: "mean" (default, as F.mse_loss): the mean over all B * C * H * W
        elements; "sum_mean": the squared errors summed per sample, then the batch mean.
    """
    choice(reduction, MSE_REDUCTIONS, "reduction", "mse_reconstruction_loss")
    _check_same_shape(recon, x, "mse_reconstruction_loss")
    return _reduce((recon - x).pow(2), reduction)


class VAELoss(NamedTuple):
    """loss = recon + beta * kl, all scalars; recon and kl are the reduced terms
    (kl after GauGAN's 0.05 weight for reduction="gaugan", before beta)."""
    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


def _reconstruction_terms(out, x: torch.Tensor, recon: str) -> torch.Tensor:
    """Per-element negative log-likelihood up to constants: squared error of out.recon,
    or binary cross-entropy of out.logits (stable; x in [0, 1])."""
    if recon == "mse":
        _check_same_shape(out.recon, x, "vae_loss")
        return (out.recon - x).pow(2)
    _check_same_shape(out.logits, x, "vae_loss")
    return F.binary_cross_entropy_with_logits(out.logits, x, reduction="none")


def _kl_term(out, reduction: str) -> torch.Tensor:
    """out.kl holds one KL per sample, already summed over the latent dims."""
    if reduction == "sum_mean":
        return out.kl.mean()
    if reduction == "gaugan":
        return GAUGAN_KL_WEIGHT * out.kl.sum()
    return out.kl.sum() / out.mu.numel()


def vae_loss(out, x: torch.Tensor, *, recon: str = "mse", reduction: str = "sum_mean",
             beta: float = 1.0) -> VAELoss:
    """The VAE's negative ELBO (up to constants) with the reduction stated.

    Args:
        out: VAE.forward's output (reads recon or logits, mu and kl (B,)).
        x: the input batch (B, C, H, W), the reconstruction target.
        recon: "mse" (squared error of out.recon) or "bce" (binary cross-entropy of
            out.logits against x in [0, 1]; a Bernoulli likelihood).
        reduction:
            "sum_mean" (default): the reconstruction error summed over C, H, W per
                sample and the KL summed over the latent dims per sample, both then
                averaged over the batch: the ELBO per sample, as in Kingma & Welling.
            "gaugan": the reconstruction error averaged over every element, and the
                KL summed over batch and latent dims times 0.05, as GauGAN's KLDLoss
                with lambda_kld = 0.05.
            "mean": both averaged over every element: the reconstruction over
                B * C * H * W, the KL over B * latent_dim.
        beta: the KL weight (beta-VAE); see beta_warmup for a schedule.

    Returns:
        VAELoss(loss, recon, kl): loss = recon + beta * kl, scalars.
    """
    choice(recon, RECON_LOSSES, "recon", "vae_loss")
    choice(reduction, VAE_REDUCTIONS, "reduction", "vae_loss")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta < 0:
        raise ValueError(f"vae_loss: `beta` must be a number >= 0; got {beta!r}")
    terms = _reconstruction_terms(out, x, recon)
    recon_term = _reduce(terms, "sum_mean" if reduction == "sum_mean" else "mean")
    kl_term = _kl_term(out, reduction)
    return VAELoss(recon_term + beta * kl_term, recon_term, kl_term)


def beta_warmup(step: int, warmup_steps: int, beta: float = 1.0) -> float:
    """KL weight rising linearly from 0 at step 0 to `beta` at `warmup_steps`, then
    constant (KL annealing against posterior collapse). warmup_steps=0: `beta` at once."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"beta_warmup: `step` must be an int >= 0; got {step!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"beta_warmup: `warmup_steps` must be an int >= 0; got {warmup_steps!r}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta < 0:
        raise ValueError(f"beta_warmup: `beta` must be a number >= 0; got {beta!r}")
    if warmup_steps == 0:
        return float(beta)
    return float(beta) * min(step / warmup_steps, 1.0)
