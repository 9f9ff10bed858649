"""Every real chat template in the llama-cpp-python sdist, on both real rendering engines.

Engines: ``transformers`` is the stub's template mode (stubs/template.py: what vLLM, TGI and
llama-cpp-python render); ``llama.cpp`` is the C++ ``llama-server --jinja`` built by
``make peers``, on a tiny GGUF carrying the template. nex talks to a scripting proxy
(tests/conformance/proxy.py) that lets the engine accept or refuse each real request before
answering it with the script; a refusal reaches nex verbatim, and nex learns the adaptation
(``nexpy.adapt``) itself, journals it and caches it for the endpoint.

Per template and engine, two scenarios:

- ``session``: three user messages in one ``--chat`` session: a tool round followed by two
  parallel tool calls in one turn, a plain second message, an edit round;
- ``resume``: a session killed (SIGKILL, for real, once per run) while its tool call ran,
  resumed with a new message.

nex runs in-process (``nexpy.cli.main``): a subprocess per message would prove nothing more
here (the subprocess paths have their own tiers) and would cost seconds per run, times ~700.
The kill is the exception: it needs a process to kill. A row is ``pass`` when the engine refused
nothing, ``adapted`` when the learned rules made it accept everything, ``fail`` otherwise;
``unrenderable`` (xfail) when the engine refuses even a lone user message, i.e. the template
cannot be rendered by that engine at all. Every refusal must have taught nex a rule it had not
learned before: a rule learned twice means the per-endpoint cache did not hold across runs. The
table prints at the end of the run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexpy import cli
from nexpy.messages import INTERRUPTED
from stubs.oai import stub_server
from stubs.template import TemplateRenderer
from tests.conformance.conftest import INCOMPATIBLE
from tests.conformance.proxy import ScriptingProxy, error_message
from tests.conformance.table import row
from tests.conftest import NexEnv
from tests.peers.llama_server import BASH_TOOL, LlamaServerPool, ServerFailed, real_templates

# `make test` distributes by file (xdist --dist loadfile): one worker runs this tier in order,
# one llama-server per template at a time.
pytestmark = [pytest.mark.peer, pytest.mark.timeout(240)]

TEMPLATES = real_templates()
ENGINES = ("transformers", "llama.cpp")
SCENARIOS = ("session", "resume")
MODEL = "local:tiny"

# Template-major order, so one llama-server serves all of a template's tests.
CASES = [
    pytest.param(t, e, s, id=f"{t.stem}-{e}-{s}")
    for t in TEMPLATES
    for e in ENGINES
    for s in SCENARIOS
]


def _call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


SESSION_SCRIPT = [
    # message 1: a tool round, then two parallel calls in one turn
    {"tool_calls": [_call("bash", command="echo alpha-out")]},
    {
        "tool_calls": [
            _call("bash", command="echo beta-out"),
            _call("bash", command="echo gamma-out"),
        ]
    },
    {"content": "first answer"},
    # message 2: plain
    {"content": "second answer"},
    # message 3: an edit round
    {"tool_calls": [_call("edit_file", path="notes.txt", old_string="old", new_string="new")]},
    {"content": "third answer"},
]
MESSAGES = ("look around please", "and what now?", "edit notes.txt")


class InProcessNex:
    """`nex` run through `cli.main` in this process, with the test's own home and work dir."""

    def __init__(self, env: NexEnv, monkeypatch: pytest.MonkeyPatch, capfd: Any) -> None:
        self.env, self.capfd = env, capfd
        for key in list(os.environ):
            if key.startswith(("NEX_", "OPENAI", "OPENROUTER", "ANTHROPIC", "OLLAMA")):
                monkeypatch.delenv(key)
        monkeypatch.setenv("NEX_HOME", str(env.home))
        monkeypatch.setenv("XDG_CONFIG_HOME", str(env.root / "xdg"))
        monkeypatch.chdir(env.work)

    def run(self, url: str, chat: str, message: str) -> tuple[int, list[dict], str]:
        """Exit code, --json events and stderr of one autonomous message."""
        self.capfd.readouterr()
        code = cli.main(["-m", MODEL, "-e", url, "--chat", chat, "--json", "--autonomous", message])
        out, err = self.capfd.readouterr()
        events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return code, events, err


def _finals(events: list[dict]) -> list[str]:
    return [e["content"] for e in events if e["type"] == "message" and e.get("final")]


