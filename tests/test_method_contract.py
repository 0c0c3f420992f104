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
    "iql_ft": ({}, {}, ("exploration_noise", "0.05")),
    "awac_ft": ({}, {}, ("awac_lambda", "0.5")),
    "pex": ({}, {"pex_inv_temperature": 5.0}, ("eval_epsilon", "0.2")),
    "direct_td3": ({}, {}, ("exploration_noise", "0.2")),
    "direct_ppo": ({"reevaluate_steps": 20}, {"ppo_rollout_length": 20, "ppo_minibatches": 2,
                                              "o2ppo_epochs": 1, "o2ppo_value_hidden": [8, 8],
                                              "o2ppo_value_batch_size": 16},
                   ("entropy_coef", "0.0")),
    "calql": ({}, {"calql_mixing_ratio": 0.5}, ("cql_alpha_online", "5.0")),
    # (the p-weighted offline CQL term off: its path, shared with samg_cql, is pinned in test_samg)
    "samg_calql": ({}, {"samg_cvae_steps": 20, "samg_cvae_hidden": [8, 8], "samg_prefill": 10,
                        "samg_cql_offline_penalty": 0.0}, ("threshold", "0.4")),
    "proto": ({}, {"proto_eta_horizon": 100}, ("eta0", "1.5")),
    "proto_td3": ({}, {"proto_symmetric": False}, ("tau_actor", "0.01")),
    "off2on": ({}, {"off2on_ensemble": 2}, ("priority_temperature", "3.0")),
}


def _restored(run_dir):
  import orbax.checkpoint as ocp
  ckpt = run_dir / "checkpoints"
  step = max(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
  return ocp.PyTreeCheckpointer().restore(str(ckpt / str(step) / "state"))


def _keeps_the_offline_critic(runs):
  """direct_td3 (direct_sac the same code): no re-evaluation, the TD3+BC run's critic weights are
  the fine-tuning's starting critic, bit for bit."""
  import numpy as np
  offline, start = _restored(runs["pretrain"]), _restored(runs["reevaluate"])
  assert np.array_equal(np.asarray(offline["critic"]["params"]["params"]["VmapCritic_0"]["Dense_0"]["kernel"]),
                        np.asarray(start["critic"]["params"]["params"]["VmapCritic_0"]["Dense_0"]["kernel"]))


def _ppo_without_the_auxiliary_advantage(runs):
  """direct_ppo: O2PPO's V fit (its run directory, shared with o2ppo), then PPO with aux off."""
  assert runs["reevaluate"].parts[-3] == "o2ppo" and runs["finetune"].parts[-3] == "direct_ppo"
  assert json.loads((runs["finetune"] / "config.json").read_text())["agent_config"]["aux"] is False


EXTRA_CHECKS = {"direct_td3": _keeps_the_offline_critic, "direct_ppo": _ppo_without_the_auxiliary_advantage}


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

  if agent in EXTRA_CHECKS:
    EXTRA_CHECKS[agent](ref)

  crash_at(last, 30)                  # after the snapshot at 20, before the end at 40
  with pytest.raises(Exception, match="crashed by the fault injection"):
    run(tmp_path / "crashed")
  crash_at(None)
  again = run(tmp_path / "crashed")   # earlier phases are reused, the last resumes from step 20
  for phase in ref:                   # (a phase that trains nothing, e.g. a skip, writes no metrics)
    if (ref[phase] / "metrics.csv").exists():
      same_outputs(again[phase], ref[phase])
