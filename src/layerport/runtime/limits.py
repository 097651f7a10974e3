"""Sizes and the memory limit: parsing, formatting and checking byte counts.

A leaf module (errors, os and math only), so that array reading, weights
reading and the torch-free runtime can check allocations without importing the
registry or the layer configuration.
"""

from __future__ import annotations

import math
import os

from layerport.errors import ResourceLimit, UserInputError

DEFAULT_MEMORY_LIMIT = 4 * 2**30
MEMORY_LIMIT_VARIABLE = "LAYERPORT_MAX_MEMORY"


def memory_limit() -> int:
    """Bytes a single run or export may need, from ``LAYERPORT_MAX_MEMORY`` or the default."""
    text = os.environ.get(MEMORY_LIMIT_VARIABLE)
    if text is None:
        return DEFAULT_MEMORY_LIMIT
    try:
        return parse_bytes(text)
    except ValueError:
        raise UserInputError(
            f"{MEMORY_LIMIT_VARIABLE} must be a size such as 8G or 512M, got {text!r}"
        ) from None


def parse_bytes(text: str) -> int:
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "")
    value = float(number) * units[unit]
    if not math.isfinite(value) or value < 1:
        raise ValueError(text)
    return int(value)


def check_allocation(needed: int, what: str) -> None:
    """Refuse ``what``, which needs ``needed`` bytes, when that is over the memory limit."""
    limit = memory_limit()
    if needed > limit:
        raise ResourceLimit(
            f"{what} needs about {format_bytes(needed)}, over the {format_bytes(limit)} limit; "
            f"raise it with {MEMORY_LIMIT_VARIABLE}=SIZE (for example 16G) if this machine has "
            "the memory"
        )


def format_bytes(size: float) -> str:
    if size >= 2**50:
        # Absurd sizes (a parameter of 400 digits) would overflow a float below.
        return f"10^{len(str(int(size))) - 1} B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
