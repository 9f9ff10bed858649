"""Tool calls from imperfect models and servers: assembling streamed deltas, recovering calls
written as text, and repairing argument JSON.

Three problems, one module:

- `ToolCallAssembler` joins streamed `tool_calls` deltas from servers that number them oddly:
  a missing `index`, the same `index` for every call (Ollama, some llama.cpp builds), a missing
  `id`, or the whole call restated in a later chunk.
- `TextCallExtractor` finds calls a model wrote as text because the server's template did not
  parse them — Qwen3-Coder's XML (`<tool_call><function=NAME><parameter=K>V</parameter>…`),
  Hermes-style `<tool_call>{json}</tool_call>`, and a fenced JSON call — but only when the name
  is one of the offered tools. It works on a stream: text that cannot be part of a call is
  released at once, a possible call is held back until it is decided, and call text never
  reaches the screen or the journal.
- `parse_arguments` turns argument text into a dict, repairing only what is unambiguous (a code
  fence around the JSON, JSON encoded twice, missing closing brackets after a complete value,
  surplus closing brackets); anything else raises ValueError with a reason the model can act on.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

# -- ids -------------------------------------------------------------------------------------


def new_call_id() -> str:
    """A call id unique across the session, for calls the server gave none."""
    # 24 random hex digits, as uuid4().hex[:24] gave; uuid itself imports `platform` at startup.
    return "call_" + os.urandom(12).hex()


def tool_parameters(tools: Iterable[Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Tool name -> its JSON-schema parameters, from OpenAI-style tool schemas."""
    out: dict[str, dict[str, Any]] = {}
    for tool in tools or ():
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
            params = fn.get("parameters")
            out[fn["name"]] = dict(params) if isinstance(params, Mapping) else {}
    return out


# -- streamed deltas ---------------------------------------------------------------------------


def field_of(obj: Any, key: str) -> Any:
    """`obj[key]` or `obj.key`: litellm hands out pydantic objects, tests and servers dicts."""
    if obj is None:
        return None
    if type(obj) is dict:
        return obj.get(key)
    kind = _kind(type(obj))
    if kind == "mapping":
        return obj.get(key)
    if kind == "pydantic" and key[:1] != "_" and not _on_class(type(obj), key):
        # Read a stream chunk a dozen times: what getattr finds, without going through pydantic's
        # __getattr__ (2 µs a hit, 6 µs a miss, raising inside): no class attribute by that
        # name, so a declared field is in __dict__, an undeclared one in __pydantic_extra__,
        # and anything else is missing (private attributes start with "_": not read here).
        fields = obj.__dict__
        if key in fields:
            return fields[key]
        extra = getattr(obj, "__pydantic_extra__", None)
        return extra.get(key) if extra else None
    return getattr(obj, key, None)


_KINDS: dict[type, str] = {}  # class -> "mapping" | "pydantic" | "object"
_ON_CLASS: dict[tuple[type, str], bool] = {}  # (class, name) -> whether the class resolves it


def _kind(cls: type) -> str:
    kind = _KINDS.get(cls)
    if kind is None:
        hook = getattr(cls, "__getattr__", None)
        if issubclass(cls, Mapping):
            kind = "mapping"
        elif (getattr(hook, "__module__", None), getattr(hook, "__qualname__", None)) == (
            "pydantic.main",
            "BaseModel.__getattr__",
        ):
            kind = "pydantic"
        else:
            kind = "object"
        _KINDS[cls] = kind
    return kind


def _on_class(cls: type, key: str) -> bool:
    """Whether `cls` or its metaclass has an attribute `key` (a method, property, default)."""
    found = _ON_CLASS.get((cls, key))
    if found is None:
        meta: type = type(cls)
        found = any(key in vars(k) for k in (*cls.__mro__, *meta.__mro__))
        _ON_CLASS[(cls, key)] = found
    return found


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


