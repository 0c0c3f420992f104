#!/usr/bin/env bash
# Issue #22: every level regenerated from the committed expert-strength behaviour policies
# (behaviour_policies/<env>), one level per process, skipping the levels already written, into
# $EXPERT_DATASETS (default ~/.minari_expert: the home directory outlived runs/ between sessions).
# Then the list of what exists, with each set's policy return against D4RL's expert, goes to
# benchmarks/results/datasets_expert/datasets.md. Resumable: rerun it; a level cut off mid-write is
# removed and written again. nice 19 and one XLA thread: it shares the machine with the benchmarks.
#   bash benchmarks/expert_datasets.sh [env ...]      (default: hopper walker2d halfcheetah)
set -u
cd "$(dirname "$0")/.."
root=${EXPERT_DATASETS:-$HOME/.minari_expert}
envs=${*:-hopper walker2d halfcheetah}
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
for level in medium expert medium-expert medium-replay random; do     # the grid's levels first
  for env in $envs; do
    [ -f "$root/o2o/$env/$level-v0/data/metadata.json" ] && continue
    rm -rf "$root/o2o/$env/$level-v0"
    echo "== $env $level ($(date +%T))"
    nice -n 19 ${PYTHON:-python} -m experiments.make_dataset --env="$env" --from_policies \
      --levels="$level" --out="$root" --progress=false || exit 1
  done
done
mkdir -p benchmarks/results/datasets_expert
list=benchmarks/results/datasets_expert/datasets.md
# Rows of sets written in an earlier session stay (the home directory does not always outlive one);
# a set present here replaces its row.
${PYTHON:-python} - "$root" "$list" <<'PY'
import json, pathlib, sys
root, listing = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
rows = {}
if listing.exists():
  for line in listing.read_text().splitlines():
    if line.startswith("| o2o/"):
      rows[line.split("|")[1].strip()] = line
for meta in sorted(root.glob("o2o/*/*/data/metadata.json")):
  d = json.loads(meta.read_text())
  desc = json.loads(d["description"])
  ref = desc["d4rl_reference"]
  source = desc.get("policy") or " + ".join(c.split("/")[-1] for c in desc.get("components", [])) or desc.get("rule", "")
  rows[d["dataset_id"]] = (
      f"| {d['dataset_id']} | {desc['transitions']:,} | {desc['episodes']:,} | {desc['mean_return']:.1f} | "
      f"{desc['normalized_mean_return']:.1f} | {source} | {ref['expert_return']:.0f} / "
      f"{ref['d4rl_expert_return']:.0f} ({100 * ref['fraction_of_d4rl']:.0f}%) |")
lines = [f"# Datasets from the expert-strength policies (`bash benchmarks/expert_datasets.sh`, in {root.name})", "",
         "| dataset | transitions | episodes | mean return | normalised | from | expert return / D4RL's |",
         "|---|---|---|---|---|---|---|"] + [rows[k] for k in sorted(rows)]
listing.write_text("\n".join(lines) + "\n")
PY
echo "wrote benchmarks/results/datasets_expert/datasets.md"
