"""A batch's memory and its assembly: the buffers the samples of the batch being gathered are
decoded and copied into (`BatchSlots`, from a `batch_pool.BatchPool` when one is free), and
`collate`, which stacks samples into the loader's batch layout (`samples`' docstring)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from pipeline.errors import PipelineError
from pipeline.loader.batch_pool import BatchPool, SlotLayout, leading
from pipeline.modalities import TABLE
from pipeline.normalize import i420_to_rgb
from pipeline.shards.decode import i420_shape
from pipeline.shards.schema import CLIP_PREFIX, MEMBER_IMAGE, MEMBER_MEL
from pipeline.tokenizer import pad_texts

Batch = dict[str, Any]

MP4_MEMBER = CLIP_PREFIX + "mp4"


def slot_layout(expected: dict[str, Any], batch_size: int) -> SlotLayout:
    """The pooled arrays of a batch of `batch_size` samples of the `expected` sizes, as
    `collate` lays them out: video (B, 3, T, H, W) uint8 (I420 clips fill its first half),
    image (B, S, S, 3) uint8, audio (B, M, T_mel) float16."""
    size, image = expected["video_size"], expected["image_size"]
    return SlotLayout.of({
        "video": ((batch_size, 3, expected["video_frames"], size, size), np.dtype(np.uint8)),
        "image": ((batch_size, image, image, 3), np.dtype(np.uint8)),
        "audio": ((batch_size, expected["n_mels"], expected["audio_frames"]),
                  np.dtype(np.float16))})


@dataclass
class BatchSlots:
    """The buffers of the batch being gathered, taken before its first sample is decoded:
    `decode_samples` decodes each clip, picture and mel straight into the next row of the
    batch's video, image and audio, which `collate` then takes as they are, so nothing is
    copied between decode and batch (a picture decoded elsewhere and copied cost a 150 KB
    allocation and copy a sample, a mel two copies; issue 19). The buffers are a slot of
    `pool` when one is free (`pipeline.loader.batch_pool`: memory reused, already mapped),
    else fresh ones (`batch_tensor`: in a DataLoader worker born in shared memory).

    Every sample `decode_samples` yields is the next one `batch_samples` takes, so the slots
    fill in batch order; a sample dropped after decoding leaves its row to the next one.

    An mp4 clip's slot holds its I420 frames (T, 3H/2, W) (`decode.i420_shape`; converted to
    RGB on the device by `pipeline.normalize.to_model_units`), an npy clip's its RGB frames
    channels first (3, T, H, W). A clip of the other layout than the batch's so far gets
    memory of its own, and `collate` stacks that batch's clips (`_same_layout`)."""

    layout: SlotLayout
    pool: BatchPool | None
    group: int  # the DataLoader worker's id, 0 in the main process
    buffers: dict[str, torch.Tensor] | None = None  # the batch's arrays, (batch_size, ...)
    arrays: dict[str, np.ndarray] | None = None  # the same memory as numpy arrays
    slot: int | None = None  # the pool's slot the buffers are; None for fresh ones
    filled: int = 0

    def rows_left(self) -> int:
        """How many samples the batch being gathered still takes (a whole batch once the last
        one is full)."""
        if self._between_batches():
            return self._video_shape[0]
        return len(self.arrays["video"]) - self.filled

    def next_rows(self, clip_members: Sequence[str | None]) -> list[dict[str, np.ndarray]]:
        """The rows the next ``len(clip_members)`` samples (at most `rows_left`) are decoded
        into, by member name, each sample's as `keep` takes them in turn: its clip (the
        sample's `clip_members` entry) into (T, 3H/2, W) for an mp4 of even size, else
        (3, T, H, W); its picture into (S, S, 3) and its mel into (M, T_mel). A fresh batch's
        buffers are taken once the last batch is full, laid out for the first sample's clip; a
        clip of the other layout than its batch's gets memory of its own."""
        if self._between_batches():
            self._next_batch(self._clip_shapes[clip_members[0] == MP4_MEMBER])
        assert self.arrays is not None and self.filled + len(clip_members) <= len(
            self.arrays["video"])
        video = self.arrays["video"]
        rows = []
        for row, member in enumerate(clip_members, self.filled):
            shape = self._clip_shapes[member == MP4_MEMBER]
            rows.append({MEMBER_IMAGE: self.arrays["image"][row],
                         MEMBER_MEL: self.arrays["audio"][row],
                         **({} if member is None else {
                             member: video[row] if video.shape[1:] == shape
                             else np.empty(shape, np.uint8)})})
        return rows

    def _between_batches(self) -> bool:
        """No batch is being gathered: none taken yet, or the last one is full."""
        return self.arrays is None or self.filled == len(self.arrays["video"])

    @functools.cached_property
    def _video_shape(self) -> tuple[int, ...]:
        """The slot's video, (B, 3, T, H, W) as laid out for RGB clips."""
        return next(shape for name, _, shape, _ in self.layout.arrays if name == "video")

    @functools.cached_property
    def _clip_shapes(self) -> dict[bool, tuple[int, ...]]:
        """A clip's slot shape, by whether it is an mp4 (I420 where its sizes are even)."""
        _, channels, frames, height, width = self._video_shape
        rgb = (channels, frames, height, width)
        even = not height % 2 and not width % 2
        return {False: rgb, True: i420_shape(frames, height, width) if even else rgb}

    def _next_batch(self, clip: tuple[int, ...]) -> None:
        """Take the next batch's buffers, its video of clips of shape `clip` (the slot's
        video, laid out for RGB clips, holds I420 ones in its first half)."""
        self.slot = None if self.pool is None else self.pool.take(self.group)
        self.filled = 0
        if self.pool is not None and self.slot is not None:
            # The trainer's side frees the slot: here without workers, else the chunk resolved.
            arrays = self.pool.arrays(self.slot, release=get_worker_info() is None)
            arrays["video"] = leading(arrays["video"], (len(arrays["video"]), *clip))
            self.buffers = {name: torch.from_numpy(array) for name, array in arrays.items()}
        else:
            self.buffers = {name: batch_tensor(
                (shape[0], *clip) if name == "video" else shape, getattr(torch, str(dtype)))
                for name, _, shape, dtype in self.layout.arrays}
        self.arrays = {name: buffer.numpy() for name, buffer in self.buffers.items()}

    def keep(self) -> None:
        """The next row's sample is the batch's next sample (it passed its checks)."""
        self.filled += 1

    def hand_on(self) -> int | None:
        """In a worker: the pool slot of the batch just collated, whose freeing now falls to
        the trainer's side (None: fresh buffers, sent as tensors)."""
        slot, self.slot = self.slot, None
        return slot

    def in_buffers(self, batch: Batch) -> set[str]:
        """The keys of `batch` whose tensors are this batch's buffers (a batch of mixed clip
        layouts has its video elsewhere)."""
        return {name for name, buffer in (self.buffers or {}).items()
                if isinstance(batch.get(name), torch.Tensor)
                and batch[name].data_ptr() == buffer.data_ptr()}

    def drop(self) -> None:
        """In a worker at the end of an epoch: free a slot taken for a batch that no sample
        filled (the trainer's side frees the ones handed on)."""
        if self.pool is not None and self.slot is not None:
            self.pool.free(self.slot)
            self.slot = None

    def batch_buffers(self, samples: int) -> dict[str, torch.Tensor] | None:
        """The buffers' first `samples` rows, if the slots hold that many clips."""
        if self.buffers is None or self.filled != samples:
            return None
        return {name: buffer[:samples] for name, buffer in self.buffers.items()}


