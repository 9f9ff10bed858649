"""`@path` in a REPL message: which files are included, which are left out and why, and the
completion of work-dir paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from nexpy.mentions import MAX_INCLUDE_BYTES, PathCompleter, include_files


@pytest.fixture
def work(tmp_path: Path) -> Path:
    root = tmp_path / "work"
    (root / "src").mkdir(parents=True)
    (root / "todo.txt").write_text("buy milk\n")
    (root / "src" / "app.py").write_text("print('hi')\n")
    (root / "src" / "api.py").write_text("x = 1\n")
    (root / ".env").write_text("SECRET=1\n")
    return root


def test_a_mentioned_file_is_appended_once(work: Path) -> None:
    result = include_files("compare @todo.txt with @src/app.py and @todo.txt", work)
    assert result.text == (
        "compare @todo.txt with @src/app.py and @todo.txt\n\n"
        "[file todo.txt]\n```\nbuy milk\n```\n\n"
        "[file src/app.py]\n```\nprint('hi')\n```"
    )
    assert result.files == ["todo.txt", "src/app.py"]
    assert result.notes == []


def test_a_sentence_end_is_not_part_of_the_path(work: Path) -> None:
    result = include_files("read @todo.txt.", work)
    assert result.files == ["todo.txt"]


def test_words_that_are_not_paths_are_left_alone_silently(work: Path) -> None:
    result = include_files("mail me@example.com about @dataclass and @alice", work)
    assert result.text == "mail me@example.com about @dataclass and @alice"
    assert result.notes == []


def test_a_missing_file_gets_a_note_and_the_message_goes_as_typed(work: Path) -> None:
    result = include_files("look at @nothere.txt", work)
    assert result.text == "look at @nothere.txt"
    assert result.notes == ["@nothere.txt: no such file in the work dir; not included"]


@pytest.mark.parametrize("name", ["../secret.txt", "/etc/hostname", "~/.bashrc"])
def test_a_path_outside_the_work_dir_is_never_read(work: Path, name: str) -> None:
    (work.parent / "secret.txt").write_text("top secret\n")
    result = include_files(f"see @{name}", work)
    assert result.text == f"see @{name}"
    assert result.notes == [f"@{name}: outside the work dir; not included"]


def test_a_symlink_leading_out_of_the_work_dir_is_never_read(work: Path) -> None:
    (work.parent / "secret.txt").write_text("top secret\n")
    os.symlink(work.parent / "secret.txt", work / "link.txt")
    result = include_files("see @link.txt", work)
    assert "top secret" not in result.text
    assert result.notes == ["@link.txt: outside the work dir; not included"]


def test_a_file_over_the_cap_is_left_out_with_its_size(work: Path) -> None:
    (work / "big.log").write_text("x" * (MAX_INCLUDE_BYTES + 1))
    result = include_files("why @big.log", work)
    assert result.text == "why @big.log"
    assert result.notes == [
        f"@big.log: {MAX_INCLUDE_BYTES + 1:,} bytes, over the {MAX_INCLUDE_BYTES:,}-byte limit; "
        "not included (the model can read it with its tools)"
    ]


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n\x00\x00", b"caf\xe9 latin-1"])
def test_a_binary_file_is_left_out(work: Path, data: bytes) -> None:
    (work / "blob.bin").write_bytes(data)
    result = include_files("what is @blob.bin", work)
    assert result.text == "what is @blob.bin"
    assert result.notes == ["@blob.bin: a binary file; not included"]


def test_a_directory_is_left_out(work: Path) -> None:
    result = include_files("list @src/", work)
    assert result.notes == ["@src/: src is not a file; not included"]


# -- completion ---------------------------------------------------------------------------------
def _complete(work: Path, typed: str) -> list[str]:
    completer = PathCompleter(work)
    document = Document(typed, len(typed))
    return [c.text for c in completer.get_completions(document, CompleteEvent())]


def test_completion_offers_work_dir_entries_after_an_at(work: Path) -> None:
    assert _complete(work, "look at @") == ["src/", "todo.txt"]  # hidden ones need a dot
    assert _complete(work, "look at @t") == ["todo.txt"]
    assert _complete(work, "@src/a") == ["src/api.py", "src/app.py"]
    assert _complete(work, "@.") == [".env"]


def test_completion_replaces_the_whole_partial_path(work: Path) -> None:
    completer = PathCompleter(work)
    (completion,) = completer.get_completions(Document("@src/app", 8), CompleteEvent())
    assert completion.start_position == -len("src/app")


@pytest.mark.parametrize("typed", ["plain words", "me@t", "@../", "@/etc/", "@~/", "@nope/"])
def test_completion_offers_nothing_outside_a_work_dir_mention(work: Path, typed: str) -> None:
    assert _complete(work, typed) == []
