"""`nex doctor -m MODEL [-e URL]`: preflight an endpoint before trusting it with a session.

Each check is a row (what, status, detail): reachability, whether the model is served, a tiny
completion, streaming, a tool-call round trip, whether the server rejects two user turns in a
row (informational: nex never sends them), the context window and where it came from, what is
known of the chat template (the adaptations nex learned for this endpoint and model, and the
template itself where the server publishes it: llama.cpp's /props), and the latencies seen. The
table goes to stdout, then one verdict line; the exit code is 0 when nex can work with the
endpoint and 1 when it cannot, and the verdict then names what to fix.

For `claude:` and `codex:` models the handler module runs its own checks
(`handlers.<name>.doctor(plan) -> list[(what, ok, detail)]`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexpy.errors import ProviderError, one_line
from nexpy.plan import SpawnPlan, SpawnRequest, plan_spawn

OK, FAIL, WARN, INFO, SKIP = "ok", "FAIL", "warn", "info", "skip"
DEFAULT_TIMEOUT = 120.0  # per request: a local server may load the model on the first one

# A prompt far longer than any window llama-cpp-python is run with (it is ~300k tokens for a
# BPE vocab, 600k for a byte-level one); the server refuses it before evaluating anything.
_OVERFLOW_PROBE = " a" * 300_000
_MAX_CONTEXT = re.compile(r"maximum context length is (\d+)|context window of (\d+)")

# Long enough that a cache shows (llama.cpp reuses whole batches), short enough for -c 512.
PROMPT_CACHE_PROBE = "You check a prompt cache. " + "Numbers: " + " ".join(map(str, range(60)))
ECHO_TOOL = {  # the tool of the round-trip check
    "type": "function",
    "function": {
        "name": "echo",
        "description": "Echo text back.",
        "parameters": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    },
}


@dataclass
class Row:
    what: str
    status: str
    detail: str
    hint: str = ""


def _parser() -> argparse.ArgumentParser:
    from nexpy.args import UsageParser, positive

    p = UsageParser(
        prog="nex doctor", description="Check that an endpoint and model work with nex."
    )
    p.add_argument("-m", "--model", help="PROVIDER:MODEL, e.g. local:qwen3-coder")
    p.add_argument("-e", "--endpoint", help="the model server: a URL or a configured name")
    p.add_argument(
        "--context-window", type=positive(int), metavar="N", help="the window you intend to use"
    )
    p.add_argument(
        "--timeout",
        type=positive(float),
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"per request (default {DEFAULT_TIMEOUT:g})",
    )
    return p


def main(argv: list[str]) -> int:
    """Entry point of `nex doctor`; returns the exit code."""
    args = _parser().parse_args(argv)
    from nexpy.config import load_config

    plan = plan_spawn(
        SpawnRequest(args.model, args.endpoint, context_window=args.context_window),
        load_config(Path.cwd()),
    )
    print(plan.line(), file=sys.stderr, flush=True)
    where = f"{plan.spec}" + (f" at {plan.endpoint}" if plan.endpoint else "")
    print(f"nex doctor: {where}")
    rows = [*diagnose(plan, timeout=args.timeout), sandbox_row()]
    rows.append(instructions_row(plan, Path.cwd()))
    print(render(rows))
    failed = next((r for r in rows if r.status == FAIL), None)
    if failed is None:
        print(f"verdict: usable: nex can work with {where}")
        return 0
    fix = f"; {failed.hint}" if failed.hint else ""
    print(f"verdict: not usable: {failed.what}: {failed.detail}{fix}")
    return 1


def diagnose(plan: SpawnPlan, *, timeout: float = DEFAULT_TIMEOUT) -> list[Row]:
    """Every check for `plan`, in order; a failed prerequisite skips what depends on it."""
    if plan.handler != "nex":
        return _handler_rows(plan)
    if plan.spec.route.embedded:
        return [Row("model", OK, "the embedded stub model needs no server")]
    return asyncio.run(_Checks(plan, timeout).run())


def sandbox_row() -> Row:
    """Whether bash can be confined here (a warning, not a failure: the endpoint is usable)."""
    from nexpy.sandbox import INSTALL_HINT, probe

    bwrap, why = probe()
    if bwrap is None:
        return Row("sandbox", WARN, f"{why}; bash would run unconfined ({INSTALL_HINT})")
    return Row("sandbox", OK, f"{bwrap} confines bash here (read-only, workspace-write)")


def instructions_row(plan: SpawnPlan, workdir: Path) -> Row:
    """Which AGENTS.md / CLAUDE.md files a session started here would read (nexpy.instructions)."""
    from nexpy.config import global_config_path
    from nexpy.instructions import discover

    if plan.handler != "nex":
        return Row("instructions", INFO, f"{plan.handler} reads its own project files")
    files = discover(workdir, global_config_path().parent)
    return Row("instructions", INFO, ", ".join(map(str, files)) or "no AGENTS.md or CLAUDE.md")


def render(rows: list[Row]) -> str:
    width = max(len(r.what) for r in rows)
    return "\n".join(f"  {r.status:<4}  {r.what:<{width}}  {r.detail}" for r in rows)


def _handler_rows(plan: SpawnPlan) -> list[Row]:
    try:
        module = importlib.import_module(plan.spec.route.factory.partition(":")[0])
        check = module.doctor
    except (ImportError, AttributeError) as e:
        return [
            Row(
                "handler",
                FAIL,
                f"the {plan.handler} handler cannot be loaded ({e})",
                hint="reinstall nexpy with its handlers package",
            )
        ]
    return [Row(what, OK if ok else FAIL, detail) for what, ok, detail in check(plan)]


class _Checks:
    """The checks of one in-process route, sharing what earlier ones learned."""

    def __init__(self, plan: SpawnPlan, timeout: float) -> None:
        from nexpy.budget import DEFAULT_WINDOW
        from nexpy.provider import LitellmModel

        self.plan = plan
        self.timeout = timeout
        window = plan.context_window or DEFAULT_WINDOW
        self.model = LitellmModel(plan, window=window, idle_timeout=timeout, max_attempts=2)
        self.rows: list[Row] = []
        self.latency: list[str] = []
        self.served: Any = None  # the /v1/models (or /api/tags) body

    async def run(self) -> list[Row]:
        from nexpy.litellm_setup import start_background_import

        start_background_import()  # ready by the time the first completion needs it
        if self.plan.api_key_env and not self.plan.api_key():
            var = self.plan.api_key_env
            self.rows.append(Row("key", FAIL, f"${var} is not set", hint=f"export {var}=…"))
            return self.rows
        if not await self._reachable():
            return self.rows
        self._model_served()
        await self._window()
        self.rows.extend(template_rows(self.plan, await self._chat_template()))
        steps: list[Callable[[], Awaitable[bool]]] = [
            self._completion,
            self._streaming,
            self._tool_round_trip,
        ]
        for step in steps:
            if not await step():
                self.rows.append(Row("rest", SKIP, "skipped after the failure above"))
                break
        else:
            await self._user_turns()
            await self._prompt_cache()
        if self.latency:
            self.rows.append(Row("latency", INFO, " · ".join(self.latency)))
        return self.rows

    # -- the server ---------------------------------------------------------------------------
    def _client(self) -> Any:
        import httpx

        headers = dict(self.plan.headers)
        if key := self.plan.api_key():
            headers["Authorization"] = f"Bearer {key}"
        return httpx.AsyncClient(timeout=httpx.Timeout(self.timeout, connect=10.0), headers=headers)

    def _list_url(self) -> str:
        endpoint = (self.plan.endpoint or "").rstrip("/")
        return f"{endpoint}/api/tags" if self._ollama else f"{endpoint}/models"

    @property
    def _ollama(self) -> bool:
        return self.plan.spec.route.native_api == "ollama"

    async def _reachable(self) -> bool:
        from nexpy.classify import classify, server_words

        url = self._list_url()
        started = time.monotonic()
        try:
            async with self._client() as client:
                response = await client.get(url)
        except Exception as exc:
            error = classify(exc, self.plan)
            self.rows.append(Row("reachable", FAIL, error.message, hint=_own_hint(error.hint)))
            return False
        ms = _ms(started)
        self.latency.append(f"list models {ms}")
        if response.status_code in (401, 403):
            var = f"${self.plan.api_key_env}" if self.plan.api_key_env else "the endpoint's key"
            words = server_words(response.text)
            self.rows.append(
                Row(
                    "reachable",
                    FAIL,
                    f"HTTP {response.status_code} from {url}: the server refused the credentials "
                    f"({words})",
                    hint=f"check {var}",
                )
            )
            return False
        if response.status_code != 200:
            words = server_words(response.text)
            self.rows.append(
                Row("reachable", WARN, f"{url} answered HTTP {response.status_code} ({words})")
            )
            return True
        try:
            self.served = response.json()
        except ValueError:
            self.rows.append(Row("reachable", WARN, f"{url} answered 200 with no JSON list"))
            return True
        self.rows.append(Row("reachable", OK, f"{url} answered in {ms}"))
        return True

    def _model_served(self) -> None:
        names = _served_names(self.served, ollama=self._ollama)
        if not names:
            return
        wanted = self.plan.model
        listed = ", ".join(names[:8]) + (" …" if len(names) > 8 else "")
        if wanted in names or (self._ollama and f"{wanted}:latest" in names):
            self.rows.append(Row("model", OK, f"{wanted!r} is served"))
        elif len(names) == 1:
            # llama.cpp serves one model under whatever name it is asked for; vLLM does not.
            self.rows.append(
                Row("model", WARN, f"{wanted!r} is not listed; the server serves {listed}")
            )
        else:
            self.rows.append(
                Row(
                    "model",
                    FAIL,
                    f"{wanted!r} is not among the served models: {listed}",
                    hint=f"pass -m {self.plan.spec.route.prefix}:NAME with one of them",
                )
            )

    async def _window(self) -> None:
        from nexpy.window import discover

        found = await discover(self.plan)
        if found.source != "default":
            self.rows.append(Row("window", OK, f"{found.tokens:,} tokens (from {found.source})"))
            return
        n_ctx = await self._overflow_probe() if _is_llama_cpp_python(self.served) else None
        if n_ctx is not None:
            self.rows.append(
                Row(
                    "window",
                    OK,
                    f"{n_ctx:,} tokens (from llama-cpp-python's overflow error; it has no /props)",
                )
            )
            return
        self.rows.append(
            Row(
                "window",
                WARN,
                f"unknown: the server does not say; nex assumes {found.tokens:,} tokens",
                hint="pass --context-window N",
            )
        )

    async def _chat_template(self) -> str | None:
        """The chat template the server publishes (llama.cpp's /props), or None."""
        if self._ollama:
            return None
        endpoint = (self.plan.endpoint or "").rstrip("/")
        root = endpoint.removesuffix("/v1")
        try:
            async with self._client() as client:
                response = await client.get(f"{root}/props")
            body = response.json() if response.status_code == 200 else None
        except Exception:
            return None  # only a probe: most servers publish no template
        template = body.get("chat_template") if isinstance(body, dict) else None
        return template if isinstance(template, str) and template.strip() else None

    async def _overflow_probe(self) -> int | None:
        """llama-cpp-python publishes its n_ctx nowhere but in the error for a prompt that does
        not fit; it checks the length before evaluating anything, so the probe costs only the
        tokenizing."""
        endpoint = (self.plan.endpoint or "").rstrip("/")
        body = {
            "model": self.plan.model,
            "messages": [{"role": "user", "content": _OVERFLOW_PROBE}],
            "max_tokens": 1,
            "stream": False,
        }
        try:
            async with self._client() as client:
                response = await client.post(f"{endpoint}/chat/completions", json=body)
        except Exception:
            return None
        m = _MAX_CONTEXT.search(response.text) if response.status_code >= 400 else None
        return int(m.group(1) or m.group(2)) if m else None

    # -- requests through the same path as a session ------------------------------------------
    async def _request(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        max_tokens: int = 16,
    ) -> Any:
        from nexpy.litellm_setup import litellm

        kwargs = self.model.request_kwargs(messages, tools, stream=False, max_tokens=max_tokens)
        return await asyncio.wait_for(litellm().acompletion(**kwargs), self.timeout + 10)

    def _failed(self, what: str, exc: BaseException) -> bool:
        from nexpy.classify import classify

        error = classify(exc, self.plan, idle_timeout=self.timeout)
        self.rows.append(Row(what, FAIL, error.message, hint=_own_hint(error.hint)))
        return False

    async def _completion(self) -> bool:
        from nexpy.litellm_setup import litellm

        await asyncio.to_thread(litellm)  # its import (seconds) is not the server's latency
        started = time.monotonic()
        try:
            response = await self._request([{"role": "user", "content": "Say: ok"}])
        except Exception as exc:
            return self._failed("completion", exc)
        ms = _ms(started)
        self.latency.append(f"completion {ms}")
        text = _message_text(response)
        self.rows.append(Row("completion", OK, f"answered in {ms}: {_quote(text)}"))
        return True

    async def _streaming(self) -> bool:
        started = time.monotonic()
        first: list[float] = []
        pieces: list[str] = []

        def on_text(piece: str) -> None:
            if not first:
                first.append(time.monotonic())
            pieces.append(piece)

        try:
            reply = await self.model.complete(
                [{"role": "user", "content": "Count: one two three"}], None, on_text, max_tokens=16
            )
        except ProviderError as e:
            self.rows.append(Row("streaming", FAIL, e.message, hint=_own_hint(e.hint)))
            return False
        if first:
            self.latency.append(f"first token {round((first[0] - started) * 1000)} ms")
        detail = f"{len(pieces)} pieces, {len(reply.content)} characters"
        self.rows.append(Row("streaming", OK, detail))
        return True

    async def _tool_round_trip(self) -> bool:
        from nexpy.messages import assistant, tool_result
        from nexpy.toolcalls import new_call_id

        # Short on purpose: a small window (llama.cpp -c 512) must still take the round trip.
        ask = [
            {"role": "system", "content": "Use the tools."},
            {"role": "user", "content": "Call echo with text ping."},
        ]
        try:
            reply = await self.model.complete(ask, [ECHO_TOOL], lambda _: None, max_tokens=128)
        except ProviderError as e:
            hint = _own_hint(e.hint) or "llama.cpp needs --jinja for tools"
            self.rows.append(Row("tool calls", FAIL, f"a request with tools: {e.message}", hint))
            return False
        call = next((c for c in reply.tool_calls if c["function"]["name"] == "echo"), None)
        if call is None:
            how = "the model answered without calling the tool (a weak or random model?)"
            call = {
                "id": new_call_id(),
                "type": "function",
                "function": {"name": "echo", "arguments": json.dumps({"text": "ping"})},
            }
        elif reply.calls_from_text:
            how = "the model wrote the call as text (the server did not parse it; nex recovers it)"
        else:
            how = "the model called the tool (native tool_calls)"
        history = [
            *ask,
            assistant(None, [call]),
            tool_result(call["id"], "ping", "echo"),
        ]
        try:
            await self._request(history, tools=[ECHO_TOOL])
        except Exception as exc:
            return self._failed("tool calls", exc)
        self.rows.append(Row("tool calls", OK, f"{how}; the server took the result back"))
        return True

    async def _user_turns(self) -> None:
        twice = [
            {"role": "user", "content": "First part."},
            {"role": "user", "content": "Second part."},
        ]
        try:
            await self._request(twice, max_tokens=1)
        except Exception as exc:
            from nexpy.classify import classify

            refusal = classify(exc, self.plan).message
            self.rows.append(
                Row("user turns", INFO, f"two in a row are rejected ({refusal}); nex merges them")
            )
            return
        self.rows.append(Row("user turns", INFO, "two in a row are accepted"))

    async def _prompt_cache(self) -> None:
        """Whether the server keeps the prompt's cache: the same request twice, and what it
        says it processed of the second (nex keeps each request an extension of the last)."""
        ask = [
            {"role": "system", "content": PROMPT_CACHE_PROBE},
            {"role": "user", "content": "Say: ok"},
        ]
        usage: dict[str, int] | None = None
        try:
            for _ in range(2):
                usage = (await self.model.complete(ask, None, lambda _: None, max_tokens=1)).usage
        except ProviderError as e:
            self.rows.append(Row("prompt cache", INFO, f"not checked: {e.message}"))
            return
        if not usage or "processed_tokens" not in usage:
            self.rows.append(Row("prompt cache", INFO, "the server does not report cached tokens"))
            return
        line = (
            f"a repeated request: {usage['processed_tokens']:,} of {usage['prompt_tokens']:,} "
            "prompt tokens processed, the rest cached"
        )
        if usage.get("cached_tokens"):
            self.rows.append(Row("prompt cache", OK, line))
        else:
            hint = "llama.cpp: leave --cache-prompt on; vLLM: --enable-prefix-caching"
            self.rows.append(Row("prompt cache", WARN, line, hint=hint))


def template_rows(plan: SpawnPlan, template: str | None, home: Path | None = None) -> list[Row]:
    """What is known of the chat template at the plan's endpoint, a row per question: the
    adaptations nex learned there (nexpy.adapt, kept in the state dir), else what the template's
    source says (its own refusal texts, whether it reads tools and thinking), else unknown."""
    from nexpy import adapt, reasoning
    from nexpy.agent import ADAPTATIONS_FILE
    from nexpy.session import state_home

    where = plan.endpoint or plan.spec.route.prefix
    store = adapt.LearnedStore((home or state_home()) / ADAPTATIONS_FILE)
    learned = set(store.get(where, plan.model))

    def fact(name: str, adapted: str, native: str) -> str:
        if name in learned:
            return f"{adapted} (learned: {name})"
        if template is None:
            return f"{native} unless the server refuses it (no template published; nothing learned)"
        # The template's own refusal texts tell; for tools, whether it reads them at all (its
        # alternation check is no refusal of tools).
        if name == "tools-in-prompt":
            refuses = "tools" not in template
        else:
            refuses = adapt.rule(name).answers(template)
        if refuses:
            return f"{adapted} (so the published template says)"
        return f"{native} (the published template)"

    # As nex decides (nexpy.reasoning): the published template, else the model's family.
    if template is not None and reasoning.template_reads_reasoning(template):
        thinking = "sent back on assistant turns as reasoning_content (the template reads it)"
    elif reasoning.keeps_reasoning(plan.model):
        thinking = "sent back on assistant turns as reasoning_content (a family that reads it)"
    elif template is not None:
        thinking = "left out of history (the published template does not read it)"
    else:
        thinking = "left out of history (not a family whose template reads it)"
    rows = [
        Row(
            "template",
            INFO,
            f"{len(template):,} characters from /props" if template else "not published",
        ),
        Row(
            "system role",
            INFO,
            fact("system-in-user", "not supported: into the first user turn", "supported"),
        ),
        Row(
            "parallel calls",
            INFO,
            fact("single-tool-call", "one call per turn", "several per turn"),
        ),
        Row(
            "tool support",
            INFO,
            fact("tools-in-prompt", "tools described in the prompt", "native tool calls"),
        ),
        Row("tool-call ids", INFO, fact("short-tool-ids", "9 alphanumerics", "any")),
        Row("reasoning", INFO, thinking),
    ]
    if learned & {"content-string", "assistant-between"}:
        rows.append(
            Row(
                "other rules",
                INFO,
                ", ".join(sorted(learned & {"content-string", "assistant-between"})),
            )
        )
    return rows


def _own_hint(hint: str) -> str:
    """A provider error's hint without its advice to run the doctor, which is running."""
    clauses = re.split(r"(?:, or |; |, )(?=[^,;]*nex doctor)", hint)
    return clauses[0] if "nex doctor" not in clauses[0] else ""


def _served_names(body: Any, *, ollama: bool) -> list[str]:
    if not isinstance(body, dict):
        return []
    entries = body.get("models" if ollama else "data")
    if not isinstance(entries, list):
        return []
    key = "name" if ollama else "id"
    return [str(e[key]) for e in entries if isinstance(e, dict) and e.get(key)]


def _is_llama_cpp_python(body: Any) -> bool:
    """llama-cpp-python's /v1/models lists its models as owned by "me"."""
    entries = body.get("data") if isinstance(body, dict) else None
    return isinstance(entries, list) and any(
        isinstance(e, dict) and e.get("owned_by") == "me" for e in entries
    )


def _message_text(response: Any) -> str:
    try:
        return str(response.choices[0].message.content or "")
    except (AttributeError, IndexError):
        return ""


def _quote(text: str, limit: int = 40) -> str:
    return repr(one_line(text, limit))


def _ms(started: float) -> str:
    return f"{round((time.monotonic() - started) * 1000)} ms"
