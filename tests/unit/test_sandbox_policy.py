"""The sandbox policy without running bwrap: precedence, no silent downgrade, the mount order."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexpy import sandbox
from nexpy.config import load_config
from nexpy.errors import ConfigError, UsageError
from nexpy.plan import SpawnRequest, plan_spawn
from nexpy.sandbox import OFF, READ_ONLY, WORKSPACE_WRITE, Sandbox, bwrap_args


@pytest.fixture
def bwrap_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "probe", lambda: ("/usr/bin/bwrap", ""))


@pytest.fixture
def bwrap_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "probe", lambda: (None, "bwrap is not on PATH"))


def _config(tmp_path: Path, text: str = "") -> object:
    (tmp_path / ".nex").mkdir(exist_ok=True)
    (tmp_path / ".nex" / "config.toml").write_text(text)
    return load_config(tmp_path, global_path=tmp_path / "none.toml")


def _plan(tmp_path: Path, config: str = "", env: dict | None = None, **request: object):
    req = SpawnRequest(model="stub:demo", **request)  # type: ignore[arg-type]
    return plan_spawn(req, _config(tmp_path, config), env or {})  # type: ignore[arg-type]


@pytest.mark.usefixtures("bwrap_works")
def test_defaults_autonomous_confined_repl_off(tmp_path: Path) -> None:
    auto = _plan(tmp_path, autonomous=True)
    assert auto.sandbox.mode == WORKSPACE_WRITE and not auto.sandbox.network
    assert "sandbox=workspace-write, network off (from default for --autonomous)" in auto.line()
    repl = _plan(tmp_path)
    assert repl.sandbox.mode == OFF
    assert "sandbox=off (from default for the REPL)" in repl.line()


@pytest.mark.usefixtures("bwrap_works")
def test_precedence_flag_env_config_default(tmp_path: Path) -> None:
    config = 'sandbox = "read-only"\nnetwork = true\n'
    from_config = _plan(tmp_path, config, autonomous=True)
    assert (from_config.sandbox.mode, from_config.sandbox.network) == (READ_ONLY, True)
    assert "(from ./.nex/config.toml)" in from_config.line()
    env = {"NEX_SANDBOX": "off"}
    assert _plan(tmp_path, config, env, autonomous=True).sandbox.mode == OFF
    flag = _plan(tmp_path, config, env, sandbox=WORKSPACE_WRITE)
    assert flag.sandbox.mode == WORKSPACE_WRITE
    assert "(from --sandbox)" in flag.line()
    assert _plan(tmp_path, sandbox=WORKSPACE_WRITE, network=True).sandbox.network


@pytest.mark.usefixtures("bwrap_works")
def test_unknown_mode_is_exit_2_naming_where_it_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown sandbox mode 'workspace' \(from env"):
        _plan(tmp_path, env={"NEX_SANDBOX": "workspace"})
    with pytest.raises(ConfigError, match=r"config\.toml"):
        _plan(tmp_path, 'sandbox = "on"\n')


@pytest.mark.usefixtures("bwrap_missing")
@pytest.mark.parametrize("how", ["flag", "env", "config"])
def test_asked_for_but_unavailable_is_a_usage_error(tmp_path: Path, how: str) -> None:
    kwargs: dict = {"sandbox": READ_ONLY} if how == "flag" else {}
    env = {"NEX_SANDBOX": READ_ONLY} if how == "env" else {}
    config = 'sandbox = "read-only"\n' if how == "config" else ""
    with pytest.raises(UsageError) as err:
        _plan(tmp_path, config, env, **kwargs)
    assert err.value.exit_code == 2
    assert "apt-get install bubblewrap" in err.value.line()
    assert "--sandbox off" in err.value.line()


@pytest.mark.usefixtures("bwrap_missing")
def test_default_unavailable_warns_once_and_says_off(tmp_path: Path) -> None:
    plan = _plan(tmp_path, autonomous=True)
    assert plan.sandbox.mode == OFF and not plan.sandbox.confined
    assert "sandbox=off (bwrap unavailable)" in plan.line()
    assert len(plan.warnings) == 1 and "bubblewrap" in plan.warnings[0]
    # Asking for off explicitly needs no bwrap and says nothing.
    assert _plan(tmp_path, sandbox=OFF, autonomous=True).warnings == []


def test_cli_handlers_are_not_said_to_be_confined(tmp_path: Path) -> None:
    plan = plan_spawn(
        SpawnRequest(model="claude:opus", sandbox=WORKSPACE_WRITE), _config(tmp_path), {}
    )
    assert not plan.sandbox.confined
    assert "sandbox=off (claude runs its own tools)" in plan.line()


def test_secret_covers_come_after_the_writable_work_dir(tmp_path: Path) -> None:
    """Later bwrap mounts cover earlier ones: a ~/.ssh inside the work dir stays covered."""
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".netrc").write_text("x")
    hidden = Sandbox(WORKSPACE_WRITE, bwrap="/b").hiding(tmp_path, tmp_path / "state").hidden
    args = bwrap_args(WORKSPACE_WRITE, tmp_path, hidden)
    work = args.index("--bind")
    assert args[work + 1 : work + 3] == [str(tmp_path), str(tmp_path)]
    assert args.index(str(tmp_path / ".ssh")) > work
    netrc = args.index(str(tmp_path / ".netrc"))
    assert args[netrc - 2 : netrc] == ["--ro-bind", "/dev/null"] and netrc > work
    for flag in ("--unshare-all", "--die-with-parent", "--proc", "--tmpfs"):
        assert flag in args
    assert "--share-net" not in args
    assert "--share-net" in bwrap_args(WORKSPACE_WRITE, tmp_path, network=True)
    ro = bwrap_args(READ_ONLY, tmp_path)
    assert "--bind" not in ro and ro[ro.index(str(tmp_path)) - 1] == "--ro-bind"


def test_every_listed_secret_is_hidden_and_the_list_is_in_one_place() -> None:
    box = Sandbox(WORKSPACE_WRITE, bwrap="/b").hiding(Path("/h"), Path("/state"))
    for name in (".ssh", ".aws", ".config/gcloud", ".netrc", ".docker"):
        assert box.is_hidden(Path("/h") / name / "inner")
    assert box.is_hidden(Path("/state/sessions/x/journal.jsonl"))
    assert not box.is_hidden(Path("/h/project/file.py"))
    assert not Sandbox(OFF).hiding(Path("/h"), Path("/state")).is_hidden(Path("/h/.ssh"))
