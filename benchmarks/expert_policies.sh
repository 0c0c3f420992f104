#!/usr/bin/env bash
# Issue #22 part 1: expert-strength SAC behaviour policies, one background process per env.
# Each run stops at the first checkpoint whose stochastic return reaches >= 80% of D4RL's expert
# return (hopper 2600, halfcheetah 9708, walker2d 3700; confirmed on 50 episodes), or at 1M steps.
# Resumable: rerunning this script continues every unfinished run from its latest snapshot
# (runs/behaviour/<env>/progress); a finished env (meta.json present) only (re)generates its levels.
# Across sessions (runs/ is not kept): every snapshot also writes a few-MB carry-over to
# benchmarks/results/expert_policies/carry/<env> (SAC state + optimisers, returns so far, medium's
# candidate actors); commit it, and a rerun on a fresh checkout continues from it (fresh buffer).
# nice 19: three runs share the 2-core machine with other work. (The XLA_FLAGS below do not make
# this jaxlib's CPU dots single-threaded, measured in session 14; kept for older jaxlibs.)
#   bash benchmarks/expert_policies.sh [env ...]      (default: hopper halfcheetah walker2d)
set -u
cd "$(dirname "$0")/.."
envs=${*:-hopper halfcheetah walker2d}
out=benchmarks/results/expert_policies
mkdir -p "$out" runs/behaviour
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
for env in $envs; do
  if [ -f "runs/behaviour/$env/meta.json" ]; then
    args=(--from_policies)
  else
    args=(--sac_steps=1000000 --eval_every=10000 --checkpoint_every=20000 --carry_dir="$out/carry")
  fi
  nohup nice -n 19 python -m experiments.make_dataset --env="$env" --policy_dir=runs/behaviour \
    --out="${EXPERT_DATASETS:-$HOME/.minari_expert}" --progress=false "${args[@]}" >> "$out/$env.log" 2>&1 &
  echo "$env: pid $! (log $out/$env.log)"
done
