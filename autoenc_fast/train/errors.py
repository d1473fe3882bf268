"""The errors `autoenc-fast train` reports as one line (no traceback). Importing this
module needs none of the training extras."""


class DataError(ValueError):
    """The data asked for cannot be used; the message says which and why."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or not one of ours."""


class TrainingError(RuntimeError):
    """Training stopped; the message says why and what was kept."""
