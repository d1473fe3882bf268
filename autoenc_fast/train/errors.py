"""The errors `autoenc-fast train` reports as one line (no traceback). Importing this
module needs none of the training extras."""


class OptionError(ValueError):
    """The options describe a model its constructor refuses (e.g. an --image-size the
    encoder's strides cannot halve); the message is the constructor's, naming its argument."""


class DataError(ValueError):
    """The data asked for cannot be used; the message says which and why."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or not one of ours."""


class TrainingError(RuntimeError):
    """Training stopped; the message says why and what was kept."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped training; the message says what was saved and how to resume (empty on
    the torchrun ranks other than 0, which write no files). A KeyboardInterrupt, so that no
    `except Exception` between the signal and the command line can swallow it."""
