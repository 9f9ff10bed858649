"""Adaptations: a request reshaped for a chat template that refuses the normal one.

Every rule is pure: it takes a chat request body (``messages`` and ``tools``, already through
``messages.normalize``) and returns a new one that loses no content, only moves or re-spells it.
A rule is learned from the refusal the server sends (``learn``): each names the refusal texts it
answers, as measured against the real templates (the conformance tier, tests/conformance).
``apply`` runs the learned rules in one fixed order, whatever order they were learned in.

The rules, in the order they apply:

- ``content-string``: a tool-call-only assistant turn carries ``"content": ""``, not null
  (Qwen3, QwQ, gpt-oss, Phi-3.5, granite 3.3, Devstral… test ``'</think>' in content``);
- ``single-tool-call``: one call per assistant turn (Llama 3.x): parallel calls become
  consecutive call/result pairs;
- ``short-tool-ids``: tool-call ids of 9 alphanumerics (the Mistral family), rewritten
  consistently in the call and its result;
- ``assistant-between``: a user turn right after tool results (a resumed, interrupted call) gets
  an assistant turn ``[interrupted]`` before it (the Mistral family's alternation check skips
  only calls);
- ``tools-in-prompt``: the template cannot take the tools or the calls (no tool support, a
  server without a tool parser, or a template that wants another tool format): the tools are
  described in the system prompt, past calls written as Hermes ``<tool_call>`` text and results
  as user turns, and the model's calls recovered from its text by ``toolcalls.TextCallExtractor``;
- ``system-in-user``: no system role (gemma 2): the system text opens the first user turn (last,
  so it also moves the tool description ``tools-in-prompt`` writes).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RULES", "LearnedStore", "Rule", "apply", "learn", "rule"]

Body = dict[str, Any]


@dataclass(frozen=True)
class Rule:
    """One adaptation: its name, what it does, and the refusals it is learned from."""

    name: str
    apply: Callable[[Body], Body]
    refusals: tuple[str, ...]  # regular expressions, searched case-insensitively
    summary: str

    def answers(self, refusal: str) -> bool:
        """Whether ``refusal`` (a server's error message) is one this rule answers."""
        return any(re.search(p, refusal, re.IGNORECASE) for p in self.refusals)


# -- the rules ---------------------------------------------------------------------------------


def content_string(body: Body) -> Body:
    """Assistant turns without text (content null or left out) get ``""`` as content."""
    out = copy.deepcopy(body)
    for message in out.get("messages", []):
        if message.get("role") == "assistant" and message.get("content") is None:
            message["content"] = ""
    return out


def system_in_user(body: Body) -> Body:
    """System messages removed; their text opens the first user turn (or becomes one)."""
    out = copy.deepcopy(body)
    messages = out.get("messages", [])
    systems = [_text(m) for m in messages if m.get("role") in ("system", "developer")]
    rest = [m for m in messages if m.get("role") not in ("system", "developer")]
    note = "\n\n".join(t for t in systems if t)
    if note:
        first = next((m for m in rest if m.get("role") == "user"), None)
        if first is None:
            rest.insert(0, {"role": "user", "content": note})
        else:
            first["content"] = f"{note}\n\n{_text(first)}" if _text(first) else note
    out["messages"] = rest
    return out


def single_tool_call(body: Body) -> Body:
    """An assistant turn with n calls becomes n turns of one call, each followed by its result.

    The turn's text stays on the first of them; a result is found by its call id among the
    tool messages that follow the turn (normalize guarantees they are there, in call order).
    """
    out = copy.deepcopy(body)
    messages = out.get("messages", [])
    result: list[dict[str, Any]] = []
    i = 0
    while i < len(messages):
        message = messages[i]
        calls = message.get("tool_calls") or []
        if message.get("role") != "assistant" or len(calls) < 2:
            result.append(message)
            i += 1
            continue
        j = i + 1
        answers: list[dict[str, Any]] = []
        while j < len(messages) and messages[j].get("role") == "tool":
            answers.append(messages[j])
            j += 1
        by_id = {a.get("tool_call_id"): a for a in answers}
        used: set[int] = set()
        for n, call in enumerate(calls):
            # The text stays on the first turn; the others keep its null-or-string shape.
            text = message.get("content")
            turn = {
                **message,
                "tool_calls": [call],
                "content": text if n == 0 or text is None else "",
            }
            result.append(turn)
            answer = by_id.get(call.get("id"))
            if answer is not None:
                used.add(id(answer))
                result.append(answer)
        result.extend(a for a in answers if id(a) not in used)
        i = j
    out["messages"] = result
    return out


BETWEEN = "[interrupted]"


def assistant_between(body: Body) -> Body:
    """A user turn right after tool results gets a short assistant turn before it, so the
    user/assistant alternation holds counting only turns without calls (Mistral's check; the
    history after an interrupted call has none)."""
    out = copy.deepcopy(body)
    messages: list[dict[str, Any]] = []
    for message in out.get("messages", []):
        if message.get("role") == "user" and messages and messages[-1].get("role") == "tool":
            # Not empty: Ministral 3 refuses an assistant turn without text or calls.
            messages.append({"role": "assistant", "content": BETWEEN})
        messages.append(message)
    out["messages"] = messages
    return out


_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def short_id(call_id: str) -> str:
    """``call_id`` as 9 alphanumerics: kept if it already is, else a stable digest of it."""
    if re.fullmatch(r"[A-Za-z0-9]{9}", call_id):
        return call_id
    number = int.from_bytes(hashlib.sha256(call_id.encode()).digest()[:8], "big")
    chars = []
    for _ in range(9):
        number, digit = divmod(number, len(_ID_ALPHABET))
        chars.append(_ID_ALPHABET[digit])
    return "".join(chars)


def short_tool_ids(body: Body) -> Body:
    """Every tool-call id, in calls and results, rewritten to 9 alphanumerics, consistently."""
    out = copy.deepcopy(body)
    for message in out.get("messages", []):
        for call in message.get("tool_calls") or []:
            if isinstance(call.get("id"), str):
                call["id"] = short_id(call["id"])
        if message.get("role") == "tool" and isinstance(message.get("tool_call_id"), str):
            message["tool_call_id"] = short_id(message["tool_call_id"])
    return out


TOOLS_PROMPT = (
    "You can call these tools. To call one, write exactly\n"
    '<tool_call>\n{{"name": "TOOL NAME", "arguments": {{...}}}}\n</tool_call>\n'
    "and stop; its result comes back in the next message, inside <tool_response>.\n"
    "Tools (JSON schema):\n{tools}"
)


def tools_in_prompt(body: Body) -> Body:
    """No ``tools`` field and no tool roles: the tools described in the system prompt, each
    past call written as Hermes text on its assistant turn, each result a user turn."""
    out = copy.deepcopy(body)
    tools = out.pop("tools", None)
    out.pop("tool_choice", None)
    out.pop("parallel_tool_calls", None)
    messages: list[dict[str, Any]] = []
    for message in out.get("messages", []):
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            text = [_text(message)] if _text(message) else []
            for call in message["tool_calls"]:
                fn = call.get("function") or {}
                arguments = fn.get("arguments")
                try:
                    parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
                except json.JSONDecodeError:
                    parsed = arguments
                payload = json.dumps({"name": fn.get("name"), "arguments": parsed or {}})
                text.append(f"<tool_call>\n{payload}\n</tool_call>")
            messages.append({"role": "assistant", "content": "\n".join(text)})
        elif role == "tool":
            response = f"<tool_response>\n{_text(message)}\n</tool_response>"
            _append_user(messages, response)
        elif role == "user":
            _append_user(messages, _text(message), parts=message)
        else:
            messages.append(message)
    if tools:
        listing = "\n".join(json.dumps(t.get("function", t)) for t in tools)
        prompt = TOOLS_PROMPT.format(tools=listing)
        if messages and messages[0].get("role") in ("system", "developer"):
            first = messages[0]
            messages[0] = {**first, "content": f"{_text(first)}\n\n{prompt}".lstrip()}
        else:
            messages.insert(0, {"role": "system", "content": prompt})
    out["messages"] = messages
    return out


def _append_user(
    messages: list[dict[str, Any]], text: str, parts: Mapping[str, Any] | None = None
) -> None:
    """A user turn appended, or merged into the user turn before it (roles must alternate)."""
    if messages and messages[-1].get("role") == "user":
        last = messages[-1]
        messages[-1] = {**last, "content": f"{_text(last)}\n\n{text}"}
    elif parts is not None:
        messages.append(dict(parts))
    else:
        messages.append({"role": "user", "content": text})


def _text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


# Each regular expression is a refusal measured on a real template (see the module docstring).
RULES: tuple[Rule, ...] = (
    Rule(
        "content-string",
        content_string,
        (
            r"NoneType",
            r"'None' has no attribute",
            r"None has no element",
            r"content.*(null|none)",
            r"Expected value for key 'content'",
            # nex leaves "content" out of a call-only turn: Qwen3/QwQ, LFM2 read the missing key
            r"has no attribute 'content'",
            r"Object of type Undefined is not JSON serializable",
        ),
        'a tool-call-only assistant turn sends content "", not null',
    ),
    Rule(
        "single-tool-call",
        single_tool_call,
        (r"only supports single tool-calls", r"single tool call"),
        "parallel tool calls become consecutive call/result pairs",
    ),
    Rule(
        "short-tool-ids",
        short_tool_ids,
        (r"Tool call IDs should be alphanumeric strings with length 9",),
        "tool-call ids rewritten to 9 alphanumerics",
    ),
    Rule(
        "assistant-between",
        assistant_between,
        (r"After the optional system message, conversation roles must alternate",),
        "an assistant turn between tool results and the next user turn",
    ),
    Rule(
        "tools-in-prompt",
        tools_in_prompt,
        (
            r"does not support tools",
            r"auto tool choice requires",
            r"tool choice requires",
            r"'functions' is undefined",
            r"has no attribute 'description'",
            r"concatenate str \(not \"dict\"\)",
            r"tools? (param|are )?not supported",
            # a template without a tool role (gemma 2) sees a tool result break the alternation
            r"roles must alternate",
            # templates whose tool-call code only llama.cpp's engine runs, refused by
            # transformers' immutable sandbox (Kimi K2: list.append) or its tojson (llama.cpp's
            # DeepSeek R1: a generator); without calls in history they render
            r"of 'list' object is unsafe",
            r"object of type generator is not json serializable",
        ),
        "tools described in the system prompt, calls recovered from text",
    ),
    Rule(
        "system-in-user",
        system_in_user,
        (r"system role not supported", r"system message.*not supported"),
        "the system text goes into the first user turn",
    ),
)

_BY_NAME = {r.name: r for r in RULES}


def rule(name: str) -> Rule:
    """The rule called ``name``; KeyError if there is none."""
    return _BY_NAME[name]


def learn(refusal: str, known: Iterable[str] = ()) -> Rule | None:
    """The first rule, not among ``known``, that answers the server's refusal ``refusal``."""
    skip = set(known)
    return next((r for r in RULES if r.name not in skip and r.answers(refusal)), None)


def apply(names: Iterable[str], body: Body) -> Body:
    """``body`` through the named rules, in RULES order (a new body; ``body`` is untouched)."""
    wanted = set(names)
    for r in RULES:
        if r.name in wanted:
            body = r.apply(body)
    return body


class LearnedStore:
    """The rules learned per (endpoint, model), kept in one JSON file in the state dir, so the
    next run against the same server sends the adapted request the first time."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, list[str]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # none yet, or unreadable: learn again rather than fail the run
        if not isinstance(data, dict):
            return {}
        return {k: [n for n in v if n in _BY_NAME] for k, v in data.items() if isinstance(v, list)}

    def get(self, endpoint: str, model: str) -> list[str]:
        """The rules learned for `model` at `endpoint`, in the order they were learned."""
        return self._read().get(f"{endpoint} {model}", [])

    def add(self, endpoint: str, model: str, name: str) -> None:
        """Remember `name` for `model` at `endpoint` (write and rename: never a torn file)."""
        data = self._read()
        names = data.setdefault(f"{endpoint} {model}", [])
        if name not in names:
            names.append(name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)
