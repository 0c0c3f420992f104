"""End-to-end launcher runs on tiny budgets, and their one-line errors."""
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["--budget=quick", "--total_steps=400", "--start_steps=200", "--eval_every=200",
        "--eval_episodes=1", "--hidden_dims=16,16", "--batch_size=32", "--progress=false"]


def launch(module, *args, cwd=None, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True,
                        text=True, timeout=timeout)


@pytest.fixture(scope="module")
def online_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("runs")
  res = launch("experiments.train_online", "--agent=td3", "--seeds=2", f"--out_dir={out}", *TINY)
  assert res.returncode == 0, res.stderr[-3000:]
  return out, res


def test_train_online_writes_a_complete_run_dir(online_run):
  out, res = online_run
  run = out / "online" / "td3" / "Hopper-v5" / "seed0x2"
  for name in ("config.json", "metrics.csv", "curves.png", "checkpoints"):
    assert (run / name).exists(), name
  assert list((run / "tensorboard").glob("events.out.tfevents.*"))
  rows = list(csv.DictReader(open(run / "metrics.csv")))
  evals = [r for r in rows if r.get("eval/return")]
  assert [int(r["step"]) for r in evals] == [200, 400]
  assert evals[-1]["eval/return/seed0"] and evals[-1]["eval/return/seed1"]   # per-seed columns
  assert "final eval return per seed" in res.stdout
  # Every launcher ends with its wall time and the part of it spent compiling.
  last = res.stdout.strip().splitlines()[-1]
  assert re.fullmatch(r"\[train_online\] \d+s wall, \d+\.\ds compiling \((\d+) programs?.*\)", last), last
  assert int(re.search(r"\((\d+) program", last).group(1)) > 0


def test_describe_prints_the_recipe_and_no_wall_time_line():
  """--describe runs nothing, so the launcher's closing "<n>s wall, ... compiling" line (session 12
  printed "[finetune] 0s wall, 0.0s compiling (0 programs)") is left out."""
  res = launch("experiments.finetune", "--agent=o2td3", "--describe", "--budget=quick")
  assert res.returncode == 0, res.stderr[-2000:]
  assert "align" in res.stdout and "wall" not in res.stdout, res.stdout[-500:]


def test_rerun_of_a_finished_run_is_not_retrained(online_run):
  out, _ = online_run
  res = launch("experiments.train_online", "--agent=td3", "--seeds=2", f"--out_dir={out}", *TINY)
  assert res.returncode == 0 and "run already complete" in res.stdout


def test_output_dir_holding_a_different_run_is_refused(online_run):
  out, _ = online_run
  res = launch("experiments.train_online", "--agent=td3", "--seeds=2", f"--out_dir={out}", "--utd=2",
               *TINY)
  assert res.returncode == 2
  assert "already holds a different run" in res.stderr and "--restart" in res.stderr
  assert "Traceback" not in res.stderr


@pytest.mark.parametrize("args, message", [
    (["--env=pogo"], "unknown env 'pogo'"),
    (["--seeds=0"], "--seeds must be at least 1"),
    (["--total_steps=-5"], "--total_steps must be positive"),
])
def test_bad_flags_give_one_line(args, message, tmp_path):
  res = launch("experiments.train_online", f"--out_dir={tmp_path}", *TINY, *args)
  assert res.returncode == 2, res.stderr[-2000:]
  assert message in res.stderr and "Traceback" not in res.stderr


# ----------------------------------------------------------------------------- experiments.finetune:
# flags that do not apply to the chosen agent, and --config.<field>=<value> (issue #20)

@pytest.fixture(scope="module")
def finetune_module():
  from experiments import finetune
  return finetune


def test_the_applicability_table_covers_every_agent_and_shared_flag(finetune_module):
  from absl import flags
  from o2o_jax import recipes
  from o2o_jax.agents import registry
  f = finetune_module
  assert set(f.AGENT_FLAGS) == set(registry.O2O) == set(flags.FLAGS["agent"].parser.enum_values)
  options = {o.name for r in recipes.all_recipes().values() for o in r.options}   # defined there too
  defined = {fl.name for m in ("experiments.finetune", "experiments.common")
             for fl in flags.FLAGS.get_flags_for_module(m)}
  assert options <= defined                                # every recipe option is a flag
  # Every shared flag is read by some agent (a new one needs its recipe's `reads` or a row entry).
  assert set().union(*f.AGENT_FLAGS.values()) == defined - options


