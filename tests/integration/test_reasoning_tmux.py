"""The REPL with a reasoning model, in a real terminal (tmux): the thinking is shown apart.

While the model thinks, a dim "thinking… ≈N tokens" line above the prompt counts it (a long
think never looks like a hang); when the answer starts the line collapses into one dim summary
line, and the thinking's text is never printed as the answer.
"""

from __future__ import annotations

import re

from stubs.oai import stub_server
from tests.integration.test_repl_tmux import Pane, pytestmark, repl  # noqa: F401 (the fixture)

THOUGHT = " ".join(f"consider{n}" for n in range(30))


def _thinking_count(screen: str) -> int | None:
    found = re.findall(r"thinking… ≈(\d+) tokens", screen)
    return int(found[-1]) if found else None


def test_thinking_is_a_live_dim_line_that_collapses_when_the_answer_starts(repl) -> None:  # noqa: F811
    slow = {"reasoning": THOUGHT, "content": "The answer is 4.", "chunk_delay": 0.15}
    inline = {"content": f"<think>{THOUGHT[:60]}</think>\n\nInline answer.", "chunk_size": 4}
    script = {"replies": [slow, inline], "default": {"echo": True}}
    with stub_server(script, strict=True) as srv:
        pane: Pane = repl(srv)
        pane.send("what is 2+2")
        first = _thinking_count(pane.wait(lambda s: _thinking_count(s) is not None, "thinking"))
        assert first is not None
        pane.wait(lambda s: (_thinking_count(s) or 0) > first, "the count to grow")
        styled = pane.styled()
        line = next(row for row in styled.splitlines() if "thinking…" in row)
        sgr = re.match(r"\x1b\[([\d;]*)m", line)
        assert sgr is not None and "2" in sgr.group(1).split(";"), repr(line)  # dim
        screen = pane.wait("The answer is 4.")
        pane.wait_prompt()
        screen = pane.screen()
        assert "thinking…" not in screen  # collapsed
        assert re.search(r"\(thought for ≈\d+ tokens\)", screen)
        assert "consider" not in screen  # the thinking's text is not the answer
        pane.send("and inline?")
        screen = pane.wait("Inline answer.")
        pane.wait_prompt()
        assert "<think>" not in pane.screen() and "consider" not in pane.screen()
        assert srv.rejections == []
