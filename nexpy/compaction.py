"""Compaction: make a history fit its token budget, as one event that frees most of the room.

Every rewrite of an earlier message makes a prompt-caching server (llama.cpp, vLLM, Ollama)
process everything after it again, so compaction is rare and thorough. What always stays:
the task's first user message, the latest user message and the latest unit (a unit is a user
message, or an assistant message with the tool results after it, so a call never loses its
result). Everything else goes at once, and a summary the model writes takes its place:

- ``drop_turns``: every unit that may go is removed; a note takes its place, as an assistant
  message right after the first user message, so the history still normalizes into the shape
  of DESIGN §3 (user first, alternating, every call answered);
- ``with_summary``: the model's summary replaces the note. It is asked at the end of the
  conversation as the server last saw it (``summary_here``), which its prompt cache holds, or,
  when that does not fit, in a request of its own (``summary_request``). The previous summary
  is among what goes and is summarized again, so one summary covers everything removed so far.

After a compaction the request is the system prompt, the task, the summary and the latest step:
the server processes the summary and that step again, and the next compaction is as far away
as it can be. When the model cannot summarize, a history without one keeps more: ``tool_outputs``
turns old tool outputs into short handles (a head and tail around a line naming the full text
under the session's ``tool-outputs/`` folder, which ``read_file`` opens), then only the oldest
units go, down to about half the room. Either way, when the units that must stay are still too
big, their outputs become handles too (``recent_outputs``). Each step yields the whole new
history; the agent journals it as a ``compaction`` entry, which replaces the history before it
when a session is resumed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexpy.budget import CHARS_PER_TOKEN, TokenCounter
from nexpy.messages import assistant, system, text_of, user, with_note
from nexpy.tools.output import OUTPUTS_PREFIX, cap

HANDLE_CHARS = 400  # what a handle keeps of an output, head and tail together
HANDLE_OVER = 2 * HANDLE_CHARS  # shorter outputs stay: a handle would save little
HANDLE_HEAD = "[nex: output compacted to fit the context window; read_file the path below for all]"
NOTE = "[nex: {n} earlier messages were removed to fit the context window]"
SUMMARY_HEAD = "[nex: summary of {n} earlier messages, removed to fit the context window]"
_MARKS = (NOTE.split("{")[0], SUMMARY_HEAD.split("{")[0])
_COUNT = re.compile(r"(\d+) earlier messages")
_KEPT = re.compile(r"full output: (" + re.escape(OUTPUTS_PREFIX) + r"\S+) \.\.\.\]")

SUMMARIZE = (
    "You compress the working memory of a coding agent. The agent's context window is full, so "
    "the excerpt below is being removed from it; your summary is all the agent will keep of it. "
    "Write it for the agent: the task, what was done (files read or changed, commands run and "
    "their results), what was learned, decisions made, and what is left to do. Keep file paths, "
    "names, numbers and error messages exact. Plain text, at most {words} words. Call no tool."
)
TRANSCRIPT_LINE = 600  # chars of one message that go into the transcript to summarize
# Asked at the end of the conversation itself, so a prompt-caching server has all but this cached;
# short, since the server processes it on every compaction.
SUMMARIZE_HERE = (
    "[nex: the context window is full, so all of this conversation but the task will be "
    "replaced by your summary. Write it for yourself, the agent who continues: the task, what "
    "was done (files read or changed, commands and results), what was learned, what is left. "
    "Keep paths, names, numbers and errors exact. Plain text, at most {words} words. No tools.]"
)


@dataclass
class Step:
    """One rung applied: its name, the whole history after it, and what it did."""

    name: str
    history: list[dict[str, Any]]
    detail: dict[str, int] = field(default_factory=dict)


@dataclass
class Shrunk:
    """The outcome of `shrink`."""

    history: list[dict[str, Any]]
    tokens: int  # raw tokens of `history`, as `TokenCounter.message` counts them
    steps: list[Step]
    dropped: list[dict[str, Any]]  # removed messages, oldest first, for the summary
    covered: int  # how many original messages those stand for (a summary stands for many)
    note: dict[str, Any] | None  # the note standing for them, which a summary replaces


def units(history: list[dict[str, Any]]) -> list[range]:
    """The history cut into units: each user or assistant message with the tool messages after it.

    Tool messages belong to the assistant message before them, so no cut separates a call from
    its result; tool messages before any other message form a unit of their own.
    """
    spans: list[range] = []
    for i, message in enumerate(history):
        if message.get("role") == "tool" and spans:
            spans[-1] = range(spans[-1].start, i + 1)
        else:
            spans.append(range(i, i + 1))
    return spans


def is_note(message: dict[str, Any]) -> bool:
    """Whether `message` is a drop note or a summary that compaction left."""
    return message.get("role") == "assistant" and text_of(message).startswith(_MARKS)


def shrink(
    history: list[dict[str, Any]],
    counter: TokenCounter,
    *,
    target: int,
    limit: int,
    reserve: int = 0,
    outputs_dir: Path | None,
    summarized: bool = False,
) -> Shrunk:
    """The history (raw tokens) brought under `limit`, what must fit.

    `summarized`: a summary will stand for what goes, so every unit that may go does. Otherwise
    old outputs become handles (cheap, and nothing is lost: the full text stays on disk), then
    the oldest units go, down to `target` (about half the room) less `reserve`, room for a note.
    The units that always stay become handles only to get under `limit`; the result may still
    be over it when they are too big.
    """
    ladder = _Ladder(history, counter, outputs_dir)
    if summarized:
        ladder.drop(0)
    else:
        if ladder.total > target:
            ladder.handles(target, recent=False)
        if ladder.total > target:
            ladder.drop(target - reserve)
    if ladder.total > limit:
        ladder.handles(limit, recent=True)
    return Shrunk(
        ladder.history(), ladder.total, ladder.steps, ladder.dropped, ladder.covered, ladder.note
    )


class _Ladder:
    """The history as units whose messages and token counts the steps edit in place."""

    def __init__(
        self, history: list[dict[str, Any]], counter: TokenCounter, outputs_dir: Path | None
    ) -> None:
        self.counter = counter
        self.outputs_dir = outputs_dir
        self.units = [[history[i] for i in span] for span in units(history)]
        self.sizes = [sum(counter.message(m) for m in unit) for unit in self.units]
        self.total = sum(self.sizes)
        self.steps: list[Step] = []
        self.dropped: list[dict[str, Any]] = []
        self.covered = 0
        self.note: dict[str, Any] | None = None
        kinds = [unit[0].get("role") for unit in self.units]
        users = [i for i, kind in enumerate(kinds) if kind == "user"]
        # Unit indices that always stay: the task, the latest request, the latest step.
        self.pinned = {len(self.units) - 1} if self.units else set()
        if users:
            self.pinned |= {users[0], users[-1]}
        self.first_user: int | None = users[0] if users else None

    def history(self) -> list[dict[str, Any]]:
        return [m for unit in self.units for m in unit]

    def pinned_size(self) -> int:
        return sum(self.sizes[i] for i in self.pinned)

    def handles(self, goal: int, *, recent: bool) -> None:
        """Turn tool outputs into handles, oldest first, until the total is at most `goal`.

        `recent` False skips the units that always stay; True does only those.
        """
        count = 0
        for index, unit in enumerate(self.units):
            if (index in self.pinned) != recent:
                continue
            for pos, message in enumerate(unit):
                if self.total <= goal:
                    break
                if message.get("role") != "tool":
                    continue
                text = text_of(message)
                if len(text) <= HANDLE_OVER or text.startswith(HANDLE_HEAD):
                    continue
                unit[pos] = handle(message, self.outputs_dir)
                before, after = self.counter.message(message), self.counter.message(unit[pos])
                self.sizes[index] += after - before
                self.total += after - before
                count += 1
        if count:
            name = "recent_outputs" if recent else "tool_outputs"
            self.steps.append(Step(name, self.history(), {"outputs": count}))

    def drop(self, goal: int) -> None:
        """Remove the oldest units that may go until the total is at most `goal`."""
        gone: set[int] = set()
        for index in range(len(self.units)):
            if self.total <= goal:
                break
            if index not in self.pinned:
                gone.add(index)
                self.total -= self.sizes[index]
        if not gone:
            return
        self.dropped = [m for i in sorted(gone) for m in self.units[i]]
        self.covered = covered = sum(_covers(m) for m in self.dropped)
        self.note = assistant(NOTE.format(n=covered))
        note_size = self.counter.message(self.note)
        units_left: list[list[dict[str, Any]]] = []
        sizes_left: list[int] = []
        pinned_left: set[int] = set()
        if self.first_user is None:
            units_left.append([self.note])
            sizes_left.append(note_size)
        for index, unit in enumerate(self.units):
            if index in gone:
                continue
            if index in self.pinned:
                pinned_left.add(len(units_left))
            units_left.append(unit)
            sizes_left.append(self.sizes[index])
            if index == self.first_user:
                units_left.append([self.note])
                sizes_left.append(note_size)
        self.units, self.sizes, self.pinned = units_left, sizes_left, pinned_left
        self.total = sum(sizes_left)
        self.steps.append(Step("drop_turns", self.history(), {"removed": covered}))


def handle(message: dict[str, Any], outputs_dir: Path | None) -> dict[str, Any]:
    """A copy of the tool message whose content is a short handle to the full output."""
    text = text_of(message)
    kept = _KEPT.search(text)
    if kept is not None:
        # Capped when the tool ran: the full text is already in the session folder.
        half = HANDLE_CHARS // 2
        body = f"{text[:half]}\n[... full output: {kept.group(1)} ...]\n{text[-half:]}"
    else:
        call_id = str(message.get("tool_call_id") or "output")
        body = cap(text, HANDLE_CHARS, outputs_dir=outputs_dir, call_id=call_id).text
    return {**message, "content": f"{HANDLE_HEAD}\n{body}"}


def summary_request(
    dropped: list[dict[str, Any]], counter: TokenCounter, *, room: int, words: int
) -> list[dict[str, Any]]:
    """The messages that ask the model to summarize `dropped`, at most `room` raw tokens.

    An earlier summary among them always goes in whole; of the rest, the most recent lines
    that fit, since the latest work matters most to what comes next.
    """
    prompt = system(SUMMARIZE.format(words=words))
    head: list[str] = []
    lines: list[str] = []
    for message in dropped:
        if is_note(message):
            head.append(f"(summary of what came before)\n{text_of(message)}")
        else:
            lines.append(_line(message))
    fixed = counter.message(prompt) + counter.message(user("\n\n".join(head))) + 16
    kept: list[str] = []
    used = fixed
    for line in reversed(lines):
        cost = counter.text(line) + 2
        if used + cost > room:
            break
        kept.append(line)
        used += cost
    skipped = len(lines) - len(kept)
    if skipped:
        head.append(f"({skipped} older messages did not fit here and are left out)")
    body = "\n\n".join([*head, *reversed(kept)])
    return [prompt, user(f"The conversation excerpt to summarize:\n\n{body}")]


def summary_here(messages: list[dict[str, Any]], words: int) -> list[dict[str, Any]]:
    """The request as last sent (`messages`, normalized) with the request for a summary after it.

    It extends what the server's prompt cache holds, so only the request itself is processed;
    a separate summary request (`summary_request`) would make the server process the whole
    conversation again after it."""
    ask = SUMMARIZE_HERE.format(words=words)
    if messages[-1].get("role") == "user":
        return [*messages[:-1], with_note(messages[-1], ask)]
    return [*messages, user(ask)]


def with_summary(
    history: list[dict[str, Any]], note: dict[str, Any], text: str, messages: int
) -> list[dict[str, Any]]:
    """`history` with the drop note replaced by the summary of the `messages` it stands for."""
    summary = assistant(f"{SUMMARY_HEAD.format(n=messages)}\n{text.strip()}")
    return [summary if m is note else m for m in history]


def clip(text: str, counter: TokenCounter, tokens: int) -> str:
    """`text` cut to about `tokens` tokens (a model may ignore max_tokens)."""
    if counter.text(text) <= tokens:
        return text
    return text[: tokens * CHARS_PER_TOKEN].rstrip() + " [...]"


def _covers(message: dict[str, Any]) -> int:
    """How many original messages `message` stands for: a note or summary counts what it covers."""
    if is_note(message):
        found = _COUNT.search(text_of(message))
        if found is not None:
            return int(found.group(1))
    return 1


def _line(message: dict[str, Any]) -> str:
    """One message as a transcript line, cut to TRANSCRIPT_LINE chars."""
    role = message.get("role")
    text = _elide_middle(text_of(message))
    if role == "tool":
        return f"tool result ({message.get('name') or 'tool'}): {text}"
    parts = [f"{role}: {text}"] if text else []
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {} if isinstance(call, dict) else {}
        arguments = fn.get("arguments")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        parts.append(f"{role} called {fn.get('name')}({_elide_middle(arguments)})")
    return "\n".join(parts) or f"{role}: (empty)"


def _elide_middle(text: str) -> str:
    if len(text) <= TRANSCRIPT_LINE:
        return text
    half = TRANSCRIPT_LINE // 2
    return f"{text[:half]} [...] {text[-half:]}"
