"""`python -m bench.worker`: the in-process sections, in a process of their own.

It imports litellm and nexpy's agent loop; the bench's own process does not, so that the peak
RSS the kernel reports for the processes the bench launches is theirs, not inherited from a
parent that had grown (see `Worker`). One worker serves every in-process section of a run, so
litellm is imported once.

Protocol: one JSON request per line on stdin, {"section", "url", "out"}; the worker writes
{"figures": [...], "shared": {...}} (or {"error": "..."}) to `out`, then prints `done <out>`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

from bench.harness import PYTHON, ROOT, Figure, StubClient
from bench.settings import SETTINGS, Context


class Worker:
    """The bench's handle on a running worker process."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "bench.worker", str(ctx.scratch), ctx.settings.name],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.calls = 0

    def run(self, section: str, stub: StubClient) -> list[Figure]:
        """Run `section` against `stub` in the worker; its figures, its shared values merged."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.calls += 1
        out = self.ctx.scratch / f"worker-{self.calls}.json"
        request = {"section": section, "url": stub.url, "out": str(out)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        # Anything else a library prints on stdout is skipped, not taken for the answer.
        for line in self.proc.stdout:
            if line.strip() == f"done {out}":
                break
        else:
            raise RuntimeError(f"bench.worker exited {self.proc.wait()} during {section}")
        report = json.loads(out.read_text(encoding="utf-8"))
        if "error" in report:
            raise RuntimeError(f"bench.worker {section}: {report['error']}")
        self.ctx.shared.update(report["shared"])
        return [Figure(**f) for f in report["figures"]]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def main() -> int:
    from bench.turns import WORKER_SECTIONS, prepare_workdir

    scratch, settings = Path(sys.argv[1]), SETTINGS[sys.argv[2]]
    ctx = Context(settings, scratch)
    work = prepare_workdir(scratch)
    try:
        for line in sys.stdin:
            request = json.loads(line)
            out = Path(request["out"])
            report: dict[str, Any]
            try:
                with StubClient(request["url"]) as stub:
                    section = WORKER_SECTIONS[request["section"]]
                    figures = ctx.run(section(ctx, stub, work))
                report = {"figures": [f.as_dict() for f in figures], "shared": ctx.shared}
            except Exception as e:
                traceback.print_exc()
                report = {"error": f"{type(e).__name__}: {e}"}
            out.write_text(json.dumps(report), encoding="utf-8")
            print(f"done {out}", flush=True)
    finally:
        ctx.runner.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
