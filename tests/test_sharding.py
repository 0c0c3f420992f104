"""Seeds sharded over devices give the same result as one device (4 host CPU devices, forced with
XLA_FLAGS in a subprocess because the device count is fixed when JAX starts)."""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os
    import jax, numpy as np
    from o2o_jax import envs, loops
    from o2o_jax.agents.online import td3
    from o2o_jax.types import Transition, seed_keys
    assert len(jax.devices()) == 4
    rng = np.random.default_rng(0)
    n = 300
    data = Transition(*(np.asarray(x, np.float32) for x in (
        rng.normal(size=(n, 11)), rng.uniform(-1, 1, (n, 3)), rng.normal(size=n),
        rng.normal(size=(n, 11)), np.zeros(n))))
    cfg = td3.Config(hidden_dims=(8, 8))
    config = loops.OfflineConfig(num_steps=20, batch_size=16, chunk=10, eval_every=20, eval_episodes=1)

    def run(devices):
      os.environ["O2O_JAX_SEED_DEVICES"] = str(devices)
      states = loops.init_states(td3, seed_keys(0, 8), 11, 3, cfg)
      out, _ = loops.run_offline(td3, states, data, make_env=lambda: envs.make_env("Hopper-v5"),
                                 num_seeds=8, seed=0, config=config, progress=False)
      return out

    sharded, single = run(4), run(1)
    leaf = jax.tree_util.tree_leaves(sharded)[0]
    assert len(leaf.sharding.device_set) == 4, leaf.sharding
    assert len(jax.tree_util.tree_leaves(single)[0].sharding.device_set) == 1
    for a, b in zip(jax.tree_util.tree_leaves(sharded), jax.tree_util.tree_leaves(single)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    print("OK")
""")


def test_eight_seeds_sharded_over_four_devices_equal_one_device():
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4")
  res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                       timeout=600)
  assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]
