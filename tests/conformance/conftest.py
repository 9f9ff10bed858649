"""The conformance tier's shared state: the llama-server pool and the templates one engine
cannot render for nex's requests (the table is tests/conformance/table.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.peers.llama_server import SERVER_BIN, LlamaServerPool

# Templates the transformers engine cannot render for some requests nex sends, whatever the
# adaptation (measured by this tier and the property): their rows are xfails with the engine's
# message. One that starts passing fails its test: drop it from here then. Empty since Kimi K2
# and llama.cpp's DeepSeek R1 template are adapted (tools-in-prompt).
INCOMPATIBLE: dict[str, str] = {}


@pytest.fixture(scope="session")
def llama_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServerPool]:
    """One real llama-server at a time, for the template the running test asks for."""
    if not SERVER_BIN.exists():
        pytest.fail(f"no llama-server at {SERVER_BIN}: run make peers")
    pool = LlamaServerPool(tmp_path_factory.mktemp("llama-server"))
    yield pool
    pool.close()
