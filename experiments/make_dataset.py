"""Generate D4RL-style Minari datasets o2o/<env>/<level>-v0 on gymnasium MuJoCo v5.

  python -m experiments.make_dataset --env=hopper --levels=random,medium,medium-replay,expert,medium-expert
  python -m experiments.make_dataset --env=hopper --from_policies  # reuse the committed behaviour policies

Trains one SAC behaviour policy per env (saved under --policy_dir/<env>/), then writes each level with
Minari's own API into $MINARI_DATASETS_PATH (or ~/.minari/datasets, or --out).

The SAC run is resumable: every --checkpoint_every env steps it snapshots its whole state (agent,
replay buffer, keys, the transition record for medium-replay, the actor checkpoints) under
--policy_dir/<env>/progress; rerunning the same command after a crash, SIGKILL or Ctrl-C continues
it from there. The snapshots are deleted once the behaviour policies are saved.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from absl import flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_list("env", ["hopper"], "Envs to generate for: hopper, halfcheetah, walker2d, ant.")
flags.DEFINE_list("levels", ["random", "medium", "medium-replay", "expert", "medium-expert"],
                  "Levels to write (D4RL's names).")
flags.DEFINE_integer("size", 1_000_000, "Transitions per level (D4RL: 1M; medium-expert gets 2x, "
                     "medium-replay is the behaviour run's buffer up to the medium checkpoint).")
flags.DEFINE_integer("sac_steps", 300_000, "Env steps of the SAC behaviour-policy run.")
flags.DEFINE_integer("eval_every", 10_000, "Steps between behaviour-policy checkpoints/evaluations.")
flags.DEFINE_integer("start_steps", 5_000, "Uniform-random warm-up steps of the SAC run.")
flags.DEFINE_list("hidden_dims", ["256", "256"], "Hidden sizes of the SAC behaviour networks.")
flags.DEFINE_integer("seed", 0, "Seed of the behaviour run (collection seeds are fixed per level).")
flags.DEFINE_bool("from_policies", False, "Reuse the behaviour policies saved in --policy_dir/<env> "
                  "instead of training SAC (minutes instead of tens of minutes).")
flags.DEFINE_string("policy_dir", "behaviour_policies", "Where behaviour policies are saved/read.")
flags.DEFINE_string("out", None, "Minari datasets root to write into (default: $MINARI_DATASETS_PATH "
                    "or ~/.minari/datasets).")
flags.DEFINE_bool("overwrite", False, "Replace datasets (and, when training, behaviour policies) "
                  "that already exist.")
flags.DEFINE_float("target_return", None, "Stop the SAC behaviour run at the first checkpoint whose "
                   "stochastic return reaches this (on its evaluation and on a 50-episode "
                   "confirmation); that checkpoint becomes the expert. Default: >= 80% of D4RL's "
                   "expert reference return (hopper 2600, halfcheetah 9708, walker2d 3700); 0 "
                   "trains all --sac_steps.")
flags.DEFINE_string("carry_dir", None, "Also write a small carry-over of the SAC run (its state, "
                    "optimisers and medium's candidate actors; a few MB, no replay buffer) to "
                    "<carry_dir>/<env> at every snapshot, and continue from it when the local "
                    "snapshots are gone (a new machine or session): commit that folder to carry a "
                    "long behaviour run across sessions. The continued run refills a fresh buffer "
                    "with its policy before updating again.")
flags.DEFINE_bool("end_at_carry", False, "With --carry_dir: end the behaviour run at its carry's step "
                  "instead of training on, the carry's current actor becoming the expert (a target "
                  "out of reach on this machine); the policies record the unreached target.")
flags.DEFINE_integer("ref_episodes", 100, "Episodes for the reference (random/expert) scores.")
flags.DEFINE_bool("progress", True, "Show progress bars.")
common.define_checkpoint_flag()


def main(argv):
  del argv
  if FLAGS.out:
    os.environ["MINARI_DATASETS_PATH"] = str(Path(FLAGS.out).absolute())
  from o2o_jax import generate, resume
  from o2o_jax import logging as log_lib
  from o2o_jax.errors import O2OError
  for flag in ("size", "sac_steps", "eval_every"):
    if getattr(FLAGS, flag) <= 0:
      raise O2OError(f"--{flag} must be positive (got {getattr(FLAGS, flag)})")
  if FLAGS.sac_steps < FLAGS.eval_every:
    raise O2OError(f"--sac_steps ({FLAGS.sac_steps}) must be at least --eval_every ({FLAGS.eval_every})")
  generate.REF_EPISODES = FLAGS.ref_episodes
  command = "python -m experiments.make_dataset " + " ".join(shlex.quote(a) for a in sys.argv[1:])
  for env_name in FLAGS.env:
    policy_dir = Path(FLAGS.policy_dir) / env_name
    t0 = time.time()
    if FLAGS.from_policies:
      policies = generate.BehaviourPolicies.load(policy_dir)
      print(f"[{env_name}] loaded behaviour policies from {policy_dir} (medium step "
            f"{policies.medium_step}, expert step {policies.expert_step})")
    else:
      if (policy_dir / "meta.json").exists() and not FLAGS.overwrite:
        raise O2OError(f"behaviour policies for {env_name} already exist in {policy_dir}: pass "
                       "--from_policies to reuse them, --policy_dir=<other folder> to train new ones "
                       "elsewhere, or --overwrite to retrain and replace them")
      target = (generate.default_target_return(env_name) if FLAGS.target_return is None
                else FLAGS.target_return or None)
      policy_dir.mkdir(parents=True, exist_ok=True)
      carry_dir = Path(FLAGS.carry_dir) / env_name if FLAGS.carry_dir else None
      if carry_dir is not None and (carry_dir / "metrics.csv").exists() and not (
          policy_dir / "metrics.csv").exists():   # a new session: the curve so far comes along
        shutil.copy(carry_dir / "metrics.csv", policy_dir / "metrics.csv")
      snapshots = resume.Snapshots(policy_dir / "progress", FLAGS.checkpoint_every)
      if FLAGS.end_at_carry:
        if carry_dir is None:
          raise O2OError("--end_at_carry ends the run held in --carry_dir/<env>: pass --carry_dir")
        policies = generate.end_run_at_carry(carry_dir)
      else:
        writer = log_lib.MetricsWriter(policy_dir, tensorboard=False)   # truncated on resume
        policies = generate.train_behaviour_policy(
            env_name, FLAGS.sac_steps, seed=FLAGS.seed, eval_every=FLAGS.eval_every,
            hidden_dims=[int(h) for h in FLAGS.hidden_dims], start_steps=FLAGS.start_steps,
            metrics_writer=writer, progress=FLAGS.progress, snapshots=snapshots,
            target_return=target, carry_dir=carry_dir)
        writer.close()
      policies.save(policy_dir)
      snapshots.discard()     # only once the policies (and the replay record) are on disk
      for segment in policy_dir.glob("progress_from_*"):   # snapshots of runs continued from a carry
        shutil.rmtree(segment, ignore_errors=True)
      log_lib.plot_curves(policy_dir / "metrics.csv", policy_dir / "curves.png",
                          ["eval/return", "eval/stochastic_return"], title=f"SAC on {policies.env_id}")
      print(f"[{env_name}] SAC behaviour policy: {policies.steps_trained} steps in {time.time() - t0:.0f}s; "
            f"returns by checkpoint: " + ", ".join(f"{s}:{r:.0f}" for s, r in
                                                   zip(policies.steps, policies.returns)))
    generate.generate_levels(policies, FLAGS.levels, FLAGS.size, overwrite=FLAGS.overwrite,
                             command=command, progress=FLAGS.progress)
    print(f"[{env_name}] done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
  common.run(main)
