"""nexpy.reasoning and its readers: the think-tag splitter, retried streams, the history rule."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from nexpy import reasoning
from nexpy.doctor import template_rows
from nexpy.reasoning import ThinkSplitter, Thought
from nexpy.reply import Dedup, ReplyReader
from tests.peers.llama_server import TEMPLATES, real_templates

THINK, ANSWER = "Let me see: 2 + 2 is 4, a < b.", "It is 4."


def split(pieces: list[str], *, inside: bool = False) -> tuple[str, str, str, str]:
    """(streamed answer, streamed thinking, final answer, final thinking)."""
    s = ThinkSplitter(inside=inside)
    out = [p for piece in pieces for p in s.feed(piece)] + s.finish()
    shown = "".join(p for p in out if not isinstance(p, Thought))
    thought = "".join(p for p in out if isinstance(p, Thought))
    return shown, thought, "".join(s.answer), "".join(s.thought)


def chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize("size", range(1, 12))
def test_inline_think_is_split_from_the_answer_wherever_the_chunks_cut_the_tags(size: int) -> None:
    text = f"<think>{THINK}</think>\n\n{ANSWER}"
    assert split(chunks(text, size)) == (ANSWER, THINK, ANSWER, THINK)


def test_every_two_piece_cut_of_an_inline_think_gives_the_same_split() -> None:
    text = f"\n<think>\n{THINK}</think>{ANSWER}"
    for at in range(len(text) + 1):
        _, _, answer, thought = split([text[:at], text[at:]])
        assert (answer, thought) == (ANSWER, f"\n{THINK}"), at


def test_a_bare_close_makes_everything_before_it_thinking() -> None:
    """The template opened the think in the prompt: the stream carries only its close."""
    for size in (1, 3, 7, 100):
        shown, _, answer, thought = split(chunks(f"{THINK}</think>\n\n{ANSWER}", size))
        assert (answer, thought) == (ANSWER, THINK)
        assert shown.endswith(ANSWER)  # what was streamed before the close cannot be unshown


def test_starting_inside_streams_thinking_at_once_and_an_unclosed_think_was_the_answer() -> None:
    assert split([THINK[:5], THINK[5:], "</think>", ANSWER], inside=True) == (
        ANSWER,
        THINK,
        ANSWER,
        THINK,
    )
    # enable_thinking off: no close ever comes, so it was all answer.
    _, thought, answer, final_thought = split([ANSWER[:3], ANSWER[3:]], inside=True)
    assert (thought, answer, final_thought) == (ANSWER, ANSWER, "")


def test_tags_after_the_answer_started_are_answer_text() -> None:
    text = "Use <think> tags like <think>x</think> in the prompt."
    assert split(chunks(text, 4)) == (text, "", text, "")
    after = f"<think>{THINK}</think>{ANSWER} then <think>more</think>"
    assert split([after])[2:] == (f"{ANSWER} then <think>more</think>", THINK)


def test_a_held_partial_tag_that_is_not_one_is_shown_at_the_end() -> None:
    assert split(["a <", "thin"]) == ("a <thin", "", "a <thin", "")
    assert split(["<thi"]) == ("<thi", "", "<thi", "")


def _chunk(**delta: Any) -> dict[str, Any]:
    return {"choices": [{"delta": delta, "finish_reason": None}]}


def test_the_reader_keeps_reasoning_fields_apart_and_reads_one_of_two() -> None:
    shown: list[str] = []
    reader = ReplyReader(None, shown.append)
    reader.add(_chunk(role="assistant", content=""))
    # litellm sets both on an OpenRouter delta: the same text, read once.
    reader.add(_chunk(reasoning_content="Hmm, ", reasoning="Hmm, "))
    reader.add(_chunk(reasoning="fine."))
    reader.add(_chunk(content="Done."))
    reply = reader.reply("stub", "text/event-stream")
    assert (reply.content, reply.reasoning) == ("Done.", "Hmm, fine.")
    assert [type(p) for p in shown] == [Thought, Thought, str]


def test_a_stream_of_only_thinking_counts_as_answered() -> None:
    """So a cut during the thinking is checked as a cut, never taken for an empty reply."""
    reader = ReplyReader(None, lambda p: None)
    reader.add(_chunk(reasoning_content="thinking"))
    assert reader.answered


def test_calls_written_as_text_after_a_bare_close_are_recovered_from_the_answer() -> None:
    tools = [{"type": "function", "function": {"name": "bash", "parameters": {}}}]
    reader = ReplyReader(tools, lambda p: None)
    call = '{"name": "bash", "arguments": {"command": "ls"}}'
    text = f"I should list.</think>\n<tool_call>\n{call}\n</tool_call>"
    for piece in chunks(text, 6):
        reader.add(_chunk(content=piece))
    reply = reader.reply("stub", "text/event-stream")
    assert reply.reasoning == "I should list."
    assert [c["function"]["name"] for c in reply.tool_calls] == ["bash"]
    assert "list" not in reply.content


def test_a_retry_shows_neither_thinking_nor_answer_twice_nor_one_as_the_other() -> None:
    shown: list[str] = []
    dedup = Dedup(shown.append)
    dedup.new_attempt()
    for p in (Thought("Let me "), Thought("think")):
        dedup(p)
    dedup.new_attempt()  # the stream was cut while thinking: the retry repeats it
    for p in (Thought("Let me think"), Thought(" more."), "Answer"):
        dedup(p)
    assert [(type(p).__name__, str(p)) for p in shown] == [
        ("Thought", "Let me "),
        ("Thought", "think"),
        ("Thought", " more."),
        ("str", "Answer"),
    ]
    dedup.new_attempt()  # a retry that thinks differently says so, as thinking
    dedup(Thought("Other"))
    assert isinstance(shown[-1], Thought) and shown[-1].endswith("Other")
    dedup("Answer, again")
    assert shown[-1] == ", again"


# -- history -------------------------------------------------------------------------------------


def test_history_keeps_thinking_only_for_a_template_that_reads_it_and_never_mutates() -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yes", "reasoning_content": "hmm"},
    ]
    assert reasoning.for_history(messages, keep=True) is messages
    dropped = reasoning.for_history(messages, keep=False)
    assert dropped == [messages[0], {"role": "assistant", "content": "yes"}]
    assert messages[1]["reasoning_content"] == "hmm"
    assert dropped[0] is messages[0]  # untouched turns are the same objects (cheap, stable)
    plain = [{"role": "user", "content": "hi"}]
    assert reasoning.for_history(plain, keep=False) is plain


def _family(template: Path) -> str:
    """A template's file name as a model name (`Qwen-Qwen3-0.6B.jinja` -> `qwen-qwen3-0.6b`)."""
    return template.stem.lower()


