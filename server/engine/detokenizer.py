"""Generated tokens → the text a client may see, one step at a time.

Two rules make streamed text final once sent:
- bytes of a UTF-8 character split across tokens are held until the character is whole;
- text that could be the beginning of a stop string is held until it is known not to be.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence


class StopStringFilter:
    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._pending = ""
        self.matched: str | None = None  # the stop string that ended the text, once one has

    def push(self, text: str) -> tuple[str, bool]:
        """Feed new text; returns (text safe to emit, whether a stop string was hit).

        On a hit the emitted text ends right before the stop string, which is never sent.
        """
        if not self.stops:
            return text, False
        pending = self._pending + text
        found = [(i, stop) for stop in self.stops if (i := pending.find(stop)) >= 0]
        if found:
            hit, self.matched = min(found, key=lambda f: f[0])
            self._pending = ""
            return pending[:hit], True
        hold = self._longest_stop_prefix_suffix(pending)
        self._pending = pending[len(pending) - hold :] if hold else ""
        return pending[: len(pending) - hold], False

    def flush(self) -> str:
        """Generation ended without a stop string: what was held back is plain text."""
        text, self._pending = self._pending, ""
        return text

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best


class IncrementalDetokenizer:
    def __init__(self, token_bytes: Callable[[int], bytes], stops: Sequence[str]) -> None:
        self._token_bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopStringFilter(stops)
        self.text = ""  # everything emitted so far

    @property
    def matched_stop(self) -> str | None:
        return self._stops.matched

    def push(self, token: int) -> tuple[str, bool]:
        """Returns (new visible text, stop string hit)."""
        piece = self._utf8.decode(self._token_bytes(token))
        delta, stopped = self._stops.push(piece) if piece else ("", False)
        self.text += delta
        return delta, stopped

    def finish(self) -> str:
        """Flush held bytes and text at the end of generation (not after a stop hit)."""
        tail = self._utf8.decode(b"", final=True)
        delta, stopped = self._stops.push(tail) if tail else ("", False)
        if not stopped:
            delta += self._stops.flush()
        self.text += delta
        return delta
