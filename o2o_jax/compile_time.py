"""Seconds this process spent compiling, from JAX's own monitoring events.

JAX reports, per jitted program it builds, the tracing, the lowering to MLIR and the XLA compile (a
persistent-cache hit is timed as a compile: the retrieval) as duration events. `install()` adds a
listener that sums them; `snapshot()` reads the totals, so a launcher or a phase prints how much of its
wall time went to compilation (issue #8: every launcher prints its compile time)."""
from __future__ import annotations

import dataclasses
import threading

from jax import monitoring

_DURATIONS = ("/jax/core/compile/jaxpr_trace_duration",
              "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration")
_BACKEND = _DURATIONS[-1]
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass(frozen=True)
class CompileStats:
  seconds: float = 0.0      # tracing + lowering + XLA compile (or persistent-cache retrieval)
  programs: int = 0         # XLA compilations requested (cache hits included)
  cache_hits: int = 0       # of those, served by the persistent compilation cache

  def __sub__(self, other: "CompileStats") -> "CompileStats":
    return CompileStats(self.seconds - other.seconds, self.programs - other.programs,
                        self.cache_hits - other.cache_hits)

  def describe(self) -> str:
    hits = f", {self.cache_hits} from the persistent cache" if self.cache_hits else ""
    plural = "" if self.programs == 1 else "s"
    return f"{self.seconds:.1f}s compiling ({self.programs} program{plural}{hits})"


_lock = threading.Lock()
_totals = {"seconds": 0.0, "programs": 0, "cache_hits": 0}
_installed = False


def _on_duration(event: str, duration: float, **kwargs) -> None:
  if event in _DURATIONS:
    with _lock:
      _totals["seconds"] += duration
      _totals["programs"] += event == _BACKEND


def _on_event(event: str, **kwargs) -> None:
  if event == _CACHE_HIT:
    with _lock:
      _totals["cache_hits"] += 1


def install() -> None:
  """Starts counting (idempotent: JAX listeners cannot be removed, so they are added once)."""
  global _installed
  with _lock:
    if _installed:
      return
    _installed = True
  monitoring.register_event_duration_secs_listener(_on_duration)
  monitoring.register_event_listener(_on_event)


def snapshot() -> CompileStats:
  with _lock:
    return CompileStats(**_totals)
