"""Where edit_file's `old_string` is in a file: exact first, then tolerant, never ambiguous.

Small models copy text back with the wrong line endings, trailing spaces or indentation. The
passes, in order, each used only when the one before found nothing:

    exact        the text as given (every occurrence counts: replace_all works here only)
    line ends    CRLF/LF and trailing whitespace ignored, whole lines compared
    indentation  leading whitespace ignored too; `new_string` is re-indented to the file's

A tolerant pass must find exactly one place; two or more is an error naming how many, so an edit
never lands on a guess. A miss returns the closest lines of the file, numbered, so the model can
copy the real text on its next try.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

CLOSEST_CONTEXT = 2  # lines shown around the closest match
CLOSEST_MAX_LINES = 30
CANDIDATES = 8  # anchor lines scored in full when looking for the closest match
MAX_SCAN_LINES = 50_000  # beyond this a miss only says "not found" (the scan is per line)


@dataclass(frozen=True)
class Match:
    """Where old_string is: `count` exact occurrences, or one tolerant span of text."""

    count: int
    start: int = 0  # for a tolerant match: the char span in the file's text ...
    end: int = 0
    replacement: str = ""  # ... and what goes there (new_string in the file's style)
    how: str = "exact"  # exact | line ends | indentation


class Ambiguous(Exception):
    def __init__(self, count: int, how: str) -> None:
        super().__init__(f"{count} places after ignoring {how}")
        self.count = count
        self.how = how


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _norms() -> list[tuple[str, Callable[[str], str]]]:
    return [("line ends", lambda s: s.rstrip()), ("indentation", lambda s: s.strip())]


def _lines(text: str) -> list[str]:
    """Lines with their endings, so offsets add up to the text."""
    return text.splitlines(keepends=True)


def find(text: str, old: str, new: str) -> Match | None:
    """Where `old` is in `text` (None: nowhere). Raises Ambiguous for a tolerant pass that
    matches more than one place."""
    count = text.count(old)
    if count:
        return Match(count)
    file_lines = _lines(text)
    old_lines = old.replace("\r\n", "\n").split("\n")
    while len(old_lines) > 1 and not old_lines[-1].strip():
        old_lines.pop()  # a trailing newline (or blank tail) is not a line to match
    while len(old_lines) > 1 and not old_lines[0].strip():
        old_lines.pop(0)
    if not any(line.strip() for line in old_lines):
        return None
    n = len(old_lines)
    for how, norm in _norms():
        want = [norm(line) for line in old_lines]
        have = [norm(line) for line in file_lines]
        hits = [i for i in range(len(have) - n + 1) if have[i : i + n] == want]
        if len(hits) > 1:
            raise Ambiguous(len(hits), how)
        if hits:
            return _replace_lines(file_lines, hits[0], old_lines, new, how)
    return None


def _replace_lines(
    file_lines: list[str], at: int, old_lines: list[str], new: str, how: str
) -> Match:
    start = sum(len(line) for line in file_lines[:at])
    matched = file_lines[at : at + len(old_lines)]
    end = start + sum(len(line) for line in matched)
    last = matched[-1]
    eol = "\r\n" if last.endswith("\r\n") else "\n" if last.endswith("\n") else ""
    style = "\r\n" if any(line.endswith("\r\n") for line in file_lines) else "\n"
    new_lines = new.replace("\r\n", "\n").split("\n")
    if new_lines and new_lines[-1] == "" and len(new_lines) > 1:
        new_lines.pop()  # "a\n" is one line; the matched block's own ending is kept below
    if how == "indentation":
        new_lines = _reindent(new_lines, old_lines, matched)
    body = style.join(new_lines)
    if not new.strip():
        return Match(1, start, end, "", how)  # deleting the block deletes its lines
    return Match(1, start, end, body + eol, how)


def _reindent(new_lines: list[str], old_lines: list[str], matched: list[str]) -> list[str]:
    """Move `new_lines` from the model's indentation to the file's: each indent the model used
    on a matched line maps to the file's indent there (`    ` -> a tab, 2 -> 4 spaces); a new
    line takes the mapping of the longest such indent it starts with."""
    mapping: dict[str, str] = {}
    for theirs, ours in zip(old_lines, matched, strict=True):
        if theirs.strip():
            mapping.setdefault(_indent(theirs), _indent(ours.rstrip("\r\n")))
    keys = sorted(mapping, key=len, reverse=True)
    out = []
    for line in new_lines:
        indent = _indent(line)
        if line.strip():
            key = next((k for k in keys if indent.startswith(k)), None)
            if key is not None:
                line = mapping[key] + line[len(key) :]
        out.append(line)
    return out


def closest(text: str, old: str) -> tuple[int, list[str]] | None:
    """The lines of `text` most like `old` (1-based first line number, lines), or None."""
    file_lines = text.splitlines()
    if not file_lines or len(file_lines) > MAX_SCAN_LINES:
        return None
    old_lines = [line.strip() for line in old.splitlines() if line.strip()]
    if not old_lines:
        return None
    anchor = max(old_lines, key=len)  # the most telling line
    offset = old_lines.index(anchor)
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2(anchor)
    scored: list[tuple[float, int]] = []
    for i, line in enumerate(file_lines):
        matcher.set_seq1(line.strip())
        if matcher.real_quick_ratio() > 0.3 and matcher.quick_ratio() > 0.3:
            scored.append((matcher.ratio(), i))
    if not scored:
        return None
    scored.sort(reverse=True)
    whole = "\n".join(old_lines)
    best: tuple[float, int] | None = None
    for _, i in scored[:CANDIDATES]:
        start = max(0, i - offset)
        window = "\n".join(x.strip() for x in file_lines[start : start + len(old_lines)])
        ratio = difflib.SequenceMatcher(None, whole, window, autojunk=False).ratio()
        if best is None or ratio > best[0]:
            best = (ratio, start)
    assert best is not None
    if best[0] < 0.4:
        return None
    lo = max(0, best[1] - CLOSEST_CONTEXT)
    hi = min(len(file_lines), best[1] + len(old_lines) + CLOSEST_CONTEXT, lo + CLOSEST_MAX_LINES)
    return lo + 1, file_lines[lo:hi]
