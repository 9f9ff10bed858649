"""Loading litellm: the environment it needs first, and a background import nothing waits for.

litellm is heavy (≈2.8 s, ≈2,600 modules) and chatty, so nexpy never imports it at import time.
`start_background_import()` starts a thread at launch that loads it as soon as the main thread
goes idle; `litellm()` waits for it. Environment hygiene (DESIGN §8) happens exactly once,
before the import (`prepare_environment`, which tiktoken needs too).
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from pathlib import Path
from types import ModuleType

from nexpy.errors import ProviderError

_lock = threading.Lock()
_thread: threading.Thread | None = None
_module: ModuleType | None = None
_import_error: BaseException | None = None
_wanted = threading.Event()  # someone is waiting for litellm: import it now

# Importing litellm is ~2.8 s of pure-Python work. In a thread it takes turns at the GIL with the
# main thread, so started at once it roughly doubles the time to draw the REPL prompt. It starts
# instead when the main thread first sleeps (waiting for input, or for litellm itself), or when
# someone asks for it, or after a cap.
_IDLE_POLL = 0.01  # seconds between looks at the main thread
_IDLE_LOOKS = 3  # consecutive looks at a sleeping main thread that count as idle
_IDLE_CAP = 2.0  # seconds after which the import starts regardless


def prepare_environment() -> None:
    """Set what must be set before litellm (or tiktoken) is imported. Idempotent."""
    # Never fetch the cost map (5 s on a hanging network), never load a .env from the cwd.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    # litellm scans every message of every request for base64 to shorten in its logs; nex keeps
    # no litellm logs, and the scan is the largest cost of a request late in a long session.
    os.environ.setdefault("MAX_BASE64_LENGTH_FOR_LOGGING", "0")
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        # tiktoken downloads its encodings; litellm ships cl100k/o200k/p50k: use those offline.
        spec = importlib.util.find_spec("litellm")
        if spec and spec.submodule_search_locations:
            bundled = Path(next(iter(spec.submodule_search_locations)))
            tokenizers = bundled / "litellm_core_utils" / "tokenizers"
            if tokenizers.is_dir():
                os.environ["TIKTOKEN_CACHE_DIR"] = str(tokenizers)


def _main_thread_sleeping() -> bool | None:
    """Whether the main thread is asleep (state S); None where the OS cannot tell (not Linux)."""
    tid = threading.main_thread().native_id
    try:
        with open(f"/proc/self/task/{tid}/stat", "rb") as f:
            # The command name in parentheses may hold spaces; the state follows the last ")".
            return f.read().rsplit(b")", 1)[1].split()[0] == b"S"
    except (OSError, IndexError):
        return None


def _wait_for_idle_main() -> None:
    deadline = time.monotonic() + _IDLE_CAP
    looks = 0
    while looks < _IDLE_LOOKS and time.monotonic() < deadline:
        if _wanted.wait(_IDLE_POLL):
            return
        sleeping = _main_thread_sleeping()
        if sleeping is None:
            return
        looks = looks + 1 if sleeping else 0


def _import() -> None:
    global _module, _import_error
    try:
        _wait_for_idle_main()
        prepare_environment()
        import litellm as lm

        lm.suppress_debug_info = True  # it prints banners to stdout otherwise
        lm.disable_hf_tokenizer_download = True  # token_counter stalls 23 s offline
        lm.telemetry = False
        lm.drop_params = True  # local servers reject params they do not know
        lm.disable_streaming_logging = True  # per-chunk logging work for callbacks nex never sets
        import logging

        logging.getLogger("LiteLLM").setLevel(logging.ERROR)
        _module = lm
    except BaseException as e:  # surfaced to the caller of litellm()
        _import_error = e


def loaded() -> ModuleType | None:
    """litellm if its import has finished, else None (never waits)."""
    return _module


def start_background_import() -> None:
    """Begin importing litellm in a daemon thread, as soon as the main thread goes idle, so no
    prompt ever waits for it."""
    global _thread
    with _lock:
        if _thread is None and _module is None:
            _thread = threading.Thread(target=_import, name="litellm-import", daemon=True)
            _thread.start()


def litellm() -> ModuleType:
    """The litellm module, waiting for the background import if it is still running."""
    start_background_import()
    assert _thread is not None
    _wanted.set()
    _thread.join()
    if _module is None:
        raise ProviderError(f"cannot load litellm: {_import_error}", hint="reinstall nexpy")
    return _module
