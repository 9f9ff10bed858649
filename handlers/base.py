"""What the claude and codex handlers share: one CLI subprocess per turn, read as JSON lines.

A turn spawns the CLI with stdin on /dev/null, in its own process group, in the work dir; each
stdout line is one JSON event, mapped onto nex's events (DESIGN §5) by the handler's `handle`.
Never silent: before each spawn one stderr line names the command and the log its stderr is
appended to (`<session>/handler-stderr.log`, mode 0600, secrets redacted); a non-zero exit, an
error the CLI reports or a crash ends in one `HandlerError` line with the exit status, the last
stderr lines and that log's path.

The CLI keeps the conversation itself: its session or thread id is stored in
`<session>/handler.json` as soon as the CLI reports it, and the next turn (in this process or a
later `nex --chat`) resumes it. An id the CLI no longer knows is dropped with a warning and the
turn retried fresh, once. Cancelling a turn (Ctrl-C, --max-time) kills the CLI's process group;
the next turn resumes what the CLI saved.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from nexpy.credentials import Secrets, redact, scrubbed_env, secret_values
from nexpy.errors import HandlerError, LimitReached, UsageError, one_line
from nexpy.events import Emitter, now_iso
from nexpy.handler import HandlerOptions, TextCallback, Totals
from nexpy.limits import summary_prompt, turn_limit
from nexpy.plan import SpawnPlan
from nexpy.session import Session

STATE_FILE = "handler.json"
STDERR_LOG = "handler-stderr.log"
LINE_LIMIT = 64 * 1024 * 1024  # one stdout event may carry a whole file a tool read
TAIL_LINES = 3  # stderr lines quoted in the error line
EXIT_GRACE = 3.0  # seconds a CLI gets to exit after SIGTERM or after closing its stdout
DRAIN_GRACE = 0.5  # seconds to read what a CLI wrote before it exited
POLL = 0.02

# What the CLIs print when asked to resume a conversation they do not have (claude 2.1:
# "No conversation found with session ID: …"; codex 0.169: "no rollout found for thread id …").
STALE_ID = re.compile(
    r"no (conversation|rollout|session|thread) found|(conversation|session|thread) not found",
    re.IGNORECASE,
)

Check = tuple[str, bool, str]


def find_binary(name: str, package: str) -> str:
    """The CLI's path on PATH, or UsageError (exit 2) saying how to install it."""
    path = shutil.which(name)
    if path is None:
        raise UsageError(
            f"the {name} CLI was not found on PATH",
            hint=f"install it with: npm install -g {package}",
        )
    return path


def _exit_status(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


@dataclass
class Turn:
    """What one CLI run reported, collected while its events are mapped."""

    emitter: Emitter
    on_text: TextCallback | None
    conversation_id: str | None = None
    answer: str | None = None  # the final text, once the CLI says the turn is over
    finished: bool = False  # the CLI reported the end of its turn (a result, turn.completed)
    error: str | None = None  # the failure the CLI reported, if any
    limit: str | None = None  # a limit the CLI itself stopped at ("max_turns")
    requests: int = 0  # model requests the turn made, where the CLI says
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None  # what the CLI says the turn cost, where it says
    context_used: int | None = None
    window: int | None = None
    held: str | None = None  # an error event the CLI may yet report as its failure
    stderr_tail: list[str] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)  # every assistant text, in order
    _pending: str | None = None
    _tools: dict[str, str] = field(default_factory=dict)

    # A text is the answer only if nothing follows it; until then it is held back, so the
    # final answer is emitted once (final=True) and earlier texts as progress (final=False).
    def text(self, text: str) -> None:
        if not text.strip():
            return
        self.flush()
        self._pending = text
        if self.on_text is not None:
            self.on_text(("\n\n" if self.shown else "") + text)
        self.shown.append(text)

    def flush(self) -> None:
        if self._pending is not None:
            self.emitter.emit("message", role="assistant", content=self._pending, final=False)
            self._pending = None

    def last_text(self) -> str:
        """The held-back text: the answer when the turn ends now."""
        return self._pending or ""

    def tool_call(self, call_id: str, name: str, arguments: Any) -> None:
        self.flush()
        self._tools[call_id] = name
        self.emitter.emit("tool.call", id=call_id, name=name, arguments=arguments)

    def tool_result(self, call_id: str, ok: bool, output: str) -> None:
        name = self._tools.get(call_id, "")
        self.emitter.emit(
            "tool.result", id=call_id, name=name, ok=ok, output=output, truncated=False
        )

    def has_call(self, call_id: str) -> bool:
        return call_id in self._tools

    def warn(self, message: str) -> None:
        self.emitter.emit("warning", message=message)

    def finish(self, answer: str | None = None) -> None:
        """The CLI ended its turn; `answer` overrides the held-back text."""
        self.answer = answer if answer is not None else self.last_text()
        self._pending = None
        self.finished = True


