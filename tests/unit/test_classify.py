"""Error classification: what a server said, as one line a person can read."""

from __future__ import annotations

import json

import pytest

from nexpy import adapt
from nexpy.classify import classify, server_words
from nexpy.config import Config
from nexpy.errors import BadRequestError
from nexpy.plan import SpawnRequest, plan_spawn


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('litellm.BadRequestError: OpenAIException - {"error": {"message": "bad"}}', "bad"),
        ('{"error": "model \\"x\\" not found"}', 'model "x" not found'),
        ('{"detail": "Not Found"}', "Not Found"),
        (
            "<!DOCTYPE html><html><head><title>Login</title>",
            "an HTML page ('Login'), likely from a proxy",
        ),
        ("Internal Server Error\n\nmore", "Internal Server Error more"),
    ],
)
def test_server_words(text: str, expected: str) -> None:
    assert server_words(text) == expected


# llama.cpp's own engine wraps a template's exception deep in a long message (measured on the
# real llama-server with the Llama 3.1 template): the line shown is cut, what adapts is not.
LLAMA_CPP_REFUSAL = json.dumps(
    {
        "error": {
            "code": 400,
            "message": "Unable to generate parser for this template. Automatic parser generation "
            "failed: \n------------\nWhile executing CallExpression at line 71, column 32 in "
            'source:\n... == 1 %}↵            {{- raise_exception("This model only supports '
            "single tool-c...\n                                           ^\nError: Jinja "
            "Exception: This model only supports single tool-calls at once!",
            "type": "invalid_request_error",
        }
    }
)


class _Refused(Exception):
    status_code = 400


def test_a_long_template_refusal_keeps_its_whole_text_for_the_adaptations() -> None:
    plan = plan_spawn(SpawnRequest("local:m", "http://127.0.0.1:9/v1"), Config(), environ={})
    error = classify(_Refused(LLAMA_CPP_REFUSAL), plan)
    assert isinstance(error, BadRequestError)
    assert len(error.message) < 400 and "at once" not in error.message  # one short line
    rule = adapt.learn(error.refusal, [])
    assert rule is not None and rule.name == "single-tool-call"
