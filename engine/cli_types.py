"""Argument types shared by `subspec`'s commands (engine.cli, engine.cli_models): a bad value is argparse's
one-line error and exit code 2, before anything loads."""

from __future__ import annotations

import argparse
import math
import re


def number(text: str, low: float, inclusive: bool, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < low or (value == low and not inclusive):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def positive(text: str) -> float:
    return number(text, 0.0, False, "a number > 0")


def non_negative(text: str) -> float:
    return number(text, 0.0, True, "a number >= 0")


def group_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 8 or value % 8:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 8 (64 is the paper's), got {value}")
    return value


def device(text: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text
