"""The benchmark harness works: a stub process, a timed client, the arithmetic, the table.

No timing is asserted here: targets live in bench/ and are reported, never tested.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from bench.fleet import throughput
from bench.harness import CpuMeter, Stub, at_least, at_most, figure
from bench.run import table
from bench.turns import Clock, replay_httpx
from stubs.oai import stub_server


def test_stub_process_bursts_tokens_to_a_raw_sse_reader(tmp_path: Path) -> None:
    tokens = 500
    reply = {"content": " ".join(["tok"] * tokens), "burst": True}
    body = {"model": "m", "messages": [{"role": "user", "content": "go"}], "stream": True}
    with Stub({"default": reply}, tmp_path) as stub:
        clock = Clock()
        seconds = asyncio.run(replay_httpx(stub.url, [body], clock))
        arrivals = stub.arrivals()
        requests = stub.requests()
    assert clock.pieces == tokens
    assert clock.rate(tokens) > 0 and seconds > 0
    assert len(arrivals) == len(requests) == 1


def test_stated_usage_is_served_without_counting() -> None:
    with stub_server(
        {"default": {"content": "hi", "usage": {"prompt_tokens": 7, "completion_tokens": 2}}}
    ) as srv:
        r = httpx.post(
            srv.url + "/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "x" * 10_000}]},
        )
        assert srv.arrivals and len(srv.arrivals) == 1
    assert r.json()["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}


def test_a_barrier_reply_holds_requests_until_all_parties_arrive() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "go"}]}
    script = {"replies": [{"content": "together", "barrier": 2}] * 2}
    with stub_server(script) as srv, ThreadPoolExecutor(2) as pool:
        first = pool.submit(httpx.post, srv.url + "/chat/completions", json=body, timeout=10)
        time.sleep(0.3)
        assert not first.done()  # one party is not enough
        second = pool.submit(httpx.post, srv.url + "/chat/completions", json=body, timeout=10)
        replies = [first.result(), second.result()]
    assert [r.json()["choices"][0]["message"]["content"] for r in replies] == ["together"] * 2


def test_throughput_counts_only_the_common_window() -> None:
    # Two sessions at 5 requests/s each, the second starting 1 s later: over the window where
    # both run, throughput is the ideal 10 requests/s.
    first = [i * 0.2 for i in range(20)]
    second = [1.0 + i * 0.2 for i in range(20)]
    rate, fraction, overlapped, window = throughput([first, second], 0.2)
    assert overlapped
    assert window == (1.0, pytest.approx(3.8))
    assert rate == pytest.approx(10.0)
    assert fraction == pytest.approx(1.0)
    slow = [i * 0.4 for i in range(10)]
    _, half, _, _ = throughput([slow], 0.2)
    assert half == pytest.approx(0.5)


def test_the_cpu_meter_reads_a_busy_window() -> None:
    with CpuMeter(every=0.02) as meter:
        start = time.time()
        while time.time() - start < 0.3:  # one CPU busy: at least 1/cpus of them all
            pass
        end = time.time()
    busy = meter.busy(start, end)
    assert busy is not None and 1 / (os.cpu_count() or 1) * 0.8 <= busy <= 1.0


def test_targets_mark_pass_and_miss_and_the_table_shows_them() -> None:
    fast = figure(
        "startup", "nex --version", 30.0, "ms", ("python -c pass", 10.0), target=at_most(8)
    )
    slow = figure("streaming", "nex", 100.0, "tok/s", ("raw", 1000.0), target=at_least(0.5))
    rss = figure(
        "memory",
        "rss",
        250.0,
        "MB",
        ("import litellm", 180.0),
        target=at_most(60, on="delta", unit=" MB"),
    )
    assert (fast.ratio, fast.status) == (3.0, "PASS")
    assert (slow.ratio, slow.status) == (0.1, "MISS")
    assert rss.status == "MISS" and rss.target == "≤ +60 MB"
    text = table([fast, slow, rss])
    assert (
        "| startup | nex --version | 30.0 ms | python -c pass 10.0 ms | 3.00× | ≤ 8× | PASS |"
        in text
    )
    assert "+70 MB" in text and "MISS" in text


def test_prefill_counts_what_a_one_slot_cache_processes_again() -> None:
    from bench.prefill import TEMPLATE, compaction_events, measure
    from stubs.template import TemplateRenderer

    if not TEMPLATE.is_file():
        pytest.skip(f"no {TEMPLATE} (make peers)")
    renderer = TemplateRenderer.from_file(TEMPLATE)
    tools = [{"type": "function", "function": {"name": "t", "parameters": {"type": "object"}}}]
    call = {"id": "c1", "type": "function", "function": {"name": "t", "arguments": "{}"}}
    ask = [{"role": "system", "content": "S"}, {"role": "user", "content": "task"}]
    answer = {"role": "assistant", "content": "", "tool_calls": [call]}
    grown = [*ask, answer, {"role": "tool", "tool_call_id": "c1", "content": "result"}]
    changed = [{"role": "system", "content": "S"}, {"role": "user", "content": "task!"}, *grown[2:]]
    bodies = [{"messages": m, "tools": tools} for m in (ask, grown, changed)]
    prompts = [renderer.render(b) for b in bodies]
    answers = [
        answer,
        {"role": "assistant", "content": "done"},
        {"role": "assistant", "content": "x"},
    ]
    prefilled, ideal, breaks = measure(renderer, bodies, prompts, answers)
    assert breaks == 1  # the third rewrote the task
    new_tail = len(prompts[1]) - len(
        renderer.render({**bodies[1], "messages": grown[:3]}, generation=False)
    )
    assert ideal == len(prompts[0]) + 2 * new_tail
    assert prefilled > ideal
    journal = [{"kind": "compaction", "reason": "context"}] * 2 + [{"kind": "message"}]
    assert compaction_events(journal + journal) == 2  # steps of one event count once
