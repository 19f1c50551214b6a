#!/usr/bin/env bash
# The same 5-trial Fashion-MNIST search trained on CUDA and on the CPU, side by side:
# per-trial train and total seconds, where each trial trained and was timed, and the two
# fronts (accuracy against latency; latency is timed on ONNX Runtime CPU in both runs).
# Needs a CUDA build of torch and a GPU; run it on the device machine and paste its
# output, with the card it names, into the docs.
#
#   scripts/gpu_check.sh [TRIALS] [EPOCHS]        # defaults: 5 trials, 3 epochs
#   TASK=digits DEVICES=cpu scripts/gpu_check.sh 1 1   # the script's own check, on any machine
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
TRIALS="${1:-5}"
EPOCHS="${2:-3}"
TASK="${TASK:-fashion-mnist}"
DEVICES="${DEVICES:-cuda cpu}"
WORK="$(mktemp -d /tmp/slimtune-gpu-check-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
export SLIMTUNE_CACHE_DIR="$WORK/cache" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
case " $DEVICES " in *" cuda "*)
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "Error: no CUDA device here (torch.cuda.is_available() is False)." >&2
    exit 2
  fi
  "$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"card: {p.name}, {p.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, CUDA {torch.version.cuda}")';;
esac
"$PY" -c 'import os, platform, torch; print(f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; task '"$TASK"', '"$TRIALS"' trials, '"$EPOCHS"' epochs")'
for device in $DEVICES; do
  start=$EPOCHREALTIME
  "$PY" -m slimtune.cli run --study "check-$device" --task "$TASK" --trials "$TRIALS" --epochs "$EPOCHS" \
    --device "$device" --seed 0 --no-early-stopping --json --storage "sqlite:///$WORK/$device.db" >/dev/null
  echo "$device: whole command $(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $start }") s" \
    "(the first run also trains the baseline, which both share through the cache)"
done
"$PY" - "$WORK" $DEVICES <<'EOF'
import json, subprocess, sys

work, devices = sys.argv[1], sys.argv[2:]


def rows(device, *extra):
    out = subprocess.run([sys.executable, "-m", "slimtune.cli", "show", f"check-{device}", "--json", *extra,
                          "--storage", f"sqlite:///{work}/{device}.db"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["trials"]


def cell(value, fmt):
    return "-" if value is None else format(value, fmt)


for device in devices:
    all_rows, front = rows(device), {r["trial"] for r in rows(device, "--pareto")}
    print(f"\n### trained on {device}\n")
    print("| trial | state | front | accuracy | latency ms | train s | total s | trained on | timed on |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in all_rows:
        print(f"| {r['trial']} | {r['state']} | {'*' if r['trial'] in front else ''} | {cell(r.get('accuracy'), '.4f')} "
              f"| {cell(r.get('latency_ms'), '.3f')} | {cell(r.get('train_seconds'), '.1f')} "
              f"| {cell(r.get('total_seconds'), '.1f')} | {json.dumps(r.get('trained_on'))} | {json.dumps(r.get('timed_on'))} |")
    done = [r for r in all_rows if r.get("train_seconds") is not None]
    if done:
        print(f"\nmean train s per trial on {device}: {sum(r['train_seconds'] for r in done) / len(done):.1f} "
              f"({len(done)} trials)")
EOF
