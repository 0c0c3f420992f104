"""Import direction of the library (issue #20): `o2o_jax/` is below the launchers and benchmarks, and
its building blocks (networks, losses, lagrange) know no agent. Read from the source with `ast`, so a
violation is found without importing anything."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "o2o_jax"
BUILDING_BLOCKS = ("networks.py", "losses.py", "lagrange.py")


def _module_name(path: Path, package: Path) -> str:
  parts = path.relative_to(package.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
  """The absolute module of a `from ... import` (relative imports resolved against `module`)."""
  if not node.level:
    return node.module or ""
  base = module.split(".")
  base = base[:len(base) - node.level + (1 if is_package else 0)]
  return ".".join(base + ([node.module] if node.module else []))


def imported_modules(path: Path, package: Path = PACKAGE) -> set:
  """Every module `path` imports: `import a.b`, `from a import b` (a and a.b, since b may be a
  submodule), and `import_module("a.b")` with a literal name."""
  module, is_package = _module_name(path, package), path.name == "__init__.py"
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      source = _resolve(node, module, is_package)
      found.add(source)
      found.update(f"{source}.{alias.name}" for alias in node.names)
    elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
          == "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
      found.add(node.args[0].value)
  return found


def _violations(paths, forbidden, package: Path = PACKAGE):
  """{file: [imports under a forbidden package]}, only for the files that have some."""
  hits = {}
  for path in paths:
    bad = sorted(m for m in imported_modules(path, package)
                 if any(m == f or m.startswith(f + ".") for f in forbidden))
    if bad:
      hits[str(path.relative_to(package.parent))] = bad
  return hits


def test_the_library_imports_no_launcher_or_benchmark():
  paths = sorted(PACKAGE.rglob("*.py"))
  assert len(paths) > 20
  assert _violations(paths, ("experiments", "benchmarks")) == {}


def test_building_blocks_import_no_agent():
  assert _violations([PACKAGE / name for name in BUILDING_BLOCKS], ("o2o_jax.agents",)) == {}


@pytest.mark.parametrize("source, found", [
    ("from o2o_jax.agents.common import TrainState", "o2o_jax.agents.common"),
    ("from o2o_jax import agents", "o2o_jax.agents"),
    ("from .agents import registry", "o2o_jax.agents.registry"),
    ("import experiments.finetune", "experiments.finetune"),
    ("importlib.import_module('benchmarks.throughput')", "benchmarks.throughput"),
])
def test_the_scan_sees_every_import_form(tmp_path, source, found):
  """The scan would have caught the old `lagrange` import, and the other ways of writing one."""
  package = tmp_path / "o2o_jax"
  package.mkdir()
  path = package / "lagrange.py"
  path.write_text(source + "\n")
  assert found in imported_modules(path, package)
  assert _violations([path], ("o2o_jax.agents", "experiments", "benchmarks"), package) != {}
