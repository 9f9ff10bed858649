"""What the server is doing with the request in flight, as one short status.

A long prefill (a big prompt on local hardware) or a slow model must never look like a hang:
until the first token the status says the prompt is being processed and for how long, then how
fast the answer comes. The REPL shows it in its status line; an autonomous run on a terminal
rewrites one stderr line with it at most once a second (`Ticker`).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

CHARS_PER_TOKEN = 4  # for a rate, not a budget: the stream's text, not the server's tokens
TICK = 1.0  # seconds between two autonomous status lines


class Progress:
    """The state of one request at a time: started, first text, how much text since."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started: float | None = None
        self.first: float | None = None
        self.chars = 0

    def start(self) -> None:
        """A request went out."""
        self.started, self.first, self.chars = self.clock(), None, 0

    def text(self, piece: str) -> None:
        """A piece of the answer arrived."""
        if self.started is None:
            self.start()
        if self.first is None:
            self.first = self.clock()
        self.chars += len(piece)

    def stop(self) -> None:
        """The request is over (answered, failed or cancelled)."""
        self.started = None

    def line(self) -> str | None:
        """`processing prompt… 4 s`, then `answering · 23 tok/s`; None when idle."""
        if self.started is None:
            return None
        now = self.clock()
        if self.first is None:
            return f"processing prompt… {now - self.started:.0f} s"
        elapsed = now - self.first
        if elapsed < 0.5 or not self.chars:
            return "answering…"
        return f"answering · {self.chars / CHARS_PER_TOKEN / elapsed:.0f} tok/s"


class Ticker:
    """Rewrites one line of a terminal with `progress.line()` once a second while it has one.

    `clear()` takes the line away before anything else is written there, so other progress
    lines never run into it."""

    def __init__(self, progress: Progress, stream: TextIO | None = None) -> None:
        self.progress = progress
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()
        self._shown = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nex-progress", daemon=True)

    def start(self) -> Ticker:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            if self._shown:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._shown = False

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            line = self.progress.line()
            with self._lock:
                if line is not None:
                    self.stream.write(f"\r\x1b[K{line}")
                    self.stream.flush()
                    self._shown = True
                elif self._shown:
                    self.stream.write("\r\x1b[K")
                    self.stream.flush()
                    self._shown = False
