"""Triton kernels, one file per op. Imported lazily: only CUDA paths need Triton."""
