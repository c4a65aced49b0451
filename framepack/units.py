"""Sizes for people: the one formatter every memory message uses."""

from __future__ import annotations

GIB = 1 << 30  # budgets are in GiB, as CUDA tools report memory


def format_bytes(nbytes: int) -> str:
    """Human-readable size in binary units (what ``nvidia-smi`` and the budget use)."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes} B"
