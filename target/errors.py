"""The one exception type users see.

Every bad input (unknown preset, mis-shaped tensor, corrupt image, RAM budget too small, ...)
raises McugptError with a one-line message that names the thing and the numbers. The CLI
prints it as `mcugpt: error: ...` and exits 1; anything else escaping is a bug in mcugpt.
"""


class McugptError(Exception):
    pass
