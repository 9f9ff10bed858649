"""What every benchmark shares: figures and targets, the stub as a process, timed processes.

The stub always runs as its own process: in the bench's process it would share the GIL with the
client being measured, and on a two-core machine that alone moves ratios by tens of percent.
Processes are reaped with `os.wait4`, which hands back each child's own peak RSS.
"""

from __future__ import annotations

import compileall
import contextlib
import fcntl
import json
import os
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
NEX = str(Path(sys.executable).parent / "nex")
MODEL = "stub-model"


def nex_argv(url: str, work: Path, *args: str) -> list[str]:
    """`nex` on the stub model at `url`, working in `work`, plus `args`."""
    return [NEX, "-m", f"local:{MODEL}", "-e", url, "-C", str(work), *args]


# Set for nex by nexpy.litellm_setup.prepare_environment; a litellm baseline gets the same, or it
# would fetch the cost map over the network and measure that instead.
LITELLM_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION"}


# -- figures ------------------------------------------------------------------------------------
@dataclass
class Target:
    """A limit on a figure: on its ratio to the baseline, or on its value."""

    on: str  # "ratio" | "value" | "delta" (value minus baseline)
    op: str  # "<=" | ">="
    limit: float
    text: str  # as the table shows it, e.g. "≤ 8×"

    def check(self, value: float, baseline: float | None, ratio: float | None) -> bool | None:
        subject = {
            "ratio": ratio,
            "value": value,
            "delta": None if baseline is None else value - baseline,
        }[self.on]
        if subject is None:
            return None
        return subject <= self.limit if self.op == "<=" else subject >= self.limit


def at_most(limit: float, on: str = "ratio", unit: str = "×") -> Target:
    sign = "+" if on == "delta" else ""
    return Target(on, "<=", limit, f"≤ {sign}{limit:g}{unit}")


def at_least(limit: float, on: str = "ratio", unit: str = "×") -> Target:
    return Target(on, ">=", limit, f"≥ {limit:g}{unit}")


@dataclass
class Figure:
    """One measured figure, the baseline measured beside it in the same run, and its target."""

    section: str
    name: str
    value: float
    unit: str
    baseline: str | None = None
    baseline_value: float | None = None
    ratio: float | None = None
    target: str | None = None
    status: str | None = None  # "PASS" | "MISS" | None (no target)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def figure(
    section: str,
    name: str,
    value: float,
    unit: str,
    baseline: tuple[str, float] | None = None,
    *,
    ratio: float | None = None,
    target: Target | None = None,
    note: str = "",
    **extra: Any,
) -> Figure:
    """A figure; the ratio is value / baseline unless given (e.g. a fraction of an ideal)."""
    base_name, base_value = baseline if baseline else (None, None)
    if ratio is None and base_value:
        ratio = value / base_value
    status = None
    if target is not None:
        ok = target.check(value, base_value, ratio)
        status = None if ok is None else ("PASS" if ok else "MISS")
    return Figure(
        section,
        name,
        value,
        unit,
        base_name,
        base_value,
        ratio,
        target.text if target else None,
        status,
        note,
        extra,
    )


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


# -- the environment of a measured process -----------------------------------------------------
def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without nex/provider settings, with a private home and config."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NEX_", "OPENAI", "OPENROUTER", "ANTHROPIC", "OLLAMA", "LITELLM"))
    }
    (home / "xdg").mkdir(parents=True, exist_ok=True)
    env.update(NEX_HOME=str(home / "nex"), XDG_CONFIG_HOME=str(home / "xdg"), **extra)
    return env


