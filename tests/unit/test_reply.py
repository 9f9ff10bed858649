"""Reading a reply across retries: what the person sees when an attempt is retried."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nexpy.reply import Dedup


# -- what the person sees across retries ---------------------------------------------------------
def test_dedup_replays_silently_and_shows_only_what_is_new() -> None:
    out: list[str] = []
    dedup = Dedup(out.append)
    for piece in ("Hello ", "wor"):
        dedup(piece)
    dedup.new_attempt()
    for piece in ("Hel", "lo w", "orld", "!"):
        dedup(piece)
    assert "".join(out) == "Hello world!"


def test_dedup_restarts_visibly_when_a_retry_diverges() -> None:
    out: list[str] = []
    dedup = Dedup(out.append)
    dedup("The answer is 4")
    dedup.new_attempt()
    for piece in ("The answer ", "was 5", "."):
        dedup(piece)
    text = "".join(out)
    assert text == "The answer is 4" + Dedup.RESTART + "The answer was 5."
    assert text.count("The answer") == 2  # once per attempt: the second one is different text


class _ReferenceDedup:
    """The rule, stated plainly (and quadratically): the attempt so far against what was shown."""

    def __init__(self, sink: Any) -> None:
        self.sink, self.shown, self.attempt = sink, "", ""

    def new_attempt(self) -> None:
        self.attempt = ""

    def __call__(self, piece: str) -> None:
        if not piece:
            return
        self.attempt += piece
        if self.attempt.startswith(self.shown):
            fresh, self.shown = self.attempt[len(self.shown) :], self.attempt
            if fresh:
                self.sink(fresh)
        elif not self.shown.startswith(self.attempt):
            self.shown = self.attempt
            self.sink(Dedup.RESTART + self.attempt)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(st.text(alphabet="ab", max_size=4), max_size=6), max_size=4))
def test_dedup_shows_what_the_plain_rule_shows(attempts: list[list[str]]) -> None:
    ours: list[str] = []
    ref: list[str] = []
    fast, slow = Dedup(ours.append), _ReferenceDedup(ref.append)
    for pieces in attempts:
        fast.new_attempt()
        slow.new_attempt()
        for piece in pieces:
            fast(piece)
            slow(piece)
    assert "".join(ours) == "".join(ref)


def test_usage_carries_what_the_server_processed_beside_what_it_had_cached() -> None:
    from nexpy.reply import ReplyReader

    # As the C++ llama-server sends it (measured with /work/bin/llama-server): the OpenAI
    # field, mirrored by its own timings.cache_n / prompt_n.
    reader = ReplyReader(None, lambda _: None)
    reader.add({"choices": [{"delta": {"content": "ok"}, "finish_reason": "stop"}]})
    usage = {"prompt_tokens": 294, "completion_tokens": 3}
    reader.add({"choices": [], "usage": {**usage, "prompt_tokens_details": {"cached_tokens": 269}}})
    assert reader.reply("x", "y").usage == {**usage, "cached_tokens": 269, "processed_tokens": 25}
    # A server that does not say keeps the usage as it was.
    plain = ReplyReader(None, lambda _: None)
    plain.add({"choices": [{"delta": {"content": "ok"}, "finish_reason": "stop"}], "usage": usage})
    assert plain.reply("x", "y").usage == usage
