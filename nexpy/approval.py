"""Which mutating tool calls a person must approve, and what they answered.

The mode (config `approval`, `--yes`) sets the baseline:

    ask        every mutating tool asks (write_file, edit_file, bash)
    auto-edit  file edits (write_file, edit_file) run without asking; bash still asks
    yolo       nothing asks (`--yes` is the same)

On top of it the REPL remembers, until it ends, the person's "always" answers: a whole tool, or
a bash command prefix such as `git status`. A prefix approves a command only when every simple
command in it starts with an approved prefix and it has no redirection or substitution, so
approving `git status` never lets `git status; rm -rf ~` or `git status > notes` through.

Approval is orthogonal to the sandbox (nexpy.sandbox): an approved bash command still runs
confined as its mode says.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["ask", "auto-edit", "yolo"]
MODES: tuple[Mode, ...] = ("ask", "auto-edit", "yolo")

SHELL_TOOL = "bash"
FILE_TOOLS = frozenset({"write_file", "edit_file"})  # what auto-edit lets through

# Programs whose first argument names a subcommand: their prefix is two words (`git status`,
# `npm test`), so approving one subcommand does not approve its siblings (`git push`).
SUBCOMMAND_PROGRAMS = frozenset(
    {
        "apt",
        "apt-get",
        "brew",
        "bun",
        "cargo",
        "deno",
        "docker",
        "dotnet",
        "gh",
        "git",
        "go",
        "kubectl",
        "make",
        "npm",
        "pip",
        "pip3",
        "pnpm",
        "poetry",
        "uv",
        "yarn",
    }
)
# Programs that run another command given as arguments: approving `sudo` or `xargs` would
# approve anything, so no prefix is offered for them.
RUNNERS = frozenset(
    {"bash", "command", "env", "eval", "exec", "nice", "nohup", "sh", "sudo", "time", "timeout",
     "xargs", "zsh"}
)  # fmt: skip
_SEPARATORS = frozenset({"&&", "||", ";", "|"})
_WORD = re.compile(r"^[A-Za-z0-9][\w.+:/-]*$")


def _simple_commands(command: str) -> list[list[str]] | None:
    """`command` split into its simple commands' words, or None when it does more than run
    commands in sequence or in a pipe: a redirection, a substitution, a subshell, a
    background job, or quoting shlex cannot read."""
    # A newline separates commands as `;` does, but shlex reads it as a space.
    if any(mark in command for mark in ("`", "$(", "<(", ">(", "\n", "\r")):
        return None
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        tokens = list(lexer)
    except ValueError:  # an unclosed quote
        return None
    parts: list[list[str]] = [[]]
    for token in tokens:
        if token and all(c in "();<>|&" for c in token):
            if token not in _SEPARATORS:
                return None  # > >> < & ( ) and the like
            parts.append([])
        else:
            parts[-1].append(token)
    if any(not part for part in parts):
        return None
    return parts


def _prefix_of(words: list[str]) -> tuple[str, ...]:
    first = words[0]
    if first in SUBCOMMAND_PROGRAMS and len(words) > 1 and _WORD.match(words[1]):
        return (first, words[1])
    return (first,)


def command_prefix(command: str) -> str | None:
    """The prefix an "always" answer for this bash command would approve (`git status` for
    `git status -s`), or None when the command is not one a prefix can safely approve."""
    parts = _simple_commands(command)
    if parts is None or len(parts) != 1:
        return None
    first = parts[0][0]
    if first in RUNNERS or "=" in first:  # a runner, or a variable set for the command
        return None
    return " ".join(_prefix_of(parts[0]))


def _bash_command(args: dict[str, Any]) -> str:
    value = args.get("command")
    return value if isinstance(value, str) else ""


@dataclass
class Approvals:
    """The approval mode and the session's remembered answers."""

    mode: Mode = "ask"
    tools: set[str] = field(default_factory=set)
    prefixes: set[tuple[str, ...]] = field(default_factory=set)

    def allows(self, name: str, args: dict[str, Any]) -> bool:
        """Whether this mutating call may run without asking."""
        if self.mode == "yolo" or name in self.tools:
            return True
        if name in FILE_TOOLS:
            return self.mode == "auto-edit"
        if name != SHELL_TOOL:
            return False  # a mutating tool this module does not know: ask
        parts = _simple_commands(_bash_command(args))
        if parts is None or not self.prefixes:
            return False
        return all(any(tuple(words[: len(p)]) == p for p in self.prefixes) for words in parts)

    def prefix_for(self, name: str, args: dict[str, Any]) -> str | None:
        """The prefix the question offers to approve for good, if any (bash only)."""
        return command_prefix(_bash_command(args)) if name == SHELL_TOOL else None

    def always_tool(self, name: str) -> None:
        self.tools.add(name)

    def always_prefix(self, prefix: str) -> None:
        self.prefixes.add(tuple(prefix.split()))


@dataclass(frozen=True)
class Answer:
    """What the person answered: `choice` is yes, no, tool (always this tool) or prefix."""

    choice: Literal["yes", "no", "tool", "prefix"]
    reason: str = ""


_NO = re.compile(r"^(?:n|no)(?:$|[\s:,.;-]+(.*))", re.IGNORECASE | re.DOTALL)


def parse_answer(text: str, *, prefix_offered: bool) -> Answer | None:
    """Read a reply to the approval question; None when it is not one (ask again).

    Enter alone is no, as `[y/N]` promises. `n REASON` (or `no: REASON`) declines and the reason
    goes back to the model as the tool's result.
    """
    reply = text.strip()
    lowered = reply.lower()
    if lowered in ("y", "yes"):
        return Answer("yes")
    if lowered in ("a", "always"):
        return Answer("tool")
    if lowered in ("p", "prefix") and prefix_offered:
        return Answer("prefix")
    if not reply:
        return Answer("no")
    match = _NO.match(reply)
    if match:
        return Answer("no", (match.group(1) or "").strip())
    return None


def declined(reason: str) -> str:
    """The tool result the model gets when the person says no."""
    if not reason:
        return "error: the user declined this tool call"
    return f"error: the user declined this tool call and said: {reason}"
