"""`nex`: parse, plan, dispatch, exit code. No behaviour lives here that a test cannot reach
through `nexpy.plan`, `nexpy.runtime` or `nexpy.repl` without argv.

Imports are deliberately lazy: `--help`, `--version` and `sessions` must never load litellm.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from nexpy import __version__
from nexpy.args import UsageParser, positive
from nexpy.errors import EXIT_INTERRUPTED, NexError, UsageError
from nexpy.sandbox import MODES

DESCRIPTION = """\
A local-model-first agent runtime. Pick a model with -m PROVIDER:MODEL and, for a server you
run, its endpoint with -e. Without a message on a terminal, nex opens a REPL."""

EPILOG = """\
providers: local: llamacpp: vllm: ollama: openrouter: openai: oai-compat: stub: claude: codex:
examples:
  nex -m local:qwen3-coder -e http://127.0.0.1:8080
  nex -m ollama:qwen3:8b --autonomous "fix the failing test"
  nex -m stub:demo --autonomous "show me what you can do"
  nex sessions | nex doctor -m MODEL [-e URL] | nex undo [--session S] [N]
exit codes: 0 finished, 1 runtime failure, 2 usage or config error, 3 limit hit, 130 interrupted"""


def build_parser() -> argparse.ArgumentParser:
    p = UsageParser(
        prog="nex",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-m", "--model", help="PROVIDER:MODEL, e.g. local:qwen3-coder, claude:opus")
    p.add_argument("-e", "--endpoint", help="the model server: a URL or a configured endpoint name")
    # Deprecated: kept for old scripts, hidden from --help; maps to a model prefix.
    p.add_argument("-x", "--executor", help=argparse.SUPPRESS)
    p.add_argument("--autonomous", action="store_true", help="run MESSAGE (or stdin) to completion")
    p.add_argument("--json", action="store_true", help="with --autonomous: one JSON event per line")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--chat", metavar="NAME", help="create or resume the session NAME")
    group.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="PATTERN",
        help="resume the latest session (whose id contains PATTERN)",
    )
    p.add_argument(
        "--max-turns", type=positive(int), metavar="N", help="stop after N model requests"
    )
    p.add_argument("--max-time", type=positive(float), metavar="SECONDS", help="stop after SECONDS")
    p.add_argument(
        "--context-window",
        type=positive(int),
        metavar="N",
        help="the model's context window in tokens (else discovered)",
    )
    p.add_argument("--read-only", action="store_true", help="offer only read tools")
    p.add_argument(
        "--sandbox",
        choices=MODES,
        help="confine bash (default: workspace-write with --autonomous, off in the REPL)",
    )
    p.add_argument(
        "--network", action="store_true", default=None, help="open the network in the sandbox"
    )
    p.add_argument(
        "--yes",
        action="store_true",
        help="do not ask before mutating tools (approval mode yolo, over the config's)",
    )
    p.add_argument(
        "--no-project-doc",
        action="store_true",
        help="do not read AGENTS.md / CLAUDE.md into the system prompt",
    )
    p.add_argument("--system-prompt", metavar="TEXT|@FILE", help="replace the system prompt")
    p.add_argument("-C", dest="workdir", metavar="DIR", help="the work dir (default: cwd)")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks and debug detail")
    p.add_argument("--version", action="version", version=f"nex {__version__}")
    p.add_argument("message", nargs="?", metavar="MESSAGE", help="the task or first message")
    return p


def _system_prompt(value: str | None) -> str | None:
    if value is None or not value.startswith("@"):
        return value
    path = Path(value[1:]).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read system prompt file {path}: {e.strerror}") from None


def _stdin_message() -> str | None:
    if sys.stdin.isatty():
        return None
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(
            f"the message on stdin is not UTF-8 text (byte 0x{data[e.start]:02x} at {e.start})",
            hint="convert it first, e.g. iconv -f LATIN1 -t UTF-8",
        ) from None


def _check_text(value: str | None, what: str) -> None:
    """Command-line text reaches Python with undecodable bytes as lone surrogates, which no
    journal, request or terminal can carry: refuse it here, in one line."""
    if value is None:
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UsageError(
            f"{what} is not UTF-8 text (an undecodable byte at {e.start})",
            hint="pass UTF-8 text; check the terminal's or the script's encoding",
        ) from None


def _workdir(value: str | None) -> Path:
    path = Path(value).expanduser() if value else Path.cwd()
    if not path.is_dir():
        raise UsageError(f"work dir {path} does not exist or is not a directory", hint="check -C")
    return path.resolve()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `nex` command."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in args_list or "--verbose" in args_list
    code = _main(args_list, verbose)
    if code == EXIT_INTERRUPTED and argv is None:
        # Interpreter teardown (seconds, with litellm loaded) restores the default signal
        # handlers first: another Ctrl-C or SIGTERM from a person or a supervisor still
        # signalling would kill the process by the signal instead of exit 130. Everything
        # nex keeps is fsynced as written; flush what is buffered and leave now.
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    return code


def _main(args_list: list[str], verbose: bool) -> int:
    try:
        return _dispatch(args_list)
    except NexError as e:
        from nexpy.runtime import report

        report(e, verbose=verbose)
        if "--json" in args_list:
            _json_failure(e)
        return e.exit_code
    except KeyboardInterrupt as e:
        from nexpy.outcome import outcome_of

        print("nex: interrupted", file=sys.stderr)
        return outcome_of(e).code
    except Exception as e:  # a bug still ends in one line and exit 1 (-v: the traceback)
        from nexpy.runtime import internal_error, report

        error = internal_error(e)
        report(error, verbose=verbose)
        if "--json" in args_list:
            _json_failure(error)
        return error.exit_code


def _json_failure(error: NexError) -> None:
    """A run that failed before it started still ends its event stream with session.ended."""
    from nexpy.events import Emitter, JsonSink
    from nexpy.outcome import outcome_of

    outcome = outcome_of(error)
    emitter = Emitter(sinks=[JsonSink()])
    emitter.emit("error", kind=error.kind, message=error.line(), retryable=error.retryable)
    emitter.emit(
        "session.ended",
        status=outcome.status,
        exit_reason=outcome.exit_reason,
        turns=0,
        input_tokens=0,
        output_tokens=0,
        duration_s=0.0,
    )


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] == "sessions":
        return _sessions(argv[1:])
    if argv and argv[0] == "undo":
        from nexpy.undo import main as undo_main

        return undo_main(argv[1:])
    if argv and argv[0] == "doctor":
        from nexpy.doctor import main as doctor_main

        return doctor_main(argv[1:])

    args = build_parser().parse_args(argv)
    from nexpy.config import load_config
    from nexpy.plan import SpawnRequest, plan_spawn

    for what, value in (
        ("MESSAGE", args.message),
        ("-m", args.model),
        ("-e", args.endpoint),
        ("--resume", args.resume),
        ("--system-prompt", args.system_prompt),
    ):
        _check_text(value, what)
    workdir = _workdir(args.workdir)
    config = load_config(workdir)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    autonomous = args.autonomous or not interactive
    request = SpawnRequest(args.model, args.endpoint, args.executor, args.context_window)
    request.sandbox, request.network, request.autonomous = args.sandbox, args.network, autonomous
    plan = plan_spawn(request, config)
    for warning in plan.warnings:
        print(f"nex: warning: {warning}", file=sys.stderr)
    print(plan.line(), file=sys.stderr, flush=True)

    if plan.spec.route.uses_litellm:
        from nexpy.litellm_setup import start_background_import

        start_background_import()  # the prompt never waits for litellm

    from nexpy.approval import Mode
    from nexpy.handler import HandlerOptions
    from nexpy.runtime import RunOptions

    # --yes is the yolo mode, whatever the config says; only the REPL ever asks.
    approval: Mode = "yolo" if args.yes else config.approval or "ask"
    opts = RunOptions(
        HandlerOptions(
            workdir=workdir,
            max_turns=args.max_turns,
            max_time=args.max_time,
            read_only=args.read_only,
            yes=approval == "yolo",
            system_prompt=_system_prompt(args.system_prompt),
            project_doc=not args.no_project_doc,
            project_doc_max_tokens=config.project_doc_max_tokens,
        ),
        chat=args.chat,
        resume=args.resume,
        json=args.json,
        verbose=args.verbose,
        notify_after=config.notify,
        approval=approval,
    )
    if autonomous:
        message = args.message if args.message is not None else _stdin_message()
        if not message or not message.strip():
            raise UsageError(
                "no task given", hint='pass MESSAGE, e.g. nex --autonomous "fix the test"'
            )
        import asyncio

        from nexpy.runtime import run_autonomous

        return asyncio.run(run_autonomous(plan, opts, message))
    if args.json:
        raise UsageError("--json needs --autonomous (the REPL talks to a person)")
    from nexpy.repl import run_repl

    return run_repl(plan, opts, first_message=args.message)


def _sessions(argv: list[str]) -> int:
    parser = UsageParser(prog="nex sessions", description="List sessions, newest first.")
    parser.add_argument("--json", action="store_true", help="one JSON object per session")
    args = parser.parse_args(argv)
    import json

    from nexpy.session import list_sessions, state_home

    home = state_home()
    rows = list_sessions(home)
    if args.json:
        for info in rows:
            print(json.dumps(info.as_json()))
        return 0
    if not rows:
        print(f"no sessions under {home}", file=sys.stderr)
        return 0
    width = max(len(r.id) for r in rows)
    for info in rows:
        print(info.row(width))
    return 0


if __name__ == "__main__":
    sys.exit(main())
