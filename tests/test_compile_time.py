"""o2o_jax.compile_time counts JAX's compilations of this process, and nothing else."""
import jax
import jax.numpy as jnp

from o2o_jax import compile_time


def test_counts_a_new_program_once_and_not_its_calls():
  compile_time.install()
  compile_time.install()      # idempotent: a second listener would count everything twice
  x, y = jnp.ones((16, 16)), jnp.ones((8, 16))   # made first: creating them compiles too
  f = jax.jit(lambda x: jnp.tanh(x) @ x.T + 3.0)
  before = compile_time.snapshot()
  f(x).block_until_ready()
  first = compile_time.snapshot() - before
  assert first.programs == 1 and first.seconds > 0, first
  f(x).block_until_ready()                      # cached: no new program, no time
  assert compile_time.snapshot() - before == first
  f(y).block_until_ready()                      # a new shape is a new program
  assert (compile_time.snapshot() - before).programs == 2
  assert first.describe().endswith("compiling (1 program)")
