"""The one exception type the engine raises for bad input.

The CLI (and later the app) turns it into a clear message and exit code 2; anything else that escapes is a
bug and keeps its traceback.
"""


class SubspecError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""
