"""`nex undo` (issue 15 item 6): nex as a subprocess against the stub changes files with
write_file, edit_file and bash; undo puts them back byte for byte, skips a file the user
changed since, and still works after a kill -9 mid-run."""

from __future__ import annotations

import os
import signal
import time

import pytest

from stubs.oai import stub_server
from tests.conftest import NexEnv

pytestmark = pytest.mark.timeout(400)


def _call(name: str, **arguments: object) -> dict:
    return {"tool_calls": [{"name": name, "arguments": arguments}]}


def _session(nex_env: NexEnv) -> str:
    (only,) = [p.name for p in (nex_env.home / "sessions").iterdir()]
    return only


def test_undo_restores_write_edit_and_bash_changes_and_skips_user_edits(nex_env: NexEnv) -> None:
    w = nex_env.work
    (w / "edit.txt").write_bytes(b"alpha\r\nbeta\r\n")  # CRLF kept byte for byte
    (w / "over.bin").write_bytes(bytes(range(256)))
    (w / "gone.txt").write_text("bash deletes me\n")
    (w / "mine.txt").write_text("the user's\n")
    script = {
        "replies": [
            _call("edit_file", path="edit.txt", old_string="beta", new_string="BETA"),
            _call("write_file", path="new/created.txt", content="brand new\n"),
            _call("write_file", path="over.bin", content="text now\n"),
            _call("bash", command="rm gone.txt && echo made > made.txt && echo x >> mine.txt"),
            {"echo": True},
        ],
        "default": {"echo": True},
    }
    with stub_server(script, strict=True) as srv:
        run = nex_env.run(
            "-m", "local:stub-model", "-e", srv.url, "--yes", "--autonomous", "change things"
        )
    assert run.code == 0, run.stderr
    assert (w / "edit.txt").read_bytes() == b"alpha\r\nBETA\r\n" and not (w / "gone.txt").exists()
    (w / "mine.txt").write_text("the user edited this again\n")  # changed since: must survive

    undo = nex_env.run("undo")
    assert undo.code == 0, undo.stderr
    assert (w / "edit.txt").read_bytes() == b"alpha\r\nbeta\r\n"
    assert (w / "over.bin").read_bytes() == bytes(range(256))
    assert (w / "gone.txt").read_text() == "bash deletes me\n"
    assert not (w / "made.txt").exists() and not (w / "new" / "created.txt").exists()
    assert (w / "mine.txt").read_text() == "the user edited this again\n"
    out = undo.stdout
    assert "restored edit.txt" in out and "restored over.bin" in out and "restored gone.txt" in out
    assert "deleted made.txt" in out and "deleted new/created.txt" in out
    assert "skipped mine.txt: changed since" in out
    # The conversation is told; a second undo finds nothing left.
    notes = [e for e in nex_env.journal(_session(nex_env)) if e["kind"] == "message"]
    assert "undid the file changes" in notes[-1]["message"]["content"]
    again = nex_env.run("undo")
    assert again.code == 0 and "no changes left to undo" in again.stdout


def test_undo_after_kill_9_mid_bash_restores(nex_env: NexEnv) -> None:
    w = nex_env.work
    (w / "a.txt").write_text("original\n")
    slow = _call("bash", command="echo clobbered > a.txt && sleep 60")
    with stub_server({"replies": [slow], "default": {"echo": True}}) as srv:
        proc = nex_env.popen("-m", "local:stub-model", "-e", srv.url, "--yes", "--autonomous", "go")
        try:
            deadline = time.monotonic() + 120
            while (w / "a.txt").read_text() != "clobbered\n":
                assert time.monotonic() < deadline and proc.poll() is None, "bash never ran"
                time.sleep(0.1)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
    session = _session(nex_env)
    undo = nex_env.run("undo", "--session", session)
    assert undo.code == 0, undo.stderr
    assert (w / "a.txt").read_text() == "original\n"
    assert "restored a.txt" in undo.stdout


def test_undo_without_sessions_is_a_usage_error(nex_env: NexEnv) -> None:
    result = nex_env.run("undo")
    assert result.code == 2 and result.error_lines(), result.stderr
