"""What every launcher shares: the error boundary (one clear line, non-zero exit), logging set-up,
and the --budget flag."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from absl import app, flags
from absl import logging as absl_logging

from o2o_jax import compile_time
from o2o_jax.errors import O2OError, Interrupted

BUDGETS = ("paper", "quick")


def define_budget_flag():
  flags.DEFINE_enum("budget", "paper", BUDGETS,
                    "'paper': the paper's step counts; 'quick': a few minutes on a laptop CPU "
                    "(same code path, smaller budgets and networks).")


def define_checkpoint_flag():
  flags.DEFINE_integer("checkpoint_every", 10_000,
                       "Steps (offline updates or online env steps) between resumable snapshots of a "
                       "running phase, saved under <run>/progress with the whole run state; rerunning "
                       "the same command resumes from the latest, Ctrl-C/SIGTERM saves one and exits. "
                       "0 disables them.", lower_bound=0)


def define_distributed_flags():
  flags.DEFINE_string("coordinator_address", None,
                      "Multi-process runs (`jax.distributed`): host:port of process 0, the same in "
                      "every process. Each process trains --seeds/--num_processes of the seeds.")
  flags.DEFINE_integer("num_processes", 1, "Processes (hosts) sharing the run's seeds.",
                       lower_bound=1)
  flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1 (e.g. "
                       "$SLURM_PROCID); process 0 writes the metrics, checkpoints and plots.")


def initialize_distributed(flag_values) -> int:
  """Joins the multi-process run the flags describe; returns this process's number of seeds."""
  from o2o_jax import distributed
  distributed.initialize(flag_values.coordinator_address, flag_values.num_processes,
                         flag_values.process_id)
  return distributed.local_seed_count(flag_values.seeds)


def enable_compilation_cache():
  """Persistent XLA compilation cache (under $O2O_JAX_CACHE, default ~/.cache/o2o_jax), so a rerun or
  a later phase of the same run does not recompile the same programs. O2O_JAX_XLA_CACHE=off disables;
  an explicit JAX_COMPILATION_CACHE_DIR is left to JAX (with its JAX_PERSISTENT_CACHE_* settings)."""
  if (os.environ.get("O2O_JAX_XLA_CACHE", "").lower() in ("0", "off", "false")
      or os.environ.get("JAX_COMPILATION_CACHE_DIR")):
    return
  import jax
  root = os.environ.get("O2O_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "o2o_jax"))
  jax.config.update("jax_compilation_cache_dir", os.path.join(root, "xla"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


@contextlib.contextmanager
def error_boundary():
  """An O2OError prints one line and exits 2; an interruption exits 130 (after its snapshot)."""
  try:
    yield
  except Interrupted as e:
    print(f"interrupted: {e}", file=sys.stderr)
    sys.exit(130)
  except O2OError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)


def run(main, argv_filter=None):
  """absl's app.run with the project's error boundary: an O2OError prints one line and exits 2.
  `argv_filter(argv) -> argv` first takes out the arguments absl must not see (it rejects unknown
  flags), e.g. experiments.finetune's `--config.<field>=<value>`."""
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  argv = sys.argv
  if argv_filter is not None:
    with error_boundary():
      argv = argv_filter(argv)

  def wrapped(argv):
    # Our own messages are printed; library chatter (orbax, XLA backend probing) stays quiet.
    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in ("jax._src.xla_bridge", "orbax", "absl"):
      logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="minari")
    enable_compilation_cache()
    compile_time.install()
    t0 = time.time()
    with error_boundary():
      status = main(argv)
      # Every launcher's last line: how much of its wall time went to compilation (none when
      # nothing ran, e.g. --describe or --help-like answers).
      stats = compile_time.snapshot()
      if stats.programs:
        print(f"[{Path(sys.argv[0]).stem}] {time.time() - t0:.0f}s wall, {stats.describe()}",
              flush=True)
      return status

  app.run(wrapped, argv=argv)


def budget_values(defaults_by_budget, flag_values, positive=()):
  """The --budget defaults with every explicitly given flag taking precedence, validated:
  --seeds >= 1 and each name in `positive` > 0 (an O2OError names the flag otherwise)."""
  values = dict(defaults_by_budget[flag_values.budget])
  for k in values:
    given = getattr(flag_values, k) if k in flag_values else None
    if given is not None:
      values[k] = tuple(int(h) for h in given) if isinstance(given, list) else given
  if "seeds" in flag_values and flag_values.seeds < 1:
    raise O2OError(f"--seeds must be at least 1 (got {flag_values.seeds})")
  for k in positive:
    v = values[k] if k in values else getattr(flag_values, k)
    if v <= 0:
      raise O2OError(f"--{k} must be positive (got {v})")
  return values
