"""Runs `autoenc-fast train FAMILY` and sends this process a SIGINT (Ctrl-C) during its
training step argv[1] + RANK (0-based): under torchrun each rank gets its own, a step apart.

    python tests/ctrl_c_at_step.py STEP train FAMILY ...
"""
import os
import signal
import sys

from autoenc_fast.train.families import FAMILIES

at = int(sys.argv[1]) + int(os.environ.get("RANK", "0"))
family = FAMILIES[sys.argv[3]]
real_step = family.step


def step_with_ctrl_c(ctx, batch):
    if ctx.step == at:
        signal.raise_signal(signal.SIGINT)
    return real_step(ctx, batch)


family.step = step_with_ctrl_c

from autoenc_fast.cli import main  # noqa: E402

sys.exit(main(sys.argv[2:]))
