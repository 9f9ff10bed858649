"""The bash sandbox (issue 14): its modes, what it never shows, and the `bwrap` command line.

    read-only        bash reads the filesystem, writes only a private /tmp
    workspace-write  the work dir and a private /tmp writable, the rest read-only
    off              bash runs with the user's rights, as before

Both confined modes run the command under bubblewrap with every namespace unshared: a new PID
namespace with its own /proc (nex's process cannot be seen, signalled or read), no network
(the sandbox's loopback is its own, so a listener on the host's 127.0.0.1 is out of reach too)
unless `network` is on, no capabilities, `no_new_privs` (setuid binaries such as sudo do not
elevate), and the paths in `SECRET_PATHS`, the nex state dir and /run (host sockets such as
docker's or the session bus, which a read-only mount does not stop) covered by empty mounts.

Whether the sandbox is in force is decided once per run by `choose()`; it never falls back to
running unconfined while saying it is confined (issue 14: "no silent downgrade").
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from nexpy.errors import ConfigError, UsageError

READ_ONLY, WORKSPACE_WRITE, OFF = "read-only", "workspace-write", "off"
MODES = (READ_ONLY, WORKSPACE_WRITE, OFF)
PACKAGE = "bubblewrap"  # the Debian/Ubuntu/Fedora package that provides `bwrap`
INSTALL_HINT = f"install {PACKAGE} (apt-get install {PACKAGE}) or pass --sandbox off"

# The user's secrets, relative to $HOME: never mounted inside the sandbox. The nex state dir
# (session journals, kept outputs) is added at run time, since NEX_HOME can move it.
SECRET_PATHS = (
    ".ssh",
    ".aws",
    ".config/gcloud",
    ".netrc",
    ".docker",
    ".gnupg",
    ".kube",
    ".azure",
    ".git-credentials",
    ".config/gh",
    ".npmrc",
    ".pypirc",
)
# Host directories of unix sockets: connect() works on a socket in a read-only mount, and a
# socket such as docker's or the session bus is a way out of any sandbox.
SOCKET_DIRS = ("/run",)
# Kept visible in /run when the network is open: the resolver's stub file on systemd hosts.
RESOLVER_DIRS = ("/run/systemd/resolve",)


class Sandbox(NamedTuple):
    """The sandbox in force for a run's bash calls and file tools.

    A NamedTuple, not a dataclass: the CLI imports this module for `--help`, which must stay
    quick (dataclasses, subprocess and shutil cost more to import than all of argparse)."""

    mode: str = OFF
    network: bool = False
    bwrap: str | None = None  # absolute path of the binary the probe found
    hidden: tuple[Path, ...] = ()  # secret paths, made absolute
    note: str = ""  # why it is off although a default asked for it ("bwrap unavailable")

    @property
    def confined(self) -> bool:
        return self.mode != OFF

    @property
    def writable(self) -> bool:
        """Whether tools may write in the work dir."""
        return self.mode != READ_ONLY

    def describe(self) -> str:
        """The mode as the plan line, `session.started` and the REPL's status line say it."""
        if not self.confined:
            return f"off ({self.note})" if self.note else OFF
        return f"{self.mode}, network {'on' if self.network else 'off'}"

    def hiding(self, home: Path, state_dir: Path) -> Sandbox:
        """This sandbox with the secret paths under `home` and the nex state dir hidden."""
        paths = [home / p for p in SECRET_PATHS] + [state_dir]
        return self._replace(hidden=tuple(paths))

    def is_hidden(self, path: Path) -> bool:
        """Whether a resolved path lies in something the sandbox hides (file tools ask)."""
        return self.confined and any(path.is_relative_to(os.path.realpath(h)) for h in self.hidden)

    def wrap(self, argv: list[str], workdir: Path) -> list[str]:
        """`argv` run inside the sandbox, with `workdir` as its current directory."""
        if not self.confined:
            return argv
        if self.bwrap is None:
            raise RuntimeError("a confined Sandbox needs the bwrap path from probe()")
        return [self.bwrap, *bwrap_args(self.mode, workdir, self.hidden, self.network), *argv]


def bwrap_args(
    mode: str, workdir: Path, hidden: Iterable[Path] = (), network: bool = False
) -> list[str]:
    """bwrap's options for `mode`. Later mounts cover earlier ones, so the order matters:
    the whole tree read-only, then the private /tmp and the writable work dir, then the
    covers over secrets (which win even where they lie inside the work dir)."""
    work = os.path.realpath(workdir)
    args = ["--unshare-all", "--die-with-parent", "--cap-drop", "ALL"]
    if network:
        args.append("--share-net")
    args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for d in SOCKET_DIRS:
        if os.path.isdir(d) and not os.path.islink(d):
            args += ["--tmpfs", d]
    if network:
        for d in RESOLVER_DIRS:
            args += ["--ro-bind-try", d, d]
    args += ["--bind" if mode == WORKSPACE_WRITE else "--ro-bind", work, work]
    for path in hidden:
        real = os.path.realpath(path)
        if os.path.isdir(real):
            # An empty read-only tmpfs: the folder is there, its contents are not.
            args += ["--tmpfs", real, "--remount-ro", real]
        elif os.path.lexists(real):
            args += ["--ro-bind", "/dev/null", real]
    # TMPDIR may name a host folder that is read-only in here; /tmp is the private one.
    args += ["--setenv", "TMPDIR", "/tmp", "--chdir", work]
    return args


@functools.cache
def probe() -> tuple[str | None, str]:
    """(path of bwrap, "") when it can build a sandbox here, else (None, why not)."""
    import shutil
    import subprocess

    found = shutil.which("bwrap")
    if found is None:
        return None, "bwrap is not on PATH"
    argv = [found, *bwrap_args(WORKSPACE_WRITE, Path("/"), ()), "true"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{found} could not run: {e}"
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return None, f"{found} cannot create namespaces here ({said})"
    return found, ""


def choose(
    *,
    flag: str | None,
    env: Mapping[str, str],
    config: str | None,
    config_source: str | None,
    autonomous: bool,
    network: bool,
) -> tuple[Sandbox, str, list[str]]:
    """The sandbox for a run, where its mode came from, and warnings to print.

    Precedence: --sandbox > NEX_SANDBOX > config > default (workspace-write for a run without
    prompts, off for the REPL). A mode the user asked for that cannot be had is an error
    (exit 2); a default that cannot be had is one warning and `off (bwrap unavailable)`.
    """
    candidates = (
        (flag, "--sandbox"),
        (env.get("NEX_SANDBOX") or None, "env NEX_SANDBOX"),
        (config, config_source or "config"),
    )
    mode, source = next(((v, s) for v, s in candidates if v is not None), (None, "default"))
    if mode is None:
        mode = WORKSPACE_WRITE if autonomous else OFF
        source = "default for --autonomous" if autonomous else "default for the REPL"
    elif mode not in MODES:
        err = UsageError if source == "--sandbox" else ConfigError
        raise err(f"unknown sandbox mode {mode!r} (from {source})", hint=f"use {', '.join(MODES)}")
    if mode == OFF:
        return Sandbox(OFF), source, []
    bwrap, why = probe()
    if bwrap is not None:
        return Sandbox(mode, network, bwrap), source, []
    if source.startswith("default"):
        warning = f"running bash without a sandbox: {why}; install {PACKAGE} to confine it"
        return Sandbox(OFF, note="bwrap unavailable"), source, [warning]
    raise UsageError(f"--sandbox {mode} (from {source}) is not available: {why}", hint=INSTALL_HINT)