class ToolCallAssembler:
    """Joins streamed tool-call deltas into whole calls.

    A delta continues the call it names by id; failing that, the call at its index; failing
    that (no index, no id, no name), the last call. A delta starts a new call when its id is new,
    or when it names a tool while the current call already has a name and complete arguments —
    the only way to tell two calls apart when a server sends index 0 and no id for every call.
    """

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self._by_index: dict[int, dict[str, Any]] = {}

    def add(self, delta: Any) -> None:
        index = field_of(delta, "index")
        call_id = field_of(delta, "id") or None
        fn = field_of(delta, "function")
        name = field_of(fn, "name") or None
        args = field_of(fn, "arguments")
        if isinstance(args, Mapping):  # some servers send the arguments as an object
            args = json.dumps(args)
        args = args or ""

        current = self._find(index, call_id)
        if current is not None and name and current["function"]["name"]:
            done = _is_json_object(current["function"]["arguments"])
            if name != current["function"]["name"] or (done and not call_id):
                current = None
        if current is None:
            current = {
                "id": call_id or "",
                "type": "function",
                "function": {"name": "", "arguments": ""},
            }
            self.calls.append(current)
        if isinstance(index, int):
            self._by_index[index] = current
        if call_id and not current["id"]:
            current["id"] = call_id
        if name:
            current["function"]["name"] = name
        so_far = current["function"]["arguments"]
        if so_far and _is_json_object(so_far) and _is_json_object(args):
            current["function"]["arguments"] = args  # the whole call restated: keep one copy
        else:
            current["function"]["arguments"] = so_far + args

    def _find(self, index: Any, call_id: str | None) -> dict[str, Any] | None:
        if call_id:
            for call in self.calls:
                if call["id"] == call_id:
                    return call
        if isinstance(index, int):
            at = self._by_index.get(index)
            if at is not None:
                return None if call_id and at["id"] and at["id"] != call_id else at
            if self._by_index:
                return None  # the server numbers its calls, and this number is new
        if call_id is None and self.calls:
            return self.calls[-1]
        return None

    def finish(self) -> list[dict[str, Any]]:
        """The calls with a name, each with an id (one is made up where the server sent none)."""
        out = []
        for call in self.calls:
            if not call["function"]["name"]:
                continue
            if not call["id"]:
                call["id"] = new_call_id()
            out.append(call)
        return out


# -- calls written as text ---------------------------------------------------------------------
_TOOL_CALL = "<tool_call>"
_FUNCTION = "<function="
_FENCE = "```"
_OPENERS = (_TOOL_CALL, _FUNCTION, _FENCE)
_FENCE_LANGS = frozenset({"", "json", "tool_call", "tool_code"})
_XML_FUNCTION = re.compile(r"<function=([^>\s]+)\s*>(.*?)(?:</function>|\Z)", re.DOTALL)
_XML_PARAMETER = re.compile(
    r"<parameter=([^>\s]+)\s*>(.*?)(?:</parameter>|(?=<parameter=)|(?=</function>)|\Z)",
    re.DOTALL,
)
_NAME_FIELD = re.compile(r'"name"\s*:\s*"([^"]+)"')


