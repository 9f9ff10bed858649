"""Where a path given by the model may point: inside the work dir, after following symlinks."""

from __future__ import annotations

import os
from pathlib import Path

from nexpy.tools.base import ToolError


def resolve(ctx_workdir: Path, path: str, *, must_exist: bool = False) -> Path:
    """The real absolute path of `path` (relative to the work dir), refused if it leaves it.

    Symlinks are followed before the check, so a link inside the work dir that points outside
    is refused; `..` is applied after following them, as the kernel would. A path that does not
    exist yet (a file about to be written) is checked through its deepest existing ancestor.
    """
    if not path or not path.strip():
        raise ToolError("path is empty")
    if "\x00" in path:
        raise ToolError("path contains a NUL byte")
    workdir = ctx_workdir.resolve()
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = workdir / candidate
    # Non-strict resolve is realpath: it follows every link that exists (dangling ones too,
    # to their target) and keeps the missing tail as written.
    real = candidate.resolve(strict=False)
    if not real.is_relative_to(workdir):
        raise ToolError(f"path {path} is outside the work dir {workdir}")
    if must_exist and not os.path.lexists(real):
        raise ToolError(f"{path} does not exist")
    return real


def display(workdir: Path, path: Path) -> str:
    """How a resolved path is shown to the model: relative to the work dir when inside it."""
    try:
        rel = path.relative_to(workdir)
    except ValueError:
        return str(path)
    return rel.as_posix() if rel.parts else "."
