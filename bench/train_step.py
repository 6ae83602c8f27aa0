"""Training-step benchmark for the default (or a given) OmniLatent config.

Prints parameters, step time, tokens/s and samples/s for each modality pair family, with and
without gradient checkpointing, and on CUDA the peak memory and model FLOPs utilisation
(FLOPs counted by torch's FlopCounterMode on a real step, divided by the device's peak).
Ratios are against the no-checkpointing run measured in the same process, so they stay
meaningful on a noisy shared machine.

    python bench/train_step.py                       # default 140M config, batch 4, auto device
    python bench/train_step.py --device cpu --dim 256 --layers 4 --heads 4 --steps 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from omnilatent import OmniLatentConfig, OmniLatentModel
from omnilatent.training import SyntheticMultimodalDataset, TrainConfig, collate_multimodal
from omnilatent.training.tasks import Task, content_tokens
from omnilatent.training.trainer import amp_dtype_for, build_optimizer, resolve_device

# Dense bf16 tensor-core peaks (FLOP/s), by a substring of torch.cuda.get_device_name().
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
             "4090": 165e12, "3090": 71e12}


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def run(cfg: OmniLatentConfig, batch_size: int, steps: int, warmup: int, device: torch.device,
        amp: bool, task: Task) -> dict:
    torch.manual_seed(0)
    model = OmniLatentModel(cfg).to(device).train()
    optimizer = build_optimizer(model, TrainConfig())
    dataset = SyntheticMultimodalDataset(cfg, length=batch_size, seed=0)
    batch = collate_multimodal([dataset[i] for i in range(batch_size)])
    batch = {k: v.to(device) for k, v in batch.items()}
    source, target = task.inputs(batch)
    dtype = amp_dtype_for(device, amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(task.source, source, task.target, target=target)["loss"]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    tokens = content_tokens(task.source, source, cfg.audio_stride, cfg.patch_size,
                            cfg.tubelet_size)
    result = {
        "task": task.name,
        "grad_checkpointing": cfg.gradient_checkpointing,
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
    parser.add_argument("--tasks", default="video->audio,image->text,text->video",
                        help="comma-separated source->target pairs to time")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args()

    device = resolve_device(args.device)
    base = OmniLatentConfig(hidden_dim=args.dim, num_layers=args.layers, num_heads=args.heads)
    rows = []
    for spec in args.tasks.split(","):
        source, target = spec.strip().split("->")
        task = Task(source, target)
        plain = run(base, args.batch_size, args.steps, args.warmup, device, not args.no_amp, task)
        ckpt = run(dataclasses.replace(base, gradient_checkpointing=True), args.batch_size,
                   args.steps, args.warmup, device, not args.no_amp, task)
        ckpt["time_ratio_vs_plain"] = round(ckpt["step_s"] / plain["step_s"], 3)
        if "peak_mem_gib" in plain:
            ckpt["mem_ratio_vs_plain"] = round(ckpt["peak_mem_gib"] / plain["peak_mem_gib"], 3)
        rows += [plain, ckpt]
    report = {"device": str(device), "batch_size": args.batch_size,
              "amp": str(amp_dtype_for(device, not args.no_amp)), "runs": rows}
    if device.type == "cuda":
        report["device_name"] = torch.cuda.get_device_name(device)
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"device {report.get('device_name', device)} | batch {args.batch_size} | "
          f"AMP {report['amp']}")
    for r in rows:
        extra = "".join(f" | {k} {r[k]}" for k in ("peak_mem_gib", "mfu", "time_ratio_vs_plain",
                                                    "mem_ratio_vs_plain") if k in r)
        print(f"{r['task']:<14} ckpt={str(r['grad_checkpointing']):<5} params {r['params_m']}M"
              f" | step {r['step_s']:.3f}s | {r['tokens_per_s']:.0f} tokens/s | "
              f"{r['samples_per_s']:.2f} samples/s | {r['gflops_per_step']} GFLOP{extra}")


if __name__ == "__main__":
    main()
