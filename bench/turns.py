"""Sections 2-4: what nex adds to each request, and how that grows. The clients run in the
bench's worker process (`bench.worker`), the stub in its own.

2. Per-turn overhead: a scripted session of tool-call turns on a zero-latency stub, run by nex's
   agent loop (LitellmModel, tools, journal, normalize, count); then the very request bodies nex
   sent, replayed by raw httpx, the openai SDK and bare `litellm.acompletion`. Plus the same
   session through a `nex --autonomous` subprocess, timed by the stub's arrival clock.
3. Streaming: the stub bursts N one-token chunks; tokens/s through nex (to a null sink) vs a raw
   SSE reader, first token to last.
4. Long sessions: a journal of N turns is resumed and a few more turns run on it; the cost of a
   turn (normalize + count + journal + request) at N = 10, 100, 1000, beside the request alone.

Every client streams, as nex does, and makes one warm-up request before anything is timed, so
litellm's first-call initialization (hundreds of lazy imports) is not counted as a turn.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.harness import (
    MODEL,
    Figure,
    Stub,
    StubClient,
    at_least,
    at_most,
    clean_env,
    figure,
    median,
    nex_argv,
)
from bench.harness import run as run_process
from bench.settings import Context

# Stated by every scripted reply, so the stub never counts a long prompt (that would time the
# stub, not the client).
USAGE = {"prompt_tokens": 100, "completion_tokens": 10}
TOOL_CALLS = (
    {"name": "read_file", "arguments": {"path": "notes.txt"}},
    {"name": "glob", "arguments": {"pattern": "*.txt"}},
    {"name": "grep", "arguments": {"pattern": "alpha"}},
)


def reading(i: int, sessions: int = 1) -> dict[str, Any]:
    """The i-th scripted reply of `sessions` sessions served in turn: a read_file call whose
    offset alternates for each session, so nex's stuck-loop rule (the same call four times in a
    row ends the run, nexpy.limits) never cuts a session short of the turns it is measured on."""
    offset = 1 + i // sessions % 2
    call = {"name": "read_file", "arguments": {"path": "notes.txt", "offset": offset}}
    return {"tool_calls": [call], "usage": USAGE}


# In-process sessions run as on an endpoint whose context_window is configured: window discovery
# is a once-per-process cost (the subprocess figures include it), not a per-turn one.
CONFIGURED_WINDOW = 32_768
WARMUP = {"content": "warm up", "usage": USAGE}
WARMUPS = 4  # one short request per client before anything is timed
Sink = Callable[[str], None]


def _session_replies(turns: int) -> list[dict[str, Any]]:
    """`turns` requests: tool calls (cheap, in-process tools), then a final answer."""
    replies: list[dict[str, Any]] = [
        {"tool_calls": [TOOL_CALLS[i % len(TOOL_CALLS)]], "usage": USAGE} for i in range(turns - 1)
    ]
    return [*replies, {"content": "All done.", "usage": USAGE}]


def prepare_workdir(scratch: Path) -> Path:
    work = scratch / "work"
    work.mkdir(exist_ok=True)
    (work / "notes.txt").write_text("alpha\nbeta\ngamma\n" * 10)
    (work / "more.txt").write_text("delta alpha\n" * 5)
    return work


def _plan(url: str, window: int | None = None) -> Any:
    from nexpy.config import Config
    from nexpy.plan import SpawnRequest, plan_spawn

    # An empty environ: a NEX_MODEL in the caller's shell must not change what is measured.
    return plan_spawn(SpawnRequest(f"local:{MODEL}", url, None, window), Config(), environ={})


def _run(plan: Any, work: Path, home: Path, max_turns: int | None = None, **opts: Any) -> Any:
    from nexpy.handler import HandlerOptions
    from nexpy.runtime import Run, RunOptions

    handler = HandlerOptions(work, yes=True, max_turns=max_turns)
    return Run(plan, RunOptions(handler, home=home, **opts), sinks=[])


async def nex_session(
    plan: Any, work: Path, home: Path, task: str, on_text: Sink | None = None, **opts: Any
) -> float:
    """Seconds nex's agent loop takes to answer `task` (session setup not included)."""
    from nexpy.errors import LimitReached
    from nexpy.outcome import outcome_of

    run = _run(plan, work, home, **opts)
    start = time.perf_counter()
    outcome = outcome_of(None)
    try:
        await run.agent.send(task, on_text)
    except LimitReached as e:
        outcome = outcome_of(e)
    finally:
        elapsed = time.perf_counter() - start
        await run.end(outcome)
    return elapsed


