"""Message normalization: the wire invariants every request satisfies (DESIGN §3).

Histories come from journals, interrupted runs, compaction and models that emit odd tool calls.
Strict chat templates (llama.cpp, vLLM) raise on anything but a clean alternation with every tool
call answered at once, so ``normalize`` runs on every request, right before it leaves, and repairs
the history into a shape they accept. It is one linear pass plus one merge pass: it runs on every
request of long sessions, so it never rescans the history.

Messages are plain OpenAI chat dicts; the helpers below build them. `RequestBuilder`, at the
bottom, gives what `normalize` gives for a growing history with work proportional to what is new.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

from nexpy.budget import PER_REQUEST, TokenCounter

__all__ = [
    "CONTINUE",
    "CONVERSATION_CONTINUES",
    "DEFAULT_SYSTEM",
    "INTERRUPTED",
    "RequestBuilder",
    "assistant",
    "normalize",
    "system",
    "text_of",
    "tool_result",
    "user",
    "with_note",
]

INTERRUPTED = "[no result: interrupted]"
DEFAULT_SYSTEM = "You are a helpful assistant."
# Inserted when a history does not start with a user turn (templates require one first).
CONVERSATION_CONTINUES = "[conversation continues]"
# Appended when a history ends on the assistant: a request must end with user or tool.
CONTINUE = "Continue."

_SEP = "\n\n"
_KNOWN_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
# Keys a merge rebuilds itself; every other key of a merged message is carried over untouched.
_REBUILT_KEYS = frozenset({"role", "content", "tool_calls"})


def text_of(message: dict) -> str:
    """The message's content as one string: text parts joined, None as ""."""
    return _content_text(message.get("content"))


def user(text: str) -> dict:
    """A user message."""
    return {"role": "user", "content": text}


def system(text: str) -> dict:
    """A system message."""
    return {"role": "system", "content": text}


