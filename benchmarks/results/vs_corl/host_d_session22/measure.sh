#!/usr/bin/env bash
# TD3+BC update rate, before (HEAD 21069ff) and after first_critic, with CORL, alternating rounds.
# Every other heavy process is SIGSTOPped for the measurement and resumed after.
export MINARI_DATASETS_PATH=$HOME/.minari_expert
pids=$(pgrep -f "experiments\.(finetune|make_dataset|pretrain|align)" | tr '\n' ' ')
echo "stopping: $pids"; kill -STOP $pids 2>/dev/null
trap 'kill -CONT $pids 2>/dev/null; echo resumed' EXIT
sleep 3; uptime
for r in 1 2 3; do
  for side in after before; do
    dir=<this repo>; [ $side = before ] && dir=<worktree of 21069ff>
    echo "== round $r $side $(date +%T)"
    (cd $dir && python -c "import o2o_jax; print(o2o_jax.__file__)" && \
     python -m benchmarks.vs_corl.run --corl_dir=<CORL checkout> --corl_python=<torch 2.13.0 venv>/bin/python \
       --parts=speed --algos=td3bc --datasets=o2o/hopper/medium-v0 --out=<out>/$side-r$r 2>&1 | grep "\[vs_corl\] speed")
  done
done
uptime
