"""Errors whose message is the whole story: what happened, to which file or folder, and what
to do. The entry points print such a message as it is, without a traceback (a traceback
would bury it); any other exception is a bug and gets its traceback."""


class Explained(Exception):
    """Mixed into an error class whose messages say what to do (``DatasetError``,
    ``NonFiniteError``, ``CheckpointWriteError``, ``ResumeError``, ...)."""


__all__ = ["Explained"]
