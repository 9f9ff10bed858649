"""What counts as a secret, in one place: keys never reach a journal, a log, an event or a tool.

Two kinds of value are secrets:
- every key nex resolves for this run, from any source: the endpoint's key variable (whatever
  its name: `api_key_env = "LLM_AUTH"` counts) and the header values of a configured endpoint
  (`hold_run_keys`);
- the value of any variable whose name says it holds a credential (…KEY, …SECRET, …TOKEN,
  …PASSWORD; the rule codex applies to its shell).

The rules, each applied here and nowhere else:
- tool subprocesses get `scrubbed_env()`: neither kind of variable;
- for the in-process loop, `hold_run_keys(..., withdraw=True)` takes the secrets out of nex's
  own environment once read: out of `os.environ`, and wiped from the process's original
  environment block too, which is what `/proc/<pid>/environ` shows (deleting from `os.environ`
  does not change it, and any child of ours may read it). The values stay available to nex
  through `getenv()`, which the provider passes to litellm explicitly;
- `redact()` replaces each secret in text nex writes anywhere (journal, tool output and its
  kept copy, events, stderr, tracebacks, a server's error text) with `[redacted]`, in its plain,
  base64 (any alignment, wrapped at any column or not) and URL-encoded forms.
"""

from __future__ import annotations

import base64
import functools
import os
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

_SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
# ...unless the name says its value is where something is (TIKTOKEN_CACHE_DIR, SSL_KEY_FILE):
# a path is not a secret, and redacting one hides it from every journal, event and tool output.
_LOCATION_NAME = re.compile(r"_(DIR|PATH|FILE|HOME)$", re.IGNORECASE)
MIN_LENGTH = 8  # shorter values ("1", "true") would redact ordinary text
REDACTED = "[redacted]"

_held: dict[str, str] = {}  # variables taken out of the environment: name -> value
_resolved: set[str] = set()  # values nex resolved for this run, whatever their variable's name
_changes = 0  # bumped whenever _held or _resolved change: the cache below is stale then
# secret_values() is asked at every journal entry and event (ten times a turn): the last answer,
# with the environment it was computed from and _changes then. Reading os.environ costs ~0.5 µs
# a variable (each name decoded in Python), comparing its raw dict with a copy ~1 µs in all.
_last: tuple[dict[bytes, bytes], int, Secrets] | None = None


@functools.lru_cache(maxsize=4096)  # asked for every variable at every journal entry
def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name)) and not _LOCATION_NAME.search(name)


def getenv(name: str) -> str | None:
    """A variable's value, whether it is still in the environment or was withdrawn from it."""
    return _held.get(name, os.environ.get(name))


def hold_run_keys(
    key_env: str | None, values: Iterable[str] = (), *, withdraw: bool = False
) -> None:
    """Register the keys of this run as secrets: the value of `key_env` and `values` (header
    values from config). With `withdraw`, take every secret variable out of nex's own
    environment (the in-process loop does; a wrapped CLI needs its keys in its environment)."""
    if key_env and (value := getenv(key_env)):
        _register(value)
    for value in values:
        _register(value)
    if not withdraw:
        return
    global _changes
    for name in [k for k in os.environ if is_secret_name(k) or os.environ[k] in _resolved]:
        _held[name] = os.environ.pop(name)
        _changes += 1
        _register(_held[name])
        _wipe_environ_block(name)


def _register(value: str) -> None:
    global _changes
    if len(value) >= MIN_LENGTH:
        _resolved.add(value)
        _changes += 1


def _wipe_environ_block(name: str) -> None:
    """Zero `name`'s value in the environment block the process started with: the kernel serves
    `/proc/<pid>/environ` from that memory, which neither `os.environ` nor `unsetenv` touch."""
    if not sys.platform.startswith("linux"):
        return
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[47]), int(fields[48])  # env_start, env_end (proc(5), 50 and 51)
        if not 0 < start < end:
            return
        import ctypes  # only when a secret is withdrawn: not on every launch

        block = ctypes.string_at(start, end - start)
        entry = name.encode() + b"="
        if block.startswith(entry):
            at = 0
        elif (at := block.find(b"\0" + entry)) >= 0:
            at += 1
        else:
            return
        value_at = at + len(entry)
        value_end = block.find(b"\0", value_at)
        if value_end < 0:
            value_end = len(block)
        ctypes.memset(start + value_at, 0, value_end - value_at)
    except (OSError, ValueError, IndexError):
        return  # no /proc, an unexpected layout: the variable is still gone from os.environ


