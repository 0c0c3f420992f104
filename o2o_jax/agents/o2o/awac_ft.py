"""AWAC online fine-tuning as CORL runs it (`algorithms/finetune/awac.py`, `train`): the offline AWAC
objective continues unchanged online (`agents.offline.awac`, reference §2.4):

  critic: y = r + gamma (1-d) min_k Q'_k(s', a'),  a' ~ pi(.|s')   (no entropy term)
  actor:  L_pi = -E_B[ min(exp(A / lambda), 100) log pi(a|s) ],
          A = min_k Q_k(s, a) - min_k Q_k(s, a~),  a~ ~ pi(.|s)

with B drawn uniformly from one replay buffer that starts as the whole offline dataset
(`ReplayBuffer.load_d4rl_dataset`) and gets every online transition appended (`add_transition`),
one update per env step from the first one (o2o_jax/recipes/iql_way.py sets this up). Nothing
changes at the switch: the same networks and Adam states (`start_online` only installs the online
Config, whose learning rates the optimizers then use). Acting: a ~ pi(.|s) clipped to the action
box (`Actor.forward`: rsample, clamp); evaluation: the mean.

The state is AWAC's own (`awac.State`) with its Config.
"""
from __future__ import annotations

from o2o_jax.agents.common import with_learning_rate
from o2o_jax.agents.offline import awac

Config = awac.Config
init = awac.init
update = awac.update     # the offline objective, unchanged
act = awac.act


def start_online(state: awac.State, config: Config) -> awac.State:
  """The switch: `config` replaces the offline one; parameters and Adam states are kept."""
  return state.replace(actor=with_learning_rate(state.actor, config.actor_lr),
                       critic=with_learning_rate(state.critic, config.critic_lr), config=config)
