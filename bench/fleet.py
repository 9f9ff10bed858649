"""Section 5, concurrency: N `nex --autonomous` processes against one stub that takes a fixed
latency per request. Ideal throughput is N / latency requests per second; the figure is the
fraction of it reached while all N sessions are running turns at once.

Beside it, the ceiling the CPUs set: one session's CPU per request (a long run minus a one-turn
run, so the launch is not counted) plus the stub's, against the CPUs there are. Sessions that
need more CPU per second than the machine has cannot reach ideal throughput.

Each session runs tool-call turns until `--max-turns`, then makes its wrap-up request. The stub
stamps each request's arrival; the session a request belongs to is read from its first user
message. Launches are staggered by litellm's import competing for the CPUs, so the stub holds
each session's first request until all N have arrived (a "barrier" reply) and releases them
together; throughput is taken over the window in which every session is between its first and
last request, each session's rate from its own requests inside that window.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.harness import (
    Figure,
    Launched,
    Stub,
    at_least,
    clean_env,
    cpu_seconds,
    figure,
    nex_argv,
    run,
)
from bench.settings import Context
from bench.turns import TOOL_CALLS, USAGE, prepare_workdir

TARGET_SESSIONS = 32  # the target (≥ 80% of ideal) is set for this many; --quick runs fewer


def _session_of(body: dict[str, Any]) -> str:
    for message in body.get("messages", []):
        if message.get("role") == "user":
            return str(message.get("content", "")).split(":", 1)[0]
    return "?"


def throughput(per_session: list[list[float]], latency: float) -> tuple[float, float, bool]:
    """(requests/s, fraction of ideal, whether the sessions overlapped long enough).

    Rates come from each session's own consecutive requests inside the common window, so the
    window's edges cut no request in half.
    """
    n = len(per_session)
    ideal = n / latency
    start = max(a[0] for a in per_session)
    end = min(a[-1] for a in per_session)
    overlapped = end - start >= 3 * latency
    total = 0.0
    for arrivals in per_session:
        inside = [t for t in arrivals if start <= t <= end] if overlapped else arrivals
        if len(inside) >= 2:
            total += (len(inside) - 1) / (inside[-1] - inside[0])
    return total, total / ideal, overlapped


def cpu_per_request(work: Path, env: dict[str, str], turns: int) -> tuple[float, float]:
    """CPU seconds per request of one `nex --autonomous` session (its launch not counted) and of
    the stub serving it."""
    reply = {"tool_calls": [TOOL_CALLS[0]], "usage": USAGE}
    spent: dict[int, tuple[float, float, int]] = {}
    with Stub({"default": reply}, work.parent) as stub:
        for n in (1, turns):
            before = len(stub.arrivals())
            stub_before = cpu_seconds(stub.proc.pid)
            argv = nex_argv(stub.url, work, "--max-turns", str(n), "--autonomous", "cpu: go")
            result = run(argv, env, work, timeout=300)
            if result.code not in (0, 3):
                raise RuntimeError(f"nex exited {result.code}: {result.stderr[-600:]}")
            requests = len(stub.arrivals()) - before
            spent[n] = (result.cpu_seconds, cpu_seconds(stub.proc.pid) - stub_before, requests)
    (nex_one, _, req_one), (nex_many, stub_many, req_many) = spent[1], spent[turns]
    return (nex_many - nex_one) / (req_many - req_one), stub_many / req_many


def concurrency(ctx: Context) -> list[Figure]:
    s = ctx.settings
    work = prepare_workdir(ctx.scratch)
    env = clean_env(ctx.scratch / "fleet")
    reply = {"tool_calls": [TOOL_CALLS[0]], "usage": USAGE, "delay": s.fleet_latency}
    figures: list[Figure] = []
    cpus = os.cpu_count() or 1
    nex_cpu, stub_cpu = cpu_per_request(work, env, 60)
    cpu = nex_cpu + stub_cpu
    for n in s.fleet:
        script = {"replies": [{**reply, "barrier": n}] * n, "default": reply}
        with Stub(script, ctx.scratch) as stub:
            procs = [
                Launched(
                    nex_argv(
                        stub.url,
                        work,
                        "--max-turns",
                        str(s.fleet_turns),
                        "--autonomous",
                        f"s{k}: read notes.txt",
                    ),
                    env,
                    work,
                )
                for k in range(n)
            ]
            results = [p.wait(timeout=900) for p in procs]
            failed = [r for r in results if r.code not in (0, 3)]  # 3: the turn limit, expected
            if failed:
                raise RuntimeError(f"nex exited {failed[0].code}: {failed[0].stderr[-600:]}")
            bodies = stub.requests()
            arrivals = stub.arrivals()
            by_session: dict[str, list[float]] = {}
            for body, at in zip(bodies, arrivals, strict=True):
                by_session.setdefault(_session_of(body), []).append(at)
            rate, fraction, overlapped = throughput(list(by_session.values()), s.fleet_latency)
            ceiling = min(1.0, cpus / cpu / (n / s.fleet_latency))
            notes = [
                f"the CPUs allow {ceiling:.2f}× at {nex_cpu * 1e3:.1f} ms CPU/request in nex "
                f"+ {stub_cpu * 1e3:.1f} in the stub"
            ]
            if not overlapped:
                notes.append("sessions barely overlapped: whole runs used")
            figures.append(
                figure(
                    "concurrency",
                    f"{n} concurrent sessions, {s.fleet_latency * 1e3:.0f} ms/request",
                    rate,
                    "req/s",
                    ("ideal", n / s.fleet_latency),
                    ratio=fraction,
                    target=at_least(0.8) if n >= TARGET_SESSIONS else None,
                    note="; ".join(notes),
                    requests=len(arrivals),
                    nex_cpu_ms_per_request=nex_cpu * 1e3,
                    stub_cpu_ms_per_request=stub_cpu * 1e3,
                    cpu_ceiling=ceiling,
                    peak_rss_mb=max(r.max_rss_mb for r in results),
                )
            )
    return figures
