#!/usr/bin/env bash
# The accelerator benchmark from a bare GPU machine (issue #23): packages, then
# `python -m benchmarks.accelerator`, writing accelerator.{json,md}, env.txt and log.txt to OUT.
#
#   bash benchmarks/accelerator.sh OUT [--budget_s=S] [other benchmarks.accelerator flags]
#
# Packages, in this order:
#   1. wheels carried in .whl/ (the repo root; ignored by git): what the machine's image lacks
#      (mujoco, gymnasium, distrax, tfp, dm-tree, minari, ...), installed into /tmp/site without
#      touching the image. Prepare them with `bash benchmarks/accelerator.sh --fetch-wheels` on a
#      machine that reaches the package registry.
#   2. a CUDA jax: the image's own when it sees a GPU (the lent H200's image carries jax with CUDA);
#      otherwise `jax[cuda12]==<requirements.txt's pin>` from the registry, if one is reachable.
# The run's time budget is what is left of BENCH_WALL_S (default 480 s) after the installs, less
# 30 s for writing; every item that no longer fits is skipped and said so in the output.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=.whl
# Packages the GPU image lacks (its pip list: /work/.library/device/KINDS.md), at this repo's pins,
# plus their own needs that the image lacks too; and flax, optax, chex, orbax at this repo's pins, so
# that everything but jax is the set tested with the image's jax (0.11.2, Python 3.12) on a CPU.
# (mujoco-studio and pyopengl are left out: `import mujoco` and gymnasium's envs run without them.)
CARRY="mujoco==4.0.0 mujoco-core==4.0.0 glfw gymnasium==1.4.0 farama-notifications distrax==0.1.9
  tfp-nightly==0.26.0.dev20261027 dm-tree==0.1.10 decorator gast minari==0.5.4 tensorboardX==2.6.5
  flax==0.12.8 optax==0.2.8 chex==0.1.92 orbax-checkpoint==0.12.8"

if [ "${1:-}" = "--fetch-wheels" ]; then
  # Run here (where the registry is reachable): wheels for the device's Python (3.12, x86-64).
  mkdir -p "$WHEELS"
  for spec in $CARRY; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$WHEELS" "$spec" \
      || echo "no wheel for $spec"
  done
  du -sh "$WHEELS"
  exit 0
fi

OUT=${1:?usage: accelerator.sh OUT [benchmarks.accelerator flags] | --fetch-wheels}
shift
mkdir -p "$OUT"
T0=$(date +%s)

main() {
  echo "[accelerator.sh] $(date -u +%FT%TZ) on $(hostname), $(nproc) CPUs"
  if ls "$WHEELS"/*.whl > /dev/null 2>&1; then
    if $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl; then
      export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    else
      echo "[accelerator.sh] installing the carried wheels failed"
    fi
  fi
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  if nvidia-smi > /dev/null 2>&1 && \
      ! $PY -c "import jax, sys; sys.exit(jax.devices()[0].platform != 'gpu')" 2> /dev/null; then
    PIN=$(sed -n 's/^jax==//p' requirements.txt)
    echo "[accelerator.sh] a GPU, but jax sees none: installing jax[cuda12]==$PIN"
    $PY -m pip install -q "jax[cuda12]==$PIN" \
      || echo "[accelerator.sh] no CUDA jax (no registry?): running on what jax finds"
  fi
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1
    $PY -c "import sys, jax, numpy; print('python', sys.version.split()[0], 'jax', jax.__version__, jax.devices(), 'numpy', numpy.__version__)"
    $PY -c "import importlib.metadata as m
for p in ('jax', 'jaxlib', 'jax-cuda12-plugin', 'jax-cuda13-plugin', 'flax', 'optax', 'chex', 'orbax-checkpoint',
          'mujoco', 'gymnasium', 'distrax', 'tfp-nightly', 'dm-tree', 'minari', 'numpy'):
  try: print(p, m.version(p))
  except m.PackageNotFoundError: pass"
  } > "$OUT/env.txt" 2>&1
  cat "$OUT/env.txt"
  local left=$(( ${BENCH_WALL_S:-480} - ($(date +%s) - T0) - 30 ))
  echo "[accelerator.sh] setup took $(( $(date +%s) - T0 )) s; benchmark budget ${left} s"
  # A hard stop 45 s after the budget: SIGINT ends the item in progress, keeping every item written.
  XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 timeout -s INT -k 20 $(( left + 45 )) \
    $PY -m benchmarks.accelerator --out="$OUT" --budget_s="$left" "$@"
  local status=$?
  echo "[accelerator.sh] done in $(( $(date +%s) - T0 )) s, exit $status"
  return $status
}

main "$@" 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
