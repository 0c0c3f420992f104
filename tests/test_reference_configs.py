"""Reference settings pinned on hand-computed cases (issue 19, points 2, 3, 6 and 9): each test resolves
configs (or stops a phase right after it wrote its config.json) without training, and names the
reference file and key its expected values come from."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from o2o_jax import presets
from o2o_jax.recipes import offline, ocr_cft
from o2o_jax import phase as phase_lib
from o2o_jax.agents import registry
from o2o_jax.data import prepared
from o2o_jax.errors import O2OError
from o2o_jax.types import Transition

HOPPER_MEDIUM = "o2o/hopper/medium-v0"
OBS, ACT = 11, 3


class _Stop(Exception):
  """Raised by a patched loop: the phase got as far as training."""


def _critic_layers(critic_params):
  """(hidden widths, number of LayerNorms) of a critic ensemble's MLP."""
  mlp = critic_params["params"]["VmapCritic_0"]["MLP_0"]
  dense = sorted((k for k in mlp if k.startswith("Dense_")), key=lambda k: int(k.split("_")[1]))
  return tuple(mlp[k]["kernel"].shape[-1] for k in dense), sum(k.startswith("LayerNorm") for k in mlp)


def _actor_widths(actor_params):
  mlp = actor_params["params"]["MLP_0"]
  return tuple(mlp[f"Dense_{i}"]["kernel"].shape[-1] for i in range(len(mlp)))


def _shapes(module, config):
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), OBS, ACT, config))


def _paper_chain(agent_name, dataset_id=HOPPER_MEDIUM):
  """(offline state shapes, O2O state shapes) of a --budget=paper chain, as experiments.finetune
  resolves them (BUDGETS["paper"] network sizes, the 'official' preset)."""
  b = ocr_cft.BUDGETS["paper"]
  algo = ocr_cft.SOURCE_ALGO[agent_name]
  off_config, _ = offline.offline_config(algo, dataset_id, "official", agent_name, b["hidden_dims"])
  o2o_config = ocr_cft.make_o2o_config(agent_name, off_config, dataset_id, b["critic_hidden"], True)
  return (_shapes(registry.get(algo, registry.OFFLINE), off_config),
          _shapes(registry.get(agent_name, registry.O2O), o2o_config), o2o_config)


# ----------------------------------------------------------------------------- point 2: network depth

def test_paper_budget_keeps_each_algorithms_own_architecture():
  """CORL configs/offline/cql/hopper/medium_v2.yaml `q_n_hidden_layers: 3` and cql.py
  `TanhGaussianPolicy` (3 Linear(256) layers); CORL awac.py `Actor`/`Critic` (3 x hidden_dim 256);
  CORL td3_bc.py / iql.py 2 x 256. The paper budget must not resize any of them."""
  b = ocr_cft.BUDGETS["paper"]
  assert b["hidden_dims"] is None and b["critic_hidden"] is None
  cql = _shapes(registry.get("cql"), offline.offline_config("cql", HOPPER_MEDIUM, "official", "o2sac",
                                                           b["hidden_dims"])[0])
  assert _actor_widths(cql.actor.params) == (256, 256, 256)
  assert _critic_layers(cql.sac.critic.params) == ((256, 256, 256), 0)
  awac = _shapes(registry.get("awac"), offline.offline_config("awac", HOPPER_MEDIUM, "official")[0])
  assert _critic_layers(awac.critic.params)[0] == (256, 256, 256)
  for algo in ("td3bc", "iql"):
    config, _ = offline.offline_config(algo, HOPPER_MEDIUM, "official", None, b["hidden_dims"])
    assert tuple(config.hidden_dims) == (256, 256), algo


