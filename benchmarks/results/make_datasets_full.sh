#!/usr/bin/env bash
# Full-size D4RL-style datasets (1M transitions per level, 2M medium-expert) for the three envs.
# Log per env: benchmarks/results/make_dataset_<env>.log
set -e
cd "$(dirname "$0")/../.."
for env in hopper halfcheetah walker2d; do
  python -m experiments.make_dataset --env=$env --sac_steps=300000 --size=1000000 --progress=false \
    > benchmarks/results/make_dataset_$env.log 2>&1
done
