"""What the commands share: the parser that reports bad arguments in one line, argument types."""

from __future__ import annotations

import argparse
import math


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit code 2."""

    def error(self, message: str) -> None:  # one line, exit code 2
        self.exit(2, f"catapults: error: {message}\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the option in its message)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def spike_ratio(text: str) -> float:
    """argparse type: a finite number > 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 1):
        raise argparse.ArgumentTypeError(f"must be a finite number > 1, got {text}")
    return value


def add_overrides(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """The repeatable ``--set KEY=VALUE`` option."""
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help=help)