def test_paper_budget_o2sac_has_3x256_layernorm_critics_and_the_cql_actor():
  """OCR-CFT finetune/O2SAC.py TrainConfig `q_n_hidden_layers: 3`, `critic_layernorm: True` (and
  config/finetune/O2SAC/hopper/medium_v2.yaml `q_n_hidden_layers: 3`, `critic_layernorm: true`);
  `CriticFunction(..., layer_norm=..., n_hidden=q_n_hidden_layers)` in net.py; the actor is the
  loaded CQL `TanhGaussianPolicy` (3 x 256), as paper appendix H.2 requires."""
  off, o2o, config = _paper_chain("o2sac")
  assert _critic_layers(o2o.critic.params) == ((256, 256, 256), 3)
  assert jax.tree_util.tree_map(lambda x: x.shape, o2o.actor.params) == \
      jax.tree_util.tree_map(lambda x: x.shape, off.actor.params)
  assert _actor_widths(o2o.actor.params) == (256, 256, 256)


def test_paper_budget_o2td3_has_2x256_layernorm_critics_and_the_td3bc_actor():
  """OCR-CFT finetune/O2TD3.py: `CriticFunction(state_dim, action_dim, layer_norm=config.critic_layernorm)`
  with net.py's default `n_hidden: int = 2`, `critic_layernorm: True`; actor `DeterministicPolicy`
  (net.py, `n_hidden: int = 2`, 256 wide), the loaded TD3+BC actor."""
  off, o2o, _ = _paper_chain("o2td3")
  assert _critic_layers(o2o.critic.params) == ((256, 256), 2)
  assert jax.tree_util.tree_map(lambda x: x.shape, o2o.actor.params) == \
      jax.tree_util.tree_map(lambda x: x.shape, off.actor.params)


def test_only_the_quick_budget_shrinks_networks():
  """--budget=quick is this framework's own laptop budget (64 x 64 everywhere); no reference.
  Cal-QL included: its Config's own critic default (CORL `finetune/cal_ql.py` 2 x 256) is a
  paper-budget size too (session 17: the quick Cal-QL pretrain had kept 2 x 256 critics, ~4x the
  quick CQL's time)."""
  q = ocr_cft.BUDGETS["quick"]
  config, _ = offline.offline_config("cql", HOPPER_MEDIUM, "official", "o2sac", q["hidden_dims"])
  o2o = ocr_cft.make_o2o_config("o2sac", config, HOPPER_MEDIUM, q["critic_hidden"], True)
  assert tuple(config.hidden_dims) == (64, 64) and config.critic_hidden_dims is None
  assert tuple(o2o.hidden_dims) == (64, 64) and tuple(o2o.critic_hidden_dims) == (64, 64)
  calql_quick = _shapes(registry.get("calql", registry.OFFLINE),
                        offline.offline_config("calql", HOPPER_MEDIUM, "corl", None, q["hidden_dims"])[0])
  assert _actor_widths(calql_quick.actor.params) == (64, 64)
  assert _critic_layers(calql_quick.sac.critic.params)[0] == (64, 64)
  calql_paper = _shapes(registry.get("calql", registry.OFFLINE),
                        offline.offline_config("calql", HOPPER_MEDIUM, "corl", None, None)[0])
  assert _critic_layers(calql_paper.sac.critic.params)[0] == (256, 256)


# ----------------------------------------------------------------------------- point 3: reward scale

def test_o2sac_chain_pretrains_cql_on_raw_rewards():
  """OCR-CFT offline/cql.py TrainConfig `normalize_reward: bool = False` (no MuJoCo YAML is loaded)
  and config/finetune/O2SAC/hopper/medium_v2.yaml `normalize_reward: false`."""
  p = presets.offline_preset("cql", HOPPER_MEDIUM, "official", "o2sac")
  assert presets.reward_transform(p, np.array([100.0, 600.0])) == (1.0, 0.0)
  assert p.get("normalize_states", True)          # offline/cql.py `normalize: bool = True`
  o2td3 = presets.offline_preset("td3bc", HOPPER_MEDIUM, "official", "o2td3")
  assert presets.reward_transform(o2td3, np.array([100.0, 600.0])) == (1.0, 0.0)


