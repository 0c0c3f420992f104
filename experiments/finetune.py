"""OCR-CFT end to end: offline pre-training -> policy re-evaluation -> value alignment -> constrained
online fine-tuning, N seeds vmapped in one job.

  python -m experiments.finetune --agent=o2td3 --budget=quick            # embedded o2o/hopper/medium-v0
  python -m experiments.finetune --agent=o2td3 --dataset=o2o/hopper/medium-v0 --seeds=5
  python -m experiments.finetune --agent=o2td3 --from=runs/align/o2td3/...  # continue from any phase

Each phase writes its own run directory (runs/<phase>/...) and is reused when it already finished, so
rerunning the command skips what is done. `--reevaluate/--align/--constrain=false` are the paper's
ablations (all three off = direct fine-tuning of the offline policy).
"""
from __future__ import annotations

import importlib
import types
from pathlib import Path

from absl import flags

from experiments import common

FLAGS = flags.FLAGS
# OCR-CFT off-policy agents run the phases below; every other agent has its own pipeline module
# (experiments/pipeline_<name>.py exposing `run(FLAGS, budget_values)`), dispatched in main().
OCR_CFT_OFF_POLICY = ("o2td3", "o2sac")
# Each pipeline module defines its own agent-specific flags at import (prefixed by the agent, e.g.
# --o3f_sigma) and reads the shared ones below from FLAGS.
OTHER_PIPELINES = {"o2ppo": "experiments.pipeline_o2ppo"}   # agent name -> module name
OTHER_PIPELINES.update({a: "experiments.pipeline_samg" for a in ("samg_cql", "samg_awac", "samg_iql")})
OTHER_PIPELINES.update({"o3f": "experiments.pipeline_o3f", "aca": "experiments.pipeline_aca"})
for _module in sorted(set(OTHER_PIPELINES.values())):
  importlib.import_module(_module)
flags.DEFINE_enum("agent", "o2td3", list(OCR_CFT_OFF_POLICY) + list(OTHER_PIPELINES),
                  "O2O agent: o2td3 (from TD3+BC), o2sac (from CQL), o2ppo (from IQL), ...")
flags.DEFINE_string("dataset", "o2o/hopper/medium-v0", "Minari dataset id (default: the embedded one).")
flags.DEFINE_string("from", None, "Run directory of an earlier phase (pretrain, reevaluate or align) "
                    "to continue from; the phases after it are run.")
flags.DEFINE_string("offline_algo", None, "Offline algorithm whose actor is fine-tuned (default: the "
                    "paper's source, td3bc for o2td3, cql for o2sac).")
flags.DEFINE_integer("seeds", 1, "Seeds trained together as one vmapped program.")
flags.DEFINE_integer("seed", 0, "Base seed.")
common.define_budget_flag()
flags.DEFINE_integer("pretrain_steps", None, "Offline gradient steps (paper 1M; quick 100k for "
                     "TD3+BC, 10k for the other offline algorithms).")
flags.DEFINE_integer("reevaluate_steps", None, "Re-evaluation steps (paper 500k, quick 50k; "
                     "O2PPO's V fit: paper 1M, quick 5k).")
flags.DEFINE_integer("align_steps", None, "Alignment steps (paper 500k, quick 5k).")
flags.DEFINE_integer("online_steps", None, "Online env steps per seed (paper 100k, quick 10k; O2PPO: "
                     "paper 250k, quick 51,200).")
flags.DEFINE_integer("warmup_steps", None, "Online steps before the first update, acting with the "
                     "policy (paper 1k).")
flags.DEFINE_integer("eval_every", None, "Online steps between evaluations (paper 1k, quick 2k).")
flags.DEFINE_integer("eval_episodes", None, "Evaluation episodes per seed (paper 10, quick 5).")
flags.DEFINE_list("hidden_dims", None, "Actor hidden sizes for a new offline run (paper 256,256).")
flags.DEFINE_list("critic_hidden", None, "Hidden sizes of the fresh O2O critic (paper 256,256).")
flags.DEFINE_integer("batch_size", 256, "Batch size of every phase.")
flags.DEFINE_bool("reevaluate", True, "Policy re-evaluation (off: the fresh critic is not fitted).")
flags.DEFINE_bool("align", True, "Value alignment (off: fine-tune straight after re-evaluation).")
flags.DEFINE_bool("constrain", True, "Constrained fine-tuning (off: lambda = 0).")
flags.DEFINE_string("reference", "best", "pi_ref update: 'best' (the best evaluated policy) or "
                    "'interval:N' (pi_on every N env steps), appendix C.3.")
flags.DEFINE_enum("buffer", "half", ["half", "all", "part", "null"], "Online replay initialisation "
                  "(paper table 6): 'half' samples half of each batch from the offline data (H.2, the "
                  "default); 'all' starts the buffer with the whole dataset; 'part' with the top-50 "
                  "episodes by return; 'null' uses online data only.")
flags.DEFINE_float("tau_start", None, "Initial constraint threshold tau (default: the released "
                   "config per dataset type; o2td3 per action dim, o2sac a KL bound).")
flags.DEFINE_float("tau_end", None, "Final constraint threshold tau, reached linearly over the first "
                   "100k env steps (must be >= --tau_start).")
flags.DEFINE_integer("utd", None, "Gradient updates per env step (default: o2td3 1, o2sac 10 as the "
                     "released code; the lambda step stays once per env step).")
