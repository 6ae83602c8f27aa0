"""Does the model learn? Sample world -> prepare -> train -> `omni eval` on unseen videos.

Every stage is the `omni` command a user runs, as a subprocess, and its CPU seconds (user +
system of the process and its children) are measured:

1. `omni demo-videos` a training world (`--train-videos`, seed 0, 4 s each) and an unseen
   evaluation world (`--eval-videos`, seed 1, 2 s each: one clip per video, so N clips are N
   different videos) of the same 8 classes (`pipeline.demo_media`);
2. `omni prepare` both (no held-out split inside either: the eval world is the held-out set);
3. `omni train` with the default curriculum at the tiny size (`--dim 128 --layers 4 --heads 4`,
   batch 8) for `--steps` steps, the trainer's other settings at their defaults;
4. `omni eval --json` on the eval world, labels from the file names (the class), with every
   generated transcript kept.

It prints the CPU seconds per stage and the metrics beside chance: retrieval by class and by
window, transcripts (token accuracy, CER, and the share of windows whose generated transcript
names the class, e.g. contains "red circle"), reconstruction. Then the issue's targets, each
with PASS/FAIL: training <= 10 CPU-minutes; audio->video and video->audio R@1 by class >= 0.9;
video->text and audio->text naming the class in >= 90% of unseen windows; text CER <= 0.1.

`--seeds N` makes N runs: run i trains with seed `--seed` + i, the last of several on a second
world (seeds 2 and 3), since a result that holds for one trajectory may not for the next. It
prints each run, then per figure every run's value, the mean and the worst, and judges the
targets on the worst run (CER on the mean). Each world is made and prepared once per `--work`
folder (`demo-train-w0-shards`, ...) and reused by every run, and by later invocations with
`--keep`.

    python bench/learning.py                         # about 15 minutes on 2 cores
    python bench/learning.py --steps 600 --work /tmp/learn --keep
    python bench/learning.py --phase-schedule bench/seed_schedule.toml   # the seed's curriculum
    python bench/learning.py --json > learning.json
    python bench/learning.py --seeds 3                 # the worst of three runs, two worlds
    python bench/learning.py --world realistic --seeds 3 --steps 1500   # worlds with gaps

`--world realistic` makes both worlds with `omni demo-videos --realistic` (videos without a
transcript or without sound, speech gaps, varied lengths and frame rates); every figure is
then measured only on the windows that hold the task's modalities (`omni eval` does so).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from prepare import adopt_orphans, measure, omni_command

from pipeline.demo_media import demo_class_of

TRAIN_CPU_TARGET_S = 600.0
RETRIEVAL_TARGET = 0.9
NAMED_TARGET = 0.9
CER_TARGET = 0.1
LABEL_PATTERN = r"^([a-z]+-[a-z]+)_s\d+_"  # the class slug of a demo file name


def run_stage(name: str, args: list[str], timings: dict[str, dict[str, float]],
              capture: bool = False) -> str:
    """Run one `omni` command; record its wall and CPU seconds (every process it started,
    prepare's workers included: see bench/prepare.py's `adopt_orphans`)."""
    done: list[subprocess.CompletedProcess[str]] = []
    wall, cpu = measure(lambda: done.append(subprocess.run(
        [*omni_command(), *args], capture_output=True, text=True,
        env={**os.environ, "COLUMNS": "200"})))
    result = done[0]
    if result.returncode != 0:
        sys.exit(f"{name} failed ({' '.join(args)}):\n{result.stdout}\n{result.stderr}")
    timings[name] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
    print(f"{name:<14} {wall:7.1f} s wall {cpu:8.1f} s CPU", file=sys.stderr, flush=True)
    return result.stdout if capture else ""


def class_mean_ceiling(train: Path, unseen: Path) -> dict[str, dict[str, float]]:
    """R@1 by class when each unseen clip's "prediction" is the mean target of its class over
    the training clips: the best a prediction from another modality can do, ranked by
    correlation (what `omni eval` uses) and by mean squared error (what it does not). Sound
    counts only in the windows that have it, as `omni eval` ranks it.

    Also "clip": the expected R@1 of the clip itself for a prediction that knows the clip's
    class and nothing more, 1 / (unseen clips of its class with sound), averaged. In the demo
    world a clip's picture (position, size, speed, background) and sound (pitch, loudness,
    onset) vary independently within its class (`pipeline.demo_media.demo_params`), so nothing
    in one tells which clip of the class the other is: this is the ceiling of audio<->video
    clip retrieval."""
    import torch
    import torch.nn.functional as F

    from omnilatent.evaluation.metrics import correlation_distance, retrieval_metrics
    from pipeline.loader.shard_loader import build_shard_loader
    from pipeline.normalize import to_model_units

    def load(shards: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
        loader = build_shard_loader(str(shards), 32, shuffle_shards=False, shuffle_buffer=0,
                                    epochs=1)
        parts: dict[str, list[torch.Tensor]] = {"video": [], "audio": []}
        labels: dict[str, list[str]] = {"video": [], "audio": []}
        for batch in loader:
            video = to_model_units("video", batch["video"])
            sound = batch["has_audio"]  # (B,): no sound stream, no audio clip
            parts["video"].append(F.avg_pool3d(video, (1, 4, 4)))  # as omni eval
            parts["audio"].append(to_model_units("audio", batch["audio"][sound]))
            names = [str(demo_class_of(meta["source"])) for meta in batch["meta"]]
            labels["video"] += names
            labels["audio"] += [name for name, kept in zip(names, sound, strict=True) if kept]
        return {k: torch.cat(v) for k, v in parts.items()}, labels

    (seen, seen_labels), (clips, clip_labels) = load(train), load(unseen)
    ceiling: dict[str, Any] = {}
    for modality, values in clips.items():
        labels = clip_labels[modality]
        means = {c: seen[modality][[x == c for x in seen_labels[modality]]].mean(0)
                 for c in set(labels)}
        prediction = torch.stack([means[label] for label in labels])
        p = prediction.flatten(1).double()
        c = values.flatten(1).double()
        mse = (p * p).sum(1)[:, None] + (c * c).sum(1)[None] - 2 * p @ c.T
        ceiling[modality] = {
            "correlation": retrieval_metrics(correlation_distance(prediction, values),
                                             labels)["r1"],
            "mse": retrieval_metrics(mse, labels)["r1"]}
    heard = clip_labels["audio"]
    ceiling["clip"] = sum(1 / heard.count(c) for c in heard) / len(heard)
    return ceiling


def named_share(captions: list[dict[str, Any]], task: str) -> float | None:
    """Share of windows whose generated transcript contains the name of the window's class."""
    rows = [row for row in captions if row["task"] == task]
    if not rows:
        return None
    hits = 0
    for row in rows:
        demo_class = demo_class_of(row["source"])
        hits += demo_class is not None and demo_class.name in row["generated"]
    return hits / len(rows)


