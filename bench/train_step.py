"""Training-step benchmark for the default (or a given) OmniLatent config.

Prints parameters, step time, tokens/s and samples/s for each modality pair family, with and
without gradient checkpointing, and on CUDA the peak memory and model FLOPs utilisation
(FLOPs counted by torch's FlopCounterMode on a real eager step, divided by the device's bf16
peak; the checkpointed run's count includes its recomputation). Ratios are against the
no-checkpointing run measured in the same process, so they stay meaningful on a noisy shared
machine. `--compile` compiles the blocks as `omni train --compile` does
(`omnilatent.training.compile.compile_blocks`), so MFU can be measured compiled and eager.

With `--shards` (a folder written by `omni prepare`) the model is sized from the data as
`omni train --shards` sizes it, and each pair is also timed fed by the real loader
(`omnilatent.training.sources.shard_source`: the train split, endless epochs, `--workers`
DataLoader workers, pinned memory on CUDA; each batch moved and mapped to model units by
`pipeline.normalize.to_device_units`, as the trainer does) against the same step on one fixed
synthetic batch of the first loader batch's shapes. The loader-fed run skips 2 batches per
worker before it times (the workers' first batches arrive together, and the queue fills while
the synthetic run times) and times at least 4 per worker.

Goals (issue 10), one verdict line each, PASS or FAIL:
- MFU >= 45 % at batch 32 without checkpointing (on CUDA; printed beside the run's batch);
- peak memory <= 6 GiB at batch 4 with AMP and gradient checkpointing (on CUDA, batch 4);
- loader-fed steps/s >= 0.9 x synthetic (with `--shards`).
`bash bench/gpu_check.sh` measures all three on one GPU machine.

    python bench/train_step.py                       # default 157.09M config, batch 4, auto device
    python bench/train_step.py --device cpu --dim 256 --layers 4 --heads 4 --steps 3
    python bench/train_step.py --device cuda --batch-size 32 --compile --json
    python bench/train_step.py --device cuda --batch-size 32 --shards demo-out/shards
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from omnilatent import OmniLatentConfig, OmniLatentModel
from omnilatent.tasks import Task, content_tokens, servable_pairs
from omnilatent.training import SyntheticMultimodalDataset, TrainConfig, collate_multimodal
from omnilatent.training.compile import compile_blocks
from omnilatent.training.trainer import amp_dtype_for, build_optimizer, resolve_device
from pipeline.normalize import to_device_units

# Dense bf16 tensor-core peaks (FLOP/s), by a substring of torch.cuda.get_device_name().
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
             "4090": 165e12, "3090": 71e12}

GOAL_MFU, GOAL_MFU_BATCH = 0.45, 32
GOAL_PEAK_GIB, GOAL_PEAK_BATCH = 6.0, 4
GOAL_LOADER_RATIO = 0.9
MAX_TEXT_LEN = 128  # `omni train --max-text-len` default

Step = Callable[[Tensor, Tensor], None]


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def _build(cfg: OmniLatentConfig, device: torch.device, amp: bool,
           task: Task) -> tuple[OmniLatentModel, Step]:
    """A fresh model and one optimizer step of `task` on it, as the trainer takes it."""
    torch.manual_seed(0)
    model = OmniLatentModel(cfg).to(device).train()
    optimizer = build_optimizer(model, TrainConfig())
    dtype = amp_dtype_for(device, amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step(source: Tensor, target: Tensor) -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(task.source, source, task.target, target=target)["loss"]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return model, step


def _seconds_per_step(step: Callable[[], None], steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def run(cfg: OmniLatentConfig, batch_size: int, steps: int, warmup: int, device: torch.device,
        amp: bool, task: Task, compile_model: bool = False) -> dict:
    model, train_step = _build(cfg, device, amp, task)
    dataset = SyntheticMultimodalDataset(cfg, length=batch_size, seed=0)
    batch = collate_multimodal([dataset[i] for i in range(batch_size)])
    batch = {k: v.to(device) for k, v in batch.items()}
    source, target = task.inputs(batch)

    def step() -> None:
        train_step(source, target)

    counter = FlopCounterMode(display=False)
    with counter:  # eager: the step's FLOPs are the same compiled
        step()
    flops = counter.get_total_flops()
    if compile_model:
        compile_blocks(model)
    for _ in range(warmup):  # compiled: the first of them compiles
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = _seconds_per_step(step, steps, device)
    tokens = content_tokens(task.source, source, cfg.audio_stride, cfg.patch_size,
                            cfg.tubelet_size)
    result = {
        "task": task.name,
        "grad_checkpointing": cfg.gradient_checkpointing,
        "compiled": compile_model,
        "params_m": round(model.num_parameters() / 1e6, 2),
        "step_s": round(seconds, 4),
        "tokens_per_s": round(tokens / seconds, 1),
        "samples_per_s": round(batch_size / seconds, 2),
        "gflops_per_step": round(flops / 1e9, 1),
    }
    if device.type == "cuda":
        result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
        peak = _peak_flops(device)
        if peak:
            result["mfu"] = round(flops / seconds / peak, 4)
    return result


def _endless(loader) -> Iterator[dict]:
    """The loader's batches over endless epochs (each pass over a `ShardLoader` is one)."""
    while True:
        yield from loader