flags.DEFINE_string("out_dir", "runs", "Root of run directories.")
flags.DEFINE_string("run_name", None, "Run name (default: seed<seed>x<seeds> plus the ablation switches).")
flags.DEFINE_bool("restart", False, "Rerun the phases of this run even if they finished.")
flags.DEFINE_bool("progress", True, "Show progress bars.")
common.define_checkpoint_flag()
common.define_distributed_flags()


def main(argv):
  del argv
  from o2o_jax.errors import O2OError
  if FLAGS.num_processes > 1 and FLAGS.agent not in OCR_CFT_OFF_POLICY:
    raise O2OError(f"--num_processes > 1 is supported for {', '.join(OCR_CFT_OFF_POLICY)} (and the "
                   f"pretrain and train_online launchers), not yet for {FLAGS.agent}: run it in one "
                   "process, or one job per seed range with different --seed")
  common.initialize_distributed(FLAGS)
  if FLAGS.agent in OTHER_PIPELINES:
    importlib.import_module(OTHER_PIPELINES[FLAGS.agent]).run(FLAGS)
    return   # (absl would turn a returned value into the exit status)
  from experiments import phases
  from o2o_jax import runs
  d = common.finetune_budget(phases.BUDGETS, FLAGS, nonnegative=(
      "pretrain_steps", "reevaluate_steps", "align_steps", "warmup_steps"))
  tau_overrides = {k: getattr(FLAGS, k) for k in ("tau_start", "tau_end") if getattr(FLAGS, k) is not None}
  if len(tau_overrides) == 2:     # fail before any training; single overrides are checked with the preset
    phases.check_tau(types.SimpleNamespace(**tau_overrides))
  switches = "".join(f"-no{n}" for n in ("reevaluate", "align", "constrain") if not getattr(FLAGS, n))
  name = FLAGS.run_name or f"seed{FLAGS.seed}x{FLAGS.seeds}"
  common_args = dict(out_dir=FLAGS.out_dir, restart=FLAGS.restart, progress=FLAGS.progress,
                     checkpoint_every=FLAGS.checkpoint_every)

  start, from_dir = "pretrain", None
  if getattr(FLAGS, "from"):
    from_dir = Path(getattr(FLAGS, "from"))
    from_cfg = runs.read_config(from_dir)
    phase = from_cfg.get("phase")
    if phase not in ("pretrain", "reevaluate", "align"):
      raise O2OError(f"--from={from_dir} is a '{phase}' run: pass a pretrain, reevaluate or align run")
    if phase != "pretrain" and from_cfg.get("agent") != FLAGS.agent:
      raise O2OError(f"--from={from_dir} is a {from_cfg.get('agent')} run but --agent={FLAGS.agent}: "
                     f"pass --agent={from_cfg.get('agent')}, or a {FLAGS.agent} run")
    if FLAGS["dataset"].present and from_cfg.get("dataset") != FLAGS.dataset:
      raise O2OError(f"--from={from_dir} was trained on {from_cfg.get('dataset')} (env "
                     f"{from_cfg.get('env')}), not --dataset={FLAGS.dataset}: drop --dataset or pass "
                     "a run on that dataset")
    start = {"pretrain": "reevaluate", "reevaluate": "align", "align": "finetune"}[phase]
  if start == "pretrain":
    algo = FLAGS.offline_algo or phases.SOURCE_ALGO[FLAGS.agent]
    from_dir = phases.pretrain(algo=algo, dataset_id=FLAGS.dataset, seeds=FLAGS.seeds, seed=FLAGS.seed,
                               num_steps=phases.pretrain_steps(FLAGS.budget, algo, FLAGS.pretrain_steps),
                               eval_every=d["pretrain_eval_every"],
                               eval_episodes=d["eval_episodes"], hidden_dims=d["hidden_dims"],
                               batch_size=FLAGS.batch_size, run_name=name, **common_args)
    start = "reevaluate"
  if start == "reevaluate":
    from_dir = phases.reevaluate(
        agent_name=FLAGS.agent, pretrain_dir=from_dir,
        steps=d["reevaluate_steps"] if FLAGS.reevaluate else 0, eval_episodes=d["eval_episodes"],
        critic_hidden=d["critic_hidden"], batch_size=FLAGS.batch_size,
        overrides=tau_overrides,
        run_name=name + ("" if FLAGS.reevaluate else "-noreevaluate"), **common_args)
    start = "align"
  if start == "align":
    if FLAGS.align:
      from_dir = phases.align(reevaluate_dir=from_dir, steps=d["align_steps"],
                              eval_every=min(d["align_eval_every"], d["align_steps"]),
                              eval_episodes=d["eval_episodes"], batch_size=FLAGS.batch_size,
                              run_name=name + ("" if FLAGS.reevaluate else "-noreevaluate"),
                              **common_args)
    else:
      from_dir = phases.skip_phase(from_dir, "align", FLAGS.out_dir, name + switches)
  phases.finetune(align_dir=from_dir, online_steps=d["online_steps"], warmup_steps=d["warmup_steps"],
                  eval_every=d["eval_every"], eval_episodes=d["eval_episodes"], utd=FLAGS.utd,
                  batch_size=FLAGS.batch_size, buffer=FLAGS.buffer, reference=FLAGS.reference,
                  constrain=FLAGS.constrain, overrides=tau_overrides, run_name=name + switches,
                  **common_args)


if __name__ == "__main__":
  common.run(main)