class CliHandler(abc.ABC):
    """The Handler protocol over a CLI that runs one agent turn per process."""

    name: ClassVar[str]
    package: ClassVar[str]  # the npm package, for the install hint
    env_prefixes: ClassVar[tuple[str, ...]]  # the CLI's own settings and credentials

    def __init__(
        self, plan: SpawnPlan, session: Session, emitter: Emitter, opts: HandlerOptions
    ) -> None:
        self.plan = plan
        self.session = session
        self.emitter = emitter
        self.opts = opts
        self.binary = find_binary(plan.argv[0], self.package)
        self.totals = Totals()
        self.context_used = 0
        self.answer_cut = False  # the CLIs continue a cut answer themselves
        self._window = plan.context_window
        self.started = time.monotonic()
        self.state_path = session.path / STATE_FILE
        self.log_path = session.path / STDERR_LOG
        # Confirm is set when a person could be asked (the REPL without --yes). The CLIs cannot
        # hand their permission prompts to nex, so those runs keep the CLI's own defaults.
        self.ask = opts.confirm is not None and not opts.yes
        if self.conversation_id() is None and any(
            m.get("role") in ("user", "assistant") for m in session.messages()
        ):
            emitter.emit(
                "warning",
                message=f"{self.name} has no conversation for the earlier messages of session "
                f"{session.id}; it starts a fresh one",
            )

    # -- what a subclass provides ---------------------------------------------------------
    @abc.abstractmethod
    def command(self, prompt: str, resume: str | None, *, summary: bool) -> list[str]:
        """The argv of one turn (binary included); `summary`: the wrap-up, without tools."""

    @abc.abstractmethod
    def handle(self, event: dict[str, Any], turn: Turn) -> None:
        """Map one stdout event onto nex events and `turn`; unknown types are ignored."""

    def extra_env(self) -> dict[str, str]:
        """Variables the CLI needs beyond its prefixes (read at spawn time, never stored)."""
        return {}

    # -- the protocol ---------------------------------------------------------------------
    @property
    def window(self) -> int | None:
        return self._window

    async def send(self, text: str, on_text: TextCallback | None = None) -> str:
        """One user message in, the CLI's final answer out."""
        self.opts.limits.check_turns(self.totals.turns)
        self._record("user", text)
        answer = await self._turn(text, on_text, summary=False)
        self._record("assistant", answer)
        return answer

    async def wrap_up(self, reason: str, on_text: TextCallback | None = None) -> str:
        """After a limit: one more turn, without tools, asking for a summary."""
        prompt = summary_prompt(reason)
        self._record("user", prompt)
        answer = await self._turn(prompt, on_text, summary=True)
        self._record("assistant", answer)
        return answer

    async def clear(self) -> None:
        """Forget the CLI's conversation; the journal keeps the old one behind a compaction."""
        self._store_id(None)
        self.session.append("compaction", messages=[], reason="clear")

    async def aclose(self) -> None:
        """Nothing to release: every turn's process is gone when its `send` returns."""
        return

    # -- the CLI's conversation id, kept in the session folder ----------------------------
    def conversation_id(self) -> str | None:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        value = state.get(self.name) if isinstance(state, dict) else None
        return value if isinstance(value, str) and value else None

    def _store_id(self, value: str | None) -> None:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = {}
        if not isinstance(state, dict):
            state = {}
        if value is None:
            state.pop(self.name, None)
        else:
            state[self.name] = value
        # Write and rename, so a kill at any moment leaves the old id or the new one.
        tmp = self.state_path.with_name(STATE_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)

    # -- one turn ---------------------------------------------------------------------------
    def _record(self, role: str, text: str) -> None:
        """The one place a message enters the journal and the event stream. An empty answer
        is not kept: a strict server rejects an empty assistant message on a later resume."""
        if role == "assistant" and not text.strip():
            return
        self.session.append("message", message={"role": role, "content": text})
        fields: dict[str, Any] = {"role": role, "content": text}
        if role == "assistant":
            fields["final"] = True
        self.emitter.emit("message", **fields)

    async def _turn(self, prompt: str, on_text: TextCallback | None, *, summary: bool) -> str:
        # The wrap-up runs after the time limit hit; the runner bounds it instead.
        limits = replace(self.opts.limits, max_time=None) if summary else self.opts.limits
        resume = self.conversation_id()
        turn = Turn(self.emitter, on_text)
        try:
            async with limits.deadline(self.started):
                while True:
                    turn = Turn(self.emitter, on_text)
                    self.emitter.emit("turn.started", turn=self.totals.turns + 1)
                    code = await self._spawn(self.command(prompt, resume, summary=summary), turn)
                    if resume is not None and code != 0 and self._stale(turn):
                        turn.warn(
                            f"{self.name} no longer knows conversation {resume}; "
                            "starting a fresh one (the CLI forgot the earlier messages)"
                        )
                        self._store_id(None)
                        resume = None
                        continue
                    break
        except LimitReached:
            self._keep_partial(turn, "[interrupted: time limit]")
            raise
        except asyncio.CancelledError:
            self._keep_partial(turn, "[interrupted by the user]")
            raise
        self._account(turn)
        return self._outcome(turn, code)

    def _keep_partial(self, turn: Turn, note: str) -> None:
        if turn.shown:
            self._record("assistant", "\n\n".join(turn.shown) + "\n" + note)

    def _stale(self, turn: Turn) -> bool:
        return any(STALE_ID.search(text) for text in [turn.error or "", *turn.stderr_tail])

    def _account(self, turn: Turn) -> None:
        self.totals.turns += turn.requests
        self.totals.input_tokens += turn.prompt_tokens
        self.totals.output_tokens += turn.completion_tokens
        if turn.prompt_tokens or turn.completion_tokens:
            usage: dict[str, Any] = {
                "prompt_tokens": turn.prompt_tokens,
                "completion_tokens": turn.completion_tokens,
            }
            if turn.cost_usd is not None:
                usage["cost_usd"] = turn.cost_usd
            self.emitter.emit("usage", **usage)
        if turn.window and not self.plan.context_window:  # --context-window wins
            self._window = turn.window
        if turn.context_used is not None:
            self.context_used = turn.context_used
            self.emitter.emit("context", used=self.context_used, window=self._window)

    def _outcome(self, turn: Turn, code: int) -> str:
        """The answer, or the one error line this turn ends in."""
        if turn.limit == "max_turns":
            raise turn_limit(self.opts.max_turns, who=self.name)
        if code == 0 and turn.finished and turn.error is None:
            return turn.answer or ""
        if turn.error is None and turn.held is not None:
            turn.error = turn.held  # the CLI's last word before it stopped
        tail = " | ".join(turn.stderr_tail)
        if turn.error is not None or code == 0:
            what = turn.error or "it ended without finishing its turn"
            detail = f"; last stderr: {one_line(tail, 400)}" if tail else ""
            message = f"{self.name} {_exit_status(code)}: {one_line(what, 240)}{detail}"
        else:
            stderr = f": {one_line(tail, 400)}" if tail else ", with nothing on stderr"
            message = f"{self.name} {_exit_status(code)}{stderr}"
        raise HandlerError(message, hint=f"its stderr is in {self.log_path}")

    # -- the subprocess -----------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        return cli_env(self.plan, self.env_prefixes, self.extra_env())

    def _announce(self, argv: list[str]) -> str:
        # The message itself is left out: it may be long, and the journal already has it.
        shown = [*argv[:-1], f"<message: {len(argv[-1])} chars>"]
        line = redact(shlex.join(shown))
        print(f"nex: {self.name}: {line} (stderr → {self.log_path})", file=sys.stderr, flush=True)
        return line

    async def _spawn(self, argv: list[str], turn: Turn) -> int:
        """Run one turn's process to its end; return its exit status (negative: a signal)."""
        shown = self._announce(argv)
        secrets = secret_values()
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        started = time.monotonic()
        status = "interrupted"
        try:
            _write(log_fd, f"=== {now_iso()} {shown}\n")
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=self.opts.workdir,
                    env=self._env(),
                    start_new_session=True,
                    limit=LINE_LIMIT,
                )
            except FileNotFoundError:
                raise UsageError(
                    f"the {self.name} CLI was not found at {argv[0]}",
                    hint=f"install it with: npm install -g {self.package}",
                ) from None
            except OSError as e:
                raise HandlerError(f"cannot start {self.name}: {e.strerror or e}") from e
            _write(log_fd, f"=== pid {proc.pid}\n")
            tail: deque[str] = deque(maxlen=TAIL_LINES)
            assert proc.stdout is not None and proc.stderr is not None
            reader = asyncio.create_task(self._read_events(proc.stdout, turn, log_fd, secrets))
            pump = asyncio.create_task(_pump_stderr(proc.stderr, log_fd, tail, secrets))
            try:
                code = await _finish(proc, reader)
                await asyncio.wait({pump}, timeout=DRAIN_GRACE)
                status = _exit_status(code)
                return code
            except BaseException:
                await _stop(proc)
                raise
            finally:
                for task in (reader, pump):
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
                turn.stderr_tail = list(tail)
        finally:
            _write(log_fd, f"=== {self.name} {status} after {time.monotonic() - started:.1f} s\n")
            os.close(log_fd)

    async def _read_events(
        self, stream: asyncio.StreamReader, turn: Turn, log_fd: int, secrets: Secrets
    ) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError as e:  # asyncio's way of saying a line exceeded the limit
                raise HandlerError(
                    f"{self.name} wrote an event longer than {LINE_LIMIT} bytes",
                    hint=f"its stderr is in {self.log_path}",
                ) from e
            if not line:
                return
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if not isinstance(event, dict):
                # Not an event: keep it where a person debugging will look, never fail on it.
                text = line.decode("utf-8", "replace").rstrip("\n")
                _write(log_fd, f"[stdout] {redact(text, secrets)}\n")
                continue
            before = turn.conversation_id
            try:
                self.handle(event, turn)
            except Exception as e:  # a mapping bug still ends in one line (-v: the traceback)
                raise HandlerError(
                    f"nex could not read a {self.name} {event.get('type')!r} event: {e!r}",
                    hint="run with -v for the traceback",
                ) from e
            if turn.conversation_id and turn.conversation_id != before:
                # Stored at once, so a turn killed from here on still resumes.
                self._store_id(turn.conversation_id)


