"""Project instructions: AGENTS.md (or CLAUDE.md) files that go into nex's system prompt.

Found in this order, each a section of the prompt, the nearest last so it has the last word:

    <config dir>/AGENTS.md            the user's own, for every project (~/.config/nexpy/)
    <repo root>/AGENTS.md             ... every directory down to ...
    <work dir>/AGENTS.md

In each directory AGENTS.md wins; CLAUDE.md is read only when there is no AGENTS.md. Without a
repository (no `.git` above the work dir) only the work dir is searched. The whole is capped in
tokens, so a small window keeps room for the conversation: the nearest files are kept first and
a file that is cut gets a warning naming it.

The text is read once per session and journaled (`instructions` entry); a resumed session uses
the journaled text, so its system prompt is byte for byte the one it started with (a server's
prompt cache stays warm, and the conversation does not change rules under the model's feet).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexpy.budget import CHARS_PER_TOKEN, TokenCounter

NAMES = ("AGENTS.md", "CLAUDE.md")  # per directory, the first that exists
MAX_TOKENS = 4096  # all files together; config `project_doc_max_tokens` changes it
HEADER = "# Project instructions\nFollow these instructions from the user's files.\n"


@dataclass
class Instructions:
    """The instruction files of a session and the text they add to the system prompt."""

    files: list[str] = field(default_factory=list)  # as found, farthest first
    text: str = ""  # "" when there are none
    warnings: list[str] = field(default_factory=list)

    def as_entry(self) -> dict[str, Any]:
        return {"files": self.files, "text": self.text}


def repo_root(workdir: Path) -> Path | None:
    """The nearest directory at or above `workdir` holding `.git` (a dir, or a worktree's file)."""
    for d in (workdir, *workdir.parents):
        if (d / ".git").exists():
            return d
    return None


def discover(workdir: Path, config_dir: Path | None) -> list[Path]:
    """The instruction files that apply in `workdir`, farthest first."""
    workdir = workdir.resolve()
    root = repo_root(workdir)
    dirs = [workdir]
    if root is not None:
        dirs = [d for d in (workdir, *workdir.parents) if d.is_relative_to(root)]
    found: list[Path] = []
    if config_dir is not None:
        found += _first(config_dir)
    for d in reversed(dirs):
        found += _first(d)
    return found


def _first(directory: Path) -> list[Path]:
    for name in NAMES:
        path = directory / name
        if path.is_file():
            return [path]
    return []


def load(
    workdir: Path,
    config_dir: Path | None,
    *,
    max_tokens: int = MAX_TOKENS,
    counter: TokenCounter | None = None,
) -> Instructions:
    """Read and cap the instruction files for `workdir` (see the module doc)."""
    counter = counter or TokenCounter()
    result = Instructions()
    texts: list[tuple[str, str]] = []
    for path in discover(workdir, config_dir):
        try:
            body = path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError as e:
            result.warnings.append(f"cannot read {path}: {e.strerror}; left out")
            continue
        if body:
            texts.append((str(path), body))
    sections = [_section(name, body) for name, body in texts]
    if sum(len(section.encode()) for section in sections) <= max_tokens:
        # A token is at least one byte, so nothing is cut: no need for the tokenizer, which
        # costs ~0.3 s to load and would load here, before the REPL prompt is drawn.
        names = [name for name, _ in texts]
        return _kept(result, list(zip(names, sections, strict=True)))
    # Nearest first gets the budget: the work dir's file is the most specific.
    left = max_tokens
    kept: list[tuple[str, str]] = []
    for (name, body), section in zip(reversed(texts), reversed(sections), strict=True):
        cost = counter.text(section)
        if cost > left:
            room = max(0, left - counter.text(_section(name, "")) - 16) * CHARS_PER_TOKEN
            result.warnings.append(
                f"instructions {name} cut to about {left} tokens of {cost} "
                f"(project_doc_max_tokens = {max_tokens})"
                if room
                else f"instructions {name} left out: the {max_tokens}-token cap is used up"
            )
            if not room:
                continue
            section = _section(name, body[:room] + "\n[... cut: over the instructions cap]")
            cost = counter.text(section)
        left -= cost
        kept.append((name, section))
    kept.reverse()
    return _kept(result, kept)


def _kept(result: Instructions, kept: list[tuple[str, str]]) -> Instructions:
    result.files = [name for name, _ in kept]
    if kept:
        result.text = HEADER + "".join(section for _, section in kept)
    return result


def _section(name: str, body: str) -> str:
    return f"\n## {name}\n\n{body}\n"


def restore(entries: list[dict[str, Any]]) -> Instructions | None:
    """The instructions a session journaled when it started, or None if it did not."""
    for entry in reversed(entries):
        if entry.get("kind") == "instructions":
            return Instructions(files=list(entry.get("files", [])), text=entry.get("text", ""))
    return None


def system_prompt(base: str, instructions: str) -> str:
    """`base` followed by the instructions section (none: `base` unchanged)."""
    return f"{base}\n\n{instructions}" if instructions else base
