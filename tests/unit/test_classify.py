"""Error classification: what a server said, as one line a person can read."""

from __future__ import annotations

import pytest

from nexpy.classify import server_words


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
