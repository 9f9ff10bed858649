"""Session folders and journals: durability, the one-writer lock, and tolerant reading."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nexpy.errors import SessionLocked, UsageError
from nexpy.session import Session, list_sessions, state_home, validate_name

REPO = Path(__file__).resolve().parents[2]


def _locked(home: Path, name: str | None = None) -> Session:
    s = Session.create(home, name)
    s.lock()
    return s


def _set_mtime(s: Session, ts: float) -> None:
    os.utime(s.journal_path, (ts, ts))


# -- state home --------------------------------------------------------------------------------
def test_state_home_prefers_nex_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEX_HOME", str(tmp_path / "h"))
    assert state_home() == tmp_path / "h"


def test_state_home_falls_back_to_platform_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEX_HOME", raising=False)
    assert "nexpy" in str(state_home())


# -- create / append / read ----------------------------------------------------------------------
def test_roundtrip(tmp_path: Path) -> None:
    with _locked(tmp_path) as s:
        init = s.append("init", model="local:qwen", handler="nex", cwd="/w")
        s.append("message", message={"role": "user", "content": "héllo\nworld"})
        s.append("tool_execution", id="c1", name="bash", ok=True)
        assert init["kind"] == "init" and init["ts"].endswith("Z")

    reread = Session(s.path)
    kinds = [e["kind"] for e in reread.entries()]
    assert kinds == ["init", "message", "tool_execution"]
    assert reread.meta() == {"model": "local:qwen", "handler": "nex", "cwd": "/w"}
    assert reread.messages() == [{"role": "user", "content": "héllo\nworld"}]
    assert reread.warnings == []
    # Non-ASCII is written as itself, one entry per physical line.
    raw = s.journal_path.read_text(encoding="utf-8")
    assert "héllo" in raw and raw.count("\n") == 3


def test_layout_and_permissions(tmp_path: Path) -> None:
    s = Session.create(tmp_path)
    assert s.path.parent == tmp_path / "sessions"
    assert s.outputs_dir == s.path / "tool-outputs" and s.outputs_dir.is_dir()
    assert stat.S_IMODE(s.path.stat().st_mode) == 0o700
    assert stat.S_IMODE(s.journal_path.stat().st_mode) == 0o600
    # Unnamed ids: YYYYMMDD-HHMMSS-xxxx.
    assert len(s.id) == 20 and s.id[8] == "-" and s.id[15] == "-"
    int(s.id[16:], 16)


def test_unnamed_ids_are_distinct(tmp_path: Path) -> None:
    ids = {Session.create(tmp_path).id for _ in range(20)}
    assert len(ids) == 20


def test_every_append_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _locked(tmp_path)
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    for i in range(3):
        s.append("message", message={"role": "user", "content": str(i)})
    assert len(calls) == 3
    s.close()


def test_failed_write_leaves_no_fragment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _locked(tmp_path)
    s.append("init", model="m")

    def boom(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        s.append("message", message={"role": "user", "content": "lost"})
    monkeypatch.undo()
    # The failed entry was cut back, so a retry writes it exactly once.
    s.append("message", message={"role": "user", "content": "kept"})
    assert [e["kind"] for e in s.entries()] == ["init", "message"]
    assert s.messages() == [{"role": "user", "content": "kept"}]
    s.close()


def test_unserializable_field_writes_nothing(tmp_path: Path) -> None:
    s = _locked(tmp_path)
    with pytest.raises(TypeError):
        s.append("message", message={"x": object()})
    assert s.journal_path.read_bytes() == b""
    s.close()


def test_entries_written_together_land_together_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = _locked(tmp_path)
    result = {"role": "tool", "tool_call_id": "c1", "content": "ok"}
    with pytest.raises(TypeError):  # the second entry cannot be written: neither is
        s.append_all(("message", {"message": result}), ("tool_execution", {"id": object()}))
    assert s.journal_path.read_bytes() == b""
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    s.append_all(("message", {"message": result}), ("tool_execution", {"id": "c1", "ok": True}))
    assert len(fsyncs) == 1
    assert [e["kind"] for e in s.entries()] == ["message", "tool_execution"]
    assert s.messages() == [result]
    s.close()


def test_line_separator_in_content_is_not_a_line_break(tmp_path: Path) -> None:
    s = _locked(tmp_path)
    text = "a\u2028b\u2029c\x85d"
    s.append("message", message={"role": "user", "content": text})
    assert Session(s.path).messages() == [{"role": "user", "content": text}]
    s.close()


# -- torn and corrupt journals --------------------------------------------------------------------
def test_torn_last_line_is_skipped_with_warning(tmp_path: Path) -> None:
    s = _locked(tmp_path)
    s.append("message", message={"role": "user", "content": "one"})
    s.close()
    with open(s.journal_path, "ab") as f:
        f.write(b'{"kind": "message", "ts": "2024-01-01T00:00:00Z", "message": {"ro')

    reader = Session(s.path)
    assert reader.messages() == [{"role": "user", "content": "one"}]
    assert len(reader.warnings) == 1 and "last line 2" in reader.warnings[0]
    # Reading again does not repeat the warning.
    reader.entries()
    assert len(reader.warnings) == 1


def test_next_writer_cuts_off_torn_tail(tmp_path: Path) -> None:
    s = _locked(tmp_path, "t")
    s.append("message", message={"role": "user", "content": "one"})
    s.close()
    with open(s.journal_path, "ab") as f:
        f.write(b'{"kind": "mess')

    again = Session.open_or_create(tmp_path, "t")
    again.lock()
    assert any("torn" in w for w in again.warnings)
    again.append("message", message={"role": "assistant", "content": "two"})
    again.close()

    reader = Session(s.path)
    assert [m["content"] for m in reader.messages()] == ["one", "two"]
    assert reader.warnings == []


def test_complete_last_entry_missing_newline_is_kept(tmp_path: Path) -> None:
    s = _locked(tmp_path, "nl")
    s.append("message", message={"role": "user", "content": "one"})
    s.close()
    entry = {"kind": "message", "ts": "x", "message": {"role": "assistant", "content": "two"}}
    with open(s.journal_path, "ab") as f:
        f.write(json.dumps(entry).encode())

    again = Session.open_or_create(tmp_path, "nl")
    again.lock()
    again.append("message", message={"role": "user", "content": "three"})
    again.close()
    assert [m["content"] for m in Session(s.path).messages()] == ["one", "two", "three"]


def test_middle_garbage_line_skipped_with_line_number(tmp_path: Path) -> None:
    s = _locked(tmp_path)
    s.append("message", message={"role": "user", "content": "one"})
    with open(s.journal_path, "ab") as f:
        f.write(b"not json at all\n")
        f.write(b'["a list", "not an entry"]\n')
    s.append("message", message={"role": "assistant", "content": "two"})
    s.close()

    reader = Session(s.path)
    assert [m["content"] for m in reader.messages()] == ["one", "two"]
    assert len(reader.warnings) == 2
    assert "line 2 " in reader.warnings[0] and "line 3 " in reader.warnings[1]


def test_invalid_utf8_line_is_skipped(tmp_path: Path) -> None:
    s = _locked(tmp_path)
    with open(s.journal_path, "ab") as f:
        f.write(b'{"kind": "\xff"}\n')
    s.append("init", model="m")
    s.close()
    reader = Session(s.path)
    assert [e["kind"] for e in reader.entries()] == ["init"]
    assert "line 1 " in reader.warnings[0]


# -- messages / meta -----------------------------------------------------------------------------
def test_compaction_replaces_history(tmp_path: Path) -> None:
    s = _locked(tmp_path)
    s.append("init", model="m")
    s.append("message", message={"role": "system", "content": "sys"})
    s.append("message", message={"role": "user", "content": "long"})
    s.append("message", message={"role": "assistant", "content": "longer"})
    summary = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "summary of earlier work"},
    ]
    s.append("compaction", messages=summary, dropped=2)
    s.append("message", message={"role": "user", "content": "next"})
    s.append("tool_execution", id="c", name="bash", ok=True)
    s.append("end", status="finished")
    assert s.messages() == [*summary, {"role": "user", "content": "next"}]
    s.close()


def test_meta_empty_without_init(tmp_path: Path) -> None:
    assert Session.create(tmp_path).meta() == {}


# -- naming and finding -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["", ".hidden", "..", "a/b", "a b", "x" * 65, "é", "semi;colon", "../up"]
)
def test_invalid_names_rejected(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError) as err:
        Session.open_or_create(tmp_path, name)
    assert "1-64" in err.value.hint
    with pytest.raises(UsageError):
        Session.create(tmp_path, name)
    assert not (tmp_path / "sessions" / name).exists() or name in ("", "..")


@pytest.mark.parametrize("name", ["a", "my-chat_1.2", "x" * 64, "A.b"])
def test_valid_names_accepted(name: str) -> None:
    assert validate_name(name) == name


def test_create_refuses_existing_name(tmp_path: Path) -> None:
    Session.create(tmp_path, "dup")
    with pytest.raises(UsageError, match="already exists"):
        Session.create(tmp_path, "dup")


def test_open_or_create_resumes_same_folder(tmp_path: Path) -> None:
    first = Session.open_or_create(tmp_path, "work")
    first.lock()
    first.append("message", message={"role": "user", "content": "hi"})
    first.close()

    second = Session.open_or_create(tmp_path, "work")
    assert second.path == first.path and second.id == "work"
    assert second.messages() == [{"role": "user", "content": "hi"}]


def test_latest_picks_newest_and_filters(tmp_path: Path) -> None:
    old = Session.create(tmp_path, "alpha-old")
    mid = Session.create(tmp_path, "beta")
    new = Session.create(tmp_path, "Alpha-new")
    now = time.time()
    _set_mtime(old, now - 300)
    _set_mtime(new, now - 200)
    _set_mtime(mid, now - 100)

    assert Session.latest(tmp_path).id == "beta"
    assert Session.latest(tmp_path, "ALPHA").id == "Alpha-new"
    assert Session.latest(tmp_path, "old").id == "alpha-old"
    with pytest.raises(UsageError, match="no session matches 'zzz'") as err:
        Session.latest(tmp_path, "zzz")
    assert err.value.hint == "nex sessions lists them"


def test_latest_with_no_sessions(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no session"):
        Session.latest(tmp_path)


# -- the lock -----------------------------------------------------------------------------------
def test_append_without_lock_is_refused(tmp_path: Path) -> None:
    s = Session.create(tmp_path)
    with pytest.raises(ValueError, match="lock"):
        s.append("message", message={"role": "user", "content": "x"})
    s.lock()
    s.append("init", model="m")
    s.unlock()
    with pytest.raises(ValueError, match="lock"):
        s.append("end", status="finished")
    assert len(Session(s.path).entries()) == 1


def test_lock_is_idempotent_and_writes_pid(tmp_path: Path) -> None:
    s = Session.create(tmp_path)
    s.lock()
    s.lock()
    assert s.locked
    assert (s.path / "lock").read_text().strip() == str(os.getpid())
    s.close()
    s.close()
    assert not s.locked


def test_second_writer_in_same_process_is_refused(tmp_path: Path) -> None:
    a = Session.open_or_create(tmp_path, "one")
    a.lock()
    b = Session.open_or_create(tmp_path, "one")
    with pytest.raises(SessionLocked, match=f"pid {os.getpid()}"):
        b.lock()
    a.close()
    b.lock()
    b.close()


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from nexpy.session import Session
        s = Session.open_or_create(Path({str(tmp_path)!r}), "shared")
        s.lock()
        s.append("init", model="m")
        print("locked", flush=True)
        time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO, env=env
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "locked"
        mine = Session.open_or_create(tmp_path, "shared")
        started = time.monotonic()
        with pytest.raises(SessionLocked) as err:
            mine.lock()
        # Non-blocking: refused at once, not after waiting.
        assert time.monotonic() - started < 1.0
        assert f"(pid {child.pid})" in err.value.message
        assert "shared" in err.value.message
        assert err.value.hint == "wait for it to finish or pick another --chat name"
        [info] = list_sessions(tmp_path)
        assert info.status == "open"

        # A killed holder releases the lock with its process; the journal stays whole.
        child.kill()
        child.wait(timeout=10)
        assert list_sessions(tmp_path)[0].status == "interrupted"
        mine.lock()
        mine.append("message", message={"role": "user", "content": "after"})
        mine.close()
        assert [e["kind"] for e in mine.entries()] == ["init", "message"]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()


# -- secrets --------------------------------------------------------------------------------------
def test_secret_values_are_redacted_from_every_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOO_API_KEY", "sentinel-xyz-123")
    monkeypatch.setenv("GH_TOKEN", "tok-abcdefgh")
    monkeypatch.setenv("SHORT_TOKEN", "abc")
    s = _locked(tmp_path)
    s.append("init", model="m", note="key=sentinel-xyz-123")
    s.append("message", message={"role": "tool", "content": ["x", {"t": "tok-abcdefgh"}]})
    # Short values are too common to be treated as keys; the name alone is not a secret.
    s.append("message", message={"role": "user", "content": "abc"})
    s.append("init", api_key_env="FOO_API_KEY")
    text = s.journal_path.read_text()
    assert "sentinel-xyz-123" not in text and "tok-abcdefgh" not in text
    assert text.count("[redacted]") == 2
    assert len(s.entries()) == 4
    s.close()


def test_secret_guard_sees_keys_exported_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = _locked(tmp_path)
    s.append("init", model="m")
    monkeypatch.setenv("LATE_API_KEY", "late-secret-999")
    s.append("message", message={"role": "user", "content": "late-secret-999"})
    assert "late-secret-999" not in s.journal_path.read_text()
    s.close()


# -- listing ---------------------------------------------------------------------------------------
def test_list_sessions_newest_first_and_tolerant(tmp_path: Path) -> None:
    now = time.time()
    ended = _locked(tmp_path, "ended")
    ended.append("init", model="local:qwen")
    ended.append("message", message={"role": "user", "content": "q"})
    ended.append("message", message={"role": "assistant", "content": "a"})
    ended.append("end", status="finished")
    ended.close()
    _set_mtime(ended, now - 300)

    crashed = _locked(tmp_path, "crashed")
    crashed.append("init", model="openai:gpt")
    crashed.append("message", message={"role": "user", "content": "q"})
    crashed.close()
    _set_mtime(crashed, now - 200)

    running = _locked(tmp_path, "running")
    running.append("init", model="m")
    _set_mtime(running, now - 100)

    # Broken folders: the journal is a directory, garbage only, or missing.
    (tmp_path / "sessions" / "dirjournal" / "journal.jsonl").mkdir(parents=True)
    garbage = tmp_path / "sessions" / "garbage"
    garbage.mkdir()
    (garbage / "journal.jsonl").write_bytes(b"\x00\x01 not json\n")
    (tmp_path / "sessions" / "empty-dir").mkdir()
    for name in ("dirjournal", "garbage", "empty-dir"):
        folder = tmp_path / "sessions" / name
        for target in (folder / "journal.jsonl", folder):
            if target.exists():
                os.utime(target, (now - 400, now - 400))
    (tmp_path / "sessions" / "stray-file").write_text("x")

    rows = list_sessions(tmp_path)
    by_id = {r.id: r for r in rows}
    assert [r.id for r in rows][:3] == ["running", "crashed", "ended"]
    assert set(by_id) == {"running", "crashed", "ended", "dirjournal", "garbage", "empty-dir"}
    assert by_id["ended"].status == "ended:finished"
    assert by_id["ended"].messages == 2 and by_id["ended"].model == "local:qwen"
    assert by_id["crashed"].status == "interrupted" and by_id["crashed"].model == "openai:gpt"
    assert by_id["running"].status == "open"
    for name in ("dirjournal", "garbage", "empty-dir"):
        assert by_id[name].status == "unreadable" and by_id[name].messages == 0
    assert all(r.updated.tzinfo is not None for r in rows)
    running.close()
    assert list_sessions(tmp_path)[0].status == "interrupted"


def test_list_sessions_without_home(tmp_path: Path) -> None:
    assert list_sessions(tmp_path / "nowhere") == []
