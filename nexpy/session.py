"""Sessions: one folder per conversation, with an append-only journal as its source of truth.

    <home>/sessions/<id>/journal.jsonl     one JSON entry per line: init, message,
                                           tool_execution, compaction, end
    <home>/sessions/<id>/tool-outputs/     full tool output kept beside the capped copy
    <home>/sessions/<id>/lock              flock'ed by the one writer; holds its pid

Every append is written, then fsynced, before the loop takes its next step, so a `kill -9` at
any point leaves only complete entries, plus at most one torn last line that readers skip and
the next writer cuts off. One writer per session: `lock()` is a non-blocking exclusive flock,
and `append()` refuses to write without it (DESIGN §6).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import platformdirs

from nexpy.credentials import redact_any
from nexpy.errors import ConfigError, SessionLocked, UsageError
from nexpy.messages import with_note

JOURNAL = "journal.jsonl"
OUTPUTS = "tool-outputs"
LOCKFILE = "lock"
SESSIONS = "sessions"

# A name becomes a folder: no separators, no "." or "..", nothing hidden, short enough for any
# filesystem and for a terminal column.
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NAME_RULE = "use 1-64 letters, digits, '.', '_' or '-', not starting with '.'"

# Values shorter than this are too likely to collide with ordinary text ("true", "1234") to be
# worth refusing an entry over.


def state_home() -> Path:
    """The state dir: `$NEX_HOME` if set and non-empty, else the platform's user state dir."""
    env = os.environ.get("NEX_HOME", "").strip()
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_state_dir("nexpy"))


def private_dir(path: Path) -> Path:
    """`path` as a directory, created with any missing parents as 0700 (a session holds the
    user's conversation and tool output). Something in the way that is not a directory, or a
    directory nex may not create, is a ConfigError naming it."""
    missing: list[Path] = []
    at = Path(path)
    while not at.exists() and at != at.parent:
        missing.append(at)
        at = at.parent
    if at.exists() and not at.is_dir():
        raise _not_a_dir(at)
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            if not folder.is_dir():
                raise _not_a_dir(folder) from None
        except OSError as e:
            raise ConfigError(
                f"cannot create the state dir {folder}: {e.strerror or e}",
                hint="set NEX_HOME to a directory you can write",
            ) from None
    return Path(path)


def _not_a_dir(path: Path) -> ConfigError:
    return ConfigError(
        f"the state dir needs {path} to be a directory, but it is a file",
        hint="set NEX_HOME to a directory (or unset it)",
    )


def validate_name(name: str) -> str:
    """Return `name` if it is a usable `--chat` name, else raise UsageError stating the rule."""
    if not _NAME_RE.fullmatch(name) or name.startswith("."):
        raise UsageError(f"invalid session name {name!r}", hint=_NAME_RULE)
    return name


def _sessions_dir(home: Path) -> Path:
    return Path(home) / SESSIONS


def _now_iso() -> str:
    # Milliseconds order entries written within one second; "Z" is what log tools expect.
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # It exists; it just belongs to someone else.
        return True
    return True


def _read_pid(lock_path: Path) -> int | None:
    try:
        text = lock_path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _parse_entry(raw: bytes) -> dict[str, Any] | None:
    """One journal line as an entry, or None if it is not a complete, well-formed entry."""
    try:
        entry = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
        return None
    return entry


