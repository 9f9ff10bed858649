"""The answer-ready notification (nexpy.notify): only on a terminal, only after `notify` s."""

from __future__ import annotations

import io
from pathlib import Path

from nexpy.config import load_config
from nexpy.notify import answer_ready


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_rings_on_a_terminal_after_the_threshold() -> None:
    out = Tty()
    assert answer_ready(out, 12.0, 10.0)
    assert out.getvalue() == "\x1b]9;nex: the answer is ready\x07\a"


def test_silent_when_quick_off_or_not_a_terminal() -> None:
    for out, seconds, after in ((Tty(), 3.0, 10.0), (Tty(), 99.0, None), (Tty(), 99.0, 0.0)):
        assert not answer_ready(out, seconds, after) and out.getvalue() == ""
    piped = io.StringIO()
    assert not answer_ready(piped, 99.0, 1.0) and piped.getvalue() == ""


def test_notify_is_read_from_config(tmp_path: Path) -> None:
    (tmp_path / "g.toml").write_text("notify = 15\n")
    assert load_config(tmp_path, global_path=tmp_path / "g.toml").notify == 15
