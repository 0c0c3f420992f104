"""The dataset generator on a tiny budget writes Minari datasets that minari and our loader open."""
import json
import os
import subprocess
import sys

import jax
import minari
import numpy as np
import pytest

from o2o_jax import generate
from o2o_jax.errors import O2OError
from o2o_jax.data import load_dataset

LEVELS = ["random", "medium", "medium-replay", "expert", "medium-expert"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
  root = tmp_path_factory.mktemp("minari")
  policy_dir = tmp_path_factory.mktemp("policies")
  env = dict(os.environ, MINARI_DATASETS_PATH=str(root), JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "experiments.make_dataset", "--env=hopper", f"--levels={','.join(LEVELS)}",
         "--size=600", "--sac_steps=900", "--eval_every=300", "--start_steps=300",
         "--hidden_dims=16,16", "--ref_episodes=3", f"--policy_dir={policy_dir}", "--progress=false",
         "--checkpoint_every=400"]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert not (policy_dir / "hopper" / "progress").exists()   # snapshots (400, 800) dropped at the end
  return root, policy_dir, out.stdout


def test_all_levels_open_with_minari_and_loader(generated, monkeypatch):
  root, _, stdout = generated
  monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
  for level in LEVELS:
    did = f"o2o/hopper/{level}-v0"
    ds = minari.load_dataset(did)
    # A 900-step SAC run need not beat the random policy: check the scores exist, not their order.
    assert np.isfinite(ds.storage.metadata["ref_min_score"])
    assert np.isfinite(ds.storage.metadata["ref_max_score"])
    assert json.loads(ds.storage.metadata["eval_env_spec"])["id"] == "Hopper-v5"
    desc = json.loads(ds.storage.metadata["description"])
    assert desc["level"] == level and "make_dataset" in desc["command"]
    flat = load_dataset(did)
    expected = {"random": 600, "medium": 600, "expert": 600, "medium-expert": 1200}
    if level in expected:
      assert flat.size == expected[level]
    assert flat.env_id == "Hopper-v5"
  me = load_dataset("o2o/hopper/medium-expert-v0")
  m, e = load_dataset("o2o/hopper/medium-v0"), load_dataset("o2o/hopper/expert-v0")
  np.testing.assert_array_equal(me.transitions.observations,
                                np.concatenate([m.transitions.observations, e.transitions.observations]))
  # medium-replay is the behaviour run's buffer up to the medium checkpoint.
  mr = load_dataset("o2o/hopper/medium-replay-v0")
  assert mr.size == json.loads(minari.load_dataset("o2o/hopper/medium-v0").storage.metadata[
      "description"])["checkpoint_step"]


def test_regenerate_from_saved_policies_is_identical(generated, monkeypatch, tmp_path):
  root, policy_dir, _ = generated
  policies = generate.BehaviourPolicies.load(policy_dir / "hopper")
  assert policies.expert_step == 900 and policies.medium_step in policies.steps
  monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
  generate.REF_EPISODES, old = 3, generate.REF_EPISODES
  try:
    generate.generate_levels(policies, ["medium"], 600, progress=False, log=lambda *_: None)
  finally:
    generate.REF_EPISODES = old
  again = load_dataset("o2o/hopper/medium-v0")
  monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
  first = load_dataset("o2o/hopper/medium-v0")
  np.testing.assert_array_equal(again.transitions.actions, first.transitions.actions)
  assert again.ref_max_score == pytest.approx(first.ref_max_score)


def test_unknown_level_is_a_clear_error(generated, tmp_path):
  _, policy_dir, _ = generated
  env = dict(os.environ, MINARI_DATASETS_PATH=str(tmp_path))
  out = subprocess.run([sys.executable, "-m", "experiments.make_dataset", "--from_policies",
                        f"--policy_dir={policy_dir}", "--levels=mediocre", "--size=10"],
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert "unknown level(s) ['mediocre']" in out.stderr and "Traceback" not in out.stderr


def test_existing_dataset_is_refused_before_any_collection(generated, monkeypatch):
  """A level already written is refused up front, naming it and --overwrite, before the reference
  scores and the collection run (they cost minutes to an hour per level; the check used to come at
  write time, after them)."""
  root, policy_dir, _ = generated
  monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
  policies = generate.BehaviourPolicies.load(policy_dir / "hopper")
  def no_work(*_, **__):
    raise AssertionError("work started before the existence check")
  monkeypatch.setattr(generate, "reference_scores", no_work)
  monkeypatch.setattr(generate, "collect", no_work)
  with pytest.raises(O2OError, match=r"o2o/hopper/medium-v0 already exist.*--overwrite"):
    generate.generate_levels(policies, ["medium"], 600, progress=False, log=lambda *_: None)


def test_existing_behaviour_policies_are_not_overwritten(generated, tmp_path):
  _, policy_dir, _ = generated
  env = dict(os.environ, MINARI_DATASETS_PATH=str(tmp_path))
  out = subprocess.run([sys.executable, "-m", "experiments.make_dataset", f"--policy_dir={policy_dir}",
                        "--sac_steps=300", "--eval_every=300", "--size=10"],
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2 and "already exist" in out.stderr and "--from_policies" in out.stderr


def test_behaviour_run_resumes_exactly_after_a_crash(tmp_path, crash_at):
  """The SAC behaviour run with snapshots every 20 env steps: killed at step 50 (after the snapshot at
  40) and rerun, it ends with the checkpoints, returns and transition record (the medium-replay
  source) of the uninterrupted run; each snapshot step ends an episode in the record."""
  from o2o_jax import resume

  def train(name, log=print):
    return generate.train_behaviour_policy(
        "hopper", 60, seed=0, eval_every=30, eval_episodes=1, hidden_dims=(8, 8), start_steps=20,
        progress=False, snapshots=resume.Snapshots(tmp_path / name, 20), log=log)

  ref = train("reference")
  crash_at("behaviour", 50)
  with pytest.raises(Exception, match="crashed by the fault injection"):
    train("crashed")
  crash_at(None)
  logs = []
  got = train("crashed", log=logs.append)
  assert logs == [f"[behaviour] resuming from the snapshot at env step 40 ({tmp_path / 'crashed'})"]
  assert got.steps == ref.steps == [30, 60] and got.returns == ref.returns
  for step in ref.steps:
    for a, b in zip(jax.tree_util.tree_leaves(got.params[step]), jax.tree_util.tree_leaves(ref.params[step])):
      np.testing.assert_array_equal(a, b)
  assert got.replay.keys() == ref.replay.keys()
  for k in ref.replay:
    np.testing.assert_array_equal(got.replay[k], ref.replay[k], err_msg=k)
  ends = ref.replay["terminations"] | ref.replay["truncations"]
  assert ends[19] and ends[39]


def test_behaviour_run_continues_across_sessions_from_its_carry(tmp_path, crash_at):
  """A behaviour run writes a small carry-over at each snapshot. Killed at step 70 (snapshot and carry
  at 60): rerun with its snapshots, it resumes them exactly; rerun without them (a new session, only
  the committed carry left), it continues from the carry's SAC state at 60 with a fresh buffer, the
  checkpoints and returns before 60 carried over, and no transition record; and it snapshots again
  at 90 (a continued run's snapshot holds no record: orbax 0.12 refuses zero-size arrays, which
  stopped session 12's expert runs at their first snapshot)."""
  import shutil
  from flax import serialization
  from o2o_jax import resume

  def train(name, carry, log=print):
    return generate.train_behaviour_policy(
        "hopper", 100, seed=0, eval_every=30, eval_episodes=1, hidden_dims=(8, 8), start_steps=20,
        progress=False, snapshots=resume.Snapshots(tmp_path / name / "progress", 30),
        target_return=1e9, carry_dir=tmp_path / carry, log=log)

  ref = train("reference", "carry_ref")
  crash_at("behaviour", 70)
  with pytest.raises(Exception, match="crashed by the fault injection"):
    train("crashed", "carry")
  crash_at(None)
  carry = json.loads((tmp_path / "carry" / "carry.json").read_text())
  assert carry["step"] == 60 and carry["lineage_start"] == 0
  shutil.copytree(tmp_path / "carry", tmp_path / "carry_copy")
  logs = []
  same_session = train("crashed", "carry", log=logs.append)
  assert logs == [f"[behaviour] resuming from the snapshot at env step 60 "
                  f"({tmp_path / 'crashed' / 'progress'})"]
  assert same_session.returns == ref.returns and same_session.replay is not None

  logs = []
  new_session = train("fresh_machine", "carry_copy", log=logs.append)
  assert logs[0].startswith("[behaviour] continuing from the carry") and "step 60" in logs[0]
  assert new_session.steps == [30, 60, 90, 100] and new_session.returns[:2] == ref.returns[:2]
  assert new_session.continued_from == 60 and new_session.replay is None
  for step in (30, 60):
    for a, b in zip(jax.tree_util.tree_leaves(new_session.params[step]),
                    jax.tree_util.tree_leaves(ref.params[step])):
      np.testing.assert_array_equal(a, b)
  # The carried SAC state is the one at step 60: its actor is that checkpoint's.
  states = serialization.msgpack_restore((tmp_path / "carry_copy" / "agent.msgpack").read_bytes())
  actor = jax.tree_util.tree_map(lambda x: np.asarray(x)[0], states["actor"]["params"])
  for a, b in zip(jax.tree_util.tree_leaves(actor), jax.tree_util.tree_leaves(ref.params[60])):
    np.testing.assert_array_equal(a, b)


def test_a_carried_run_ends_at_its_carry_with_the_carried_actor_as_expert(tmp_path):
  """`make_dataset --end_at_carry` (#22: a target out of reach stops at the policy reached): the
  carry's current actor becomes the expert checkpoint, the checkpoints before it keep their
  returns, and the policies record the target as not reached. No carry: a one-line error."""
  from o2o_jax import resume
  ref = generate.train_behaviour_policy(
      "hopper", 60, seed=0, eval_every=30, eval_episodes=1, hidden_dims=(8, 8), start_steps=20,
      progress=False, snapshots=resume.Snapshots(tmp_path / "progress", 30), target_return=1e9,
      carry_dir=tmp_path / "carry")
  ended = generate.end_run_at_carry(tmp_path / "carry")     # the last carry: the snapshot at 30
  assert ref.steps == [30, 60] and ended.steps == [30] and ended.returns == ref.returns[:1]
  assert ended.expert_step == 30 and ended.steps_trained == 30
  assert ended.target_return == 1e9 and ended.confirm_return is None and ended.replay is None
  for a, b in zip(jax.tree_util.tree_leaves(ended.params[30]), jax.tree_util.tree_leaves(ref.params[30])):
    np.testing.assert_array_equal(a, b)
  ended.save(tmp_path / "policies")          # what make_dataset then does
  assert generate.BehaviourPolicies.load(tmp_path / "policies").expert_step == 30
  with pytest.raises(O2OError, match="holds no carry .* --carry_dir"):
    generate.end_run_at_carry(tmp_path / "nothing")


def test_medium_is_chosen_before_the_run_first_reached_half_its_target():
  """With a target, medium's candidates end at the first checkpoint that reached half of it (the
  actors a carried run keeps); without one, every checkpoint is a candidate."""
  p = generate.BehaviourPolicies("hopper", "Hopper-v5", (8,), 11, 3, [1, 2, 3, 4, 5],
                                 [100.0, 250.0, 600.0, 390.0, 1200.0], {}, target_return=1000.0)
  assert p.medium_candidates == [1, 2, 3] and p.medium_step == 2     # 1200/3 = 400: 250 beats 600
  p.target_return = None
  assert p.medium_candidates == [1, 2, 3, 4, 5] and p.medium_step == 4


def test_behaviour_run_stops_at_the_first_confirmed_target(tmp_path):
  """With a target return, the SAC run ends at the first checkpoint whose evaluation and 50-episode
  confirmation both reach it: that checkpoint is the final (expert) policy, the transition record
  ends there on a cut episode, and an unreachable target trains every step."""
  def train(target):
    return generate.train_behaviour_policy(
        "hopper", 90, seed=0, eval_every=30, eval_episodes=1, hidden_dims=(8, 8), start_steps=20,
        progress=False, target_return=target, log=lambda *_: None)

  reached = train(-1e9)                 # any return meets it: stop at the first checkpoint
  assert reached.steps == [30] and reached.expert_step == 30 and reached.steps_trained == 30
  assert reached.confirm_return is not None and reached.target_return == -1e9
  assert len(reached.replay["rewards"]) == 30
  assert reached.replay["terminations"][-1] or reached.replay["truncations"][-1]
  missed = train(1e9)
  assert missed.steps == [30, 60, 90] and missed.steps_trained == 90 and missed.confirm_return is None
  assert len(missed.replay["rewards"]) == 90


def test_default_targets_are_at_least_80_percent_of_d4rl_expert_returns():
  """Issue #22's targets: hopper >= 2,600, halfcheetah >= 9,700, walker2d >= 3,700; each >= 80% of
  D4RL's REF_MAX (d4rl/infos.py); other envs get 80% of theirs."""
  assert [generate.default_target_return(e) for e in ("hopper", "halfcheetah", "walker2d")] == [
      2600, pytest.approx(9708), 3700]
  for env in ("hopper", "halfcheetah", "walker2d"):
    assert generate.default_target_return(env) >= 0.8 * generate.D4RL_EXPERT_RETURNS[env]
  assert generate.default_target_return("ant") == pytest.approx(0.8 * 3879.7)
  assert generate.default_target_return("unknown") is None
