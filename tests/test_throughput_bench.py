"""benchmarks/throughput.py builds every (agent, phase) row from the package's own functions.

Every entry is built with tiny sizes and one update traced (`jax.eval_shape`: the whole Python/JAX
side of the step, no XLA compilation, which would cost seconds per row), so a package change that
breaks a row fails here; the benchmark's seed-vmapped programs are traced for a rollout row and an
online row. The lambda rows (the agents' `lambda_step`) are checked against `finetune_step`."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import throughput as tp
from o2o_jax import loops
from o2o_jax.agents import registry
from o2o_jax.data import replay
from o2o_jax.types import seed_keys

TINY = tp.Settings(hidden=8, batch_size=8, rollout_length=16, ppo_minibatches=2, ppo_epochs=1,
                   dataset_size=64)
SEEDS = 2
# XLA options that cut CPU compile time several-fold (the programs here are tiny).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _same_shapes(a, b, drop_seed_axis=False):
  sa, sb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
  assert sa == sb, f"state structure changed:\n{sa}\n{sb}"
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    assert (x.shape[1:] if drop_seed_axis else x.shape, x.dtype) == (y.shape, y.dtype)


def _trace_one_update(spec):
  """eval_shape of init -> one update (and the exploring action of online phases), one seed."""
  key = jax.random.PRNGKey(0)
  state = jax.eval_shape(lambda k: spec.init(k, tp.OBS, tp.ACT, spec.config), key)
  if spec.batch == "rollout":
    batch = jax.eval_shape(lambda s, k: tp.rollouts(spec, jax.tree_util.tree_map(lambda x: x[None], s),
                                                    TINY.rollout_length, k), state, key)
    batch = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), batch)
  else:
    batch = jax.eval_shape(lambda k: tp.transitions(TINY.batch_size, k), key)
  if spec.batch_of is not None:
    batch = jax.eval_shape(spec.batch_of, batch, key)
  new_state, info = jax.eval_shape(spec.update, state, batch, key)
  _same_shapes(state, new_state)
  assert info and all(v.shape == () for v in info.values()), info
  if spec.online is not None:
    action = jax.eval_shape(lambda s, o, k: spec.act(s, o, k, True), state, batch.observations, key)
    assert action.shape == (TINY.batch_size, tp.ACT)


def test_every_entry_builds_and_traces_one_update():
  names = [e.name for e in tp.ENTRIES]
  assert len(names) == len(set(names))
  # Every agent of the registry has a row (a new agent without one fails here).
  missing = sorted((set(registry.ONLINE) | set(registry.OFFLINE) | set(registry.O2O))
                   - {e.agent for e in tp.ENTRIES})
  assert not missing, f"benchmarks/throughput.py has no row for {missing}"
  for entry in tp.ENTRIES:
    try:
      _trace_one_update(tp.build(entry, TINY))
    except Exception as e:   # name the row
      raise AssertionError(f"{entry.name}: {type(e).__name__}: {e}") from e
  assert [e.name for e in tp.select(["o2td3"], ["lambda"])] == ["o2td3/lambda"]


def test_every_declared_recipe_step_is_the_one_measured():
  """The throughput rows measure the steps the recipes declare (and the runner scans): every phase
  with a declared step has a row whose update is that function (SAMG's shared C-VAE: row samg/cvae)."""
  from o2o_jax import recipes
  rows = {e.name: e for e in tp.ENTRIES}
  for agent, recipe in recipes.all_recipes().items():
    for phase in recipe.phases:
      if phase.step is None:
        continue
      name = "samg/cvae" if phase.name == "cvae" else f"{agent}/{phase.name}"
      assert name in rows, f"benchmarks/throughput.py has no row for {name}"
      assert tp.build(rows[name], TINY).update is phase.step, name


def test_loop_programs():
  # The seed-vmapped programs of a rollout row and of an online row (traced).
  for name, phase in (("ppo", "online"), ("o2td3", "finetune")):
    spec = tp.build(tp.select([name], [phase])[0], TINY)
    keys = seed_keys(0, SEEDS)

    def program(keys):
      states = tp.init_states(spec, SEEDS)
      data = (tp.rollouts(spec, states, TINY.rollout_length, keys[0]) if spec.batch == "rollout"
              else tp.transitions(TINY.dataset_size, keys[0]))
      out = {"states": states, "chunk": tp.chunk_fn(spec, TINY, 1)(states, keys, data)}
      if spec.online is not None:   # loops.run_online's per-env-step program, the phase's mixing
        mixing = {"offline_fraction": 0.0, "offline_union": False, **spec.online}
        step = loops.online_functions(spec.update, spec.act, TINY.batch_size, TINY.utd,
                                      mixing["offline_fraction"], mixing["offline_union"]).update
        buffers = replay.insert_lockstep(replay.init(32, tp.OBS, tp.ACT, SEEDS),
                                         jax.tree_util.tree_map(lambda x: x[:SEEDS], data))
        out["online"] = step(states, buffers, data.observations[:SEEDS], keys, data)
      return out

    out = jax.eval_shape(program, keys)
    _same_shapes(out["states"], out["chunk"][0])
    assert all(v.shape == (SEEDS,) for v in out["chunk"][1].values())
    if "online" in out:
      _same_shapes(out["states"], out["online"][0])
      assert out["online"][1].shape == (SEEDS, tp.ACT)


def test_flop_count_multiplies_scans_and_takes_the_larger_cond_branch():
  x = jax.ShapeDtypeStruct((4, 8), np.float32)
  w = jax.ShapeDtypeStruct((8, 8), np.float32)
  scan = lambda x, w: jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=5)[0]
  cost = tp.jaxpr_cost(jax.make_jaxpr(scan)(x, w).jaxpr)
  assert cost["flops"] == 5 * 2 * 4 * 8 * 8 and cost["kinds"] == {"scan"}
  cond = lambda p, x, w: jax.lax.cond(p, lambda: (x @ w) @ w, lambda: x)
  cost = tp.jaxpr_cost(jax.make_jaxpr(cond)(True, x, w).jaxpr)
  assert cost["flops"] == 2 * 2 * 4 * 8 * 8 and cost["kinds"] == {"cond"}


