"""The one runner (`o2o_jax.recipe`, issue #20): which phases a recipe runs (from the start, after
`--from`), budgets as layers, the checks before any training, and `--config.` overrides reaching the
run's config.json."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from o2o_jax import recipe as recipe_lib
from o2o_jax import recipes
from o2o_jax import runs
from o2o_jax.errors import O2OError


@dataclasses.dataclass(frozen=True)
class ToyConfig:
  lr: float = 1e-3
  width: int = 8


def _toy(calls, tmp_path):
  """A recipe of four phases: a -> b -> d, and c (needs nothing) -> d. Each phase writes a run
  directory with its config.json and records that it ran."""
  def phase(name):
    def run(ctx):
      calls.append((name, {k: str(v) for k, v in ctx.runs.items()}))
      d = tmp_path / name / ctx.base_name()
      d.mkdir(parents=True, exist_ok=True)
      (d / "config.json").write_text(json.dumps({"phase": name, "agent": "toy", "dataset": ctx["dataset"]}))
      return d
    return run
  return recipe_lib.Recipe(
      agent="toy", doc="toy", config=ToyConfig,
      budgets={"paper": {"online_steps": 100, "eval_every": 10, "hidden_dims": None},
               "quick": {"online_steps": 10, "eval_every": 5, "hidden_dims": (4, 4)}},
      dataset_budget=lambda dataset, budget: {"eval_every": 50} if "antmaze" in dataset else {},
      options=(recipe_lib.Option("toy_lr", None, "lr", field="lr", check="positive"),
               recipe_lib.Option("toy_width", 8, "width", kind="int", field="width")),
      phases=(recipe_lib.Phase("a", "offline", phase("a"), accepts=lambda cfg: True),
              recipe_lib.Phase("b", "fit", phase("b"), needs=("a",)),
              recipe_lib.Phase("c", "fit", phase("c")),
              recipe_lib.Phase("d", "off-policy online", phase("d"), needs=("b", "c"))))


def _ctx(recipe, **settings):
  options = settings.pop("options", {})
  overrides = settings.pop("overrides", {})
  given = frozenset(settings)
  return recipe_lib.Context.build(recipe, {"dataset": "o2o/hopper/medium-v0", "seed": 0, "seeds": 2,
                                           **settings}, options, overrides, given, log=lambda *_: None)


def test_every_phase_runs_in_order_from_the_start(tmp_path):
  calls = []
  recipe = _toy(calls, tmp_path)
  last = recipe_lib.run(recipe, _ctx(recipe))
  assert [c[0] for c in calls] == ["a", "b", "c", "d"]
  assert last == tmp_path / "d" / "seed0x2"
  assert set(calls[-1][1]) == {"a", "b", "c"}       # d sees every earlier run directory


def test_every_phase_run_records_its_budget_beside_its_config(tmp_path):
  """launch.json carries the budget name (no phase's config does; the report reads it), and a run
  made before it existed gets it on its next (resumed) pass without its config being compared."""
  recipe = _toy([], tmp_path)
  unknown = "nope/hopper/medium-v9"     # no data to fingerprint: launch.json holds the budget alone
  recipe_lib.run(recipe, _ctx(recipe, budget="quick", dataset=unknown))
  for name in "abcd":
    assert runs.read_launch(tmp_path / name / "seed0x2") == {"budget": "quick"}
  (tmp_path / "d" / "seed0x2" / runs.LAUNCH_FILE).unlink()
  recipe_lib.run(recipe, _ctx(recipe, budget="quick", dataset=unknown))
  assert runs.read_launch(tmp_path / "d" / "seed0x2") == {"budget": "quick"}
  assert "budget" not in json.loads((tmp_path / "d" / "seed0x2" / "config.json").read_text())


def test_every_phase_run_records_which_data_it_trained_on(tmp_path, tiny_hopper_dataset, monkeypatch):
  """launch.json's "data" is the dataset's fingerprint (`minari_io.fingerprint`: one id can hold
  different data after a regeneration on another host type; the report compares them). A dataset
  that cannot be read records none (the test above)."""
  from o2o_jax.data import minari_io
  recipe = _toy([], tmp_path)
  recipe_lib.run(recipe, _ctx(recipe, budget="quick", dataset=tiny_hopper_dataset.dataset_id))
  expected = minari_io.fingerprint(tiny_hopper_dataset.dataset_id)
  assert expected["id"] == tiny_hopper_dataset.dataset_id and len(expected["sha1"]) == 12
  for name in "abcd":
    assert runs.read_launch(tmp_path / name / "seed0x2") == {"budget": "quick", "data": expected}
  # The set regenerated under the same id: the finished runs, reused, keep the data they were made
  # from, and the change is logged.
  old = runs.read_launch(tmp_path / "a" / "seed0x2")["data"]
  changed = {**expected, "sha1": "0123456789ab"}
  logged = []
  ctx = _ctx(recipe, budget="quick", dataset=tiny_hopper_dataset.dataset_id)
  ctx.log = logged.append
  monkeypatch.setattr(minari_io, "fingerprint", lambda dataset_id: changed)
  recipe_lib.run(recipe, ctx)
  assert runs.read_launch(tmp_path / "a" / "seed0x2")["data"] == old
  assert len(logged) == 4 and "now holds SHA-1 0123456789ab" in logged[0], logged


def test_from_skips_that_phase_and_what_it_needs_but_runs_the_independent_ones(tmp_path):
  calls = []
  recipe = _toy(calls, tmp_path)
  recipe_lib.run(recipe, _ctx(recipe))
  b_dir = tmp_path / "b" / "seed0x2"
  calls.clear()
  recipe_lib.run(recipe, _ctx(recipe, **{"from": str(b_dir)}), from_dir=b_dir)
  assert [c[0] for c in calls] == ["c", "d"]            # a (needed by b) and b skipped; c still runs
  assert calls[-1][1]["b"] == str(b_dir)


@pytest.mark.parametrize("cfg, words", [
    ({"phase": "d", "agent": "toy"}, "is a 'd' run: toy continues from a a or b or c run"),
    ({"phase": "zfit", "agent": "toy"}, "is a 'zfit' run"),
    ({"phase": "b", "agent": "other", "dataset": "o2o/hopper/medium-v0"},
     "is a other run but --agent=toy: pass --agent=other, or a toy run"),
])
def test_from_a_run_the_recipe_cannot_continue_is_one_line(tmp_path, cfg, words):
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  (run_dir / "config.json").write_text(json.dumps(cfg))
  calls = []
  recipe = _toy(calls, tmp_path)
  with pytest.raises(O2OError, match=words.replace("(", r"\(").replace(")", r"\)")) as e:
    recipe_lib.run(recipe, _ctx(recipe, **{"from": str(run_dir)}), from_dir=run_dir)
  assert "\n" not in str(e.value) and calls == []


def test_from_a_run_on_another_dataset_than_an_explicit_one_is_refused(tmp_path):
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  (run_dir / "config.json").write_text(json.dumps({"phase": "b", "agent": "toy", "dataset": "x/y-v0"}))
  recipe = _toy([], tmp_path)
  with pytest.raises(O2OError, match=r"was trained on x/y-v0 .*not --dataset=o2o/hopper/medium-v0"):
    recipe_lib.run(recipe, _ctx(recipe, dataset="o2o/hopper/medium-v0", **{"from": str(run_dir)}),
                   from_dir=run_dir)


def test_budget_then_dataset_layer_then_explicit_settings_and_options(tmp_path):
  recipe = _toy([], tmp_path)
  ctx = _ctx(recipe, budget="quick")
  assert (ctx["online_steps"], ctx["eval_every"], ctx["hidden_dims"]) == (10, 5, (4, 4))
  ctx = _ctx(recipe, budget="quick", dataset="D4RL/antmaze/umaze-v1")
  assert ctx["eval_every"] == 50                                    # the per-dataset layer
  ctx = _ctx(recipe, budget="quick", dataset="D4RL/antmaze/umaze-v1", eval_every=7,
             hidden_dims=["16", "16"])
  assert (ctx["eval_every"], ctx["hidden_dims"]) == (7, (16, 16))   # explicit settings win
  with pytest.raises(O2OError, match="^--budget=huge: toy has budgets paper, quick$"):
    _ctx(recipe, budget="huge")


def test_options_then_config_overrides_set_the_agent_config(tmp_path):
  recipe = _toy([], tmp_path)
  ctx = _ctx(recipe, options={"toy_lr": 0.5, "toy_width": 3}, overrides={"width": "5"})
  assert ctx.configure(ToyConfig()) == ToyConfig(lr=0.5, width=5)   # --config. wins over an option
  assert _ctx(recipe).configure(ToyConfig(lr=0.1)) == ToyConfig(lr=0.1, width=8)  # None: not applied


@pytest.mark.parametrize("kwargs, message", [
    ({"options": {"toy_lr": -1.0}}, "--toy_lr must be positive (got -1.0)"),
    ({"online_steps": 0}, "--online_steps must be positive (got 0)"),
    ({"seeds": 0}, "--seeds must be at least 1 (got 0)"),
    ({"overrides": {"width": "wide"}}, "--config.width=wide: field 'width' of "),
    ({"overrides": {"depth": "2"}}, "--config.depth: "),
])
def test_bad_values_fail_before_any_phase_runs(tmp_path, kwargs, message):
  calls = []
  recipe = _toy(calls, tmp_path)
  with pytest.raises(O2OError) as e:
    recipe_lib.run(recipe, _ctx(recipe, **kwargs))
  assert str(e.value).startswith(message) and calls == []


def test_every_o2o_agent_has_a_recipe_whose_phases_chain():
  for agent, recipe in recipes.all_recipes().items():
    assert recipe.agent == agent
    names = [p.name for p in recipe.phases]
    assert names[0] == "pretrain" and len(set(names)) == len(names)
    for i, p in enumerate(recipe.phases):
      assert set(p.needs) <= set(names[:i]), (agent, p.name)     # a phase needs only earlier ones
    assert recipe.phases[-1].kind.endswith("online")
    assert set(recipe.budgets) == {"paper", "quick"}


# ----------------------------------------------------------------------------- a real recipe

TINY = dict(budget="quick", pretrain_steps=20, reevaluate_steps=10, align_steps=10, online_steps=20,
            warmup_steps=5, eval_every=10, eval_episodes=1, hidden_dims=["8", "8"],
            critic_hidden=["8", "8"], batch_size=16, progress=False, checkpoint_every=0)


def test_config_overrides_reach_every_o2td3_phase_and_a_network_change_after_align_is_refused(
    tiny_hopper_dataset, tmp_path):
  recipe = recipes.get("o2td3")
  settings = dict(TINY, dataset=tiny_hopper_dataset.dataset_id, out_dir=str(tmp_path))
  ctx = _ctx(recipe, **settings, overrides={"critic_lr": "1e-4", "exploration_noise": "0.2"})
  last = recipe_lib.run(recipe, ctx)
  for phase in ("reevaluate", "align", "finetune"):
    cfg = json.loads((Path(ctx.runs[phase]) / "config.json").read_text())
    assert cfg["agent_config"]["critic_lr"] == 1e-4 and cfg["agent_config"]["exploration_noise"] == 0.2
  assert last == ctx.runs["finetune"]
  # From the align run: an online setting may change, a network size may not.
  align = ctx.runs["align"]
  more = dict(settings, run_name="again", **{"from": str(align)})
  ctx2 = _ctx(recipe, **more, overrides={"tau_end": "0.05"})
  recipe_lib.run(recipe, ctx2, from_dir=align)
  assert json.loads((Path(ctx2.runs["finetune"]) / "config.json").read_text())["agent_config"]["tau_end"] == 0.05
  with pytest.raises(O2OError, match=r"^--config: critic_hidden_dims would change the networks trained "
                                     r"by .* \(align run\)"):
    recipe_lib.run(recipe, _ctx(recipe, **dict(more, run_name="bad"),
                                overrides={"critic_hidden_dims": "16,16"}), from_dir=align)


def test_describe_lists_the_phases_with_their_declared_steps():
  text = recipe_lib.describe(recipes.get("o2td3"), "quick")
  order = [text.index(f"{i}. {name} (") for i, name in enumerate(
      ("pretrain", "reevaluate", "align", "finetune"), 1)]
  assert order == sorted(order)
  for fn in ("o2td3.reevaluate_step", "o2td3.align_step", "o2td3.finetune_step"):
    assert fn in text
  assert "--budget=quick: pretrain_steps=10000" in text


def test_check_actor_fits_compares_tree_and_shapes_without_the_seed_axis():
  import numpy as np
  expected = {"dense": {"kernel": np.zeros((4, 3)), "bias": np.zeros(3)}}
  stacked = {"dense": {"kernel": np.zeros((2, 4, 3)), "bias": np.zeros((2, 3))}}   # 2 seeds
  recipe_lib.check_actor_fits(expected, stacked, "no")
  wider = {"dense": {"kernel": np.zeros((2, 4, 5)), "bias": np.zeros((2, 5))}}
  with pytest.raises(O2OError, match="^does not fit$"):
    recipe_lib.check_actor_fits(expected, wider, "does not fit")
  other = {"dense": {"kernel": np.zeros((2, 4, 3))}}
  with pytest.raises(O2OError, match="^does not fit$"):
    recipe_lib.check_actor_fits(expected, other, "does not fit")


# ----------------------------------------------------------------------------- adding a method
# A new O2O method is a module with an agent (init / update / act over a pytree state) and a
# `RECIPES` dict, plus one line in o2o_jax/recipes/__init__.py. This file is such a module: a toy
# agent (a linear tanh policy cloned onto the dataset's actions) and a two-phase recipe, "train" from
# the data, then "tune" from the train run restored by `recipe.load_run`.

@dataclasses.dataclass(frozen=True)
class ToyAgentConfig:
  lr: float = 0.05


class toy_agent:   # noqa: N801 (an agent module's namespace)
  Config = ToyAgentConfig

  @staticmethod
  def init(key, obs_dim, act_dim, config):
    import jax
    return {"w": 0.1 * jax.random.normal(key, (obs_dim, act_dim))}

  @staticmethod
  def act(state, obs, key, explore):
    import jax.numpy as jnp
    return jnp.tanh(obs @ state["w"])

  @staticmethod
  def update(state, batch, key, lr=ToyAgentConfig.lr):
    import jax
    import jax.numpy as jnp
    loss_fn = lambda w: jnp.mean((jnp.tanh(batch.observations @ w) - batch.actions) ** 2)
    loss, grad = jax.value_and_grad(loss_fn)(state["w"])
    return {"w": state["w"] - lr * grad}, {"bc_loss": loss}


def _toy_phase(name, from_phase=None):
  def run(ctx):
    from o2o_jax import loops
    from o2o_jax import phase as phase_lib
    from o2o_jax.data import prepared
    from o2o_jax.types import seed_keys
    config = ctx.configure(ToyAgentConfig())
    data = prepared.load_data(ctx["dataset"], batch_size=ctx["batch_size"])
    run_config = {"phase": name, "agent": "toy", "dataset": ctx["dataset"], "seeds": ctx["seeds"],
                  "seed": ctx["seed"], "agent_config": dataclasses.asdict(config),
                  "from": str(ctx.runs.get(from_phase, ""))}
    spec = phase_lib.OfflinePhase(
        phase=name, agent="toy", dataset_id=ctx["dataset"], run_name=ctx.base_name(), config=run_config,
        loop=loops.OfflineConfig(num_steps=ctx["online_steps"], batch_size=ctx["batch_size"], chunk=10,
                                 eval_every=ctx["eval_every"], eval_episodes=1),
        out_dir=ctx["out_dir"], progress=False, checkpoint_every=ctx["checkpoint_every"])

    def build(run_dir):
      ds = data.dataset
      if from_phase is None:
        states = loops.init_states(toy_agent, seed_keys(ctx["seed"], ctx["seeds"]), ds.observation_dim,
                                   ds.action_dim, config)
      else:   # the earlier run, restored with shapes from its own record
        states = recipe_lib.load_run(ctx.runs[from_phase], template=lambda cfg, meta: loops.init_shapes(
            toy_agent, seed_keys(cfg["seed"], cfg["seeds"]), meta["obs_dim"], meta["act_dim"],
            config)).states
      meta = {"obs_dim": ds.observation_dim, "act_dim": ds.action_dim}
      return phase_lib.Training(loops.Learner(ctx.phase.step, ctx.phase.act), states, data.device, data,
                                meta)
    return phase_lib.run_offline_phase(spec, build, ctx.log)
  return run


TOY = recipe_lib.Recipe(
    agent="toy", doc="a toy method: clone the dataset's actions, then more of it", config=ToyAgentConfig,
    budgets={"paper": {"online_steps": 40, "eval_every": 20}, "quick": {"online_steps": 40, "eval_every": 20}},
    phases=(recipe_lib.Phase("train", "offline", _toy_phase("train"), step=toy_agent.update,
                             act=toy_agent.act),
            recipe_lib.Phase("tune", "fit", _toy_phase("tune", "train"), needs=("train",),
                             step=toy_agent.update, act=toy_agent.act)))
RECIPES = {"toy": TOY}


def test_a_method_defined_here_runs_through_the_runner_and_resumes_exactly(
    tiny_hopper_dataset, tmp_path, monkeypatch, crash_at, same_outputs):
  monkeypatch.setitem(recipes.RECIPES, "toy", __name__)           # the one registry line
  toy = recipes.get("toy")
  assert toy is TOY

  def run(out, **settings):
    ctx = _ctx(toy, dataset=tiny_hopper_dataset.dataset_id, batch_size=16, out_dir=str(out),
               checkpoint_every=20, **settings)
    recipe_lib.run(toy, ctx)
    return ctx.runs

  ref = run(tmp_path / "ref")
  assert json.loads((ref["tune"] / "config.json").read_text())["from"] == str(ref["train"])
  assert "train/bc_loss" in (ref["tune"] / "metrics.csv").read_text().splitlines()[0]
  crash_at("tune", 30)                      # dies after the snapshot at 20, before the end at 40
  with pytest.raises(Exception, match="crashed by the fault injection"):
    run(tmp_path / "crashed")
  crash_at(None)
  again = run(tmp_path / "crashed")         # train is reused, tune resumes from its snapshot
  for phase in ("train", "tune"):
    same_outputs(again[phase], ref[phase])
