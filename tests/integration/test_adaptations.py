"""nex adapts to a real chat template that refuses its request, and remembers it.

The stub renders every request with a real template from the llama-cpp-python sdist (make peers
unpacks it), the way vLLM and llama-cpp-python do, and answers a refusal with the template's own
message in vLLM's 400. nex learns the rule that answers it (nexpy.adapt), says so once, journals
it, and a second run against the same server sends the adapted request the first time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stubs.oai import stub_server
from stubs.template import TemplateRenderer
from tests.conftest import NexEnv
from tests.peers.llama_server import TEMPLATES

# One tool round with two parallel calls, then an answer: what a Llama 3.x template refuses.
PARALLEL = [
    {
        "tool_calls": [
            {"name": "write_file", "arguments": {"path": "a.txt", "content": "A"}},
            {"name": "read_file", "arguments": {"path": "a.txt"}},
        ]
    },
    {"content": "done"},
]


def _template(name: str) -> TemplateRenderer:
    path = TEMPLATES / f"{name}.jinja"
    if not path.is_file():
        pytest.fail(f"no real template at {path}: run make peers")
    return TemplateRenderer.from_file(path)


def _run(nex_env: NexEnv, url: str) -> tuple[int, str, list[dict]]:
    result = nex_env.run(
        "-m", "local:m", "-e", url, "--sandbox", "off", "--chat", "s", "--autonomous", "go"
    )
    return result.code, result.stderr, nex_env.journal("s")


@pytest.mark.parametrize(
    ("template", "rules"),
    [
        ("meta-llama-Llama-3.1-8B-Instruct", ["single-tool-call"]),
        ("google-gemma-2-2b-it", ["system-in-user"]),
    ],
)
def test_a_refusing_template_is_adapted_once_then_remembered(
    nex_env: NexEnv, template: str, rules: list[str]
) -> None:
    # One server for both runs: what is learned is kept per endpoint and model.
    with stub_server(PARALLEL * 2, template=_template(template)) as srv:
        code, stderr, journal = _run(nex_env, srv.url)
        first = len(srv.prompts)
        refused = [p for p in srv.prompts if p is None]
        assert code == 0, stderr
        assert (nex_env.work / "a.txt").read_text() == "A"
        learned = [e["rule"] for e in journal if e["kind"] == "adaptation"]
        assert learned[: len(rules)] == rules
        assert len(refused) == len(learned) >= 1  # one refusal taught each rule
        warnings = [line for line in stderr.splitlines() if "adapting it from now on" in line]
        assert len(warnings) == len(learned)

        # A new session against the same server: the adapted request goes out the first time.
        again = nex_env.run(
            "-m", "local:m", "-e", srv.url, "--sandbox", "off", "--autonomous", "again"
        )
        assert again.code == 0, again.stderr
        assert len(srv.prompts) > first and None not in srv.prompts[first:]
    assert "adapting it from now on" not in again.stderr


def test_a_refusal_no_rule_answers_still_ends_in_one_line(nex_env: NexEnv, tmp_path: Path) -> None:
    source = tmp_path / "t.jinja"
    source.write_text("{{ raise_exception('this template refuses everything') }}")
    with stub_server([{"content": "never"}], template=TemplateRenderer.from_file(source)) as srv:
        code, stderr, journal = _run(nex_env, srv.url)
    assert code == 1
    errors = [line for line in stderr.splitlines() if line.startswith("nex: error:")]
    assert len(errors) == 1 and "refuses everything" in errors[0]
    assert not [e for e in journal if e["kind"] == "adaptation"]
    assert "Traceback" not in stderr
