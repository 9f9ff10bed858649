"""The agent's side of the context budget: compaction before sending, overflow recovery, resume."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nexpy.agent import Agent
from nexpy.budget import Budget, TokenCounter
from nexpy.compaction import is_note
from nexpy.context import OVERFLOW_RETRIES
from nexpy.errors import ContextOverflow, LimitReached, TransientError
from nexpy.events import Emitter, ProgressSink, Sink
from nexpy.messages import assistant, normalize, system, tool_result, user
from nexpy.progress import Progress, Ticker
from nexpy.reply import Reply, TextCallback
from nexpy.session import Session
from nexpy.tools import ToolContext, all_tools
from stubs.strict import validate

COUNTER = TokenCounter()
Answer = Callable[[list[dict[str, Any]], list[dict[str, Any]] | None], Reply | Exception]


class Fake:
    """A model that answers with `answer(messages, tools)` and records every request."""

    name = "fake"

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[tuple[list[dict[str, Any]], bool, int | None]] = []

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        on_text: TextCallback,
        *,
        max_tokens: int | None = None,
    ) -> Reply:
        self.requests.append((copy.deepcopy(messages), tools is not None, max_tokens))
        result = self.answer(messages, tools)
        if isinstance(result, Exception):
            raise result
        return result

    def sizes(self, tools: list[dict[str, Any]]) -> list[int]:
        return [COUNTER.messages(m, tools if t else None) for m, t, _ in self.requests]

    def fit(self, agent: Agent, start: int = 0) -> bool:
        """Whether each request, with the reply room it asked for, fits the agent's window."""
        budget = agent.budget
        return all(
            size + (max_tokens or 0) <= budget.window - budget.margin
            for size, (_, _, max_tokens) in zip(
                self.sizes(agent.schemas)[start:], self.requests[start:], strict=True
            )
        )


def _agent(
    tmp_path: Path,
    model: Fake,
    budget: Budget,
    history: list[dict] | None = None,
    sinks: list[Sink] | None = None,
):
    session = Session.create(tmp_path / "home", "s")
    session.lock()
    for message in history or []:
        session.append("message", message=message)
    events: list[dict] = []
    agent = Agent(
        model,
        session=session,
        emitter=Emitter("s", [events.append, *(sinks or [])]),
        tools=all_tools(),
        ctx=ToolContext(workdir=tmp_path, outputs_dir=session.outputs_dir),
        budget=budget,
    )
    return agent, session, events


def _rounds(n: int, output: str = "some output line\n" * 120) -> list[dict]:
    history: list[dict] = [user("THE TASK: tidy the repo")]
    for k in range(n):
        call = {"id": f"c{k}", "type": "function", "function": {"name": "bash", "arguments": "{}"}}
        history += [assistant(f"step {k}", [call]), tool_result(f"c{k}", output, "bash")]
    history.append(assistant("Done with the first part."))
    return history


def _answers(text: str = "ok") -> Answer:
    def answer(messages: list[dict], tools: list[dict] | None) -> Reply:
        asked = tools is None or "replaced by your summary" in str(messages[-1]["content"])
        return Reply("Summary: earlier steps ran bash." if asked else text)

    return answer


async def test_overflow_with_n_ctx_adopts_it_compacts_and_retries(tmp_path: Path) -> None:
    refused: list[int] = []

    def answer(messages: list[dict], tools: list[dict] | None) -> Reply | Exception:
        if tools is not None and not refused:
            refused.append(len(messages))
            return ContextOverflow("the request does not fit", n_ctx=2048)
        return _answers()(messages, tools)

    model = Fake(answer)
    agent, session, events = _agent(tmp_path, model, Budget(None), _rounds(12))
    assert await agent.send("go on") == "ok"
    assert agent.budget.window == 2048
    # The retry (and the summary request) fit what the server said, reply room included.
    assert model.fit(agent, start=1), model.sizes(agent.schemas)
    assert model.sizes(agent.schemas)[-1] <= agent.budget.limit
    assert [max_tokens for *_, max_tokens in model.requests][-1] == 512
    assert any("2048" in e["message"] for e in events if e["type"] == "warning")
    assert "compaction" in [e["kind"] for e in session.entries()]
    assert validate(normalize([system("s"), *session.messages()])) is None


