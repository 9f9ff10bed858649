"""edit_file's tolerant matching (nexpy.tools.matching): exact first, then a unique normalised
match, never an ambiguous one, and the closest lines on a miss."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexpy.tools import ToolContext, ToolResult, all_tools, execute
from nexpy.tools.files import preview
from nexpy.tools.matching import Ambiguous, closest, find


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    work = tmp_path / "work"
    work.mkdir()
    return ToolContext(workdir=work.resolve(), outputs_dir=None)


async def edit(ctx: ToolContext, path: str, old: str, new: str) -> ToolResult:
    args = {"path": path, "old_string": old, "new_string": new}
    return await execute(all_tools()["edit_file"], args, ctx, "c1")


def test_exact_wins_and_counts_every_occurrence() -> None:
    m = find("a\nb\na\n", "a", "x")
    assert m is not None and (m.how, m.count) == ("exact", 2)


def test_trailing_whitespace_and_line_ends_are_ignored_on_whole_lines() -> None:
    text = "def f():  \r\n    return 1\t\r\nend\r\n"
    m = find(text, "def f():\n    return 1\n", "def g():\n    return 2\n")
    assert m is not None and m.how == "line ends"
    out = text[: m.start] + m.replacement + text[m.end :]
    assert out == "def g():\r\n    return 2\r\nend\r\n"  # the file's CRLF style kept


def test_indentation_is_ignored_and_new_text_takes_the_files_indent() -> None:
    text = "class A:\n    def f(self):\n        return 1\n"
    m = find(text, "def f(self):\n    return 1", "def f(self):\n    x = 2\n    return x")
    assert m is not None and m.how == "indentation"
    out = text[: m.start] + m.replacement + text[m.end :]
    assert out == "class A:\n    def f(self):\n        x = 2\n        return x\n"


def test_a_tolerant_match_in_two_places_is_refused() -> None:
    text = "if a:\n    x = 1\nif b:\n        x = 1\n"
    with pytest.raises(Ambiguous) as e:
        find(text, "x = 1 \n", "x = 2\n")  # trailing space: no exact match, two normalised
    assert e.value.count == 2 and e.value.how == "indentation"


def test_no_match_at_all_is_none() -> None:
    assert find("alpha\nbeta\n", "gamma", "x") is None


def test_closest_lines_point_at_the_near_miss() -> None:
    text = "".join(f"line {i}\n" for i in range(100)) + "def compute(x):\n    return x + 1\n"
    first, lines = closest(text, "def compute(y):\n    return y + 1") or (0, [])
    assert "def compute(x):" in lines and "    return x + 1" in lines
    assert first == 99  # two lines of context before line 101
    assert closest(text, "zzzzzzzzzzzz qqqqqqq") is None


async def test_edit_file_applies_a_tolerant_match_and_says_so(ctx: ToolContext) -> None:
    f = ctx.workdir / "m.py"
    f.write_text("def f():\n\treturn 1\n")
    r = await edit(ctx, "m.py", "def f():\n    return 1\n", "def f():\n    return 2\n")
    assert r.ok and "ignoring indentation" in r.output
    assert f.read_text() == "def f():\n\treturn 2\n"


async def test_edit_file_never_applies_an_ambiguous_match(ctx: ToolContext) -> None:
    f = ctx.workdir / "m.py"
    body = "a:\n  x = 1\nb:\n    x = 1\n"
    f.write_text(body)
    r = await edit(ctx, "m.py", "x = 1  ", "x = 2")
    assert not r.ok and "matches 2 places" in r.output
    assert f.read_text() == body


async def test_edit_file_miss_shows_numbered_closest_lines(ctx: ToolContext) -> None:
    f = ctx.workdir / "m.py"
    f.write_text("import os\n\n\ndef total(items):\n    return sum(items)\n")
    r = await edit(ctx, "m.py", "def total(xs):\n    return sum(xs)", "pass")
    assert not r.ok and r.output.startswith("error: old_string not found in m.py")
    assert "     4\tdef total(items):" in r.output
    assert "     5\t    return sum(items)" in r.output


async def test_overwrite_result_carries_a_capped_diff(ctx: ToolContext) -> None:
    f = ctx.workdir / "big.txt"
    f.write_text("".join(f"old {i}\n" for i in range(500)))
    args = {"path": "big.txt", "content": "".join(f"new {i}\n" for i in range(500))}
    r = await execute(all_tools()["write_file"], args, ctx, "c1")
    lines = r.output.splitlines()
    assert r.ok and lines[0] == "wrote 3890 bytes to big.txt"
    assert lines[1:3] == ["--- a/big.txt", "+++ b/big.txt"]
    assert lines[-1].startswith("[... diff cut:") and len(lines) <= 2 + 61
    assert len(r.output) < 3300


def test_preview_shows_the_diff_before_anything_is_written(ctx: ToolContext) -> None:
    f = ctx.workdir / "a.txt"
    f.write_text("one\ntwo\n")
    diff = preview("edit_file", {"path": "a.txt", "old_string": "two", "new_string": "2"}, ctx)
    assert "-two" in diff and "+2" in diff
    assert f.read_text() == "one\ntwo\n"
    new = preview("write_file", {"path": "n.txt", "content": "hi\n"}, ctx)
    assert new.startswith("--- /dev/null") and "+hi" in new and not (ctx.workdir / "n.txt").exists()
    assert (
        preview("edit_file", {"path": "a.txt", "old_string": "zzz", "new_string": "q"}, ctx) == ""
    )
    assert preview("bash", {"command": "rm -rf x"}, ctx) == ""
