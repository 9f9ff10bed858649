"""Capping a tool's output: the model sees head + tail, the session folder keeps the whole text.

The start of an output says what ran and the end says how it finished (an exit code, the last
error), so both ends are kept and the middle is replaced by one marker line that names the
file holding the full text. `read_file` maps `tool-outputs/<name>` back to that folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

OUTPUTS_PREFIX = "tool-outputs/"  # how the model names the kept outputs, wherever they live
_MAX_NAME = 100


@dataclass(frozen=True)
class Capped:
    """The text to show, whether it was cut, and where the full text went (if it was kept)."""

    text: str
    truncated: bool
    full_path: str | None


def safe_name(call_id: str) -> str:
    """A file-name stem from a call id: no separators, no leading dot, never empty."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", call_id).lstrip(".")[:_MAX_NAME]
    return stem or "call"


def _keep(text: str, outputs_dir: Path, call_id: str) -> Path:
    """Write the full text to a new file; ids repeat (local models reuse "call_0"), so never
    overwrite an earlier output that an earlier result still points to."""
    outputs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    stem = safe_name(call_id)
    n = 1
    while True:
        path = outputs_dir / (f"{stem}.txt" if n == 1 else f"{stem}-{n}.txt")
        try:
            # O_EXCL creates or fails, so two writers cannot pick the same name; 0600 whatever
            # the umask, since a command's output may hold anything of the user's.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            n += 1
            continue
        with open(fd, "w", encoding="utf-8", errors="replace") as f:
            f.write(text)
        return path


def _cut(text: str, budget: int) -> tuple[str, str]:
    """Head and tail that together fit `budget`, moved to line breaks when one is near."""
    head_n = budget // 2
    tail_n = budget - head_n
    head = text[:head_n]
    tail = text[len(text) - tail_n :] if tail_n > 0 else ""
    # Whole lines read better, but not at the price of losing most of the budget.
    nl = head.rfind("\n")
    if nl >= head_n * 3 // 4:
        head = head[: nl + 1]
    nl = tail.find("\n")
    if 0 <= nl < tail_n // 4:
        tail = tail[nl + 1 :]
    return head, tail


def cap(text: str, limit: int, *, outputs_dir: Path | None, call_id: str) -> Capped:
    """Cap `text` at about `limit` chars; when cut, keep the full text in `outputs_dir`.

    The marker line reads "[... N chars omitted; full output: tool-outputs/<name> ...]". When
    `outputs_dir` is None, or writing there fails, the marker says the text was not kept.
    """
    if len(text) <= limit:
        return Capped(text, False, None)

    full_path: Path | None = None
    where = "the full output was not kept"
    if outputs_dir is not None:
        try:
            full_path = _keep(text, outputs_dir, call_id)
            where = f"full output: {OUTPUTS_PREFIX}{full_path.name}"
        except OSError as e:
            where = f"the full output could not be kept ({e.strerror or e})"

    # Size the marker with the largest count it can show, then cut to fit what is left.
    longest = f"\n[... {len(text)} chars omitted; {where} ...]\n"
    head, tail = _cut(text, max(limit - len(longest), 0))
    omitted = len(text) - len(head) - len(tail)
    sep = "" if not head or head.endswith("\n") else "\n"
    marker = f"[... {omitted} chars omitted; {where} ...]"
    return Capped(
        f"{head}{sep}{marker}\n{tail}", True, str(full_path) if full_path is not None else None
    )
