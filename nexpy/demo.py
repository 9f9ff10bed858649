"""`stub:demo`: an in-process scripted model so nex runs end to end with no server.

It performs a short real task through the same loop, tools and journal as any model: write a
program, run it with bash, read the file back, then answer with what the tools actually
returned. Its answers are derived from the conversation, so a tool that failed shows up in
the answer instead of being papered over.
"""

from __future__ import annotations

import json
from typing import Any

from nexpy.reply import Reply, TextCallback

PROGRAM = (
    "import platform\n"
    "\n"
    "squares = [n * n for n in range(1, 8)]\n"
    'print(f"hello from nex on Python {platform.python_version()}")\n'
    'print(f"sum of the first 7 squares: {sum(squares)}")\n'
)


def _call(n: int, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"demo_{n}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(args)},
    }


class DemoModel:
    """A deterministic model whose next step depends on the tool results it has seen."""

    def __init__(self, name: str = "demo") -> None:
        self.name = f"stub:{name}"

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        on_text: TextCallback,
        *,
        max_tokens: int | None = None,
    ) -> Reply:
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        results = [m for m in messages[last_user + 1 :] if m["role"] == "tool"]
        available = {t["function"]["name"] for t in tools or []}
        step = len(results)
        plan = [
            (
                "write_file",
                {"path": "hello.py", "content": PROGRAM},
                "I'll write a small Python program, run it, and check the file.",
            ),
            ("bash", {"command": "python3 hello.py"}, "Now let me run it."),
            ("read_file", {"path": "hello.py"}, "And read the file back to confirm it is saved."),
        ]
        if step < len(plan) and plan[step][0] in available:
            name, args, text = plan[step]
            return self._say(text, on_text, [_call(len(messages), name, args)], messages)
        return self._say(self._answer(messages, results, available), on_text, [], messages)

    def _answer(
        self, messages: list[dict[str, Any]], results: list[dict[str, Any]], available: set[str]
    ) -> str:
        if not results:
            if not available:
                return "Summary: no tools were available to me in this turn, so I did nothing."
            return "The demo model needs write_file, bash and read_file (not --read-only)."
        ran = results[1]["content"].strip() if len(results) > 1 else "(not run)"
        return (
            "Done. I wrote `hello.py`, ran it with `python3 hello.py`, and it printed:\n\n"
            f"```\n{ran}\n```\n\n"
            f"The file is {len(PROGRAM.splitlines())} lines long and is in the work directory."
        )

    def _say(
        self,
        text: str,
        on_text: TextCallback,
        calls: list[dict[str, Any]],
        messages: list[dict[str, Any]],
    ) -> Reply:
        words = text.split(" ")
        for i, word in enumerate(words):
            on_text(word if i == len(words) - 1 else word + " ")
        prompt = sum(len(str(m.get("content") or "")) for m in messages) // 4
        usage = {"prompt_tokens": prompt, "completion_tokens": max(1, len(text) // 4)}
        return Reply(text, calls, usage, "tool_calls" if calls else "stop")
