"""Pieces shared by the OCR-CFT agents: network initialisation around a given offline actor, and the
reference policy pi_ref. A state needs the fields `actor.params` (pi_on), `offline_actor_params`
(pi_off), `reference_actor_params` (pi_ref) and `best_score`; the functions are per seed, so
`jax.vmap` gives every seed its own pi_ref and best score."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# best_score before any evaluation: the lowest float32, not -inf, so that every leaf of a healthy
# state is finite (the divergence guard flags non-finite leaves).
NO_SCORE = float(np.finfo(np.float32).min)


def init_networks(key, obs_dim: int, act_dim: int, actor, critic, actor_params=None):
  """(actor params, critic params): the given offline actor (freshly initialised if None) and a fresh
  critic — the offline critic is never used."""
  k_actor, k_critic = jax.random.split(key)
  obs = jnp.zeros((1, obs_dim))
  if actor_params is None:
    actor_params = actor.init(k_actor, obs)
  return actor_params, critic.init(k_critic, obs, jnp.zeros((1, act_dim)))


def actor_drift(actions, offline_actions):
  """RMS over the batch and action dimensions of pi_on(s) - pi_off(s): how far the actor has moved from
  the offline policy (logged during alignment, where the paper expects pi_on to stay near pi_off)."""
  return jnp.sqrt(jnp.mean(jnp.square(actions - offline_actions)))


def init_reference(state, offline_score, online_score):
  """pi_ref starts as the better of pi_off and pi_on by evaluation (pi_on only if strictly better),
  the best score as the higher of the two (released code; the paper starts from pi_on)."""
  use_on = online_score > offline_score
  ref = jax.tree_util.tree_map(lambda on, off: jnp.where(use_on, on, off),
                               state.actor.params, state.offline_actor_params)
  return state.replace(reference_actor_params=ref,
                       best_score=jnp.maximum(offline_score, online_score).astype(jnp.float32))


def refresh_reference(state, score):
  """If `score` beats the best so far: pi_ref <- pi_on and best <- score."""
  better = score > state.best_score
  ref = jax.tree_util.tree_map(lambda on, old: jnp.where(better, on, old),
                               state.actor.params, state.reference_actor_params)
  return state.replace(reference_actor_params=ref,
                       best_score=jnp.where(better, score, state.best_score).astype(jnp.float32))


def adopt_reference(state, score):
  """pi_ref <- pi_on whatever its score, best <- `score` (the interval mode, appendix C.3 / the
  released code's refer_with_optimal_pi=false). `score` is the evaluation that just ran: every leaf
  stays finite, which the divergence guard requires (an inf here stopped interval runs as
  diverged before session 10)."""
  return state.replace(reference_actor_params=state.actor.params,
                       best_score=jnp.asarray(score, jnp.float32))
