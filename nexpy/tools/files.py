"""The file tools: read_file, write_file, edit_file, glob, grep.

Each does its disk work in a worker thread so a big read or a tree walk never stalls the event
loop (the REPL keeps drawing, Ctrl-C is seen at once). Walks check a stop flag, so a cancelled
glob or grep stops soon instead of running on unseen in the background.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
import os
import re
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from nexpy.sandbox import Sandbox
from nexpy.tools.base import Tool, ToolContext, ToolError
from nexpy.tools.diffs import unified
from nexpy.tools.matching import Ambiguous, closest, find
from nexpy.tools.output import OUTPUTS_PREFIX
from nexpy.tools.paths import display, resolve

READ_LIMIT = 2000  # lines per read_file call by default
MAX_LINE_CHARS = 2000  # longer lines are cut: one minified line must not fill the context
MAX_RESULTS = 500  # glob paths / grep matches per call
GREP_LINE_CHARS = 500  # shown per matching line, around the match
GREP_LINE_BYTES = 1 << 20
SNIFF_BYTES = 8192  # a NUL in the first 8 KiB marks a file as binary (as git and grep do)
SKIP_DIRS = frozenset({".git", ".hg", ".svn"})

T = TypeVar("T")


class _Stopped(Exception):
    """The awaiting task was cancelled; the worker thread gives up."""


# The tools' own threads: litellm queues its request building and logging on the loop's default
# executor, and a file read waiting behind them would add their time to every tool turn.
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="nex-tool")


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(*args, stop)` in a thread; on cancellation set `stop` so the walk ends early."""
    stop = threading.Event()
    try:
        call = functools.partial(fn, *args, stop)
        return await asyncio.get_running_loop().run_in_executor(_POOL, call)
    except asyncio.CancelledError:
        stop.set()
        raise


def _workdir(ctx: ToolContext) -> Path:
    return ctx.workdir.resolve()


def _fenced(ctx: ToolContext, real: Path, path: str, *, write: bool = False) -> Path:
    """`real`, unless the sandbox hides it or (for a write) the sandbox is read-only."""
    if write and not ctx.sandbox.writable:
        raise ToolError(f"cannot write {path}: the sandbox is read-only (--sandbox read-only)")
    if ctx.sandbox.is_hidden(real):
        raise ToolError(f"{path} is hidden by the sandbox (a secret such as ~/.ssh or nex's state)")
    return real


def _resolve_readable(ctx: ToolContext, path: str) -> tuple[Path, str]:
    """Resolve a path for reading: the work dir first, then the session's kept outputs.

    `tool-outputs/<name>` (what a capped result names) maps into `ctx.outputs_dir` when the
    work dir has no such file, as does an absolute path inside that folder.
    Returns the real path and how to name it to the model.
    """
    workdir = _workdir(ctx)
    outputs = ctx.outputs_dir.resolve() if ctx.outputs_dir is not None else None
    # A NUL byte goes straight to resolve(), which refuses it in words.
    if outputs is not None and path.strip() and "\x00" not in path:
        parts = PurePosixPath(path.strip()).parts
        if parts and parts[0] == OUTPUTS_PREFIX.rstrip("/"):
            try:
                real = resolve(workdir, path)
            except ToolError:
                real = None
            if real is None or not real.exists():
                inner = "/".join(parts[1:]) or "."
                try:
                    real = resolve(outputs, inner, must_exist=True)
                except ToolError:
                    # Word it as for any path: the work dir is the fence the model knows.
                    if Path(outputs, inner).resolve().is_relative_to(outputs):
                        raise ToolError(f"{path} does not exist") from None
                    raise ToolError(f"path {path} is outside the work dir {workdir}") from None
                return real, OUTPUTS_PREFIX + display(outputs, real)
        elif Path(path).is_absolute():
            real = Path(path).resolve()
            if real.is_relative_to(outputs):
                if not real.exists():
                    raise ToolError(f"{path} does not exist")
                return real, OUTPUTS_PREFIX + display(outputs, real)
    real = _fenced(ctx, resolve(workdir, path, must_exist=True), path)
    return real, display(workdir, real)


def _is_binary(head: bytes) -> bool:
    return b"\x00" in head