def test_o2td3_chain_initialises_td3bc_as_the_official_offline_script():
  """OCR-CFT `offline/td3_bc.py` builds `net.py` `DeterministicPolicy` and `CriticFunction`, both on
  `MLP`, whose `__init__` applies `orthogonal_net(layer, gain=1.0)` to every nn.Linear (output layers
  included, biases 0). CORL `td3_bc.py` (`Actor`, `Critic`: plain nn.Linear) keeps PyTorch's default
  U(+-1/sqrt(fan_in)), so `--preset=corl` must stay there."""
  from o2o_jax.agents.online import td3
  key, obs_dim, act_dim = jax.random.PRNGKey(3), 11, 3
  official, _ = offline.offline_config("td3bc", HOPPER_MEDIUM, "official", "o2td3", (32, 32))
  corl, _ = offline.offline_config("td3bc", HOPPER_MEDIUM, "corl", "o2td3", (32, 32))
  kernels = lambda params: [np.asarray(v) for path, v in
                            jax.tree_util.tree_leaves_with_path(params) if "kernel" in str(path[-1])]
  state = td3.init(key, obs_dim, act_dim, official)
  actor, critic = kernels(state.actor.params), kernels(state.critic.params)
  assert len(actor) == 3 and len(critic) == 3
  for k in actor + [m for k in critic for m in k]:         # critics: (members, in, out)
    gram = k @ k.T if k.shape[0] <= k.shape[1] else k.T @ k
    np.testing.assert_allclose(gram, np.eye(gram.shape[0]), atol=1e-5)
  head = actor[-1]                                         # (32, 3): gain 1, not 1e-2 or uniform
  np.testing.assert_allclose(np.linalg.norm(head, axis=0), 1.0, rtol=1e-5)
  for k in kernels(td3.init(key, obs_dim, act_dim, corl).actor.params):
    assert np.abs(k).max() <= 1.0 / np.sqrt(k.shape[0]) + 1e-7     # PyTorch nn.Linear's bound
    gram = k.T @ k if k.shape[0] > k.shape[1] else k @ k.T
    assert not np.allclose(gram, np.eye(gram.shape[0]), atol=1e-2)


def test_corl_preset_still_normalises_cql_on_hopper_medium():
  """CORL configs/offline/cql/hopper/medium_v2.yaml `normalize_reward: true` -> cql.py
  `modify_reward`: r * 1000 / (max return - min return); returns 100 and 600 -> x 2."""
  p = presets.offline_preset("cql", HOPPER_MEDIUM, "corl", "o2sac")
  assert presets.reward_transform(p, np.array([100.0, 600.0])) == (2.0, 0.0)


