"""One exception type for every user-facing failure: the CLI prints its message as one line."""


class QvlError(Exception):
    """Bad input or a failed stage; the message names what was expected and what was received."""
