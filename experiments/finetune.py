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

from experiments import common, presets

FLAGS = flags.FLAGS
# OCR-CFT off-policy agents run the phases below; every other agent has its own pipeline module
# (experiments/pipeline_<name>.py exposing `run(FLAGS, budget_values)`), dispatched in main().
OCR_CFT_OFF_POLICY = ("o2td3", "o2sac")
MULTI_PROCESS_AGENTS = OCR_CFT_OFF_POLICY + ("o2ppo",)     # agents whose pipeline runs on jax.distributed
# Each pipeline module defines its own agent-specific flags at import (prefixed by the agent, e.g.
# --o3f_sigma) and reads the shared ones below from FLAGS.
OTHER_PIPELINES = {"o2ppo": "experiments.pipeline_o2ppo"}   # agent name -> module name
OTHER_PIPELINES.update({a: "experiments.pipeline_samg" for a in ("samg_cql", "samg_awac", "samg_iql")})
OTHER_PIPELINES.update({"o3f": "experiments.pipeline_o3f", "aca": "experiments.pipeline_aca"})
PRESET_AGENTS = ("o2td3", "o2sac", "o3f")     # the agents whose pre-training --preset sets
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
flags.DEFINE_integer("align_steps", None, "Alignment steps (paper 500k, AntMaze 1M; quick 5k).")
flags.DEFINE_integer("online_steps", None, "Online env steps per seed (paper 100k, AntMaze 200k; quick 10k; O2PPO: "
                     "paper 250k, quick 51,200).")
flags.DEFINE_integer("warmup_steps", None, "Online steps before the first update, acting with the "
                     "policy (paper 1k; AntMaze o2sac 5k).")
flags.DEFINE_integer("eval_every", None, "Online steps between evaluations (paper 1k, AntMaze 5k; "
                     "quick 2k).")
flags.DEFINE_integer("eval_episodes", None, "Evaluation episodes per seed (paper 10, AntMaze 100; "
                     "quick 5).")
flags.DEFINE_list("hidden_dims", None, "Hidden sizes of a new offline run's networks (default: the "
                  "offline algorithm's own, CQL 3x256, TD3+BC and IQL 2x256; quick 64,64). The O2O "
                  "actor is always the offline one.")
flags.DEFINE_list("critic_hidden", None, "Hidden sizes of the fresh O2O critic (default: the agent's "
                  "own as the released code, O2SAC 3x256 (5x256 on AntMaze) with LayerNorm, O2TD3 "
                  "2x256 with LayerNorm (none on AntMaze); quick 64,64).")
flags.DEFINE_enum("preset", "official", list(presets.PRESETS), "Offline pre-training preset for "
                  "o2td3, o2sac and o3f: 'official' = the reference chain's own settings (OCR-CFT "
                  "offline/cql.py and td3_bc.py: raw rewards on MuJoCo, their AntMaze configs; for o3f "
                  "the IQL it builds on: locomotion rewards x 1000/(max-min return)); 'corl' = CORL's "
                  "per-dataset configs (e.g. CQL's reward normalisation on hopper-medium); 'none' = "
                  "the algorithm's defaults. Runs with a non-default preset are named "
                  "<name>-preset<preset>.")
flags.DEFINE_integer("batch_size", 256, "Batch size of every phase.")
flags.DEFINE_bool("reevaluate", True, "Policy re-evaluation (off: the fresh critic is not fitted).")
flags.DEFINE_bool("align", True, "Value alignment (off: fine-tune straight after re-evaluation).")
flags.DEFINE_bool("constrain", True, "Constrained fine-tuning (off: lambda = 0).")
flags.DEFINE_string("reference", "best", "pi_ref update: 'best' (the best evaluated policy), "
                    "'interval:N' (pi_on every N env steps, N a multiple of --eval_every; appendix "
                    "C.3) or 'interval' (N = --eval_every, the released code's "
                    "refer_with_optimal_pi=false). Both interval modes take the released code's "
                    "extras: tau_end / 4 (unless --tau_end is given); on hopper-medium-expert and "
                    "hopper-expert (o2sac, o2td3) and walker2d-expert (o2td3) also every 10 N steps "
                    "and the actor's gradient norm clipped to 0.25.")
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
  if FLAGS.num_processes > 1 and FLAGS.agent not in MULTI_PROCESS_AGENTS:
    raise O2OError(f"--num_processes > 1 is supported for {', '.join(MULTI_PROCESS_AGENTS)} (and the "
                   f"pretrain and train_online launchers), not yet for {FLAGS.agent}: run it in one "
                   "process, or one job per seed range with different --seed")
  if FLAGS["preset"].present and FLAGS.agent not in PRESET_AGENTS:
    raise O2OError(f"--preset applies to {', '.join(PRESET_AGENTS)}, not to --agent={FLAGS.agent} "
                   "(its pipeline has its own pre-training settings, see --helpfull)")
  common.initialize_distributed(FLAGS)
  if FLAGS.agent in OTHER_PIPELINES:
    importlib.import_module(OTHER_PIPELINES[FLAGS.agent]).run(FLAGS)
    return   # (absl would turn a returned value into the exit status)
  from experiments import phases
  from o2o_jax import runs
  tau_overrides = {k: getattr(FLAGS, k) for k in ("tau_start", "tau_end") if getattr(FLAGS, k) is not None}
  if len(tau_overrides) == 2:     # fail before any training; single overrides are checked with the preset
    phases.check_tau(types.SimpleNamespace(**tau_overrides))
  phases.parse_reference(FLAGS.reference)       # a bad value fails before any training
  start, from_dir, dataset_id, preset = "pretrain", None, FLAGS.dataset, FLAGS.preset
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
    dataset_id = from_cfg.get("dataset", dataset_id)
    preset = phases.run_preset(from_dir, from_cfg, FLAGS.preset if FLAGS["preset"].present else None)
  # The released per-dataset step counts (AntMaze) replace the budget's; explicit flags still win.
  budgets = {b: {**v, **phases.dataset_budget(FLAGS.agent, dataset_id, b)}
             for b, v in phases.BUDGETS.items()}
  d = common.finetune_budget(budgets, FLAGS, nonnegative=(
      "pretrain_steps", "reevaluate_steps", "align_steps", "warmup_steps"))
  switches = "".join(f"-no{n}" for n in ("reevaluate", "align", "constrain") if not getattr(FLAGS, n))
  name = FLAGS.run_name or (f"seed{FLAGS.seed}x{FLAGS.seeds}"
                            + ("" if preset == "official" else f"-preset{preset}"))
  common_args = dict(out_dir=FLAGS.out_dir, restart=FLAGS.restart, progress=FLAGS.progress,
                     checkpoint_every=FLAGS.checkpoint_every)

  if start == "pretrain":
    algo = FLAGS.offline_algo or phases.SOURCE_ALGO[FLAGS.agent]
    from_dir = phases.pretrain(algo=algo, dataset_id=FLAGS.dataset, seeds=FLAGS.seeds, seed=FLAGS.seed,
                               num_steps=phases.pretrain_steps(FLAGS.budget, algo, FLAGS.pretrain_steps),
                               eval_every=d["pretrain_eval_every"],
                               eval_episodes=d["eval_episodes"], hidden_dims=d["hidden_dims"],
                               batch_size=FLAGS.batch_size, preset=FLAGS.preset, chain=FLAGS.agent,
                               run_name=name, **common_args)
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
