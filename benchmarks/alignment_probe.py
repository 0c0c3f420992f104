"""Does O2TD3's value alignment make pi_off a local maximum of the critic? A probe, from a finished
re-evaluation run, outside the launchers (nothing is written).

  python -m benchmarks.alignment_probe --from=runs/reevaluate/o2td3/<dataset>/<run> --steps=5000 \
      --freeze_actor

Runs `--steps` alignment steps (eq. 16 critic step; the -Q_1 actor step too unless --freeze_actor)
and prints, every 1k steps, the align and retain losses and the fraction of batch states where
Q_1(s, pi_off(s)) beats all of 4 random perturbations pi_off(s) + N(0, sigma^2), sigma =
--probe_sigma (about 1/16 by chance for a critic with no maximum at pi_off; near 1 for an aligned
one). Before any step it prints the twin-critic gap at pi_off, which the retain term has to remove.
The critic's learning rate can be overridden with --critic_lr. `--anchor=own` tests a departure
from the released code: each critic is anchored on its own target critic, Q'_i(s, a.), instead of
on the min of the two.
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("from", None, "A finished O2TD3 reevaluate run directory.", required=True)
flags.DEFINE_integer("steps", 5_000, "Alignment steps (a multiple of 1000).")
flags.DEFINE_bool("freeze_actor", False, "Keep pi_on = pi_off (critic steps only).")
flags.DEFINE_float("critic_lr", None, "Critic learning rate (default: the run's).")
flags.DEFINE_integer("batch_size", 256, "Batch size.")
flags.DEFINE_float("probe_sigma", 0.1, "Std of the 4 random perturbations of pi_off(s).")
flags.DEFINE_enum("anchor", "min", ["min", "own"], "Anchor A: min_i Q'_i(s, a.) (released code) or "
                  "each critic's own Q'_i(s, a.) (a test).")


def main(argv):
  del argv
  import dataclasses

  import optax
  from o2o_jax import recipe
  from o2o_jax.agents.common import TrainState
  from o2o_jax.agents.o2o import o2td3
  from o2o_jax.data import prepared
  run = recipe.load_run(Path(getattr(FLAGS, "from")))
  cfg, agent, states, meta = run.config, run.module, run.states, run.meta
  if agent is not o2td3:
    raise SystemExit(f"--from is a {cfg['agent']} run; this probe is for o2td3")
  if FLAGS.critic_lr:
    config = dataclasses.replace(states.config, critic_lr=FLAGS.critic_lr)
    fresh = lambda c: TrainState.create(apply_fn=c.apply_fn, params=c.params,
                                        tx=optax.adam(FLAGS.critic_lr))
    states = states.replace(config=config, critic=jax.vmap(fresh)(states.critic))
  data = prepared.load_data(meta["dataset_id"], meta["obs_mean"], meta["obs_std"],
                            meta["reward_transform"]["scale"])
  observations = data.device.observations

  def anchor_is_max(state, obs, key):
    a0 = o2td3.pi(state, state.offline_actor_params, obs)
    q0 = state.critic.apply_fn(state.critic.params, obs, a0)[0]
    noise = FLAGS.probe_sigma * jax.random.normal(key, (4,) + a0.shape)
    q_1 = lambda a: state.critic.apply_fn(state.critic.params, obs, a)[0]
    q = jax.vmap(lambda n: q_1(jnp.clip(a0 + n, -1, 1)))(noise)
    return jnp.mean(jnp.all(q <= q0, axis=0))

  def own_anchor_loss(critic_params, state, obs, key):
    """Eq. 16 with A_i = Q'_i(s, a.) per critic (the variant under test)."""
    c = state.config
    a_dot = o2td3.pi(state, state.offline_actor_params, obs)
    anchor = state.critic.apply_fn(state.target_critic_params, obs, a_dot)                 # (2, B)
    noisy = o2td3.smoothed(state, o2td3.pi(state, state.actor.params, obs), key)
    distance = o2td3.action_distance(noisy, a_dot, c.policy_noise)
    q_star = o2td3.calibrated_value(anchor, distance[None], c.distance_k)
    targets = jnp.minimum(q_star, state.critic.apply_fn(state.target_critic_params, obs, noisy))
    q = lambda a: state.critic.apply_fn(critic_params, obs, a)
    sse = lambda a, y: jnp.sum(jnp.mean(jnp.square(q(a) - y), -1))
    align, retain = sse(noisy, targets), sse(a_dot, anchor)
    return align + retain, {"align_loss": align, "retain_loss": retain}

  critic_loss = o2td3.align_critic_loss if FLAGS.anchor == "min" else own_anchor_loss

  def step(state, key):
    k_batch, k_critic, k_probe = jax.random.split(key, 3)
    obs = observations[jax.random.randint(k_batch, (FLAGS.batch_size,), 0, observations.shape[0])]
    # Both gradients at the step's starting parameters, as `o2td3.align_step` (official
    # `TD3.align_value`): the critic's noisy action comes from the actor before its step.
    grads, info = jax.grad(critic_loss, has_aux=True)(state.critic.params, state, obs, k_critic)
    if not FLAGS.freeze_actor:
      actor_grads, _ = jax.grad(o2td3.plain_actor_loss, has_aux=True)(state.actor.params, state, obs)
      state = state.replace(actor=state.actor.apply_gradients(grads=actor_grads))
    state = state.replace(critic=state.critic.apply_gradients(grads=grads))
    return state, {"align_loss": info["align_loss"], "retain_loss": info["retain_loss"],
                   "anchor_is_max": anchor_is_max(state, obs, k_probe)}

  def twin_gap(state):
    obs = observations[:20_000]
    q = state.critic.apply_fn(state.target_critic_params, obs,
                              o2td3.pi(state, state.offline_actor_params, obs))
    return jnp.sqrt(jnp.mean(jnp.square(q[0] - q[1])))

  print("twin target-critic gap at pi_off (RMS) per seed:",
        " ".join(f"{x:.2f}" for x in np.asarray(jax.vmap(twin_gap)(states))))
  chunk = jax.jit(jax.vmap(lambda s, k: jax.lax.scan(step, s, jax.random.split(k, 1000))))
  keys = jax.random.split(jax.random.PRNGKey(0), cfg["seeds"])
  for i in range(FLAGS.steps // 1000):
    states, info = chunk(states, jax.vmap(lambda k: jax.random.fold_in(k, i))(keys))
    print(f"step {(i + 1) * 1000}: " + ", ".join(
        f"{k} {float(np.mean(np.asarray(v)[:, -200:])):.3f}" for k, v in info.items()), flush=True)


if __name__ == "__main__":
  app.run(main)
