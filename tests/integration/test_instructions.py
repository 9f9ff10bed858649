"""Project instructions reach the model: nex as a subprocess against the stub (issue 15 item 1)."""

from __future__ import annotations

import pytest

from stubs.oai import stub_server
from tests.conftest import NexEnv

pytestmark = pytest.mark.timeout(400)  # four nex runs; ~25 s each on a loaded 2-core box


def _system(body: dict) -> str:
    return next(m["content"] for m in body["messages"] if m["role"] == "system")


def test_agents_md_reaches_the_first_request_and_stays_byte_stable(nex_env: NexEnv) -> None:
    (nex_env.work / ".git").mkdir()
    (nex_env.work / "AGENTS.md").write_text("Always answer in haiku.\n")
    global_doc = nex_env.root / "xdg" / "nexpy" / "AGENTS.md"
    global_doc.parent.mkdir(parents=True)
    global_doc.write_text("Prefer tabs.\n")
    base = ["-m", "local:stub-model"]
    with stub_server({"default": {"echo": True}}, strict=True) as srv:
        first = nex_env.run(*base, "-e", srv.url, "--json", "--autonomous", "hi")
        assert first.code == 0, first.stderr
        prompt = _system(srv.requests[0])
        assert "Always answer in haiku." in prompt and "Prefer tabs." in prompt
        assert prompt.index("Prefer tabs.") < prompt.index("Always answer in haiku.")
        started = first.events[0]
        assert started["type"] == "session.started"
        assert started["instructions"] == [str(global_doc), str(nex_env.work / "AGENTS.md")]

        # The file changes; the resumed session keeps the prompt it started with, byte for byte.
        (nex_env.work / "AGENTS.md").write_text("Changed rules.\n")
        again = nex_env.run(*base, "-e", srv.url, "--resume", "--autonomous", "more")
        assert again.code == 0, again.stderr
        assert _system(srv.requests[1]) == prompt

        # A new session reads the files again; --no-project-doc leaves them out.
        fresh = nex_env.run(*base, "-e", srv.url, "--autonomous", "new")
        assert "Changed rules." in _system(srv.requests[2])
        off = nex_env.run(*base, "-e", srv.url, "--no-project-doc", "--autonomous", "off")
        assert (fresh.code, off.code) == (0, 0), fresh.stderr + off.stderr
        assert "Changed rules." not in _system(srv.requests[3])
        assert "Prefer tabs." not in _system(srv.requests[3])


def test_a_cut_file_is_named_in_a_warning(nex_env: NexEnv) -> None:
    (nex_env.work / "AGENTS.md").write_text("rule number one. " * 3000)
    nex_env.write_config("project_doc_max_tokens = 200\n")
    with stub_server({"default": {"echo": True}}, strict=True) as srv:
        result = nex_env.run("-m", "local:stub-model", "-e", srv.url, "--autonomous", "hi")
    assert result.code == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "warning" in line]
    assert any(str(nex_env.work / "AGENTS.md") in line and "cut" in line for line in warning)


def test_doctor_lists_the_files(nex_env: NexEnv) -> None:
    (nex_env.work / "CLAUDE.md").write_text("x")
    result = nex_env.run("doctor", "-m", "stub:demo")
    assert result.code == 0, result.stderr
    assert "instructions" in result.stdout and str(nex_env.work / "CLAUDE.md") in result.stdout
