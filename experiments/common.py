"""What every launcher shares: the error boundary (one clear line, non-zero exit), logging set-up,
and the --budget flag."""
from __future__ import annotations

import logging
import os
import sys

import warnings

from absl import app, flags
from absl import logging as absl_logging

from o2o_jax.errors import O2OError

BUDGETS = ("paper", "quick")


def define_budget_flag():
  flags.DEFINE_enum("budget", "paper", BUDGETS,
                    "'paper': the paper's step counts; 'quick': a few minutes on a laptop CPU "
                    "(same code path, smaller budgets and networks).")


def run(main):
  """absl's app.run with the project's error boundary: an O2OError prints one line and exits 2."""
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

  def wrapped(argv):
    # Our own messages are printed; library chatter (orbax, XLA backend probing) stays quiet.
    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in ("jax._src.xla_bridge", "orbax", "absl"):
      logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="minari")
    try:
      return main(argv)
    except O2OError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    except KeyboardInterrupt:
      print("interrupted", file=sys.stderr)
      sys.exit(130)

  app.run(wrapped)


def budget_values(defaults_by_budget, flag_values, positive=()):
  """The --budget defaults with every explicitly given flag taking precedence, validated:
  --seeds >= 1 and each name in `positive` > 0 (an O2OError names the flag otherwise)."""
  values = dict(defaults_by_budget[flag_values.budget])
  for k in values:
    given = getattr(flag_values, k) if k in flag_values else None
    if given is not None:
      values[k] = tuple(int(h) for h in given) if k == "hidden_dims" else given
  if flag_values.seeds < 1:
    raise O2OError(f"--seeds must be at least 1 (got {flag_values.seeds})")
  for k in positive:
    v = values[k] if k in values else getattr(flag_values, k)
    if v <= 0:
      raise O2OError(f"--{k} must be positive (got {v})")
  return values
