"""The online loop: buffers fill, evaluation runs per seed, and the jitted step compiles once."""
import jax
import numpy as np

from o2o_jax import envs, loops
from o2o_jax.agents.online import td3
from o2o_jax.types import seed_keys


def test_online_loop_runs_seeds_and_compiles_once():
  cfg = td3.Config(hidden_dims=(16, 16))
  seeds = 2
  states = loops.init_states(td3, seed_keys(0, seeds), 11, 3, cfg)
  conf = loops.OnlineConfig(total_steps=120, start_steps=40, batch_size=16, eval_every=60,
                            eval_episodes=2, buffer_size=100)
  evals = []
  callbacks = loops.OnlineCallbacks(on_eval=lambda t, s, r: evals.append((t, r.shape)))
  out, buffers, history = loops.run_online(td3, states, make_env=lambda: envs.make_env("Hopper-v5"),
                                           num_seeds=seeds, seed=0, config=conf, progress=False,
                                           callbacks=callbacks)
  assert evals == [(60, (2, 2)), (120, (2, 2))]
  np.testing.assert_array_equal(buffers.size, [100, 100])          # capacity 100, 120 inserts
  np.testing.assert_array_equal(buffers.pointer, [20, 20])
  assert [int(s) for s in out.step] == [81, 81]                   # updates from step 40 to 120
  # Seeds differ (own keys, own envs), the seed axis stays first.
  a = jax.tree_util.tree_leaves(out.actor.params)[0]
  assert a.shape[0] == seeds and not np.allclose(a[0], a[1])
  # No recompilation after the first step: one executable per jitted function.
  fns = loops.online_functions(td3.update, td3.act, 16, 1, 0.0)
  assert fns.insert._cache_size() == 1 and fns.update._cache_size() == 1
