"""Phase 2 of OCR-CFT: value alignment of a re-evaluated critic (the actor trains alongside).

  python -m experiments.align --from=runs/reevaluate/o2td3/o2o_hopper_medium-v0/seed0x1

Writes runs/align/<agent>/<dataset>/<run-name>/; continue with experiments.finetune --from=<it>.
"""
from __future__ import annotations

from pathlib import Path

from absl import flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string("from", None, "A finished reevaluate run directory (required).")
common.define_budget_flag()
flags.DEFINE_integer("steps", None, "Alignment steps (paper 500k, quick 5k).")
flags.DEFINE_integer("eval_every", None, "Steps between evaluations of pi_on (paper 50k).")
flags.DEFINE_integer("eval_episodes", None, "Evaluation episodes (paper 10, quick 5).")
flags.DEFINE_integer("batch_size", 256, "Batch size.")
flags.DEFINE_string("out_dir", "runs", "Root of run directories.")
flags.DEFINE_string("run_name", None, "Run name (default: seed<seed>x<seeds>).")
flags.DEFINE_bool("restart", False, "Rerun even if this phase already finished.")
flags.DEFINE_bool("progress", True, "Show progress bars.")
common.define_checkpoint_flag()


def main(argv):
  del argv
  from o2o_jax.recipes import ocr_cft
  from o2o_jax.errors import O2OError
  if not getattr(FLAGS, "from"):
    raise O2OError("--from=<reevaluate run dir> is required")
  d = common.budget_values({b: {"steps": v["align_steps"], "eval_every": v["align_eval_every"],
                                "eval_episodes": v["eval_episodes"]} for b, v in ocr_cft.BUDGETS.items()},
                           FLAGS, positive=("steps", "eval_every", "eval_episodes", "batch_size"))
  run_dir = ocr_cft.align(reevaluate_dir=Path(getattr(FLAGS, "from")), steps=d["steps"],
                         eval_every=min(d["eval_every"], d["steps"]), eval_episodes=d["eval_episodes"],
                         batch_size=FLAGS.batch_size, out_dir=FLAGS.out_dir, run_name=FLAGS.run_name,
                         restart=FLAGS.restart, progress=FLAGS.progress,
                         checkpoint_every=FLAGS.checkpoint_every)
  print(f"outputs in {run_dir}")


if __name__ == "__main__":
  common.run(main)
