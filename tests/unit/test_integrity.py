"""nexpy.integrity's rule for a whole (unstreamed) body, per wire format."""

from __future__ import annotations

import json

import pytest

from nexpy.integrity import BodyCut, check_body

CHAT = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]}
OLLAMA = {"model": "m", "message": {"role": "assistant", "content": "hi"}}


@pytest.mark.parametrize(
    ("body", "complete"),
    [
        ({**CHAT, "choices": [{**CHAT["choices"][0], "finish_reason": "stop"}]}, True),
        ({**CHAT, "choices": [{**CHAT["choices"][0], "finish_reason": "length"}]}, True),
        (CHAT, False),
        ({**OLLAMA, "done": True, "done_reason": "stop"}, True),
        ({**OLLAMA, "done": False}, False),
        (OLLAMA, False),
        ({"error": {"message": "boom"}}, True),  # an error object: classified elsewhere
        ({"prompt": "<rendered>"}, True),  # llama.cpp's /apply-template: no answer in it
    ],
    ids=["chat-stop", "chat-length", "chat-no-finish", "ollama-done", "ollama-not-done",
         "ollama-no-done", "error", "other"],
)  # fmt: skip
def test_a_whole_body_is_judged_by_its_own_format(body: dict, complete: bool) -> None:
    data = json.dumps(body).encode()
    if complete:
        check_body(data)
    else:
        with pytest.raises(BodyCut):
            check_body(data)


def test_a_body_cut_short_is_a_cut() -> None:
    with pytest.raises(BodyCut):
        check_body(b'{"choices": [{"index": 0, "message": {"content": "hal')
