#!/usr/bin/env bash
# TD3+BC update rate, before (a worktree of 21069ff) and after first_critic, with CORL, in alternating
# rounds. Every other heavy process is SIGSTOPped for the measurement and resumed after.
#   CORL_DIR=<CORL checkout> CORL_PYTHON=<torch venv>/bin/python BEFORE=<worktree of 21069ff> \
#     OUT=<results folder> bash benchmarks/results/vs_corl/host_d_session22/measure.sh
# (run from the repository root; session 22: MINARI_DATASETS_PATH=~/.minari_expert)
set -u
: "${CORL_DIR:?set CORL_DIR}" "${CORL_PYTHON:?set CORL_PYTHON}" "${BEFORE:?set BEFORE}" "${OUT:?set OUT}"
after=$(pwd)
pids=$(pgrep -f "experiments\.(finetune|make_dataset|pretrain|align)" | tr '\n' ' ')
echo "stopping: $pids"; [ -n "$pids" ] && kill -STOP $pids
trap '[ -n "$pids" ] && kill -CONT $pids; echo resumed' EXIT
sleep 3; uptime
for r in 1 2 3; do
  for side in after before; do
    dir=$after; [ "$side" = before ] && dir=$BEFORE
    echo "== round $r $side $(date +%T)"
    (cd "$dir" && python -c "import o2o_jax; print(o2o_jax.__file__)" && \
     python -m benchmarks.vs_corl.run --corl_dir="$CORL_DIR" --corl_python="$CORL_PYTHON" \
       --parts=speed --algos=td3bc --datasets=o2o/hopper/medium-v0 --out="$OUT/$side-r$r" 2>&1 \
       | grep "\[vs_corl\] speed")
  done
done
uptime
