"""The REPL draws its prompt before any heavy library loads (bench/ measures how fast).

`nex` runs in a real pseudo-terminal under `python -X importtime`, which writes a line to the
terminal for each module as it is imported: the lines before the prompt are what the main thread
loaded on the way to it. litellm, pydantic, httpx, tiktoken, rich and openai each cost tens to
thousands of milliseconds; they load in the background or on first use, never before the prompt.
The work dir holds an AGENTS.md, which the REPL reads (and caps) before its prompt.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from tests.conftest import NEX, NexEnv

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux pseudo-terminal"),
]

HEAVY = ("litellm", "pydantic", "httpx", "tiktoken", "rich", "openai")
PROMPT = "›".encode()  # drawn with a cursor move after it, not a space
CURSOR_QUERY, CURSOR_REPLY = b"\x1b[6n", b"\x1b[1;1R"  # prompt-toolkit asks where the cursor is
IMPORTED = re.compile(rb"import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)")


def _until_prompt(fd: int, proc: subprocess.Popen[bytes]) -> bytes:
    out = b""
    deadline = time.monotonic() + 60
    while PROMPT not in out:
        assert time.monotonic() < deadline and proc.poll() is None, out[-2000:]
        if select.select([fd], [], [], 0.2)[0]:
            data = os.read(fd, 65536)
            out += data
            if CURSOR_QUERY in data:
                os.write(fd, CURSOR_REPLY)
    return out[: out.index(PROMPT)]


def _drain_until_exit(fd: int, proc: subprocess.Popen[bytes]) -> None:
    """Read on (the background import goes on writing its lines) until the process ends."""
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
    proc.wait(10)


def test_no_heavy_library_loads_before_the_repl_prompt(nex_env: NexEnv) -> None:
    (nex_env.work / "AGENTS.md").write_text("Run the tests with make test.\n")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        # Nothing listens there: the window probe fails quietly, after the prompt.
        [sys.executable, "-X", "importtime", NEX, "-m", "local:m", "-e", "http://127.0.0.1:9"],
        cwd=nex_env.work,
        env={**nex_env.env, "TERM": "xterm-256color"},
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    try:
        before = _until_prompt(master, proc)
        os.write(master, b"\x04")  # Ctrl-D quits
        _drain_until_exit(master, proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    loaded = {m.decode() for m in IMPORTED.findall(before)}
    # The lines were read: the REPL's own modules and prompt-toolkit are among them (not
    # nexpy.agent, imported by importlib.import_module, which -X importtime does not report).
    assert {"nexpy.repl", "nexpy.context", "prompt_toolkit"} <= loaded, sorted(loaded)
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert not heavy, f"loaded before the prompt: {heavy}"
    # And the AGENTS.md was read on the way (its cap is the tokenizer's only use there).
    session = re.search(rb"session ([\w.-]+)", before)
    assert session, before[-2000:]
    entries = nex_env.journal(session.group(1).decode())
    files = [e["files"] for e in entries if e.get("kind") == "instructions"]
    assert files and str(nex_env.work / "AGENTS.md") in files[0], entries
