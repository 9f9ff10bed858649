"""Tell the person an answer is ready: a terminal bell and an OSC 9 notification (iTerm2, kitty,
WezTerm, Windows Terminal show it; others ring the bell), when the answer took at least
`notify` seconds (config) and stdout is a terminal."""

from __future__ import annotations

from typing import TextIO

MESSAGE = "nex: the answer is ready"


def answer_ready(out: TextIO, seconds: float, after: float | None) -> bool:
    """Notify if `seconds` reached `after` (None or 0: off) on a terminal; whether it did."""
    if not after or seconds < after or not out.isatty():
        return False
    out.write(f"\x1b]9;{MESSAGE}\x07\a")
    out.flush()
    return True
