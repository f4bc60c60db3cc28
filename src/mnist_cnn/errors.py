"""Errors that the command line turns into one clear line instead of a traceback."""


class UserError(Exception):
    """Something the user can fix: bad input, a missing file, a wrong flag.

    The message must say what is wrong and what to do about it.
    """


class DataError(UserError, ValueError):
    """A data source is missing, corrupt, or has the wrong shape, dtype or labels."""


class RunFolderError(UserError):
    """A run folder does not exist, is not a run, or cannot be written."""