def collate(samples: Sequence[dict[str, Any]],
            buffers: dict[str, torch.Tensor] | None = None) -> Batch:
    """Stack `sample_tensors` outputs; text right-padded by `pipeline.tokenizer.pad_texts`,
    the one padding rule. `buffers`, when given, are the batch's arrays (`BatchSlots`) that
    the samples' clips, pictures and mels were decoded into: each is taken as it is where
    every sample's value is its row, and copied into otherwise (a picture PIL decoded, a clip
    of another layout). Its video is (B, 3, T, H, W) or (B, T, 3H/2, W). I420 clips (T, 3H/2, W)
    stack to (B, T, 3H/2, W), RGB ones to (B, 3, T, H, W); a batch of both (shard sets of
    both clip encodings) is all RGB (`_same_layout`). A modality that any
    sample lacks is left out of the batch (and with text, `has_text`), as
    `omnilatent.training.collate_multimodal` does. ``has_audio`` (B,)
    is False for the rows whose json says the video has no sound stream (their mel is
    silence), so trainers and evaluation use audio only where it exists."""
    def held(name: str) -> bool:
        return all(name in sample for sample in samples)

    batch: Batch = {}
    for row in TABLE:  # stored arrays, stacked as `Modality.batch_layout` says
        if row.stored_dtype is None or not held(row.name):
            continue
        out = None if buffers is None else buffers.get(row.name)
        if out is not None and _in_slots([sample[row.name] for sample in samples], out):
            batch[row.name] = out
            continue
        values, layout = [sample[row.name] for sample in samples], row.batch_layout
        if row.name == "video":
            values = _same_layout(values)
            layout = layout if values[0].dim() == 4 else None  # I420 stacks as it is
        batch[row.name] = stack_into_layout(values, layout, row.name, out)
    if held("text"):
        texts = [sample["text"] for sample in samples]
        batch["text"] = pad_texts(texts)  # (B, L)
        batch["has_text"] = torch.tensor([int(text.shape[0]) for text in texts]) > 0  # (B,)
    if held("audio"):  # a video without a sound stream is stored as silence, flagged in json
        batch["has_audio"] = torch.tensor([sample["meta"].get("has_audio", True) is not False
                                           for sample in samples])  # (B,)
    batch["__key__"] = [sample["__key__"] for sample in samples]
    batch["meta"] = [sample["meta"] for sample in samples]
    return batch


