"""Every error a user can cause, in one hierarchy the command line turns into one clear line.

The CLI catches ``UserError`` only: it prints the message and exits 2. Anything else is a
bug in mnist-cnn and keeps its traceback. Each message says what is wrong and what to do.
"""


class UserError(Exception):
    """Something the user can fix: bad input, a missing file, a wrong flag."""


class ConfigError(UserError, ValueError):
    """A setting is out of range, unknown, or does not fit the Keras backend in use."""


class DataError(UserError, ValueError):
    """A data source is missing, corrupt, or has the wrong shape, dtype or labels."""


class RunFolderError(UserError):
    """A run folder does not exist, is not a run, is damaged, or cannot be written."""


class CheckpointError(RunFolderError):
    """A checkpoint file is unreadable, truncated, or does not fit the model."""


class ImageInputError(UserError, ValueError):
    """An input that is not a usable digit image: not an image, empty, blank, too large."""


class TrialLostError(UserError):
    """A sweep's trial died with its process or node (killed, out of memory, a machine gone):
    nothing is wrong with the settings, and the sweep resumes from the trial's last epoch."""


class RayStartError(UserError):
    """Ray could not start its local node (a machine too busy for Ray's start-up deadline, a
    process that could not start): nothing is wrong with the settings, and trying again may do."""


class ExportError(UserError):
    """A model cannot be exported, or its export does not answer as the Keras model does."""
