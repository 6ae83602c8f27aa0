#!/usr/bin/env bash
# The one prepared GPU check of issue 10 §3, for a lent GPU machine (e.g. one H200, 16 cores,
# no network): every figure `bench/train_step.py` needs for the README's goals, in one run of
# under 8 minutes.
#
#   1. nvidia-smi, the Python, torch and CUDA versions;
#   2. a small prepared folder (`omni demo-videos` in parallel + `omni prepare`) under $DATA;
#   3. batch 4, default config, eager: peak memory with AMP and gradient checkpointing;
#   4. `bench/sync_check.py`: 16 trainer steps under torch.cuda.set_sync_debug_mode("error");
#   5. batch 32, eager, then compiled: MFU;
#   6. batch 32 with --shards: loader-fed vs synthetic steps/s;
#   7. `bench/loader.py` (its own 4 generated videos): the loader's CPU ms a sample with 0, 2
#      and 8 workers against its decode floor, and the cores one GPU needs.
#
# Each step runs under `timeout` (and within the whole run's deadline); a failed step is noted
# and the next one runs. Every step's JSON and log go to $OUT (default ./gpu-out), with
# summary.txt last. Nothing is downloaded: PYTHON (default `python`) must already have the
# dependencies (the repo's venv, or `pip install -e .` from local wheels); the repo itself is
# put on PYTHONPATH, so it need not be installed.
#
#   bash bench/gpu_check.sh
#   PYTHON=.venv/bin/python OUT=/tmp/gpu-out bash bench/gpu_check.sh
set -u

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python}
OUT=${OUT:-./gpu-out}
DATA=${DATA:-/tmp/omni-gpu-check}  # shards stay out of $OUT: only results come back
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
# extra bench/train_step.py arguments, last so they win; a dry run on a CPU machine:
# BENCH_ARGS="--device cpu --dim 32 --layers 2 --heads 4 --tasks video->audio" STEPS=1 ...
BENCH_ARGS=${BENCH_ARGS:-}
DEMO_PROCS=${DEMO_PROCS:-8}  # demo-videos processes at once, 16 videos each
DEMO_SECONDS=${DEMO_SECONDS:-60}  # per video: 59 clips of 2 s
DEADLINE=$((SECONDS + ${BUDGET_S:-450}))  # whole run, leaving room under 8 minutes
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: > "$OUT/steps.tsv"

# run_step NAME LIMIT_S CMD...: stdout to NAME.out, stderr to NAME.log, status to steps.tsv
run_step() {
    local name=$1 limit=$2 left rc start
    shift 2
    left=$((DEADLINE - SECONDS))
    if ((left < 10)); then
        echo "== $name: skipped, the run's deadline has passed"
        printf '%s\tskipped\t0\n' "$name" >> "$OUT/steps.tsv"
        return
    fi
    ((limit > left)) && limit=$left
    echo "== $name (at most ${limit}s)"
    start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.log"
    rc=$?
    local status=ok
    ((rc == 124 || rc == 137)) && status=timeout
    ((rc != 0 && rc != 124 && rc != 137)) && status="failed rc=$rc"
    printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" >> "$OUT/steps.tsv"
    echo "   $status in $((SECONDS - start))s"
    [[ $status == ok ]] || tail -n 5 "$OUT/$name.log"
}

bench() {  # bench NAME LIMIT_S ARGS...: bench/train_step.py on the GPU, one JSON document
    local name=$1 limit=$2
    shift 2
    run_step "$name" "$limit" "$PY" "$REPO/bench/train_step.py" --device cuda --json \
        --steps "$STEPS" --warmup "$WARMUP" "$@" $BENCH_ARGS  # split on purpose
    [[ -s $OUT/$name.out ]] && mv "$OUT/$name.out" "$OUT/$name.json"
}

make_data() {
    # 8 x 16 videos of 60 s (about 1.5 s each to write); units of 8 videos give 16 train
    # shards, one per DataLoader worker, and an epoch of 7552 clips, 236 batches of 32: the
    # loader-fed runs (96 batches per pair) cross about one epoch end, as training rarely does
    rm -rf "$DATA/videos" "$DATA/prepared" && mkdir -p "$DATA/videos" || return 1
    local seed pids=()
    for ((seed = 0; seed < DEMO_PROCS; seed++)); do
        "$PY" -m cli.app demo-videos "$DATA/videos/s$seed" --count 16 --seed "$seed" \
            --duration "$DEMO_SECONDS" > /dev/null &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || return 1; done
    "$PY" -m cli.app prepare "$DATA/videos" "$DATA/prepared" --videos-per-unit 8 \
        --eval-fraction 0 --json
}

