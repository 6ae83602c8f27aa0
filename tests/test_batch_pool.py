"""Reused batch buffers of the shard loader's workers (`pipeline.loader.batch_pool`): a slot
is reused only once nothing reads it, batches stay the ones fresh buffers give, and the
loader runs without a pool where workers cannot inherit one."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_loader import write_shards

from pipeline.loader import shard_loader as loader_module
from pipeline.loader.batch_pool import SLOTS_PER_WORKER, BatchPool, SlotLayout
from pipeline.loader.batches import Batch
from pipeline.loader.shard_loader import build_shard_loader
from pipeline.normalize import to_model_units

LAYOUT = SlotLayout.of({"video": ((2, 3, 4, 8, 8), np.dtype(np.uint8)),
                        "audio": ((2, 5, 7), np.dtype(np.float16))})


def test_a_slot_is_taken_again_only_once_every_view_of_it_is_gone() -> None:
    pool = BatchPool(LAYOUT, workers=1)
    slots = [pool.take(0) for _ in range(SLOTS_PER_WORKER)]
    assert sorted(slots) == list(range(SLOTS_PER_WORKER))  # type: ignore[type-var]
    assert pool.take(0) is None  # all taken: the worker falls back to fresh buffers
    arrays = pool.arrays(slots[0], 1, release=True)  # type: ignore[arg-type]
    assert arrays["video"].shape == (1, 3, 4, 8, 8) and arrays["audio"].dtype == np.float16
    kept = torch.from_numpy(arrays["audio"])[0, 1:]  # a view of a view, through torch
    del arrays
    gc.collect()
    assert pool.take(0) is None  # the tensor still reads the slot
    del kept
    assert pool.take(0) == slots[0]
    unreleased = pool.arrays(slots[1], release=False)  # a worker's own view frees nothing
    del unreleased
    gc.collect()
    assert pool.take(0) is None


def test_pool_arrays_do_not_overlap_and_are_shared_with_a_forked_child() -> None:
    import multiprocessing

    pool = BatchPool(LAYOUT, workers=2)
    child = multiprocessing.get_context("fork").Process(
        target=lambda: pool.arrays(5, release=False)["audio"].fill(3.5))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert (pool.arrays(5, release=False)["audio"] == 3.5).all()  # what the child wrote
    for slot in (4, 6):
        arrays = pool.arrays(slot, release=False)
        assert not arrays["audio"].any() and not arrays["video"].any()


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("encodings,batch_size", [(["mp4"], 1), (["npy"], 1),
                                                 (["mp4", "npy"], 3)])
def test_held_batches_are_never_overwritten_and_equal_fresh_buffers(
        tmp_path: Path, encodings: list[str], batch_size: int, workers: int) -> None:
    """More batches held at once than there are slots, two epochs: every batch equals the one
    a loader without a pool gives, and the pool's slots were used and freed again. I420
    clips (mp4), RGB ones (npy), and batches of both (whose video is stacked outside the
    slot, all RGB); with workers, which fill their own slots, and without."""
    folders = [str(tmp_path / encoding) for encoding in encodings]
    for folder, encoding in zip(folders, encodings, strict=True):
        write_shards(Path(folder), encoding=encoding)
    plain = build_shard_loader(folders, batch_size=batch_size, shuffle_buffer=0, epochs=2)
    plain._stream.pool = None
    reference = [batch for _ in range(2) for batch in plain]
    loader = build_shard_loader(folders, batch_size=batch_size, shuffle_buffer=0, epochs=2,
                                num_workers=workers)
    pool = loader._stream.pool
    assert pool is not None
    held = [batch for _ in range(2) for batch in loader]
    start = pool.arrays(0, release=False)["video"].ctypes.data
    end = start + pool.layout.nbytes * SLOTS_PER_WORKER * max(1, workers)
    pooled = [start <= batch["image"].data_ptr() < end for batch in held]
    assert sum(pooled) >= SLOTS_PER_WORKER * max(1, workers) and not all(pooled)
    assert rows(held) == rows(reference) and len(rows(held)) == 24 * len(encodings)
    del held
    gc.collect()
    assert not any(pool._busy[:])  # every slot taken was freed with its batch


def rows(batches: list[Batch]) -> list[tuple[str, list[Any]]]:
    """Every row of `batches`, sorted by key and clip encoding: its video in model units (I420
    and RGB batches compare), image, mel, text ids and flags."""
    found = []
    for batch in batches:
        video = to_model_units("video", batch["video"])
        for row, (key, meta) in enumerate(zip(batch["__key__"], batch["meta"], strict=True)):
            text = batch["text"][row]
            found.append((key + meta["clip_encoding"], [
                video[row].tolist(), batch["image"][row].tolist(), batch["audio"][row].tolist(),
                text[text != 0].tolist(), bool(batch["has_text"][row]),
                bool(batch["has_audio"][row])]))
    return sorted(found, key=lambda item: item[0])


def test_spawned_workers_get_no_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_shards(tmp_path)
    assert build_shard_loader(tmp_path, batch_size=2, num_workers=1)._stream.pool is not None
    assert build_shard_loader(tmp_path, batch_size=2)._stream.pool is not None  # no workers
    monkeypatch.setattr(loader_module.mp, "get_start_method", lambda: "spawn")
    assert build_shard_loader(tmp_path, batch_size=2, num_workers=1)._stream.pool is None
    assert build_shard_loader(tmp_path, batch_size=2)._stream.pool is not None
