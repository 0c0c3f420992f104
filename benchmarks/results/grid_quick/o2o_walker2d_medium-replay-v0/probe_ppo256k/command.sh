# Session 26, from the repository root, after the grid's walker2d-medium-replay PPO row (it reuses that
# row's IQL 200k and re-evaluation): O2PPO and direct PPO at the paper's 250k-class online budget.
c=benchmarks/results/grid_quick/o2o_walker2d_medium-replay-v0
out=$c/probe_ppo256k
mkdir -p $out/logs
for agent in o2ppo direct_ppo; do
  echo "== $agent $(date +%T)"
  MINARI_DATASETS_PATH=$HOME/.minari_expert python -m experiments.finetune --agent=$agent --dataset=o2o/walker2d/medium-replay-v0 \
    --seeds=5 --budget=quick --online_steps=256000 --from=$c/runs/reevaluate/o2ppo/o2o_walker2d_medium-replay-v0/seed0x5 \
    --out_dir=$out/runs --progress=false > $out/logs/$agent.log 2>&1
  echo "   exit $? $(date +%T)"; grep -E "final fine|best fine|pi_off" $out/logs/$agent.log
done
