"""The model's tools (DESIGN §7): the registry, the argument check, and the one place a tool runs.

A tool is a name, a JSON schema and an async `run(args, ctx) -> str`. `execute()` is the only
caller of `run`: it checks the arguments against the schema, turns every failure into a
`ToolResult(ok=False)` the model can read, and caps the text that goes back to the model.
Only `asyncio.CancelledError` passes through, because the loop cancels tools on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from nexpy.credentials import redact
from nexpy.tools.base import Tool, ToolContext, ToolError, ToolResult
from nexpy.tools.bash import BASH
from nexpy.tools.files import EDIT_FILE, GLOB, GREP, READ_FILE, WRITE_FILE
from nexpy.tools.output import cap

__all__ = ["Tool", "ToolContext", "ToolError", "ToolResult", "all_tools", "execute", "schemas"]


def all_tools(read_only: bool = False) -> dict[str, Tool]:
    """Every tool by name, in a stable order; `read_only` keeps only the non-mutating ones."""
    tools = (READ_FILE, WRITE_FILE, EDIT_FILE, GLOB, GREP, BASH)
    return {t.name: t for t in tools if not (read_only and t.mutating)}


def schemas(tools: dict[str, Tool]) -> list[dict[str, Any]]:
    """The tools in OpenAI function-calling format."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                # A copy, so a caller that edits the request cannot change the registry.
                "parameters": copy.deepcopy(t.parameters),
            },
        }
        for t in tools.values()
    ]


async def execute(tool: Tool, args: dict[str, Any], ctx: ToolContext, call_id: str) -> ToolResult:
    """Run one tool call; every failure becomes `ok=False`, only cancellation propagates."""
    ok = True
    try:
        clean = check_args(tool.parameters, args)
        text = await tool.run(clean, ctx)
    except asyncio.CancelledError:
        raise
    except ToolError as e:
        ok = False
        text = e.output if e.output is not None else _error_line(e.message)
    except UnicodeDecodeError as e:
        ok = False
        text = _error_line(f"not UTF-8 text ({e.reason} at byte {e.start})")
    except OSError as e:
        ok = False
        reason = e.strerror or str(e)
        text = _error_line(f"{reason}: {e.filename}" if e.filename else reason)
    except Exception as e:
        # A bug in a tool must not end the session: the model sees it and the run goes on.
        ok = False
        text = _error_line(f"{type(e).__name__}: {e}")

    text = redact(text)  # a key read from a file never reaches the model, journal or events
    if len(text) <= ctx.output_cap:
        return ToolResult(ok=ok, output=text)
    # Capping may write up to ~10 MB to disk; keep that off the event loop.
    capped = await asyncio.to_thread(
        cap, text, ctx.output_cap, outputs_dir=ctx.outputs_dir, call_id=call_id
    )
    return ToolResult(
        ok=ok, output=capped.text, truncated=capped.truncated, full_path=capped.full_path
    )


def _error_line(message: str) -> str:
    # One line: the loop and the event stream show it as is.
    return "error: " + " ".join(message.splitlines()).strip()


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def check_args(schema: dict[str, Any], args: object) -> dict[str, Any]:
    """Check call arguments against a tool's flat object schema; return them cleaned.

    Raises ToolError naming the first problem. A `null` for an optional argument counts as
    absent (models often send every key), and a whole-number float passes as an integer.
    """
    if not isinstance(args, dict):
        raise ToolError(f"arguments must be a JSON object, got {_json_type(args)}")
    props: dict[str, Any] = schema.get("properties", {})
    extra = sorted(str(k) for k in args if k not in props)
    if extra:
        raise ToolError(
            f"unknown argument(s) {', '.join(extra)}; this tool takes {', '.join(props) or 'none'}"
        )
    clean = {k: v for k, v in args.items() if v is not None}
    for name in schema.get("required", []):
        if name not in clean:
            raise ToolError(f"missing required argument '{name}'")
    for name, value in list(clean.items()):
        spec = props[name]
        want = spec.get("type")
        if want in _JSON_TYPES:
            if want == "integer" and isinstance(value, float) and value.is_integer():
                value = clean[name] = int(value)
            # bool is an int in Python but not in JSON.
            bad_bool = isinstance(value, bool) and want != "boolean"
            if bad_bool or not isinstance(value, _JSON_TYPES[want]):
                raise ToolError(f"argument '{name}' must be {want}, got {_json_type(value)}")
        if "minimum" in spec and value < spec["minimum"]:
            raise ToolError(f"argument '{name}' must be at least {spec['minimum']}, got {value}")
        if "exclusiveMinimum" in spec and value <= spec["exclusiveMinimum"]:
            raise ToolError(
                f"argument '{name}' must be greater than {spec['exclusiveMinimum']}, got {value}"
            )
    return clean