# -- the stub as a process ----------------------------------------------------------------------
class StubClient:
    """What the bench asks a running stub: the requests it received and when they arrived."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.base_url = url.removesuffix("/v1")
        self.http = httpx.Client(timeout=60)

    def requests(self) -> list[dict[str, Any]]:
        """The chat request bodies the stub received, in order."""
        result: list[dict[str, Any]] = self.http.get(self.base_url + "/_stub/requests").json()
        return result

    def arrivals(self) -> list[float]:
        """`time.time()` at which each chat request arrived."""
        result: list[float] = self.http.get(self.base_url + "/_stub/arrivals").json()
        return result

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> StubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Stub(StubClient):
    """`python -m stubs.oai` in its own process, serving `script`; a context manager."""

    def __init__(self, script: dict[str, Any], scratch: Path) -> None:
        fd, path = tempfile.mkstemp(prefix="script-", suffix=".json", dir=scratch)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(script, f)
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "stubs.oai", "--port", "0", "--script", path],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http"):
            self._stop()
            raise RuntimeError(f"the stub did not start (printed {line!r})")
        super().__init__(line)

    def _stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def close(self) -> None:
        super().close()
        self._stop()

    def __enter__(self) -> Stub:
        return self


# -- how busy the CPUs are ----------------------------------------------------------------------
class CpuMeter:
    """Samples the machine's CPU time (/proc/stat) in a thread, so how busy the CPUs were over
    any window of a run can be read afterwards. Where /proc/stat is absent it reads nothing."""

    def __init__(self, every: float = 0.1) -> None:
        self.samples: list[tuple[float, int, int]] = []  # (time.time(), busy, total) jiffies
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            try:
                fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
            except OSError:
                return
            ticks = [int(f) for f in fields]
            idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
            self.samples.append((time.time(), sum(ticks) - idle, sum(ticks)))
            self._stop.wait(every)

    def busy(self, start: float, end: float) -> float | None:
        """The fraction of all CPUs' time spent busy between `start` and `end` (time.time())."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2 or inside[-1][2] == inside[0][2]:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][2] - inside[0][2])

    def __enter__(self) -> CpuMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- timed processes ----------------------------------------------------------------------------
@dataclass
class ProcResult:
    code: int
    seconds: float  # launch to exit
    started: float  # time.time() just before the launch, comparable with the stub's arrivals
    max_rss_mb: float
    stdout: str
    stderr: str


def _rss_mb(rusage: Any) -> float:
    return float(rusage.ru_maxrss) / 1024.0  # Linux reports kilobytes


class Launched:
    """A started child whose output goes to temp files, reaped by `wait` (wait4: its own RSS)."""

    def __init__(
        self, argv: Sequence[str], env: dict[str, str], cwd: Path, stdin: str | None = None
    ) -> None:
        # Files, not pipes: nobody reads while the child runs, and a full pipe would stall it.
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 - closed by wait()
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - closed by wait()
        self.started = time.time()
        self._t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
        )
        if stdin is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(stdin.encode())
            self.proc.stdin.close()

    def wait(self, timeout: float) -> ProcResult:
        killer = threading.Timer(timeout, self._kill)
        killer.start()
        try:
            _, status, rusage = os.wait4(self.proc.pid, 0)
        finally:
            killer.cancel()
        seconds = time.perf_counter() - self._t0
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        out = self._read(self._out)
        err = self._read(self._err)
        return ProcResult(self.proc.returncode, seconds, self.started, _rss_mb(rusage), out, err)

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    @staticmethod
    def _read(f: Any) -> str:
        f.seek(0)
        data: bytes = f.read()
        f.close()
        return data.decode("utf-8", "replace")


def run(
    argv: Sequence[str],
    env: dict[str, str],
    cwd: Path,
    *,
    timeout: float = 120.0,
    stdin: str | None = None,
) -> ProcResult:
    """Run a process to its end; its wall time and its own peak RSS."""
    return Launched(argv, env, cwd, stdin).wait(timeout)


def timed(
    argv: Sequence[str], env: dict[str, str], cwd: Path, reps: int, *, warmup: int = 1
) -> list[float]:
    """Wall seconds of `reps` runs (after `warmup` unmeasured ones, to warm the page cache)."""
    samples = []
    for i in range(warmup + reps):
        result = run(argv, env, cwd, timeout=60)
        if result.code != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {result.code}: {result.stderr[-500:]}")
        if i >= warmup:
            samples.append(result.seconds)
    return samples


