"""Random transition batches for the agents' unit tests (imported by the test modules; pytest puts
this folder on sys.path)."""
import jax
import jax.numpy as jnp

from o2o_jax.types import Transition


def random_transitions(key, n: int, obs_dim: int, act_dim: int) -> Transition:
  """n rows: N(0, 1) observations, next observations and rewards, tanh(N(0, 1)) actions, no
  terminals."""
  k = jax.random.split(key, 4)
  return Transition(observations=jax.random.normal(k[0], (n, obs_dim)),
                    actions=jnp.tanh(jax.random.normal(k[1], (n, act_dim))),
                    rewards=jax.random.normal(k[2], (n,)),
                    next_observations=jax.random.normal(k[3], (n, obs_dim)),
                    terminals=jnp.zeros((n,)))