@pytest.mark.skipif(not TEMPLATES.is_dir(), reason="the llama-cpp-python sdist is not in .peers")
def test_the_family_table_agrees_with_every_real_template() -> None:
    """A model named after its template's family keeps its thinking exactly when that template
    reads it (reasoning_content, or thinking/reasoning which llama.cpp fills from it)."""
    templates = real_templates()
    assert len(templates) > 60
    wrong = [
        t.name
        for t in templates
        if reasoning.keeps_reasoning(_family(t))
        != reasoning.template_reads_reasoning(t.read_text(encoding="utf-8"))
    ]
    assert wrong == []


@pytest.mark.parametrize(
    ("model", "keeps"),
    [
        ("gpt-oss-20b", True),
        ("Qwen3-8B", True),
        ("qwen3-coder-30b", False),
        ("Kimi-K2-Thinking", True),
        ("Kimi-K2-Instruct", False),
        ("MiniMax-M2", True),
        ("DeepSeek-V3.2-Exp", True),
        ("deepseek-v3.1", False),
        ("llama-3.1-8b", False),
    ],
)
def test_families_named_in_the_issue(model: str, keeps: bool) -> None:
    assert reasoning.keeps_reasoning(model) is keeps


# -- nex doctor ----------------------------------------------------------------------------------


def _plan(model: str, endpoint: str = "http://127.0.0.1:1/v1") -> Any:
    route = SimpleNamespace(prefix="local")
    return SimpleNamespace(model=model, endpoint=endpoint, spec=SimpleNamespace(route=route))


def _rows(plan: Any, template: str | None, home: Path) -> dict[str, str]:
    return {r.what: r.detail for r in template_rows(plan, template, home)}


def test_doctor_reports_learned_rules_first_then_the_published_template(tmp_path: Path) -> None:
    from nexpy.adapt import LearnedStore

    LearnedStore(tmp_path / "adaptations.json").add("http://127.0.0.1:1/v1", "m", "short-tool-ids")
    gemma2 = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    rows = _rows(_plan("m"), gemma2, tmp_path)
    assert rows["tool-call ids"] == "9 alphanumerics (learned: short-tool-ids)"
    assert rows["system role"].startswith("not supported")
    assert rows["tool support"].startswith("tools described in the prompt")
    assert rows["reasoning"].startswith("left out")
    unknown = _rows(_plan("Qwen3-8B"), None, tmp_path)
    assert unknown["template"] == "not published"
    assert "unless the server refuses it" in unknown["system role"]
    assert unknown["reasoning"].startswith("sent back")
    qwen = "{% for m in messages %}{{ m.reasoning_content }}{{ tools }}{% endfor %}"
    assert _rows(_plan("my-model"), qwen, tmp_path)["reasoning"] == (
        "sent back on assistant turns as reasoning_content (the template reads it)"
    )
