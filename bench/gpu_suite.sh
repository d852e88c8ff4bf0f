#!/usr/bin/env bash
# Every GPU figure the issues ask for, in one device session (see README: Development). Each step is bounded
# by its own timeout; JSON results and one combined log go to $OUT (8 files at most come back).
#   bench/gpu_suite.sh            (on the device, from the repository root, with .whl/ carried)
set -u
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
OUT=${OUT:-/tmp/kimchi-gpu-out}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  >>"$LOG" 2>&1 || { echo "wheel install failed"; tail -20 "$LOG"; exit 1; }
export PYTHONPATH=/tmp/site:.
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc;
  python3 -c "import torch, torchvision, fastai; print(torch.__version__, torchvision.__version__, fastai.__version__, torch.cuda.is_available())"; } >>"$LOG" 2>&1
W=/tmp/kimchi-work
mkdir -p "$W"
step() {
  local name=$1 limit=$2; shift 2
  local start=$(date +%s)
  echo "=== $name: $*" >>"$LOG"
  timeout "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "=== $name rc=$rc in $(( $(date +%s) - start )) s" | tee -a "$LOG"
}
step engine 240 python3 bench/engine_bench.py --device cuda --home "$W/eng" --out "$OUT/engine_gpu.json"
step retrain 300 python3 bench/retrain_bench.py --mode trainer --classes 11 --per-class 500 --work "$W/rt" --out "$OUT/retrain_gpu.json"
step train 240 python3 bench/train_bench.py --device cuda --classes 11 --per-class 200 --work "$W/tr" --out "$OUT/train_gpu.json"
step parity 150 python3 bench/parity_bench.py --home "$W/eng" --out "$OUT/parity_gpu.json"
step rss 120 python3 bench/engine_bench.py --device cuda --home "$W/eng" --rss 10000 --out "$OUT/rss_gpu.json"
grep -E "^=== .* rc=" "$LOG"
