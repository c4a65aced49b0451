"""Give back the pages of memory-mapped checkpoint tensors once they have been read.

A model loaded with ``storage="mmap"`` views its weights in the checkpoint file. Every
page a pass reads stays mapped into the process (counted in its RSS as file-backed
memory) until the kernel reclaims it under pressure, so a streamed pass over a 26 GB
checkpoint shows 26 GB of RSS and pushes other programs' memory out. ``release`` drops a
streamed block's pages from the process right after the streamer has copied them: the
bytes stay in the page cache (reclaimable, and reused if the block is read again soon),
and the next read of the tensor maps them back from there or from the file.

Safety, because ``MADV_DONTNEED`` discards rather than writes back:
  * only ranges inside a mapping registered here (``register``: the read-only,
    copy-on-write maps of ``framepack.models.loading.SafetensorsFile``) are ever advised;
    anonymous memory (a tensor copied, cast or concatenated at load) is never touched,
    as dropping it would zero the weights;
  * a page that has been written (a copy-on-write page is anonymous: an in-place edit of
    a mapped weight) is kept, since dropping it would silently revert the edit to the
    file's bytes. ``/proc/self/pagemap`` tells file pages from anonymous ones; where it
    cannot be read, nothing is released.
Only whole pages inside a tensor are dropped, so neighbours in the file keep theirs.
``release_mapping`` drops a whole file's pages once loading has read what it copies.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import weakref
from collections.abc import Iterable

import numpy as np
import torch
from torch._subclasses.fake_tensor import FakeTensor

PAGE = mmap.PAGESIZE
_PAGEMAP = "/proc/self/pagemap"
_PRESENT, _SWAPPED, _FILE = 1 << 63, 1 << 62, 1 << 61
_CHUNK_PAGES = 16384  # pagemap entries read at once (128 KiB, for 64 MiB of mapping)

# (start address, length, the map): every mapping whose pages ``release`` may drop
_MAPPINGS: list[tuple[int, int, weakref.ref[mmap.mmap]]] = []


def register(mapping: mmap.mmap) -> None:
    """Allow ``release`` on ``mapping``: a private (copy-on-write) map of a file, never written on purpose."""
    anchor = ctypes.c_char.from_buffer(mapping)  # only to read the address; dropped at once
    start = ctypes.addressof(anchor)
    del anchor
    _MAPPINGS[:] = [m for m in _MAPPINGS if m[2]() is not None]
    _MAPPINGS.append((start, len(mapping), weakref.ref(mapping)))


def _mapping_of(address: int, nbytes: int) -> tuple[int, mmap.mmap] | None:
    for start, length, ref in _MAPPINGS:
        if start <= address and address + nbytes <= start + length:
            mapping = ref()
            if mapping is not None and not mapping.closed:
                return start, mapping
    return None


def _drop_file_pages(pagemap: int, mapping: mmap.mmap, start: int, first: int, last: int) -> int:
    """madvise(DONTNEED) the present file pages of addresses [first, last) (page-aligned) of ``mapping``
    (mapped at ``start``), never an anonymous (written) or swapped page; returns the bytes advised."""
    dropped = 0
    for low in range(first, last, _CHUNK_PAGES * PAGE):
        pages = min(_CHUNK_PAGES, (last - low) // PAGE)
        raw = os.pread(pagemap, 8 * pages, 8 * (low // PAGE))
        if len(raw) != 8 * pages:
            return dropped
        entries = np.frombuffer(raw, dtype=np.uint64)
        present_file = (entries & np.uint64(_PRESENT | _FILE | _SWAPPED)) == np.uint64(_PRESENT | _FILE)
        # runs of droppable pages: [begin, end) page indices where the mask is true
        edges = np.flatnonzero(np.diff(np.concatenate(([0], present_file.view(np.int8), [0]))))
        for begin, end in zip(edges[::2], edges[1::2]):
            mapping.madvise(mmap.MADV_DONTNEED, low - start + int(begin) * PAGE, int(end - begin) * PAGE)
            dropped += int(end - begin) * PAGE
    return dropped


def release(tensors: Iterable[torch.Tensor]) -> int:
    """Drop the process's pages of those ``tensors`` that view a registered mapping; returns the bytes advised.

    Other tensors (anonymous, on a device, non-contiguous) are skipped, as are written pages."""
    if not _MAPPINGS:
        return 0
    try:
        pagemap = os.open(_PAGEMAP, os.O_RDONLY)
    except OSError:
        return 0
    released = 0
    try:
        for tensor in tensors:
            if tensor.device.type != "cpu" or not tensor.is_contiguous() or tensor.nbytes < PAGE:
                continue
            if isinstance(tensor, FakeTensor):  # the dry run's host weights: shapes without memory
                continue
            address = tensor.data_ptr()
            found = _mapping_of(address, tensor.nbytes)
            if found is not None:
                first = -(-address // PAGE) * PAGE
                last = (address + tensor.nbytes) // PAGE * PAGE
                released += _drop_file_pages(pagemap, found[1], found[0], first, last) if last > first else 0
    finally:
        os.close(pagemap)
    return released


def release_mapping(mapping: mmap.mmap) -> int:
    """Drop every file page of a registered ``mapping`` (after loading: the pages read to
    concatenate or cast tensors are not needed again; mapped tensors read theirs back on use)."""
    found = [(start, length) for start, length, ref in _MAPPINGS if ref() is mapping]
    if not found or mapping.closed:
        return 0
    try:
        pagemap = os.open(_PAGEMAP, os.O_RDONLY)
    except OSError:
        return 0
    try:
        start, length = found[0]
        return _drop_file_pages(pagemap, mapping, start, start, start + length // PAGE * PAGE)
    finally:
        os.close(pagemap)