def test_the_o2o_launcher_defaults_to_the_official_preset_and_rejects_it_elsewhere():
  """The O2O chains default to their reference code's settings (issue 19 point 3); --preset=corl
  stays an explicit option; agents whose pipeline ignores --preset refuse it with one line."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", "import experiments.finetune\nfrom absl import flags\n"
                        "print(flags.FLAGS['preset'].default, flags.FLAGS['preset'].parser.enum_values)"],
                       env=env, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  assert res.stdout.split()[0] == "official" and "corl" in res.stdout
  res = subprocess.run([sys.executable, "-m", "experiments.finetune", "--agent=aca", "--preset=corl"],
                       env=env, capture_output=True, text=True, timeout=300)
  assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: --preset")


def _pretrain_config(tmp_path, monkeypatch, dataset_id, algo, chain, preset="official"):
  """Runs ocr_cft.pretrain up to its training loop; returns (config.json, the device dataset)."""
  seen = {}

  def stop(agent, states, device, **kwargs):
    seen["device"] = device
    raise _Stop
  monkeypatch.setattr(ocr_cft.loops, "run_offline", stop)
  with pytest.raises(_Stop):
    offline.pretrain(algo=algo, dataset_id=dataset_id, seeds=1, seed=0, num_steps=10, eval_every=10,
                    eval_episodes=1, hidden_dims=(8, 8), batch_size=4, preset=preset, chain=chain,
                    out_dir=str(tmp_path), progress=False, log=lambda *a: None)
  run = tmp_path / "pretrain" / algo / dataset_id.replace("/", "_") / "seed0x1"
  return json.loads((run / "config.json").read_text()), seen["device"]


def test_pretrain_config_json_records_the_resolved_preset(tiny_hopper_dataset, tmp_path, monkeypatch):
  """Every run's config.json names its preset (issue 19 point 3): the O2SAC chain's CQL run on raw
  rewards (OCR-CFT offline/cql.py `normalize_reward: bool = False`)."""
  cfg, device = _pretrain_config(tmp_path, monkeypatch, tiny_hopper_dataset.dataset_id, "cql", "o2sac")
  assert cfg["preset"] == "official" and cfg["chain"] == "o2sac" and cfg["reward_scale"] == 1.0
  raw = np.concatenate([ep.rewards for ep in tiny_hopper_dataset.episodes]).astype(np.float32)
  np.testing.assert_array_equal(np.sort(np.asarray(device.rewards)), np.sort(raw))


def test_o2o_phase_configs_carry_the_preset(tmp_path):
  """Each later phase's config.json repeats the preset of the offline run it descends from."""
  prev = tmp_path / "prev"
  prev.mkdir()
  (prev / "config.json").write_text(json.dumps({"phase": "pretrain", "dataset": "d/hopper/medium-v0",
                                                "env": "Hopper-v5", "seeds": 1, "seed": 0,
                                                "preset": "corl"}))
  _, config, run_dir, _ = ocr_cft._o2o_run("reevaluate", "o2sac", prev, 0, None, str(tmp_path), False,
                                          {}, print)
  assert config["preset"] == "corl"
  assert json.loads((run_dir / "config.json").read_text())["preset"] == "corl"
  assert offline.run_preset(prev, {"preset": "corl"}) == "corl"
  assert offline.run_preset(prev, {}) == "corl"      # runs from before presets were recorded
  with pytest.raises(O2OError, match="pre-trained with --preset=corl"):
    offline.run_preset(prev, {"preset": "corl"}, given="official")


# ----------------------------------------------------------------------------- point 6: O3F's IQL

def test_o3f_iql_normalises_locomotion_rewards_by_the_return_range(tiny_hopper_dataset, tmp_path,
                                                                   monkeypatch):
  """CORL algorithms/offline/iql.py `modify_reward`: for "halfcheetah", "hopper", "walker2d",
  rewards /= (max_ret - min_ret); rewards *= 1000 (the IQL O3F builds on; its beta = 3 is tuned at
  that scale). Hand computation on the tiny hopper dataset's episode returns."""
  returns = [float(np.sum(ep.rewards)) for ep in tiny_hopper_dataset.episodes]
  scale = 1000.0 / (max(returns) - min(returns))
  for algo in ("iql5", "iql"):
    p = presets.offline_preset(algo, tiny_hopper_dataset.dataset_id, "official", "o3f")
    assert presets.reward_transform(p, np.array(returns)) == (pytest.approx(scale), 0.0)
  cfg, device = _pretrain_config(tmp_path, monkeypatch, tiny_hopper_dataset.dataset_id, "iql5", "o3f")
  assert cfg["preset"] == "official" and cfg["reward_scale"] == pytest.approx(scale, rel=1e-12)
  raw = np.concatenate([ep.rewards for ep in tiny_hopper_dataset.episodes]).astype(np.float32)
  np.testing.assert_allclose(np.sort(np.asarray(device.rewards)), np.sort(raw * np.float32(scale)),
                             rtol=1e-6)
  # The O2PPO chain's IQL (OCR-CFT offline/iql.py `normalize_reward: bool = False`) stays raw.
  assert presets.reward_transform(presets.offline_preset("iql", HOPPER_MEDIUM, "official", "o2ppo"),
                                  np.array(returns)) == (1.0, 0.0)
  # AntMaze: `elif "antmaze" in env_name: dataset["rewards"] -= 1.0`.
  p = presets.offline_preset("iql5", "D4RL/antmaze/umaze-v1", "official", "o3f")
  assert presets.reward_transform(p, np.array(returns)) == (1.0, -1.0)


