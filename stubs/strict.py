"""What a strict chat template accepts, as one pure function.

Real servers render the OpenAI message list through the model's Jinja chat template, and many
templates raise on anything but a clean alternation (system?, user, assistant, user, …) with every
tool call answered at once. llama.cpp turns that exception into an HTTP error. ``validate`` says
whether such a template would accept a message list, and if not, why, in one line.

This module is written from the rules alone and shares no code with nexpy's ``normalize()``: a
bug in one must not hide in the other. It never imports ``nexpy``.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["validate"]

ROLES = ("system", "user", "assistant", "tool")


def _text_of(content: Any) -> str:
    """The text of an already type-checked content value (str, None or a list of text parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content)


def _content_error(content: Any) -> str | None:
    """Why ``content`` is not a string or a list of text parts (None is checked by the caller)."""
    if isinstance(content, str):
        return None
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                return f"content part {j} is {type(part).__name__}, not an object"
            if part.get("type") != "text":
                return f"content part {j} has type {part.get('type')!r}, only 'text' is supported"
            if not isinstance(part.get("text"), str):
                return f"content part {j} has no string 'text'"
        return None
    return f"content is {type(content).__name__}, expected a string or a list of text parts"


def _tool_calls_error(tool_calls: Any) -> tuple[str | None, list[str]]:
    """Check an assistant ``tool_calls`` value; return (reason or None, ids in order)."""
    if not isinstance(tool_calls, list):
        return f"tool_calls is {type(tool_calls).__name__}, expected a list", []
    if not tool_calls:
        return "tool_calls is an empty list (omit it instead)", []
    ids: list[str] = []
    for k, call in enumerate(tool_calls):
        if not isinstance(call, dict):
            return f"tool_calls[{k}] is {type(call).__name__}, not an object", ids
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            return f"tool_calls[{k}] has no id", ids
        if call_id in ids:
            return f"tool_calls[{k}] repeats id {call_id!r}", ids
        if call.get("type", "function") != "function":
            return f"tool_calls[{k}] has type {call.get('type')!r}, expected 'function'", ids
        function = call.get("function")
        if not isinstance(function, dict):
            return f"tool_calls[{k}] has no function object", ids
        name = function.get("name")
        if not isinstance(name, str) or not name:
            return f"tool_calls[{k}] has no function name", ids
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            return (
                f"tool_calls[{k}] ({name}) arguments is {type(arguments).__name__}, "
                "expected a JSON string",
                ids,
            )
        try:
            json.loads(arguments)
        except ValueError:
            return f"tool_calls[{k}] ({name}) arguments are not valid JSON", ids
        ids.append(call_id)
    return None, ids


def validate(messages: list[dict[str, Any]]) -> str | None:
    """None if a strict chat template would accept ``messages``, else a one-line reason."""
    if not isinstance(messages, list):
        return f"messages is {type(messages).__name__}, expected a list"
    if not messages:
        return "messages is empty"

    prev_role: str | None = None
    seen_user = False
    # The assistant message whose tool calls are being answered: its index, all its ids, and the
    # ids not answered yet. None once any non-tool message follows it.
    open_idx: int | None = None
    open_ids: list[str] = []
    pending: list[str] = []

    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            return f"{where} is {type(msg).__name__}, not an object"
        if "role" not in msg:
            return f"{where} has no role"
        role = msg["role"]
        if role not in ROLES:
            return f"{where} has unknown role {role!r}"

        # Content type.
        content = msg.get("content")
        tool_calls = msg.get("tool_calls")
        has_tool_calls = role == "assistant" and tool_calls is not None
        if content is None:
            if not has_tool_calls:
                if role == "assistant":
                    return f"{where}: assistant message with no content and no tool_calls"
                return f"{where}: {role} message has no content"
        else:
            err = _content_error(content)
            if err:
                return f"{where} ({role}): {err}"

        # Tool calls left unanswered by the time a non-tool message arrives.
        if role != "tool" and pending:
            return (
                f"messages[{open_idx}]: tool call id(s) {', '.join(pending)} not answered "
                f"before {where} ({role})"
            )
        if role != "tool":
            open_idx, open_ids, pending = None, [], []

        if role == "system":
            if i != 0:
                if messages[0]["role"] == "system":
                    return f"{where}: more than one system message"
                return f"{where}: system message is only allowed first"
        elif not seen_user and role != "user":
            return f"{where}: the first non-system message must be user, got {role}"
        elif role == "user":
            if prev_role == "user":
                return f"{where}: two consecutive user messages"
        elif role == "assistant":
            if prev_role == "assistant":
                return f"{where}: two consecutive assistant messages"
            if tool_calls is not None:
                err, ids = _tool_calls_error(tool_calls)
                if err:
                    return f"{where}: {err}"
                open_idx, open_ids, pending = i, ids, list(ids)
            elif not _text_of(content):
                return f"{where}: assistant message with empty content and no tool_calls"
        else:  # tool
            call_id = msg.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                return f"{where}: tool message has no tool_call_id"
            if open_idx is None:
                return (
                    f"{where}: tool message {call_id!r} does not follow an assistant "
                    "message with tool_calls"
                )
            if call_id not in open_ids:
                return (
                    f"{where}: tool message {call_id!r} answers no tool call of "
                    f"messages[{open_idx}]"
                )
            if call_id not in pending:
                return f"{where}: tool call id {call_id!r} answered twice"
            pending.remove(call_id)
        if role == "user":
            seen_user = True
        prev_role = role

    if pending:
        return f"messages[{open_idx}]: tool call id(s) {', '.join(pending)} never answered"
    if not seen_user:
        return "no user message"
    if prev_role == "assistant":
        return "the last message is from the assistant; it must be user or tool"
    return None