# -- the same requests, by other clients ---------------------------------------------------------
def _content_of(chunk: dict[str, Any]) -> str | None:
    choices = chunk.get("choices") or []
    return (choices[0].get("delta") or {}).get("content") if choices else None


async def replay_httpx(
    url: str, bodies: list[dict[str, Any]], on_text: Sink | None = None
) -> float:
    """Raw httpx: post each body, read its SSE stream, decode every event. The floor."""
    async with httpx.AsyncClient(timeout=120) as client:
        start = time.perf_counter()
        for body in bodies:
            async with client.stream("POST", url + "/chat/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        piece = _content_of(json.loads(line[6:]))
                        if piece and on_text is not None:
                            on_text(piece)
        return time.perf_counter() - start


def _sdk_kwargs(body: dict[str, Any]) -> dict[str, Any]:
    known = ("model", "messages", "tools", "stream", "stream_options", "max_tokens")
    kwargs = {k: body[k] for k in known if k in body}
    extra = {k: v for k, v in body.items() if k not in known}
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


async def replay_openai(
    url: str, bodies: list[dict[str, Any]], on_text: Sink | None = None
) -> float:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="sk-bench", max_retries=0)
    try:
        start = time.perf_counter()
        for body in bodies:
            stream = await client.chat.completions.create(**_sdk_kwargs(body))
            async for chunk in stream:
                piece = chunk.choices[0].delta.content if chunk.choices else None
                if piece and on_text is not None:
                    on_text(piece)
        return time.perf_counter() - start
    finally:
        await client.close()


