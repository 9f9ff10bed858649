"""The tools: each tool's happy path, the work-dir fence, failures as results, bash's process
group, and output capping with the full text kept."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest

from nexpy.tools import (
    Tool,
    ToolContext,
    ToolError,
    ToolResult,
    all_tools,
    check_args,
    execute,
    schemas,
)
from nexpy.tools.files import expand_braces, glob_regex
from nexpy.tools.output import cap, safe_name
from nexpy.tools.paths import resolve

TOOLS = all_tools()


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    work = tmp_path / "work"
    work.mkdir()
    return ToolContext(workdir=work.resolve(), outputs_dir=tmp_path / "session" / "tool-outputs")


async def run(ctx: ToolContext, name: str, call_id: str = "call_1", **args: object) -> ToolResult:
    return await execute(TOOLS[name], dict(args), ctx, call_id)


def _alive(pid: int) -> bool:
    """Running, not a zombie (orphans may wait a while for PID 1 to reap them)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in (b"Z", b"X")


# -- registry and schemas -------------------------------------------------------------------


def test_registry_names_and_mutating_flags() -> None:
    assert list(TOOLS) == ["read_file", "write_file", "edit_file", "glob", "grep", "bash"]
    assert {n for n, t in TOOLS.items() if t.mutating} == {"write_file", "edit_file", "bash"}


def test_read_only_registry_has_no_mutating_tools() -> None:
    ro = all_tools(read_only=True)
    assert set(ro) == {"read_file", "glob", "grep"}
    assert not any(t.mutating for t in ro.values())


def test_schemas_have_openai_shape() -> None:
    out = schemas(TOOLS)
    assert len(out) == len(TOOLS)
    for entry in out:
        assert entry["type"] == "function"
        fn = entry["function"]
        assert set(fn) == {"name", "description", "parameters"}
        assert fn["name"] in TOOLS and fn["description"]
        params = fn["parameters"]
        assert params["type"] == "object"
        assert set(params["required"]) <= set(params["properties"])
        for prop in params["properties"].values():
            assert prop["type"] in {"string", "integer", "number", "boolean"}
    # A copy: editing the request must not change the registry.
    out[0]["function"]["parameters"]["properties"].clear()
    assert TOOLS["read_file"].parameters["properties"]


# -- argument checks ------------------------------------------------------------------------


async def test_missing_argument_is_a_result(ctx: ToolContext) -> None:
    r = await run(ctx, "read_file")
    assert not r.ok and r.output == "error: missing required argument 'path'"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ({"path": "a", "bogus": 1}, "unknown argument(s) bogus"),
        ({"path": 3}, "'path' must be string, got integer"),
        ({"path": "a", "offset": "2"}, "'offset' must be integer, got string"),
        ({"path": "a", "offset": True}, "'offset' must be integer, got boolean"),
        ({"path": "a", "offset": 0}, "'offset' must be at least 1"),
    ],
)
async def test_bad_arguments_are_results(ctx: ToolContext, args: dict, needle: str) -> None:
    r = await execute(TOOLS["read_file"], args, ctx, "c")
    assert not r.ok and r.output.startswith("error: ") and needle in r.output
    assert "\n" not in r.output


async def test_arguments_not_an_object(ctx: ToolContext) -> None:
    r = await execute(TOOLS["read_file"], ["a"], ctx, "c")  # type: ignore[arg-type]
    assert not r.ok and "JSON object" in r.output


def test_check_args_drops_nulls_and_accepts_whole_floats() -> None:
    schema = TOOLS["read_file"].parameters
    assert check_args(schema, {"path": "a", "offset": None, "limit": 5.0}) == {
        "path": "a",
        "limit": 5,
    }
    with pytest.raises(ToolError, match="missing required argument 'path'"):
        check_args(schema, {"path": None})


async def test_unexpected_exception_in_a_tool_is_a_result(ctx: ToolContext) -> None:
    async def boom(args: dict, c: ToolContext) -> str:
        raise RuntimeError("kaput")

    tool = Tool("boom", "d", {"type": "object", "properties": {}}, False, boom)
    r = await execute(tool, {}, ctx, "c")
    assert not r.ok and r.output == "error: RuntimeError: kaput"


