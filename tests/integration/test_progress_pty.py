"""The autonomous status line in a real terminal: `nex --autonomous` with stderr on a
pseudo-terminal says what the server is doing while a slow first byte keeps it waiting, erases
the line before anything else is written, and writes none of it when stderr is a file."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest

from stubs.oai import stub_server
from tests.conftest import NEX, NexEnv

pytestmark = pytest.mark.timeout(120)

ANSWER = "The build passes."
DELAY = 2.5  # seconds before the stub's first byte: two ticks of the status line at least
ERASE = b"\r\x1b[K"


def _argv(url: str) -> list[str]:
    return [
        NEX, "-m", "local:stub-model", "-e", url, "--context-window", "32768", "--autonomous",
        "status?",
    ]  # fmt: skip


def _read_all(fd: int, proc: subprocess.Popen[bytes]) -> bytes:
    """Everything the terminal side receives until the process exits and the pty drains."""
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: every writer has closed the pty
                break
            if not data:
                break
            out += data
        elif proc.poll() is not None:
            break
    return out


def test_a_slow_first_byte_shows_progress_on_a_terminal_and_stdout_stays_the_answer(
    nex_env: NexEnv,
) -> None:
    with stub_server({"replies": [{"content": ANSWER, "delay": DELAY}]}) as srv:
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            _argv(srv.url),
            cwd=nex_env.work,
            env=nex_env.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
        )
        os.close(slave)
        started = time.monotonic()
        try:
            terminal = _read_all(master, proc)
            stdout = proc.stdout.read() if proc.stdout else b""
            code = proc.wait(10)
            seconds = time.monotonic() - started
        finally:
            os.close(master)
    assert code == 0, terminal
    assert stdout == (ANSWER + "\n").encode()  # nothing of the status line on stdout
    text = terminal.decode()
    assert f"{ERASE.decode()}processing prompt… " in text, text
    # Rewritten about once a second, never more: the 2.5 s wait shows at least two (the first
    # request also waits for litellm's import, so the run shows more), the run at most one a
    # second.
    assert 2 <= text.count("processing prompt… ") <= seconds + 1, (seconds, text)
    # Erased before the next line is written (here the session's last line).
    last = text.rindex("processing prompt… ")
    assert ERASE.decode() in text[last:], text
    ended = text.index("— session")
    assert text[last:ended].endswith(ERASE.decode()), repr(text[last:])


def test_with_stderr_in_a_file_no_progress_is_written(nex_env: NexEnv, tmp_path: Path) -> None:
    log = tmp_path / "stderr.txt"
    with (
        stub_server({"replies": [{"content": ANSWER, "delay": DELAY}]}) as srv,
        log.open("wb") as f,
    ):
        proc = subprocess.run(
            _argv(srv.url),
            cwd=nex_env.work,
            env=nex_env.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=f,
            timeout=60,
        )
    assert proc.returncode == 0, log.read_text()
    assert proc.stdout == (ANSWER + "\n").encode()
    written = log.read_text()
    assert "— session" in written  # stderr was written, just not the status line
    assert "processing prompt" not in written and "answering" not in written, written
    assert "\x1b" not in written and "\r" not in written, repr(written)