async def replay_litellm(
    url: str, litellm_model: str, bodies: list[dict[str, Any]], on_text: Sink | None = None
) -> float:
    """Bare `litellm.acompletion`, with only the arguments it needs to make the same request."""
    from nexpy.litellm_setup import litellm

    lm = litellm()
    start = time.perf_counter()
    for body in bodies:
        kwargs: dict[str, Any] = {
            "model": litellm_model,
            "messages": body["messages"],
            "api_base": url,
            "api_key": "sk-bench",
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if body.get("tools"):
            # Without this litellm imports its MCP gateway and fails on a base install (no `mcp`).
            kwargs.update(tools=body["tools"], _skip_mcp_handler=True)
        stream = await lm.acompletion(**kwargs)
        async for chunk in stream:
            piece = chunk.choices[0].delta.content if chunk.choices else None
            if piece and on_text is not None:
                on_text(piece)
    return time.perf_counter() - start


# -- 2. per-turn overhead ---------------------------------------------------------------------
async def per_turn_clients(ctx: Context, stub: StubClient, work: Path) -> list[Figure]:
    s = ctx.settings
    plan = _plan(stub.url, window=CONFIGURED_WINDOW)
    home = ctx.scratch / "home-turns"
    task = "Look around the notes and report."

    async def nex() -> float:
        return await nex_session(plan, work, home, task)

    # Warm-ups: one request per client, on the script's short replies, so first-call setup
    # (litellm's lazy imports, connection pools) is paid before anything is timed.
    await nex()
    warm = stub.requests()[:1]
    await replay_httpx(stub.url, warm)
    await replay_openai(stub.url, warm)
    await replay_litellm(stub.url, plan.litellm_model, warm)

    bodies: list[dict[str, Any]] = []  # what nex sent in its first timed session
    clients: dict[str, Callable[[], Any]] = {
        "nex": nex,
        "httpx": lambda: replay_httpx(stub.url, bodies),
        "openai": lambda: replay_openai(stub.url, bodies),
        "litellm": lambda: replay_litellm(stub.url, plan.litellm_model, bodies),
    }
    per_turn: dict[str, list[float]] = {name: [] for name in clients}
    for _ in range(s.turn_reps):  # interleaved: drift hits every client alike
        for name, client in clients.items():
            per_turn[name].append(await client() / s.turns * 1e3)
            if not bodies:
                bodies += stub.requests()[WARMUPS : WARMUPS + s.turns]

    ms = {name: median(v) for name, v in per_turn.items()}
    ctx.shared["per_turn_litellm_ms"] = ms["litellm"]
    httpx_ratio = ms["nex"] / ms["httpx"]
    figures = [
        figure(
            "per-turn",
            f"nex agent loop, {s.turns}-turn tool session",
            ms["nex"],
            "ms/turn",
            ("bare litellm.acompletion", ms["litellm"]),
            target=at_most(1.3),
            note=f"{httpx_ratio:.2f}× raw httpx",
            samples=per_turn,
        ),
        figure(
            "per-turn",
            "bare litellm.acompletion",
            ms["litellm"],
            "ms/turn",
            ("raw httpx", ms["httpx"]),
        ),
        figure("per-turn", "openai SDK", ms["openai"], "ms/turn", ("raw httpx", ms["httpx"])),
    ]
    figures.append(_journal_append(ctx))
    return figures


def _journal_append(ctx: Context) -> Figure:
    """One journal entry (Session.append: redact, serialize, write, fsync) vs write+fsync."""
    from nexpy.session import Session

    message = {"role": "tool", "tool_call_id": "call_1", "content": "alpha\nbeta\n" * 20}
    session = Session.create(ctx.scratch / "home-append")
    session.lock()
    raw_path = ctx.scratch / "raw-append.jsonl"
    fd = os.open(raw_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    line = (json.dumps({"kind": "message", "message": message}) + "\n").encode()
    ours: list[float] = []
    floor: list[float] = []
    try:
        for _ in range(20):
            start = time.perf_counter()
            session.append("message", message=message)
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            os.write(fd, line)
            os.fsync(fd)
            floor.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        session.close()
    return figure(
        "per-turn",
        "journal append (one entry)",
        median(ours) * 1e3,
        "ms",
        ("os.write + os.fsync", median(floor) * 1e3),
        note="a tool turn makes 2 appends: its call, then its result and execution record",
    )


def _subprocess_per_turn(ctx: Context, stub: StubClient, work: Path) -> Figure:
    env = clean_env(ctx.scratch / "proc")
    before = len(stub.arrivals())
    result = run_process(nex_argv(stub.url, work, "--autonomous", "Look around."), env, work)
    if result.code != 0:
        raise RuntimeError(f"nex --autonomous exited {result.code}: {result.stderr[-600:]}")
    arrivals = stub.arrivals()[before:]
    per_turn = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1) * 1e3
    ctx.shared["autonomous_rss_mb"] = (result.max_rss_mb, len(arrivals))
    return figure(
        "per-turn",
        f"nex --autonomous subprocess, {len(arrivals)} turns",
        per_turn,
        "ms/turn",
        ("bare litellm.acompletion", ctx.shared["per_turn_litellm_ms"]),
        note="first request to last, by the stub's clock",
    )


# -- 3. streaming -----------------------------------------------------------------------------
class Clock:
    """A null sink that notes when the first and the last piece arrived."""

    def __init__(self) -> None:
        self.first = 0.0
        self.last = 0.0
        self.pieces = 0

    def __call__(self, piece: str) -> None:
        now = time.perf_counter()
        if not self.pieces:
            self.first = now
        self.last = now
        self.pieces += 1

    def rate(self, tokens: int) -> float:
        return (tokens - 1) / (self.last - self.first) if self.last > self.first else 0.0


async def streaming_clients(ctx: Context, stub: StubClient, work: Path) -> list[Figure]:
    s = ctx.settings
    plan = _plan(stub.url, window=CONFIGURED_WINDOW)
    home = ctx.scratch / "home-stream"
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "stream"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    async def nex(clock: Clock) -> None:
        await nex_session(plan, work, home, "Stream a long answer.", clock)

    clients: dict[str, Callable[[Clock], Any]] = {
        "nex": nex,
        "sse": lambda clock: replay_httpx(stub.url, [body], clock),
        "openai": lambda clock: replay_openai(stub.url, [body], clock),
        "litellm": lambda clock: replay_litellm(stub.url, plan.litellm_model, [body], clock),
    }
    for client in clients.values():
        await client(Clock())  # warm-up, on the script's short replies
    rates: dict[str, list[float]] = {name: [] for name in clients}
    pieces: dict[str, int] = {}
    for _ in range(s.stream_reps):
        for name, client in clients.items():
            clock = Clock()
            await client(clock)
            rates[name].append(clock.rate(s.stream_tokens))
            pieces[name] = clock.pieces
    tps = {name: median(v) for name, v in rates.items()}
    return [
        figure(
            "streaming",
            f"nex, {s.stream_tokens:,} tokens to a null sink",
            tps["nex"],
            "tok/s",
            ("raw SSE reader (httpx)", tps["sse"]),
            target=at_least(0.5),
            samples=rates,
            pieces=pieces,
        ),
        figure(
            "streaming",
            "bare litellm.acompletion",
            tps["litellm"],
            "tok/s",
            ("raw SSE reader (httpx)", tps["sse"]),
        ),
        figure(
            "streaming",
            "openai SDK",
            tps["openai"],
            "tok/s",
            ("raw SSE reader (httpx)", tps["sse"]),
        ),
    ]


# -- 4. long sessions -------------------------------------------------------------------------
def _history(turns: int) -> list[dict[str, Any]]:
    """A plausible session: the task, then `turns` read_file calls with distinct results."""
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Refactor the parser module and keep the tests green."}
    ]
    for i in range(turns):
        call_id = f"call_h{i}"
        args = json.dumps({"path": f"src/module_{i}.py"})
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "read_file", "arguments": args},
                    }
                ],
            }
        )
        body = "".join(f"def handler_{i}_{k}(x):\n    return x * {k} + {i}\n" for k in range(8))
        messages.append(
            {"role": "tool", "tool_call_id": call_id, "name": "read_file", "content": body}
        )
    return messages


