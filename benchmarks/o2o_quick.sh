#!/usr/bin/env bash
# Quick-budget O2O comparison, 5 seeds vmapped per job, on a local full-size dataset (default
# o2o/hopper/medium-v0, 1M transitions; generate it with `python -m experiments.make_dataset
# --env=hopper --from_policies`). Logs and run dirs under benchmarks/results/o2o_quick/, then the table.
#   bash benchmarks/o2o_quick.sh [dataset] [agents...]
# Environment: PYTHON (interpreter, default python), OUT (results folder, default
# benchmarks/results/o2o_quick), EXTRA (flags added to every finetune command, e.g.
# EXTRA=--eval_every=2000), EARLY (the early window's fraction, default 0.2).
set -u
cd "$(dirname "$0")/.."
dataset=${1:-o2o/hopper/medium-v0}
shift || true
agents=${@:-o2td3 direct_td3 o2sac direct_sac o2ppo direct_ppo aca o3f samg_cql samg_awac samg_iql}
out=${OUT:-benchmarks/results/o2o_quick}
mkdir -p "$out/logs"
for agent in $agents; do
  extra="${EXTRA:-}"
  name=$(echo "$dataset" | tr / _)_$agent
  echo "== $agent on $dataset ($(date +%T))"
  ${PYTHON:-python} -m experiments.finetune --agent="$agent" --dataset="$dataset" --seeds=5 --budget=quick \
    --out_dir="$out/runs" --progress=false $extra > "$out/logs/$name.log" 2>&1
  echo "   exit $? ($(date +%T)); $( (grep -E "^(best|final) fine-tuned" "$out/logs/$name.log" || tail -n 2 "$out/logs/$name.log") | head -c 400)"
done
${PYTHON:-python} -m benchmarks.o2o_table --runs="$out/runs" --early="${EARLY:-0.2}" --out="$out/table.md"
