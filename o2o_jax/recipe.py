"""Recipes and the one runner (issue #20). A recipe is what an O2O method *is*, declared as data: its
ordered phases, its budgets, the settings it reads and its own options. `run(recipe, ctx)` executes
any recipe, for every agent the same way:

  recipe = recipes.get("o3f")
  ctx = Context.build(recipe, dataset="o2o/hopper/medium-v0", seeds=5, budget="quick", given={...})
  run_dir = run(recipe, ctx)                  # the last phase's run directory

What the runner does once for every agent:
  - validation before anything trains: each option's check, the recipe's own `check`, the
    `--config.<field>` overrides against the agent's Config;
  - `--from=<run dir>`: the run's phase picks where the recipe continues; that phase and every phase
    it needs (transitively) are skipped, the others run (SAMG's C-VAE, which needs only the data,
    still runs after `--from=<pretrain run>`); a run of another agent or dataset is a one-line error;
  - budgets as layers: the recipe's `--budget` values, then its per-dataset layer (`dataset_budget`,
    e.g. AntMaze's released step counts), then every setting given explicitly.
Each phase's function (`Phase.run(ctx) -> run dir`) builds an `o2o_jax.phase` spec and runs it with
the phase skeletons (run directories, reuse of finished runs, snapshots, checkpoints, metrics, plots,
summary). `load_run(dir)` restores any phase's result for the next phase.

Phase kinds (for readers and for `--help`): 'offline' (an offline algorithm's scan over the dataset),
'fit' (a frozen actor, a fitted value: re-evaluation, alignment, O2PPO's V, ACA's Z, SAMG's C-VAE),
'off-policy online', 'on-policy online'.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from o2o_jax import config as config_lib
from o2o_jax import runs
from o2o_jax.data import minari_io
from o2o_jax.errors import O2OError

KINDS = ("offline", "fit", "off-policy online", "on-policy online")
# Settings every recipe reads (the launcher's shared flags); `Recipe.reads` adds the others it uses.
# Every recipe splits its seeds over `jax.distributed` processes (tests/test_distributed.py).
DISTRIBUTED_READS = ("num_processes", "process_id", "coordinator_address")
EVERY_RECIPE_READS = ("dataset", "from", "seeds", "seed", "budget", "pretrain_steps", "online_steps",
                      "eval_every", "eval_episodes", "hidden_dims", "batch_size", "out_dir",
                      "run_name", "restart", "progress", "checkpoint_every") + DISTRIBUTED_READS
# The defaults of the shared settings (the launcher's flags have the same), for library callers.
DEFAULTS = {"dataset": "o2o/hopper/medium-v0", "seeds": 1, "seed": 0, "budget": "paper",
            "batch_size": 256, "out_dir": "runs", "restart": False, "progress": True,
            "checkpoint_every": 10_000, "num_processes": 1}
# Budget values and shared settings checked for every recipe that has them (a one-line error).
VALUE_CHECKS = {"seeds": "at_least_1", "utd": "at_least_1",
                **{k: "positive" for k in ("online_steps", "eval_every", "eval_episodes", "batch_size")},
                **{k: "nonnegative" for k in ("pretrain_steps", "reevaluate_steps", "align_steps",
                                              "warmup_steps")}}
CHECKS = {"positive": (lambda v: v > 0, "must be positive"),
          "at_least_1": (lambda v: v >= 1, "must be at least 1"),
          "nonnegative": (lambda v: v >= 0, "must not be negative"),
          "unit": (lambda v: 0.0 <= v <= 1.0, "must lie in [0, 1]")}


@dataclasses.dataclass(frozen=True)
class Option:
  """A setting of one recipe, the launcher's flag `--<name>`. `field`: the agent Config field it sets
  (applied by `Context.configure`, after the recipe's own layers and before `--config.` overrides);
  None: the recipe reads it with `ctx[name]`. `kind`: bool, int, float, str, enum (`choices`) or
  list (of ints). `check`: a key of CHECKS, applied to a value that is not None before any phase runs.
  `convert(value) -> field value` where the field's form differs from the flag's."""
  name: str
  default: Any
  help: str
  kind: str = "float"
  choices: Sequence[str] = ()
  field: Optional[str] = None
  check: Optional[str] = None
  convert: Optional[Callable[[Any], Any]] = None


@dataclasses.dataclass(frozen=True)
class Phase:
  """One phase of a recipe. `name` is the run directory's first level and the 'phase' in its
  config.json; `run(ctx) -> run dir` runs (or reuses) it, reading the run directories of the phases
  in `needs` from `ctx.runs` and this declaration as `ctx.phase`. `accepts(config) -> bool`: whether
  a `--from` run of this phase fits (default: any run of this phase, of this agent unless it is a
  pretrain run).

  What the phase trains, declared for the reader (`describe`) and used by `run`: `step` (the pure
  update the loop scans; None where it is chosen at run time, e.g. the offline algorithm of a
  pretrain phase), `act` (the policy it evaluates or acts with), `data` (what a batch is drawn
  from), `replay` (how an online buffer starts) and `hook` (what happens at each evaluation)."""
  name: str
  kind: str
  run: Callable[["Context"], Path]
  needs: Tuple[str, ...] = ()
  accepts: Optional[Callable[[Mapping[str, Any]], bool]] = None
  step: Optional[Callable] = None
  act: Optional[Callable] = None
  data: str = ""
  replay: str = ""
  hook: str = ""

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"phase {self.name}: kind {self.kind!r} is not one of {KINDS}")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """An O2O method. `config`: its agent's Config (the target of `--config.<field>` overrides).
  `budgets[budget]`: the values of `--budget` (step counts, network sizes), each overridable by the
  shared setting of the same name. `dataset_budget(dataset_id, budget) -> values` layers per-dataset
  values over them. `reads`: the shared settings it reads beyond EVERY_RECIPE_READS, `defaults` their
  defaults (over DEFAULTS); `options`: its own. `check(ctx)`: validation before any phase runs.
  `run_name(ctx)`: the base name of its run directories (default seed<seed>x<seeds>)."""
  agent: str
  doc: str
  phases: Tuple[Phase, ...]
  config: type
  budgets: Mapping[str, Mapping[str, Any]]
  reads: Tuple[str, ...] = ()
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  options: Tuple[Option, ...] = ()
  dataset_budget: Optional[Callable[[str, str], Mapping[str, Any]]] = None
  check: Optional[Callable[["Context"], None]] = None
  run_name: Optional[Callable[["Context"], str]] = None

  def phase(self, name: str) -> Phase:
    for p in self.phases:
      if p.name == name:
        return p
    raise KeyError(name)

  def upstream(self, name: str) -> set:
    """`name` and every phase it needs, transitively."""
    seen, todo = set(), [name]
    while todo:
      n = todo.pop()
      if n not in seen:
        seen.add(n)
        todo.extend(self.phase(n).needs)
    return seen


@dataclasses.dataclass
class Context:
  """Everything a phase function reads. `values`: the budget's values with the per-dataset layer
  and every explicitly given setting over them; `settings`: the shared settings (their value or
  default); `options`: the recipe's own; `overrides`: raw `--config.<field>` strings; `given`: the
  names set explicitly; `runs`: phase name -> run directory, filled as the phases run (and by
  `--from`). `ctx[name]` looks a name up in values, then options, then settings."""
  recipe: Recipe
  values: Dict[str, Any]
  settings: Dict[str, Any]
  options: Dict[str, Any]
  overrides: Dict[str, str] = dataclasses.field(default_factory=dict)
  given: frozenset = frozenset()
  runs: Dict[str, Path] = dataclasses.field(default_factory=dict)
  log: Callable[..., None] = print
  phase: Optional[Phase] = None        # the phase running now (set by `run`)

  @classmethod
  def build(cls, recipe: Recipe, settings: Mapping[str, Any], options: Mapping[str, Any] = None,
            overrides: Mapping[str, str] = None, given=(), log=print) -> "Context":
    """`settings`: the shared settings (names of EVERY_RECIPE_READS and `recipe.reads`; missing ones
    are None); `options`: the recipe's own (missing: their defaults); `given`: the names set
    explicitly, which win over the budget's values."""
    merged = {**DEFAULTS, **recipe.defaults}
    for name, value in settings.items():     # None: not set (the default stays)
      if value is not None or name not in merged:
        merged[name] = value
    settings = merged
    budget = settings["budget"]
    if budget not in recipe.budgets:
      raise O2OError(f"--budget={budget}: {recipe.agent} has budgets {', '.join(recipe.budgets)}")
    values = dict(recipe.budgets[budget])
    dataset = settings.get("dataset")
    if settings.get("from"):        # the dataset of the run it continues (its per-dataset layer)
      dataset = runs.read_config(settings["from"]).get("dataset", dataset)
    if recipe.dataset_budget is not None and dataset is not None:
      values.update(recipe.dataset_budget(dataset, budget))
    known = {o.name: o for o in recipe.options}
    opts = {name: o.default for name, o in known.items()}
    for name, value in (options or {}).items():
      if name not in known:
        raise O2OError(f"--{name} is not an option of {recipe.agent}")
      opts[name] = value
    for name in values:     # a setting or option of the same name, when set, wins
      value = settings.get(name) if settings.get(name) is not None else opts.get(name)
      if value is not None:
        values[name] = tuple(int(h) for h in value) if isinstance(value, list) else value
    return cls(recipe, values, settings, opts, dict(overrides or {}), frozenset(given), log=log)

  def __getitem__(self, name: str):
    for table in (self.values, self.options, self.settings):
      if name in table:
        return table[name]
    raise KeyError(f"{self.recipe.agent}'s recipe has no setting {name!r}")

  def get(self, name: str, default=None):
    try:
      return self[name]
    except KeyError:
      return default

  @property
  def agent(self) -> str:
    return self.recipe.agent

  def phase_args(self) -> Dict[str, Any]:
    """The run-directory arguments every phase function takes."""
    return {k: self.settings.get(k, d) for k, d in (("out_dir", "runs"), ("restart", False),
                                                     ("progress", True),
                                                     ("checkpoint_every", None))}

  def base_name(self) -> str:
    """The base name of this run's directories: --run_name, else the recipe's, else seed<s>x<n>."""
    if self.settings.get("run_name"):
      return self.settings["run_name"]
    if self.recipe.run_name is not None:
      return self.recipe.run_name(self)
    return f"seed{self.settings.get('seed', 0)}x{self.settings.get('seeds', 1)}"

  def configure(self, config):
    """The agent Config `config` with the options that set a field (those not None) and then the
    `--config.` overrides applied, each value checked and converted to the field's type."""
    fields = {}
    for o in self.recipe.options:
      value = self.options.get(o.name)
      if o.field is not None and value is not None:
        fields[o.field] = o.convert(value) if o.convert is not None else value
    config = config_lib.apply_overrides(config, fields, source="option")
    return config_lib.apply_overrides(config, self.overrides)


def check(recipe: Recipe, ctx: Context) -> None:
  """Every check that can fail before training: option values, `--config.` overrides (against the
  agent's Config), then the recipe's own."""
  named = [(o.name, o.check, ctx.options.get(o.name)) for o in recipe.options]
  named += [(k, c, ctx.get(k)) for k, c in VALUE_CHECKS.items()]
  for name, rule, value in named:
    if rule is not None and value is not None:
      ok, what = CHECKS[rule]
      if not ok(value):
        raise O2OError(f"--{name} {what} (got {value})")
  if ctx.overrides:
    config_lib.apply_overrides(recipe.config(), ctx.overrides)
  if recipe.check is not None:
    recipe.check(ctx)


def start_from(recipe: Recipe, ctx: Context, from_dir: Path) -> set:
  """Records the `--from` run in `ctx.runs` and returns the phases it makes unnecessary (its phase
  and everything that phase needs). One-line errors: a run of no phase of the recipe, of another
  agent, or of another dataset than an explicit --dataset."""
  cfg = runs.read_config(from_dir)
  phase, names = cfg.get("phase"), [p.name for p in recipe.phases[:-1]]
  if phase not in names:
    raise O2OError(f"--from={from_dir} is a '{phase}' run: {recipe.agent} continues from a "
                   f"{' or '.join(names)} run")
  p = recipe.phase(phase)
  owner = cfg.get("agent", cfg.get("algo"))
  if p.accepts is not None:
    if not p.accepts(cfg):
      raise O2OError(f"--from={from_dir} is a {phase} run of {owner}, which {recipe.agent} cannot "
                     "continue from (see --helpfull for its phases)")
  elif phase != "pretrain" and cfg.get("agent") != recipe.agent:
    raise O2OError(f"--from={from_dir} is a {owner} run but --agent={recipe.agent}: pass "
                   f"--agent={owner}, or a {recipe.agent} run")
  if "dataset" in ctx.given and cfg.get("dataset") != ctx.settings.get("dataset"):
    raise O2OError(f"--from={from_dir} was trained on {cfg.get('dataset')} (env {cfg.get('env')}), "
                   f"not --dataset={ctx.settings.get('dataset')}: drop --dataset or pass a run on "
                   "that dataset")
  ctx.runs[phase] = Path(from_dir)
  ctx.settings["dataset"] = cfg.get("dataset", ctx.settings.get("dataset"))
  return recipe.upstream(phase)


def run(recipe: Recipe, ctx: Context, from_dir: Optional[Path] = None,
        around: Optional[Callable[[Phase, Callable[[], Path]], Path]] = None) -> Path:
  """Runs the phases of `recipe` that are not done (each reuses a finished run of the same config),
  from the start or after `from_dir`'s phase; returns the last phase's run directory. `around(phase,
  thunk) -> run dir` wraps each phase's call (e.g. to time it; it must call `thunk()`)."""
  check(recipe, ctx)
  skip = start_from(recipe, ctx, Path(from_dir)) if from_dir else set()
  data = None
  for p in recipe.phases:
    if p.name not in skip:
      ctx.phase = p
      thunk = lambda p=p: p.run(ctx)
      ctx.runs[p.name] = around(p, thunk) if around is not None else thunk()
      data = data or data_fingerprint(ctx.settings.get("dataset"))
      record_data(ctx, ctx.runs[p.name], data)
      runs.record_launch(ctx.runs[p.name], budget=ctx.settings.get("budget"))
  ctx.phase = None
  return ctx.runs[recipe.phases[-1].name]


def data_fingerprint(dataset: Optional[str]) -> Optional[Dict[str, Any]]:
  """`minari_io.fingerprint` of the run's dataset for launch.json, computed after a phase has loaded
  it (its flat cache then exists); None when it cannot be read, which the phase itself reports."""
  if not dataset:
    return None
  try:
    return minari_io.fingerprint(dataset)
  except (O2OError, OSError, ValueError, KeyError):
    return None


def record_data(ctx: Context, run_dir: Path, data: Optional[Dict[str, Any]]) -> None:
  """Writes the data's fingerprint to launch.json once, when the run is made: a finished run reused
  later, or a run resumed, on a dataset regenerated since keeps the data it trained on, and the
  change is logged (not refused: config.json, which decides resumption, predates the fingerprint)."""
  recorded = runs.read_launch(run_dir).get("data")
  if not data or recorded == data:
    return
  if recorded:
    ctx.log(f"warning: {run_dir} was made from {recorded.get('id')} with SHA-1 "
            f"{recorded.get('sha1')}; that id now holds SHA-1 {data['sha1']} (regenerated since?). "
            "Its launch.json keeps the first")
    return
  runs.record_launch(run_dir, data=data)


def _function_name(fn) -> str:
  return "" if fn is None else f"{fn.__module__.replace('o2o_jax.', '')}.{fn.__name__}"


def describe(recipe: Recipe, budget: str = "paper") -> str:
  """The recipe as text: its phases in order with their kind, inputs, step and act functions, data,
  replay and evaluation hook, then the budget's values and the options."""
  lines = [f"{recipe.agent}: {recipe.doc}", ""]
  for i, p in enumerate(recipe.phases, 1):
    lines.append(f"{i}. {p.name} ({p.kind})" + (f", from {' + '.join(p.needs)}" if p.needs else ""))
    for label, value in (("step", _function_name(p.step)), ("act", _function_name(p.act)),
                         ("data", p.data), ("replay", p.replay), ("at each evaluation", p.hook)):
      if value:
        lines.append(f"     {label:<19s}{value}")
  lines += ["", f"--budget={budget}: " + ", ".join(f"{k}={v}" for k, v in recipe.budgets[budget].items())]
  if recipe.options:
    lines.append("options: " + ", ".join(f"--{o.name}" + (f" (-> {o.field})" if o.field else "")
                                         for o in recipe.options))
  lines.append(f"--config.<field>=<value>: any field of {recipe.config.__module__}."
               f"{recipe.config.__qualname__}")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- restoring runs

@dataclasses.dataclass(frozen=True)
class LoadedRun:
  """A finished phase's result: its config.json, checkpoint metadata, the seed-stacked states (this
  process's seeds in a multi-process run), the agent module and its Config."""
  run_dir: Path
  config: Dict[str, Any]
  meta: Dict[str, Any]
  states: Any
  module: Any
  agent_config: Any


def load_run(run_dir, phases: Optional[Sequence[str]] = None,
             template: Optional[Callable[[Dict[str, Any], Dict[str, Any]], Any]] = None,
             want: str = "") -> LoadedRun:
  """The one restore path of every phase. The checkpoint's shapes come from the run's own record: a
  pretrain run's offline algorithm (`algo`) or a later run's O2O agent (`agent`), with the Config in
  its config.json (`agent_config`) and the dimensions in the checkpoint metadata, all seeds of the
  run (`seeds`, `seed`). `template(config, meta) -> shapes` replaces that for a phase whose state is
  not the agent's (O2PPO's V fit, SAMG's C-VAE). `phases`: the phases accepted (a one-line error
  names the run's phase and `want`, what the caller expected, otherwise)."""
  from o2o_jax import loops
  from o2o_jax.agents import registry
  from o2o_jax.checkpoints import Checkpointer
  from o2o_jax.types import seed_keys
  run_dir = Path(run_dir)
  cfg = runs.read_config(run_dir)
  phase = cfg.get("phase")
  if phases is not None and phase not in phases:
    raise O2OError(f"{run_dir} is a '{phase}' run of {cfg.get('agent', cfg.get('algo'))}, not "
                   f"{want or 'a ' + ' or '.join(phases) + ' run'}")
  meta = Checkpointer(run_dir / "checkpoints").read_metadata()
  name, family = ((cfg["algo"], registry.OFFLINE) if phase == "pretrain"
                  else (cfg.get("agent"), registry.O2O))
  # A phase whose state is no registered agent's (SAMG's C-VAE, agent 'samg') brings its template.
  module = registry.get(name, family) if template is None or name in family else None
  agent_config = (runs.config_from_dict(module.Config, cfg["agent_config"])
                  if module is not None and "agent_config" in cfg else None)
  if template is not None:
    shapes = template(cfg, meta)
  else:
    shapes = loops.init_shapes(module, seed_keys(cfg["seed"], cfg["seeds"]), meta["obs_dim"],
                               meta["act_dim"], agent_config)
  states, meta = runs.restore_result(run_dir, shapes)
  return LoadedRun(run_dir, cfg, meta, states, module, agent_config)


def check_fits(run_dir, config, source: str = "--config") -> None:
  """A one-line error if `config`, replacing the Config the run in `run_dir` trained with (its
  config.json's `agent_config`), would change the networks or optimiser states it saved (shapes or
  dtypes): such a setting is fixed by that run, e.g. `--config.critic_hidden_dims` given with
  `--from=<an align run>`. Nothing is restored (both forms come from `jax.eval_shape`)."""
  import jax
  from o2o_jax import loops
  from o2o_jax.agents import registry
  from o2o_jax.checkpoints import Checkpointer
  from o2o_jax.types import seed_keys
  cfg = runs.read_config(run_dir)
  meta = Checkpointer(Path(run_dir) / "checkpoints").read_metadata()
  module = registry.get(cfg["agent"], registry.O2O)
  trained = runs.config_from_dict(module.Config, cfg["agent_config"])
  form = lambda c: [(tuple(x.shape), x.dtype) for x in jax.tree_util.tree_leaves(loops.init_shapes(
      module, seed_keys(cfg["seed"], 1), meta["obs_dim"], meta["act_dim"], c))]
  if config != trained and form(config) != form(trained):
    changed = [f.name for f in dataclasses.fields(config)
               if getattr(config, f.name) != getattr(trained, f.name, None)]
    raise O2OError(f"{source}: {', '.join(changed)} would change the networks trained by "
                   f"{run_dir} ({cfg.get('phase')} run): pass it to an earlier phase's run "
                   "(--from a pretrain run, or no --from)")


def check_actor_fits(expected, actor_params, message: str) -> None:
  """A one-line `O2OError(message)` unless the seed-stacked `actor_params` (an offline run's actor)
  have the tree and shapes of `expected` (one seed's actor parameters, or their shapes): the offline
  actor must be the O2O agent's actor type."""
  import jax
  given = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), actor_params)
  same = jax.tree_util.tree_structure(expected) == jax.tree_util.tree_structure(given) and all(
      tuple(a.shape) == tuple(b.shape) for a, b in zip(jax.tree_util.tree_leaves(expected),
                                                       jax.tree_util.tree_leaves(given)))
  if not same:
    raise O2OError(message)