def test_online_rewards_get_the_offline_transform(tiny_hopper_dataset, tmp_path, monkeypatch):
  """Online and offline rows share one reward transform (OCR-CFT finetune/O2SAC.py
  `modify_reward_online(env, r, reward_scale, reward_bias)` on AntMaze, as offline): the buffers
  hold r * scale (loops.run_online's `reward_scale`) and the shift is added to each batch."""
  data = prepared.load_data(tiny_hopper_dataset.dataset_id, reward_scale=10.0, reward_shift=-5.0,
                            batch_size=4)
  raw = np.asarray(data.dataset.transitions.rewards, np.float32)
  np.testing.assert_allclose(np.asarray(data.device.rewards), raw * 10.0 - 5.0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(data.without_shift().device.rewards), raw * 10.0, rtol=1e-6)
  seen = {}

  def stop(learner, states, **kwargs):
    seen.update(kwargs, learner=learner)
    raise _Stop
  monkeypatch.setattr(ocr_cft.loops, "run_online", stop)
  echo = ocr_cft.loops.Learner(lambda state, batch, key: (state, batch.rewards), None)
  with pytest.raises(_Stop):
    spec = phase_lib.OnlinePhase(
        agent="o2sac", dataset_id=tiny_hopper_dataset.dataset_id, run_name="r",
        config={"seeds": 1, "seed": 0},
        loop=phase_lib.online_loop(10, 0, 10, 1, utd=1, batch_size=4, offline_fraction=0.5),
        progress=False, checkpoint_every=None)
    phase_lib.train_online(spec, tmp_path, phase_lib.OnlineTraining(
        learner=echo, states=None, data=data, metadata={}, start_scores={"offline": np.zeros(1)}))
  assert seen["reward_scale"] == 10.0
  np.testing.assert_allclose(np.asarray(seen["offline"].rewards), raw * 10.0, rtol=1e-6)
  batch = Transition(*(jnp.zeros((2, 1)),) * 2, jnp.array([1.0, 2.0]), *(jnp.zeros((2, 1)),) * 2)
  np.testing.assert_allclose(seen["learner"].update(None, batch, None)[1], [-4.0, -3.0])


# ----------------------------------------------------------------------------- point 9: AntMaze

@pytest.mark.parametrize("dataset_id", ["D4RL/antmaze/medium-play-v1", "D4RL/antmaze-large-diverse-v2"])
def test_antmaze_ids_select_the_released_antmaze_settings(dataset_id):
  """OCR-CFT config/finetune/O2SAC/antmaze/{medium,large}_*_v2.yaml: `q_n_hidden_layers: 5`,
  `double_critic: false`, `critic_layernorm: true`, `alpha: 0.5`, `lmbda: 2.0`, `warmup_steps: 5000`,
  `n_episodes: 100`, `eval_freq: 5000`, `online_steps: 200000`, `align_steps: 1000000`,
  `normalize: false`, `reward_scale: 10.0`, `reward_bias: -5.0` (config/offline/cql/antmaze/*.yaml
  the same for CQL); config/finetune/O2TD3/antmaze/umaze_v2.yaml `critic_layernorm: false`,
  `warmup_steps: 1000`, `n_episodes: 100`; config/offline/td3_bc/antmaze/*.yaml `normalize_reward:
  true` -> utils.modify_reward `rewards -= 1.0`."""
  assert presets.antmaze_size(dataset_id) in ("medium", "large")
  sac = ocr_cft.o2o_preset("o2sac", dataset_id)
  assert sac["critic_hidden_dims"] == (256,) * 5 and sac["critic_layer_norm"] and sac["num_critics"] == 1
  assert sac["init_alpha"] == 0.5 and sac["lambda_init"] == 2.0
  assert (sac["tau_start"], sac["tau_end"]) == (0.125, 2.0)
  cql = presets.offline_preset("cql", dataset_id, "official", "o2sac")
  assert presets.reward_transform(cql, np.array([0.0, 1.0])) == (10.0, -5.0)
  assert cql["normalize_states"] is False and cql["config"]["critic_hidden_dims"] == (256,) * 5
  assert ocr_cft.dataset_budget("o2sac", dataset_id, "paper") == {
      "align_steps": 1_000_000, "align_eval_every": 50_000, "online_steps": 200_000,
      "eval_every": 5_000, "eval_episodes": 100, "warmup_steps": 5_000}
  td3 = ocr_cft.o2o_preset("o2td3", dataset_id)
  assert td3["critic_layer_norm"] is False and td3["exploration_noise"] == 0.1
  assert ocr_cft.dataset_budget("o2td3", dataset_id, "paper")["warmup_steps"] == 1_000
  td3bc = presets.offline_preset("td3bc", dataset_id, "official", "o2td3")
  assert presets.reward_transform(td3bc, np.array([0.0, 1.0])) == (1.0, -1.0)
  assert td3bc.get("normalize_states", True)       # config/offline/td3_bc/antmaze: `normalize: true`
  # What o2sac cannot express yet is reported, not dropped silently.
  assert "num_critics" in ocr_cft.o2o_preset_gaps("o2sac", dataset_id) or \
      "num_critics" in {f for f in registry.get("o2sac").Config.__dataclass_fields__}


