"""Training data: embedded defaults that need no download, and image folders.

Images come out as float tensors in [0, 1], (C, S, S). Folders are decoded once, up
front, into a uint8 cache at the training size: an unreadable, truncated or oversized
file is found before training starts, skipped and counted (a folder with no usable
image is an error).
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from . import extras
from .errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# Above this many pixels a file is refused as a decompression bomb (PIL warns at 89M).
MAX_IMAGE_PIXELS = 64 * 1024 * 1024


def _resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) float -> (N, C, size, size), bilinear with antialiasing."""
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


class TensorImages(Dataset):
    """A uint8 image cache (N, C, S, S) served as float [0, 1]; `extra` holds aligned tensors."""

    def __init__(self, images: torch.Tensor, skipped: int = 0, **extra: torch.Tensor):
        self.images = images
        self.extra = extra
        self.skipped = skipped

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        image = self.images[index].float() / 255
        if not self.extra:
            return image
        return (image, *(t[index] for t in self.extra.values()))


# ---------------------------------------------------------------- embedded defaults


def digits(size: int) -> TensorImages:
    """scikit-learn's bundled 8x8 handwritten digits (1,797, 16 grey levels), upsampled."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(extras.missing_message(["scikit-learn"], "the default data of ae/vae")) from None
    pixels = torch.from_numpy(load_digits().images).float().unsqueeze(1) / 16.0
    return TensorImages(_to_uint8(_resize_square(pixels, size)))


def photo_crops(size: int, count: int = 2048, seed: int = 0) -> TensorImages:
    """Random square crops (then resized to `size`) of scikit-image's bundled photographs."""
    try:
        from skimage import data as skdata
    except ImportError:
        raise DataError(extras.missing_message(["scikit-image"], "the default data of context-encoder")) from None
    photos = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "motorcycle_left",
                 "colorwheel", "hubble_deep_field", "retina", "cat"):
        loader = getattr(skdata, name, None)
        if loader is None:
            continue
        try:
            array = loader()
        except Exception:  # some images need an optional download (pooch); skip those
            continue
        if isinstance(array, tuple):
            array = array[0]
        if array.ndim == 3 and array.shape[2] >= 3 and min(array.shape[:2]) >= size:
            photos.append(torch.from_numpy(array[..., :3].copy()).permute(2, 0, 1).float() / 255)
    if not photos:
        raise DataError("no bundled scikit-image photograph could be loaded")
    gen = torch.Generator().manual_seed(seed)
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        _, h, w = photo.shape
        side = int(torch.randint(size, min(h, w) + 1, (), generator=gen))
        top = int(torch.randint(0, h - side + 1, (), generator=gen))
        left = int(torch.randint(0, w - side + 1, (), generator=gen))
        crop = photo[:, top:top + side, left:left + side].unsqueeze(0)
        if torch.rand((), generator=gen) < 0.5:
            crop = crop.flip(-1)
        crops.append(_to_uint8(_resize_square(crop, size)))
    return TensorImages(torch.cat(crops))


# Classes of the procedural scenes and their base colours (RGB in [0, 1]).
SCENE_CLASSES = {"sky": (0.45, 0.65, 0.95), "ground": (0.35, 0.6, 0.25), "water": (0.15, 0.35, 0.7),
                 "rock": (0.5, 0.47, 0.44), "tree": (0.1, 0.4, 0.15), "sun": (1.0, 0.85, 0.3)}


