"""The status of the request in flight: processing the prompt, then the answer's rate."""

from __future__ import annotations

import io
import time

from nexpy.progress import Progress, Ticker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_says_the_prompt_is_processed_then_how_fast_the_answer_comes() -> None:
    clock = Clock()
    progress = Progress(clock)
    assert progress.line() is None  # idle
    progress.start()
    clock.now += 12
    assert progress.line() == "processing prompt… 12 s"
    progress.text("x" * 40)  # the first token after 12 s of prefill
    clock.now += 2
    progress.text("y" * 160)
    assert progress.line() == "answering · 25 tok/s"  # 200 chars ≈ 50 tokens in 2 s
    progress.stop()
    assert progress.line() is None


def test_the_ticker_rewrites_one_line_and_clears_it() -> None:
    progress = Progress()
    out = io.StringIO()
    ticker = Ticker(progress, out)
    ticker.start()
    progress.start()
    time.sleep(1.3)  # one tick
    ticker.close()
    written = out.getvalue()
    assert written.startswith("\r\x1b[Kprocessing prompt… 1 s")
    assert written.endswith("\r\x1b[K") and "\n" not in written
