"""Incremental detokenization with stop strings.

Text is emitted as soon as it is final: not while the last bytes are an incomplete UTF-8 character, and
not while the tail could still grow into a stop string. A stop string ends the answer and is cut off.
"""

from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stop_strings: tuple[str, ...] | list[str] = ()):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already handed out
        self.stopped = False

    def push(self, token_ids) -> tuple[int, str]:
        """Add tokens; returns (how many of them to keep, new final text). After a stop string is seen,
        `stopped` is True and the tokens after the one that completed it are dropped."""
        before = len(self.ids)
        self.ids.extend(int(t) for t in token_ids)
        kept = len(self.ids) - before
        text = self._decode()  # once per push: a whole decode costs more the longer the answer is
        if self.stop_strings and self._find_stop(text) is not None:
            # A stop string is in the new tokens (once per answer): keep only up to the token completing it.
            extra, self.ids = self.ids[before:], self.ids[:before]
            for kept, tid in enumerate(extra, 1):
                self.ids.append(tid)
                text = self._decode()
                if self._find_stop(text) is not None:
                    break
            self.stopped = True
        if self.stopped:
            cut = self._find_stop(text)
            return kept, self._take(text[:cut])
        safe = len(text)
        if text.endswith("\ufffd"):
            safe = len(text.rstrip("\ufffd"))
        safe = min(safe, len(text) - self._held_suffix(text))
        return kept, self._take(text[:safe])

    def flush(self) -> str:
        """Whatever was held back, at the end of generation."""
        if self.stopped:
            return ""
        return self._take(self._decode())

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def _take(self, upto: str) -> str:
        new = upto[self.emitted:]
        self.emitted = max(self.emitted, len(upto))
        return new

    def _find_stop(self, text: str) -> int | None:
        # Only text not yet emitted can hold a new stop string (emitted text was checked already),
        # but a stop string may begin inside held-back text.
        hits = [i for s in self.stop_strings if (i := text.find(s, max(0, self.emitted - len(s) + 1))) >= 0]
        return min(hits) if hits else None

    def _held_suffix(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stop_strings:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