async def test_oserror_and_decode_error_are_results(ctx: ToolContext) -> None:
    async def oserr(args: dict, c: ToolContext) -> str:
        raise PermissionError(13, "Permission denied", "x.txt")

    async def decerr(args: dict, c: ToolContext) -> str:
        return b"\xff".decode("utf-8")

    empty = {"type": "object", "properties": {}}
    r = await execute(Tool("o", "d", empty, False, oserr), {}, ctx, "c")
    assert not r.ok and r.output == "error: Permission denied: x.txt"
    r = await execute(Tool("u", "d", empty, False, decerr), {}, ctx, "c")
    assert not r.ok and "not UTF-8" in r.output


async def test_cancellation_propagates_through_execute(ctx: ToolContext) -> None:
    async def slow(args: dict, c: ToolContext) -> str:
        await asyncio.sleep(30)
        return "never"

    task = asyncio.create_task(
        execute(Tool("s", "d", {"type": "object", "properties": {}}, False, slow), {}, ctx, "c")
    )
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- paths ----------------------------------------------------------------------------------


def test_resolve_inside_and_outside(tmp_path: Path) -> None:
    work = tmp_path / "w"
    (work / "sub").mkdir(parents=True)
    assert resolve(work, "sub/new.txt") == work.resolve() / "sub" / "new.txt"
    assert resolve(work, str(work / "x")) == work.resolve() / "x"
    assert resolve(work, "sub/../x") == work.resolve() / "x"
    for bad in ("../x", "/etc/passwd", "sub/../../x"):
        with pytest.raises(ToolError, match="outside the work dir"):
            resolve(work, bad)
    with pytest.raises(ToolError, match="empty"):
        resolve(work, "")
    with pytest.raises(ToolError, match="does not exist"):
        resolve(work, "nope", must_exist=True)


