"""The online loop: buffers fill, evaluation runs per seed, and the jitted step compiles once."""
import jax
import numpy as np
import pytest

from o2o_jax import envs, loops
from o2o_jax.agents.online import td3
from o2o_jax.types import seed_keys


def test_online_loop_runs_seeds_and_compiles_once():
  cfg = td3.Config(hidden_dims=(16, 16))
  seeds = 2
  states = loops.init_states(td3, seed_keys(0, seeds), 11, 3, cfg)
  conf = loops.OnlineConfig(total_steps=120, start_steps=40, batch_size=16, eval_every=60,
                            eval_episodes=2, buffer_size=100)
  # The jitted functions are cached per (update, act, batch, utd, sampling), across tests too: count
  # the executables this run adds (other tests may have compiled other shapes already).
  fns = loops.online_functions(td3.update, td3.act, 16, 1, 0.0, False)   # as run_online calls it
  before = fns.insert._cache_size(), fns.update._cache_size()
  evals, raw_rewards = [], []
  callbacks = loops.OnlineCallbacks(on_eval=lambda t, s, r: evals.append((t, r.shape)),
                                    on_step=lambda t, tr, trunc: raw_rewards.append(tr.rewards))
  out, buffers, history = loops.run_online(td3, states, make_env=lambda: envs.make_env("Hopper-v5"),
                                           num_seeds=seeds, seed=0, config=conf, progress=False,
                                           callbacks=callbacks, reward_scale=0.5)
  assert evals == [(60, (2, 2)), (120, (2, 2))]
  # Rewards are stored with the offline data's transform (x0.5); rows 0..19 hold steps 101..120.
  np.testing.assert_allclose(np.asarray(buffers.data.rewards)[:, :20],
                             0.5 * np.stack(raw_rewards[100:120], axis=1), rtol=1e-6)
  np.testing.assert_array_equal(buffers.size, [100, 100])          # capacity 100, 120 inserts
  np.testing.assert_array_equal(buffers.pointer, [20, 20])
  assert [int(s) for s in out.step] == [81, 81]                   # updates from step 40 to 120
  # Seeds differ (own keys, own envs), the seed axis stays first.
  a = jax.tree_util.tree_leaves(out.actor.params)[0]
  assert a.shape[0] == seeds and not np.allclose(a[0], a[1])
  # No recompilation after the first step: at most one new executable per jitted function.
  assert fns.insert._cache_size() - before[0] <= 1 and fns.update._cache_size() - before[1] <= 1


def _random_batch(key, n=8, obs_dim=3, act_dim=2):
  from o2o_jax.types import Transition
  ks = jax.random.split(key, 3)
  return Transition(observations=jax.random.normal(ks[0], (n, obs_dim)),
                    actions=jax.random.uniform(ks[1], (n, act_dim), minval=-1, maxval=1),
                    rewards=jax.random.normal(ks[2], (n,)),
                    next_observations=jax.random.normal(ks[0], (n, obs_dim)) + 0.1,
                    terminals=jax.numpy.zeros((n,)))


def test_vmap_lockstep_keeps_delayed_update_a_branch_and_matches_plain_vmap():
  """TD3's delayed actor update under vmap_lockstep is still a lax.cond (not a select computing both
  branches for every seed), and the result equals a plain vmap over the same seeds."""
  import chex
  cfg = td3.Config(hidden_dims=(8, 8))
  states = loops.init_states(td3, seed_keys(0, 3), 3, 2, cfg)
  batches = jax.vmap(_random_batch)(seed_keys(1, 3))
  keys = seed_keys(2, 3)

  def two_updates(state, batch, key):
    state, _ = td3.update(state, batch, key)
    return td3.update(state, batch, jax.random.fold_in(key, 1))[0]

  lockstep = loops.vmap_lockstep(two_updates)
  jaxpr = str(jax.make_jaxpr(lockstep)(states, batches, keys))
  plain_jaxpr = str(jax.make_jaxpr(jax.vmap(two_updates))(states, batches, keys))
  assert "cond[" in jaxpr and "cond[" not in plain_jaxpr
  chex.assert_trees_all_close(jax.jit(lockstep)(states, batches, keys),
                              jax.jit(jax.vmap(two_updates))(states, batches, keys), atol=1e-6)


