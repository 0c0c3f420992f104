"""Cal-QL: calibrated offline RL pre-training for efficient online fine-tuning (Nakamoto et al.,
NeurIPS 2023), the CORL variant (`algorithms/finetune/cal_ql.py`, which OCR-CFT ran; reference notes
in shared/reference/baselines.md §5). CQL (`cql`) with one change in its conservative term:

  critic_i: L = E_D[(Q_i(s,a) - y)^2]
                + alpha_cql (E_s[T logsumexp_j((Q~_i(s,a_j) - log q(a_j)) / T)] - E_D[Q_i(s,a)])
            Q~_i(s,a_j) = max(Q_i(s,a_j), V^mu(s))  for the 10 actions from pi(.|s) and the 10 from
                          pi(.|s') (both evaluated at s): the paper's calibrated regulariser (its
                          §5; our reference is the code), CORL `CalQL._q_loss` "Cal-QL: bound
                          Q-values with MC return-to-go";
            Q~_i(s,a_j) = Q_i(s,a_j)                for the 10 uniform actions (and the data term),
            y = r + gamma (1-d) min_k Q'_k(s', a'), a' ~ pi(.|s')  (no entropy, no max backup).
  V^mu(s) = the discounted Monte-Carlo return-to-go of the transition in the behaviour data,
            G_t = r_t + gamma (1 - end_t) G_{t+1}, cut at terminals, timeouts, dataset cuts and
            observation discontinuities (CORL `get_return_to_go`; `o2o_jax.data.returns.
            calibration_returns`), on the transformed rewards; with `sparse_reward`, a segment ending
            on the failure reward gets r_fail / (1 - gamma) everywhere.
  actor / temperature / alpha': CQL's (SAC's actor, automatic alpha with H = -|A|).

Offline -> online (CORL `train`, at t == offline_iterations): `trainer.switch_calibration()` turns the
bound off and `trainer.cql_alpha = config.cql_alpha_online`; nothing else changes (networks,
optimisers, alpha, alpha' all continue). Online rows are stored with MC return 0, which the
switched-off bound never reads. Here that is `start_online` (`online_config`): `calibrated=False`,
`cql_alpha := cql_alpha_online`. Each online batch is half offline, half online (`mixing_ratio`
0.5; the online loop's `offline_fraction`, o2o_jax/recipes/calql.py). (The official JaxCQL code keeps
the calibration online with per-episode MC returns of the online data; not implemented, §5(b).)

The state is CQL's (`cql.State`, with this module's Config); batches of the calibrated update carry
`mc_returns` (`returns.TransitionWithReturns`), which the offline phase's dataset provides
(`offline_dataset`, called by `o2o_jax.recipes.offline.pretrain`).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from o2o_jax.agents.offline import cql
from o2o_jax.data import returns
from o2o_jax.errors import O2OError
from o2o_jax.types import PRNGKey, Transition

State = cql.State


@dataclasses.dataclass(frozen=True)
class Config(cql.Config):
  # CORL finetune/cal_ql.py TrainConfig defaults (the MuJoCo settings OCR-CFT used): CQL's, except
  # the critics' 2 hidden layers (`q_n_hidden_layers: 2`) and the orthogonal initialisation of every
  # layer of both networks (`init_module_weights(m, True)` applied to each nn.Linear).
  critic_hidden_dims: Optional[Sequence[int]] = (256, 256)
  actor_init: str = "corl_calql"
  critic_init: str = "corl_calql"
  cql_alpha_online: float = 10.0     # alpha_cql after the switch (CORL `cql_alpha_online`)
  calibrated: bool = True            # the V^mu lower bound (CORL `_calibration_enabled`); off online
  sparse_reward: bool = False        # CORL `is_sparse_reward` (AntMaze): failed segments' V^mu


def init(key: PRNGKey, obs_dim: int, act_dim: int, config: Config = Config()) -> State:
  return cql.init(key, obs_dim, act_dim, config)


def update(state: State, batch: Transition, key: PRNGKey, next_value_hook=None, extra_critic_loss=None):
  """One Cal-QL step: `cql.update` with V^mu (`batch.mc_returns`) as the lower bound of the policy
  actions' Q-values while `config.calibrated`, plain CQL otherwise (the hooks are CQL's, for SAMG)."""
  floor = None
  if state.config.calibrated:
    floor = getattr(batch, "mc_returns", None)
    if floor is None:
      raise O2OError("Cal-QL's calibrated update needs the return-to-go of each row: train on "
                     "calql.offline_dataset(...) rows, or switch the calibration off "
                     "(calql.start_online) for batches without them")
  return cql.update(state, batch, key, next_value_hook=next_value_hook,
                    extra_critic_loss=extra_critic_loss, policy_q_floor=floor)


def act(state: State, observations, key: PRNGKey, explore: bool = True):
  return cql.act(state, observations, key, explore)


def online_config(config: Config) -> Config:
  """The Config after CORL's offline -> online switch: no calibration, alpha_cql = cql_alpha_online."""
  return dataclasses.replace(config, calibrated=False, cql_alpha=config.cql_alpha_online)


def start_online(state: State, config: Optional[Config] = None) -> State:
  """The switch on a state (one seed or seed-stacked: the Config is static): `online_config` of
  `config` (default: the state's own); every parameter and optimiser state continues."""
  config = online_config(state.config if config is None else config)
  return state.replace(sac=state.sac.replace(config=config))


def failure_reward(dataset, reward_scale: float, reward_shift: float) -> float:
  """CORL's failure reward of a sparse task: ref_min_score * reward_scale + reward_bias."""
  if dataset.ref_min_score is None:
    raise O2OError(f"{dataset.dataset_id} has no ref_min_score: Cal-QL's sparse_reward needs it for "
                   "the failure reward (pass --config.sparse_reward=false)")
  return float(dataset.ref_min_score) * reward_scale + reward_shift


def offline_dataset(data, config: Config) -> returns.TransitionWithReturns:
  """What the offline phase samples its batches from (`o2o_jax.recipes.offline.pretrain`): the
  prepared transitions (`prepared.Data.device`) with V^mu of each row, the discounted return-to-go of
  the transformed rewards (CORL computes `get_return_to_go` after `modify_reward`)."""
  rewards = np.asarray(data.device.rewards)
  failure = (failure_reward(data.dataset, data.reward_scale, data.reward_shift)
             if config.sparse_reward else None)
  mc = returns.calibration_returns(data.dataset, config.discount, rewards, failure)
  return returns.with_returns(data.device, mc)