async def test_an_overflow_compaction_cannot_relieve_ends_the_run(tmp_path: Path) -> None:
    model = Fake(lambda m, t: ContextOverflow("too big", n_ctx=None))
    agent, _, _ = _agent(tmp_path, model, Budget(None))
    with pytest.raises(LimitReached) as caught:
        await agent.send("hello")
    assert caught.value.reason == "context_limit" and caught.value.exit_code == 3
    assert "context is full" in caught.value.line() and "--context-window" in caught.value.line()
    assert len(model.requests) <= OVERFLOW_RETRIES + 1


async def test_a_resumed_journal_over_the_window_is_compacted_before_sending(
    tmp_path: Path,
) -> None:
    history = _rounds(60)
    assert COUNTER.messages(history) > 4 * 4096
    model = Fake(_answers())
    agent, _, _ = _agent(tmp_path, model, Budget(4096, "flag"), history)
    assert await agent.send("what is left?") == "ok"
    assert model.fit(agent), model.sizes(agent.schemas)
    assert model.sizes(agent.schemas)[-1] <= agent.budget.limit
    assert [has_tools for _, has_tools, _ in model.requests] == [False, True]  # summary first
    sent = model.requests[-1][0]
    assert sent[1]["content"] == "THE TASK: tidy the repo"
    assert "Summary: earlier steps ran bash." in sent[2]["content"]
    assert "what is left?" in sent[-1]["content"]


async def test_a_summary_that_fails_leaves_a_note_and_the_run_goes_on(tmp_path: Path) -> None:
    def answer(messages: list[dict], tools: list[dict] | None) -> Reply | Exception:
        return TransientError("HTTP 503") if tools is None else Reply("ok")

    agent, _, events = _agent(tmp_path, Fake(answer), Budget(4096, "flag"), _rounds(60))
    assert await agent.send("next") == "ok"
    assert is_note(agent.history[1]) and "removed" in agent.history[1]["content"]
    assert any("could not summarize" in e["message"] for e in events if e["type"] == "warning")


async def test_compact_now_and_nothing_to_compact(tmp_path: Path) -> None:
    agent, session, _ = _agent(tmp_path, Fake(_answers()), Budget(32_768, "flag"), _rounds(20))
    before = COUNTER.messages(agent.history)
    line = await agent.compact()
    assert line.startswith("context compacted from") and "40 messages summarized" in line, line
    assert COUNTER.messages(agent.history) < before // 10
    steps = [e.get("step") for e in session.entries() if e["kind"] == "compaction"]
    assert steps == ["drop_turns", "summary"]
    # What stays: the task, the summary, and the latest unit (the closing answer).
    assert [m["role"] for m in agent.history] == ["user", "assistant", "assistant"]
    assert "Summary: earlier steps ran bash." in agent.history[1]["content"]
    assert agent.history[2]["content"] == "Done with the first part."

    small, _, _ = _agent(tmp_path / "b", Fake(_answers()), Budget(32_768, "flag"), [user("hi")])
    assert (await small.compact()).startswith("nothing to compact")


async def test_without_a_summary_compaction_keeps_the_newest_turns_that_fit_half(
    tmp_path: Path,
) -> None:
    """A model that cannot summarize gets a history that keeps more: old outputs become
    handles first, and only the oldest turns go, down to about half the room."""

    agent, session, _ = _agent(
        tmp_path, Fake(lambda m, t: Reply("")), Budget(32_768, "flag"), _rounds(20)
    )
    line = await agent.compact()
    assert "tool outputs moved to files" in line and "summarized" not in line, line
    steps = [e.get("step") for e in session.entries() if e["kind"] == "compaction"]
    assert steps[0] == "tool_outputs" and "summary" not in steps
    assert sum(1 for m in agent.history if m["role"] == "tool") > 1


async def test_wrap_up_after_the_context_limit_sends_nothing(tmp_path: Path) -> None:
    model = Fake(_answers())
    agent, _, _ = _agent(tmp_path, model, Budget(4096, "flag"))
    assert await agent.wrap_up("context_limit") == ""
    assert model.requests == [] and agent.history == []


