"""Section 1, startup: how long until nex is useful, each figure beside the floor under it.

- `nex --version` / `--help` vs `python -c pass` (the interpreter alone);
- the REPL prompt drawn under a pty vs a bare prompt-toolkit prompt (litellm may still be
  loading in the background: the prompt must not wait for it);
- `--autonomous` launch to first request vs a plain openai-SDK script doing one request.

Section 6, memory: peak RSS of an idle REPL and an autonomous run vs `import litellm`.
"""

from __future__ import annotations

import subprocess

from bench.harness import (
    LITELLM_ENV,
    MODEL,
    NEX,
    PYTHON,
    Figure,
    Stub,
    at_most,
    clean_env,
    figure,
    median,
    run,
    timed,
    under_pty,
)
from bench.settings import Context

BARE_PROMPT = """\
import contextlib, sys
from prompt_toolkit import PromptSession
with contextlib.suppress(EOFError):
    PromptSession().prompt(sys.argv[1])
"""

OPENAI_ONE_REQUEST = """\
import sys
import openai
client = openai.OpenAI(base_url=sys.argv[1], api_key="sk-bench", max_retries=0)
reply = client.chat.completions.create(
    model=sys.argv[2], messages=[{"role": "user", "content": "hi"}]
)
print(reply.choices[0].message.content)
"""


# litellm is every route's provider, so a script that imports it and sends one request is the
# floor of nex's launch; the same route nex takes for `local:` (hosted_vllm/).
LITELLM_ONE_REQUEST = """\
import sys
import litellm
reply = litellm.completion(
    model="hosted_vllm/" + sys.argv[2], api_base=sys.argv[1], api_key="sk-bench",
    messages=[{"role": "user", "content": "hi"}],
)
print(reply.choices[0].message.content)
"""


