#!/usr/bin/env bash
# Issue #21: every comparison method beside O2SAC, O2TD3, O2PPO and direct fine-tuning, --budget=quick,
# 5 seeds vmapped per job, on the three medium sets; one table per dataset (pi_off, early minimum over
# the first 10% of the online steps with the dip, best, final +- std) under
# benchmarks/results/baselines_quick/<dataset>/table.md. Agents sharing an offline run reuse it
# (o2sac / direct_sac / proto / off2on with --seeds=1 read the same CQL run, ...). Resumable: rerun it
# and every finished run is reused, an interrupted one continues from its snapshot.
#   bash benchmarks/baselines_quick.sh [dataset ...]
#   AGENTS="o2td3 o2sac" bash benchmarks/baselines_quick.sh     # a subset of the agents, in this order
# Datasets (1M transitions each; the embedded o2o/hopper/medium-v0 is a 100k subset, and a local set
# of the same id wins): the behaviour policies of the earlier evidence (#5, #19), i.e. those from
# before #22 replaced them (hopper 150k/300k, halfcheetah 120k, walker2d 150k SAC steps):
#   git archive 3efe74f^ behaviour_policies/hopper | tar -x -C /tmp/old
#   git archive 3e8f77b behaviour_policies/walker2d | tar -x -C /tmp/old
#   git archive 980b490 behaviour_policies/halfcheetah | tar -x -C /tmp/old
#   python -m experiments.make_dataset --env=hopper,halfcheetah,walker2d --from_policies --policy_dir=/tmp/old/behaviour_policies --levels=medium
# Off2On runs 3 seeds (15 CQL members): at 5 seeds its 25 CQL pre-trainings alone would cost as much as
# the rest of a dataset's row (EXTRA applies to every other agent).
# Also: RESULTS (results root, default benchmarks/results/baselines_quick; benchmarks/grid_quick.sh
# sets it), and PRETRAIN_TD3BC / PRETRAIN_CQL / PRETRAIN_IQL (offline steps of the agents built on
# that source, instead of the quick budget's; agents sharing a source then still share one run), and
# CQL_SEEDS (seeds of the agents built on the CQL source, default 5; #22 asks >= 3 for O2SAC's rows).
set -u
cd "$(dirname "$0")/.."
datasets=${*:-o2o/hopper/medium-v0 o2o/halfcheetah/medium-v0 o2o/walker2d/medium-v0}
agents=${AGENTS:-o2td3 direct_td3 proto_td3 o2sac direct_sac proto calql samg_calql off2on aca o2ppo direct_ppo iql_ft awac_ft pex}
for dataset in $datasets; do
  out=${RESULTS:-benchmarks/results/baselines_quick}/$(echo "$dataset" | tr / _)
  for agent in $agents; do
    extra="--seeds=5 --eval_every=1000"   # the paper's protocol: an evaluation every 1k online steps
    [ "$agent" = off2on ] && extra="--seeds=3 --eval_every=1000"
    case $agent in o2sac|direct_sac|proto) extra="--seeds=${CQL_SEEDS:-5} --eval_every=1000" ;; esac
    # O2PPO's rollouts: its quick budget's own evaluation every 2,048 of 51,200 steps (two in the
    # first 10%); the off-policy agents' quick 2,000 would leave none in the first 1,000 steps.
    case $agent in o2ppo|direct_ppo) extra="--seeds=5" ;; esac
    case $agent in
      o2td3|direct_td3|proto_td3) steps=${PRETRAIN_TD3BC:-} ;;
      o2sac|direct_sac|proto|off2on) steps=${PRETRAIN_CQL:-} ;;
      o2ppo|direct_ppo|iql_ft|pex) steps=${PRETRAIN_IQL:-} ;;
      *) steps= ;;
    esac
    [ -n "$steps" ] && extra="$extra --pretrain_steps=$steps"
    OUT=$out EARLY=0.1 EXTRA="$extra" bash benchmarks/o2o_quick.sh "$dataset" "$agent"
  done
done
