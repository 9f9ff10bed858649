"""`@path` in a REPL message: completion of work-dir paths, and the file's text sent with it.

A mention is `@` at the start of a word followed by a path relative to the work dir. Its file
is appended to the message once, fenced and labelled, so the model sees it without a tool call.
Only files inside the work dir are read (symlinks followed, as the file tools do), and only text
up to `MAX_INCLUDE_BYTES`; anything else leaves the message as typed and gets a note for the
person. A word that does not look like a path (`@dataclass`, `@alice`) is left alone silently.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from nexpy.tools.base import ToolError
from nexpy.tools.paths import display, resolve

MAX_INCLUDE_BYTES = 100_000  # per file: a bigger one is left to the model's read_file
COMPLETIONS = 200  # at most this many entries offered at once
_MENTION = re.compile(r"(?<!\S)@([\w.~/+-]*[\w/+-])")
_PARTIAL = re.compile(r"(?<!\S)@([\w.~/+-]*)$")


@dataclass
class Included:
    """The message to send and the notes for the person (files left out, and why)."""

    text: str
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _looks_like_path(name: str) -> bool:
    return "/" in name or "." in name


def _read_text(path: Path) -> str | None:
    """The file's text, or None when it is binary (a NUL byte, or not UTF-8)."""
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def include_files(text: str, workdir: Path) -> Included:
    """Append the text of every `@path` file of `workdir` mentioned in `text`, once each."""
    workdir = workdir.resolve()
    result = Included(text)
    added: list[str] = []
    seen: set[Path] = set()
    for match in _MENTION.finditer(text):
        name = match.group(1)
        try:
            path = resolve(workdir, name)
        except ToolError:
            if _looks_like_path(name):
                result.notes.append(f"@{name}: outside the work dir; not included")
            continue
        if path in seen:
            continue
        if not path.exists():
            if _looks_like_path(name):
                result.notes.append(f"@{name}: no such file in the work dir; not included")
            continue
        seen.add(path)
        shown = display(workdir, path)
        if not path.is_file():
            result.notes.append(f"@{name}: {shown} is not a file; not included")
            continue
        size = path.stat().st_size
        if size > MAX_INCLUDE_BYTES:
            result.notes.append(
                f"@{name}: {size:,} bytes, over the {MAX_INCLUDE_BYTES:,}-byte limit; not "
                "included (the model can read it with its tools)"
            )
            continue
        try:
            body = _read_text(path)
        except OSError as e:
            result.notes.append(f"@{name}: cannot read it ({e.strerror}); not included")
            continue
        if body is None:
            result.notes.append(f"@{name}: a binary file; not included")
            continue
        result.files.append(shown)
        added.append(f"[file {shown}]\n```\n{body.rstrip()}\n```")
    if added:
        result.text = "\n\n".join([text, *added])
    return result


class PathCompleter(Completer):
    """Completes the `@path` word under the cursor with entries of the work dir.

    Only names inside the work dir are offered: an absolute path, `~` or a `..` step yields
    nothing. Directories end in `/` so completing goes on into them; hidden entries are
    offered only once a `.` is typed.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        match = _PARTIAL.search(document.text_before_cursor)
        if match is None:
            return
        partial = match.group(1)
        head, _, stem = partial.rpartition("/")
        if partial.startswith(("/", "~")) or ".." in head.split("/"):
            return
        workdir = self.workdir.resolve()
        try:
            folder = resolve(workdir, head or ".")
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except (ToolError, OSError):
            return
        offered = 0
        for entry in entries:
            if not entry.name.startswith(stem) or (entry.name[0] == "." and not stem):
                continue
            name = f"{head}/{entry.name}" if head else entry.name
            is_dir = entry.is_dir()
            yield Completion(
                name + ("/" if is_dir else ""),
                start_position=-len(partial),
                display=entry.name + ("/" if is_dir else ""),
            )
            offered += 1
            if offered >= COMPLETIONS:
                return
