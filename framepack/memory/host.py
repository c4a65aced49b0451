"""How much host RAM may still be page-locked.

Page-locked memory cannot be swapped or reclaimed, so locking more than the system can
spare starves everything else (the OS pushes the rest of the process to swap, or the
allocation fails). Callers that lock memory ask ``lockable_bytes`` first.
"""

from __future__ import annotations

from pathlib import Path

MEMINFO = Path("/proc/meminfo")
# Left unlocked for the OS and the rest of the run (decoded frames, latents, the other models).
LOCK_MARGIN_BYTES = 2 << 30


def available_host_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes: free RAM plus what the kernel can
    reclaim (page cache, e.g. memory-mapped weights). None where it is not known (not Linux)."""
    try:
        text = MEMINFO.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        fields = value.split()  # "MemAvailable:   12345 kB"
        if name == "MemAvailable" and fields:
            return int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return None


def lockable_bytes() -> int | None:
    """Host bytes that may still be page-locked (available minus ``LOCK_MARGIN_BYTES``), or None when unknown."""
    available = available_host_bytes()
    return None if available is None else max(available - LOCK_MARGIN_BYTES, 0)
