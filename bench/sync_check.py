"""Does a training step make the host wait for the GPU? (issue 19, §4)

Runs the real `Trainer` on synthetic data through all 16 tasks with AMP, its batches in pinned
memory as the shard loader gives them on CUDA. After `--warmup` steps (the first builds the
optimizer state and the RoPE tables), every step runs under
`torch.cuda.set_sync_debug_mode("error")`: any synchronisation in it (a tensor read on the
host, a blocking copy, an op whose output shape depends on device values) raises, naming the
op. The losses are read at the end, outside the steps, as the trainer reads them at log
intervals. On CPU it runs the same steps without the check (a dry run of the script).
`tests/test_training.py` checks the same on CPU with a dispatch mode that sees the ops which
would transfer or synchronise on CUDA.

    python bench/sync_check.py --device cuda
    python bench/sync_check.py --device cpu --dim 32 --layers 2 --heads 4   # dry run
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator

import torch

from omnilatent import OmniLatentConfig, OmniLatentModel
from omnilatent.training import (
    SyntheticMultimodalDataset,
    TrainConfig,
    Trainer,
    build_dataloader,
)
from omnilatent.training.trainer import resolve_device


class PinnedBatches:
    """``loader``'s batches with every tensor in pinned memory (on CUDA), so the step's copy
    to the device is asynchronous, as with the shard loader's ``pin_memory``."""

    def __init__(self, loader: object, pin: bool) -> None:
        self.loader, self.pin = loader, pin

    def __iter__(self) -> Iterator[dict]:
        for batch in self.loader:
            yield {k: v.pin_memory() if self.pin and isinstance(v, torch.Tensor) else v
                   for k, v in batch.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    args = parser.parse_args()
    device = resolve_device(args.device)
    config = OmniLatentConfig(hidden_dim=args.dim, num_layers=args.layers, num_heads=args.heads)
    steps = args.warmup + 16  # every task once under the check
    loader = build_dataloader(SyntheticMultimodalDataset(config, length=4 * args.batch_size,
                                                         seed=0, text_len=16),
                              batch_size=args.batch_size, seed=0)
    torch.manual_seed(0)
    trainer = Trainer(OmniLatentModel(config),
                      TrainConfig(steps=steps, device=device.type, log_interval=steps),
                      PinnedBatches(loader, device.type == "cuda"))
    step, checked = trainer._train_step, []

    def checked_step() -> object:
        if trainer.step < args.warmup or device.type != "cuda":
            return step()
        torch.cuda.set_sync_debug_mode("error")
        try:
            outcome = step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        checked.append(outcome[0].name if outcome else "skipped")
        return outcome

    trainer._train_step = checked_step
    result = trainer.train()
    print(json.dumps({"device": str(device), "amp": str(trainer.amp_dtype),
                      "steps": result.step,
                      "sync_debug_mode": "error" if device.type == "cuda" else "not on cpu",
                      "checked_without_sync": checked,
                      "last_loss": result.history[-1]["loss"]}))


if __name__ == "__main__":
    main()
