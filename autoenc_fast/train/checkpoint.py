"""Atomic checkpoints that can never run code when loaded.

A checkpoint is a pair of files, ``step-XXXXXXXX.safetensors`` (every module's
weights and buffers, keyed ``<module>.<name>``) and ``step-XXXXXXXX.pt`` (optimizer
states, counters, RNG states and loss history: tensors and plain Python values only,
read back with ``torch.load(weights_only=True)``). Each file is written to a temporary
name, flushed to disk and renamed into place; then ``latest.json`` — the pointer a
resume reads — is replaced the same way. A run killed at any moment therefore leaves
``latest.json`` naming a complete, earlier pair.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .errors import CheckpointError

POINTER = "latest.json"
KEEP = 2  # checkpoints kept on disk; older ones are removed once the pointer moved on


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    """write(tmp_path) then rename over `path`, with the data on disk before the rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def save_checkpoint(directory: Path, step: int, modules: dict, state: dict) -> Path:
    """Write checkpoint `step` of `modules` ({name: nn.Module}) and `state`, then point to it."""
    from safetensors.torch import save

    directory.mkdir(parents=True, exist_ok=True)
    stem = f"step-{step:08d}"
    tensors = {f"{name}.{key}": value.detach().cpu().clone()
               for name, module in modules.items() for key, value in module.state_dict().items()}
    # Serialized here and written by Python: safetensors' own save_file writes through a
    # private temporary file (mode 0600), where every other file of the run follows the umask.
    atomic_write(directory / f"{stem}.safetensors", lambda p: p.write_bytes(save(tensors)))
    atomic_write(directory / f"{stem}.pt", lambda p: torch.save({"format": "autoenc_fast-1", **state}, p))
    pointer = {"step": step, "weights": f"{stem}.safetensors", "state": f"{stem}.pt"}
    atomic_write(directory / POINTER, lambda p: p.write_text(json.dumps(pointer)))
    _remove_old(directory, keep={stem})
    return directory / f"{stem}.safetensors"


def _remove_old(directory: Path, keep: set) -> None:
    stems = sorted({p.name.split(".")[0] for p in directory.glob("step-*.*")})
    for stem in stems[:-KEEP]:
        if stem not in keep:
            for suffix in (".safetensors", ".pt"):
                (directory / f"{stem}{suffix}").unlink(missing_ok=True)


def latest_step(directory: Path) -> int | None:
    try:
        return int(json.loads((directory / POINTER).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_state(directory: Path) -> tuple[dict, Path]:
    """The latest checkpoint's training state, and the path of its weights."""
    pointer_path = directory / POINTER
    try:
        pointer = json.loads(pointer_path.read_text())
        weights_path, state_path = directory / pointer["weights"], directory / pointer["state"]
    except OSError:
        raise CheckpointError(f"no checkpoint to resume from in {directory} ({POINTER} is missing)") from None
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{pointer_path} is not an autoenc_fast checkpoint pointer") from None
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 -- torch's message suggests weights_only=False: never shown
        raise CheckpointError(f"{state_path} is not a readable checkpoint: it is corrupt or truncated, or holds "
                              "more than tensors and plain values (never loaded: that could run code)") from None
    if not isinstance(state, dict) or state.get("format") != "autoenc_fast-1":
        raise CheckpointError(f"{state_path} is not an autoenc_fast training state")
    return state, weights_path


def load_weights(weights_path: Path, modules: dict) -> None:
    """Load a checkpoint's weights into `modules` ({name: nn.Module}), strictly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(weights_path))
    except (OSError, SafetensorError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"cannot read the weights {weights_path}: {reason}") from None
    for name, module in modules.items():
        prefix = f"{name}."
        own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(own, strict=True)
        except RuntimeError as error:
            first_line = str(error).splitlines()[0]
            raise CheckpointError(f"{weights_path} does not fit this model ({name}): {first_line}") from None
