"""Tables, learning curves and rliable statistics from O2O fine-tuning run directories.

  python -m experiments.report 'runs/finetune/**' --out=benchmarks/results/grid_quick
  python -m experiments.report --runs='runs/finetune/o2td3/*,runs/finetune/o2sac/*' --early=0.2

Each glob (quote it, or let the shell expand it) may name run directories or folders searched for them.
Writes report.md, CSVs and PNGs into --out (see o2o_jax.report for what each holds and how partial
runs are marked).
"""
from __future__ import annotations

import shlex
import sys

from absl import flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", [], "Comma-separated globs of run directories, or of folders searched "
                  "recursively for them (e.g. 'runs/finetune/**'); positional arguments are globs "
                  "too. A glob that matches no run directory is an error.")
flags.DEFINE_string("out", "runs/report", "Output folder: report.md, table2/table3/early/iqm/"
                    "improvement/profiles/runs .csv, curves.png, curves_early.png, "
                    "performance_profiles.png (files of those names are replaced), and commands.txt "
                    "(this command line replaces an earlier report command there; other lines stay).")
flags.DEFINE_float("early", 0.1, "The early phase, as a fraction of the planned online steps: the "
                   "early-stability table takes the minimum of the seed-mean curve over steps "
                   "[0, early x steps], and curves_early.png shows that range.")
flags.DEFINE_integer("reps", 2000, "Bootstrap replications of the rliable confidence intervals (IQM, "
                     "performance profiles, probability of improvement).")
flags.DEFINE_integer("bootstrap_seed", 0, "Seed of the bootstrap resampling: NumPy's random state is "
                     "set to it before each rliable estimate (and restored after), so the intervals "
                     "are reproducible.")


def main(argv):
  from o2o_jax import report
  command = " ".join(["python -m experiments.report"] + [shlex.quote(a) for a in sys.argv[1:]])
  report.make_report(list(FLAGS.runs) + list(argv[1:]), FLAGS.out, early=FLAGS.early, reps=FLAGS.reps,
                     seed=FLAGS.bootstrap_seed, command=command)


if __name__ == "__main__":
  common.run(main)
