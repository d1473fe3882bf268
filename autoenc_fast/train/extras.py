"""The `[train]` extra's packages (pyproject.toml), checked before a run starts: a missing
one used to surface as a traceback partway through (tqdm at the start, safetensors at the
first checkpoint, matplotlib after the first epoch, whose checkpoint then blocked a plain
rerun). Importing this module needs none of them."""
from __future__ import annotations

import importlib

# pip name -> the module it installs
MODULES = {"safetensors": "safetensors", "tqdm": "tqdm", "pillow": "PIL", "matplotlib": "matplotlib",
           "scikit-learn": "sklearn", "scikit-image": "skimage"}
# The README's install command, with the extra.
INSTALL = 'pip install --no-build-isolation -e ".[train]"'


def missing(packages) -> list[str]:
    """The packages (pip names) of `packages` that cannot be imported, in order."""
    absent = []
    for name in packages:
        try:
            importlib.import_module(MODULES[name])
        except ImportError:
            absent.append(name)
    return absent


def missing_message(absent: list[str], needed_by: str) -> str:
    """One line: what is missing, for what, and the commands that install it."""
    return (f"{needed_by} needs packages that are not installed: {', '.join(absent)}. Install the training "
            f"extras with `{INSTALL}` in the autoenc_fast source folder (or `pip install {' '.join(absent)}`)")
