"""What counts as a secret, in one place: keys never reach a journal, a log, an event or a tool.

A variable whose name says it holds a credential (…KEY, …SECRET, …TOKEN, …PASSWORD; the same
rule codex applies to its shell) is kept out of tool subprocesses, and its value is replaced by
`[redacted]` in any text nex keeps or shows.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Any

_SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
MIN_LENGTH = 8  # shorter values ("1", "true") would redact ordinary text
REDACTED = "[redacted]"


@functools.lru_cache(maxsize=4096)  # asked for every variable at every journal entry
def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def secret_values(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Secret values mapped to their variable names, longest first (a key may contain another)."""
    env = os.environ if environ is None else environ
    # Names first (cached verdicts), values only for the secret ones: asked at every journal entry.
    found = {env[k]: k for k in [k for k in env if is_secret_name(k)] if len(env[k]) >= MIN_LENGTH}
    return dict(sorted(found.items(), key=lambda kv: -len(kv[0])))


def scrubbed_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a tool subprocess: everything but credentials."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if not is_secret_name(k)}


def redact(text: str, values: Mapping[str, str] | None = None) -> str:
    """`text` with every secret value replaced by [redacted]."""
    for value in values if values is not None else secret_values():
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def redact_any(obj: Any, values: Mapping[str, str] | None = None) -> Any:
    """`redact` applied to every string inside nested dicts and lists (a journal entry)."""
    values = secret_values() if values is None else values
    if not values:
        return obj
    if isinstance(obj, str):
        return redact(obj, values)
    if isinstance(obj, dict):
        return {k: redact_any(v, values) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact_any(v, values) for v in obj]
    return obj