def cli_env(plan: SpawnPlan, prefixes: tuple[str, ...], extra: Mapping[str, str]) -> dict[str, str]:
    """A CLI's environment: no credential of another provider (its tools inherit it), but
    its own settings and credentials, as if it had been run directly; then the plan's."""
    env = scrubbed_env()
    env.update({k: v for k, v in os.environ.items() if k.startswith(prefixes)})
    env.update(extra)
    env.update(plan.env)
    return env


def _write(fd: int, text: str) -> None:
    data = text.encode("utf-8", "replace")
    while data:
        data = data[os.write(fd, data) :]


async def _pump_stderr(
    stream: asyncio.StreamReader, log_fd: int, tail: deque[str], secrets: Secrets
) -> None:
    while line := await stream.readline():
        text = redact(line.decode("utf-8", "replace"), secrets)
        _write(log_fd, text if text.endswith("\n") else text + "\n")
        if text.strip():
            tail.append(text.strip())


async def _exited(proc: asyncio.subprocess.Process) -> int:
    # Process.wait() also waits for the pipes to close, which a grandchild left running in the
    # background can hold open forever; the return code is set at exit.
    while proc.returncode is None:
        await asyncio.sleep(POLL)
    return proc.returncode


async def _finish(proc: asyncio.subprocess.Process, reader: asyncio.Task[None]) -> int:
    """Wait for the CLI to exit and its stdout to be read to the end; whatever is left of the
    process group afterwards (a stuck CLI, an orphan holding a pipe) is killed."""
    exited = asyncio.create_task(_exited(proc))
    try:
        await asyncio.wait({reader, exited}, return_when=asyncio.FIRST_COMPLETED)
        if reader.done():
            reader.result()  # a mapping bug surfaces here instead of being lost
            await asyncio.wait({exited}, timeout=EXIT_GRACE)
        else:
            await asyncio.wait({reader}, timeout=DRAIN_GRACE)
        _signal_group(proc, signal.SIGKILL)
        await asyncio.wait({reader}, timeout=EXIT_GRACE)
        if reader.done():
            reader.result()
        return await exited
    finally:
        exited.cancel()


