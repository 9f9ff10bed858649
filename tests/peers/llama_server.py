"""The real C++ `llama-server --jinja` (built by `make peers` from the llama-cpp-python sdist's
vendored llama.cpp) on a tiny generated GGUF that carries one real chat template.

llama.cpp's own Jinja engine renders the template, with its polyfills and per-family tool-call
handling, so this is the second rendering engine of the conformance tier (the first is the
stub's template mode, transformers' engine). `LlamaServerPool.get(template)` keeps one server
per template and stops the previous one when the next template is asked for: the tier runs one
template's tests together, and 70 idle servers would hold memory for nothing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SDIST = ROOT / ".peers" / "llama_cpp_python-0.3.36"
TEMPLATES = SDIST / "vendor" / "llama.cpp" / "models" / "templates"
# One CMake build of the sdist's vendored llama.cpp (make peers): the C++ llama-server and the
# shared libraries llama-cpp-python loads, side by side.
LIB_DIR = ROOT / ".peers" / "llama.cpp-build" / "bin"
SERVER_BIN = LIB_DIR / "llama-server"
STARTUP = 60.0  # seconds for a server to load the tiny model and answer /health


# A bash tool as nex describes its own: the command is a required field (command-r+'s template
# reads `required`; without it even a probe fails).
BASH_TOOL = {
    "type": "function",
    "function": {
        "name": "bash",
        "description": "Run a shell command",
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "string"}},
            "required": ["command"],
        },
    },
}


def real_templates() -> list[Path]:
    """Every chat template the sdist vendors, by name (empty when `make peers` has not run)."""
    return sorted(TEMPLATES.glob("*.jinja"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerFailed(RuntimeError):
    """The server exited or never became healthy; the message carries its log's tail."""


class ServerProcess:
    """A model server in a process group of its own, logging to a file, healthy once `health`
    (a path under `base_url`) answers 200 within `startup` seconds."""

    name = "server"
    health = "/health"

    def __init__(self, argv: list[str], port: int, log: Path, startup: float) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.url = self.base_url + "/v1"
        self.log = log
        env = {**os.environ, "LLAMA_CPP_LIB_PATH": str(LIB_DIR)}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        self._wait(startup)

    def _wait(self, startup: float) -> None:
        deadline = time.monotonic() + startup
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(self.base_url + self.health, timeout=2) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.HTTPError):
                time.sleep(0.1)
        self.stop()
        raise ServerFailed(f"{self.name} did not answer within {startup:g} s: {self.tail()}")

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class LlamaCppServer(ServerProcess):
    """`llama-server --jinja -m MODEL`, one slot, one thread."""

    name = "llama-server"

    def __init__(self, model: Path, log: Path, n_ctx: int = 16384) -> None:
        port = _free_port()
        argv = [
            str(SERVER_BIN), "-m", str(model), "--jinja", "-c", str(n_ctx), "-np", "1",
            "-t", "1", "--host", "127.0.0.1", "--port", str(port), "--no-webui",
        ]  # fmt: skip
        super().__init__(argv, port, log, STARTUP)

    def props(self) -> dict:
        """GET /props: what the server learned about the model and its template."""
        with urllib.request.urlopen(self.base_url + "/props", timeout=10) as response:
            return dict(json.loads(response.read()))


class LlamaCppPythonServer(ServerProcess):
    """llama-cpp-python's `python -m llama_cpp.server`, on the shared libraries of the same
    llama.cpp build (LLAMA_CPP_LIB_PATH)."""

    name = "llama_cpp.server"
    health = "/v1/models"

    def __init__(self, model: Path, n_ctx: int, log: Path) -> None:
        port = _free_port()
        self.n_ctx = n_ctx
        argv = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(model),
            "--n_ctx", str(n_ctx), "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        super().__init__(argv, port, log, 90.0)


class LlamaServerPool:
    """One live server at a time, for the template last asked for."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.current: tuple[Path, LlamaCppServer] | None = None

    def get(self, template: Path) -> LlamaCppServer:
        """The server whose GGUF carries `template` in tokenizer.chat_template (started once)."""
        from tests.peers.gguf_model import OK_CHAIN, write_model

        if self.current is not None and self.current[0] == template:
            return self.current[1]
        self.close()
        model = write_model(
            self.folder / f"{template.stem}.gguf",
            template=template.read_text(encoding="utf-8"),
            chains=OK_CHAIN,
        )
        server = LlamaCppServer(model, self.folder / f"{template.stem}.log")
        self.current = (template, server)
        return server

    def close(self) -> None:
        if self.current is not None:
            self.current[1].stop()
            self.current = None