def _prompt_marker() -> bytes:
    """The REPL's own prompt string, so the bench follows it if it changes. Asked of a child:
    importing nexpy.repl here would grow this process, and its children inherit its peak RSS."""
    out = subprocess.run(
        [PYTHON, "-c", "from nexpy.repl import PROMPT; print(PROMPT.strip())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().encode()


def startup(ctx: Context) -> list[Figure]:
    env = clean_env(ctx.scratch)
    cwd = ctx.scratch
    reps = ctx.settings.startup_reps
    figures: list[Figure] = []

    # Interleaved, so drift on a shared machine hits all three alike; one unmeasured round first
    # warms the page cache.
    argvs = {"pass": [PYTHON, "-c", "pass"], "version": [NEX, "--version"], "help": [NEX, "--help"]}
    samples: dict[str, list[float]] = {name: [] for name in argvs}
    for rep in range(1 + reps):
        for name, argv in argvs.items():
            seconds = timed(argv, env, cwd, 1, warmup=0)
            if rep:
                samples[name] += seconds
    floor = ("python -c pass", median(samples["pass"]) * 1e3)
    figures.append(
        figure(
            "startup",
            "nex --version",
            median(samples["version"]) * 1e3,
            "ms",
            floor,
            target=at_most(8),
            samples=samples,
        )
    )
    figures.append(figure("startup", "nex --help", median(samples["help"]) * 1e3, "ms", floor))

    marker = _prompt_marker()
    prompt_text = marker.decode() + " "
    with Stub({"default": {"echo": True}}, ctx.scratch) as stub:
        nex_prompt: list[float] = []
        nex_cpu: list[float] = []
        bare_prompt: list[float] = []
        for i in range(ctx.settings.pty_reps):
            bare = under_pty([PYTHON, "-c", BARE_PROMPT, prompt_text], env, cwd, marker)
            bare_prompt.append(bare.to_prompt)
            # The first run waits for the background import to finish: that is the idle REPL
            # whose memory section 6 reports.
            result = under_pty(
                [NEX, "-m", f"local:{MODEL}", "-e", stub.url],
                env,
                cwd,
                marker,
                settle=i == 0,
            )
            nex_prompt.append(result.to_prompt)
            nex_cpu.append(result.cpu_to_prompt)
            if i == 0:
                ctx.shared["repl_idle_rss_mb"] = result.max_rss_mb
        figures.append(
            figure(
                "startup",
                "REPL prompt drawn (pty)",
                median(nex_prompt) * 1e3,
                "ms",
                ("bare prompt-toolkit prompt", median(bare_prompt) * 1e3),
                target=at_most(400, on="value", unit=" ms"),
                note=f"main thread CPU {median(nex_cpu) * 1e3:.0f} ms",
                samples={"nex": nex_prompt, "bare": bare_prompt, "nex_cpu": nex_cpu},
            )
        )

        nex_first: list[float] = []
        lite_first: list[float] = []
        sdk_first: list[float] = []
        nex_total: list[float] = []
        sdk_total: list[float] = []
        lite_env = {**env, **LITELLM_ENV}
        for _ in range(ctx.settings.launch_reps):
            sdk = run([PYTHON, "-c", OPENAI_ONE_REQUEST, stub.url, MODEL], env, cwd)
            _check(sdk.code, "openai SDK script", sdk.stderr)
            sdk_first.append(stub.arrivals()[-1] - sdk.started)
            sdk_total.append(sdk.seconds)
            ctx.shared["openai_script_rss_mb"] = sdk.max_rss_mb
            lite = run([PYTHON, "-c", LITELLM_ONE_REQUEST, stub.url, MODEL], lite_env, cwd)
            _check(lite.code, "litellm script", lite.stderr)
            lite_first.append(stub.arrivals()[-1] - lite.started)
            nex = run([NEX, "-m", f"local:{MODEL}", "-e", stub.url, "--autonomous", "hi"], env, cwd)
            _check(nex.code, "nex --autonomous", nex.stderr)
            nex_first.append(stub.arrivals()[-1] - nex.started)
            nex_total.append(nex.seconds)
        figures.append(
            figure(
                "startup",
                "--autonomous launch → first request",
                median(nex_first) * 1e3,
                "ms",
                ("litellm script, one request", median(lite_first) * 1e3),
                target=at_most(1.15),
                note=f"nex adds {(median(nex_first) - median(lite_first)) * 1e3:,.0f} ms",
                samples={"nex": nex_first, "litellm": lite_first},
            )
        )
        figures.append(
            figure(
                "startup",
                "--autonomous launch → first request",
                median(nex_first) * 1e3,
                "ms",
                ("openai SDK script", median(sdk_first) * 1e3),
                samples={"nex": nex_first, "openai": sdk_first},
            )
        )
        figures.append(
            figure(
                "startup",
                "--autonomous one request, launch → exit",
                median(nex_total) * 1e3,
                "ms",
                ("openai SDK script", median(sdk_total) * 1e3),
            )
        )
    return figures


def memory(ctx: Context) -> list[Figure]:
    env = clean_env(ctx.scratch)
    cwd = ctx.scratch
    base = run([PYTHON, "-c", "import litellm"], {**env, **LITELLM_ENV}, cwd)
    _check(base.code, "python -c 'import litellm'", base.stderr)
    floor = ("python -c 'import litellm'", base.max_rss_mb)
    figures: list[Figure] = []

    # The per-turn section's subprocess ran a whole tool session; measure one only without it.
    rss, turns = ctx.shared.get("autonomous_rss_mb", (None, 0))
    if rss is None:
        turns = ctx.settings.memory_turns
        # A different line each time: the same call repeated is a stuck loop nex ends (exit 3).
        replies = [
            {"tool_calls": [{"name": "read_file", "arguments": {"path": "notes.txt", "offset": i}}]}
            for i in range(1, turns)
        ] + [{"content": "done"}]
        (ctx.scratch / "notes.txt").write_text("alpha\nbeta\ngamma\n" * 20)
        with Stub({"replies": replies}, ctx.scratch) as stub:
            nex = run(
                [NEX, "-m", f"local:{MODEL}", "-e", stub.url, "--autonomous", "read notes.txt"],
                env,
                cwd,
            )
            _check(nex.code, "nex --autonomous", nex.stderr)
        rss = nex.max_rss_mb
    figures.append(
        figure(
            "memory",
            f"peak RSS, --autonomous run ({turns} turns)",
            rss,
            "MB",
            floor,
            target=at_most(60, on="delta", unit=" MB"),
        )
    )
    idle = ctx.shared.get("repl_idle_rss_mb")
    if idle is not None:
        figures.append(
            figure(
                "memory",
                "peak RSS, idle REPL (litellm loaded)",
                idle,
                "MB",
                floor,
            )
        )
    sdk = ctx.shared.get("openai_script_rss_mb")
    if sdk is not None:
        figures.append(
            figure(
                "memory",
                "peak RSS, openai SDK one-request script",
                sdk,
                "MB",
                floor,
                note="for scale: the lightest peer",
            )
        )
    return figures


def _check(code: int, what: str, stderr: str) -> None:
    if code != 0:
        raise RuntimeError(f"{what} exited {code}: {stderr.strip()[-600:]}")
