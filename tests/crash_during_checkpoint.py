"""Runs `autoenc-fast train` and kills the process (os._exit) halfway through writing
the checkpoint of step argv[1]: after its weights file, before the pointer moves.

    python tests/crash_during_checkpoint.py STEP train vae ...
"""
import os
import sys

from autoenc_fast.train import checkpoint

crash_step = int(sys.argv[1])
original_atomic_write = checkpoint.atomic_write


def atomic_write_then_die(path, write):
    if path.name == f"step-{crash_step:08d}.pt":
        write(path.with_name(path.name + ".partial"))  # half a write, never renamed
        os._exit(9)
    original_atomic_write(path, write)


checkpoint.atomic_write = atomic_write_then_die

from autoenc_fast.cli import main  # noqa: E402

sys.exit(main(sys.argv[2:]))