WORLDS = ((0, 1), (2, 3))  # (training world seed, unseen world seed) pairs for --seeds
# Each figure of the summary: (label, path into one run's result, True if higher is better).
FIGURES = (
    ("train CPU s", ("timings", "train", "cpu_s"), False),
    ("audio->video R@1 class", ("metrics", "retrieval_by_label", "audio_to_video", "r1"), True),
    ("video->audio R@1 class", ("metrics", "retrieval_by_label", "video_to_audio", "r1"), True),
    ("audio->video R@1 clip", ("metrics", "retrieval", "audio_to_video", "r1"), True),
    ("video->audio R@1 clip", ("metrics", "retrieval", "video_to_audio", "r1"), True),
    ("clip R@1 ceiling", ("ceiling", "clip"), True),
    ("video ceiling R@1 class", ("ceiling", "video", "correlation"), True),
    ("audio ceiling R@1 class", ("ceiling", "audio", "correlation"), True),
    ("video->text names class", ("named", "video_to_text"), True),
    ("audio->text names class", ("named", "audio_to_text"), True),
    ("image->text names class", ("named", "image_to_text"), True),
    ("video->text CER", ("metrics", "text", "video_to_text", "cer"), False),
    ("audio->text CER", ("metrics", "text", "audio_to_text", "cer"), False),
)


def world_folders(args: argparse.Namespace, work: Path, train_seed: int, eval_seed: int,
                  timings: dict[str, dict[str, float]]) -> dict[str, Path]:
    """Shards of one world pair, made once per work folder and reused by every run on it."""
    folders = {}
    for name, count, seed, duration in (("train", args.train_videos, train_seed, 4),
                                        ("eval", args.eval_videos, eval_seed, 2)):
        world = f"{args.world}-{name}-w{seed}"  # its own folders in --work
        videos, shards = work / f"{world}-videos", work / f"{world}-shards"
        if not (shards / "manifest.json").is_file():
            shutil.rmtree(videos, ignore_errors=True)
            run_stage(f"{name} videos", ["demo-videos", str(videos), "--count", str(count),
                                         "--seed", str(seed), "--duration", str(duration),
                                         *(["--realistic"] if args.world == "realistic" else [])],
                      timings)
            run_stage(f"{name} prepare", ["prepare", str(videos), str(shards),
                                          "--eval-fraction", "0", "--overwrite"], timings)
        folders[name] = shards
    return folders