def _in_slots(values: Sequence[torch.Tensor], buffer: torch.Tensor) -> bool:
    """Whether each sample's value is the row of `buffer` at its index (a clip, RGB
    (T, H, W, 3) over a channels-first row, or I420 as it is), i.e. the batch is already
    stacked: the samples were decoded into their slots. Read from addresses and strides, not
    from a tensor made for each row."""
    row = buffer[0].permute(1, 2, 3, 0) if buffer.dim() == 5 else buffer[0]
    step = buffer.stride(0) * buffer.element_size()  # bytes from one row to the next
    return len(values) == len(buffer) and all(
        value.data_ptr() == buffer.data_ptr() + index * step and value.shape == row.shape
        and value.stride() == row.stride() and value.dtype == buffer.dtype
        for index, value in enumerate(values))


def _same_layout(clips: list[torch.Tensor]) -> list[torch.Tensor]:
    """`clips` as they are when all are RGB (T, H, W, 3) or all I420 (T, 3H/2, W); a mix
    (shard sets of both clip encodings in one loader) all RGB, the I420 ones converted as
    `pipeline.normalize.to_model_units` converts them."""
    if len({clip.dim() for clip in clips}) == 1:
        return clips
    return [i420_to_rgb(clip).permute(1, 2, 3, 0) if clip.dim() == 3 else clip
            for clip in clips]


def batch_tensor(size: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised batch tensor; in a DataLoader worker born in shared memory, as
    default_collate's are, so sending it to the trainer copies nothing."""
    if get_worker_info() is None:
        return torch.empty(size, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(size) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage).view(size)


def stack_into_layout(values: Sequence[torch.Tensor], layout: tuple[int, ...] | None,
                      name: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """The samples' `values` (equal shapes and dtype, still the stored uint8 or float16)
    stacked into one (B, ...) tensor permuted by `layout` (None: as they are): `out` when it
    has that shape and dtype, else a new one.

    Each sample is copied once, straight into its permuted place in the batch, by numpy on
    the calling thread: ``torch.stack`` then ``permute(...).contiguous()`` copied every byte
    twice, the second time strided, and spun up torch's intra-op threads in the main process
    (`bench/loader.py`, issue 19: 0.9 ms against 0.3 ms a default-sized sample)."""
    first = values[0]
    for value in values[1:]:
        if value.shape != first.shape or value.dtype != first.dtype:
            raise PipelineError(f"{name} of the batch's samples differ: {first.dtype} "
                                f"{tuple(first.shape)} and {value.dtype} {tuple(value.shape)}")
    order = None if layout is None else [axis - 1 for axis in layout[1:]]  # a sample's axes
    shape = first.shape if order is None else [first.shape[axis] for axis in order]
    size = (len(values), *shape)
    batch = (out if out is not None and out.shape == size and out.dtype == first.dtype
             else batch_tensor(size, first.dtype))
    for slot, value in zip(batch.numpy(), values, strict=True):
        array = value.numpy()
        np.copyto(slot, array if order is None else array.transpose(order))
    return batch
