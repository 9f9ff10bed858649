"""The transformers rendering engine: a chat request rendered the way vLLM, TGI and
llama-cpp-python render it, through transformers' ``apply_chat_template``.

This mirrors transformers' ``_compile_jinja_template`` and vLLM's request preprocessing:

- a jinja2 ``ImmutableSandboxedEnvironment`` with ``trim_blocks``, ``lstrip_blocks`` and the
  ``loopcontrols`` extension, plus a ``{% generation %}`` block that renders its body (the
  assistant-mask tracker transformers adds);
- the globals ``raise_exception`` (a ``TemplateError`` with the template's own message) and
  ``strftime_now``, and transformers' ``tojson`` filter (``ensure_ascii=False``, keyword
  ``indent``/``separators``/``sort_keys``), which replaces jinja2's HTML-escaping one;
- ``add_generation_prompt=True``, ``tools`` (the request's, or None), ``documents=None``, the
  special tokens as ``bos_token``/``eos_token``/``unk_token``/``pad_token``, and the request's
  ``chat_template_kwargs``;
- vLLM's ``_postprocess_messages``: an assistant message's tool-call ``arguments`` JSON string
  becomes an object (an empty or missing one becomes ``{}``), because templates index into it.

A template exception is a refusal: vLLM answers it with a 400 whose body is
``vllm_error(message)``. Never imports ``nexpy``: a stub is an independent peer.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["TemplateRefusal", "TemplateRenderer", "vllm_error"]


class TemplateRefusal(Exception):
    """The template (or the request's shape) refused this request; ``str()`` is the message
    the server passes back."""


class _Generation(jinja2.ext.Extension):
    """``{% generation %}…{% endgeneration %}``: transformers' AssistantTracker, minus the
    mask it records (rendering is all this engine needs)."""

    tags = {"generation"}  # noqa: RUF012 (jinja2 declares it an instance attribute)

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # transformers' filter: unlike jinja2's own, it neither HTML-escapes nor sorts keys.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def compile_template(source: str) -> jinja2.Template:
    """``source`` compiled as transformers compiles a chat template."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_Generation, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def _postprocess(messages: list[Any]) -> list[Any]:
    """vLLM's preprocessing: tool-call arguments as objects (a copy; the request is kept)."""
    out = copy.deepcopy(messages)
    for message in out:
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        calls = message.get("tool_calls")
        if not isinstance(calls, list):
            continue
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict):
                continue
            arguments = fn.get("arguments")
            if not arguments:
                fn["arguments"] = {}
            elif isinstance(arguments, str):
                try:
                    fn["arguments"] = json.loads(arguments)
                except json.JSONDecodeError as e:
                    # vLLM lets the JSONDecodeError escape as a 400 with its text
                    raise TemplateRefusal(str(e)) from e
    return out


class TemplateRenderer:
    """One chat template, compiled once; ``render(body)`` is what the server feeds the model."""

    def __init__(
        self,
        source: str,
        *,
        bos_token: str = "<s>",
        eos_token: str = "</s>",
        name: str = "template",
    ) -> None:
        self.source = source
        self.name = name
        self.special_tokens = {
            "bos_token": bos_token,
            "eos_token": eos_token,
            "unk_token": "<unk>",
            "pad_token": eos_token,
        }
        self._template = compile_template(source)

    @classmethod
    def from_file(cls, path: str | Path, **kw: Any) -> TemplateRenderer:
        """The template in ``path`` (a ``.jinja`` file)."""
        path = Path(path)
        return cls(path.read_text(encoding="utf-8"), name=path.stem, **kw)

    def render(self, body: Mapping[str, Any], *, generation: bool = True) -> str:
        """The prompt for the chat request ``body``; raises TemplateRefusal when refused.

        ``generation`` False renders without the generation prompt: with the answer appended
        to the messages, what a server's prompt cache holds after answering."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise TemplateRefusal("messages must be a non-empty list")
        tools = body.get("tools") or None
        kwargs = body.get("chat_template_kwargs")
        extra = dict(kwargs) if isinstance(kwargs, dict) else {}
        context: dict[str, Any] = {
            **self.special_tokens,
            "messages": _postprocess(messages),
            "tools": copy.deepcopy(tools),
            "documents": None,
            "add_generation_prompt": generation,
            **extra,
        }
        try:
            return self._template.render(**context)
        except jinja2.exceptions.TemplateError as e:
            raise TemplateRefusal(str(e) or type(e).__name__) from e
        except Exception as e:  # a template bug on this history: vLLM answers it with a 400 too
            raise TemplateRefusal(f"{type(e).__name__}: {e}") from e


def vllm_error(message: str, status: int = 400) -> dict[str, Any]:
    """vLLM's OpenAI-compatible error body for a rejected request."""
    return {
        "error": {
            "message": message,
            "type": "BadRequestError",
            "param": None,
            "code": status,
        }
    }