def train_and_evaluate(args: argparse.Namespace, work: Path, shards: dict[str, Path],
                       seed: int) -> dict[str, Any]:
    """One training run with ``seed`` on the world of ``shards``, evaluated on its unseen
    world: timings, metrics, the share of transcripts naming the class, the class-mean ceiling
    and the targets of this run."""
    timings: dict[str, dict[str, float]] = {}
    run_dir = work / f"run-{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_stage("train", ["train", "--shards", str(shards["train"]),
                        "--phase-schedule", args.phase_schedule,
                        "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                        "--dim", str(args.dim), "--layers", str(args.layers),
                        "--heads", str(args.heads), "--seed", str(seed),
                        "--text-decoding", args.text_decoding,
                        *(["--lr", args.lr] if args.lr else []),
                        "--device", "cpu", "--eval-every", "0",
                        "--save-dir", str(run_dir)], timings)
    captions_path = work / f"captions-{seed}.jsonl"
    metrics = json.loads(run_stage(
        "eval", ["eval", str(run_dir), str(shards["eval"]), "--json",
                 "--label-pattern", LABEL_PATTERN, "--captions", str(captions_path),
                 "--device", "cpu"], timings, capture=True))
    captions = [json.loads(line) for line in captions_path.read_text().splitlines()]
    named = {task: named_share(captions, task)
             for task in ("video_to_text", "audio_to_text", "image_to_text")}
    result = {"seed": seed, "timings": timings, "metrics": metrics, "named": named,
              "ceiling": class_mean_ceiling(shards["train"], shards["eval"])}
    result["targets"] = judge({label: [figure(result, path)] for label, path, _ in FIGURES})
    return result


def figure(result: dict[str, Any], path: tuple[str, ...]) -> float:
    value: Any = result
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return float("nan") if value is None else float(value)


def judge(values: dict[str, list[float]]) -> dict[str, bool]:
    """The issue's targets over every run's value of each figure: on the worst run (the
    highest CPU time, the lowest share), CER on the mean."""
    def mean(label: str) -> float:
        return sum(values[label]) / len(values[label])

    return {
        "train CPU s <= 600": max(values["train CPU s"]) <= TRAIN_CPU_TARGET_S,
        "audio->video R@1 by class >= 0.9": min(values["audio->video R@1 class"])
        >= RETRIEVAL_TARGET,
        "video->audio R@1 by class >= 0.9": min(values["video->audio R@1 class"])
        >= RETRIEVAL_TARGET,
        "video->text names the class >= 0.9": min(values["video->text names class"])
        >= NAMED_TARGET,
        "audio->text names the class >= 0.9": min(values["audio->text names class"])
        >= NAMED_TARGET,
        "video->text CER <= 0.1 (mean)": mean("video->text CER") <= CER_TARGET,
        "audio->text CER <= 0.1 (mean)": mean("audio->text CER") <= CER_TARGET,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per figure: every run's value, the mean and the worst (lowest, or highest where lower
    is better)."""
    summary = {}
    for label, path, higher_better in FIGURES:
        values = [figure(run, path) for run in runs]
        summary[label] = {"runs": values, "mean": sum(values) / len(values),
                          "worst": min(values) if higher_better else max(values)}
    return summary


def print_run(result: dict[str, Any]) -> None:
    """One run's figures, as the bench has always printed them."""
    metrics, named, ceiling = result["metrics"], result["named"], result["ceiling"]
    by_label = metrics["retrieval_by_label"]
    print(f"{metrics['samples']} unseen clips, {len(by_label)} retrieval tasks")
    print(f"{'retrieval':<16}{'R@1 class':>10}{'chance':>8}{'R@1 clip':>10}{'chance':>8}"
          f"{'R@5 clip':>10}{'median':>8}")
    for task, m in by_label.items():
        clip = metrics["retrieval"][task]
        print(f"{task:<16}{m['r1']:>10.3f}{m['chance_r1']:>8.3f}{clip['r1']:>10.3f}"
              f"{clip['chance_r1']:>8.3f}{clip['r5']:>10.3f}{clip['median_rank']:>8g}")
    print(f"{'transcripts':<16}{'names class':>12}{'token acc':>10}{'CER':>8}")
    for task, m in metrics["text"].items():
        share = named.get(task)
        print(f"{task:<16}{'-' if share is None else f'{share:.3f}':>12}"
              f"{m['token_accuracy']:>10.3f}{m['cer']:>8.3f}")
    recon = metrics["reconstruction"]
    print(f"reconstruction: image PSNR {recon['image']['psnr']:.2f} dB, video PSNR "
          f"{recon['video']['psnr']:.2f} dB, audio mel L1 {recon['audio']['mel_l1']:.3f}")
    print("chance for 'names class': 1/8 = 0.125 if a model named a class at random")
    for modality in ("video", "audio"):
        m = ceiling[modality]
        print(f"ceiling, R@1 by class of the true class-mean {modality} of the training clips: "
              f"{m['correlation']:.3f} ranked by correlation, {m['mse']:.3f} by MSE")
    print(f"ceiling, R@1 of the clip itself knowing only its class: {ceiling['clip']:.3f}")