class TextCallExtractor:
    """Separates tool calls written as text from the text a person should see.

    Feed it the streamed text piece by piece; `feed` and `finish` return the text that may be
    shown now. `calls` holds the recovered calls (OpenAI shape, arguments as a JSON string) and
    `visible` the whole text without them.
    """

    def __init__(self, tools: Mapping[str, Mapping[str, Any]]) -> None:
        self.tools = tools
        self.calls: list[dict[str, Any]] = []
        self._pending = ""  # text not yet released, starting at a possible call
        self._shown: list[str] = []
        # While a block waits for its closing marker, pieces are only collected and the marker
        # looked for at the seam, so a long call streamed token by token costs linear time.
        self._closer: str | None = None
        self._held: list[str] = []
        self._tail = ""

    @property
    def visible(self) -> str:
        return "".join(self._shown)

    def feed(self, piece: str) -> str:
        if self._closer is not None:
            seam = self._tail + piece
            self._held.append(piece)
            if self._closer not in seam:
                self._tail = seam[-(len(self._closer) - 1) :]
                return ""
            piece = self._release_held()
        self._pending += piece
        return self._drain(final=False)

    def finish(self) -> str:
        self._pending += self._release_held()
        return self._drain(final=True)

    def _release_held(self) -> str:
        held, self._held, self._closer = "".join(self._held), [], None
        return held

    def _wait_for(self, closer: str, text: str) -> tuple[int | None, list[dict[str, Any]]]:
        self._closer, self._tail = closer, text[-(len(closer) - 1) :]
        return None, []

    def _drain(self, *, final: bool) -> str:
        out: list[str] = []
        while self._pending:
            start = _first_opener(self._pending)
            if start is None:
                keep = 0 if final else _partial_opener_tail(self._pending)
                cut = len(self._pending) - keep
                out.append(self._pending[:cut])
                self._pending = self._pending[cut:]
                break
            out.append(self._pending[:start])
            self._pending = self._pending[start:]
            end, calls = self._block(self._pending, final=final)
            if end is None:
                break  # a possible call, not complete yet: hold it
            if calls:
                self.calls.extend(calls)
                self._pending = self._pending[end:]
            else:
                out.append(self._pending[:end])
                self._pending = self._pending[end:]
        text = "".join(out)
        self._shown.append(text)
        return text

    def _block(self, text: str, *, final: bool) -> tuple[int | None, list[dict[str, Any]]]:
        """At an opener: (where the block ends, its calls), or (None, []) to wait for more.

        A block that is not a call ends right after its opener, so scanning resumes there.
        """
        if text.startswith(_TOOL_CALL):
            close = text.find("</tool_call>")
            if close < 0 and not final:
                return self._wait_for("</tool_call>", text)
            end = len(text) if close < 0 else close + len("</tool_call>")
            inner = text[len(_TOOL_CALL) : close if close >= 0 else len(text)]
            calls = self._tool_call_body(inner)
            return (end, calls) if calls else (len(_TOOL_CALL), [])
        if text.startswith(_FUNCTION):
            close = text.find("</function>")
            if close < 0 and not final:
                return self._wait_for("</function>", text)
            end = len(text) if close < 0 else close + len("</function>")
            calls = self._xml(text[:end])
            return (end, calls) if calls else (len(_FUNCTION), [])
        return self._fence(text, final=final)

    def _fence(self, text: str, *, final: bool) -> tuple[int | None, list[dict[str, Any]]]:
        opener_end = text.find("\n", len(_FENCE))
        lang_line = text[len(_FENCE) : opener_end if opener_end >= 0 else len(text)]
        not_a_call: tuple[int | None, list[dict[str, Any]]] = (len(_FENCE), [])
        if lang_line.strip().lower() not in _FENCE_LANGS:
            # A language other than JSON, or prose after backticks: no call. Decided as soon as
            # the opening line cannot become one of the accepted languages.
            if opener_end >= 0 or len(lang_line) > 16 or " " in lang_line.strip():
                return not_a_call
            return (None, []) if not final else not_a_call
        if opener_end < 0:
            return (None, []) if not final else not_a_call
        body_start = opener_end + 1
        rest = text[body_start:].lstrip()
        if not rest:
            return (None, []) if not final else not_a_call
        if rest[0] not in "{[":
            return not_a_call
        close = text.find(_FENCE, body_start)
        if close < 0 and not final:
            return self._wait_for(_FENCE, text)
        body = text[body_start : close if close >= 0 else len(text)]
        calls = self._json_calls(body)
        if not calls:
            return not_a_call
        return (len(text) if close < 0 else close + len(_FENCE)), calls

    # -- the formats --------------------------------------------------------------------------
    def _tool_call_body(self, inner: str) -> list[dict[str, Any]]:
        stripped = inner.strip()
        if stripped.startswith(_FUNCTION):
            return self._xml(stripped)
        return self._json_calls(stripped)

    def _xml(self, text: str) -> list[dict[str, Any]]:
        calls = []
        for match in _XML_FUNCTION.finditer(text):
            name = match.group(1)
            if name not in self.tools:
                return []
            schema = self.tools[name].get("properties") or {}
            args: dict[str, Any] = {}
            for param in _XML_PARAMETER.finditer(match.group(2)):
                key, value = param.group(1), _strip_one_newline(param.group(2))
                args[key] = _coerce(value, schema.get(key))
            if not args and not match.group(0).endswith("</function>"):
                return []  # "<function=bash>" in prose: neither closed nor given a parameter
            calls.append(_call(name, json.dumps(args, ensure_ascii=False)))
        return calls

    def _json_calls(self, body: str) -> list[dict[str, Any]]:
        try:
            value: Any = parse_json_lenient(body)
        except ValueError:
            # Unrepairable JSON naming a known tool is still a call: its arguments go to the
            # tool as they are, and the tool error tells the model what was wrong.
            m = _NAME_FIELD.search(body)
            if m and m.group(1) in self.tools:
                return [_call(m.group(1), _raw_arguments(body))]
            return []
        items = value if isinstance(value, list) else [value]
        calls = []
        for item in items:
            call = self._json_call(item)
            if call is None:
                return []  # every item must be a call, or the block is ordinary JSON
            calls.append(call)
        return calls

    def _json_call(self, item: Any) -> dict[str, Any] | None:
        if not isinstance(item, dict):
            return None
        inner = item.get("function")
        fn: dict[str, Any] = inner if isinstance(inner, dict) else item
        name = fn.get("name")
        if not isinstance(name, str) or name not in self.tools:
            return None
        args: Any = next((fn[k] for k in ("arguments", "parameters", "args") if k in fn), {})
        if set(fn) - {"name", "arguments", "parameters", "args", "id", "type"}:
            return None  # extra keys: this is data that happens to have a "name"
        text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        return _call(name, text)