def test_the_cpu_seed_loop_runs_each_seed_as_the_vmapped_program_does(monkeypatch):
  """The two seed loops of `multi_seed_offline_chunk` compute the same thing: 3 TD3 seeds, 6 updates
  each (two delayed actor steps), through `lax.map` (the CPU default) and through `vmap_lockstep`
  (accelerators) agree to float tolerance, and seed i of the mapped program is, bit for bit, the
  1-seed mapped program on seed i's state and key. On this CPU backend the default is "map"; the
  environment variable overrides it, and a wrong value is a one-line error naming the choices."""
  import chex
  import pytest
  from o2o_jax.errors import O2OError
  from o2o_jax.types import take_index
  cfg = td3.Config(hidden_dims=(8, 8))
  states = loops.init_states(td3, seed_keys(0, 3), 3, 2, cfg)
  data = _random_batch(jax.random.PRNGKey(5), n=64)
  keys = seed_keys(2, 3)
  chunk = loops.make_offline_chunk(td3.update, 16, 6)
  mapped = loops.multi_seed_offline_chunk(chunk, loop="map")(loops.unalias(states), keys, data)
  vmapped = loops.multi_seed_offline_chunk(chunk, loop="vmap")(loops.unalias(states), keys, data)
  chex.assert_trees_all_close(mapped, vmapped, rtol=1e-5, atol=1e-6)
  assert [int(s) for s in mapped[0].step] == [6, 6, 6]
  one = loops.multi_seed_offline_chunk(chunk, loop="map")
  for i in range(3):
    alone = one(loops.unalias(jax.tree_util.tree_map(lambda x: x[i:i + 1], states)), keys[i:i + 1], data)
    chex.assert_trees_all_equal(take_index(mapped, i), take_index(alone, 0))

  monkeypatch.delenv("O2O_JAX_SEED_LOOP", raising=False)
  assert loops.seed_loop() == "map"
  monkeypatch.setenv("O2O_JAX_SEED_LOOP", "vmap")
  assert loops.seed_loop() == "vmap"
  monkeypatch.setenv("O2O_JAX_SEED_LOOP", "pmap")
  with pytest.raises(O2OError, match="O2O_JAX_SEED_LOOP='pmap' is not a seed loop: use one of vmap, map"):
    loops.seed_loop()


def test_a_mujoco_model_warning_is_printed_once_not_per_env(capfd):
  for _ in range(3):      # HalfCheetah-v5's XML warns 'settotalmass is deprecated' on every compile
    envs.make_env("HalfCheetah-v5").close()
  out, err = capfd.readouterr()
  assert (out + err).count("settotalmass") <= 1, out + err


@pytest.mark.default_fusion_emitters      # the block program and the scan program bit for bit
def test_a_chunk_split_into_blocks_is_the_scanned_chunk_bit_for_bit():
  """`run_offline` runs each chunk as blocks of a run-time length (`make_offline_block`), so that a
  stop signal and the progress bar need not wait for a whole chunk. Any split must compute what the
  one `lax.scan` of `make_offline_chunk` computes: TD3 (a delayed actor step, so a block may end
  between the critic and the actor step of a cycle) and CQL, 2 seeds, 7 updates split 7, 3+4 and
  1+2+4, through both seed loops: the states are bit-identical, the chunk's NaN-skipping metric
  means equal the scan's (float tolerance: the sums run in another order), and a split compiles one
  program (a run-time trip count, not a shape)."""
  import chex
  from o2o_jax.agents.offline import cql
  data = _random_batch(jax.random.PRNGKey(5), n=64)
  keys = seed_keys(2, 2)
  for agent, cfg in ((td3, td3.Config(hidden_dims=(8, 8))),
                     (cql, cql.Config(hidden_dims=(8, 8), cql_n_actions=2))):
    states = loops.init_states(agent, seed_keys(0, 2), 3, 2, cfg)
    for seed_loop in ("map", "vmap"):
      chunk = loops.multi_seed_offline_chunk(loops.make_offline_chunk(agent.update, 16, 7), loop=seed_loop)
      want, want_metrics = chunk(loops.unalias(states), keys, data)
      block = loops.multi_seed_offline_chunk(loops.make_offline_block(agent.update, 16), loop=seed_loop,
                                             seed_args=3, donate=(0, 1))
      zeros = loops.multi_seed_offline_chunk(loops.block_metric_zeros(agent.update, 16), loop=seed_loop,
                                             donate=())
      chunk_keys = loops._chunk_keys(keys, 7)
      for split in ((7,), (3, 4), (1, 2, 4)):
        got, sums, start = loops.unalias(states), zeros(states, keys, data), 0
        for count in split:
          got, sums, guard = block(got, sums, chunk_keys, start, count, data)
          start += count
        chex.assert_trees_all_equal(got, want)
        means = loops.block_means(sums)
        assert set(means) == set(want_metrics) - {loops.GUARD_KEY}
        chex.assert_trees_all_close(means, {k: v for k, v in want_metrics.items() if k != loops.GUARD_KEY},
                                    rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(guard, want_metrics[loops.GUARD_KEY])
      assert block._cache_size() == 1
