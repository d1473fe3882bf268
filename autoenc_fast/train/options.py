"""argparse types for `autoenc-fast train`'s numeric options: a value out of range is
refused by the parser ("argument --batch-size: must be an int >= 1; got 0", exit code 2)
instead of failing later inside training with a traceback."""
from __future__ import annotations

import argparse
import math


def _int(text: str, expected: str) -> int:
    """int(text), or the parser's error saying what was `expected`."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {expected}; got {text!r}") from None


def int_at_least(minimum: int):
    """An argparse type: an int >= minimum."""
    def parse(text: str) -> int:
        value = _int(text, f"an int >= {minimum}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an int >= {minimum}; got {value}")
        return value

    parse.__name__ = f"int >= {minimum}"  # what argparse names in its own messages
    return parse


def int_between(minimum: int, maximum: int, what: str):
    """An argparse type: an int in [minimum, maximum]; `what` says why those bounds."""
    def parse(text: str) -> int:
        value = _int(text, "an int")
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be an int from {minimum} to {maximum} ({what}); got {value}")
        return value

    parse.__name__ = f"int in [{minimum}, {maximum}]"
    return parse


def finite_float(minimum: float, *, inclusive: bool = True):
    """An argparse type: a finite float >= minimum (> minimum when not inclusive)."""
    relation = ">=" if inclusive else ">"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number {relation} {minimum:g}; got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (not inclusive and value == minimum):
            raise argparse.ArgumentTypeError(f"must be a finite number {relation} {minimum:g}; got {text}")
        return value

    parse.__name__ = f"number {relation} {minimum:g}"
    return parse


COUNT = int_at_least(1)  # sizes, widths, batch sizes, epochs
STEPS = int_at_least(0)  # step counts where 0 means "none" or "no limit"
WEIGHT = finite_float(0.0)  # loss weights
RATE = finite_float(0.0, inclusive=False)  # learning rates
# torch.manual_seed takes -2**63 .. 2**64-1; a run seeds with --seed + rank and its data
# order with --seed + epoch, so --seed is a signed 64-bit int: room above it for both.
SEED = int_between(-2**63, 2**63 - 1, "a signed 64-bit seed")