@pytest.mark.parametrize("agent, flag", [
    ("aca", "buffer"), ("aca", "reference"), ("o3f", "critic_hidden"), ("o2ppo", "utd"),
    ("o2ppo", "warmup_steps"), ("samg_iql", "offline_algo"), ("samg_cql", "tau_end"),
    ("aca", "preset"), ("samg_awac", "preset"), ("aca", "reevaluate_steps"), ("o3f", "align_steps"),
    ("o3f", "reevaluate_steps"),
    ("o3f", "aca_top_n"), ("o2td3", "o2ppo_aux"), ("aca", "ppo_minibatches"),
    ("samg_iql", "samg_cql_offline_penalty"), ("o2sac", "samg_threshold"),
])
def test_a_flag_the_agent_does_not_read_is_one_line_naming_both(finetune_module, agent, flag):
  from o2o_jax.errors import O2OError
  with pytest.raises(O2OError) as e:
    finetune_module.check_agent_flags(agent, ["dataset", "seeds", flag])
  message = str(e.value)
  assert message.startswith(f"--{flag} does not apply to --agent={agent} (") and "\n" not in message
  assert f"{agent} takes " in message and "--dataset" in message and f"--{flag}," not in message


@pytest.mark.parametrize("agent", ["o2td3", "o2sac", "o2ppo", "aca", "o3f", "samg_cql", "samg_iql"])
def test_every_flag_an_agent_reads_is_accepted(finetune_module, agent):
  f = finetune_module
  f.check_agent_flags(agent, [*f.AGENT_FLAGS[agent], *f.own_flags(agent), "verbosity", "helpfull"])


def test_readme_finetune_commands_pass_only_applicable_flags(finetune_module):
  readme = (Path(__file__).resolve().parents[1] / "README.md").read_text().replace("\\\n", " ")
  commands = re.findall(r"python3? -m experiments\.finetune([^\n#'`]*)", readme)
  assert len(commands) >= 8
  for command in commands:
    agent = re.search(r"--agent=(\w+)", command)
    finetune_module.check_agent_flags(agent.group(1) if agent else "o2td3",
                                      re.findall(r"--(\w+)", command))


def test_config_overrides_are_taken_out_of_argv_and_checked(finetune_module, monkeypatch):
  from o2o_jax.errors import O2OError
  f = finetune_module
  monkeypatch.setattr(f, "CONFIG_OVERRIDES", {})
  assert f.take_config_overrides(["prog", "--config.critic_lr=1e-4", "--seeds=2"]) == ["prog", "--seeds=2"]
  assert f.CONFIG_OVERRIDES == {"critic_lr": "1e-4"}
  f.check_config_overrides("o2td3", {})                          # none given: nothing to say
  with pytest.raises(O2OError, match=r"^--config\.critic_lr=fast: field 'critic_lr' of "
                                     r"o2o_jax\.agents\.o2o\.o2td3\.Config is float"):
    f.check_config_overrides("o2td3", {"critic_lr": "fast"})
  # Checked by the launcher before joining a multi-process run, and by the runner before any phase.
  with pytest.raises(O2OError, match=r"o2o_jax\.agents\.o2o\.samg\.Config has no field 'utd'"):
    f.check_config_overrides("samg_cql", {"utd": "2"})
  from o2o_jax import recipe as recipe_lib
  from o2o_jax import recipes
  recipe = recipes.get("samg_cql")
  ctx = recipe_lib.Context.build(recipe, {"budget": "quick", "seeds": 1, "seed": 0, "batch_size": 16},
                                 overrides={"utd": "2"})
  with pytest.raises(O2OError, match=r"o2o_jax\.agents\.o2o\.samg\.Config has no field 'utd'"):
    recipe_lib.check(recipe, ctx)
  f.check_config_overrides("o2td3", {"critic_lr": "1e-4"})      # valid: the recipe applies it


@pytest.mark.parametrize("args, line", [
    (["--agent=aca", "--buffer=all"], "error: --buffer does not apply to --agent=aca (aca takes --agent, "),
    (["--config.no_such_field=1"], "error: --config.no_such_field: o2o_jax.agents.o2o.o2td3.Config has "
                                   "no field 'no_such_field'; valid fields: actor_lr, constrain, "),
])
def test_finetune_refuses_before_any_work_with_one_line(args, line, tmp_path):
  res = launch("experiments.finetune", f"--out_dir={tmp_path}", *args)
  assert res.returncode == 2, res.stderr[-2000:]
  assert res.stderr.strip().splitlines()[-1].startswith(line), res.stderr[-2000:]
  assert "Traceback" not in res.stderr and not any(tmp_path.iterdir())
