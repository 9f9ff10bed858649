"""The bash tool: one command, its own process group, a timeout, bounded memory.

The command's stdout and stderr share one pipe that we create ourselves, not one from asyncio:
asyncio's `Process.wait()` (3.11) also waits for its pipes to close, so a background child that
inherited them (`server &`) would hold the call open until the timeout. With our own pipe,
bash's exit is seen at once and we decide how long to wait for stragglers' output.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import deque
from typing import Any

from nexpy.credentials import scrubbed_env
from nexpy.tools.base import Tool, ToolContext, ToolError

MAX_TIMEOUT = 600.0
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL
DRAIN_GRACE = 1.0  # after bash exits, how long background holders of the pipe may keep it
HEAD_BYTES = 5_000_000  # ~10 MB in memory at most: the first 5 MB and the last ~5 MB
TAIL_BYTES = 5_000_000
READ_CHUNK = 1 << 16


class _Collector:
    """Output bytes with a bounded middle: the head is kept, then a rolling tail."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail: deque[bytes] = deque()
        self.tail_len = 0
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = HEAD_BYTES - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if not data:
            return
        self.tail.append(data)
        self.tail_len += len(data)
        # Whole chunks leave the tail, so trimming costs nothing per byte.
        while self.tail_len - len(self.tail[0]) >= TAIL_BYTES:
            gone = self.tail.popleft()
            self.tail_len -= len(gone)
            self.dropped += len(gone)

    def text(self) -> str:
        head = self.head.decode("utf-8", errors="replace")
        tail = b"".join(self.tail).decode("utf-8", errors="replace")
        if not self.dropped:
            return head + tail
        return f"{head}\n[... {self.dropped} bytes of output dropped ...]\n{tail}"


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists but is not ours any more (setuid child); nothing to do
    return True


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies don't count).

    killpg(0) alone also counts zombies, and where nothing reaps orphans promptly (PID 1 in
    many containers) that would turn every kill into the full KILL_GRACE wait. On Linux we
    look at the process states in /proc.
    """
    if not _signal_group(pgid, 0):
        return False
    if not sys.platform.startswith("linux"):
        return True
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the command name: state, ppid, pgrp, ...
        if len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] not in (b"Z", b"X"):
            return True
    return False


async def _kill_group(pgid: int) -> None:
    """SIGTERM the whole group, SIGKILL whatever is left after KILL_GRACE.

    The SIGKILL also goes out if this wait is itself cancelled (a second Ctrl-C).
    """
    if not _signal_group(pgid, signal.SIGTERM):
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + KILL_GRACE
    gone = False
    try:
        while loop.time() < deadline:
            await asyncio.sleep(0.05)
            if not _group_alive(pgid):
                gone = True
                return
    finally:
        if not gone:
            _signal_group(pgid, signal.SIGKILL)


def _seconds(t: float) -> str:
    return f"{t:g}"


def _exit_note(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"[killed by signal {name}]"
    return f"[exit code {code}]"


def _with_notes(text: str, notes: list[str]) -> str:
    if not notes:
        return text
    if text and not text.endswith("\n"):
        text += "\n"
    return text + "\n".join(notes)


async def run_command(command: str, ctx: ToolContext, timeout: float) -> str:
    """Run `bash -c command` in the work dir; return its output or raise ToolError with it."""
    loop = asyncio.get_running_loop()
    # Under the sandbox, bwrap runs bash (it and its children in bash's process group, so the
    # group kill below still reaches them; bwrap's --die-with-parent and its own PID namespace
    # take down whatever left the group).
    argv = ctx.sandbox.wrap(["bash", "-c", command], ctx.workdir)
    r, w = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=ctx.workdir,
            env=scrubbed_env(),  # credentials stay with nex, never with the model's commands
            stdin=asyncio.subprocess.DEVNULL,
            stdout=w,
            stderr=w,
            # Its own session: a process group we can kill whole, and no controlling terminal,
            # so nothing can stop to prompt on /dev/tty.
            start_new_session=True,
        )
    except BaseException:
        os.close(r)
        raise
    finally:
        # Only the child holds the write end now, so EOF means every writer is gone.
        os.close(w)

    collected = _Collector()
    eof: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        try:
            data = os.read(r, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            collected.add(data)
            return
        loop.remove_reader(r)
        if not eof.done():
            eof.set_result(None)

    os.set_blocking(r, False)
    loop.add_reader(r, on_readable)
    notes: list[str] = []
    timed_out = False
    code = 0
    try:
        try:
            code = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            timed_out = True
            await _kill_group(proc.pid)  # start_new_session: the group id is bash's pid
            await asyncio.wait([eof], timeout=0.5)
            notes.append(f"[timed out after {_seconds(timeout)}s]")
        else:
            await asyncio.wait([eof], timeout=DRAIN_GRACE)
            if not eof.done():
                # A background child (`cmd &`) kept the output open. It is the model's to
                # keep running; we just stop listening.
                notes.append(
                    "[the command exited but a background process still holds its output open; "
                    "not waiting for it (redirect its output to a file)]"
                )
    except asyncio.CancelledError:
        await _kill_group(proc.pid)
        raise
    finally:
        loop.remove_reader(r)
        # Take what is already in the pipe before closing it (bounded: a background writer
        # that never stops must not keep us here).
        for _ in range((HEAD_BYTES + TAIL_BYTES) // READ_CHUNK):
            try:
                data = os.read(r, READ_CHUNK)
            except OSError:
                break
            if not data:
                break
            collected.add(data)
        os.close(r)

    text = collected.text()
    if timed_out:
        raise ToolError(f"timed out after {_seconds(timeout)}s", output=_with_notes(text, notes))
    if code != 0:
        notes.append(_exit_note(code))
        raise ToolError(_exit_note(code), output=_with_notes(text, notes))
    return _with_notes(text, notes) or "(no output)"


async def _run_bash(args: dict[str, Any], ctx: ToolContext) -> str:
    command: str = args["command"]
    if not command.strip():
        raise ToolError("command is empty")
    timeout = min(float(args.get("timeout", ctx.bash_timeout)), MAX_TIMEOUT)
    return await run_command(command, ctx, timeout)


BASH = Tool(
    name="bash",
    description=(
        "Run a shell command with `bash -c` in the work dir (no stdin); stdout and stderr "
        "come back together. Killed after `timeout` seconds (at most 600)."
    ),
    parameters={
        "type": "object",
        "properties": {
            "command": {"type": "string", "description": "The command line"},
            "timeout": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": "Seconds before the command is killed",
            },
        },
        "required": ["command"],
        "additionalProperties": False,
    },
    mutating=True,
    run=_run_bash,
)
