"""Phase 1 of OCR-CFT: policy re-evaluation of an offline actor with a fresh critic.

  python -m experiments.reevaluate --agent=o2td3 --from=runs/pretrain/td3bc/o2o_hopper_medium-v0/seed0x1

Writes runs/reevaluate/<agent>/<dataset>/<run-name>/; continue with experiments.align --from=<it>.
"""
from __future__ import annotations

from pathlib import Path

from absl import flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_enum("agent", "o2td3", ["o2td3", "o2sac"], "O2O agent whose critic is fitted.")
flags.DEFINE_string("from", None, "A finished pretrain run directory (required).")
common.define_budget_flag()
flags.DEFINE_integer("steps", None, "Re-evaluation steps (paper 500k, quick 50k).")
flags.DEFINE_integer("eval_episodes", None, "Episodes to score pi_off (paper 10, quick 5).")
flags.DEFINE_list("critic_hidden", None, "Hidden sizes of the fresh critic (paper 256,256).")
flags.DEFINE_integer("batch_size", 256, "Batch size.")
flags.DEFINE_string("out_dir", "runs", "Root of run directories.")
flags.DEFINE_string("run_name", None, "Run name (default: seed<seed>x<seeds> of the pretrain run).")
flags.DEFINE_bool("restart", False, "Rerun even if this phase already finished.")
flags.DEFINE_bool("progress", True, "Show progress bars.")
common.define_checkpoint_flag()


def main(argv):
  del argv
  from o2o_jax.recipes import ocr_cft
  from o2o_jax.errors import O2OError
  if not getattr(FLAGS, "from"):
    raise O2OError("--from=<pretrain run dir> is required (or run experiments.finetune, which "
                   "pretrains first)")
  d = common.budget_values({b: {"steps": v["reevaluate_steps"], "eval_episodes": v["eval_episodes"],
                                "critic_hidden": v["critic_hidden"]} for b, v in ocr_cft.BUDGETS.items()},
                           FLAGS, positive=("steps", "eval_episodes", "batch_size"))
  run_dir = ocr_cft.reevaluate(agent_name=FLAGS.agent, pretrain_dir=Path(getattr(FLAGS, "from")),
                              steps=d["steps"], eval_episodes=d["eval_episodes"],
                              critic_hidden=d["critic_hidden"], batch_size=FLAGS.batch_size,
                              out_dir=FLAGS.out_dir, run_name=FLAGS.run_name, restart=FLAGS.restart,
                              progress=FLAGS.progress,
                              checkpoint_every=FLAGS.checkpoint_every)
  print(f"outputs in {run_dir}")


if __name__ == "__main__":
  common.run(main)
