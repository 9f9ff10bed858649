"""Shared fixtures: an isolated nex home and config, and `nex` run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from nexpy.litellm_setup import prepare_environment

# Properties are judged by their examples, not by how fast a shared 2-core machine generates them:
# `make test` runs two workers side by side, and "too slow" there says nothing about nex.
settings.register_profile("nex", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("nex")

# Points TIKTOKEN_CACHE_DIR at litellm's bundled encodings (as nex does for itself) before any
# stub counts a token: a stub picks its tokenizer once per process, and without the files it
# falls back to len // 4, which would make its window checks disagree with nex's budget.
prepare_environment()

NEX = str(Path(sys.executable).parent / "nex")
SENTINEL_KEY = "sk-sentinel-7f3a9c1e5b2d4f60"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("nex: error:")]


@dataclass
class NexEnv:
    """A work dir, a state home and a config home that belong to one test."""

    root: Path
    work: Path
    home: Path
    env: dict[str, str]

    def run(
        self, *args: str, stdin: str | None = None, timeout: float = 60, cwd: Path | None = None
    ) -> Result:
        proc = subprocess.run(
            [NEX, *args],
            cwd=cwd or self.work,
            env=self.env,
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [NEX, *args],
            cwd=self.work,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def journal(self, session: str) -> list[dict]:
        path = self.home / "sessions" / session / "journal.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_config(self, text: str, *, local: bool = False) -> Path:
        path = (
            self.work / ".nex" / "config.toml"
            if local
            else self.root / "xdg" / "nexpy" / "config.toml"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path


@pytest.fixture
def nex_env(tmp_path: Path) -> Iterator[NexEnv]:
    work = tmp_path / "work"
    work.mkdir()
    home = tmp_path / "home"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NEX_", "OPENAI", "OPENROUTER", "ANTHROPIC", "OLLAMA"))
    }
    env.update(
        NEX_HOME=str(home),
        XDG_CONFIG_HOME=str(tmp_path / "xdg"),
        PYTHONUNBUFFERED="1",
    )
    yield NexEnv(tmp_path, work, home, env)


# -- the conformance tier's table, across xdist workers (tests/conformance/table.py) ----------


def pytest_sessionfinish(session: pytest.Session) -> None:
    from tests.conformance import table

    table.export(session.config)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    from tests.conformance import table

    table.receive(getattr(node, "workeroutput", {}))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.conformance import table

    table.report(terminalreporter)
