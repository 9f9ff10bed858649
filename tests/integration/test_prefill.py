"""Issue 12 acceptance: every request extends the previous one byte for byte, except at
compaction events, and those are few.

A scripted 60-round tool session runs `nex --autonomous` (a subprocess) against the stub in
template mode, which renders each request with the real Qwen3-Coder template (the llama-cpp-python
sdist's copy) and records the prompt and the answer; bench.prefill models a one-slot prompt
cache on them. The same session is the bench's "prefill" row.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.prefill import ROOMY, TEMPLATE, WINDOW, measure, session
from stubs.oai import stub_server
from stubs.template import TemplateRenderer
from tests.conftest import NexEnv

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(not TEMPLATE.is_file(), reason=f"no {TEMPLATE} (make peers)"),
]

ROUNDS = 60
# At most one compaction event per five rounds. An event leaves the task, the summary and the
# newest step (~450 tokens of the ~1,900-token history room at 4,096 with nex's system prompt and
# tools), and a round here adds ~250 tokens (a call and a 900-char file), so about six rounds
# fit between events (11 in 60 measured); keeping half the room took 14, and compacting a little
# every turn, as before issue 12, 25-28.
MAX_EVENTS = ROUNDS // 5
# What a compaction may cost over the ideal, in characters (which do not drift with load):
# processing the summary, the newest step and the summary question again, once per event.
MAX_PREFILL = 1.15


def test_no_pressure_every_request_extends_the_previous(tmp_path: Path) -> None:
    got = session(tmp_path, window=ROOMY, rounds=ROUNDS)
    assert got.exit_code == 0
    assert got.requests == ROUNDS + 1
    assert got.compactions == 0
    assert got.breaks == 0
    assert got.prefilled == got.ideal  # the cache never processes a byte twice


def test_compacting_session_breaks_the_prefix_only_at_few_compaction_events(
    tmp_path: Path,
) -> None:
    got = session(tmp_path, window=WINDOW, rounds=ROUNDS)
    assert got.exit_code == 0
    assert got.compactions >= 1, "the window must be small enough to compact"
    # Each compaction event rewrites the history once; every other request is an extension.
    assert got.breaks <= got.compactions, got
    assert got.compactions <= MAX_EVENTS, got
    assert got.prefilled <= MAX_PREFILL * got.ideal, got


def test_a_resumed_session_extends_the_prompt_it_left_off(nex_env: NexEnv) -> None:
    """System prompt and tool schemas are the same bytes after --chat resumes, so the server's
    cache of the last run still serves the next one."""
    renderer = TemplateRenderer.from_file(TEMPLATE)
    (nex_env.work / "notes.txt").write_text("alpha\n")
    script = {
        "replies": [
            {"tool_calls": [{"name": "read_file", "arguments": {"path": "notes.txt"}}]},
            {"content": "It says alpha."},
            {"content": "Still alpha."},
        ]
    }
    with stub_server(script, template=renderer) as srv:
        for message in ("read notes.txt", "and now?"):
            result = nex_env.run(
                "-m", "local:stub-model", "-e", srv.url, "--chat", "t", "--autonomous", message
            )
            assert result.code == 0, result.stderr
        bodies, prompts, answers = srv.requests, srv.prompts, srv.answers
    assert len(prompts) == 3 and all(prompts)
    _, _, breaks = measure(renderer, bodies, prompts, answers)
    assert breaks == 0
    # The last request (the resumed run's first) starts with the first run's prompt and answer.
    cached = renderer.render({**bodies[1], "messages": [*bodies[1]["messages"], answers[1]]},
                             generation=False)  # fmt: skip
    assert prompts[2] is not None and prompts[2].startswith(cached)