def _call(name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": new_call_id(),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def _first_opener(text: str) -> int | None:
    found = [i for i in (text.find(o) for o in _OPENERS) if i >= 0]
    return min(found) if found else None


def _partial_opener_tail(text: str) -> int:
    """How many trailing characters could be the start of an opener (held back for now)."""
    best = 0
    for opener in _OPENERS:
        for n in range(min(len(opener) - 1, len(text)), best, -1):
            if opener.startswith(text[-n:]):
                best = n
                break
    return best


def _strip_one_newline(value: str) -> str:
    # Qwen3-Coder puts each value on its own line; the newlines around it are layout.
    if value.startswith("\n"):
        value = value[1:]
    if value.endswith("\n"):
        value = value[:-1]
    return value


def _coerce(value: str, schema: Any) -> Any:
    """An XML parameter (always text) as the type the tool's schema declares."""
    kind = schema.get("type") if isinstance(schema, Mapping) else None
    if kind in (None, "string") or isinstance(kind, list):
        return value
    stripped = value.strip()
    try:
        if kind == "integer":
            return int(stripped)
        if kind == "number":
            return float(stripped)
        if kind == "boolean" and stripped.lower() in ("true", "false"):
            return stripped.lower() == "true"
        if kind in ("object", "array"):
            return parse_json_lenient(stripped)
    except ValueError:
        pass
    return value  # the tool's own validation explains the mismatch to the model


def _raw_arguments(body: str) -> str:
    m = re.search(r'"(?:arguments|parameters)"\s*:\s*', body)
    return body[m.end() :].strip() if m else body.strip()


# -- argument JSON -----------------------------------------------------------------------------
_CODE_FENCE = re.compile(r"^```[\w-]*\s*\n?(.*?)\n?\s*```$", re.DOTALL)


def parse_json_lenient(text: str) -> Any:
    """JSON, repairing only what has one reading; raises ValueError with the parser's reason."""
    text = text.strip()
    fenced = _CODE_FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError as first:
        error = first
    for candidate in (_close_brackets(text), _drop_surplus_closers(text)):
        if candidate is not None:
            try:
                return json.loads(candidate)
            except json.JSONDecodeError:
                pass
    raise ValueError(f"{error.msg} at char {error.pos}")


def _close_brackets(text: str) -> str | None:
    """`text` with its missing closing brackets added, when it stops right after a complete
    value; None when it stops inside a string, after a comma or colon, or is not truncated."""
    stack: list[str] = []
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]" and (not stack or stack.pop() != ch):
            return None
    # Only after a value that cannot go on: a closed string or bracket, or a literal. A number
    # at the end may itself be cut short ("12" of "125"), so it is not repaired.
    stripped = text.rstrip()
    complete = stripped.endswith(('"', "}", "]", "true", "false", "null"))
    if in_string or not stack or not complete:
        return None
    return stripped + "".join(reversed(stack))


def _drop_surplus_closers(text: str) -> str | None:
    """The first JSON value of `text` when all that follows it is stray closing brackets."""
    try:
        _, end = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError:
        return None
    rest = text[end:]
    if rest.strip() and not rest.strip().strip("}]"):
        return text[:end]
    return None


def parse_arguments(raw: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Tool-call arguments as a dict; raises ValueError with a reason the model can act on."""
    if isinstance(raw, Mapping):
        return dict(raw)
    if raw is None or not raw.strip():
        return {}
    try:
        value = parse_json_lenient(raw)
    except ValueError as e:
        raise ValueError(f"arguments are not valid JSON ({e})") from None
    if isinstance(value, str):  # JSON encoded twice: '"{\\"path\\": ...}"'
        with contextlib.suppress(ValueError):
            value = parse_json_lenient(value)
    if not isinstance(value, dict):
        raise ValueError("arguments must be a JSON object")
    return value
