#!/usr/bin/env bash
# One study on every GPU of one machine: one process per GPU, each running one shard.
#   collect/launch/multi_gpu.sh study.toml runs/study            # all visible GPUs
#   GPUS="0 1" collect/launch/multi_gpu.sh study.toml runs/study  # a chosen set
# Rerun the same command to resume after a crash: finished jobs are skipped.
set -euo pipefail
config=${1:?usage: multi_gpu.sh CONFIG RUN}
run=${2:?usage: multi_gpu.sh CONFIG RUN}
gpus=${GPUS:-$(nvidia-smi --query-gpu=index --format=csv,noheader | tr '\n' ' ')}
read -r -a ids <<< "$gpus"
n=${#ids[@]}
mkdir -p "$run"
pids=()
for i in "${!ids[@]}"; do
  CUDA_VISIBLE_DEVICES=${ids[$i]} .venv/bin/animacy collect run "$config" --out "$run" --shard "$i/$n" --quiet \
    > "$run/shard-$i.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
[ "$status" = 0 ] && echo "all $n shards finished: $run" || echo "a shard failed: see $run/shard-*.log" >&2
exit "$status"
