"""Any O2O agent's recipe end to end (o2o_jax/recipes/: O2TD3, O2SAC, O2PPO, ACA, O3F, SAMG), N seeds
vmapped in one job:

  python -m experiments.finetune --agent=o2td3 --budget=quick            # embedded o2o/hopper/medium-v0
  python -m experiments.finetune --agent=o2td3 --dataset=o2o/hopper/medium-v0 --seeds=5
  python -m experiments.finetune --agent=o2td3 --from=runs/align/o2td3/...  # continue from any phase
  python -m experiments.finetune --agent=o2sac --config.critic_lr=1e-4    # any field of its Config
  python -m experiments.finetune --agent=o3f --describe                   # its phases, budget, options

Each phase writes its own run directory (runs/<phase>/...) and is reused when it already finished, so
rerunning the command skips what is done. `--reevaluate/--align/--constrain=false` are the paper's
ablations (all three off = direct fine-tuning of the offline policy). This file only turns flags into
the recipe's settings and options; the runner is `o2o_jax.recipe.run`.
"""
from __future__ import annotations

from absl import flags

from experiments import common
from o2o_jax import config as config_lib
from o2o_jax import presets
from o2o_jax import recipe as recipe_lib
from o2o_jax import recipes
from o2o_jax.errors import O2OError

FLAGS = flags.FLAGS
# The shared flags each agent reads: the runner's own (recipe.EVERY_RECIPE_READS) and its recipe's
# `reads`. One given explicitly to an agent that does not read it is an error (check_agent_flags),
# never silently ignored.
AGENT_FLAGS = {a: recipe_lib.EVERY_RECIPE_READS + ("agent", "describe") + r.reads
               for a, r in recipes.all_recipes().items()}
# What to do instead, for the flags whose absence is a known limitation rather than a design choice.
NOT_APPLICABLE_HINTS = {"preset": "its recipe has its own pre-training settings, see --describe"}
CONFIG_OVERRIDES = {}     # --config.<field>=<value>, taken out of argv before absl parses it (main)
flags.DEFINE_enum("agent", "o2td3", list(AGENT_FLAGS),
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
flags.DEFINE_bool("describe", False, "Print the agent's recipe (its phases in order, each one's kind, "
                  "step and act functions, data, replay and evaluation hook; the --budget's values "
                  "and the agent's options) and exit without training.")
flags.DEFINE_string("out_dir", "runs", "Root of run directories.")
flags.DEFINE_string("run_name", None, "Run name (default: seed<seed>x<seeds> plus the ablation switches).")
flags.DEFINE_bool("restart", False, "Rerun the phases of this run even if they finished.")
flags.DEFINE_bool("progress", True, "Show progress bars.")
common.define_checkpoint_flag()
common.define_distributed_flags()


_DEFINE = {"bool": flags.DEFINE_bool, "int": flags.DEFINE_integer, "float": flags.DEFINE_float,
           "str": flags.DEFINE_string, "list": flags.DEFINE_list}


def define_option_flags() -> None:
  """A flag --<name> for every option of every recipe (an option several recipes share, e.g. the
  SAMG variants', is defined once, with the first recipe's default and help)."""
  for recipe in recipes.all_recipes().values():
    for o in recipe.options:
      if o.name in FLAGS:
        continue
      if o.kind == "enum":
        flags.DEFINE_enum(o.name, o.default, list(o.choices), o.help)
      else:
        _DEFINE[o.kind](o.name, o.default, o.help)


define_option_flags()


def own_flags(agent: str) -> set:
  """The agent-specific flags of `agent`: its recipe's options."""
  return {o.name for o in recipes.get(agent).options}


def check_agent_flags(agent: str, given) -> None:
  """An O2OError for the first flag in `given` (names given on the command line) that `agent` does
  not read: a shared flag missing from AGENT_FLAGS[agent], or another agent's own flag."""
  shared = set().union(*AGENT_FLAGS.values())
  takes, own = set(AGENT_FLAGS[agent]), own_flags(agent)
  others = set().union(*(own_flags(a) for a in AGENT_FLAGS)) - own
  for name in sorted(given):
    if (name in shared and name not in takes) or name in others:
      hint = NOT_APPLICABLE_HINTS.get(name)
      prefixes = sorted({n.split("_")[0] + "_*" for n in own})
      raise O2OError(f"--{name} does not apply to --agent={agent} ({hint + '; ' if hint else ''}"
                     f"{agent} takes " + ", ".join(f"--{n}" for n in sorted(takes) + prefixes) + ")")


def take_config_overrides(argv):
  """common.run's argv filter: --config.<field>=<value> go to CONFIG_OVERRIDES (absl would reject
  them as unknown flags)."""
  raw, rest = config_lib.parse_overrides(argv)
  CONFIG_OVERRIDES.update(raw)
  return rest


def check_config_overrides(agent: str, raw) -> None:
  """Checks `raw` against the agent's Config (unknown field, wrong type: one-line O2OError) before
  joining a multi-process run; the recipe applies them."""
  if raw:
    config_lib.apply_overrides(recipes.get(agent).config(), raw)


def run_recipe(recipe) -> None:
  """The agent's recipe on the runner, from the flags: the shared settings it reads, its options,
  the --config. overrides; the flags given explicitly win over --budget's values."""
  given = frozenset(name for name in FLAGS if FLAGS[name].present)
  settings = {n: FLAGS[n].value for n in set(AGENT_FLAGS[recipe.agent]) if n in FLAGS}
  options = {o.name: (tuple(int(h) for h in FLAGS[o.name].value)
                      if o.kind == "list" and FLAGS[o.name].value is not None else FLAGS[o.name].value)
             for o in recipe.options}
  ctx = recipe_lib.Context.build(recipe, settings, options, CONFIG_OVERRIDES, given)
  recipe_lib.run(recipe, ctx, from_dir=settings.get("from"))


def main(argv):
  del argv
  recipe = recipes.get(FLAGS.agent)
  if FLAGS.describe:
    print(recipe_lib.describe(recipe, FLAGS.budget))
    return
  # Both checks come before any training (and before joining a multi-process run).
  check_agent_flags(FLAGS.agent, [name for name in FLAGS if FLAGS[name].present])
  check_config_overrides(FLAGS.agent, CONFIG_OVERRIDES)
  common.initialize_distributed(FLAGS)
  run_recipe(recipe)


if __name__ == "__main__":
  common.run(main, argv_filter=take_config_overrides)