def procedural_scenes(size: int, count: int = 512, seed: int = 0) -> TensorImages:
    """Label map -> image pairs drawn procedurally: a sky/ground horizon, water, rocks,
    trees and a sun, each class with its colour, shading and texture noise."""
    gen = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, size).view(size, 1).expand(size, size)
    xs = torch.linspace(0, 1, size).view(1, size).expand(size, size)
    colors = torch.tensor(list(SCENE_CLASSES.values()))  # (K, 3)
    images, labels = [], []
    for _ in range(count):
        r = lambda *shape: torch.rand(shape, generator=gen)  # noqa: E731
        horizon = 0.35 + 0.3 * r(1) + 0.05 * torch.sin(xs * (4 + 8 * r(1)) * math.pi + 6 * r(1))
        label = torch.where(ys < horizon, 0, 1)  # sky above, ground below
        if r(1) < 0.6:  # a lake below the horizon
            cx, cy, rx, ry = r(1), horizon.mean() + 0.2 + 0.2 * r(1), 0.15 + 0.25 * r(1), 0.05 + 0.1 * r(1)
            label = torch.where(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 < 1, 2, label)
        for _ in range(int(r(1) * 4)):  # rocks on the ground
            cx, cy, rad = r(1), horizon.mean() + 0.1 + 0.5 * r(1), 0.03 + 0.07 * r(1)
            label = torch.where(((xs - cx) ** 2 + (ys - cy) ** 2 < rad**2) & (label == 1), 3, label)
        for _ in range(int(r(1) * 5)):  # trees: a trunkless crown standing on the horizon
            cx, rad = r(1), 0.04 + 0.06 * r(1)
            cy = horizon.mean() - rad * 0.8
            label = torch.where((xs - cx) ** 2 + (ys - cy) ** 2 < rad**2, 4, label)
        if r(1) < 0.5:
            cx, cy, rad = r(1), 0.05 + 0.2 * r(1), 0.04 + 0.04 * r(1)
            label = torch.where(((xs - cx) ** 2 + (ys - cy) ** 2 < rad**2) & (label == 0), 5, label)
        image = colors[label].permute(2, 0, 1)  # (3, S, S)
        shade = 0.85 + 0.3 * ys.unsqueeze(0) * (label != 0).unsqueeze(0) + 0.1 * r(1, size, size)
        images.append(_to_uint8((image * shade).clamp(0, 1)).unsqueeze(0))
        labels.append(label.to(torch.uint8).unsqueeze(0))
    return TensorImages(torch.cat(images), labels=torch.cat(labels))


# ---------------------------------------------------------------- folders


