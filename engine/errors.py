"""The one exception type the engine raises for bad input, and the one that ends an answer stopped early.

The CLI (and later the app) turns it into a clear message and exit code 2; anything else that escapes is a
bug and keeps its traceback.
"""


class SubspecError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""


class Stopped(Exception):
    """An answer its caller stopped while the prompt was read (raised by engine.generate.prefill's
    `progress`, e.g. the chat's Stop during a long prefill). Nothing was emitted; the chunks or passes
    already committed stay in a prompt cache, so that the next try resumes there. Not an error."""


def prompt_reading(stop, report=None):
    """An answer's prompt_progress (engine.generate.prefill's `progress`): a long prompt is read in chunks
    or passes, and once `stop` (a threading.Event: the chat's Stop, an API client gone) is set, the next
    step ends the answer there with Stopped; `report(done, total)`, when given, sees each step."""
    def progress(done: int, total: int) -> None:
        if stop is not None and stop.is_set():
            raise Stopped("stopped while the prompt was read")
        if report is not None:
            report(done, total)

    return progress
