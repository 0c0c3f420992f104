"""Loss building blocks shared by the agents. Each is a small pure function over arrays; agents
compose them so a loss reads like its paper's equation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def polyak(target_params, online_params, tau: float):
  """theta' <- tau * theta + (1 - tau) * theta'."""
  return optax.incremental_update(online_params, target_params, tau)


def td_target(rewards, masks, discount: float, next_values):
  """y = r + gamma * (1 - terminal) * V(s'). Truncated transitions keep mask 1 (they bootstrap)."""
  return rewards + discount * masks * next_values


def soft_value(next_q, next_log_probs, alpha):
  """Soft state value of SAC's backup: Q(s', a') - alpha * log pi(a'|s')."""
  return next_q - alpha * next_log_probs


def critic_mse(q_values, targets):
  """Sum over ensemble members of the mean squared TD error: q_values (N, B), targets (B,)."""
  return jnp.sum(jnp.mean(jnp.square(q_values - jax.lax.stop_gradient(targets)[None]), axis=-1))


def smoothed_target_action(target_actions, key, policy_noise: float, noise_clip: float):
  """TD3 target policy smoothing: clip(pi'(s') + clip(eps, -c, c), -1, 1), eps ~ N(0, sigma)."""
  noise = jnp.clip(policy_noise * jax.random.normal(key, target_actions.shape), -noise_clip, noise_clip)
  return jnp.clip(target_actions + noise, -1.0, 1.0)


def temperature_loss(log_alpha, log_probs, target_entropy: float):
  """SAC's automatic entropy tuning in the references' form: J = E[-log alpha * (log pi(a|s) + H_target)]
  (CORL `cql.py` and official OCR-CFT `online_agent/sac.py`, `_alpha_and_alpha_loss`). Its gradient in
  log alpha is the paper's (Haarnoja et al. 2018b, eq. 18) divided by alpha, so alpha moves at the same
  relative rate whatever its size."""
  return -jnp.mean(log_alpha * jax.lax.stop_gradient(log_probs + target_entropy))


def sac_actor_loss(alpha, log_probs, q_values):
  """SAC policy loss: E[alpha * log pi(a|s) - Q(s, a)], a ~ pi (reparameterised)."""
  return jnp.mean(alpha * log_probs - q_values)


def expectile_loss(diff, expectile: float):
  """IQL's asymmetric L2: |tau - 1(diff < 0)| * diff^2, diff = Q - V."""
  weight = jnp.where(diff > 0, expectile, 1.0 - expectile)
  return weight * jnp.square(diff)


def cql_logsumexp(q_samples, log_densities, temperature: float = 1.0):
  """CQL's importance-sampled soft maximum over sampled actions a_j ~ q:
  T * logsumexp_j((Q(s, a_j) - log q(a_j)) / T), over the last axis."""
  return temperature * jax.nn.logsumexp((q_samples - log_densities) / temperature, axis=-1)
