"""Undo's rules (nexpy.undo): by turns, newest first, never over a file changed since."""

from __future__ import annotations

from pathlib import Path

from nexpy.session import Session
from nexpy.undo import Recorder, revert


def _session(tmp_path: Path) -> tuple[Session, Path]:
    work = tmp_path / "work"
    work.mkdir()
    session = Session.create(tmp_path / "home")
    session.lock()
    return session, work


def _edit(rec: Recorder, work: Path, call: str, turn: int, rel: str, text: str | None) -> None:
    token = rec.before(call, "write_file", {"path": rel}, turn)
    if text is None:
        (work / rel).unlink()
    else:
        (work / rel).write_text(text)
    rec.after(call, token)


def test_undo_goes_back_one_turn_at_a_time(tmp_path: Path) -> None:
    session, work = _session(tmp_path)
    (work / "f.txt").write_text("v0")
    rec = Recorder(session, work)
    _edit(rec, work, "c1", 1, "f.txt", "v1")
    _edit(rec, work, "c2", 2, "f.txt", "v2")
    _edit(rec, work, "c3", 2, "f.txt", "v3")  # two calls in one turn
    report = revert(session, work, 1)
    assert (work / "f.txt").read_text() == "v1" and report.turns == 1
    assert report.calls == ["c3", "c2"]
    report = revert(session, work, 5)
    assert (work / "f.txt").read_text() == "v0" and report.calls == ["c1"]
    assert revert(session, work, 1).calls == []
    session.close()


def test_a_file_changed_since_is_skipped_and_named(tmp_path: Path) -> None:
    session, work = _session(tmp_path)
    rec = Recorder(session, work)
    _edit(rec, work, "c1", 1, "new.txt", "tool wrote")
    (work / "new.txt").write_text("user wrote")
    report = revert(session, work, 1)
    assert (work / "new.txt").read_text() == "user wrote"
    assert report.skipped and report.skipped[0].startswith("new.txt: changed since")
    session.close()


def test_bash_scan_sees_created_changed_and_deleted_files(tmp_path: Path) -> None:
    session, work = _session(tmp_path)
    (work / "keep.txt").write_text("k")
    (work / "del.txt").write_text("d")
    (work / ".git").mkdir()
    (work / ".git" / "HEAD").write_text("ref")  # never scanned, never restored
    (work / ".mypy_cache").mkdir()
    (work / ".mypy_cache" / "CACHEDIR.TAG").write_text(
        "Signature: 8a477f597d28d172789f06886806bc55"
    )
    (work / ".mypy_cache" / "x.json").write_text("1")  # a cache: rebuilt, not kept
    rec = Recorder(session, work)
    token = rec.before("b1", "bash", {"command": "..."}, 1)
    (work / "keep.txt").write_text("changed")
    (work / "del.txt").unlink()
    (work / "sub").mkdir()
    (work / "sub" / "made.txt").write_text("m")
    (work / ".git" / "HEAD").write_text("other")
    (work / ".mypy_cache" / "x.json").write_text("2")
    rec.after("b1", token)
    report = revert(session, work, 1)
    assert sorted(report.restored) == ["del.txt", "keep.txt"]
    assert report.deleted == ["sub/made.txt"]
    assert (work / "keep.txt").read_text() == "k" and (work / "del.txt").read_text() == "d"
    assert (work / ".git" / "HEAD").read_text() == "other"
    assert (work / ".mypy_cache" / "x.json").read_text() == "2"
    session.close()
