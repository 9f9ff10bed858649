"""Bad input and repeated interrupts (issue 13, items 7 and 8): one line, the documented exit
code, no traceback, and a journal that tells the truth about how the run ended."""

from __future__ import annotations

import signal
import subprocess
import textwrap
import time

import pytest

from stubs.oai import stub_server
from tests.conftest import NEX, NexEnv, Result

pytestmark = pytest.mark.timeout(120)


def _one_line(result: Result, code: int, needle: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.code == code, result.stderr
    (line,) = result.error_lines()
    assert needle in line, line
    assert result.stdout == ""
    return line


def _raw(nex_env: NexEnv, argv: list[bytes | str], stdin: bytes = b"") -> Result:
    proc = subprocess.run(
        [NEX, *argv], cwd=nex_env.work, env=nex_env.env, input=stdin, capture_output=True,
        timeout=60,
    )  # fmt: skip
    return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def _no_sessions(nex_env: NexEnv) -> None:
    sessions = nex_env.home / "sessions"
    assert not sessions.exists() or not any(sessions.iterdir())


def test_global_config_that_is_not_utf8(nex_env: NexEnv) -> None:
    path = nex_env.write_config("")
    path.write_bytes(b'model = "caf\xe9"\n')  # Latin-1
    result = nex_env.run("--autonomous", "hi")
    line = _one_line(result, 2, f"config {path} is not UTF-8 text (byte 12)")
    assert "save it as UTF-8" in line


@pytest.mark.parametrize("command", [["--autonomous", "hi"], ["sessions"]], ids=["run", "sessions"])
def test_nex_home_that_is_a_regular_file(nex_env: NexEnv, command: list[str]) -> None:
    nex_env.home.write_text("not a folder\n")
    result = nex_env.run("-m", "stub:demo", *command)
    line = _one_line(result, 2, f"the state dir needs {nex_env.home} to be a directory")
    assert "set NEX_HOME to a directory" in line


def test_invalid_utf8_on_stdin(nex_env: NexEnv) -> None:
    result = _raw(nex_env, ["-m", "stub:demo", "--autonomous"], stdin=b"fix the caf\xe9 test\n")
    _one_line(result, 2, "the message on stdin is not UTF-8 text (byte 0xe9 at 11)")
    _no_sessions(nex_env)


@pytest.mark.parametrize("flag", ["MESSAGE", "-m"])
def test_invalid_utf8_in_argv(nex_env: NexEnv, flag: str) -> None:
    bad = b"caf\xe9"
    argv: list[bytes | str] = (
        ["-m", "stub:demo", "--autonomous", bad]
        if flag == "MESSAGE"
        else ["-m", bad, "--autonomous", "hi"]
    )
    result = _raw(nex_env, argv)
    _one_line(result, 2, f"{flag} is not UTF-8 text")
    _no_sessions(nex_env)


def _crashing(nex_env: NexEnv) -> None:
    """A nex whose loop raises a bug mid-run, as a sitecustomize patch (no hook in nex)."""
    site = nex_env.root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        textwrap.dedent(
            """
            import nexpy.agent

            async def send(self, message, *args, **kwargs):
                self.session.append("message", message={"role": "user", "content": message})
                raise RuntimeError("boom in the loop")

            nexpy.agent.Agent.send = send
            """
        )
    )
    nex_env.env["PYTHONPATH"] = str(site)


@pytest.mark.parametrize("verbose", [False, True], ids=["plain", "-v"])
def test_a_crash_is_one_line_and_never_journaled_as_completed(
    nex_env: NexEnv, verbose: bool
) -> None:
    _crashing(nex_env)
    args = ["-m", "stub:demo", "--chat", "c", "--json", "--autonomous", "hi"]
    result = nex_env.run(*args, *(["-v"] if verbose else []))
    assert result.code == 1, result.stderr
    (line,) = result.error_lines()
    assert "internal error: RuntimeError: boom in the loop" in line and "-v" in line
    assert ("Traceback" in result.stderr) == verbose
    assert result.events[-1]["type"] == "session.ended"
    assert result.events[-1]["status"] == "failed"
    end = nex_env.journal("c")[-1]
    assert (end["kind"], end["status"], end["exit_reason"]) == ("end", "failed", "internal")


# -- repeated interrupts -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sig", "count", "gap"),
    [
        (signal.SIGINT, 2, 0.0),
        (signal.SIGINT, 2, 0.05),
        (signal.SIGINT, 2, 0.5),
        (signal.SIGTERM, 2, 0.05),
        (signal.SIGINT, 3, 0.02),
        (signal.SIGINT, 6, 0.0),
    ],
    ids=["int-twice-at-once", "int-twice", "int-twice-slow", "term-twice", "int-thrice", "int-6"],
)
def test_repeated_interrupts_still_exit_130(
    nex_env: NexEnv, sig: signal.Signals, count: int, gap: float
) -> None:
    script = {"default": {"content": "slow answer " * 50, "chunk_size": 4, "chunk_delay": 0.2}}
    with stub_server(script) as srv:
        proc = nex_env.popen(
            "-m", "local:m", "-e", srv.url, "--context-window", "32768", "--chat", "i",
            "--autonomous", "go",
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not srv.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.requests, "nex never asked the model"
        time.sleep(0.3)  # mid-answer
        for _ in range(count):
            proc.send_signal(sig)
            time.sleep(gap)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    entries = nex_env.journal("i")
    kinds = [e["kind"] for e in entries]
    assert kinds[0] == "init" and "end" not in kinds[:-1]
    if kinds[-1] == "end":
        assert entries[-1]["status"] == "interrupted"
    else:
        # Only a forced exit (the third signal) may leave the end unwritten.
        assert count >= 3 and "exiting now" in stderr
    # The part of the answer that came is kept, marked as cut short, never as an answer.
    answers = [e["message"] for e in entries if e.get("message", {}).get("role") == "assistant"]
    assert all(m["content"].endswith("[interrupted by the user]") for m in answers), answers