def _signal_group(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """Stop the CLI and everything it started: SIGTERM (a chance to save its session), then
    SIGKILL. Shielded so a second Ctrl-C cannot leave the group running."""

    async def stop() -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            _signal_group(proc, sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_exited(proc), EXIT_GRACE)

    with contextlib.suppress(Exception):
        await asyncio.shield(stop())


# -- nex doctor ------------------------------------------------------------------------------
@dataclass
class Probe:
    """One run of the CLI that proves it accepts the flags nex passes, without a model request:
    accepted when its output matches `accepted` (or, without a pattern, when it exits 0)."""

    label: str
    args: list[str]
    accepted: str | None = None


def doctor_checks(
    plan: SpawnPlan,
    package: str,
    env: Mapping[str, str],
    version_args: list[str],
    probes: list[Probe],
    endpoint: str | None,
) -> list[Check]:
    """(what, ok, detail) rows for `nex doctor`: the binary, its version, each probe, and the
    endpoint the CLI will call, if the run gives it one."""
    name = plan.argv[0]
    try:
        binary = find_binary(name, package)
    except UsageError as e:
        return [("binary", False, e.line())]
    checks: list[Check] = [("binary", True, binary)]
    ok, out, err = _run_quiet([binary, *version_args], env)
    # The version is the first line on stdout; codex adds warnings on stderr.
    version = out.splitlines()[0] if ok and out else one_line(out + err, 240) or "no output"
    checks.append(("version", ok, version))
    for probe in probes:
        exited_0, out, err = _run_quiet([binary, *probe.args], env)
        out += err
        ok = bool(re.search(probe.accepted, out)) if probe.accepted else exited_0
        shown = redact(shlex.join([name, *probe.args]))
        detail = shown if ok else f"{shown}: {one_line(out, 240) or 'no output'}"
        checks.append((probe.label, ok, detail))
    if endpoint:
        checks.append(_check_endpoint(endpoint))
    return checks


def _run_quiet(argv: list[str], env: Mapping[str, str]) -> tuple[bool, str, str]:
    """(exited 0, stdout, stderr) of a short CLI run."""
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            env=dict(env),
            start_new_session=True,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, "", str(e)
    return proc.returncode == 0, proc.stdout.strip(), proc.stderr.strip()


def _check_endpoint(url: str) -> Check:
    """Any HTTP answer means a server listens there; the CLI's own request decides the rest."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=5):
            pass
    except urllib.error.HTTPError as e:
        return ("endpoint", True, f"{url} answers (HTTP {e.code})")
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return ("endpoint", False, f"{url}: {reason}")
    return ("endpoint", True, f"{url} answers")
