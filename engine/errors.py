"""The one exception type the engine raises for bad input.

The CLI (and later the app) turns it into a clear message and exit code 2; anything else that escapes is a
bug and keeps its traceback.
"""


class SubspecError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""


class Stopped(Exception):
    """An answer its caller stopped while the prompt was read (raised by engine.generate.prefill's
    `progress`, e.g. the chat's Stop during a long prefill). Nothing was emitted; the chunks or passes
    already committed stay in a prompt cache, so that the next try resumes there. Not an error."""