def print_summary(summary: dict[str, dict[str, Any]]) -> None:
    """One line per figure: each run's value, the mean and the worst."""
    runs = len(next(iter(summary.values()))["runs"])
    print(f"\n{'figure':<26}" + "".join(f"{f'run {i + 1}':>8}" for i in range(runs))
          + f"{'mean':>8}{'worst':>8}")
    for label, s in summary.items():
        print(f"{label:<26}" + "".join(f"{v:>8.3f}" for v in s["runs"])
              + f"{s['mean']:>8.3f}{s['worst']:>8.3f}")


def print_targets(targets: dict[str, bool]) -> None:
    for name, ok in targets.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="Working folder (default: a temporary one); "
                        "prepared worlds in it are reused.")
    parser.add_argument("--keep", action="store_true", help="Keep the working folder.")
    parser.add_argument("--train-videos", type=int, default=96)
    parser.add_argument("--eval-videos", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--phase-schedule", default="default")
    parser.add_argument("--lr", help="Peak learning rate (default: omni train's).")
    parser.add_argument("--text-decoding", default="autoregressive",
                        choices=("autoregressive", "parallel"))
    parser.add_argument("--seed", type=int, default=0,
                        help="Training seed (of the first run, with --seeds).")
    parser.add_argument("--seeds", type=int, default=1,
                        help="Runs: run i trains with seed --seed + i; the last of several "
                             "runs uses a second world (seeds 2 and 3 instead of 0 and 1).")
    parser.add_argument("--world", choices=("demo", "realistic"), default="demo",
                        help="The demo world, or one with the gaps of real video.")
    parser.add_argument("--json", action="store_true", help="Print one JSON document.")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")

    adopt_orphans()
    work = args.work or Path(tempfile.mkdtemp(prefix="omni-learning-"))
    work.mkdir(parents=True, exist_ok=True)
    runs, world_timings = [], {}
    try:
        for i in range(args.seeds):
            train_seed, eval_seed = WORLDS[1 if args.seeds > 1 and i == args.seeds - 1 else 0]
            shards = world_folders(args, work, train_seed, eval_seed, world_timings)
            print(f"run {i + 1}/{args.seeds}: training seed {args.seed + i}, world seeds "
                  f"{train_seed} (training) and {eval_seed} (unseen)", file=sys.stderr,
                  flush=True)
            run = train_and_evaluate(args, work, shards, args.seed + i)
            run["world"] = [train_seed, eval_seed]
            runs.append(run)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    settings = {key: value for key, value in vars(args).items() if key not in ("work", "keep",
                                                                               "json")}
    if args.seeds == 1:
        run = runs[0]
        if args.json:
            print(json.dumps({"settings": settings,
                              "timings": {**world_timings, **run["timings"]},
                              **{k: run[k] for k in ("metrics", "named", "ceiling", "targets")}},
                             indent=1))
            return
        print(f"\nsettings: {settings}")
        print_run(run)
        print_targets(run["targets"])
        return
    summary = summarize(runs)
    targets = judge({label: s["runs"] for label, s in summary.items()})
    if args.json:
        print(json.dumps({"settings": settings, "world_timings": world_timings, "runs": runs,
                          "summary": summary, "targets": targets}, indent=1))
        return
    print(f"\nsettings: {settings}")
    for i, run in enumerate(runs):
        print(f"\n== run {i + 1}: training seed {run['seed']}, world {run['world']}")
        print_run(run)
    print_summary(summary)
    print("targets on the worst run (CER on the mean):")
    print_targets(targets)


if __name__ == "__main__":
    main()
