"""Undo: the pre-image of everything a mutating tool call changes, kept in the session folder.

Before a mutating call runs, `Recorder.before` journals an `undo.pre` entry naming what it may
change, with the content it has now stored as a blob under `<session>/undo/` (fsynced before
the entry, so a `kill -9` at any later point still leaves a restorable pre-image):

    write_file / edit_file   the target file (absent: it will be created)
    bash                     a manifest of the whole work dir (path -> blob), kept cheap by
                             re-hashing only files whose size or mtime changed since the last one

After the call, `undo.post` records what each changed file became. `revert` walks the last N
turns' calls backwards and puts every file back, byte for byte, except one changed since by the
user (its content is no longer what the tool left): that one is named and skipped. A call cut
off by a crash has no `undo.post`; its changes are found by comparing with the pre-image. No
git needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexpy.errors import UsageError
from nexpy.session import Session
from nexpy.tools.paths import resolve

UNDO_DIR = "undo"
SKIP_DIRS = frozenset({".git", ".hg", ".svn", "node_modules", ".venv", "__pycache__"})
MAX_FILE_BYTES = 8 << 20  # a bigger file is not backed up by the bash scan (named as such)
MAX_SCAN_FILES = 20_000  # a work dir with more is not scanned: bash changes are not undoable
FILE_TOOLS = ("write_file", "edit_file")

Manifest = dict[str, str]  # relative path -> blob hash


def _walk(workdir: Path) -> Iterator[tuple[str, list[str]]]:
    """(dir, file names) of the work dir, without VCS dirs, dependency trees and caches (a
    directory holding a CACHEDIR.TAG, as mypy, ruff and pytest mark theirs): what a tool run
    rebuilds is not worth a copy per session."""
    for dirpath, dirnames, filenames in os.walk(workdir):
        if "CACHEDIR.TAG" in filenames:
            dirnames[:] = []
            continue
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        yield dirpath, filenames


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Blobs:
    """Content-addressed file contents in `<session>/undo/`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, data: bytes) -> str:
        digest = _sha(data)
        path = self.root / digest
        if not path.exists():
            self.root.mkdir(mode=0o700, exist_ok=True)
            tmp = self.root / f".{digest}.{secrets.token_hex(4)}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        return digest

    def get(self, digest: str) -> bytes:
        return (self.root / digest).read_bytes()


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes() if path.is_file() else None
    except OSError:
        return None


class Recorder:
    """Records pre-images for one agent's mutating tool calls into its session."""

    def __init__(self, session: Session, workdir: Path) -> None:
        self.session = session
        self.workdir = workdir.resolve()
        self.blobs = Blobs(session.path / UNDO_DIR)
        self._stat: dict[str, tuple[int, int, str]] = {}  # rel -> (size, mtime_ns, hash)
        self.warned = False

    def before(self, call_id: str, name: str, args: dict[str, Any], turn: int) -> Any:
        """Store the pre-image of what the call may change; return what `after` needs."""
        if name in FILE_TOOLS:
            try:
                path = resolve(self.workdir, str(args.get("path", "")))
            except Exception:
                return None  # the tool will refuse the path itself
            rel = path.relative_to(self.workdir).as_posix()
            data = _read(path)
            files = {rel: None if data is None else self.blobs.put(data)}
            self.session.append("undo.pre", call=call_id, tool=name, turn=turn, files=files)
            return ("files", files)
        manifest = self.scan()
        if manifest is None:
            return None
        digest = self.blobs.put(json.dumps(manifest, sort_keys=True).encode())
        self.session.append("undo.pre", call=call_id, tool=name, turn=turn, manifest=digest)
        return ("manifest", manifest)

    def after(self, call_id: str, token: Any) -> None:
        """Record what the call changed: each file's content before and after."""
        if token is None:
            return
        what, data = token
        if what == "files":
            changes = {
                rel: {"before": before, "after": self._hash_now(rel)}
                for rel, before in data.items()
            }
        else:
            now = self.scan() or {}
            changes = {
                rel: {"before": data.get(rel), "after": now.get(rel)}
                for rel in sorted(set(data) | set(now))
                if data.get(rel) != now.get(rel)
            }
        changes = {rel: c for rel, c in changes.items() if c["before"] != c["after"]}
        self.session.append("undo.post", call=call_id, files=changes)

    def _hash_now(self, rel: str) -> str | None:
        data = _read(self.workdir / rel)
        return None if data is None else self.blobs.put(data)

    def scan(self) -> Manifest | None:
        """Every file of the work dir -> the hash of its content (stored); None if too big."""
        out: Manifest = {}
        for dirpath, filenames in _walk(self.workdir):
            for name in filenames:
                path = Path(dirpath, name)
                rel = path.relative_to(self.workdir).as_posix()
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if not path.is_file() or path.is_symlink() or st.st_size > MAX_FILE_BYTES:
                    continue
                known = self._stat.get(rel)
                if known is not None and known[:2] == (st.st_size, st.st_mtime_ns):
                    out[rel] = known[2]
                    continue
                data = _read(path)
                if data is None:
                    continue
                digest = self.blobs.put(data)
                self._stat[rel] = (st.st_size, st.st_mtime_ns, digest)
                out[rel] = digest
                if len(out) > MAX_SCAN_FILES:
                    return None
        return out


@dataclass
class Call:
    """One mutating call as the journal tells it."""

    id: str
    tool: str
    turn: int
    files: dict[str, dict[str, str | None]] = field(default_factory=dict)  # rel -> before/after
    manifest: str | None = None
    finished: bool = False


