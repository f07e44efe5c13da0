"""Durations and sizes as a source file writes them (`30s`, `10MB`), turned into seconds and bytes."""

from __future__ import annotations

import re

from runner.sourcefile import show

_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)$")

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}

MAX_DURATION = 3650 * 86400.0  # ten years: longer is a typo, and asyncio cannot sleep for 1e300 s

_SIZE = re.compile(r"^([0-9]+)(B|KB|MB|GB|KiB|MiB|GiB)$")

MAX_SIZE_DIGITS = 15  # a petabyte of GB: far beyond any body, far below CPython's int-string limit

_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def parse_duration(value: str | float) -> float:
    """`500ms`, `30s`, `1m`, `1h`, `7d` or a number of seconds -> seconds; ValueError otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        seconds = float(value)
    elif (match := _DURATION.match(value) if isinstance(value, str) else None) is not None:
        seconds = float(match[1]) * _DURATION_UNITS[match[2]]
    else:
        raise ValueError(f"{show(value)} is not a duration (use 500ms, 30s, 1m, 1h, 7d)")
    if not seconds <= MAX_DURATION:  # also inf and nan
        raise ValueError(f"{show(value)} is out of range: must be at most 3650d")
    return seconds


def parse_size(value: str | int) -> int:
    """`512KB`, `10MB`, `1GB` (`KiB`/`MiB`/`GiB` binary) or a number of bytes -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"{show(value)} is not a size (use 512KB, 10MB, 1GB or a number of bytes)")
    if len(match[1].lstrip("0")) > MAX_SIZE_DIGITS:
        raise ValueError(f"{show(value)} is out of range: a size has at most {MAX_SIZE_DIGITS} digits")
    return int(match[1]) * _SIZE_UNITS[match[2]]
