"""What every comparison method owes the runner (issue #21): its recipe runs from the start with 2
seeds on the tiny dataset, a `--config.` override reaches its last phase's config.json, and after a
crash in that phase (no snapshot taken, as after SIGKILL) the rerun resumes and ends bit for bit like
the uninterrupted run. Each method's own mechanism is pinned in its own test file; seed
independence at the update level there too.

One entry per method in TINY: its recipe options and settings at toy size, and one --config. field
of its last phase's Config with a value to set."""
from __future__ import annotations

import json

import pytest

from o2o_jax import recipe as recipe_lib
from o2o_jax import recipes

# Settings every method gets: 2 seeds, tiny networks and batches, a snapshot every 20 steps.
COMMON = {"seeds": 2, "seed": 0, "budget": "quick", "eval_every": 20, "eval_episodes": 1,
          "hidden_dims": (8, 8), "batch_size": 16, "progress": False, "checkpoint_every": 20,
          "pretrain_steps": 20, "online_steps": 40, "warmup_steps": 10}

# agent -> (settings, options, (config field, value)); the crash falls at step 30 of the last phase.
TINY = {
    "o3f": ({}, {"o3f_num_candidates": 4}, ("expectile", "0.8")),
}


@pytest.mark.parametrize("agent", sorted(TINY))
def test_method_runs_takes_config_overrides_and_resumes_exactly(
    agent, tiny_hopper_dataset, tmp_path, crash_at, same_outputs):
  settings, options, (field, value) = TINY[agent]
  recipe = recipes.get(agent)
  last = recipe.phases[-1].name

  def run(out):
    s = {**COMMON, **settings, "dataset": tiny_hopper_dataset.dataset_id, "out_dir": str(out)}
    ctx = recipe_lib.Context.build(recipe, s, options, {field: value}, frozenset(s),
                                   log=lambda *_: None)
    recipe_lib.run(recipe, ctx)
    return ctx.runs

  ref = run(tmp_path / "ref")
  config = json.loads((ref[last] / "config.json").read_text())
  assert str(config["agent_config"][field]) == value, config["agent_config"]
  assert config["seeds"] == 2
  header = (ref[last] / "metrics.csv").read_text().splitlines()[0]
  assert "eval/normalized_score/seed1" in header

  crash_at(last, 30)                  # after the snapshot at 20, before the end at 40
  with pytest.raises(Exception, match="crashed by the fault injection"):
    run(tmp_path / "crashed")
  crash_at(None)
  again = run(tmp_path / "crashed")   # earlier phases are reused, the last resumes from step 20
  for phase in ref:
    same_outputs(again[phase], ref[phase])