async def test_the_servers_usage_corrects_the_estimate(tmp_path: Path) -> None:
    def answer(messages: list[dict], tools: list[dict] | None) -> Reply:
        prompt = COUNTER.messages(messages, tools)
        return Reply("ok", usage={"prompt_tokens": prompt * 13 // 10, "completion_tokens": 1})

    agent, _, _ = _agent(tmp_path, Fake(answer), Budget(32_768, "flag"))
    for n in range(8):
        await agent.send(f"message {n}")
    assert agent.budget.ratio == pytest.approx(1.3, rel=0.02)
    raw = COUNTER.messages(agent.context.build(agent.schemas).messages, agent.schemas)
    assert agent.context_used == pytest.approx(raw * 1.3, rel=0.02)


async def test_tool_outputs_are_capped_to_a_share_of_the_window(tmp_path: Path) -> None:
    big, _, _ = _agent(tmp_path / "a", Fake(_answers()), Budget(131_072, "flag"))
    small, _, _ = _agent(tmp_path / "b", Fake(_answers()), Budget(4096, "flag"))
    # Sizing loads tiktoken, so it happens before the first request, not at construction.
    await big.ensure_window()
    await small.ensure_window()
    assert big.ctx.output_cap == 16_000  # the tools' own cap
    assert 1000 <= small.ctx.output_cap < 4000
    overflow = ContextOverflow("too big", n_ctx=2048)
    model = Fake(lambda m, t: overflow if len(model.requests) == 1 else Reply("ok"))
    agent, _, _ = _agent(tmp_path / "c", model, Budget(4096, "flag"))
    await agent.ensure_window()
    first = agent.ctx.output_cap
    await agent.send("hi")
    assert agent.ctx.output_cap < first


async def test_window_discovery_runs_once_before_the_first_request(tmp_path: Path) -> None:
    from nexpy.window import Window

    asked: list[int] = []

    async def window() -> Window:
        asked.append(1)
        return Window(
            8192, "default", warning="the context window is unknown; set --context-window N"
        )

    session = Session.create(tmp_path / "home", "w")
    session.lock()
    events: list[dict] = []
    agent = Agent(
        Fake(_answers()),
        session=session,
        emitter=Emitter("w", [events.append]),
        tools=all_tools(),
        ctx=ToolContext(workdir=tmp_path, outputs_dir=session.outputs_dir),
        budget=Budget(None),
        window=window,
    )
    await agent.send("one")
    await agent.send("two")
    assert asked == [1]
    warnings = [e["message"] for e in events if e["type"] == "warning"]
    assert warnings == ["the context window is unknown; set --context-window N"]
    contexts = [e for e in events if e["type"] == "context"]
    assert contexts and all(e["window"] == 8192 and e["used"] > 0 for e in contexts)
    assert json.dumps(contexts)  # plain data, as the --json stream needs


def _filled(tmp_path: Path, model: Fake, fill: float) -> tuple[Agent, Session]:
    """An agent on a 4,096 window whose history (a task and tool rounds) fills `fill` of its
    room, give or take one round."""
    history = _rounds(0)[:1]
    agent, session, _ = _agent(tmp_path, model, Budget(4096, "flag"), history)
    context, k = agent.context, 0
    fixed = context._fixed(agent.schemas)
    while context.budget.fill(context.build(agent.schemas).counted, fixed) < fill:
        call = {"id": f"c{k}", "type": "function", "function": {"name": "bash", "arguments": "{}"}}
        for message in (assistant(f"step {k}", [call]), tool_result(f"c{k}", "line\n" * 40)):
            agent._record(message)
        k += 1
    return agent, session


async def test_the_reminder_rides_once_on_the_newest_message_and_keeps_its_bytes(
    tmp_path: Path,
) -> None:
    model = Fake(_answers())
    agent, session = _filled(tmp_path, model, 0.8)
    assert await agent.send("next") == "ok"
    assert await agent.send("more") == "ok"
    first, second = model.requests[0][0], model.requests[1][0]
    assert "context window is" in first[-1]["content"]  # on the newest message, at its end
    assert first[-1]["content"].startswith("next")
    assert first[1]["content"] == "THE TASK: tidy the repo"  # never in an earlier turn
    # The next request carries the same bytes where the first left off, and no second note.
    assert second[: len(first)] == first
    assert "context window is" not in second[-1]["content"]
    notes = [e for e in session.entries() if e["kind"] == "reminder"]
    assert len(notes) == 1
    # A resume sends the same bytes too.
    assert session.messages()[: len(first) - 1] == first[1:]


async def test_the_summary_is_asked_at_the_end_of_the_conversation_as_sent(
    tmp_path: Path,
) -> None:
    model = Fake(_answers())
    agent, _ = _filled(tmp_path, model, 0.97)
    # One more round tips it over: compaction, asking the summary after what was cached.
    call = {"id": "last", "type": "function", "function": {"name": "bash", "arguments": "{}"}}
    agent._record(assistant("one more", [call]))
    agent._record(tool_result("last", "line\n" * 120))
    before = agent.context.build(agent.schemas).messages
    assert await agent.send("next") == "ok"
    asked, with_tools, _ = model.requests[0]
    assert with_tools  # the same tools: the rendered prompt is the same up to the question
    assert asked[: len(before)] == before
    assert "replaced by your summary" in asked[-1]["content"]
    # One compaction event, down to about half of the room.
    context = agent.context
    fill = context.budget.fill(context.build(agent.schemas).counted, context._fixed(agent.schemas))
    assert fill < 0.6, fill
    assert "Summary: earlier steps ran bash." not in str(asked)


async def test_every_request_a_summary_included_shows_as_in_flight(tmp_path: Path) -> None:
    """The status line (nexpy.progress) is driven by events alone: each request, the summary
    request of a compaction too, must find it saying a request is in flight, or a long prefill
    looks like a hang."""
    live = Ticker(Progress())  # never started: its state is what a terminal would show
    in_flight: list[bool] = []

    def answer(messages: list[dict], tools: list[dict] | None) -> Reply:
        in_flight.append(live.progress.started is not None)
        return _answers()(messages, tools)

    sink = ProgressSink(io.StringIO(), live=live)
    agent, _, _ = _agent(tmp_path, Fake(answer), Budget(4096, "flag"), _rounds(60), [sink])
    assert await agent.send("what is left?") == "ok"
    assert in_flight == [True, True]  # the summary, then the answer
    assert live.progress.started is None  # and idle once answered


async def test_the_summary_extends_the_last_request_and_the_newest_step_stays_whole(
    tmp_path: Path,
) -> None:
    """In a tool loop the summary is asked right after the request the server last processed
    (its cache holds all of it), and the step that came back since stays verbatim after the
    summary, so the server processes that step's output once before compaction, not twice."""
    for k in range(12):
        rows = (f"part {k} row {i} value {(i * 7919 + k) % 10007}\n" for i in range(30))
        (tmp_path / f"part{k}.txt").write_text("".join(rows))
    calls = iter(range(1000))

    def answer(messages: list[dict], tools: list[dict] | None) -> Reply:
        if "replaced by your summary" in str(messages[-1]["content"]):
            return Reply("Summary: parts read, nothing odd.")
        k = next(calls)
        if k == 12:
            return Reply("done")
        arguments = json.dumps({"path": f"part{k}.txt"})
        function = {"name": "read_file", "arguments": arguments}
        return Reply("", [{"id": f"r{k}", "type": "function", "function": function}])

    model = Fake(answer)
    agent, session, _ = _agent(tmp_path, model, Budget(4096, "flag"), [])
    assert await agent.send("read the parts") == "done"
    sent = [messages for messages, _, _ in model.requests]
    asks = [i for i, m in enumerate(sent) if "replaced by your summary" in str(m[-1]["content"])]
    assert asks, "the window must be small enough to compact"
    for i in asks:
        before, ask, after = sent[i - 1], sent[i], sent[i + 1]
        assert ask[:-1] == before  # the last request as sent, then the question alone
        assert ask[-1]["role"] == "user"
        # After it: system, task, the summary with the newest call (normalizing merges the two
        # assistant messages), and that call's result, verbatim.
        assert [m["role"] for m in after] == ["system", "user", "assistant", "tool"]
        assert after[1]["content"] == "read the parts"
        assert "Summary: parts read, nothing odd." in after[2]["content"]
        newest = after[2]["tool_calls"][0]["id"]
        assert newest not in json.dumps(before)  # the call the model made after `before`
        assert after[3]["tool_call_id"] == newest
        assert "row 29 value" in after[3]["content"]  # its whole output
    steps = [e.get("step") for e in session.entries() if e["kind"] == "compaction"]
    assert steps == ["drop_turns", "summary"] * len(asks)


async def test_a_request_about_to_be_compacted_gets_no_reminder(tmp_path: Path) -> None:
    """The "nearly full" note would outlive the compaction it announces, on the message kept."""
    model = Fake(_answers())
    agent, session = _filled(tmp_path, model, 1.3)
    assert await agent.send("next") == "ok"
    answered = model.requests[-1][0]
    assert answered[-1]["content"] == "next"
    assert not [e for e in session.entries() if e["kind"] == "reminder"]
    assert "context window is" not in json.dumps(answered)