def _write_journal(home: Path, name: str, messages: list[dict[str, Any]]) -> None:
    """A journal as nex would have left it, written in one go (not one fsync per entry)."""
    from nexpy.session import Session

    session = Session.create(home, name)
    lines = [json.dumps({"kind": "init", "ts": "2026-01-01T00:00:00.000Z", "model": MODEL})]
    lines += [
        json.dumps({"kind": "message", "ts": "2026-01-01T00:00:00.000Z", "message": m})
        for m in messages
    ]
    session.journal_path.write_text("\n".join(lines) + "\n", encoding="utf-8")


async def long_session_turns(ctx: Context, stub: StubClient, work: Path) -> list[Figure]:
    s = ctx.settings
    # A window no history here reaches: this measures the cost of length, not compaction.
    plan = _plan(stub.url, window=100_000_000)
    home = ctx.scratch / "home-long"
    turn_ms: dict[int, float] = {}
    floor_ms: dict[int, float] = {}
    litellm_ms: dict[int, float] = {}
    build_us: dict[int, float] = {}
    for point in s.long_points:
        name = f"long-{point}"
        _write_journal(home, name, _history(point))
        before = len(stub.arrivals())
        await nex_session(plan, work, home, "Continue.", chat=name, max_turns=s.long_turns)
        arrivals = stub.arrivals()[before:]
        intervals = [b - a for a, b in itertools.pairwise(arrivals)]
        turn_ms[point] = median(intervals) * 1e3
        last_body = stub.requests()[-1]
        # One client for all repeats: a fresh one per request would time its own setup too.
        repeats = max(3, s.long_turns // 2)
        floor_ms[point] = await replay_httpx(stub.url, [last_body] * repeats) / repeats * 1e3
        # litellm is every route's provider (the project's card): its cost on the same request
        # is the floor nex's own part is measured against.
        await replay_litellm(stub.url, plan.litellm_model, [last_body])  # its first-call setup
        lite = await replay_litellm(stub.url, plan.litellm_model, [last_body] * repeats)
        litellm_ms[point] = lite / repeats * 1e3
        build_us[point] = _build_request_cost(plan, work, home, name) * 1e6

    figures: list[Figure] = []
    for point in s.long_points:
        figures.append(
            figure(
                "long session",
                f"turn at {point} turns (normalize+count+journal+request)",
                turn_ms[point],
                "ms",
                ("the request alone (raw httpx)", floor_ms[point]),
                normalize_count_us=build_us[point],
            )
        )
    for point in s.long_points:
        figures.append(
            figure(
                "long session",
                f"nex's turn at {point} turns / bare litellm.acompletion on the same request",
                turn_ms[point],
                "ms",
                ("bare litellm.acompletion", litellm_ms[point]),
                target=at_most(1.3),
            )
        )
    first, last = s.long_points[0], s.long_points[-1]
    figures.append(
        figure(
            "long session",
            f"turn-{last} cost / turn-{first} cost",
            turn_ms[last],
            "ms",
            (f"turn {first}", turn_ms[first]),
            note=f"the request alone grows {floor_ms[last] / floor_ms[first]:.2f}×, "
            f"bare litellm {litellm_ms[last] / litellm_ms[first]:.2f}×",
        )
    )
    figures.append(
        figure(
            "long session",
            f"normalize+count at turn {last} / at turn {first} (issue 3)",
            build_us[last],
            "µs",
            (f"turn {first}", build_us[first]),
            target=at_most(2),
        )
    )
    return figures


def _build_request_cost(plan: Any, work: Path, home: Path, name: str) -> float:
    """Seconds one request build (normalize + count, warm cache) takes for the session `name`."""
    run = _run(plan, work, home, chat=name)
    try:
        agent = run.agent
        agent.context.build(agent.schemas)  # fills the token cache, as the turns before did
        samples = []
        for _ in range(7):
            start = time.perf_counter()
            agent.context.build(agent.schemas)
            samples.append(time.perf_counter() - start)
        return median(samples)
    finally:
        run.session.close()


# -- the sections: a stub here, the clients in a worker process -----------------------------------
def in_worker(ctx: Context, section: str, stub: StubClient) -> list[Figure]:
    """Run an in-process section in the bench's worker process (started on first use)."""
    from bench.worker import Worker

    if ctx.worker is None:
        ctx.worker = Worker(ctx)
    figures: list[Figure] = ctx.worker.run(section, stub)
    return figures


def per_turn(ctx: Context) -> list[Figure]:
    work = prepare_workdir(ctx.scratch)
    # Every session consumes the same replies from the start: the timed ones, the subprocess.
    sessions = 4 * ctx.settings.turn_reps + 1
    replies = [WARMUP] * WARMUPS + _session_replies(ctx.settings.turns) * sessions
    with Stub({"replies": replies, "default": {"content": "?"}}, ctx.scratch) as stub:
        figures = in_worker(ctx, "per-turn", stub)
        figures.insert(1, _subprocess_per_turn(ctx, stub, work))
    return figures


def streaming(ctx: Context) -> list[Figure]:
    # Distinct pieces: litellm aborts a stream that repeats one chunk 100 times in a row.
    text = " ".join(f"t{i}" for i in range(ctx.settings.stream_tokens))
    reply = {"content": text, "burst": True, "usage": USAGE}
    with Stub({"replies": [WARMUP] * WARMUPS, "default": reply}, ctx.scratch) as stub:
        return in_worker(ctx, "streaming", stub)


def long_sessions(ctx: Context) -> list[Figure]:
    # Every request of the section takes one (a turn of a session, a replay): as many as it can
    # make, then the default.
    replies = [reading(i) for i in range(4_000)]
    with Stub({"replies": replies, "default": reading(0)}, ctx.scratch) as stub:
        return in_worker(ctx, "long", stub)


WORKER_SECTIONS = {
    "per-turn": per_turn_clients,
    "streaming": streaming_clients,
    "long": long_session_turns,
}
