"""The background litellm import waits for the main thread to go idle (or to ask for litellm),
so it never competes with drawing the REPL prompt."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from nexpy import litellm_setup

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the main thread's state from /proc"
)


def _gate_in_thread() -> tuple[threading.Thread, list[float]]:
    opened: list[float] = []

    def gate() -> None:
        litellm_setup._wait_for_idle_main()
        opened.append(time.monotonic())

    thread = threading.Thread(target=gate, daemon=True)
    thread.start()
    return thread, opened


def test_the_gate_stays_shut_while_the_main_thread_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(litellm_setup, "_wanted", threading.Event())
    thread, opened = _gate_in_thread()
    busy_until = time.monotonic() + 0.3
    while time.monotonic() < busy_until:
        sum(range(1000))  # keep the main thread running, never asleep
    assert opened == []
    thread.join(2)  # joining puts the main thread to sleep: the gate opens
    assert opened and opened[0] >= busy_until


def test_asking_for_litellm_opens_the_gate_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    wanted = threading.Event()
    monkeypatch.setattr(litellm_setup, "_wanted", wanted)
    thread, opened = _gate_in_thread()
    start = time.monotonic()
    wanted.set()
    while thread.is_alive() and time.monotonic() - start < 2:
        sum(range(1000))  # busy: only the request can have opened it
    assert opened and opened[0] - start < 0.2


def test_the_main_thread_is_seen_asleep_in_a_blocking_wait() -> None:
    seen = threading.Event()

    def look() -> None:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            if litellm_setup._main_thread_sleeping():
                seen.set()
                return
            time.sleep(0.005)

    thread = threading.Thread(target=look)
    thread.start()
    thread.join()  # the main thread sleeps here while the thread looks
    assert seen.is_set()