def calls_of(entries: list[dict[str, Any]]) -> list[Call]:
    """The recorded mutating calls not undone yet, in order."""
    calls: dict[str, Call] = {}
    undone: set[str] = set()
    for e in entries:
        kind = e.get("kind")
        if kind == "undo.pre":
            # No "after" until undo.post says what the call left: a crash leaves it unknown.
            pre = {rel: {"before": h} for rel, h in (e.get("files") or {}).items()}
            calls[e["call"]] = Call(e["call"], e.get("tool", ""), e.get("turn", 0), pre)
            calls[e["call"]].manifest = e.get("manifest")
        elif kind == "undo.post" and e.get("call") in calls:
            call = calls[e["call"]]
            call.files, call.finished = e.get("files") or {}, True
        elif kind == "undone":
            undone.update(e.get("calls", []))
    return [c for c in calls.values() if c.id not in undone]


@dataclass
class Report:
    restored: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path: why"
    calls: list[str] = field(default_factory=list)
    turns: int = 0

    def lines(self) -> list[str]:
        out = [f"restored {p}" for p in self.restored]
        out += [f"deleted {p} (the session created it)" for p in self.deleted]
        out += [f"skipped {s}" for s in self.skipped]
        return out

    def note(self) -> str:
        """The message the conversation gets, so the model knows its changes are gone."""
        changed = ", ".join(self.restored + self.deleted) or "no files"
        return (
            f"[nex] The user undid the file changes of the last {self.turns} turn(s): "
            f"{changed} are back as they were before. Read files again before editing them."
        )


def revert(session: Session, workdir: Path, turns: int = 1) -> Report:
    """Undo the changes of the last `turns` turns that changed something; journal it."""
    workdir = workdir.resolve()
    blobs = Blobs(session.path / UNDO_DIR)
    calls = calls_of(session.entries())
    wanted = sorted({c.turn for c in calls}, reverse=True)[:turns]
    chosen = [c for c in calls if c.turn in wanted]
    report = Report(turns=len(wanted))
    for call in reversed(chosen):
        for rel, change in sorted(_changes(call, workdir, blobs).items()):
            _restore_one(workdir / rel, rel, change, blobs, report)
        report.calls.append(call.id)
    if report.calls:
        session.append("undone", calls=report.calls, files=report.restored + report.deleted)
    return report


def _changes(call: Call, workdir: Path, blobs: Blobs) -> dict[str, dict[str, str | None]]:
    if call.finished or call.manifest is None:
        return call.files  # a file tool cut off by a crash: its pre-image, after unknown
    # A bash call cut off by a crash: what differs from the manifest now is its doing.
    manifest: Manifest = json.loads(blobs.get(call.manifest))
    changes: dict[str, dict[str, str | None]] = {}
    now: set[str] = set()
    for dirpath, filenames in _walk(workdir):
        for name in filenames:
            rel = Path(dirpath, name).relative_to(workdir).as_posix()
            now.add(rel)
            data = _read(workdir / rel)
            if data is not None and manifest.get(rel) != _sha(data):
                changes[rel] = {"before": manifest.get(rel)}
    for rel in set(manifest) - now:
        changes[rel] = {"before": manifest[rel]}
    return changes


def _restore_one(
    path: Path, rel: str, change: dict[str, str | None], blobs: Blobs, report: Report
) -> None:
    """Put one file back to `before` (None: absent). An "after" the tool left that the file no
    longer has means someone changed it since: skip it. No "after" (a crash): restore."""
    current = _read(path)
    now = None if current is None else _sha(current)
    before = change.get("before")
    if now == before:
        return  # already as it was
    if "after" in change and now != change["after"]:
        report.skipped.append(f"{rel}: changed since the session changed it; left as it is")
        return
    if before is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        report.deleted.append(rel)
        return
    from nexpy.tools.files import _atomic_write

    _atomic_write(path, blobs.get(before))
    report.restored.append(rel)


def session_diff(session: Session, workdir: Path) -> str:
    """What the session changed and still stands: each file from its first pre-image to now."""
    from nexpy.tools.diffs import unified

    workdir = workdir.resolve()
    blobs = Blobs(session.path / UNDO_DIR)
    first: dict[str, str | None] = {}
    for call in calls_of(session.entries()):
        for rel, change in _changes(call, workdir, blobs).items():
            first.setdefault(rel, change.get("before"))
    parts = []
    for rel, before in sorted(first.items()):
        old = None if before is None else blobs.get(before).decode("utf-8", "replace")
        now = _read(workdir / rel)
        new = "" if now is None else now.decode("utf-8", "replace")
        diff = unified(rel, old, new) if now is not None else f"--- a/{rel}\n+++ /dev/null"
        if diff:
            parts.append(diff)
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    """`nex undo [--session S] [N]`: revert the last N turns' file changes of a session."""
    from nexpy.args import UsageParser, positive
    from nexpy.session import state_home

    parser = UsageParser(
        prog="nex undo", description="Revert the file changes of a session's last N turns."
    )
    parser.add_argument("--session", metavar="S", help="the session (id or part of it)")
    parser.add_argument("n", nargs="?", type=positive(int), default=1, metavar="N")
    args = parser.parse_args(argv)
    session = Session.latest(state_home(), args.session)
    session.lock()
    try:
        cwd = session.meta().get("cwd")
        if not cwd:
            raise UsageError(f"session {session.id} has no work dir recorded; nothing to undo")
        report = revert(session, Path(cwd), args.n)
        if not report.calls:
            print(f"nex undo: session {session.id} has no changes left to undo")
            return 0
        session.append("message", message={"role": "user", "content": report.note()})
    finally:
        session.close()
    for line in report.lines():
        print(line)
    return 0
