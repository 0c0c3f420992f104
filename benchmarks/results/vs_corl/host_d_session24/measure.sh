#!/usr/bin/env bash
# TD3+BC (or $ALGO) update rate against CORL on host D (session 24): ROUNDS rounds (default 5) of the vs_corl
# speed part, each with its own CORL run (3,000 updates, torch's default threads) and ours (1 seed,
# 5 seeds; 20 s each), every other heavy process SIGSTOPped for the measurement and resumed after.
#   CORL_DIR=<CORL checkout> CORL_PYTHON=<torch venv>/bin/python OUT=<results folder> \
#     bash benchmarks/results/vs_corl/host_d_session24/measure.sh
# (run from the repository root; session 24: MINARI_DATASETS_PATH=~/.minari_expert)
set -u
: "${CORL_DIR:?set CORL_DIR}" "${CORL_PYTHON:?set CORL_PYTHON}" "${OUT:?set OUT}"
pat='experiments\.(finetune|pretrain|train_online|make_dataset)|cql\.py|O2SAC\.py|benchmarks\.vs_official|grid_quick|baselines_quick'
pids=$(pgrep -f "$pat" | tr '\n' ' ')
echo "stopping: $pids"; [ -n "$pids" ] && kill -STOP $pids
trap '[ -n "$pids" ] && kill -CONT $pids; echo resumed' EXIT
sleep 3; uptime
for r in $(seq "${ROUNDS:-5}"); do
  echo "== round $r $(date +%T)"
  python -m benchmarks.vs_corl.run --corl_dir="$CORL_DIR" --corl_python="$CORL_PYTHON" \
    --parts=speed --algos="${ALGO:-td3bc}" --datasets=o2o/hopper/medium-v0 --out="$OUT/${ALGO:-td3bc}-r$r" 2>&1 \
    | grep "\[vs_corl\] speed"
done
uptime
