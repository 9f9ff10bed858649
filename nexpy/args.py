"""Command-line parsing shared by `nex` and `nex doctor`: errors as one line, positive numbers."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from nexpy.errors import UsageError


class UsageParser(argparse.ArgumentParser):
    """argparse whose errors are UsageError: one line, exit 2, a hint naming --help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, hint=f"see {self.prog} --help")


Number = TypeVar("Number", int, float)


def positive(kind: Callable[[str], Number]) -> Callable[[str], Number]:
    """An argparse `type=` that accepts only a positive int (or float)."""
    what = "a whole number" if kind is int else "a number"

    def parse(value: str) -> Number:
        try:
            n = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not {what}") from None
        if n <= 0:
            raise argparse.ArgumentTypeError(f"{value!r} must be positive")
        return n

    return parse
