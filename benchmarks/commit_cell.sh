#!/usr/bin/env bash
# Commits a finished benchmark cell's records, and only them: every run's config.json, launch.json,
# metrics.csv and summary.json under <cell>/runs (ignored by git, hence -f; checkpoints and snapshots
# stay out), the cell's logs and its table.md. runs/ does not outlive a machine, and sessions 24–25
# lost three finished grid cells whose records had not been committed yet: chain this after the cell,
#   AGENTS="o2ppo direct_ppo" bash benchmarks/grid_quick.sh o2o/walker2d/medium-v0 &&
#     bash benchmarks/commit_cell.sh benchmarks/results/grid_quick/o2o_walker2d_medium-v0
# Other staged changes are left out of the commit (git commit --only). Retries while another git
# command holds the index lock.
set -u
cd "$(dirname "$0")/.."
cell=${1:?usage: bash benchmarks/commit_cell.sh <results folder of one cell, e.g. benchmarks/results/grid_quick/o2o_hopper_medium-v0>}
cell=${cell%/}
[ -d "$cell/runs" ] || { echo "error: $cell/runs does not exist: pass the folder that holds runs/, logs/ and table.md" >&2; exit 2; }
mapfile -t files < <(find "$cell/runs" -type f \( -name config.json -o -name launch.json \
  -o -name metrics.csv -o -name summary.json \) | sort; ls "$cell"/logs/*.log "$cell/table.md" 2>/dev/null)
[ ${#files[@]} -gt 0 ] || { echo "error: no run records (config.json, metrics.csv, ...) under $cell/runs" >&2; exit 2; }
message=${MESSAGE:-"$(basename "$cell"): run records ($(date +%F))"}
for attempt in $(seq 1 30); do
  if git add -f -- "${files[@]}"; then
    if git diff --cached --quiet -- "${files[@]}"; then
      echo "the records of $cell are already committed (${#files[@]} files)"; exit 0
    fi
    if git commit -q -m "$message" --only -- "${files[@]}"; then
      echo "committed the records of $cell (${#files[@]} files)"; exit 0
    fi
  fi
  sleep 10
done
echo "error: could not commit $cell (git index locked for 5 minutes?)" >&2
exit 1