def _image_files(folder: Path) -> list[Path]:
    """The image files in `folder` and, at any depth, its subfolders (torchvision's ImageFolder
    layout, folder/class/*.png, included), sorted folder by folder as ImageFolder does; hidden
    files and folders (.name: .git, macOS's ._name resource forks) skipped."""
    if not folder.exists():
        raise DataError(f"--data: {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"--data: {folder} is not a folder")
    files = [path for path in _visible_files(folder) if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()]
    if not files:
        raise DataError(f"--data: {folder} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                        "neither in it nor in its subfolders")
    return sorted(files, key=lambda p: p.relative_to(folder).parts)


def _visible_files(folder: Path):
    """Every file under `folder` whose path in it has no hidden (.name) part. Symbolic links
    to folders are followed (data sets are often linked in), each folder read once: a link
    back up the tree would otherwise repeat its images."""
    seen = set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        inode = os.stat(root)
        if (inode.st_dev, inode.st_ino) in seen:
            dirs.clear()
            continue
        seen.add((inode.st_dev, inode.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # sorted: the same link wins every time
        yield from (Path(root, name) for name in names if not name.startswith("."))


def _decode(path: Path, mode: str | None):
    """PIL image in `mode` (None: as stored), or None when the file is unreadable, truncated
    or too large."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()  # decodes now: truncated data raises here
                return _to_8_bits(image).convert(mode) if mode else image.copy()
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning, SyntaxError):
        return None


# Grey images wider than 8 bits: 16-bit ("I;16*") and the 32-bit integers ("I") that PIL
# opens 16-bit PGM, TIFF and, before Pillow 10, PNG files as.
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _to_8_bits(image):
    """A 16-bit grey image scaled to 8 bits (v / 257, rounded): PIL's convert("L") and
    convert("RGB") clip its values at 255 instead, which turns nearly every pixel white."""
    if image.mode not in WIDE_GREY_MODES:
        return image
    import numpy as np
    from PIL import Image

    values = np.asarray(image).astype(np.float64)
    return Image.fromarray(np.clip(np.rint(values / 257), 0, 255).astype(np.uint8))  # 2-D uint8: "L"


def _pil_to_tensor(image) -> torch.Tensor:
    import numpy as np

    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def image_folder(folder: Path, size: int, channels: int | None, log=print) -> TensorImages:
    """Every readable image of `folder` and its subfolders, resized, with `channels` (1: greyscale, 3: RGB);
    None: 3 if any image has colour (a pixel whose R, G and B differ), else 1."""
    mode = "L" if channels == 1 else "RGB"
    images, skipped = [], []
    for path in _image_files(folder):
        image = _decode(path, mode)
        if image is None:
            skipped.append(str(path.relative_to(folder)))
            continue
        pixels = _pil_to_tensor(image).float().unsqueeze(0) / 255
        images.append(_to_uint8(_resize_square(pixels, size)))
    if skipped:
        log(f"skipped {len(skipped)} unreadable, truncated or oversized image(s) in {folder}: "
            f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}")
    if not images:
        raise DataError(f"--data: none of the {len(skipped)} image file(s) in {folder} (subfolders included) "
                        "could be read")
    cache = torch.cat(images)
    if channels is None and not has_colour(cache):
        cache = cache[:, :1].contiguous()  # grey R = G = B: PIL's "L" of them is that same value
    return TensorImages(cache, skipped=len(skipped))


def has_colour(images: torch.Tensor) -> bool:
    """Whether any pixel of the RGB images (N, 3, H, W) has R, G and B not all equal."""
    return bool((images[:, 0] != images[:, 1]).any() or (images[:, 1] != images[:, 2]).any())


# Modes whose pixels are class ids as stored: 1-bit, 8-bit grey (L), palette indices (P;
# converting P to L would map each id through its colour to a brightness) and 16/32-bit
# integers (I;16 PNGs, I TIFFs). Colour modes (RGB, RGBA, ...) hold colours, not ids.
LABEL_MODES = {"1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N"}


def _label_ids(path: Path):
    """Class ids (H, W) int64 as stored in the label map, or None when it is unreadable; a
    label map in a colour mode, or with negative values, is refused naming the file."""
    import numpy as np

    label = _decode(path, None)
    if label is None:
        return None
    if label.mode not in LABEL_MODES:
        raise DataError(f"--data: the label map {path} has the PIL mode {label.mode}; label maps hold one class id "
                        "per pixel: a greyscale (L), palette (P: the ids are the palette indices) or 16-bit "
                        "greyscale (I;16) PNG, not colour-coded classes")
    ids = torch.from_numpy(np.asarray(label).astype(np.int64))
    if ids.numel() and int(ids.min()) < 0:
        raise DataError(f"--data: the label map {path} holds negative values ({int(ids.min())}); "
                        "class ids are 0 or more")
    return ids


def _by_name(folder: Path) -> dict:
    """folder's image files by their path in it less the suffix ("city/1"), which pairs them."""
    return {path.relative_to(folder).with_suffix("").as_posix(): path for path in _image_files(folder)}


def paired_folder(folder: Path, size: int, log=print) -> TensorImages:
    """GauGAN pairs: folder/images/NAME.* (RGB) and folder/labels/NAME.png (class ids); NAME
    may sit in subfolders, the same in both (images/city/1.jpg pairs with labels/city/1.png)."""
    image_files, label_files = (_by_name(folder / kind) for kind in ("images", "labels"))
    unmatched = sorted(set(image_files) ^ set(label_files))
    if unmatched:
        log(f"skipped {len(unmatched)} image(s) without a label map or label map(s) without an image: "
            f"{', '.join(unmatched[:5])}{' ...' if len(unmatched) > 5 else ''}")
    images, labels, skipped = [], [], len(unmatched)
    for stem in sorted(set(image_files) & set(label_files)):
        image, ids = _decode(image_files[stem], "RGB"), _label_ids(label_files[stem])
        if image is None or ids is None or (image.height, image.width) != tuple(ids.shape):
            skipped += 1
            log(f"skipped {stem}: unreadable, or image and label map differ in size")
            continue
        pixels = _pil_to_tensor(image).float().unsqueeze(0) / 255
        images.append(_to_uint8(_resize_square(pixels, size)))
        # float64 holds every id exactly (float32 would round ids above 2**24)
        resized = F.interpolate(ids.double()[None, None], size=(size, size), mode="nearest")
        labels.append(resized[:, 0].long())
    if not images:
        raise DataError(f"--data: no usable image/label-map pair in {folder}/images and {folder}/labels")
    ids = torch.cat(labels)
    # uint8 where the ids fit (the cache's memory), else int32 (16-bit label maps)
    return TensorImages(torch.cat(images), skipped=skipped,
                        labels=ids.to(torch.uint8 if int(ids.max()) <= 255 else torch.int32))