# -- a terminal ----------------------------------------------------------------------------------
CPR_REQUEST = b"\x1b[6n"
CPR_REPLY = b"\x1b[1;1R"  # what a terminal answers to "where is the cursor?"


@dataclass
class PtyResult:
    to_prompt: float  # launch until the prompt text was drawn
    cpu_to_prompt: float  # CPU seconds the main thread had used by then (load-independent)
    max_rss_mb: float  # peak RSS over the whole life of the process
    code: int
    transcript: bytes


def _thread_cpu(pid: int) -> float:
    """CPU seconds used by the task `pid` (for a process: its main thread), from schedstat."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return float("nan")


def _cpu_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # utime + stime


def under_pty(
    argv: Sequence[str],
    env: dict[str, str],
    cwd: Path,
    prompt: bytes,
    *,
    settle: bool = False,
    timeout: float = 30.0,
    size: tuple[int, int] = (40, 120),
) -> PtyResult:
    """Run an interactive program in a pseudo-terminal until it draws `prompt`, then quit it.

    With `settle`, wait until the process has gone idle (no CPU for half a second: background
    imports done) before quitting, so its peak RSS is that of an idle session. Ctrl-D quits.
    """
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env={**env, "TERM": "xterm-256color"},
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    transcript = b""
    to_prompt = cpu_to_prompt = float("nan")

    def pump(wait: float) -> bool:
        """Read what is there; answer cursor-position requests. False at EOF."""
        nonlocal transcript
        ready, _, _ = select.select([master], [], [], wait)
        if not ready:
            return True
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        if not data:
            return False
        transcript += data
        if CPR_REQUEST in data:
            os.write(master, CPR_REPLY)
        return True

    try:
        deadline = time.monotonic() + timeout
        while prompt not in transcript:
            if time.monotonic() > deadline or not pump(0.05):
                raise RuntimeError(
                    f"{' '.join(argv)}: no prompt within {timeout:.0f} s; it printed "
                    f"{transcript[-400:]!r}"
                )
        to_prompt = time.perf_counter() - t0
        cpu_to_prompt = _thread_cpu(proc.pid)
        if settle:
            last, quiet_since = _cpu_ticks(proc.pid), time.monotonic()
            while time.monotonic() < deadline and time.monotonic() - quiet_since < 0.5:
                pump(0.1)
                ticks = _cpu_ticks(proc.pid)
                if ticks is None:
                    break
                if last is None or ticks - last > 1:
                    last, quiet_since = ticks, time.monotonic()
        os.write(master, b"\x04")
        end = time.monotonic() + 10
        while time.monotonic() < end and pump(0.2):
            pass
    finally:
        status, rusage = _reap(proc.pid, 5.0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        os.close(master)
    return PtyResult(to_prompt, cpu_to_prompt, _rss_mb(rusage), proc.returncode, transcript)


def _reap(pid: int, grace: float) -> tuple[int, Any]:
    """Wait for a child (killing it after `grace` seconds); its status and its own rusage."""
    end = time.monotonic() + grace
    while time.monotonic() < end:
        done, status, rusage = os.wait4(pid, os.WNOHANG)
        if done:
            return status, rusage
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _, status, rusage = os.wait4(pid, 0)
    return status, rusage


def compile_bytecode() -> None:
    """Compile nex's own modules to bytecode, as installing nexpy from a wheel does.

    An installed nex runs from bytecode; this checkout is an editable install, and where
    PYTHONDONTWRITEBYTECODE is set (this project's machines, many CI images) every launch would
    compile its ~60 modules from source again: 100-200 ms of CPU on the way to the prompt that
    no installed nex spends, measured against baselines whose libraries run from bytecode.
    """
    for package in ("nexpy", "handlers"):
        compileall.compile_dir(ROOT / package, quiet=1)


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A private temp dir on the same disk as the user's state dir (fsync costs what it costs)."""
    with tempfile.TemporaryDirectory(prefix="nex-bench-") as d:
        yield Path(d)