def assistant(text: str | None, tool_calls: list[dict] | None = None) -> dict:
    """An assistant message; ``tool_calls`` is left out when there are none. A call-only
    message has ``"content": ""``, as normalize sends it."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
        if text is None:
            message["content"] = ""
    return message


def tool_result(call_id: str, content: str, name: str | None = None) -> dict:
    """The tool message answering the call ``call_id``."""
    message: dict[str, Any] = {"role": "tool", "tool_call_id": call_id, "content": content}
    if name is not None:
        message["name"] = name
    return message


def with_note(message: dict, note: str) -> dict:
    """A copy of ``message`` with ``note`` appended to its text (a reminder rides on the newest
    message of a request, so nothing before it changes)."""
    content = message.get("content")
    if isinstance(content, list):
        return {**message, "content": [*content, {"type": "text", "text": _SEP + note}]}
    return {**message, "content": _join([_content_text(content), note])}


def normalize(messages: list[dict], *, reminders: Sequence[str] = ()) -> list[dict]:
    """Return a new history that satisfies the wire invariants of DESIGN §3.

    One system message first; a user turn right after it; no two user or two assistant messages
    in a row; every tool call answered at once, in call order, by exactly one tool message (late
    results moved into place, missing ones synthesized as ``INTERRUPTED``, orphans and duplicates
    dropped); no empty assistant turn; ends on a user or tool message; ``reminders`` folded into
    the last user turn. Idempotent, and every user text survives. The input is never mutated.

    Raises ValueError for a message that is not a dict, has an unknown role or content that is
    neither text nor parts: those are bugs in the caller, not model behavior to repair.
    """
    systems: list[dict] = []
    turns: list[_Turn] = []
    # Raw call id -> the latest tool-call turn that used it. A tool message answers the latest
    # call with its id before it, so servers that reuse ids across turns ("call_0" every time)
    # still pair each result with its own call, and a late result finds its call in O(1).
    owners: dict[str, _Owner] = {}

    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{index}] is {type(message).__name__}, not a dict")
        role = message.get("role")
        if role not in _KNOWN_ROLES:
            raise ValueError(f"messages[{index}] has unknown role {role!r}")
        # Checked up front so a bad content type fails here, naming its index.
        try:
            _content_text(message.get("content"))
        except ValueError as exc:
            raise ValueError(f"messages[{index}]: {exc}") from None
        if role in ("system", "developer"):
            systems.append(message)
        elif role == "user":
            turns.append(_Turn("user", _copy(message)))
        elif role == "assistant":
            _add_assistant(turns, owners, message, index)
        else:
            _answer(owners, message)

    out: list[dict] = [_merge_systems(systems)]
    groups = _group(turns)
    if not groups or groups[0].kind != "user":
        out.append(user(CONVERSATION_CONTINUES))
    for turn in groups:
        out.append(_merged(turn))
        if turn.kind == "calls":
            for call_id, result in zip(turn.ids, turn.slots, strict=True):
                if call_id is not None:
                    out.append(tool_result(call_id, INTERRUPTED) if result is None else result)
    if out[-1]["role"] == "assistant":
        out.append(user(CONTINUE))

    notes = [r for r in reminders if r]
    if notes:
        # Rule 2 guarantees a user turn after the system message, so this always finds one.
        last_user = next(m for m in reversed(out) if m["role"] == "user")
        last_user["content"] = _join([text_of(last_user), *notes])
    return out


class _Turn:
    """One non-system, non-tool turn, or a run of them merged into one message.

    ``kind`` is "user", "plain" (assistant without tool calls) or "calls". For "calls", ``slots``
    holds one result per call of the original message, filled as tool messages arrive later in
    the scan, and ``ids`` the final id per call (None for a dropped, unusable call).
    """

    __slots__ = ("ids", "kind", "members", "slots")

    def __init__(self, kind: str, message: dict) -> None:
        self.kind = kind
        self.members = [message]
        self.slots: list[dict | None] = []
        self.ids: list[str | None] = []


class _Owner:
    """Where results for one raw call id go: the calls of one turn that used that id."""

    __slots__ = ("cursor", "positions", "turn")

    def __init__(self, turn: _Turn) -> None:
        self.turn = turn
        self.positions: list[int] = []  # call positions with this raw id, in call order
        self.cursor = 0  # how many of them are answered


def _add_assistant(
    turns: list[_Turn], owners: dict[str, _Owner], message: dict, index: int
) -> None:
    """Append an assistant message as a turn and make it the owner of its call ids."""
    raw_calls = message.get("tool_calls")
    calls, raw_ids = _fix_calls(raw_calls, index)
    kept = [c for c in calls if c is not None]
    fixed = _copy(message, skip="tool_calls")
    if kept:
        fixed["tool_calls"] = kept
        if fixed.get("content") is None:
            # Qwen3/QwQ, the R1 distills, granite 3.3, Phi-3.5 and Devstral templates read
            # message.content unguarded: a missing key raises under llama-cpp-python's renderer.
            fixed["content"] = ""
        turn = _Turn("calls", fixed)
        turn.slots = [None] * len(calls)
        turn.ids = [c["id"] if c is not None else None for c in calls]
        turns.append(turn)
    else:
        # No usable call (none, an empty list, or only unusable ones): a plain message, and an
        # empty one says nothing and strict templates reject it.
        turn = _Turn("plain", fixed)
        if not _is_blank(fixed.get("content")):
            turns.append(turn)
        # Unusable calls still own their ids, so their results are dropped with them instead
        # of being taken for an earlier call's.
        turn.slots = [None] * len(calls)
        turn.ids = [None] * len(calls)
    by_id: dict[str, _Owner] = {}
    for position, raw in enumerate(raw_ids):
        if raw is None:
            continue  # a call without an id: no result can name it
        owner = by_id.get(raw)
        if owner is None:
            owner = by_id[raw] = _Owner(turn)
        owner.positions.append(position)
    owners.update(by_id)


def _answer(owners: dict[str, _Owner], message: dict) -> None:
    """Put a tool message into the next free slot of its call; drop orphans and duplicates."""
    call_id = message.get("tool_call_id")
    owner = owners.get(call_id) if isinstance(call_id, str) else None
    if owner is None or owner.cursor >= len(owner.positions):
        return  # no call before it (orphan), or every call with this id already answered
    position = owner.positions[owner.cursor]
    owner.cursor += 1
    final_id = owner.turn.ids[position]
    if final_id is None:
        return  # its call was unusable and dropped, so the result goes with it
    result = _copy(message)
    # A call given a fresh id (it repeated an id) keeps its own result, under the new id.
    result["tool_call_id"] = final_id
    if result.get("content") is None:
        result["content"] = ""  # strict templates reject a tool message without content
    owner.turn.slots[position] = result


def _fix_calls(raw: Any, index: int) -> tuple[list[dict | None], list[str | None]]:
    """Repair one message's tool calls; return (calls, raw ids), one entry per original call.

    An unusable call (no function name, not a function) comes back as None: nobody could have
    run it and strict templates reject it. Its raw id is still returned, so its results can be
    dropped with it. A repeated or missing id gets a fresh ``call_<index>_<n>``, unique within
    the message; after one pass every id is unique, so a second pass renames nothing.
    """
    if not isinstance(raw, list) or not raw:
        return [], []
    taken = {c.get("id") for c in raw if isinstance(c, dict) and isinstance(c.get("id"), str)}
    seen: set[str] = set()
    calls: list[dict | None] = []
    raw_ids: list[str | None] = []
    for n, call in enumerate(raw):
        if not isinstance(call, dict):
            calls.append(None)
            raw_ids.append(None)
            continue
        call_id = call.get("id")
        usable_id = call_id if isinstance(call_id, str) and call_id.strip() else None
        raw_ids.append(usable_id)
        function = call.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if (
            not isinstance(function, dict)
            or not isinstance(name, str)
            or not name
            or call.get("type") not in (None, "function")
        ):
            calls.append(None)
            continue
        if usable_id is None or usable_id in seen:
            fresh, suffix = f"call_{index}_{n}", 0
            while fresh in taken or fresh in seen:
                suffix += 1
                fresh = f"call_{index}_{n}_{suffix}"
            usable_id = fresh
        seen.add(usable_id)
        new = _copy(call)
        new["id"] = usable_id
        new["type"] = "function"
        new["function"]["arguments"] = _fix_arguments(function.get("arguments"))
        calls.append(new)
    return calls, raw_ids


def _fix_arguments(arguments: Any) -> str:
    """Tool call arguments as JSON text, as the wire format and strict templates require."""
    if arguments is None:
        return "{}"
    if not isinstance(arguments, str):
        return json.dumps(arguments, ensure_ascii=False)
    try:
        json.loads(arguments)
    except ValueError:
        # Templates parse the arguments and fail the whole request on bad JSON. Keep what the
        # model wrote, wrapped as a JSON object, so it can still see its mistake.
        return json.dumps({"invalid_json": arguments}, ensure_ascii=False)
    return arguments


def _group(turns: list[_Turn]) -> list[_Turn]:
    """Merge runs: user+user, plain+plain, and plain followed by a tool-call turn."""
    groups: list[_Turn] = []
    for turn in turns:
        last = groups[-1] if groups else None
        if last is not None and (
            (turn.kind == "user" and last.kind == "user")
            or (turn.kind in ("plain", "calls") and last.kind == "plain")
        ):
            last.members.extend(turn.members)
            if turn.kind == "calls":
                # The run now ends in this turn's calls; its results come after the merged text.
                last.kind, last.slots, last.ids = "calls", turn.slots, turn.ids
        else:
            groups.append(turn)
    return groups


def _merged(turn: _Turn) -> dict:
    """One message from a turn's members (already copies, so the first is reused)."""
    head = turn.members[0]
    if turn.kind == "user" and head.get("content") is None:
        head["content"] = ""  # strict templates reject a user message without content
    if len(turn.members) == 1:
        return head
    head["content"] = _join([text_of(m) for m in turn.members])
    for member in turn.members[1:]:
        for key, value in member.items():
            if key not in _REBUILT_KEYS:
                head.setdefault(key, value)
    if turn.kind == "calls":
        # Only the last member of a run can carry calls (see _group).
        head["tool_calls"] = turn.members[-1]["tool_calls"]
    return head


