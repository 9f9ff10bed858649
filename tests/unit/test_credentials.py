"""The one rule for secrets (nexpy.credentials): which values, and every form they are hidden in."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import textwrap
from urllib.parse import quote, quote_plus

import pytest

from nexpy.credentials import REDACTED, Secrets, scrubbed_env

KEY = "sk-live/9Zq+w8=Xy:42abcDEF"


@pytest.mark.parametrize("offset", range(6))
def test_base64_of_any_stream_holding_the_key_is_redacted(offset: int) -> None:
    """`base64 /proc/$PPID/environ`: the key sits at any offset of what is encoded."""
    stream = ("N" * offset + "=" + KEY + "\0OTHER=1").encode()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        text = encode(stream).decode()
        out = Secrets(frozenset({KEY})).redact("out: " + text)
        assert REDACTED in out
        # At most two bytes at each end of the key stay visible: never enough to use.
        assert len(base64.b64decode(out.split(REDACTED)[0][5:] + "==")) <= offset + 3


def test_wrapped_base64_is_redacted_wherever_the_line_breaks() -> None:
    for pad in range(80):
        wrapped = base64.encodebytes(("x" * pad + KEY).encode()).decode()  # 76 columns
        out = Secrets(frozenset({KEY})).redact(wrapped)
        assert REDACTED in out, pad
        assert KEY.encode() not in base64.b64decode(out.replace(REDACTED, "").replace("\n", ""))


def test_plain_and_url_encoded_forms() -> None:
    secrets = Secrets(frozenset({KEY}))
    for form in (
        KEY,
        quote(KEY, safe=""),
        quote_plus(KEY),
        base64.b64encode(KEY.encode()).decode(),
    ):
        assert secrets.redact(f"a {form} b") == f"a {REDACTED} b"


def test_ordinary_text_is_left_alone() -> None:
    text = "the build passes; base64 of nothing: aGVsbG8gd29ybGQ=\n" * 3
    assert Secrets(frozenset({KEY})).redact(text) == text


def test_a_run_key_of_any_name_is_withdrawn_everywhere() -> None:
    """In a fresh process (the rule changes the process's environment): after
    hold_run_keys, the key is gone from os.environ, from what a child inherits and from
    /proc/self/environ, yet nex itself still reads it."""
    code = textwrap.dedent(
        """
        import os, subprocess
        from nexpy import credentials
        credentials.hold_run_keys("LLM_AUTH", ["hdr-value-123456"], withdraw=True)
        assert "LLM_AUTH" not in os.environ and "GH_TOKEN" not in os.environ
        assert credentials.getenv("LLM_AUTH") == "auth-sentinel-0042"
        environ = open("/proc/self/environ", "rb").read()
        assert b"auth-sentinel-0042" not in environ and b"tok-sentinel-77" not in environ
        child = subprocess.run(["sh", "-c", "env; cat /proc/$PPID/environ"],
                               capture_output=True, env=credentials.scrubbed_env())
        assert b"sentinel" not in child.stdout, child.stdout
        assert credentials.redact("hdr-value-123456 auth-sentinel-0042") == "[redacted] [redacted]"
        print("ok")
        """
    )
    env = dict(os.environ, LLM_AUTH="auth-sentinel-0042", GH_TOKEN="tok-sentinel-77")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout == "ok\n", out.stderr


def test_scrubbed_env_drops_credential_names() -> None:
    env = {"PATH": "/bin", "FOO_API_KEY": "x" * 20, "HOME": "/root"}
    assert scrubbed_env(env) == {"PATH": "/bin", "HOME": "/root"}


def test_secret_values_follow_every_change_of_the_environment_and_the_run_keys() -> None:
    """secret_values() is cached between calls (it is asked at every journal entry and event):
    a variable set, changed or removed, and a run key registered, each show in the next answer.
    In a fresh process: registering a key changes the process for good."""
    code = textwrap.dedent(
        """
        import os
        from nexpy import credentials
        first = credentials.secret_values()
        assert credentials.secret_values() is first  # nothing changed: the cached answer
        assert "tok-sentinel-1234" not in first.raw
        os.environ["GH_TOKEN"] = "tok-sentinel-1234"
        assert credentials.redact("a tok-sentinel-1234") == "a [redacted]"
        os.environ["GH_TOKEN"] = "tok-sentinel-5678"
        assert credentials.redact("tok-sentinel-1234 tok-sentinel-5678") == (
            "tok-sentinel-1234 [redacted]")
        del os.environ["GH_TOKEN"]
        assert credentials.redact("tok-sentinel-5678") == "tok-sentinel-5678"
        os.environ["PLAIN"] = "not-a-secret-value"  # any change is seen, secret or not
        assert credentials.redact("not-a-secret-value") == "not-a-secret-value"
        credentials.hold_run_keys(None, ["hdr-sentinel-9012"])
        assert credentials.redact("hdr-sentinel-9012") == "[redacted]"
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "GH_TOKEN"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout == "ok\n", out.stderr


def test_a_variable_that_names_a_location_is_not_a_secret() -> None:
    """litellm's tokenizer path (TIKTOKEN_CACHE_DIR, which nex sets) was redacted everywhere."""
    from nexpy.credentials import is_secret_name

    for name in ("TIKTOKEN_CACHE_DIR", "SSL_KEY_FILE", "GNUPG_KEY_PATH", "TOKEN_HOME"):
        assert not is_secret_name(name), name
    for name in ("OPENAI_API_KEY", "GITHUB_TOKEN", "DB_PASSWORD", "KEY_DIRECTORY", "MY_SECRET"):
        assert is_secret_name(name), name
