"""PNG output: image grids and the loss curve."""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import atomic_write


def _rgb(images: torch.Tensor) -> torch.Tensor:
    images = images.detach().float().cpu().clamp(0, 1)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def grid(groups: list[torch.Tensor], per_row: int = 8, pad: int = 2) -> torch.Tensor:
    """Groups of images (N, C, H, W) in [0, 1] -> one (3, H', W') image: each group starts a
    row of its own (inputs, outputs and samples never share a row, whatever the batch),
    `per_row` images a row at most."""
    groups = [_rgb(g) for g in groups if len(g)]
    h, w = groups[0].shape[-2:]
    columns = min(per_row, max(g.shape[0] for g in groups))
    rows = [g[i:i + per_row] for g in groups for i in range(0, g.shape[0], per_row)]
    canvas = torch.ones(3, len(rows) * (h + pad) + pad, columns * (w + pad) + pad)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            top, left = pad + r * (h + pad), pad + c * (w + pad)
            canvas[:, top:top + h, left:left + w] = image
    return canvas


def save_png(image: torch.Tensor, path: Path, scale: int = 1) -> None:
    """(3, H, W) in [0, 1] -> PNG, enlarged `scale` times (nearest) for small images."""
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.fromarray(array)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    atomic_write(path, lambda p: picture.save(p, format="PNG"))


def save_loss_curve(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = [h["step"] for h in history]
    for key in sorted({k for h in history for k in h} - {"step", "epoch"}):
        values = [h.get(key) for h in history]
        ax.plot(steps, values, label=key, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
