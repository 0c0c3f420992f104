"""o2o_jax: offline-to-online reinforcement learning in JAX/Flax.

Importing the package has no side effects: nothing is written, no flags are parsed, no env is built.
"""

__version__ = "0.1.0"
