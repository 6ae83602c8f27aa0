"""Batch buffers kept and reused, so each batch's pixels and mel land in memory already mapped.

A fresh batch buffer costs more than filling it: the kernel maps and zeroes its pages at their
first touch, and a DataLoader worker's shared-memory tensor is also created, sent as a file
descriptor, mapped again by the trainer, then torn down (issue 19, `bench/loader.py`: about
200 page faults and 0.5 ms of CPU a sample with two workers, 40 faults and 0.15 ms with
none). A `BatchPool` holds a few batches' buffers in one block of anonymous shared memory,
allocated once before any worker forks, so every process has it mapped once. A worker fills
a slot of its own and sends only the slot's number; the trainer's side turns it into tensors
over its own mapping of that memory. Without workers the main process fills the slots.

A slot is free again once every tensor and array over it is gone (a `weakref.finalize` on the
one array all of them hold), however long the consumer keeps a batch, so a batch is never
overwritten while anything can still read it. When a worker's slots are all taken (a
consumer holding many batches) it allocates a fresh buffer, as without a pool. A slot whose
batch the DataLoader discards unread (an iteration left early) is not reused: its worker falls
back to fresh buffers once its other slots are taken."""

from __future__ import annotations

import math
import mmap
import secrets
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# Slots per DataLoader worker (or for the main process without workers): the DataLoader
# keeps two batches per worker in flight (its prefetch), one is being filled, and the
# consumer holds the batch it trains on while the next one is fetched.
SLOTS_PER_WORKER = 4
_ALIGN = 64  # bytes: each array of a slot starts on a cache line
_HUGE_PAGE = 2 << 20  # bytes: x86-64's transparent huge page


@dataclass(frozen=True)
class SlotLayout:
    """The arrays of one slot, each (name, byte offset, shape, dtype), and the slot's bytes."""

    arrays: tuple[tuple[str, int, tuple[int, ...], np.dtype[Any]], ...]
    nbytes: int

    @classmethod
    def of(cls, shapes: Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]]) -> SlotLayout:
        offset, arrays = 0, []
        for name, (shape, dtype) in shapes.items():
            arrays.append((name, offset, shape, dtype))
            offset += -(-math.prod(shape) * dtype.itemsize // _ALIGN) * _ALIGN
        return cls(tuple(arrays), offset)


class BatchPool:
    """`SLOTS_PER_WORKER` slots for each of `workers` DataLoader workers (for the main process
    with none) in one block of memory shared with them (they must be forked after it exists).
    Worker w takes only slots of its own group, so no two processes ever fill one slot; the
    trainer's side frees them."""

    live: weakref.WeakValueDictionary[str, BatchPool] = weakref.WeakValueDictionary()

    def __init__(self, layout: SlotLayout, workers: int) -> None:
        self.layout = layout
        count = SLOTS_PER_WORKER * max(1, workers)
        self._memory = _slots_memory(layout.nbytes * count, shared=workers > 0)
        self._busy = mmap.mmap(-1, count)  # one byte a slot: 1 while taken
        self.token = secrets.token_hex(8)  # how a chunk names its pool (`find`)
        BatchPool.live[self.token] = self

    @classmethod
    def find(cls, token: str) -> BatchPool:
        """The live pool a worker's chunk names (the pinning thread has only the chunk)."""
        return cls.live[token]

    def take(self, group: int) -> int | None:
        """A free slot of worker `group` (0 without workers), now taken; None when all of them
        are taken."""
        for slot in range(group * SLOTS_PER_WORKER, (group + 1) * SLOTS_PER_WORKER):
            if self._busy[slot] == 0:
                self._busy[slot] = 1
                return slot
        return None

    def arrays(self, slot: int, rows: int | None = None, *,
               release: bool) -> dict[str, np.ndarray]:
        """The slot's arrays, each its first `rows` samples (None: all). With `release` the
        slot is freed once they, and every array and tensor over them, are gone: the
        trainer's side passes it, the worker that fills the slot does not."""
        start = slot * self.layout.nbytes
        # An array over a fresh memoryview: numpy's views of it keep it (their base stops at
        # an array whose base is not an array), so it lives exactly as long as any of them.
        anchor = np.frombuffer(self._memory[start:start + self.layout.nbytes], np.uint8)
        if release:
            weakref.finalize(anchor, self.free, slot)
        views = {}
        for name, offset, shape, dtype in self.layout.arrays:
            whole = anchor[offset:offset + math.prod(shape) * dtype.itemsize]
            views[name] = whole.view(dtype).reshape(shape)[:rows]
        return views

    def free(self, slot: int) -> None:
        """Slot `slot` may be taken again: called by the consumer's side once nothing reads it
        (`arrays` with `release`), or by a worker for a slot it took and never handed on."""
        self._busy[slot] = 0

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a BatchPool is inherited by forked workers, never pickled: with the "
                        "spawn or forkserver start method the loader runs without one")


def leading(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The first elements of contiguous `array` as an array of `shape`, over the same memory:
    how a slot's video, sized for RGB clips, holds a batch of I420 ones (half its bytes)."""
    return array.reshape(-1)[:math.prod(shape)].reshape(shape)


def _slots_memory(nbytes: int, *, shared: bool) -> memoryview:
    """`nbytes` of zeroed memory for the slots. Shared with forked workers: anonymous
    MAP_SHARED memory, so a worker writes what the parent reads (and /dev/shm's size, which
    bounds torch's shared tensors, does not count it). Without workers: private memory in
    transparent huge pages where the kernel allows them (``madvise`` mode), 2 MB aligned:
    writing a batch into 4 KB pages missed the TLB on every page, whose walk under a virtual
    machine's nested paging cost more than the copy (issue 19, `bench/loader.py`: 0.2 ms of
    the 0.3 MB an I420 clip writes). Shared memory stays in small pages (shmem huge pages are
    off by default)."""
    if shared:
        return memoryview(mmap.mmap(-1, nbytes))
    memory = mmap.mmap(-1, nbytes + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        memory.madvise(mmap.MADV_HUGEPAGE)
    start = -np.frombuffer(memory, np.uint8, count=1).ctypes.data % _HUGE_PAGE
    return memoryview(memory)[start:start + nbytes]