def _raw_secrets(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    env = os.environ if environ is None else environ
    # Names first (cached verdicts), values only for the secret ones: asked at every journal entry.
    named = {env[k] for k in [k for k in env if is_secret_name(k)] if len(env[k]) >= MIN_LENGTH}
    return frozenset(named | _resolved | set(_held.values()))


def scrubbed_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a tool subprocess: everything but credentials and this run's keys."""
    env = os.environ if environ is None else environ
    keys = _resolved | set(_held.values())
    return {k: v for k, v in env.items() if not is_secret_name(k) and v not in keys}


def _b64_forms(value: bytes) -> set[str]:
    """The base64 text that any encoding of a stream containing `value` contains, whatever the
    value's offset in that stream: for each of the 3 alignments, the characters that depend on
    the value's bytes alone, in the standard and URL-safe alphabets; and the whole encoding."""
    forms = {base64.b64encode(value).decode(), base64.urlsafe_b64encode(value).decode()}
    for skip in range(3):
        part = value[skip:]
        part = part[: len(part) - len(part) % 3]
        if len(part) >= 6:  # 8 characters or more: never ordinary text
            forms.add(base64.b64encode(part).decode())
            forms.add(base64.urlsafe_b64encode(part).decode())
    return forms


class Secrets:
    """The secrets of this process, with every form they are redacted in."""

    def __init__(self, raw: frozenset[str]) -> None:
        self.raw = raw
        forms: set[str] = set(raw)
        encoded: set[str] = set()
        for value in raw:
            forms |= {quote(value, safe=""), quote_plus(value, safe="")}
            encoded |= _b64_forms(value.encode())
        forms |= encoded
        # Longest first: a form may contain another, and the longer must go whole.
        self.forms = sorted(forms, key=len, reverse=True)
        # `base64 FILE` wraps at 76 columns: a form may have a line break anywhere inside.
        self.wrapped = [
            (_pieces(form), re.compile("(?:\r?\n)?".join(re.escape(c) for c in form)))
            for form in sorted(encoded, key=len, reverse=True)
        ]

    def __bool__(self) -> bool:
        return bool(self.raw)

    def redact(self, text: str) -> str:
        for form in self.forms:
            if form in text:
                text = text.replace(form, REDACTED)
        if "\n" in text:
            for pieces, pattern in self.wrapped:
                # A break leaves some piece whole: a cheap look before the regex scan.
                if any(p in text for p in pieces):
                    text = pattern.sub(REDACTED, text)
        return text


def _pieces(form: str) -> list[str]:
    n = max(2, len(form) // 16)
    size = -(-len(form) // n)
    return [form[i : i + size] for i in range(0, len(form), size)]


@functools.lru_cache(maxsize=8)
def _secrets_for(raw: frozenset[str]) -> Secrets:
    return Secrets(raw)


def secret_values(environ: Mapping[str, str] | None = None) -> Secrets:
    """Every secret of this process (the run's keys and credential variables), ready to redact."""
    global _last
    if environ is not None:
        return _secrets_for(_raw_secrets(environ))
    # CPython's os.environ keeps the raw variables in a dict (bytes on POSIX); anywhere it does
    # not, every call reads the environment as before.
    raw = getattr(os.environ, "_data", None)
    if isinstance(raw, dict) and _last is not None and _last[1] == _changes and _last[0] == raw:
        return _last[2]
    # What the answer is computed from is noted first: a change meanwhile (another thread) then
    # makes the next call compute again, rather than pairing new inputs with an old answer.
    snapshot, changes = (dict(raw) if isinstance(raw, dict) else None), _changes
    secrets = _secrets_for(_raw_secrets())
    _last = None if snapshot is None else (snapshot, changes, secrets)
    return secrets


def redact(text: str, secrets: Secrets | None = None) -> str:
    """`text` with every secret, in every form, replaced by [redacted]."""
    return (secrets if secrets is not None else secret_values()).redact(text)


def redact_any(obj: Any, secrets: Secrets | None = None) -> Any:
    """`redact` applied to every string inside nested dicts and lists (a journal entry)."""
    secrets = secret_values() if secrets is None else secrets
    if not secrets:
        return obj
    if isinstance(obj, str):
        return secrets.redact(obj)
    if isinstance(obj, dict):
        return {k: redact_any(v, secrets) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact_any(v, secrets) for v in obj]
    return obj