def test_lambda_step_matches_finetune_step():
  """The lambda rows (`lambda_step`) update lambda as `finetune_step` does: the same state after one
  step (o2td3 at step 0, where its delayed branch runs; o2sac at step 0, the first update of an env
  step)."""
  for name in ("o2td3", "o2sac"):
    ft = tp.build(tp.select([name], ["finetune"])[0], TINY)
    lam = tp.build(tp.select([name], ["lambda"])[0], TINY)

    def both(k_init, batch, key):
      state = ft.init(k_init, tp.OBS, tp.ACT, ft.config)
      return (state.lagrange.params["log_lambda"], ft.update(state, batch, key)[0].lagrange.params,
              lam.update(state, batch, key)[0].lagrange.params)

    args = (jax.random.PRNGKey(0), tp.transitions(TINY.batch_size, jax.random.PRNGKey(3)),
            jax.random.PRNGKey(4))
    before, a, b = jax.jit(both).lower(*args).compile(FAST_COMPILE)(*args)
    assert float(jnp.abs(a["log_lambda"] - before)) > 0
    np.testing.assert_allclose(a["log_lambda"], b["log_lambda"], rtol=1e-6)


def test_timed_rounds_interleave_and_ratios_are_taken_within_a_round():
  order = []
  rates = tp.timed_rounds({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                          seconds=0.0, rounds=3)
  assert [len(v) for v in rates.values()] == [3, 3]
  # One warm-up call and (at least) one timed call per fn per round, a's before b's in each round.
  assert order == ["a", "a", "b", "b"] * 3
  # Per-round ratios 2, 2, 3 -> median 2; the ratio of the medians (3 / 1) would be 3.
  assert tp.median_ratio([2.0, 8.0, 3.0], [1.0, 4.0, 1.0]) == 2.0