info() {
    nvidia-smi
    "$PY" -c 'import sys, torch; print("python", sys.version.split()[0]); print("torch",
torch.__version__, "| CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version(),
"| available", torch.cuda.is_available()); print("device", torch.cuda.get_device_name(0))'
    "$PY" -c 'import av, webdataset, typer, rich, omnilatent, pipeline, cli.app' \
        && echo "imports ok"
}

# `timeout` runs programs, not shell functions: these two run in a child bash
export -f info make_data
export PY DATA DEMO_PROCS DEMO_SECONDS
run_step env 30 bash -c info
cat "$OUT/env.out"
mv "$OUT/env.out" "$OUT/env.txt"
run_step data 150 bash -c make_data
[[ -s $OUT/data.out ]] && mv "$OUT/data.out" "$OUT/data.json"
bench b4_eager 90 --batch-size 4
run_step sync_check 60 "$PY" "$REPO/bench/sync_check.py" --device cuda  # short: runs early
bench b32_eager 90 --batch-size 32
# a recompile (or a block run eagerly past the recompile limit) shows in b32_compiled.log
TORCH_LOGS=recompiles bench b32_compiled 180 --batch-size 32 --compile
if [[ -f $DATA/prepared/manifest.json ]]; then
    bench b32_loader 150 --batch-size 32 --shards "$DATA/prepared" --workers "$(nproc)"
else
    echo "== b32_loader: skipped, no prepared folder"
    printf 'b32_loader\tskipped: no data\t0\n' >> "$OUT/steps.tsv"
fi
(cd "$REPO/bench" && OMP_NUM_THREADS=1 run_step loader_cpu 120 "$PY" loader.py \
    --workers 0 2 8 --repeats 3 --json)
[[ -s $OUT/loader_cpu.out ]] && mv "$OUT/loader_cpu.out" "$OUT/loader_cpu.json"

# summary.txt: each step's status, then every run, loader comparison and verdict
"$PY" - "$OUT" > "$OUT/summary.txt" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
print("step            status        seconds")
for line in (out / "steps.tsv").read_text().splitlines():
    name, status, seconds = line.split("\t")
    print(f"{name:<15} {status:<13} {seconds}")
for path in sorted(out.glob("b*.json")):
    try:
        report = json.loads(path.read_text())
    except ValueError as error:
        print(f"\n{path.name}: unreadable ({error})")
        continue
    print(f"\n{path.stem}: {report.get('device_name', report['device'])}, batch "
          f"{report['batch_size']}, AMP {report['amp']}, config {report.get('config')}")
    for r in report["runs"]:
        print(f"  {r['task']:<13} ckpt={str(r['grad_checkpointing']):<5} step {r['step_s']}s"
              f" | {r['samples_per_s']} samples/s | peak {r.get('peak_mem_gib')} GiB"
              f" | MFU {r.get('mfu')}")
    for r in report.get("loader_runs", []):
        print(f"  {r['task']:<13} " + (f"skipped: {r['skipped']}" if "skipped" in r else
              f"synthetic {r['synthetic_steps_per_s']} steps/s | loader-fed "
              f"{r['loader_steps_per_s']} steps/s | ratio {r['loader_vs_synthetic']} "
              f"({r['workers']} workers, {r['epoch_ends_while_timed']} epoch end(s))"))
    for v in report.get("verdicts", []):
        at = f" (goal at batch {v['goal_batch_size']})" if v["goal_batch_size"] else ""
        print(f"  {'PASS' if v['pass'] else 'FAIL'} {v['goal']} {v['task']}: {v['value']} "
              f"{v['target']} at batch {v['batch_size']}{at}")
loader = out / "loader_cpu.json"
if loader.is_file():
    report = json.loads(loader.read_text())
    for name, enc in report["encodings"].items():
        floor = enc["floor"]["cpu_ms_per_sample"]
        print(f"\nloader_cpu, {name} clips: floor {floor} CPU ms a sample; " + "; ".join(
            f"{w} workers {c['cpu_ms_per_sample']} ms, loader/floor "
            f"{enc['loader_over_floor'][w]:.2f}, {c['samples_per_s']} samples/s"
            for w, c in enc["loader"].items()))
    print("cores to feed one GPU: " + "; ".join(
        f"{name} loader {c['loader']:.1f}, floor {c['floor']:.1f}"
        for name, c in report["cores_per_gpu"].items()))
sync = out / "sync_check.out"
if sync.is_file() and sync.read_text().strip():
    print(f"\nsync_check: {sync.read_text().strip()}")
EOF
cat "$OUT/summary.txt"
echo "results in $OUT"