def _synthetic_like(modality: str, stored: Tensor, device: torch.device) -> Tensor:
    """A fixed tensor in model units of a loader tensor's shape, on `device`. Text keeps the
    loader's ids: their padding sets what the step computes, and any id is as good as another."""
    if modality == "text":
        return stored.to(device)
    return torch.randn(stored.shape, device=device)


def loader_vs_synthetic(cfg: OmniLatentConfig, loader, steps: int, warmup: int,
                        device: torch.device, amp: bool, task: Task, workers: int,
                        compile_model: bool = False) -> dict:
    """Steps/s of `task` fed by `loader` (a `ShardLoader`) against one fixed synthetic batch
    of the first loader batch's shapes, on one model."""
    model, step = _build(cfg, device, amp, task)
    if compile_model:
        compile_blocks(model)
    modalities = {task.source, task.target}
    batches = _endless(loader)
    try:
        first = next(batches)
        missing = sorted(modalities - {source for source, _ in servable_pairs(first)})
        if missing:
            return {"task": task.name, "skipped": f"the data holds no {', '.join(missing)}"}
        source, target = task.inputs({m: _synthetic_like(m, first[m], device)
                                      for m in modalities})
        for _ in range(warmup):
            step(source, target)
        synthetic_s = _seconds_per_step(lambda: step(source, target), steps, device)

        def fed() -> None:
            batch = next(batches)
            # as `Trainer._train_step`: only the task's modalities travel, then model units
            step(*task.inputs({m: to_device_units(m, batch[m], device) for m in modalities}))

        for _ in range(max(warmup, 2 * workers)):
            fed()
        loader_steps = max(steps, 4 * workers)
        epoch = loader.epoch
        loader_s = _seconds_per_step(fed, loader_steps, device)
        epochs_crossed = loader.epoch - epoch
    finally:
        batches.close()  # stops the epoch's DataLoader workers
    ratio = synthetic_s / loader_s
    return {
        "task": task.name,
        "compiled": compile_model,
        "batch_shapes": {m: list(first[m].shape) for m in sorted(modalities)},
        "synthetic_steps_per_s": round(1 / synthetic_s, 3),
        "loader_steps_per_s": round(1 / loader_s, 3),
        "loader_vs_synthetic": round(ratio, 3),
        "workers": workers,
        "loader_steps": loader_steps,
        "epoch_ends_while_timed": epochs_crossed,
        "pass": ratio >= GOAL_LOADER_RATIO,
    }


def verdicts(report: dict) -> list[dict]:
    """One PASS/FAIL record per goal that the report's runs can answer."""
    batch = report["batch_size"]
    out = []
    for r in report["runs"]:
        if "mfu" in r and not r["grad_checkpointing"]:
            out.append({"goal": "mfu", "task": r["task"], "value": r["mfu"],
                        "target": f">= {GOAL_MFU}", "batch_size": batch,
                        "goal_batch_size": GOAL_MFU_BATCH, "compiled": r["compiled"],
                        "pass": r["mfu"] >= GOAL_MFU})
        if "peak_mem_gib" in r and r["grad_checkpointing"] and batch == GOAL_PEAK_BATCH:
            out.append({"goal": "peak_mem_gib", "task": r["task"], "value": r["peak_mem_gib"],
                        "target": f"<= {GOAL_PEAK_GIB}", "batch_size": batch,
                        "goal_batch_size": GOAL_PEAK_BATCH, "compiled": r["compiled"],
                        "pass": r["peak_mem_gib"] <= GOAL_PEAK_GIB})
    for r in report.get("loader_runs", []):
        if "pass" in r:
            out.append({"goal": "loader_vs_synthetic", "task": r["task"],
                        "value": r["loader_vs_synthetic"], "target": f">= {GOAL_LOADER_RATIO}",
                        "batch_size": batch, "goal_batch_size": None, "compiled": r["compiled"],
                        "pass": r["pass"]})
    return out