def _lines(f: Any, max_bytes: int) -> Iterator[tuple[bytes, int]]:
    """Lines of a binary file as (first `max_bytes` bytes, bytes beyond them).

    A single huge line is skipped over in pieces rather than read into memory whole.
    """
    while True:
        chunk: bytes = f.readline(max_bytes)
        if not chunk:
            return
        if chunk.endswith(b"\n") or len(chunk) < max_bytes:
            yield chunk, 0
            continue
        extra = 0
        while True:
            rest: bytes = f.readline(1 << 20)
            if not rest:
                break
            extra += len(rest)
            if rest.endswith(b"\n"):
                break
        yield chunk, extra


def _decode_line(chunk: bytes, extra: int, max_chars: int) -> str:
    # Undecodable bytes become U+FFFD so a latin-1 file stays readable; edit_file, which
    # would write the text back, refuses such files instead.
    text = chunk.decode("utf-8", errors="replace").rstrip("\r\n")
    if extra or len(text) > max_chars:
        total = len(chunk) + extra
        text = f"{text[:max_chars]} [... line cut; {total} bytes in all]"
    return text


def _count_rest(f: Any) -> int:
    """Lines left in `f` from its position, counted in bulk (no decoding)."""
    count = 0
    last = b""
    while True:
        block: bytes = f.read(1 << 20)
        if not block:
            break
        count += block.count(b"\n")
        last = block[-1:]
    return count + (1 if last and last != b"\n" else 0)


# -- read_file ------------------------------------------------------------------------------


def _read_file(args: dict[str, Any], ctx: ToolContext, stop: threading.Event) -> str:
    real, shown = _resolve_readable(ctx, args["path"])
    if real.is_dir():
        raise ToolError(f"{shown} is a directory; use glob to list it")
    offset: int = args.get("offset", 1)
    limit: int = args.get("limit", READ_LIMIT)
    # Stop at about the result cap ourselves and point at the next offset: better than
    # letting execute() cut the middle out of a file listing.
    budget = max(ctx.output_cap - 300, 1000)

    out: list[str] = []
    used = 0
    lineno = 0
    more = False
    with open(real, "rb") as f:
        if _is_binary(f.read(SNIFF_BYTES)):
            raise ToolError(f"{shown} is a binary file; read_file shows text files only")
        f.seek(0)
        for chunk, extra in _lines(f, MAX_LINE_CHARS * 4):
            if stop.is_set():
                raise _Stopped
            lineno += 1
            if lineno < offset:
                continue
            if b"\x00" in chunk:
                raise ToolError(f"{shown} is a binary file; read_file shows text files only")
            row = f"{lineno:>6}\t{_decode_line(chunk, extra, MAX_LINE_CHARS)}"
            if len(out) >= limit or (out and used + len(row) + 1 > budget):
                more = True
                break
            out.append(row)
            used += len(row) + 1
        total = lineno + _count_rest(f) if more else lineno

    if not out:
        if total == 0:
            return f"({shown} is empty)"
        raise ToolError(f"offset {offset} is past the end of {shown} ({total} lines)")
    last = offset + len(out) - 1
    if more:
        out.append(f"[lines {offset}-{last} of {total}; continue with offset={last + 1}]")
    return "\n".join(out)


async def _run_read_file(args: dict[str, Any], ctx: ToolContext) -> str:
    return await _in_thread(_read_file, args, ctx)


