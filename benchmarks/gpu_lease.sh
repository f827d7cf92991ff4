#!/usr/bin/env bash
# One GPU lease, one prepared script: what issue 16 still has to measure on a card, each step under its
# own time limit (about 9 minutes in all on an H200), its output kept in $OUT (default ./gpu_out):
#
#   1. the card, the driver and the packages;
#   2. benchmarks/gpu.py --quick on Llama-3-8B and Gemma-3-27B (scoring MFU, the sweep against its
#      naive baselines, model.generate against generate_many, plain and with compile_decoding), each
#      writing its rates into a copy of the plan's profiles ($OUT/device_profiles.json: copy it over
#      data/device_profiles.json to adopt it);
#   3. Gemma-3-27B generation at batch 64 (the >= 2,000 tok/s goal of compiled decoding);
#   4. Qwen3-30B-A3B scoring with the grouped_mm and the eager experts (the >= 40% MFU goal).
#
# Nothing is downloaded: models are built from their configs with random weights. The device image
# has torch and transformers but not this repository's pins; carry transformers==5.24.0 as a wheel in
# .whl/ (see /work/.library/device/README.md) and it is installed first. A smoke run of every step on a
# CPU, with the tiny shape:
#
#   DEVICE=cpu SMOKE=1 bash benchmarks/gpu_lease.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
device=${DEVICE:-cuda}
python=${PYTHON:-python3}

# the package from this checkout, without installing it (no network there): animacy.collect is collect/
pkg=$(mktemp -d)
cp -r animacy "$pkg/animacy"
for sub in collect analysis data report; do ln -s "$PWD/$sub" "$pkg/animacy/$sub"; done
export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
  $python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
cp data/device_profiles.json "$out/device_profiles.json"

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, its output in $out/NAME.log
  local name=$1 limit=$2
  shift 2
  local t=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - t)) s" | tee -a "$out/steps.txt"
  grep -h '^{' "$out/$name.log" | tail -1 >>"$out/results.jsonl" || true
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  $python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} >"$out/environment.txt" 2>&1
cat "$out/environment.txt"

bench=(benchmarks/gpu.py --device "$device" --profiles "$out/device_profiles.json")
if [[ -n "${SMOKE:-}" ]]; then  # every step on the tiny shape, small sizes
  small=(--model tiny --seq 64 --batch-tokens 256 --gen-batch 2 --gen-tokens 4 --compile-backend eager)
  step dense 300 $python "${bench[@]}" "${small[@]}" --quick --write-profile h200
  step generation 300 $python "${bench[@]}" "${small[@]}" --repeats 1
  step experts 300 $python "${bench[@]}" "${small[@]}" --quick --experts eager
else
  step llama3-8b 150 $python "${bench[@]}" --model llama3-8b --quick --write-profile h200
  step gemma3-27b 150 $python "${bench[@]}" --model gemma3-27b --quick --write-profile h200
  step gemma3-27b-generation 150 $python "${bench[@]}" --model gemma3-27b --repeats 1 --seq 256 --batch-tokens 8192 \
    --gen-batch 64 --gen-tokens 64
  step qwen3-grouped_mm 60 $python "${bench[@]}" --model qwen3-30b-a3b --quick --experts grouped_mm
  step qwen3-eager 60 $python "${bench[@]}" --model qwen3-30b-a3b --quick --experts eager
fi
echo "results: $out/results.jsonl; steps: $out/steps.txt; the profiles measured: $out/device_profiles.json"