def _verdict_line(v: dict) -> str:
    goal = f"goal {v['target']}"
    if v["goal_batch_size"] is not None:
        goal += f" at batch {v['goal_batch_size']}"
    mode = "compiled" if v["compiled"] else "eager"
    return (f"{'PASS' if v['pass'] else 'FAIL'}  {v['goal']:<19} {v['task']:<14} {v['value']} "
            f"at batch {v['batch_size']}, {mode} ({goal})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="compile each block (torch.compile, inductor) as `omni train "
                        "--compile` does; the warm-up steps include the compile")
    parser.add_argument("--tasks", default="video->audio,image->text,text->video",
                        help="comma-separated source->target pairs to time")
    parser.add_argument("--shards", help="a folder written by `omni prepare`: size the model "
                        "from it and also time steps fed by its loader")
    parser.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1),
                        help="DataLoader workers of the --shards loader (default: CPU count)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args()

    device = resolve_device(args.device)
    amp = not args.no_amp
    base = OmniLatentConfig(hidden_dim=args.dim, num_layers=args.layers, num_heads=args.heads)
    source = None
    if args.shards:
        from omnilatent.config import model_sizes
        from omnilatent.training.sources import shard_source
        from pipeline.tokenizer import BYTE_VOCAB_SIZE, byte_tokenizer

        source = shard_source(args.shards, args.batch_size, seed=0, workers=args.workers,
                              tokenizer=byte_tokenizer, max_text_len=MAX_TEXT_LEN,
                              pin_memory=device.type == "cuda")
        # the model `omni train --shards` builds for this data (byte tokens: 259 ids)
        base = dataclasses.replace(base, vocab_size=BYTE_VOCAB_SIZE,
                                   **model_sizes(source.expected))
    rows, loader_rows = [], []
    for spec in args.tasks.split(","):
        src, tgt = spec.strip().split("->")
        task = Task(src, tgt)
        plain = run(base, args.batch_size, args.steps, args.warmup, device, amp, task,
                    args.compile)
        ckpt = run(dataclasses.replace(base, gradient_checkpointing=True), args.batch_size,
                   args.steps, args.warmup, device, amp, task, args.compile)
        ckpt["time_ratio_vs_plain"] = round(ckpt["step_s"] / plain["step_s"], 3)
        if "peak_mem_gib" in plain:
            ckpt["mem_ratio_vs_plain"] = round(ckpt["peak_mem_gib"] / plain["peak_mem_gib"], 3)
        rows += [plain, ckpt]
        if source is not None:
            loader_rows.append(loader_vs_synthetic(base, source.loader, args.steps, args.warmup,
                                                   device, amp, task, args.workers,
                                                   args.compile))
    report = {"device": str(device), "batch_size": args.batch_size,
              "amp": str(amp_dtype_for(device, amp)), "compiled": args.compile,
              "config": {"hidden_dim": base.hidden_dim, "num_layers": base.num_layers,
                         "num_heads": base.num_heads, "vocab_size": base.vocab_size},
              "runs": rows}
    if device.type == "cuda":
        report["device_name"] = torch.cuda.get_device_name(device)
    if source is not None:
        report["shards"] = source.description
        report["loader_runs"] = loader_rows
    report["verdicts"] = verdicts(report)
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"device {report.get('device_name', device)} | batch {args.batch_size} | "
          f"AMP {report['amp']} | {'compiled' if args.compile else 'eager'}")
    for r in rows:
        extra = "".join(f" | {k} {r[k]}" for k in ("peak_mem_gib", "mfu", "time_ratio_vs_plain",
                                                    "mem_ratio_vs_plain") if k in r)
        print(f"{r['task']:<14} ckpt={str(r['grad_checkpointing']):<5} params {r['params_m']}M"
              f" | step {r['step_s']:.3f}s | {r['tokens_per_s']:.0f} tokens/s | "
              f"{r['samples_per_s']:.2f} samples/s | {r['gflops_per_step']} GFLOP{extra}")
    if source is not None:
        print(f"loader: {source.description}")
    for r in loader_rows:
        if "skipped" in r:
            print(f"{r['task']:<14} loader-fed: skipped, {r['skipped']}")
            continue
        print(f"{r['task']:<14} synthetic {r['synthetic_steps_per_s']:.2f} steps/s | loader-fed "
              f"{r['loader_steps_per_s']:.2f} steps/s ({r['workers']} worker(s), "
              f"{r['loader_steps']} steps, {r['epoch_ends_while_timed']} epoch end(s)) | "
              f"loader/synthetic {r['loader_vs_synthetic']}")
    for v in report["verdicts"]:
        print(_verdict_line(v))
    if device.type == "cuda" and args.batch_size != GOAL_PEAK_BATCH:
        print(f"(peak memory goal: run with --batch-size {GOAL_PEAK_BATCH})")


if __name__ == "__main__":
    main()