def test_umaze_keeps_lambda_1_and_alpha_0_2_and_mujoco_is_untouched():
  """OCR-CFT config/finetune/O2SAC/antmaze/umaze_v2.yaml: `alpha: 0.2`, `lmbda: 1.0`; the MuJoCo
  YAMLs (e.g. hopper/medium_v2.yaml) keep 3 x 256, the double critic, 1000 warm-up steps, 10 episodes."""
  sac = ocr_cft.o2o_preset("o2sac", "D4RL/antmaze/umaze-diverse-v1")
  assert sac["init_alpha"] == 0.2 and "lambda_init" not in sac and sac["num_critics"] == 1
  assert presets.antmaze_size("D4RL/antmaze/umaze-v1") == "umaze"
  for agent in ("o2sac", "o2td3"):
    preset = ocr_cft.o2o_preset(agent, HOPPER_MEDIUM)
    assert not {"critic_hidden_dims", "num_critics", "critic_layer_norm", "lambda_init"} & set(preset)
    assert ocr_cft.dataset_budget(agent, HOPPER_MEDIUM, "paper") == {}
  assert ocr_cft.dataset_budget("o2sac", "D4RL/antmaze/umaze-v1", "quick") == {}
  assert presets.offline_preset("cql", HOPPER_MEDIUM, "official") == {"config": {},
                                                                      "normalize_reward": False}


# ----------------------------------------------------------------------------- point 9: interval mode

def _resolved(agent_name, dataset_id, reference="interval:1000", overrides=None):
  """(Config before fine-tuning, (Config, settings) of the fine-tuning phase), 8x8 networks."""
  algo = ocr_cft.SOURCE_ALGO[agent_name]
  off, _ = offline.offline_config(algo, dataset_id, "official", agent_name, (8, 8))
  config = ocr_cft.make_o2o_config(agent_name, off, dataset_id, (8, 8), True)
  return config, ocr_cft.resolve_finetune(agent_name, dataset_id, config, reference=reference,
                                         overrides=overrides)


@pytest.mark.parametrize("agent_name,dataset_id", [
    ("o2sac", "o2o/hopper/expert-v0"), ("o2sac", "o2o/hopper/medium-expert-v0"),
    ("o2td3", "o2o/hopper/expert-v0"), ("o2td3", "o2o/walker2d/expert-v0")])
