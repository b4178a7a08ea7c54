"""The one exception type users see: a bad file, a bad field, a mismatch."""

import os
import re


class UniError(Exception):
    """A user-facing error; its message is one line naming the file and field at fault.

    The CLI prints it on stderr and exits with code 2; anything else is a bug.
    """


def io_reason(e: BaseException, limit: int = 200) -> str:
    """One short line for an I/O error (HDF5's and torch's own messages span several lines)."""
    m = re.search(r"error message = '([^']*)'", str(e))
    if m:
        return m.group(1)
    if isinstance(e, OSError) and e.errno:
        return os.strerror(e.errno)
    return " ".join(str(e).split())[:limit]