class Session:
    """One session folder: its journal (read by anyone, written by the lock holder) and lock."""

    def __init__(self, path: Path) -> None:
        """Wrap an existing session folder; use `create`, `open_or_create` or `latest`."""
        self.path = Path(path)
        self.id = self.path.name
        self.outputs_dir = self.path / OUTPUTS
        self.journal_path = self.path / JOURNAL
        self.warnings: list[str] = []
        self._lock_fd: int | None = None
        self._journal_fd: int | None = None
        # The REPL may append from more than one thread; entries must not interleave.
        self._write_mutex = threading.Lock()

    def __repr__(self) -> str:
        return f"Session({self.id!r}, path={str(self.path)!r})"

    # -- finding and making sessions ------------------------------------------------------
    @classmethod
    def create(cls, home: Path, name: str | None = None) -> Session:
        """Make a new session folder: `name` if given (UsageError if it exists), else a fresh id.

        The folder is not locked; call `lock()` before appending.
        """
        sessions = private_dir(_sessions_dir(home))
        if name is not None:
            validate_name(name)
            try:
                return cls._make(sessions / name)
            except FileExistsError:
                raise UsageError(
                    f"session {name} already exists in {sessions}",
                    hint=f"resume it with --chat {name}, or pick another name",
                ) from None
        # 16 bits of randomness per second is plenty for one person's runs, but two runs started
        # in the same second may still collide: mkdir decides atomically, so just draw again.
        for _ in range(32):
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            try:
                return cls._make(sessions / f"{stamp}-{secrets.token_hex(2)}")
            except FileExistsError:
                continue
        raise UsageError(
            f"could not pick a free session id in {sessions}",
            hint="name the session with --chat NAME",
        )

    @classmethod
    def _make(cls, path: Path) -> Session:
        # mkdir without exist_ok is the atomic "this folder is mine" test between processes.
        path.mkdir(mode=0o700)
        session = cls(path)
        session.outputs_dir.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(session.journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.close(fd)
        _fsync_dir(path.parent)
        return session

    @classmethod
    def open_or_create(cls, home: Path, name: str) -> Session:
        """`--chat NAME`: the existing session NAME if there is one, else a new one by that name."""
        validate_name(name)
        path = _sessions_dir(home) / name
        if path.is_dir():
            return cls._open_existing(path)
        try:
            return cls.create(home, name)
        except UsageError:
            # Another process created it between our check and our mkdir: it exists now.
            if path.is_dir():
                return cls._open_existing(path)
            raise

    @classmethod
    def _open_existing(cls, path: Path) -> Session:
        session = cls(path)
        # An older or hand-copied folder may lack the outputs dir; tools expect it to exist.
        session.outputs_dir.mkdir(mode=0o700, exist_ok=True)
        return session

    @classmethod
    def latest(cls, home: Path, pattern: str | None = None) -> Session:
        """`--resume [PATTERN]`: the newest session (by journal mtime) whose id contains PATTERN.

        The match is a case-insensitive substring. No match raises UsageError.
        """
        sessions = _sessions_dir(home)
        needle = (pattern or "").lower()
        candidates = [
            (_updated_ts(path), path.name, path)
            for path in _session_dirs(sessions)
            if needle in path.name.lower()
        ]
        if not candidates:
            if pattern:
                raise UsageError(
                    f"no session matches {pattern!r} in {sessions}",
                    hint="nex sessions lists them",
                )
            raise UsageError(
                f"no session to resume in {sessions}",
                hint="start one with nex MESSAGE or --chat NAME",
            )
        # Ties on mtime (coarse clocks, copied folders) fall back to the id, which for unnamed
        # sessions is a timestamp.
        _, _, path = max(candidates)
        return cls._open_existing(path)

    # -- the one writer ---------------------------------------------------------------------
    def lock(self) -> None:
        """Become this session's only writer, or raise SessionLocked naming the holder's pid.

        Non-blocking: a second `nex` on the same session fails at once instead of hanging. The
        lock lives as long as the open file, so a crashed holder releases it with its process.
        Idempotent while held.
        """
        if self._lock_fd is not None:
            return
        lock_path = self.path / LOCKFILE
        # os.open fds are not inherited by children (O_CLOEXEC), so a background process the
        # bash tool starts cannot keep the session locked after we exit.
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            pid = _read_pid(lock_path)
            holder = f"pid {pid}" if pid is not None else "pid unknown"
            raise SessionLocked(
                f"session {self.id} is in use by another nex process ({holder})",
                hint="wait for it to finish or pick another --chat name",
            ) from None
        # The pid is only for messages and `nex sessions`; the flock alone decides ownership.
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._lock_fd = fd
        try:
            self._open_journal()
        except BaseException:
            self.unlock()
            raise

    def _open_journal(self) -> None:
        """Open the journal for appending, first cutting off a torn tail a crash left behind.

        Appending after a torn line would glue the new entry onto the fragment and lose both.
        """
        fd = os.open(self.journal_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size:
                tail_start = _last_line_start(fd, size)
                tail = os.pread(fd, size - tail_start, tail_start)
                if not tail.endswith(b"\n"):
                    if _parse_entry(tail) is not None:
                        # The whole entry made it; only its newline did not. Keep it.
                        os.write(fd, b"\n")
                    else:
                        os.ftruncate(fd, tail_start)
                        self._warn(
                            f"{self.journal_path}: dropped a torn last line "
                            f"({size - tail_start} bytes) left by an interrupted write"
                        )
                    os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._journal_fd = fd

    def unlock(self) -> None:
        """Stop being the writer: close the journal and release the lock. Safe to repeat."""
        with self._write_mutex:
            if self._journal_fd is not None:
                os.close(self._journal_fd)
                self._journal_fd = None
            if self._lock_fd is not None:
                fd, self._lock_fd = self._lock_fd, None
                try:
                    # Clear the pid so `nex sessions` stops calling this session open. The file
                    # itself stays: deleting it would let a waiter lock an orphaned inode while
                    # a newcomer locks a fresh one, and both would write.
                    os.ftruncate(fd, 0)
                    fcntl.flock(fd, fcntl.LOCK_UN)
                finally:
                    os.close(fd)

    @property
    def locked(self) -> bool:
        """Whether this object holds the session's lock."""
        return self._lock_fd is not None

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Write one entry durably (write + fsync) and return it."""
        return self.append_all((kind, fields))[0]

    def append_all(self, *entries: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Write entries that belong together (a tool's result and its record) with one write
        and one fsync, and return them.

        Raises ValueError without holding the lock. Secret values (nexpy.credentials) in any string
        of an entry are redacted: a last line of defence, since nothing should hand a key here.
        """
        now = _now_iso()
        written = [redact_any({"kind": kind, "ts": now, **fields}) for kind, fields in entries]
        # Serialize before touching the file so an unserializable field writes nothing.
        # json escapes "\n" inside strings, so one entry is always exactly one line.
        # A lone surrogate (an undecodable byte in a path, say) has no UTF-8 form; written as the
        # JSON escape it is, it reads back as the same string.
        text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in written)
        data = text.encode("utf-8", "backslashreplace")
        with self._write_mutex:
            fd = self._journal_fd
            if self._lock_fd is None or fd is None:
                raise ValueError(f"session {self.id}: append without holding its lock")
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            except BaseException:
                # Cut back to before these entries, so a caller that retries writes them once,
                # and the next entry never lands after a fragment.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        return written

    def close(self) -> None:
        """Close the journal and release the lock."""
        self.unlock()

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------
    def entries(self) -> list[dict[str, Any]]:
        """Every complete entry in order. Invalid lines are skipped and noted in `warnings`.

        Raises OSError if the journal cannot be read at all.
        """
        data = self.journal_path.read_bytes()
        # Split on b"\n" only: str.splitlines would also break at U+2028 and friends, which
        # ensure_ascii=False leaves raw inside message text.
        lines = data.split(b"\n")
        last = max((i for i, raw in enumerate(lines) if raw.strip()), default=-1)
        out: list[dict[str, Any]] = []
        for i, raw in enumerate(lines):
            if not raw.strip():
                continue
            entry = _parse_entry(raw)
            if entry is not None:
                out.append(entry)
            elif i == last:
                self._warn(
                    f"{self.journal_path}: skipped an incomplete last line {i + 1} "
                    "(an interrupted write)"
                )
            else:
                self._warn(f"{self.journal_path}: line {i + 1} is not a valid entry; skipped")
        return out

    def messages(self) -> list[dict[str, Any]]:
        """The conversation to send: `message` entries in order, reset by each `compaction`.

        A compaction entry's `messages` list replaces the whole history before it; a `reminder`
        entry's text was appended to the message before it when it was sent.
        """
        return _rebuild_messages(self.entries())

    def meta(self) -> dict[str, Any]:
        """The fields the first `init` entry was appended with (model, handler, ...), or {}."""
        for entry in self.entries():
            if entry["kind"] == "init":
                return {k: v for k, v in entry.items() if k not in ("kind", "ts")}
        return {}

    def _warn(self, message: str) -> None:
        # entries() runs on every messages()/meta(); say each problem once.
        if message not in self.warnings:
            self.warnings.append(message)


def _rebuild_messages(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = []
    for entry in entries:
        kind = entry["kind"]
        if kind == "message" and isinstance(entry.get("message"), dict):
            history.append(entry["message"])
        elif kind == "compaction" and isinstance(entry.get("messages"), list):
            history = [m for m in entry["messages"] if isinstance(m, dict)]
        elif kind == "reminder" and history and isinstance(entry.get("text"), str):
            history[-1] = with_note(history[-1], entry["text"])
    return history


def _last_line_start(fd: int, size: int) -> int:
    """Offset just past the last newline before the final byte (0 if there is none)."""
    block = 64 * 1024
    end = size - 1  # a final "\n" ends the last line; it does not start it
    while end > 0:
        begin = max(0, end - block)
        chunk = os.pread(fd, end - begin, begin)
        at = chunk.rfind(b"\n")
        if at != -1:
            return begin + at + 1
        end = begin
    return 0


def _fsync_dir(path: Path) -> None:
    # A new folder's name lives in its parent; without this a power cut can lose the session
    # even though its journal was fsynced.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        # Some filesystems refuse fsync on a directory; the journal's own fsync still holds.
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _session_dirs(sessions: Path) -> list[Path]:
    try:
        children = list(sessions.iterdir())
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise _not_a_dir(sessions if sessions.exists() else sessions.parent) from None
    return [p for p in children if not p.name.startswith(".") and p.is_dir()]


def _updated_ts(path: Path) -> float:
    """When a session last changed: its journal's mtime, else (no journal) the folder's."""
    for candidate in (path / JOURNAL, path):
        try:
            return candidate.stat().st_mtime
        except OSError:
            continue
    return 0.0


@dataclass
class SessionInfo:
    """One row of `nex sessions`."""

    id: str
    path: Path
    updated: datetime  # timezone-aware, local time
    model: str | None
    messages: int
    status: str  # "ended:<status>", "open", "interrupted" or "unreadable"

    def row(self, id_width: int) -> str:
        """The line `nex sessions` and the REPL's /sessions show for this session."""
        when = self.updated.astimezone().strftime("%Y-%m-%d %H:%M")
        return (
            f"{self.id:<{id_width}}  {when}  {self.messages:>4} msgs  "
            f"{self.status:<14} {self.model or '-'}"
        )

    def as_json(self) -> dict[str, Any]:
        """The object `nex sessions --json` prints for this session."""
        return {
            "id": self.id,
            "updated": self.updated.isoformat(),
            "model": self.model,
            "messages": self.messages,
            "status": self.status,
            "path": str(self.path),
        }


def _status(session: Session, entries: list[dict[str, Any]]) -> str:
    # Ask the pid in the lock file rather than probing the flock: a probe would briefly hold the
    # lock and could make a `nex` starting at that instant fail with SessionLocked.
    pid = _read_pid(session.path / LOCKFILE)
    if pid is not None and _pid_alive(pid):
        return "open"
    if entries and entries[-1]["kind"] == "end":
        return f"ended:{entries[-1].get('status', 'unknown')}"
    return "interrupted"


def list_sessions(home: Path) -> list[SessionInfo]:
    """Every session under `home`, newest first. A broken folder is listed as "unreadable"."""
    rows: list[tuple[float, SessionInfo]] = []
    for path in _session_dirs(_sessions_dir(home)):
        ts = _updated_ts(path)
        updated = datetime.fromtimestamp(ts).astimezone()
        session = Session(path)
        try:
            entries = session.entries()
        except (OSError, ValueError):
            entries = None
        if entries is None or (not entries and session.warnings):
            # No journal, an unreadable one, or one with nothing valid in it.
            info = SessionInfo(path.name, path, updated, None, 0, "unreadable")
        else:
            model = next(
                (e.get("model") for e in entries if e["kind"] == "init"),
                None,
            )
            info = SessionInfo(
                id=path.name,
                path=path,
                updated=updated,
                model=model if isinstance(model, str) else None,
                messages=len(_rebuild_messages(entries)),
                status=_status(session, entries),
            )
        rows.append((ts, info))
    rows.sort(key=lambda row: (row[0], row[1].id), reverse=True)
    return [info for _, info in rows]


def copy_session(source: Session, home: Path, name: str) -> Session:
    """Copy `source`'s journal and tool outputs into a new session NAME; never overwrite one.

    The copy gets an `end` entry saying where it came from, so `nex sessions` lists it as
    saved rather than as an interrupted run.
    """
    target = Session.create(home, name)  # atomic: a UsageError if NAME exists
    shutil.copyfile(source.journal_path, target.journal_path)
    if source.outputs_dir.is_dir():
        shutil.copytree(source.outputs_dir, target.outputs_dir, dirs_exist_ok=True)
    with target:
        target.lock()
        target.append("end", status="saved", exit_reason="saved", saved_from=source.id)
    return target