def _merge_systems(systems: list[dict]) -> dict:
    """The one system message: the first, with every later one's text appended."""
    if not systems:
        return system(DEFAULT_SYSTEM)
    head = _copy(systems[0])
    head["role"] = "system"  # "developer" is the newer name for the same thing
    if len(systems) > 1:
        head["content"] = _join([text_of(m) for m in systems])
        for later in systems[1:]:
            for key, value in later.items():
                if key not in _REBUILT_KEYS:
                    head.setdefault(key, copy.deepcopy(value))
    elif head.get("content") is None:
        head["content"] = ""  # strict templates reject a system message without content
    return head


def _join(texts: list[str]) -> str:
    """Texts joined by a blank line; empty ones add nothing (so no stray separators)."""
    return _SEP.join(t for t in texts if t)


def _is_blank(content: Any) -> bool:
    """Whether content has no visible text."""
    return not _content_text(content).strip()


def _content_text(content: Any) -> str:
    """Content as one string: None is "", text parts are concatenated, other parts skipped."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )
    raise ValueError(f"content is {type(content).__name__}, expected a string, None or parts")


def _copy(message: dict, skip: str | None = None) -> dict:
    """A copy that shares nothing mutable with ``message``, optionally without one key.

    Cheaper than deepcopy of the whole dict: strings, the bulk of a history, are immutable and
    shared; only nested lists and dicts (parts, tool calls) are copied.
    """
    return {
        key: copy.deepcopy(value) if isinstance(value, (dict, list)) else value
        for key, value in message.items()
        if key != skip
    }


# -- incremental normalization ---------------------------------------------------------------
# Stands in for what lies beyond a segment's edge while it is normalized on its own. No
# conversation contains it, so a merge into it shows as a changed text.
_EDGE = "\x00nex: segment edge\x00"


class RequestBuilder:
    """The normalized request for a growing history, built with work proportional to what is new.

    `normalize` is one pass over the whole history, and a history grows by a few messages a
    turn. The builder keeps the normalized form of a settled prefix ("frozen") and its token
    count, and normalizes only the rest. A prefix settles at an edge where normalizing both
    sides apart gives what normalizing the whole gives: before a user message or before an
    assistant turn that follows tool results, when no turn merges across the edge (checked
    with stand-in turns on both sides of each segment), no tool message after the edge answers
    a call before it, and no system message comes after the start. Anything else (a late
    result, a system note mid-history) is normalized in one full pass. The history must only
    grow between builds; a replaced or shortened one (compaction, /clear) starts over.
    """

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter
        self._system_text: str | None = None
        self._reset(None, "")

    def _reset(self, history: list[dict[str, Any]] | None, system_text: str) -> None:
        self._history = history
        self._system_text = system_text
        self._system = normalize([system(system_text)])[0]
        self._system_tokens = self.counter.message(self._system)
        self._frozen_len = 0  # history[:_frozen_len] is frozen
        self._last_frozen: dict[str, Any] | None = None  # history[_frozen_len - 1], to notice edits
        self._frozen: list[dict[str, Any]] = []
        self._frozen_tokens = 0

    def system_tokens(self, system_text: str) -> int:
        """Tokens of the system message for `system_text`."""
        if system_text != self._system_text:
            return self.counter.message(normalize([system(system_text)])[0])
        return self._system_tokens

    def build(
        self, system_text: str, history: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], int]:
        """The normalized request for `[system, *history]` and its raw token count (no tools).

        The messages of the result are shared with later results: never mutate them.
        """
        n = self._frozen_len
        if (
            history is not self._history
            or system_text != self._system_text
            or len(history) < n
            or (n and history[n - 1] is not self._last_frozen)
        ):
            self._reset(history, system_text)
        self._advance(history)
        tail = self._segment(history, self._frozen_len, len(history), closed=False)
        if tail is None:
            request = normalize([system(system_text), *history])
            tokens = self.counter.messages(request)
        else:
            request = [self._system, *self._frozen, *tail]
            tokens = (
                self._system_tokens
                + self._frozen_tokens
                + sum(self.counter.message(m) for m in tail)
                + PER_REQUEST
            )
        return request, tokens

    def _advance(self, history: list[dict[str, Any]]) -> None:
        """Freeze up to the latest edge that settles, if there is a new one."""
        for j in range(len(history) - 1, self._frozen_len, -1):
            if _edge(history, j):
                break
        else:
            return
        segment = self._segment(history, self._frozen_len, j, closed=True)
        if segment is None:
            return
        self._frozen.extend(segment)
        self._frozen_tokens += sum(self.counter.message(m) for m in segment)
        self._frozen_len = j
        self._last_frozen = history[j - 1]

    def _segment(
        self, history: list[dict[str, Any]], start: int, end: int, *, closed: bool
    ) -> list[dict[str, Any]] | None:
        """history[start:end] normalized as the whole would normalize it, or None if unsure.

        `closed`: the segment is followed by history[end], which opens a new segment.
        """
        part = history[start:end]
        if start and not part:
            return None
        calls: set[str] = set()
        for message in part:
            if not isinstance(message, dict):
                return None  # the full pass names the bad message
            role = message.get("role")
            if role == "assistant":
                for call in message.get("tool_calls") or ():
                    if isinstance(call, dict) and isinstance(call.get("id"), str):
                        calls.add(call["id"])
            elif role == "tool":
                if message.get("tool_call_id") not in calls:
                    return None  # it may answer a call before the edge
            elif role != "user":
                return None  # system notes fold into the system message, far before the edge
        # A segment that starts on an assistant turn (one normalize keeps: see _edge) gets a
        # user turn before it standing for what precedes the edge, so no placeholder is invented.
        lead = bool(start) and part[0].get("role") != "user"
        messages = [self._system]
        if lead:
            messages.append(user(_EDGE))
        messages.extend(part)
        if closed:
            # Stands for what follows. An assistant turn: a plain assistant turn before it merges
            # into it, visibly, since a kept plain turn always has text of its own.
            messages.append(assistant(_EDGE))
        out = normalize(messages)[1:]
        if lead:
            if out[0].get("content") != _EDGE:
                return None
            out = out[1:]
        if closed:
            # normalize ends a request on a user turn: the stand-in is followed by "Continue.".
            if len(out) < 2 or out[-2].get("content") != _EDGE:
                return None  # a plain assistant turn would merge with the one after the edge
            out = out[:-2]
            if history[end].get("role") == "user" and (not out or out[-1]["role"] == "user"):
                return None  # a user turn would merge with the one after the edge
        return out


def _edge(history: list[dict[str, Any]], j: int) -> bool:
    """Whether a frozen prefix may end before history[j] (see RequestBuilder).

    Before a user message, or before an assistant message that follows tool results and that
    normalize surely keeps (text, or only well-formed calls): a dropped one would let what comes
    after it merge across the edge.
    """
    message = history[j]
    if not isinstance(message, dict):
        return False
    role = message.get("role")
    if role == "user":
        return True
    before = history[j - 1]
    if role != "assistant" or not isinstance(before, dict) or before.get("role") != "tool":
        return False
    content = message.get("content")
    if isinstance(content, str) and content.strip():
        return True
    calls = message.get("tool_calls")
    return (
        isinstance(calls, list)
        and bool(calls)
        and all(
            isinstance(c, dict)
            and c.get("type") in (None, "function")
            and isinstance(c.get("function"), dict)
            and isinstance(c["function"].get("name"), str)
            and bool(c["function"]["name"])
            for c in calls
        )
    )