@pytest.fixture(scope="session")
def killed_session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session folder of a real `nex` SIGKILLed while its tool call ran."""
    from tests.conftest import NEX

    root = tmp_path_factory.mktemp("killed")
    (root / "work").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEX_")}
    env.update(NEX_HOME=str(root / "home"), XDG_CONFIG_HOME=str(root / "xdg"))
    script = [{"tool_calls": [_call("bash", command="sleep 60")]}]
    with stub_server(script) as srv:
        import subprocess

        proc = subprocess.Popen(
            [NEX, "-m", MODEL, "-e", srv.url, "--chat", "killed", "--autonomous", "start a job"],
            cwd=root / "work",
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        journal = root / "home" / "sessions" / "killed" / "journal.jsonl"
        deadline = time.monotonic() + 60
        while not (journal.exists() and "sleep 60" in journal.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, "nex never ran the tool"
            time.sleep(0.05)
        time.sleep(0.3)  # the tool is running now
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    return journal.parent


@pytest.fixture
def nex(nex_env: NexEnv, monkeypatch: pytest.MonkeyPatch, capfd: Any) -> InProcessNex:
    return InProcessNex(nex_env, monkeypatch, capfd)


def _unrenderable(url: str) -> str | None:
    """The engine's refusal of a lone user message, with tools and without, if it refuses
    both: then no request nex could send renders."""
    refusal = None
    for extra in ({}, {"tools": [BASH_TOOL]}):
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        r = httpx.post(url + "/chat/completions", json={**body, **extra}, timeout=60)
        if r.status_code < 400:
            return None
        refusal = refusal or error_message(r.content)
    return refusal


@pytest.mark.parametrize(("template", "engine", "scenario"), CASES)
def test_template(
    template: Path,
    engine: str,
    scenario: str,
    request: pytest.FixtureRequest,
    nex: InProcessNex,
    killed_session: Path,
) -> None:
    if engine == "llama.cpp":
        llama_pool: LlamaServerPool = request.getfixturevalue("llama_pool")
        try:
            url = llama_pool.get(template).url
        except ServerFailed as e:
            _mark(template, engine, "unrenderable", [], [f"llama-server did not start: {e}"])
            pytest.xfail(f"llama-server cannot load this template: {e}")
        _run(template, engine, scenario, url, nex, killed_session)
    else:
        with stub_server(template=TemplateRenderer.from_file(template)) as srv:
            _run(template, engine, scenario, srv.url, nex, killed_session)


def _mark(
    template: Path, engine: str, outcome: str, learned: list[str], refusals: list[str]
) -> None:
    """Fold one scenario's result into the table row (the worst outcome wins)."""
    r = row(template.stem, engine)
    order = ("pass", "adapted", "incompatible", "unrenderable", "fail")
    if order.index(outcome) > order.index(r.outcome):
        r.outcome = outcome
    r.learned = sorted(set(r.learned) | set(learned))
    r.first_refusal = r.first_refusal or (refusals[0] if refusals else "")
    r.refusals += [m for m in refusals if m not in r.refusals]


def _run(
    template: Path, engine: str, scenario: str, url: str, nex: InProcessNex, killed: Path
) -> None:
    blocked = _unrenderable(url)
    if blocked is not None:
        _mark(template, engine, "unrenderable", [], [blocked])
        pytest.xfail(f"{engine} cannot render {template.name} at all: {blocked}")
    script = SESSION_SCRIPT if scenario == "session" else [{"content": "resumed answer"}]
    chat = "conf" if scenario == "session" else "killed"
    with ScriptingProxy(script, url) as proxy:
        try:
            if scenario == "session":
                _session(proxy, nex)
            else:
                _resume(proxy, nex, killed)
            learned = _learned(nex, chat)
            assert len(learned) == len(set(learned)), f"a rule was learned twice: {learned}"
            assert len(proxy.refusals) == len(learned), (
                f"{len(proxy.refusals)} refusals taught {learned}: {proxy.refusals}"
            )
        except AssertionError:
            learned = _learned(nex, chat)
            if engine == "transformers" and template.stem in INCOMPATIBLE:
                _mark(template, engine, "incompatible", learned, proxy.refusals)
                pytest.xfail(f"{INCOMPATIBLE[template.stem]}: {proxy.refusals[:1]}")
            _mark(template, engine, "fail", learned, proxy.refusals)
            raise
        if engine == "transformers" and template.stem in INCOMPATIBLE:
            pytest.fail(f"{template.stem} passes now: drop it from INCOMPATIBLE")
        _mark(template, engine, "adapted" if learned else "pass", learned, proxy.refusals)


def _learned(nex: InProcessNex, chat: str) -> list[str]:
    """The adaptations nex journaled in this chat, in order (a rule twice if learned twice)."""
    journal = nex.env.home / "sessions" / chat / "journal.jsonl"
    if not journal.exists():
        return []
    entries = (json.loads(line) for line in journal.read_text().splitlines() if line.strip())
    return [e["rule"] for e in entries if e.get("kind") == "adaptation"]


def _session(proxy: ScriptingProxy, nex: InProcessNex) -> None:
    (nex.env.work / "notes.txt").write_text("old line\n")
    answers = ("first answer", "second answer", "third answer")
    for message, answer in zip(MESSAGES, answers, strict=True):
        code, events, err = nex.run(proxy.url, "conf", message)
        assert code == 0, f"{message!r}: exit {code}: {err[-600:]}"
        assert _finals(events) == [answer], err[-600:]
    assert (nex.env.work / "notes.txt").read_text() == "new line\n"
    # Nothing was lost on the way to the engine: every user text and every tool output is
    # in the last request it accepted, adapted or not.
    last = json.dumps(proxy.accepted[-1])
    for text in (*MESSAGES, "alpha-out", "beta-out", "gamma-out"):
        assert text in last, f"{text!r} is missing from what the engine rendered"


def _resume(proxy: ScriptingProxy, nex: InProcessNex, killed: Path) -> None:
    shutil.copytree(killed, nex.env.home / "sessions" / "killed")
    code, events, err = nex.run(proxy.url, "killed", "carry on")
    assert code == 0, f"exit {code}: {err[-600:]}"
    assert _finals(events) == ["resumed answer"], err[-600:]
    last = json.dumps(proxy.accepted[-1])
    for text in ("start a job", "sleep 60", "carry on"):
        assert text in last, f"{text!r} is missing from what the engine rendered"
    assert INTERRUPTED in last or "interrupted" in last.lower()
