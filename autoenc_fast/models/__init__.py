"""Autoencoder models assembled around the fused ops, one family per file.

Every model takes ``backend="fused"`` (default; blocks from autoenc_fast.nn) or
``"reference"`` (their plain-PyTorch twins from autoenc_fast.reference), with the
same parameter names, so a state_dict moves between backends with strict=True.
"""
from ._backend import BACKENDS
from .context_encoder import (CONTEXT_LAMBDA_ADV, CONTEXT_LAMBDA_REC, ContextDiscriminator, ContextEncoder,
                              apply_mask, center_mask, context_discriminator_loss, context_generator_loss,
                              masked_reconstruction_loss, overlap_weights, random_block_mask)
from .conv_autoencoder import ConvAutoencoder, alexnet_feature_sizes
from .gaugan import (ConvEncoder, MultiscaleDiscriminator, SPADEGenerator, SPADEResnetBlock,
                     feature_matching_loss, gaugan_kl_loss, hinge_discriminator_loss, hinge_generator_loss)
from .losses import VAELoss, beta_warmup, mse_reconstruction_loss, vae_loss
from .vae import VAE, VAEOutput

__all__ = ["BACKENDS", "CONTEXT_LAMBDA_ADV", "CONTEXT_LAMBDA_REC", "VAE", "ContextDiscriminator",
           "ContextEncoder", "ConvAutoencoder", "ConvEncoder", "MultiscaleDiscriminator", "SPADEGenerator",
           "SPADEResnetBlock", "VAELoss", "VAEOutput", "alexnet_feature_sizes", "apply_mask", "beta_warmup",
           "center_mask", "context_discriminator_loss", "context_generator_loss", "feature_matching_loss",
           "gaugan_kl_loss", "hinge_discriminator_loss", "hinge_generator_loss", "masked_reconstruction_loss",
           "mse_reconstruction_loss", "overlap_weights", "random_block_mask", "vae_loss"]
