"""The short unified diff an edit_file / write_file result carries, and the REPL shows before
asking: the model learns what it changed, the person sees what they approve.

Capped in lines and in characters, so rewriting a large file costs the context a few hundred
tokens, not the file twice.
"""

from __future__ import annotations

import difflib

MAX_LINES = 60
MAX_CHARS = 3000
CONTEXT = 2


def unified(shown: str, before: str | None, after: str) -> str:
    """The diff from `before` (None: a new file) to `after` for the file named `shown`."""
    old = [] if before is None else before.splitlines()
    rows = list(
        difflib.unified_diff(
            old,
            after.splitlines(),
            "/dev/null" if before is None else f"a/{shown}",
            f"b/{shown}",
            n=CONTEXT,
            lineterm="",
        )
    )
    if not rows:
        return ""
    kept: list[str] = []
    used = 0
    for row in rows:
        if len(kept) >= MAX_LINES or used + len(row) > MAX_CHARS:
            kept.append(f"[... diff cut: {len(rows) - len(kept)} more lines]")
            break
        kept.append(row)
        used += len(row) + 1
    return "\n".join(kept)


def colored(diff: str) -> str:
    """`diff` with ANSI colors for a terminal: additions green, removals red, hunks cyan."""
    out = []
    for row in diff.splitlines():
        if row.startswith(("+++", "---")):
            out.append(f"\x1b[1m{row}\x1b[0m")
        elif row.startswith("+"):
            out.append(f"\x1b[32m{row}\x1b[0m")
        elif row.startswith("-"):
            out.append(f"\x1b[31m{row}\x1b[0m")
        elif row.startswith("@@"):
            out.append(f"\x1b[36m{row}\x1b[0m")
        else:
            out.append(row)
    return "\n".join(out)