def test_resolve_refuses_symlink_escapes(tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (work / "link").symlink_to(outside)
    (work / "dangling").symlink_to(tmp_path / "nowhere.txt")
    (work / "inner").symlink_to(work / "real")  # a link that stays inside is fine
    for bad in ("link/f.txt", "link", "dangling"):
        with pytest.raises(ToolError, match="outside the work dir"):
            resolve(work, bad)
    assert resolve(work, "inner/f") == work.resolve() / "real" / "f"


@pytest.mark.parametrize("path", ["../x.txt", "/etc/passwd", "link/secret.txt"])
async def test_escapes_are_refused_for_read_and_write(ctx: ToolContext, path: str) -> None:
    outside = ctx.workdir.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.txt").write_text("secret\n")
    (ctx.workdir / "link").symlink_to(outside)

    r = await run(ctx, "read_file", path=path)
    assert not r.ok and "outside the work dir" in r.output
    r = await run(ctx, "write_file", path=path, content="pwned")
    assert not r.ok and "outside the work dir" in r.output
    r = await run(ctx, "edit_file", path=path, old_string="secret", new_string="x")
    assert not r.ok and "outside the work dir" in r.output
    assert (outside / "secret.txt").read_text() == "secret\n"
    assert not (ctx.workdir.parent / "x.txt").exists()


# -- read_file ------------------------------------------------------------------------------


async def test_read_file_numbers_lines(ctx: ToolContext) -> None:
    (ctx.workdir / "a.txt").write_text("one\ntwo\r\nthree")
    r = await run(ctx, "read_file", path="a.txt")
    assert r.ok and r.output == "     1\tone\n     2\ttwo\n     3\tthree"


async def test_read_file_offset_limit_and_more_note(ctx: ToolContext) -> None:
    (ctx.workdir / "a.txt").write_text("".join(f"line {i}\n" for i in range(1, 11)))
    r = await run(ctx, "read_file", path="a.txt", offset=3, limit=2)
    assert r.ok
    assert r.output.splitlines() == [
        "     3\tline 3",
        "     4\tline 4",
        "[lines 3-4 of 10; continue with offset=5]",
    ]
    r = await run(ctx, "read_file", path="a.txt", offset=11)
    assert not r.ok and "past the end" in r.output and "10 lines" in r.output


async def test_read_file_default_limit_is_2000_lines(ctx: ToolContext) -> None:
    ctx.output_cap = 1_000_000
    (ctx.workdir / "big.txt").write_text("".join(f"{i}\n" for i in range(2500)))
    r = await run(ctx, "read_file", path="big.txt")
    lines = r.output.splitlines()
    assert len(lines) == 2001
    assert lines[-1] == "[lines 1-2000 of 2500; continue with offset=2001]"


async def test_read_file_stops_at_the_output_budget(ctx: ToolContext) -> None:
    ctx.output_cap = 2_000
    (ctx.workdir / "a.txt").write_text("".join(f"{'x' * 50} {i}\n" for i in range(200)))
    r = await run(ctx, "read_file", path="a.txt")
    assert r.ok and not r.truncated
    assert len(r.output) <= ctx.output_cap
    assert "continue with offset=" in r.output.splitlines()[-1]


async def test_read_file_cuts_very_long_lines(ctx: ToolContext) -> None:
    ctx.output_cap = 1_000_000
    (ctx.workdir / "min.js").write_text("a" * 100_000 + "\nend\n")
    r = await run(ctx, "read_file", path="min.js")
    first, second = r.output.splitlines()
    assert "line cut; 100001 bytes in all" in first and len(first) < 2_100
    assert second == "     2\tend"


async def test_read_file_refuses_binary_and_dirs(ctx: ToolContext) -> None:
    (ctx.workdir / "bin.dat").write_bytes(b"abc\x00def")
    (ctx.workdir / "d").mkdir()
    r = await run(ctx, "read_file", path="bin.dat")
    assert not r.ok and "binary" in r.output
    r = await run(ctx, "read_file", path="d")
    assert not r.ok and "directory" in r.output
    r = await run(ctx, "read_file", path="missing.txt")
    assert not r.ok and "does not exist" in r.output


async def test_read_file_empty_and_non_utf8(ctx: ToolContext) -> None:
    (ctx.workdir / "e.txt").write_text("")
    (ctx.workdir / "l1.txt").write_bytes(b"caf\xe9\n")
    r = await run(ctx, "read_file", path="e.txt")
    assert r.ok and "empty" in r.output
    r = await run(ctx, "read_file", path="l1.txt")
    assert r.ok and r.output == "     1\tcaf\ufffd"


# -- write_file / edit_file -----------------------------------------------------------------


async def test_write_file_creates_dirs_and_reports_bytes(ctx: ToolContext) -> None:
    r = await run(ctx, "write_file", path="a/b/c.txt", content="héllo\n")
    assert r.ok and r.output == "wrote 7 bytes to a/b/c.txt"
    assert (ctx.workdir / "a/b/c.txt").read_text(encoding="utf-8") == "héllo\n"
    # No temp file left behind.
    assert [p.name for p in (ctx.workdir / "a/b").iterdir()] == ["c.txt"]


async def test_write_file_overwrites_and_keeps_mode(ctx: ToolContext) -> None:
    script = ctx.workdir / "run.sh"
    script.write_text("old\n")
    script.chmod(0o755)
    r = await run(ctx, "write_file", path="run.sh", content="#!/bin/sh\necho hi\n")
    assert r.ok
    assert script.read_text() == "#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(script.stat().st_mode) == 0o755


async def test_write_file_refuses_a_directory(ctx: ToolContext) -> None:
    (ctx.workdir / "d").mkdir()
    r = await run(ctx, "write_file", path="d", content="x")
    assert not r.ok and "directory" in r.output


async def test_write_through_inner_symlink_keeps_link(ctx: ToolContext) -> None:
    (ctx.workdir / "real.txt").write_text("a")
    (ctx.workdir / "alias.txt").symlink_to("real.txt")
    r = await run(ctx, "write_file", path="alias.txt", content="b")
    assert r.ok
    assert (ctx.workdir / "alias.txt").is_symlink()
    assert (ctx.workdir / "real.txt").read_text() == "b"


async def test_edit_file_replaces_once(ctx: ToolContext) -> None:
    f = ctx.workdir / "m.py"
    f.write_text("def f():\n    return 1\n")
    r = await run(ctx, "edit_file", path="m.py", old_string="return 1", new_string="return 2")
    assert r.ok
    assert r.output.splitlines() == [
        "edited m.py: replaced 1 occurrence",
        "--- a/m.py",
        "+++ b/m.py",
        "@@ -1,2 +1,2 @@",
        " def f():",
        "-    return 1",
        "+    return 2",
    ]
    assert f.read_text() == "def f():\n    return 2\n"


async def test_edit_file_not_found_and_ambiguous(ctx: ToolContext) -> None:
    f = ctx.workdir / "m.txt"
    f.write_text("x = 1\nx = 1\n")
    r = await run(ctx, "edit_file", path="m.txt", old_string="y = 1", new_string="y = 2")
    assert not r.ok and "not found" in r.output
    r = await run(ctx, "edit_file", path="m.txt", old_string="x = 1", new_string="x = 2")
    assert not r.ok and "occurs 2 times" in r.output and "replace_all" in r.output
    assert f.read_text() == "x = 1\nx = 1\n"
    r = await run(
        ctx, "edit_file", path="m.txt", old_string="x = 1", new_string="x = 2", replace_all=True
    )
    assert r.ok and "replaced 2 occurrences" in r.output
    assert f.read_text() == "x = 2\nx = 2\n"


async def test_edit_file_rejects_empty_and_identical(ctx: ToolContext) -> None:
    (ctx.workdir / "m.txt").write_text("abc")
    r = await run(ctx, "edit_file", path="m.txt", old_string="", new_string="x")
    assert not r.ok and "empty" in r.output
    r = await run(ctx, "edit_file", path="m.txt", old_string="a", new_string="a")
    assert not r.ok and "same" in r.output
    r = await run(ctx, "edit_file", path="nope.txt", old_string="a", new_string="b")
    assert not r.ok and "does not exist" in r.output


async def test_edit_file_matches_crlf_files(ctx: ToolContext) -> None:
    f = ctx.workdir / "w.txt"
    f.write_bytes(b"a\r\nb\r\nc\r\n")
    r = await run(ctx, "edit_file", path="w.txt", old_string="a\nb", new_string="A\nB")
    assert r.ok
    assert f.read_bytes() == b"A\r\nB\r\nc\r\n"


async def test_edit_file_refuses_non_utf8(ctx: ToolContext) -> None:
    f = ctx.workdir / "l1.txt"
    f.write_bytes(b"caf\xe9 ok\n")
    r = await run(ctx, "edit_file", path="l1.txt", old_string="ok", new_string="no")
    assert not r.ok and "not UTF-8" in r.output
    assert f.read_bytes() == b"caf\xe9 ok\n"


# -- glob -----------------------------------------------------------------------------------


def _touch(path: Path, mtime: float, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (mtime, mtime))


async def test_glob_newest_first_relative_and_skips_git(ctx: ToolContext) -> None:
    w = ctx.workdir
    _touch(w / "old.py", 1_000)
    _touch(w / "src" / "new.py", 3_000)
    _touch(w / "src" / "deep" / "mid.py", 2_000)
    _touch(w / "src" / "note.txt", 4_000)
    _touch(w / ".git" / "hook.py", 5_000)
    r = await run(ctx, "glob", pattern="**/*.py")
    assert r.ok and r.output.splitlines() == ["src/new.py", "src/deep/mid.py", "old.py"]
    r = await run(ctx, "glob", pattern="*.py")
    assert r.output == "old.py"
    r = await run(ctx, "glob", pattern="*.py", path="src")
    assert r.output == "src/new.py"
    r = await run(ctx, "glob", pattern="src/*.{py,txt}")
    assert r.output.splitlines() == ["src/note.txt", "src/new.py"]


async def test_glob_no_match_and_bad_paths(ctx: ToolContext) -> None:
    r = await run(ctx, "glob", pattern="*.rs")
    assert r.ok and "no files match" in r.output and "**/*.rs" in r.output
    r = await run(ctx, "glob", pattern="../*")
    assert not r.ok and ".." in r.output
    r = await run(ctx, "glob", pattern="*", path="..")
    assert not r.ok and "outside the work dir" in r.output


async def test_glob_does_not_follow_links_out(ctx: ToolContext) -> None:
    outside = ctx.workdir.parent / "outside"
    outside.mkdir()
    (outside / "secret.py").write_text("x")
    (ctx.workdir / "link").symlink_to(outside)
    (ctx.workdir / "flink.py").symlink_to(outside / "secret.py")
    (ctx.workdir / "mine.py").write_text("x")
    r = await run(ctx, "glob", pattern="**/*.py")
    assert r.ok and r.output == "mine.py"
    r = await run(ctx, "glob", pattern="link/*.py")
    assert not r.ok and "outside the work dir" in r.output


async def test_glob_caps_at_500(ctx: ToolContext) -> None:
    ctx.output_cap = 1_000_000
    for i in range(510):
        (ctx.workdir / f"f{i}.txt").write_text("")
    r = await run(ctx, "glob", pattern="*.txt")
    lines = r.output.splitlines()
    assert len(lines) == 501 and "showing 500 of 510" in lines[-1]


def test_glob_helpers() -> None:
    assert expand_braces("a.{py,pyi}") == ["a.py", "a.pyi"]
    assert expand_braces("{a,b{c,d}}x") == ["ax", "bcx", "bdx"]
    assert expand_braces("{x}") == ["{x}"]
    import re

    rx = re.compile(glob_regex("src/**/*.py"))
    assert rx.fullmatch("src/a.py") and rx.fullmatch("src/x/y/a.py")
    assert not rx.fullmatch("lib/a.py")
    assert re.fullmatch(glob_regex("[!a]?.txt"), "bc.txt")
    assert not re.fullmatch(glob_regex("*.txt"), "d/a.txt")


# -- grep -----------------------------------------------------------------------------------


async def test_grep_finds_lines(ctx: ToolContext) -> None:
    w = ctx.workdir
    (w / "a.py").write_text("import os\nx = 1\n")
    (w / "sub").mkdir()
    (w / "sub" / "b.txt").write_text("no\nIMPORT me\n")
    (w / "bin.dat").write_bytes(b"import\x00")
    (w / ".git").mkdir()
    (w / ".git" / "c").write_text("import\n")
    r = await run(ctx, "grep", pattern="import")
    assert r.ok and r.output == "a.py:1:import os"
    r = await run(ctx, "grep", pattern="^import", ignore_case=True)
    assert r.output.splitlines() == ["a.py:1:import os", "sub/b.txt:2:IMPORT me"]
    r = await run(ctx, "grep", pattern="import", ignore_case=True, glob="*.txt")
    assert r.output == "sub/b.txt:2:IMPORT me"
    r = await run(ctx, "grep", pattern="x", path="a.py")
    assert r.output == "a.py:2:x = 1"
    r = await run(ctx, "grep", pattern="zzz")
    assert r.ok and r.output == "no matches for zzz"


async def test_grep_bad_regex_and_outside(ctx: ToolContext) -> None:
    r = await run(ctx, "grep", pattern="(unclosed")
    assert not r.ok and "bad regex" in r.output
    r = await run(ctx, "grep", pattern="root", path="/etc")
    assert not r.ok and "outside the work dir" in r.output


async def test_grep_caps_matches_and_shows_the_match_in_long_lines(ctx: ToolContext) -> None:
    ctx.output_cap = 1_000_000
    (ctx.workdir / "many.txt").write_text("hit\n" * 600)
    (ctx.workdir / "long.txt").write_text("a" * 5_000 + "NEEDLE" + "b" * 5_000 + "\n")
    r = await run(ctx, "grep", pattern="hit")
    lines = r.output.splitlines()
    assert len(lines) == 501 and "stopped at 500 matches" in lines[-1]
    r = await run(ctx, "grep", pattern="NEEDLE")
    assert "NEEDLE" in r.output and len(r.output) < 700


# -- bash -----------------------------------------------------------------------------------


async def test_bash_runs_in_workdir_and_merges_stderr(ctx: ToolContext) -> None:
    r = await run(ctx, "bash", command="pwd; echo err >&2")
    assert r.ok
    assert r.output == f"{ctx.workdir}\nerr\n"
    r = await run(ctx, "bash", command="true")
    assert r.ok and r.output == "(no output)"


async def test_bash_has_no_stdin(ctx: ToolContext) -> None:
    t0 = time.monotonic()
    r = await run(ctx, "bash", command="cat; echo done", timeout=10)
    assert r.ok and r.output == "done\n" and time.monotonic() - t0 < 5


async def test_bash_exit_code(ctx: ToolContext) -> None:
    r = await run(ctx, "bash", command="echo out; exit 3")
    assert not r.ok and r.output == "out\n[exit code 3]"
    r = await run(ctx, "bash", command="kill -9 $$")
    assert not r.ok and r.output == "[killed by signal SIGKILL]"


async def test_bash_timeout_kills_the_process_group(ctx: ToolContext) -> None:
    t0 = time.monotonic()
    r = await run(
        ctx, "bash", command="echo $! start; sleep 30 & echo $! > child.pid; sleep 30", timeout=1
    )
    assert time.monotonic() - t0 < 5
    assert not r.ok and r.output.endswith("[timed out after 1s]") and "start" in r.output
    child = int((ctx.workdir / "child.pid").read_text())
    deadline = time.monotonic() + 3
    while _alive(child) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not _alive(child)


async def test_bash_sigterm_then_sigkill(ctx: ToolContext) -> None:
    # A child that ignores SIGTERM is still gone after the grace period.
    t0 = time.monotonic()
    r = await run(
        ctx,
        "bash",
        command="trap '' TERM; (trap '' TERM; sleep 30) & echo $! > child.pid; sleep 30",
        timeout=0.5,
    )
    assert not r.ok and "timed out after 0.5s" in r.output
    assert time.monotonic() - t0 < 6
    child = int((ctx.workdir / "child.pid").read_text())
    await asyncio.sleep(0.2)
    assert not _alive(child)


async def test_bash_cancellation_kills_the_group(ctx: ToolContext) -> None:
    task = asyncio.create_task(
        run(ctx, "bash", command="sleep 30 & echo $! > child.pid; echo $$ > bash.pid; sleep 30")
    )
    pidfile = ctx.workdir / "bash.pid"
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        await asyncio.sleep(0.05)
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - t0 < 4
    for name in ("child.pid", "bash.pid"):
        pid = int((ctx.workdir / name).read_text())
        deadline = time.monotonic() + 3
        while _alive(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not _alive(pid), name


async def test_bash_does_not_wait_for_background_holders(ctx: ToolContext) -> None:
    t0 = time.monotonic()
    r = await run(ctx, "bash", command="sleep 3 & echo $! > child.pid; echo started")
    assert time.monotonic() - t0 < 2.5
    assert r.ok and r.output.startswith("started\n") and "background" in r.output
    os.kill(int((ctx.workdir / "child.pid").read_text()), 9)


async def test_bash_timeout_is_capped_and_validated(ctx: ToolContext) -> None:
    r = await run(ctx, "bash", command="echo hi", timeout=10_000)
    assert r.ok
    r = await run(ctx, "bash", command="echo hi", timeout=0)
    assert not r.ok and "greater than 0" in r.output
    r = await run(ctx, "bash", command="  ")
    assert not r.ok and "empty" in r.output


async def test_bash_huge_output_is_capped_and_kept(ctx: ToolContext) -> None:
    r = await run(ctx, "bash", call_id="call/../big", command="seq 1 200000; exit 1")
    assert not r.ok and r.truncated
    assert len(r.output) <= ctx.output_cap
    assert r.output.startswith("1\n2\n") and r.output.endswith("200000\n[exit code 1]")
    assert "full output: tool-outputs/call_.._big.txt" in r.output
    assert r.full_path is not None
    full = Path(r.full_path)
    assert full.parent == ctx.outputs_dir and full.name == "call_.._big.txt"
    assert full.read_text().splitlines()[-2:] == ["200000", "[exit code 1]"]


# -- capping --------------------------------------------------------------------------------


def test_cap_keeps_head_and_tail_and_writes_the_full_text(tmp_path: Path) -> None:
    text = "".join(f"line {i}\n" for i in range(1000))
    c = cap(text, 500, outputs_dir=tmp_path / "out", call_id="abc")
    assert c.truncated and len(c.text) <= 500
    assert c.text.startswith("line 0\n") and c.text.endswith("line 999\n")
    omitted = len(text) - len(c.text.split("[...")[0]) - len(c.text.split("...]\n")[1])
    assert f"[... {omitted} chars omitted; full output: tool-outputs/abc.txt ...]" in c.text
    assert c.full_path == str(tmp_path / "out" / "abc.txt")
    assert Path(c.full_path).read_text() == text


def test_cap_short_text_untouched_and_repeated_ids_do_not_overwrite(tmp_path: Path) -> None:
    assert cap("short", 100, outputs_dir=tmp_path, call_id="x").text == "short"
    a = cap("a" * 1000, 100, outputs_dir=tmp_path, call_id="call_0")
    b = cap("b" * 1000, 100, outputs_dir=tmp_path, call_id="call_0")
    assert a.full_path and b.full_path and a.full_path != b.full_path
    assert "tool-outputs/call_0-2.txt" in b.text
    assert Path(a.full_path).read_text() == "a" * 1000


def test_cap_without_outputs_dir(tmp_path: Path) -> None:
    c = cap("z" * 1000, 200, outputs_dir=None, call_id="x")
    assert c.truncated and c.full_path is None and "not kept" in c.text


def test_safe_name() -> None:
    assert safe_name("call_1") == "call_1"
    assert safe_name("../../etc/passwd") == "_.._etc_passwd"
    assert safe_name("") == "call"
    assert safe_name("...") == "call"


async def test_read_file_opens_kept_outputs(ctx: ToolContext) -> None:
    ctx.output_cap = 1_000
    r = await run(ctx, "bash", call_id="call_9", command="seq 1 2000")
    assert r.truncated and "tool-outputs/call_9.txt" in r.output
    r = await run(ctx, "read_file", path="tool-outputs/call_9.txt", offset=1500, limit=2)
    assert r.ok and r.output.splitlines()[:2] == ["  1500\t1500", "  1501\t1501"]
    r = await run(ctx, "grep", pattern="^1999$", path="tool-outputs/call_9.txt")
    assert r.ok and r.output == "tool-outputs/call_9.txt:1999:1999"
    # Its absolute path works too, and nothing else outside the work dir does.
    assert ctx.outputs_dir is not None
    r = await run(ctx, "read_file", path=str(ctx.outputs_dir / "call_9.txt"), limit=1)
    assert r.ok and r.output.startswith("     1\t1")
    r = await run(ctx, "read_file", path="tool-outputs/../../secret")
    assert not r.ok and "outside the work dir" in r.output


async def test_workdir_file_named_tool_outputs_wins(ctx: ToolContext) -> None:
    (ctx.workdir / "tool-outputs").mkdir()
    (ctx.workdir / "tool-outputs" / "mine.txt").write_text("mine\n")
    r = await run(ctx, "read_file", path="tool-outputs/mine.txt")
    assert r.ok and r.output == "     1\tmine"


async def test_failed_tool_output_is_capped_too(ctx: ToolContext) -> None:
    async def loud(args: dict, c: ToolContext) -> str:
        raise ToolError("failed", output="x" * 50_000)

    tool = Tool("loud", "d", {"type": "object", "properties": {}}, False, loud)
    r = await execute(tool, {}, ctx, "c")
    assert not r.ok and r.truncated and len(r.output) <= ctx.output_cap


async def test_missing_kept_output_says_so(ctx: ToolContext) -> None:
    r = await run(ctx, "read_file", path="tool-outputs/nope.txt")
    assert not r.ok and r.output == "error: tool-outputs/nope.txt does not exist"