def test_interval_mode_extras_on_hopper_expert(agent_name, dataset_id):
  """OCR-CFT finetune/O2SAC.py `train()`: `if not config.refer_with_optimal_pi: config.end_threshold
  /= 4; if 'expert' in config.env and 'hopper' in config.env: grad_clip = True; config.update_n = 10`
  (O2TD3.py: `... or 'walker2d-expert' in config.env`); online_agent/{sac,td3}.py `update`:
  `clip_grad_norm_(self.actor.parameters(), 0.25)`; pi_ref refreshed when `total_steps %
  (config.update_n * config.eval_freq) == 0`."""
  before, (config, settings) = _resolved(agent_name, dataset_id)
  assert config.tau_end == before.tau_end / 4 and config.tau_start == before.tau_start
  assert settings["actor_grad_clip"] == 0.25 and settings["update_n"] == 10
  assert settings["interval_steps"] == 10_000
  # 'interval' is the released setting itself: N = eval_freq (1000 on MuJoCo).
  released = ocr_cft.resolve_finetune(agent_name, dataset_id, before, reference="interval",
                                     eval_every=1000)
  assert released[0] == config and {**released[1], "reference": "interval:1000"} == settings


@pytest.mark.parametrize("agent_name,dataset_id", [
    ("o2sac", "o2o/walker2d/expert-v0"), ("o2td3", "o2o/walker2d/medium-expert-v0"),
    ("o2sac", "o2o/hopper/medium-v0"), ("o2td3", "o2o/halfcheetah/expert-v0")])
def test_interval_mode_elsewhere_only_quarters_tau_end(agent_name, dataset_id):
  """Same code: `end_threshold /= 4` applies on every dataset in interval mode; the clip and
  update_n = 10 only where the substring tests above hold ('walker2d-expert' is not a substring of
  'walker2d-medium-expert-v2', and O2SAC.py has no walker2d clause)."""
  before, (config, settings) = _resolved(agent_name, dataset_id)
  assert config.tau_end == before.tau_end / 4
  assert settings["actor_grad_clip"] is None and settings["update_n"] == 1
  assert settings["interval_steps"] == 1000


def test_best_mode_and_an_explicit_tau_end_are_left_alone():
  """`refer_with_optimal_pi: true` (every released YAML) takes none of the extras; an explicit
  --tau_end is this framework's override and is used as given."""
  before, (config, settings) = _resolved("o2sac", "o2o/hopper/expert-v0", reference="best")
  assert config.tau_end == before.tau_end and settings["actor_grad_clip"] is None
  assert settings["interval_steps"] is None
  _, (config, settings) = _resolved("o2sac", "o2o/hopper/expert-v0", overrides={"tau_end": 0.1})
  assert config.tau_end == 0.1 and settings["actor_grad_clip"] == 0.25
  with pytest.raises(O2OError, match="interval:N"):
    ocr_cft.parse_reference("interval:0")
  with pytest.raises(O2OError, match="multiple of --eval_every"):
    ocr_cft.finetune(align_dir=None, online_steps=10, warmup_steps=0, eval_every=300,
                    eval_episodes=1, reference="interval:1000")


def test_actor_gradient_clip_is_clip_then_adam():
  """torch.nn.utils.clip_grad_norm_(actor.parameters(), 0.25) before actor_optimizer.step() (OCR-CFT
  finetune/online_agent/td3.py `update`): the global norm over every actor parameter is clipped, the
  Adam state keeps its structure."""
  from o2o_jax.agents.o2o import o2td3
  config = o2td3.Config(hidden_dims=(8, 8), critic_hidden_dims=(8, 8))
  state = o2td3.init(jax.random.PRNGKey(0), OBS, ACT, config)
  clipped = ocr_cft.clip_actor_gradients(state, 0.25)
  assert jax.tree_util.tree_structure(clipped.actor.opt_state) == \
      jax.tree_util.tree_structure(state.actor.opt_state)
  grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 3.0), state.actor.params)
  norm = optax.tree.norm(grads)
  by_hand = state.actor.apply_gradients(grads=jax.tree_util.tree_map(lambda g: g * 0.25 / norm, grads))
  got = clipped.actor.apply_gradients(grads=grads)
  for a, b in zip(jax.tree_util.tree_leaves(got.params), jax.tree_util.tree_leaves(by_hand.params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
  small = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 1e-4), state.actor.params)
  for a, b in zip(jax.tree_util.tree_leaves(clipped.actor.apply_gradients(grads=small).params),
                  jax.tree_util.tree_leaves(state.actor.apply_gradients(grads=small).params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
