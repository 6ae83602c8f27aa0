"""A dispatch mode that records what in a training step would make the host and the device
wait for each other, also on a CPU-only machine where there is no second device.

Every tensor is classed as it flows through the ops: *device* tensors are the model's
parameters and buffers, the batch once moved (`mark_device`), and whatever an op computes from
a device tensor; *host* tensors are those built from host data (`torch.tensor(list)`, the
loader's batch before the move) and what is computed from host tensors alone; factory outputs
(`zeros`, `ones`, `full`) hold no host data and take either side. Recorded, with the op:

- a value read to Python from a device tensor (`aten._local_scalar_dense`: `item`, `bool`,
  `tolist`): on CUDA a synchronisation;
- an op whose output shape depends on a device tensor's values (`nonzero`, `masked_select`,
  `unique`): on CUDA a synchronisation;
- a copy between two devices (`_to_copy`, `copy_`): on CUDA a transfer;
- a host tensor of more than one element used with device tensors: on CUDA it must have been
  copied to the device first (0-dim host tensors are legal CPU scalars in CUDA ops)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

aten = torch.ops.aten
HOST, DEVICE = "host", "device"
READS = {aten._local_scalar_dense}
DATA_DEPENDENT = {aten.nonzero, aten.masked_select, aten._unique2, aten.unique_dim,
                  aten.unique_consecutive}
COPIES = {aten._to_copy, aten.copy_}
HOST_DATA = {aten.lift_fresh, aten.lift_fresh_copy}


class HostSyncRecorder(TorchDispatchMode):
    """Records (in ``events``) each op that would transfer or synchronise; see the module."""

    def __init__(self, device_tensors: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.side = WeakTensorKeyDictionary()
        self.events: list[str] = []
        self.mark_device(device_tensors)

    def mark_device(self, tensors: Iterable[torch.Tensor]) -> None:
        for tensor in tensors:
            self.side[tensor] = DEVICE

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        sides = [self.side.get(t) for t in inputs]
        packet = func.overloadpacket
        if DEVICE in sides:
            if packet in READS or packet in DATA_DEPENDENT:
                self.events.append(f"{packet} reads a device tensor")
            host = [t for t, side in zip(inputs, sides, strict=True)
                    if side == HOST and t.dim() > 0]
            if host:
                self.events.append(f"{packet} uses a host tensor of shape "
                                   f"{tuple(host[0].shape)} with device tensors")
        if packet in COPIES and len({t.device for t in inputs}) > 1:
            self.events.append(f"{packet} copies between devices")
        out = func(*args, **kwargs)
        side = HOST if packet in HOST_DATA else (
            DEVICE if DEVICE in sides else HOST if HOST in sides else None)
        if packet is aten._to_copy and "device" in kwargs and inputs and \
                kwargs["device"] != inputs[0].device:
            side = DEVICE if kwargs["device"].type != "cpu" else HOST
        if side is not None:
            for tensor in tree_flatten(out)[0]:
                if isinstance(tensor, torch.Tensor):
                    self.side[tensor] = side
        return out