# -- write_file / edit_file -----------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file in the same dir + os.replace: a reader never sees half a file.

    The file keeps its permission bits (an executable script stays executable).
    """
    try:
        mode: int | None = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    # 0o666 lets the umask decide a new file's mode, as a plain open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            # Without fsync a crash after the rename can leave an empty file on some filesystems.
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass
class Change:
    """What a write_file / edit_file call will do, worked out before anything is written (so
    the REPL can show the diff before it asks)."""

    real: Path
    shown: str
    before: str | None  # None: a new file (or one that is not text)
    after: str
    summary: str

    def diff(self) -> str:
        return unified(self.shown, self.before, self.after)

    def apply(self) -> str:
        """Write the file; the result carries the diff when an existing file changed (a new
        file's content is what the model just sent: echoing it back would only cost tokens)."""
        _atomic_write(self.real, self.after.encode("utf-8"))
        diff = self.diff() if self.before is not None else ""
        return f"{self.summary}\n{diff}" if diff else self.summary


def _text_or_none(path: Path) -> str | None:
    """The file's text for a diff, or None if it is missing, binary, not UTF-8 or huge."""
    try:
        if path.stat().st_size > 1 << 20:
            return None
        raw = path.read_bytes()
        return None if _is_binary(raw[:SNIFF_BYTES]) else raw.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _plan_write(args: dict[str, Any], ctx: ToolContext) -> Change:
    workdir = _workdir(ctx)
    real = _fenced(ctx, resolve(workdir, args["path"]), args["path"], write=True)
    shown = display(workdir, real)
    if real.is_dir():
        raise ToolError(f"{shown} is a directory")
    content: str = args["content"]
    size = len(content.encode("utf-8"))
    return Change(real, shown, _text_or_none(real), content, f"wrote {size} bytes to {shown}")


def _write_file(args: dict[str, Any], ctx: ToolContext, stop: threading.Event) -> str:
    return _plan_write(args, ctx).apply()


async def _run_write_file(args: dict[str, Any], ctx: ToolContext) -> str:
    return await _in_thread(_write_file, args, ctx)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _plan_edit(args: dict[str, Any], ctx: ToolContext) -> Change:
    workdir = _workdir(ctx)
    real = _fenced(ctx, resolve(workdir, args["path"], must_exist=True), args["path"], write=True)
    shown = display(workdir, real)
    old: str = args["old_string"]
    new: str = args["new_string"]
    replace_all: bool = args.get("replace_all", False)
    if real.is_dir():
        raise ToolError(f"{shown} is a directory")
    if not old:
        raise ToolError("old_string is empty; use write_file to create or overwrite a file")
    if old == new:
        raise ToolError("old_string and new_string are the same; nothing to change")
    raw = real.read_bytes()
    if _is_binary(raw[:SNIFF_BYTES]):
        raise ToolError(f"{shown} is a binary file; edit_file edits text files only")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        # Editing through a lossy decode would rewrite bytes the model never saw.
        raise ToolError(
            f"{shown} is not UTF-8 text (byte {e.start}); edit_file cannot edit it"
        ) from None
    count = text.count(old)
    if count == 0 and "\r\n" in text and "\n" in old and "\r\n" not in old:
        # The model writes "\n"; a CRLF file has "\r\n". Match and write in the file's style.
        old = old.replace("\n", "\r\n")
        new = new.replace("\r\n", "\n").replace("\n", "\r\n")
    try:
        match = find(text, old, new)
    except Ambiguous as e:
        raise ToolError(
            f"old_string is not in {shown} exactly, and matches {e.count} places after ignoring "
            f"{e.how}; copy the text exactly, with enough surrounding lines to make it unique"
        ) from None
    if match is None:
        raise _not_found(shown, text, old)
    if match.count > 1 and not replace_all:
        raise ToolError(
            f"old_string occurs {match.count} times in {shown}; add surrounding lines to make it "
            "unique, or pass replace_all=true"
        )
    if match.how == "exact":
        after = text.replace(old, new)
        note = ""
    else:
        after = text[: match.start] + match.replacement + text[match.end :]
        note = f" (matched after ignoring {match.how}; read the file before the next edit)"
    summary = f"edited {shown}: replaced {_plural(match.count, 'occurrence')}{note}"
    return Change(real, shown, text, after, summary)


def _edit_file(args: dict[str, Any], ctx: ToolContext, stop: threading.Event) -> str:
    return _plan_edit(args, ctx).apply()


def preview(name: str, args: dict[str, Any], ctx: ToolContext) -> str:
    """The diff a write_file / edit_file call would make, for the person asked to approve it;
    "" for another tool or a call that will fail (the failure speaks for itself)."""
    plans = {"write_file": _plan_write, "edit_file": _plan_edit}
    if name not in plans:
        return ""
    try:
        return plans[name](args, ctx).diff()
    except (ToolError, OSError, KeyError, TypeError, AttributeError):
        return ""


def _not_found(shown: str, text: str, old: str) -> ToolError:
    """A miss, with the file's closest lines so the model can copy the real text."""
    message = (
        f"old_string not found in {shown}; read the file and copy the text exactly, "
        "whitespace and indentation included"
    )
    near = closest(text, old)
    if near is None:
        return ToolError(message)
    first, lines = near
    numbered = "\n".join(f"{first + i:>6}\t{line}" for i, line in enumerate(lines))
    return ToolError(
        message,
        output=f"error: {message}. The closest lines of {shown} are:\n{numbered}",
    )


async def _run_edit_file(args: dict[str, Any], ctx: ToolContext) -> str:
    return await _in_thread(_edit_file, args, ctx)


# -- glob patterns --------------------------------------------------------------------------


def expand_braces(pattern: str, _limit: int = 256) -> list[str]:
    """`a.{py,pyi}` -> [`a.py`, `a.pyi`], nested and repeated groups included."""
    depth = 0
    start = -1
    commas: list[int] = []
    for i, ch in enumerate(pattern):
        if ch == "{":
            if depth == 0:
                start = i
                commas = []
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                if not commas:
                    continue  # "{x}" is literal, as in bash
                pre, post = pattern[:start], pattern[i + 1 :]
                bounds = [start, *commas, i]
                out: list[str] = []
                for a, b in itertools.pairwise(bounds):
                    for tail in expand_braces(pre + pattern[a + 1 : b] + post, _limit):
                        out.append(tail)
                        if len(out) > _limit:
                            raise ToolError(f"pattern {pattern} expands to too many alternatives")
                return out
        elif ch == "," and depth == 1:
            commas.append(i)
    return [pattern]


def _segment_regex(seg: str) -> str:
    """One path segment of a glob as a regex; `*`, `?` and `[...]` never cross a `/`."""
    out: list[str] = []
    i = 0
    while i < len(seg):
        ch = seg[i]
        if ch == "*":
            while i + 1 < len(seg) and seg[i + 1] == "*":
                i += 1
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            j = i + 1
            if j < len(seg) and seg[j] in "!^":
                j += 1
            if j < len(seg) and seg[j] == "]":
                j += 1
            while j < len(seg) and seg[j] != "]":
                j += 1
            if j >= len(seg):
                out.append(re.escape(ch))  # unclosed "[" is a literal
            else:
                body = seg[i + 1 : j]
                neg = body[:1] in ("!", "^")
                if neg:
                    body = body[1:]
                body = body.replace("\\", "\\\\")
                out.append(f"[{'^' if neg else ''}{body}]")
                i = j
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


def glob_regex(pattern: str) -> str:
    """A brace-free glob as a regex over '/'-separated relative paths; `**` spans dirs."""
    segs = [s for s in pattern.split("/") if s not in ("", ".")]
    parts: list[str] = []
    for i, seg in enumerate(segs):
        last = i == len(segs) - 1
        if seg == "**":
            parts.append(".*" if last else "(?:.*/)?")
        else:
            parts.append(_segment_regex(seg) + ("" if last else "/"))
    return "".join(parts)


def _has_magic(seg: str) -> bool:
    return any(c in seg for c in "*?[")


def _walk(
    start: Path,
    workdir: Path,
    stop: threading.Event,
    max_depth: int | None = None,
    sandbox: Sandbox | None = None,
) -> Iterator[Path]:
    """Files under `start`, depth-first in name order, never leaving the work dir.

    Symlinked dirs are not entered and symlinked files whose target lies outside the work
    dir are left out, so nothing reached through a link escapes. VCS dirs are skipped.
    """
    for dirpath, dirnames, filenames in os.walk(start, followlinks=False):
        if stop.is_set():
            raise _Stopped
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        if sandbox is not None and sandbox.confined:
            dirnames[:] = [d for d in dirnames if not sandbox.is_hidden(here / d)]
        if max_depth is not None and len(here.relative_to(start).parts) >= max_depth:
            dirnames[:] = []
        for name in sorted(filenames):
            p = here / name
            if sandbox is not None and sandbox.is_hidden(p):
                continue
            if p.is_symlink():
                target = p.resolve()
                if not target.is_relative_to(workdir) or not target.is_file():
                    continue
            yield p


def _glob(args: dict[str, Any], ctx: ToolContext, stop: threading.Event) -> str:
    workdir = _workdir(ctx)
    pattern: str = args["pattern"].strip()
    if not pattern:
        raise ToolError("pattern is empty")
    base = resolve(workdir, args.get("path") or ".", must_exist=True)
    if not base.is_dir():
        raise ToolError(f"{display(workdir, base)} is not a directory")
    if pattern.startswith("/"):
        # An absolute pattern is fine if it lies inside the search dir.
        try:
            pattern = PurePosixPath(pattern).relative_to(base.as_posix()).as_posix()
        except ValueError:
            raise ToolError(
                f"pattern {args['pattern']} is outside {display(workdir, base)}; "
                "give a relative pattern and choose the directory with path"
            ) from None
    if ".." in pattern.split("/"):
        raise ToolError("pattern must not contain '..'; choose the directory with path")

    found: dict[Path, float] = {}
    for alt in expand_braces(pattern):
        segs = [s for s in alt.split("/") if s not in ("", ".")]
        if not segs:
            continue
        # Walk only below the literal prefix ("src/**/*.py" walks src/), and no deeper than
        # the pattern reaches when it has no "**".
        fixed: list[str] = []
        while len(segs) > 1 and not _has_magic(segs[0]):
            fixed.append(segs.pop(0))
        # The prefix may be a symlink: resolve() refuses it if it leads out of the work dir.
        start = resolve(workdir, display(workdir, base.joinpath(*fixed))) if fixed else base
        if not start.is_dir():
            continue
        depth = None if "**" in segs else len(segs) - 1
        rx = re.compile(glob_regex("/".join(segs)))
        for p in _walk(start, workdir, stop, depth, ctx.sandbox):
            if p not in found and rx.fullmatch(p.relative_to(start).as_posix()):
                found[p] = p.lstat().st_mtime

    if not found:
        hint = ""
        if "/" not in pattern and "**" not in pattern:
            hint = f" (a pattern without '/' looks in one directory; try **/{pattern})"
        return f"no files match {args['pattern']}{hint}"
    ordered = sorted(found, key=lambda p: (-found[p], p.as_posix()))
    lines = [display(workdir, p) for p in ordered[:MAX_RESULTS]]
    if len(ordered) > MAX_RESULTS:
        lines.append(
            f"[showing {MAX_RESULTS} of {len(ordered)} files, newest first; narrow the pattern]"
        )
    return "\n".join(lines)


async def _run_glob(args: dict[str, Any], ctx: ToolContext) -> str:
    return await _in_thread(_glob, args, ctx)


# -- grep -----------------------------------------------------------------------------------


def _show(ctx: ToolContext, path: Path) -> str:
    """A path as the model names it: relative to the work dir, or tool-outputs/<name>."""
    workdir = _workdir(ctx)
    if path.is_relative_to(workdir) or ctx.outputs_dir is None:
        return display(workdir, path)
    outputs = ctx.outputs_dir.resolve()
    if path.is_relative_to(outputs):
        return OUTPUTS_PREFIX + display(outputs, path)
    return str(path)


def _snippet(line: str, start: int, max_chars: int) -> str:
    """At most `max_chars` of a matched line, placed so the match itself shows."""
    if len(line) <= max_chars:
        return line
    lo = max(0, min(start - max_chars // 5, len(line) - max_chars))
    head = "[...] " if lo else ""
    tail = " [...]" if lo + max_chars < len(line) else ""
    return f"{head}{line[lo : lo + max_chars]}{tail}"


def _grep(args: dict[str, Any], ctx: ToolContext, stop: threading.Event) -> str:
    workdir = _workdir(ctx)
    flags = re.IGNORECASE if args.get("ignore_case") else 0
    try:
        rx = re.compile(args["pattern"], flags)
    except re.error as e:
        raise ToolError(f"bad regex {args['pattern']!r}: {e}") from None
    # (regex, match the bare name): a glob without "/" matches the file name at any depth,
    # as ripgrep's -g does; one with "/" matches the path below the searched directory.
    name_filters = [
        (re.compile(glob_regex(g)), "/" not in g) for g in expand_braces(args.get("glob") or "")
    ]
    name_filters = [f for f in name_filters if f[0].pattern]

    root, shown_root = _resolve_readable(ctx, args.get("path") or ".")
    if root.is_file():
        if _sniff_binary(root):
            raise ToolError(f"{shown_root} is a binary file; grep searches text files only")
        files: Iterator[Path] = iter([root])
        walk_root = root.parent
    else:
        inside = root.is_relative_to(workdir)
        # Outside the work dir grep only ever walks the session's kept outputs, which live in
        # the (hidden) state dir and are the model's own to search.
        files = _walk(
            root, workdir if inside else root, stop, None, ctx.sandbox if inside else None
        )
        walk_root = root

    out: list[str] = []
    for p in files:
        if stop.is_set():
            raise _Stopped
        if name_filters:
            rel = p.relative_to(walk_root).as_posix()
            if not any(r.fullmatch(p.name if bare else rel) for r, bare in name_filters):
                continue
        shown = shown_root if p == root else _show(ctx, p)
        try:
            with open(p, "rb") as f:
                if _is_binary(f.read(SNIFF_BYTES)):
                    continue
                f.seek(0)
                # Lines are matched on their first MiB: enough for minified code, bounded
                # memory for a file that is one enormous line.
                for lineno, (chunk, _extra) in enumerate(_lines(f, GREP_LINE_BYTES), 1):
                    line = chunk.decode("utf-8", errors="replace").rstrip("\r\n")
                    m = rx.search(line)
                    if m is None:
                        continue
                    out.append(f"{shown}:{lineno}:{_snippet(line, m.start(), GREP_LINE_CHARS)}")
                    if len(out) >= MAX_RESULTS:
                        out.append(
                            f"[stopped at {MAX_RESULTS} matches; narrow the pattern, path or glob]"
                        )
                        return "\n".join(out)
        except OSError:
            # An unreadable file (permissions, vanished mid-walk) is skipped, not fatal.
            continue
    return "\n".join(out) if out else f"no matches for {args['pattern']}"


def _sniff_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        return _is_binary(f.read(SNIFF_BYTES))


async def _run_grep(args: dict[str, Any], ctx: ToolContext) -> str:
    return await _in_thread(_grep, args, ctx)


# -- the tools as the model sees them -------------------------------------------------------


def _schema(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }


_PATH = {"type": "string", "description": "File path, relative to the work dir"}

READ_FILE = Tool(
    name="read_file",
    description=(
        "Read a text file; lines come numbered. Reads up to 2000 lines from `offset`; the "
        "result says how to continue. Also opens kept full outputs (tool-outputs/<name>)."
    ),
    parameters=_schema(
        {
            "path": _PATH,
            "offset": {"type": "integer", "minimum": 1, "description": "First line (1-based)"},
            "limit": {"type": "integer", "minimum": 1, "description": "Max lines to read"},
        },
        ["path"],
    ),
    mutating=False,
    run=_run_read_file,
)

WRITE_FILE = Tool(
    name="write_file",
    description="Create or overwrite a file with `content` (parent dirs are created).",
    parameters=_schema(
        {"path": _PATH, "content": {"type": "string", "description": "The whole new file"}},
        ["path", "content"],
    ),
    mutating=True,
    run=_run_write_file,
)

EDIT_FILE = Tool(
    name="edit_file",
    description=(
        "Replace the exact text `old_string` with `new_string` in a file. `old_string` must "
        "match once (include enough context), or pass replace_all=true."
    ),
    parameters=_schema(
        {
            "path": _PATH,
            "old_string": {"type": "string", "description": "Exact text to replace"},
            "new_string": {"type": "string", "description": "Text to put in its place"},
            "replace_all": {
                "type": "boolean",
                "description": "Replace every occurrence (default false)",
            },
        },
        ["path", "old_string", "new_string"],
    ),
    mutating=True,
    run=_run_edit_file,
)

GLOB = Tool(
    name="glob",
    description=(
        "Find files by glob pattern (`**/*.py`, `src/*.{ts,tsx}`); newest first, at most 500."
    ),
    parameters=_schema(
        {
            "pattern": {"type": "string", "description": "Glob, relative to `path`"},
            "path": {"type": "string", "description": "Directory to search (default: work dir)"},
        },
        ["pattern"],
    ),
    mutating=False,
    run=_run_glob,
)

GREP = Tool(
    name="grep",
    description=(
        "Search file contents with a Python regex; prints path:line:text, at most 500 matches. "
        "Binary files and .git are skipped."
    ),
    parameters=_schema(
        {
            "pattern": {"type": "string", "description": "Python regular expression"},
            "path": {"type": "string", "description": "File or directory (default: work dir)"},
            "glob": {"type": "string", "description": "Only files matching this, e.g. *.py"},
            "ignore_case": {"type": "boolean", "description": "Case-insensitive match"},
        },
        ["pattern"],
    ),
    mutating=False,
    run=_run_grep,
)
