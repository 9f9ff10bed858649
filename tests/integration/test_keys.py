"""Keys, all of them (issue 13, item 6): every key nex resolves for a run is a secret.

One sentinel per source — the provider's variable, an `api_key_env` whose name says nothing
(`LLM_AUTH`), a header value from config — and a model that does what a curious or hijacked
model would: `env`, `base64 /proc/$PPID/environ`, read a file holding the key in its plain,
base64 and URL-encoded forms, print enough to be capped into `tool-outputs/`. The sentinel and
its encodings must appear nowhere nex writes or sends to the model; what the tools themselves
wrote into the work dir (unredacted, by design) proves the environment never held the key.
"""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from stubs.oai import stub_server
from tests.conftest import NexEnv, Result

pytestmark = pytest.mark.timeout(120)

# "/", "+" and "=" make the URL encoding differ from the key itself.
SENTINEL = "sk-sentinel/7f3a+9c1e=5b2d:4f60"
B64 = base64.b64encode(SENTINEL.encode()).decode()
URL = quote(SENTINEL, safe="")
FORMS = {"plain": SENTINEL, "base64": B64, "url-encoded": URL}

SNOOP = (
    "env > env.txt; tr '\\0' '\\n' < /proc/$PPID/environ > parent-environ.txt; "
    "env; base64 /proc/$PPID/environ; echo $LLM_AUTH $OPENAI_API_KEY"
)


def _script() -> dict[str, Any]:
    calls = [
        {"name": "bash", "arguments": {"command": SNOOP}},
        {"name": "read_file", "arguments": {"path": "keys.txt"}},
        # Over the output cap: the full text goes to tool-outputs/.
        {"name": "bash", "arguments": {"command": "seq 1 6000; cat keys.txt; base64 keys.txt"}},
    ]
    return {"replies": [{"tool_calls": [c]} for c in calls], "default": {"content": "done"}}


def _keys_file(work: Path) -> None:
    wrapped = base64.encodebytes(("x" * 50 + SENTINEL).encode()).decode()  # wrapped at 76
    (work / "keys.txt").write_text(f"plain {SENTINEL}\nb64 {B64}\nurl {URL}\nwrapped\n{wrapped}")


def _assert_nowhere(nex_env: NexEnv, result: Result, requests: list[Any], session: str) -> None:
    folder = nex_env.home / "sessions" / session
    places = {
        "stdout (events)": result.stdout,
        "stderr": result.stderr,
        "requests to the model": json.dumps(requests),
        "journal": (folder / "journal.jsonl").read_text(),
    }
    outputs = list((folder / "tool-outputs").iterdir())
    assert outputs, "the capped output was not kept"
    for path in outputs:
        places[f"tool-outputs/{path.name}"] = path.read_text()
    for where, text in places.items():
        for form, value in FORMS.items():
            assert value not in text, f"the key ({form}) reached the {where}"
        # The wrapped base64 of the key: no line break inside it survives either.
        assert B64[4:20] not in text.replace("\n", ""), f"wrapped base64 in the {where}"
    # The model saw that something was there, not what.
    assert "[redacted]" in places["requests to the model"]
    # What the commands wrote to disk themselves is not redacted: the key was never theirs.
    for name in ("env.txt", "parent-environ.txt"):
        assert SENTINEL not in (nex_env.work / name).read_text(), name


def _run(nex_env: NexEnv, *args: str) -> Result:
    return nex_env.run(
        *args, "--chat", "k", "--json", "--context-window", "32768", "--autonomous", "go"
    )


def test_provider_key_variable(nex_env: NexEnv) -> None:
    nex_env.env["OPENAI_API_KEY"] = SENTINEL
    _keys_file(nex_env.work)
    with stub_server(_script(), strict=True) as srv:
        result = _run(nex_env, "-m", "openai:gpt-test", "-e", srv.url)
        assert result.code == 0, result.stderr
        assert {h["authorization"] for h in srv.headers} == {f"Bearer {SENTINEL}"}
        _assert_nowhere(nex_env, result, srv.requests, "k")


def test_api_key_env_whose_name_says_nothing(nex_env: NexEnv) -> None:
    nex_env.env["LLM_AUTH"] = SENTINEL
    _keys_file(nex_env.work)
    with stub_server(_script(), strict=True) as srv:
        nex_env.write_config(f'[endpoints.box]\nurl = "{srv.base_url}"\napi_key_env = "LLM_AUTH"\n')
        result = _run(nex_env, "-m", "oai-compat:m", "-e", "box")
        assert result.code == 0, result.stderr
        assert {h["authorization"] for h in srv.headers} == {f"Bearer {SENTINEL}"}
        _assert_nowhere(nex_env, result, srv.requests, "k")
    assert "key=$LLM_AUTH (set)" in result.stderr


def test_header_value_from_config(nex_env: NexEnv) -> None:
    _keys_file(nex_env.work)
    with stub_server(_script(), strict=True) as srv:
        nex_env.write_config(
            f'[endpoints.box]\nurl = "{srv.base_url}"\n'
            f'headers = {{ "X-Api-Token" = "{SENTINEL}" }}\n'
        )
        result = _run(nex_env, "-m", "oai-compat:m", "-e", "box")
        assert result.code == 0, result.stderr
        assert {h["x-api-token"] for h in srv.headers} == {SENTINEL}
        _assert_nowhere(nex_env, result, srv.requests, "k")


@pytest.mark.parametrize("verbose", [False, True], ids=["plain", "-v"])
def test_a_401_body_echoing_the_key_is_redacted(nex_env: NexEnv, verbose: bool) -> None:
    """OpenAI's 401 says "Incorrect API key provided: sk-…": the server's words pass the same
    redaction as everything else, in the error line, the --json error event and a traceback."""
    nex_env.env["LLM_AUTH"] = SENTINEL
    body = {"error": {"message": f"Incorrect API key provided: {SENTINEL}.", "code": 401}}
    with stub_server({"default": {"fault": "status", "status": 401, "body": body}}) as srv:
        nex_env.write_config(f'[endpoints.box]\nurl = "{srv.base_url}"\napi_key_env = "LLM_AUTH"\n')
        result = _run(nex_env, "-m", "oai-compat:m", "-e", "box", *(["-v"] if verbose else []))
    assert result.code == 1
    (line,) = result.error_lines()
    assert "refused the credentials (Incorrect API key provided: [redacted].)" in line
    (error,) = [e for e in result.events if e["type"] == "error"]
    assert "[redacted]" in error["message"]
    if verbose:
        assert "Traceback" in result.stderr
    for value in FORMS.values():
        assert value not in result.stdout + result.stderr


def test_state_dirs_and_kept_outputs_are_private(nex_env: NexEnv) -> None:
    nex_env.env["NEX_HOME"] = str(nex_env.root / "made" / "by" / "nex")
    script = {
        "replies": [{"tool_calls": [{"name": "bash", "arguments": {"command": "seq 1 9000"}}]}],
        "default": {"content": "done"},
    }
    with stub_server(script) as srv:
        result = nex_env.run(
            "-m", "local:m", "-e", srv.url, "--chat", "p", "--autonomous", "go"
        )  # fmt: skip
    assert result.code == 0, result.stderr
    home = nex_env.root / "made" / "by" / "nex"
    for folder in (home.parent.parent, home.parent, home, home / "sessions", home / "sessions/p"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    (kept,) = (home / "sessions" / "p" / "tool-outputs").iterdir()
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "sessions" / "p" / "journal.jsonl").stat().st_mode) == 0o600
