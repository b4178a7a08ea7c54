"""The one exception type users see: a bad file, a bad field, a mismatch."""


class UniError(Exception):
    """A user-facing error; its message is one line naming the file and field at fault.

    The CLI prints it on stderr and exits with code 2; anything else is a bug.
    """
