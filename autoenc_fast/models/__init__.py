"""Autoencoder models assembled around the fused ops, one family per file.

Every model takes ``backend="fused"`` (default; blocks from autoenc_fast.nn) or
``"reference"`` (their plain-PyTorch twins from autoenc_fast.reference), with the
same parameter names, so a state_dict moves between backends with strict=True.
"""
from ._backend import BACKENDS
from .conv_autoencoder import ConvAutoencoder, alexnet_feature_sizes
from .losses import VAELoss, beta_warmup, mse_reconstruction_loss, vae_loss
from .vae import VAE, VAEOutput

__all__ = ["BACKENDS", "VAE", "ConvAutoencoder", "VAELoss", "VAEOutput", "alexnet_feature_sizes",
           "beta_warmup", "mse_reconstruction_loss", "vae_loss"]
