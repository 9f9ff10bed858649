"""Project instructions (nexpy.instructions): discovery order, the one-per-dir rule, the cap."""

from __future__ import annotations

from pathlib import Path

from nexpy.instructions import load, restore, system_prompt


def _tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    """outside/repo/sub/work, a repo at repo/, a config dir beside it."""
    repo = tmp_path / "outside" / "repo"
    work = repo / "sub" / "work"
    work.mkdir(parents=True)
    (repo / ".git").mkdir()
    config = tmp_path / "config"
    config.mkdir()
    return repo, work, config


def test_order_is_global_then_root_down_to_the_work_dir(tmp_path: Path) -> None:
    repo, work, config = _tree(tmp_path)
    (tmp_path / "outside" / "AGENTS.md").write_text("above the repo")
    (config / "AGENTS.md").write_text("global rule")
    (repo / "AGENTS.md").write_text("root rule")
    (repo / "sub" / "CLAUDE.md").write_text("sub rule")
    (work / "AGENTS.md").write_text("work rule")
    got = load(work, config)
    assert got.files == [
        str(config / "AGENTS.md"),
        str(repo / "AGENTS.md"),
        str(repo / "sub" / "CLAUDE.md"),
        str(work / "AGENTS.md"),
    ]
    # Nearest last, so it has the last word; nothing from above the repository root.
    text = got.text
    assert text.index("global rule") < text.index("root rule") < text.index("sub rule")
    assert text.index("sub rule") < text.index("work rule")
    assert "above the repo" not in text
    assert got.warnings == []


def test_agents_md_wins_over_claude_md_in_one_dir(tmp_path: Path) -> None:
    _, work, config = _tree(tmp_path)
    (work / "AGENTS.md").write_text("agents")
    (work / "CLAUDE.md").write_text("claude")
    got = load(work, config)
    assert got.files == [str(work / "AGENTS.md")]
    assert "claude" not in got.text


def test_without_a_repository_only_the_work_dir_counts(tmp_path: Path) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (tmp_path / "a" / "AGENTS.md").write_text("parent")
    (work / "AGENTS.md").write_text("here")
    assert load(work, None).files == [str(work / "AGENTS.md")]


def test_none_found_leaves_the_prompt_unchanged(tmp_path: Path) -> None:
    _, work, config = _tree(tmp_path)
    got = load(work, config)
    assert (got.files, got.text) == ([], "")
    assert system_prompt("base", got.text) == "base"


def test_cap_cuts_the_farthest_file_and_names_it(tmp_path: Path) -> None:
    repo, work, config = _tree(tmp_path)
    (repo / "AGENTS.md").write_text("root words " * 2000)
    (work / "AGENTS.md").write_text("keep this whole")
    got = load(work, config, max_tokens=300)
    assert "keep this whole" in got.text
    assert "[... cut" in got.text
    assert len(got.warnings) == 1 and str(repo / "AGENTS.md") in got.warnings[0]
    from nexpy.budget import TokenCounter

    assert TokenCounter().text(got.text) <= 300 + 40  # the header is outside the cap


def test_a_file_with_no_room_left_is_left_out_with_a_warning(tmp_path: Path) -> None:
    repo, work, config = _tree(tmp_path)
    (repo / "AGENTS.md").write_text("root")
    (work / "AGENTS.md").write_text("near " * 400)
    got = load(work, config, max_tokens=100)
    assert got.files == [str(work / "AGENTS.md")]
    assert any("left out" in w and str(repo / "AGENTS.md") in w for w in got.warnings)


def test_restore_returns_the_journaled_text(tmp_path: Path) -> None:
    entries = [
        {"kind": "init"},
        {"kind": "instructions", "files": ["/x/AGENTS.md"], "text": "T"},
        {"kind": "message"},
    ]
    got = restore(entries)
    assert got is not None and (got.files, got.text) == (["/x/AGENTS.md"], "T")
    assert restore([{"kind": "init"}]) is None
