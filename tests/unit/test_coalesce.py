"""nexpy.coalesce: text deltas that arrive together are merged; nothing else changes, nothing
complete is held back, a garbled event is an error."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexpy.coalesce import CoalescedStream, CoalescingTransport, coalesce

BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def event(choice: dict[str, Any] | None = None, compact: bool = False, **top: Any) -> bytes:
    body = {**BASE, "choices": [choice] if choice is not None else [], **top}
    sep = (",", ":") if compact else (", ", ": ")
    return b"data: " + json.dumps(body, separators=sep, ensure_ascii=compact).encode() + b"\n\n"


def text(t: str, field: str = "content", **extra: Any) -> bytes:
    return event({"index": 0, "delta": {field: t}, "finish_reason": None, **extra})


ROLE = event({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
CALL = event(
    {
        "index": 0,
        "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
        "finish_reason": None,
    }
)
FINISH = event({"index": 0, "delta": {}, "finish_reason": "stop"})
USAGE = event(usage={"prompt_tokens": 1, "completion_tokens": 2})
DONE = b"data: [DONE]\n\n"


def events_of(stream: bytes) -> list[bytes]:
    return [e for e in stream.split(b"\n\n") if e]


def meaning(stream: bytes) -> list[tuple[str, Any]]:
    """What a reader makes of a stream: text runs joined per field, every other event as is."""
    out: list[tuple[str, Any]] = []
    for raw in events_of(stream):
        payload = raw[5:].strip()
        if payload == b"[DONE]":
            out.append(("done", None))
            continue
        obj = json.loads(payload)
        choices = obj.get("choices") or []
        delta = choices[0].get("delta", {}) if len(choices) == 1 else {}
        fields = [f for f in ("content", "reasoning_content", "reasoning") if f in delta]
        plain = len(delta) == 1 and fields and choices[0].get("finish_reason") is None
        if plain and obj.get("usage") is None:
            field = fields[0]
            if out and out[-1][0] == field:
                out[-1] = (field, out[-1][1] + delta[field])
            else:
                out.append((field, delta[field]))
            continue
        out.append(("event", obj))
    return out


def test_a_run_of_text_deltas_becomes_one_event() -> None:
    stream = ROLE + text("Hel") + text("lo, ") + text("world") + FINISH + USAGE + DONE
    out = coalesce(stream)
    assert events_of(out) == [
        ROLE.strip(),
        text("Hello, world").strip(),
        FINISH.strip(),
        USAGE.strip(),
        DONE.strip(),
    ]


def test_reasoning_and_content_are_merged_separately_and_keep_their_order() -> None:
    stream = text("think ", "reasoning_content") + text("more", "reasoning_content")
    stream += text("say ") + text("this") + text(" then", "reasoning_content")
    assert meaning(coalesce(stream)) == [
        ("reasoning_content", "think more"),
        ("content", "say this"),
        ("reasoning_content", " then"),
    ]
    assert len(events_of(coalesce(stream))) == 3


def test_escapes_and_non_ascii_text_survive_merging() -> None:
    pieces = ['a "quoted"', "\\back\\slash", "line\nbreak\t", "é ü 漢字 😀", "\u0000\u001f"]
    for compact in (False, True):
        stream = b"".join(
            event({"index": 0, "delta": {"content": p}, "finish_reason": None}, compact)
            for p in pieces
        )
        out = coalesce(stream)
        assert len(events_of(out)) == 1
        assert meaning(out) == [("content", "".join(pieces))]


def test_events_that_differ_beyond_their_text_are_not_merged() -> None:
    other_id = text("b").replace(b"chatcmpl-1", b"chatcmpl-2")
    with_logprobs = text("c", logprobs={"content": []})
    stream = text("a") + other_id + with_logprobs + text("d") + CALL + text("e") + text("f")
    out = events_of(coalesce(stream))
    assert out[:5] == [e.strip() for e in (text("a"), other_id, with_logprobs, text("d"), CALL)]
    assert out[5:] == [text("ef").strip()]


def test_null_logprobs_merge_like_absent_ones_and_keep_their_field() -> None:
    stream = text("a", logprobs=None) + text("b", logprobs=None)
    assert events_of(coalesce(stream)) == [text("ab", logprobs=None).strip()]


def test_the_key_inside_a_string_elsewhere_does_not_confuse_the_merge() -> None:
    tricky = {**BASE, "id": 'x "content": "y"'}

    def ev(t: str) -> bytes:
        body = {**tricky, "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    out = coalesce(ev("one ") + ev("two"))
    assert events_of(out) == [ev("one two").strip()]


def test_non_json_events_pass_byte_for_byte() -> None:
    stream = b": keep-alive\n\n" + b"event: ping\ndata: {}\n\n" + text("a") + DONE
    assert coalesce(stream) == stream


def test_a_garbled_data_event_raises() -> None:
    with pytest.raises(json.JSONDecodeError):
        coalesce(text("a") + b"data: {not json\n\n")


# -- the stream: reads are split anywhere, nothing complete is held back -------------------
class Reads(httpx.AsyncByteStream):
    """Hands out `reads` one at a time; before each new read it checks that everything complete
    in the earlier ones has already come out the other end."""

    def __init__(self, reads: list[bytes]) -> None:
        self.reads = reads
        self.outs: list[bytes] = []

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i, r in enumerate(self.reads):
            seen = b"".join(self.reads[:i])
            complete = seen[: seen.rfind(b"\n\n") + 2] if b"\n\n" in seen else b""
            assert meaning(b"".join(self.outs)) == meaning(complete)
            yield r


async def collect(reads: list[bytes]) -> list[bytes]:
    inner = Reads(reads)
    async for out in CoalescedStream(inner):
        inner.outs.append(out)
    return inner.outs


EVENTS = st.lists(
    st.one_of(
        st.builds(text, st.text(max_size=8)),
        st.builds(lambda t: text(t, "reasoning_content"), st.text(max_size=8)),
        st.sampled_from([ROLE, CALL, FINISH, USAGE]),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(EVENTS, st.lists(st.integers(min_value=0, max_value=4000), max_size=8))
async def test_any_split_into_reads_means_the_same_and_holds_nothing_complete(
    events: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(events) + DONE
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    reads = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    outs = await collect(reads)  # checks, read by read, that nothing complete was held back
    assert meaning(b"".join(outs)) == meaning(stream)
    assert len(events_of(b"".join(outs))) <= len(events_of(stream))


async def test_cr_line_endings_pass_through_untouched() -> None:
    stream = (text("a") + text("b")).replace(b"\n", b"\r\n")
    assert b"".join(await collect([stream[:10], stream[10:]])) == stream


async def test_the_transport_wraps_event_streams_only() -> None:
    body = ROLE + text("a") + text("b") + DONE

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/sse":
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)
        return httpx.Response(200, headers={"content-type": "application/json"}, content=body)

    transport = CoalescingTransport(httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=transport) as client:
        sse = await client.get("http://x/sse")
        plain = await client.get("http://x/json")
    assert events_of(sse.content) == [ROLE.strip(), text("ab").strip(), DONE.strip()]
    assert plain.content == body
