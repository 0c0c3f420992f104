#!/usr/bin/env bash
# Issue #22 part 2: the O2O grid at --budget=quick (5 seeds vmapped per job) on the 12 sets hopper,
# halfcheetah, walker2d x medium, medium-replay, medium-expert, expert, generated from the
# expert-strength behaviour policies: O2TD3 and direct TD3 from one TD3+BC run, O2SAC and direct SAC
# from one CQL run, O2PPO and direct PPO from one IQL run; then the report
# (benchmarks/results/grid_quick/report.md, tables, curves, rliable statistics).
#   bash benchmarks/grid_quick.sh [dataset ...]
#   AGENTS="o2td3 direct_td3" bash benchmarks/grid_quick.sh o2o/hopper/expert-v0
# Datasets: $MINARI_DATASETS_PATH, default ~/.minari_expert (the #19/#21 medium sets of the older
# policies keep the default Minari store), written by `bash benchmarks/expert_datasets.sh`
# Converged offline sources (#22: every O2O row starts from a flat offline curve): the quick budget's
# 100k TD3+BC, and IQL 200k / CQL 100k (the quick budget's 10k are far from converged; session 20,
# benchmarks/results/grid_quick/offline_convergence.md). PRETRAIN_TD3BC / PRETRAIN_CQL / PRETRAIN_IQL
# override the offline steps, CQL_SEEDS the SAC rows' seeds (default 3: a 100k CQL is ~40 min per
# set for 3 seeds on 2 cores). Check a source with
#   python -m benchmarks.offline_convergence 'benchmarks/results/grid_quick/*/runs/pretrain/cql/*'
# Resumable (a finished run is reused, an interrupted one continues from its snapshot), but runs/
# does not outlive a session: commit each finished cell as it ends, with
#   bash benchmarks/commit_cell.sh benchmarks/results/grid_quick/<cell>
set -u
cd "$(dirname "$0")/.."
export MINARI_DATASETS_PATH=${MINARI_DATASETS_PATH:-$HOME/.minari_expert}
export PRETRAIN_IQL=${PRETRAIN_IQL:-200000} PRETRAIN_CQL=${PRETRAIN_CQL:-100000} CQL_SEEDS=${CQL_SEEDS:-3}
datasets=${*:-}
if [ -z "$datasets" ]; then
  for env in hopper halfcheetah walker2d; do
    for level in medium medium-replay medium-expert expert; do datasets="$datasets o2o/$env/$level-v0"; done
  done
fi
RESULTS=benchmarks/results/grid_quick AGENTS=${AGENTS:-o2td3 direct_td3 o2sac direct_sac o2ppo direct_ppo} \
  bash benchmarks/baselines_quick.sh $datasets
${PYTHON:-python} -m experiments.report 'benchmarks/results/grid_quick/*/runs/finetune' \
  --out=benchmarks/results/grid_quick --early=0.1
