"""Mutation score of the RL maths (issue #24): a curated list of named mutations of
`o2o_jax/losses.py`, `o2o_jax/lagrange.py`, `o2o_jax/agents/**` and `o2o_jax/data/returns.py`
(the comparison methods of issue #21 included: Cal-QL, PEX, IQL fine-tuning, Off2On, PROTO),
applied one at a time to a scratch copy of the tree (never to the working tree), each run against the
fast test files of the module it touches. A mutant is *killed* when a test fails (or the run errors or times out), and
*survives* when every test passes.

  python -m benchmarks.mutation --out=benchmarks/results/mutation            # every mutant
  python -m benchmarks.mutation --out=/tmp/m --only=td3_min_to_mean,sac_entropy_sign
  python -m benchmarks.mutation --list                                         # the mutants
  python -m benchmarks.mutation --out=benchmarks/results/mutation --previous=benchmarks/results/mutation/results.json \
      --only=<survivors>          (rerun some mutants, e.g. after new tests, keeping the others' results)
  python -m benchmarks.mutation --out=/tmp/m --only=... --tests=tests/test_loss_terms.py --all_failures
      (one file, no -x: which of its tests each mutant fails, to check that a test sees its term)

Mutation classes (the issue's list): signs; sum <-> mean; min <-> mean over critics; dropped
`stop_gradient`; masks (terminals); discount and Polyak arguments; orderings (which network, which
state, which step's parameters). Each mutant is a literal `old -> new` edit that must match exactly
once in its file; one that no longer matches (the code moved on) is reported as stale, not run.

Writes `report.md` and `results.json` in --out after every mutant (so a long run can be polled):
mutants, killed (by which test), survived with the reason (an equivalent mutant and why, or the
test still missing and whose), stale ones, and the run's time. The score is killed / (killed +
survived), over all mutants and per module.

Speed: one scratch copy, the mutated file written in place and restored after each mutant; pytest
with -x (the first failing test ends a killed mutant's run), the test file most likely to see the
module's terms first; a persistent XLA compilation cache shared by all runs, so only programs the
mutant changed are compiled again. Tests failing on the unmutated copy are deselected (and listed).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Output folder for report.md and results.json.")
flags.DEFINE_list("only", [], "Run only these mutant ids (default: all).")
flags.DEFINE_list("tests", [], "Override the test files of every mutant (paths relative to the repo).")
flags.DEFINE_bool("all_failures", False, "No -x: run every selected test and list all that fail.")
flags.DEFINE_bool("list", False, "Print the mutants and exit.")
flags.DEFINE_integer("timeout", 1200, "Seconds per mutant run; a run past it counts as killed.")
flags.DEFINE_string("scratch", None, "Scratch folder for the copy (default: a new temporary one).")
flags.DEFINE_bool("keep_scratch", False, "Keep the scratch copy at the end.")
flags.DEFINE_string("previous", None, "A previous run's results.json: the mutants not in --only keep "
                    "their recorded results, those in --only are run again (e.g. survivors after new "
                    "tests), and the report covers all of them.")

REPO = Path(__file__).resolve().parents[1]
COPY = ("o2o_jax", "tests", "experiments", "setup.cfg", "pyproject.toml")

# Slow tests left out of every run: subprocess launchers, crash-resume runs, tests that build a MuJoCo
# dataset. They check plumbing, not the loss terms mutated here.
DESELECT = ("not launcher and not pretrain and not crash and not 5_seeds and not end_to_end and "
            "not rejects_bad_flags and not on_a_dataset and not kill and not two_process and "
            "not multi_process and not resume")

# Module -> its fast test files, most specific first (-x stops at the first failure). Files that do
# not exist are skipped (helper B's `test_o2o_terms.py` / `test_equivalence.py`, issue #24, arrived
# during the work).
L, OFF, ON, OCR = ("tests/test_loss_terms.py", "tests/test_offline.py", "tests/test_online_agents.py",
                   "tests/test_ocr_cft.py")
TERMS, EQUIV = "tests/test_o2o_terms.py", "tests/test_equivalence.py"
PPO_T, O2PPO_T, ACA_T, SAMG_T = ("tests/test_ppo.py", "tests/test_o2ppo.py", "tests/test_aca_o3f.py",
                                 "tests/test_samg.py")
# The comparison methods (issue #21).
CALQL_T, PEX_T, OFF2ON_T, PROTO_T, REPLAY_T = ("tests/test_calql.py", "tests/test_pex_iql_ft.py",
                                               "tests/test_off2on.py", "tests/test_proto.py",
                                               "tests/test_replay.py")
TEST_FILES: Dict[str, List[str]] = {
    "o2o_jax/losses.py": [L, ON, OFF, OCR, TERMS],
    "o2o_jax/lagrange.py": [OCR, TERMS],
    "o2o_jax/agents/common.py": [L, ON, OFF],
    "o2o_jax/agents/online/td3.py": [L, ON, OFF, EQUIV],
    "o2o_jax/agents/online/sac.py": [L, ON, OFF, TERMS, EQUIV],
    "o2o_jax/agents/online/ppo.py": [PPO_T, O2PPO_T, TERMS, EQUIV],
    "o2o_jax/agents/offline/td3_bc.py": [L, OFF, EQUIV],
    "o2o_jax/agents/offline/cql.py": [L, OFF, TERMS, SAMG_T, EQUIV, CALQL_T],   # (Cal-QL's q_floor)
    "o2o_jax/agents/offline/iql.py": [L, OFF, TERMS, ACA_T, EQUIV],
    "o2o_jax/agents/offline/awac.py": [L, OFF, TERMS, EQUIV],
    "o2o_jax/agents/offline/bc.py": [OFF, EQUIV],
    "o2o_jax/agents/o2o/common.py": [OCR, TERMS],
    "o2o_jax/agents/o2o/o2td3.py": [L, TERMS, OCR, EQUIV],
    "o2o_jax/agents/o2o/o2sac.py": [L, TERMS, OCR, EQUIV],
    "o2o_jax/agents/o2o/o2ppo.py": [TERMS, O2PPO_T, EQUIV],
    "o2o_jax/data/returns.py": [O2PPO_T, CALQL_T],
    "o2o_jax/agents/o2o/aca.py": [TERMS, L, ACA_T, EQUIV],
    "o2o_jax/agents/o2o/o3f.py": [ACA_T, EQUIV],
    "o2o_jax/agents/o2o/samg.py": [TERMS, SAMG_T, EQUIV],
    "o2o_jax/agents/o2o/calql.py": [CALQL_T],
    "o2o_jax/agents/o2o/pex.py": [PEX_T],
    "o2o_jax/agents/o2o/iql_ft.py": [PEX_T],
    "o2o_jax/agents/o2o/awac_ft.py": [PEX_T],
    "o2o_jax/agents/o2o/off2on.py": [OFF2ON_T],
    "o2o_jax/data/replay.py": [OFF2ON_T, REPLAY_T],
    "o2o_jax/agents/o2o/proto.py": [PROTO_T],
}
HELPER_FILES = (TERMS, EQUIV)


@dataclasses.dataclass(frozen=True)
class Mutant:
  id: str
  path: str          # relative to the repo
  old: str           # must occur exactly once in the file
  new: str
  kind: str          # sign | sum-mean | min-mean | stop_gradient | mask | discount | polyak | ordering | other
  what: str          # the term it breaks, in words


def M(id, path, old, new, kind, what):
  return Mutant(id, path, old, new, kind, what)


LS, LG = "o2o_jax/losses.py", "o2o_jax/lagrange.py"
A = "o2o_jax/agents/"
TD3, SAC, PPO = A + "online/td3.py", A + "online/sac.py", A + "online/ppo.py"
TD3BC, CQL, IQL, AWAC, BC = (A + "offline/td3_bc.py", A + "offline/cql.py", A + "offline/iql.py",
                             A + "offline/awac.py", A + "offline/bc.py")
O2TD3, O2SAC, O2PPO, ACA, O3F, SAMG, O2C, COMMON = (
    A + "o2o/o2td3.py", A + "o2o/o2sac.py", A + "o2o/o2ppo.py", A + "o2o/aca.py", A + "o2o/o3f.py",
    A + "o2o/samg.py", A + "o2o/common.py", A + "common.py")
RETURNS = "o2o_jax/data/returns.py"     # O2PPO's Monte-Carlo returns (moved from o2ppo.py), Cal-QL's V^mu
CALQL, PEX, IQLFT, OFF2ON, PROTO = (A + "o2o/calql.py", A + "o2o/pex.py", A + "o2o/iql_ft.py",
                                    A + "o2o/off2on.py", A + "o2o/proto.py")

MUTANTS: List[Mutant] = [
    # ---------------------------------------------------------------- losses.py
    M("polyak_swap_args", LS, "optax.incremental_update(online_params, target_params, tau)",
      "optax.incremental_update(target_params, online_params, tau)", "polyak", "Polyak toward the target"),
    M("polyak_one_minus_tau", LS, "optax.incremental_update(online_params, target_params, tau)",
      "optax.incremental_update(online_params, target_params, 1.0 - tau)", "polyak", "Polyak rate 1 - tau"),
    M("td_target_no_mask", LS, "rewards + discount * masks * next_values", "rewards + discount * next_values",
      "mask", "bootstrap through terminals"),
    M("td_target_inverted_mask", LS, "rewards + discount * masks * next_values",
      "rewards + discount * (1.0 - masks) * next_values", "mask", "mask inverted"),
    M("td_target_sign", LS, "rewards + discount * masks * next_values", "rewards - discount * masks * next_values",
      "sign", "minus the bootstrap"),
    M("soft_value_sign", LS, "next_q - alpha * next_log_probs", "next_q + alpha * next_log_probs", "sign",
      "entropy backup sign"),
    M("critic_mse_mean_members", LS, "jnp.sum(jnp.mean(jnp.square(q_values", "jnp.mean(jnp.mean(jnp.square(q_values",
      "sum-mean", "critic loss mean over members"),
    M("critic_mse_no_stop_gradient", LS, "jax.lax.stop_gradient(targets)[None]", "targets[None]",
      "stop_gradient", "TD targets not detached"),
    M("smoothing_no_noise_clip", LS,
      "jnp.clip(policy_noise * jax.random.normal(key, target_actions.shape), -noise_clip, noise_clip)",
      "policy_noise * jax.random.normal(key, target_actions.shape)", "other", "target noise unclipped"),
    M("smoothing_no_box_clip", LS, "return jnp.clip(target_actions + noise, -1.0, 1.0)",
      "return target_actions + noise", "other", "target action outside the box"),
    M("temperature_loss_sign", LS, "return -jnp.mean(log_alpha * jax.lax.stop_gradient(",
      "return jnp.mean(log_alpha * jax.lax.stop_gradient(", "sign", "temperature loss sign"),
    M("temperature_target_entropy_sign", LS, "stop_gradient(log_probs + target_entropy)",
      "stop_gradient(log_probs - target_entropy)", "sign", "target entropy sign"),
    M("temperature_no_stop_gradient", LS, "jax.lax.stop_gradient(log_probs + target_entropy)",
      "(log_probs + target_entropy)", "stop_gradient", "temperature loss not detached from log pi"),
    M("sac_actor_q_sign", LS, "jnp.mean(alpha * log_probs - q_values)", "jnp.mean(alpha * log_probs + q_values)",
      "sign", "SAC actor descends Q"),
    M("sac_actor_entropy_sign", LS, "jnp.mean(alpha * log_probs - q_values)",
      "jnp.mean(-alpha * log_probs - q_values)", "sign", "SAC actor entropy sign"),
    M("expectile_swapped", LS, "jnp.where(diff > 0, expectile, 1.0 - expectile)",
      "jnp.where(diff < 0, expectile, 1.0 - expectile)", "sign", "expectile weights swapped"),
    M("cql_lse_density_sign", LS, "(q_samples - log_densities) / temperature",
      "(q_samples + log_densities) / temperature", "sign", "importance weights inverted"),
    M("cql_lse_no_outer_temperature", LS, "return temperature * jax.nn.logsumexp(", "return jax.nn.logsumexp(",
      "other", "logsumexp not scaled back by T"),
    # ---------------------------------------------------------------- lagrange.py
    M("lagrange_weights_reversed", LG, "jnp.abs(omega - (tau - f > 0).astype(f.dtype))",
      "jnp.abs(omega - (f - tau > 0).astype(f.dtype))", "sign", "eq. 49 weights reversed"),
    M("lagrange_loss_sign", LG, "constraint_weights(f, tau, omega) * (tau - f))",
      "constraint_weights(f, tau, omega) * (f - tau))", "sign", "lambda loss sign"),
    M("lagrange_loss_sum", LG, "jnp.exp(log_lambda) * jnp.mean(constraint_weights",
      "jnp.exp(log_lambda) * jnp.sum(constraint_weights", "sum-mean", "lambda loss sum over samples"),
    M("lagrange_no_stop_gradient", LG, "  f = jax.lax.stop_gradient(f)\n", "", "stop_gradient",
      "f not detached in the lambda loss"),
    M("tau_schedule_no_cap", LG, "frac = jnp.minimum(jnp.asarray(env_step, jnp.float32) / steps, 1.0)",
      "frac = jnp.asarray(env_step, jnp.float32) / steps", "other", "tau schedule never flattens"),
    # ---------------------------------------------------------------- agents/common.py
    M("critic_loss_frozen_params", COMMON, "q = state.critic.apply_fn(critic_params, batch.observations",
      "q = state.critic.apply_fn(state.critic.params, batch.observations", "ordering",
      "critic loss on the state's params (no gradient)"),
    # ---------------------------------------------------------------- td3.py
    M("td3_target_min_to_mean", TD3, "next_actions).min(0)\n  return losses.td_target",
      "next_actions).mean(0)\n  return losses.td_target", "min-mean", "TD3 target mean of critics"),
    M("td3_target_online_actor", TD3, "state.actor.apply_fn(state.target_actor_params, batch.next_observations)",
      "state.actor.apply_fn(state.actor.params, batch.next_observations)", "ordering", "online actor in the target"),
    M("td3_target_online_critic", TD3, "state.critic.apply_fn(state.target_critic_params, batch.next_observations",
      "state.critic.apply_fn(state.critic.params, batch.next_observations", "ordering", "online critic in the target"),
    M("td3_target_at_s", TD3, "state.actor.apply_fn(state.target_actor_params, batch.next_observations)",
      "state.actor.apply_fn(state.target_actor_params, batch.observations)", "ordering", "pi'(s) instead of pi'(s')"),
    M("td3_discount_one", TD3, "losses.td_target(batch.rewards, batch.masks, c.discount, next_q)",
      "losses.td_target(batch.rewards, batch.masks, 1.0, next_q)", "discount", "gamma = 1"),
    M("td3_actor_min_critics", TD3, "q = state.critic.apply_fn(state.critic.params, batch.observations, actions)[0]\n  loss = -q.mean()",
      "q = state.critic.apply_fn(state.critic.params, batch.observations, actions).min(0)\n  loss = -q.mean()",
      "min-mean", "TD3 actor on min Q instead of Q_1"),
    M("td3_actor_sign", TD3, "  loss = -q.mean()\n  return loss, {\"actor_loss\": loss}",
      "  loss = q.mean()\n  return loss, {\"actor_loss\": loss}", "sign", "TD3 actor descends Q"),
    M("td3_polyak_pre_update_actor", TD3, "losses.polyak(state.target_actor_params, actor.params, tau)",
      "losses.polyak(state.target_actor_params, state.actor.params, tau)", "polyak", "target actor from the pre-step actor"),
    M("td3_polyak_tau_one", TD3, "target_critic_params=losses.polyak(state.target_critic_params, state.critic.params, tau)",
      "target_critic_params=losses.polyak(state.target_critic_params, state.critic.params, 1.0)", "polyak",
      "target critic copied (tau = 1)"),
    M("td3_delay_inverted", TD3, "state.step % state.config.policy_freq == 0", "state.step % state.config.policy_freq != 0",
      "ordering", "delayed actor on the wrong steps"),
    # ---------------------------------------------------------------- td3_bc.py
    M("td3bc_lambda_not_detached", TD3BC, "alpha / jax.lax.stop_gradient(jnp.abs(q).mean())", "alpha / jnp.abs(q).mean()",
      "stop_gradient", "TD3+BC lambda not detached"),
    M("td3bc_bc_sum_dims", TD3BC, "bc = jnp.mean(jnp.square(actions - batch.actions))",
      "bc = jnp.mean(jnp.sum(jnp.square(actions - batch.actions), -1))", "sum-mean", "BC term summed over dims"),
    M("td3bc_q_sign", TD3BC, "loss = -lam * q.mean() + bc", "loss = lam * q.mean() + bc", "sign", "TD3+BC descends Q"),
    M("td3bc_bc_sign", TD3BC, "loss = -lam * q.mean() + bc", "loss = -lam * q.mean() - bc", "sign", "BC term sign"),
    # ---------------------------------------------------------------- sac.py
    M("sac_target_min_to_mean", SAC, "next_actions).min(0)\n  if next_value_hook", "next_actions).mean(0)\n  if next_value_hook",
      "min-mean", "SAC target mean of critics"),
    M("sac_target_online_critic", SAC, "q = state.critic.apply_fn(state.target_critic_params, batch.next_observations",
      "q = state.critic.apply_fn(state.critic.params, batch.next_observations", "ordering", "online critic in the target"),
    M("sac_target_policy_at_s", SAC, "policy(state, batch.next_observations).sample_and_log_prob(seed=key)",
      "policy(state, batch.observations).sample_and_log_prob(seed=key)", "ordering", "a' ~ pi(.|s)"),
    M("sac_backup_entropy_inverted", SAC, "  if state.config.backup_entropy:", "  if not state.config.backup_entropy:",
      "other", "entropy backup switch inverted"),
    M("sac_discount_one", SAC, "losses.td_target(batch.rewards, batch.masks, state.config.discount, next_q)",
      "losses.td_target(batch.rewards, batch.masks, 1.0, next_q)", "discount", "gamma = 1"),
    M("sac_polyak_pre_update", SAC, "losses.polyak(state.target_critic_params, critic.params, state.config.tau)",
      "losses.polyak(state.target_critic_params, state.critic.params, state.config.tau)", "polyak",
      "target from the pre-step critic"),
    M("sac_actor_min_to_mean", SAC, "q = state.critic.apply_fn(state.critic.params, batch.observations, actions).min(0)",
      "q = state.critic.apply_fn(state.critic.params, batch.observations, actions).mean(0)", "min-mean",
      "SAC actor on mean Q"),
    M("sac_autotune_inverted", SAC, "  if not state.config.autotune_alpha:", "  if state.config.autotune_alpha:",
      "other", "temperature tuned when it should not be"),
    # ---------------------------------------------------------------- cql.py
    M("cql_uniform_density_sign", CQL, "jnp.full((b, m), act_dim * np.log(0.5))", "jnp.full((b, m), -act_dim * np.log(0.5))",
      "sign", "uniform log-density sign"),
    M("cql_uniform_density_per_dim", CQL, "jnp.full((b, m), act_dim * np.log(0.5))", "jnp.full((b, m), np.log(0.5))",
      "other", "uniform log-density of one dimension"),
    M("cql_next_actions_at_next_state", CQL, "q_of(next_actions), q_of(cur_actions)",
      "state.critic.apply_fn(critic_params, next_obs, sg(next_actions)), q_of(cur_actions)", "ordering",
      "next-state actions evaluated at s'"),
    M("cql_log_pi_swapped", CQL, "[random_log_density, sg(next_log_pi), sg(cur_log_pi)]",
      "[random_log_density, sg(cur_log_pi), sg(next_log_pi)]", "ordering", "importance weights of next/current swapped"),
    M("cql_actions_not_detached", CQL, "state.critic.apply_fn(critic_params, obs, sg(a))",
      "state.critic.apply_fn(critic_params, obs, a)", "stop_gradient", "sampled actions not detached"),
    M("cql_gap_sign", CQL, "return (ood - q_data).mean(-1)", "return (ood + q_data).mean(-1)", "sign", "gap sign"),
    M("cql_gap_sum_batch", CQL, "return (ood - q_data).mean(-1)", "return (ood - q_data).sum(-1)", "sum-mean",
      "gap summed over the batch"),
    M("cql_penalty_mean_members", CQL, "loss = td + penalty.sum()", "loss = td + penalty.mean()", "sum-mean",
      "penalty mean over critics"),
    M("cql_lagrange_target_sign", CQL, "penalty = alpha_prime * c.cql_alpha * (gap - c.target_action_gap)",
      "penalty = alpha_prime * c.cql_alpha * (gap + c.target_action_gap)", "sign", "Lagrange penalty shift sign"),
    M("cql_alpha_prime_loss_sign", CQL, "return -jnp.mean(a * c.cql_alpha", "return jnp.mean(a * c.cql_alpha",
      "sign", "alpha' descends the penalty"),
    M("cql_alpha_prime_not_detached", CQL, "ap = jax.lax.stop_gradient(alpha_prime(state)) if c.lagrange else 1.0",
      "ap = alpha_prime(state) if c.lagrange else 1.0", "stop_gradient", "alpha' not detached in the critic loss"),
    M("cql_backup_entropy_default", CQL, "  backup_entropy: bool = False\n", "  backup_entropy: bool = True\n",
      "other", "entropy backup on by default"),
    M("cql_actor_after_critic", CQL,
      "  after_actor, actor_info = sac.update_actor(state.sac, batch, k_actor)\n"
      "  s, critic_info = sac.update_critic(state.sac, batch, k_critic, loss_fn=loss_fn,\n"
      "                                     next_value_hook=next_value_hook)\n",
      "  s, critic_info = sac.update_critic(state.sac, batch, k_critic, loss_fn=loss_fn,\n"
      "                                     next_value_hook=next_value_hook)\n"
      "  after_actor, actor_info = sac.update_actor(s, batch, k_actor)\n",
      "ordering", "actor ascends the post-step critic"),
    # ---------------------------------------------------------------- iql.py
    M("iql_value_target_min_to_mean", IQL, "target_qs.mean(0) if c.v_target == \"mean\" else target_qs.min(0)",
      "target_qs.mean(0)", "min-mean", "value target mean of critics"),
    M("iql_next_v_at_s", IQL, "next_v = state.value.apply_fn(state.value.params, batch.next_observations)",
      "next_v = state.value.apply_fn(state.value.params, batch.observations)", "ordering", "V(s) in the Q target"),
    M("iql_awr_sign", IQL, "jnp.exp(beta * advantages)", "jnp.exp(-beta * advantages)", "sign", "AWR weights of -A"),
    M("iql_awr_no_clip", IQL, "jnp.minimum(jnp.exp(beta * advantages), EXP_ADV_MAX)", "jnp.exp(beta * advantages)",
      "other", "AWR weights unclipped"),
    M("iql_actor_sum", IQL, "loss = jnp.mean(weights * per_sample)", "loss = jnp.sum(weights * per_sample)",
      "sum-mean", "AWR loss summed"),
    M("iql_expectile_diff_sign", IQL, "losses.expectile_loss(target_q - v, state.config.expectile)",
      "losses.expectile_loss(v - target_q, state.config.expectile)", "sign", "expectile of V - Q"),
    M("iql_det_mean_dims", IQL, "per_sample = jnp.sum(jnp.square(out - batch.actions), axis=-1)",
      "per_sample = jnp.mean(jnp.square(out - batch.actions), axis=-1)", "sum-mean", "deterministic AWR mean over dims"),
    M("iql_polyak_pre_update", IQL, "losses.polyak(state.target_critic_params, critic.params, c.tau)",
      "losses.polyak(state.target_critic_params, state.critic.params, c.tau)", "polyak", "target from the pre-step critic"),
    M("iql_discount_one", IQL, "losses.td_target(batch.rewards, batch.masks, c.discount, next_v)",
      "losses.td_target(batch.rewards, batch.masks, 1.0, next_v)", "discount", "gamma = 1"),
    M("iql_awr_not_detached", IQL, "return jax.lax.stop_gradient(jnp.minimum(jnp.exp(beta * advantages), EXP_ADV_MAX))",
      "return jnp.minimum(jnp.exp(beta * advantages), EXP_ADV_MAX)", "stop_gradient", "AWR weights not detached"),
    # ---------------------------------------------------------------- awac.py
    M("awac_advantage_sign", AWAC, "advantages = q(batch.actions) - q(pi_actions)", "advantages = q(pi_actions) - q(batch.actions)",
      "sign", "A = Q(s, a~) - Q(s, a)"),
    M("awac_actor_min_to_mean", AWAC, "state.critic.apply_fn(state.critic.params, batch.observations, a).min(0)",
      "state.critic.apply_fn(state.critic.params, batch.observations, a).mean(0)", "min-mean", "advantage on mean Q"),
    M("awac_target_min_to_mean", AWAC, "batch.next_observations, next_actions).min(0)",
      "batch.next_observations, next_actions).mean(0)", "min-mean", "target mean of critics"),
    M("awac_target_no_clip", AWAC, "next_actions = jnp.clip(state.actor.apply_fn(state.actor.params, batch.next_observations)\n                          .sample(seed=k_next), -1.0, 1.0)",
      "next_actions = state.actor.apply_fn(state.actor.params, batch.next_observations).sample(seed=k_next)",
      "other", "target action unclipped"),
    M("awac_actor_sign", AWAC, "loss = -jnp.mean(weights * dist.log_prob(batch.actions))",
      "loss = jnp.mean(weights * dist.log_prob(batch.actions))", "sign", "AWAC actor sign"),
    M("awac_lambda_times", AWAC, "jnp.exp(advantages / awac_lambda)", "jnp.exp(advantages * awac_lambda)", "other",
      "exp(A lambda)"),
    M("awac_polyak_pre_update", AWAC, "target_critic_params=losses.polyak(state.target_critic_params,\n                                                           state.critic.params, c.tau))",
      "target_critic_params=losses.polyak(state.target_critic_params,\n                                                           state.target_critic_params, c.tau))",
      "polyak", "target never moves"),
    M("awac_discount_one", AWAC, "losses.td_target(batch.rewards, batch.masks, c.discount, next_q)",
      "losses.td_target(batch.rewards, batch.masks, 1.0, next_q)", "discount", "gamma = 1"),
    # ---------------------------------------------------------------- bc.py
    M("bc_entropy_sign", BC, "value = nll - state.config.entropy_weight * entropy", "value = nll + state.config.entropy_weight * entropy",
      "sign", "eq. 52 entropy sign"),
    # ---------------------------------------------------------------- o2o/common.py
    M("init_reference_ties_to_on", O2C, "use_on = online_score > offline_score", "use_on = online_score >= offline_score",
      "other", "pi_ref = pi_on on ties"),
    M("refresh_reference_inverted", O2C, "better = score > state.best_score", "better = score < state.best_score",
      "sign", "refresh on a worse score"),
    # ---------------------------------------------------------------- o2td3.py
    M("o2td3_target_min_to_mean", O2TD3, "next_q = state.critic.apply_fn(state.target_critic_params, batch.next_observations, next_a).min(0)\n  targets = losses.td_target(batch.rewards, batch.masks, c.discount, next_q - lam * penalty)",
      "next_q = state.critic.apply_fn(state.target_critic_params, batch.next_observations, next_a).mean(0)\n  targets = losses.td_target(batch.rewards, batch.masks, c.discount, next_q - lam * penalty)",
      "min-mean", "fine-tuning target mean of critics"),
    M("o2td3_target_online_actor", O2TD3, "next_a = smoothed(state, pi(state, state.target_actor_params, batch.next_observations), key)",
      "next_a = smoothed(state, pi(state, state.actor.params, batch.next_observations), key)", "ordering",
      "online actor in the fine-tuning target"),
    M("o2td3_penalty_sign", O2TD3, "next_q - lam * penalty", "next_q + lam * penalty", "sign", "eq. 46 penalty sign"),
    M("o2td3_reeval_online_actor", O2TD3, "next_a = smoothed(state, pi(state, state.offline_actor_params, batch.next_observations), key)",
      "next_a = smoothed(state, pi(state, state.actor.params, batch.next_observations), key)", "ordering",
      "re-evaluation of pi_on"),
    M("o2td3_calibration_inverted", O2TD3, "jnp.where(anchor >= 0, anchor / factor, anchor * factor)",
      "jnp.where(anchor >= 0, anchor * factor, anchor / factor)", "sign", "eq. 15 above the anchor"),
    M("o2td3_align_max", O2TD3, "jnp.minimum(q_star[None], q_noisy)", "jnp.maximum(q_star[None], q_noisy)", "min-mean",
      "eq. 16 max instead of min"),
    M("o2td3_align_actor_sign", O2TD3, "return -q.mean(), {\"actor_loss\": -q.mean()",
      "return q.mean(), {\"actor_loss\": -q.mean()", "sign", "alignment actor descends Q_1"),
    M("o2td3_finetune_actor_sign", O2TD3, "loss = -weight * q.mean() + lam * constraint", "loss = weight * q.mean() + lam * constraint",
      "sign", "fine-tuning actor descends Q"),
    M("o2td3_constraint_sign", O2TD3, "loss = -weight * q.mean() + lam * constraint", "loss = -weight * q.mean() - lam * constraint",
      "sign", "eq. 45 constraint sign"),
    M("o2td3_no_q_normaliser", O2TD3, "weight = q_normalizer(q, 1.0) if c.normalize_actor_q else 1.0", "weight = 1.0",
      "other", "no 1 / mean|Q| in the actor"),
    M("o2td3_polyak_pre_update_actor", O2TD3, "target_actor_params=losses.polyak(s.target_actor_params, actor.params, c.tau)",
      "target_actor_params=losses.polyak(s.target_actor_params, s.actor.params, c.tau)", "polyak", "target actor from the pre-step actor"),
    M("o2td3_discount_one", O2TD3, "targets = losses.td_target(batch.rewards, batch.masks, c.discount, next_q - lam * penalty)",
      "targets = losses.td_target(batch.rewards, batch.masks, 1.0, next_q - lam * penalty)", "discount", "gamma = 1"),
    # ---------------------------------------------------------------- o2sac.py
    M("o2sac_calibration_sign", O2SAC, "calibrated = q_anchor - alpha(state) * (off.log_prob(anchor_a) - off.log_prob(actions))",
      "calibrated = q_anchor + alpha(state) * (off.log_prob(anchor_a) - off.log_prob(actions))", "sign", "eq. 12 sign"),
    M("o2sac_log_ref_no_floor", O2SAC, "f = logp - jnp.maximum(dist(state, state.reference_actor_params, observations).log_prob(a), LOG_REF_MIN)",
      "f = logp - dist(state, state.reference_actor_params, observations).log_prob(a)", "other", "LOG_REF_MIN clamp dropped"),
    M("o2sac_target_entropy_sign", O2SAC, "- alpha_now * next_logp - lam * next_f", "+ alpha_now * next_logp - lam * next_f",
      "sign", "fine-tuning entropy backup sign"),
    M("o2sac_target_kl_sign", O2SAC, "- alpha_now * next_logp - lam * next_f", "- alpha_now * next_logp + lam * next_f",
      "sign", "eq. 38 lambda f sign"),
    M("o2sac_actor_kl_sign", O2SAC, "loss = jnp.mean(alpha(state) * logp - q + lam * f)", "loss = jnp.mean(alpha(state) * logp - q - lam * f)",
      "sign", "eq. 37 lambda f sign"),
    M("o2sac_actor_q_sign", O2SAC, "loss = jnp.mean(alpha(state) * logp - q + lam * f)",
      "loss = jnp.mean(alpha(state) * logp + q + lam * f)", "sign", "O2SAC actor descends Q"),
    M("o2sac_actor_entropy_sign", O2SAC, "loss = jnp.mean(alpha(state) * logp - q + lam * f)",
      "loss = jnp.mean(-alpha(state) * logp - q + lam * f)", "sign", "O2SAC actor entropy sign"),
    M("o2sac_actor_min_to_mean", O2SAC, "q = state.critic.apply_fn(state.critic.params, observations, a).min(0)",
      "q = state.critic.apply_fn(state.critic.params, observations, a).mean(0)", "min-mean", "actor on mean Q"),
    M("o2sac_min_target_q_mean", O2SAC, "return state.critic.apply_fn(state.target_critic_params, observations, actions).min(0)",
      "return state.critic.apply_fn(state.target_critic_params, observations, actions).mean(0)", "min-mean",
      "target mean of critics (every phase)"),
    M("o2sac_reeval_online_actor", O2SAC, "dist(state, state.offline_actor_params, batch.next_observations).sample_and_log_prob(seed=key)",
      "dist(state, state.actor.params, batch.next_observations).sample_and_log_prob(seed=key)", "ordering",
      "re-evaluation of pi_on"),
    M("o2sac_target_entropy_plus", O2SAC, "else -float(batch.actions.shape[-1]))", "else float(batch.actions.shape[-1]))",
      "sign", "target entropy +|A|"),
    M("o2sac_polyak_pre_update", O2SAC, "target_critic_params=losses.polyak(state.target_critic_params, critic.params, c.tau))",
      "target_critic_params=losses.polyak(state.target_critic_params, state.critic.params, c.tau))", "polyak",
      "target from the pre-step critic"),
    M("o2sac_align_max", O2SAC, "return jnp.minimum(calibrated, min_target_q(state, observations, actions)), anchor_a, q_anchor",
      "return jnp.maximum(calibrated, min_target_q(state, observations, actions)), anchor_a, q_anchor", "min-mean",
      "eq. 12 max instead of min"),
    M("o2sac_discount_one", O2SAC, "targets = losses.td_target(batch.rewards, batch.masks, c.discount, next_v)\n\n  # alpha",
      "targets = losses.td_target(batch.rewards, batch.masks, 1.0, next_v)\n\n  # alpha", "discount", "gamma = 1"),
    # ---------------------------------------------------------------- ppo.py
    M("gae_no_terminal_mask", PPO, "deltas = rewards + discount * (1.0 - terminals) * next_values - values",
      "deltas = rewards + discount * next_values - values", "mask", "GAE bootstraps through terminals"),
    M("gae_no_done_reset", PPO, "adv = delta + discount * gae_lambda * (1.0 - done) * next_adv",
      "adv = delta + discount * gae_lambda * next_adv", "mask", "GAE runs across episode ends"),
    M("ppo_surrogate_max", PPO, "surrogate = jnp.minimum(r * advantages", "surrogate = jnp.maximum(r * advantages",
      "min-mean", "optimistic surrogate"),
    M("ppo_entropy_sign", PPO, "loss = surrogate - config.entropy_coef * entropy", "loss = surrogate + config.entropy_coef * entropy",
      "sign", "entropy bonus sign"),
    M("ppo_normalize_ddof0", PPO, "(advantages.std(ddof=1) + ADV_EPS)", "(advantages.std() + ADV_EPS)", "other",
      "advantage std without Bessel"),
    M("ppo_value_target_no_v", PPO, "return advantages, advantages + values", "return advantages, advantages",
      "other", "V-target = A"),
    # ---------------------------------------------------------------- o2ppo.py
    M("o2ppo_mix_sign", O2PPO, "ppo.normalize((advantages + beta * reference_advantage(advantages, aux)) / (1.0 + beta))",
      "ppo.normalize((advantages - beta * reference_advantage(advantages, aux)) / (1.0 + beta))", "sign",
      "eq. 18 auxiliary advantage sign"),
    M("o2ppo_mc_no_mask", RETURNS, "g = r + discount * (1.0 - end) * g_next", "g = r + discount * g_next", "mask",
      "MC returns across episode ends"),
    M("o2ppo_beta_no_floor", O2PPO, "jnp.maximum(1.0 - env_steps / beta_steps, 0.0)", "(1.0 - env_steps / beta_steps)",
      "other", "beta goes negative"),
    M("o2ppo_soft_floor_sign", O2PPO, "jax.nn.softplus(x + floor) - floor", "jax.nn.softplus(x - floor) + floor",
      "sign", "eq. 51 floor sign"),
    M("o2ppo_ref_std_ddof0", O2PPO, "aux * jnp.abs(advantages.std(ddof=1))", "aux * jnp.abs(advantages.std())",
      "other", "A_ref scale without Bessel"),
    M("o2ppo_aux_sum_dims", O2PPO, "config.aux_alpha * soft_floor(g, config.aux_floor).mean(-1)",
      "config.aux_alpha * soft_floor(g, config.aux_floor).sum(-1)", "sum-mean", "A_alpha summed over dims"),
    # ---------------------------------------------------------------- aca.py
    M("aca_target_entropy_sign", ACA, "next_v = next_r + state.weight * next_ref - sac.alpha(state) * next_logp",
      "next_v = next_r + state.weight * next_ref + sac.alpha(state) * next_logp", "sign", "online target entropy sign"),
    M("aca_target_min_to_mean", ACA, "next_r = state.critic.apply_fn(state.target_critic_params, batch.next_observations, next_a).min(0)",
      "next_r = state.critic.apply_fn(state.target_critic_params, batch.next_observations, next_a).mean(0)",
      "min-mean", "online target mean of R"),
    M("aca_target_ref_sign", ACA, "next_v = next_r + state.weight * next_ref - sac.alpha(state) * next_logp",
      "next_v = next_r - state.weight * next_ref - sac.alpha(state) * next_logp", "sign", "w c(log pi0) sign in the target"),
    M("aca_baseline_target_sign", ACA, "next_v = next_logp + next_z - sac.alpha(state) * next_logp",
      "next_v = next_logp + next_z + sac.alpha(state) * next_logp", "sign", "Z target entropy sign"),
    M("aca_ml_sign", ACA, "loss = lam * rl + ml", "loss = lam * rl - ml", "sign", "SAC+ML likelihood sign"),
    M("aca_w_grows", ACA, "jnp.maximum(state.weight - c.w_init / (c.w_decay_k * 1000.0), c.w_min)",
      "jnp.maximum(state.weight + c.w_init / (c.w_decay_k * 1000.0), c.w_min)", "sign", "w_t grows"),
    M("aca_polyak_pre_update", ACA, "state.target_critic_params, critic.params, c.tau))",
      "state.target_critic_params, state.critic.params, c.tau))", "polyak", "online target from the pre-step critic"),
    M("aca_actor_ref_sign", ACA, "loss = jnp.mean(sac.alpha(state) * logp - r - state.weight * ref)",
      "loss = jnp.mean(sac.alpha(state) * logp - r + state.weight * ref)", "sign", "online actor w c(log pi0) sign"),
    # ---------------------------------------------------------------- o3f.py
    M("o3f_argmin", O3F, "best = jnp.argmax(score_candidates(", "best = jnp.argmin(score_candidates(", "sign",
      "pessimistic candidate"),
    M("o3f_omega_sign", O3F, "score = score + state.config.omega * q.std(0)", "score = score - state.config.omega * q.std(0)",
      "sign", "eq. 2 optimism sign"),
    M("o3f_score_min", O3F, "  score = q.mean(0)\n", "  score = q.min(0)\n", "min-mean", "candidates ranked by min Q"),
    # ---------------------------------------------------------------- samg.py
    M("samg_mix_swapped", SAMG, "return (1.0 - weights) * next_values + weights * offline_next_values",
      "return weights * next_values + (1.0 - weights) * offline_next_values", "ordering", "eq. 4 weights swapped"),
    M("samg_threshold_inverted", SAMG, "jnp.where(p_int >= threshold, p_int, 0.0)", "jnp.where(p_int < threshold, p_int, 0.0)",
      "sign", "eq. 3 threshold inverted"),
    M("samg_offline_q_mean", SAMG, "next_actions).min(0)\n\n\ndef _policy_mode", "next_actions).mean(0)\n\n\ndef _policy_mode",
      "min-mean", "Q_off mean of critics"),
    M("samg_penalty_sum", SAMG, "return jnp.mean(weights * gaps, axis=-1)", "return jnp.sum(weights * gaps, axis=-1)",
      "sum-mean", "offline penalty summed over rows"),
    M("samg_denormalise_inverted", SAMG, "observations = observations * state.obs_std + state.obs_mean",
      "observations = (observations - state.obs_mean) / state.obs_std", "other", "raw-state de-normalisation inverted"),
    M("samg_kl_log_std_sign", SAMG, "0.5 * (jnp.square(mean) + jnp.square(std) - 1.0) - jnp.log(std)",
      "0.5 * (jnp.square(mean) + jnp.square(std) - 1.0) + jnp.log(std)", "sign", "C-VAE KL sign"),
    M("samg_weights_not_detached", SAMG, "p = jax.lax.stop_gradient(weights_of(b, next_actions))", "p = weights_of(b, next_actions)",
      "stop_gradient", "p not detached in the target"),
    # ================================================================ comparison methods (issue #21)
    # ---------------------------------------------------------------- Cal-QL (calql.py, cql.py's q_floor, returns.py)
    M("calql_no_floor", CQL, "lambda a: jnp.maximum(q_of(a), q_floor[None, :, None])", "lambda a: q_of(a)",
      "other", "Cal-QL's max(Q, V^mu) lower bound dropped from the policy actions' Q (plain CQL)"),
    M("calql_floor_on_random_actions", CQL, "jnp.concatenate([q_of(random_actions), q_policy(next_actions)",
      "jnp.concatenate([q_policy(random_actions), q_policy(next_actions)", "mask",
      "V^mu bound applied to the uniform actions too"),
    M("calql_switch_keeps_calibration", CALQL, "calibrated=False, cql_alpha=config.cql_alpha_online)",
      "calibrated=True, cql_alpha=config.cql_alpha_online)", "ordering",
      "calibration left on after the offline -> online switch"),
    M("calql_switch_keeps_offline_alpha", CALQL, "cql_alpha=config.cql_alpha_online)", "cql_alpha=config.cql_alpha)",
      "ordering", "offline alpha_cql kept at the switch (not cql_alpha_online)"),
    M("calql_rtg_terminals_only", RETURNS,
      "  ends = episode_end_flags(dataset.size, dataset.episode_starts, dataset.episode_lengths)\n  ends = np.maximum(",
      "  ends = np.asarray(dataset.transitions.terminals, np.float32)\n  ends = np.maximum(", "mask",
      "V^mu segments cut at terminals only (not at truncations / dataset cuts)"),
    M("calql_no_discontinuity_split", RETURNS,
      "  ends = np.maximum(ends, discontinuity_flags(dataset.transitions.observations,\n"
      "                                              dataset.transitions.next_observations))\n", "",
      "mask", "V^mu not split at observation discontinuities"),
    # ---------------------------------------------------------------- pex.py
    M("pex_argmax_selection", PEX, "w = jax.random.categorical(k_w, logits, axis=-1)", "w = jnp.argmax(logits, axis=-1)",
      "other", "Boltzmann (categorical) choice of the policy replaced by the argmax"),
    M("pex_temperature_sign", PEX, "return state.config.inv_temperature * jnp.stack(",
      "return -state.config.inv_temperature * jnp.stack(", "sign", "selection logits -alpha_inv Q: prefers the lower Q"),
    M("pex_pi_beta_trainable", PEX, "return state.replace(actor=state.actor.apply_gradients(grads=g)), {**info, **a_info}",
      "return state.replace(actor=state.actor.apply_gradients(grads=g), offline_actor_params=jax.tree_util.tree_map("
      "lambda p, d: p - state.config.online_actor_lr * d, state.offline_actor_params, g)), {**info, **a_info}",
      "other", "pi_beta not frozen (takes the actor's gradient step)"),
    M("pex_actor_on_batch_actions", PEX, "actions = jax.lax.stop_gradient(chosen.actions)", "actions = batch.actions",
      "ordering", "pi_theta's AWR on the buffer's actions, not the composite policy's"),
    M("pex_actor_before_critic", PEX,
      "  state, info = iql.update(state, batch, key, train_actor=False)\n"
      "  g, a_info = jax.grad(actor_loss, has_aux=True)(state.actor.params, state, batch, key)\n",
      "  g, a_info = jax.grad(actor_loss, has_aux=True)(state.actor.params, state, batch, key)\n"
      "  state, info = iql.update(state, batch, key, train_actor=False)\n",
      "ordering", "pi_theta's step on the pre-update Q', V (before IQL's V/Q/target steps)"),
    # ---------------------------------------------------------------- iql_ft.py
    M("iqlft_offline_schedule_kept", IQLFT, "  return state.replace(actor=with_learning_rate(state.actor, schedule))",
      "  return state", "other", "offline actor optimizer (optax cosine, 0 after T) kept at the switch"),
    M("iqlft_cosine_not_continued", IQLFT, "jnp.cos(jnp.pi * count / offline_steps)",
      "jnp.cos(jnp.pi * jnp.minimum(count, offline_steps) / offline_steps)", "other",
      "actor lr schedule stops at 0 after T (CosineAnnealingLR not continued)"),
    # ---------------------------------------------------------------- off2on.py
    M("off2on_uniform_sampling", OFF2ON, "indices = replay.sum_tree_sample(state.tree, k_rl, batch_size)",
      "indices = jax.random.randint(k_rl, (batch_size,), 0, c.offline_rows + buffer.size)", "other",
      "RL batch uniform over D and the buffer (no balanced replay)"),
    M("off2on_no_priority_clip", OFF2ON, "return jnp.clip(sharpened / normalizer, PRIORITY_MIN, PRIORITY_MAX)",
      "return sharpened / normalizer", "other", "eq. 5 priority clip [0.001, 1000] dropped"),
    M("off2on_no_temperature", OFF2ON,
      "  sharpened = jnp.power(w_batch, 1.0 / temperature)\n"
      "  normalizer = jnp.mean(jnp.power(w_offline, 1.0 / temperature)) + EPS",
      "  sharpened = w_batch\n  normalizer = jnp.mean(w_offline) + EPS", "other", "eq. 5 exponent 1/T dropped"),
    M("off2on_pmax_no_fraction", OFF2ON,
      "return offline_rows * online_fraction / ((1.0 - online_fraction) * ONLINE_ROWS_AT_START)",
      "return offline_rows * online_fraction / ONLINE_ROWS_AT_START", "other", "initial p_max without 1/(1-f)"),
    M("off2on_new_rows_at_one", OFF2ON, "values = jnp.where(offsets < written, state.max_priority, current)",
      "values = jnp.where(offsets < written, 1.0, current)", "other",
      "new online rows enter at priority 1, not the running max"),
    M("off2on_priority_post_update", OFF2ON,
      "w_batch = state.ratio.apply_fn(state.ratio.params, batch.observations, batch.actions)",
      "w_batch = state.ratio.apply_fn(state.ratio.apply_gradients(grads=grads).params, batch.observations, "
      "batch.actions)", "ordering", "priorities from the post-update w_psi"),
    M("off2on_sigma_bar_mean_sigma", OFF2ON,
      "variance = jnp.mean(jnp.square(scales), axis=0) + jnp.mean(jnp.square(locs - loc), axis=0)",
      "variance = jnp.square(jnp.mean(scales, axis=0))", "sum-mean",
      "eq. 6 sigma_bar = mean_i sigma_i (no mixture variance)"),
    M("off2on_js_online_sign", OFF2ON, "return jnp.mean(offline_term) - jnp.mean(online_term)",
      "return jnp.mean(offline_term) + jnp.mean(online_term)", "sign", "eq. 4 online term sign"),
    M("off2on_target_min_all_heads", OFF2ON,
      "next_q = member_min_q(state, state.target_critic_params, batch.next_observations, next_actions)",
      "next_q = state.critic.apply_fn(state.target_critic_params, batch.next_observations, "
      "next_actions).min(0, keepdims=True)", "min-mean", "target min over all N x 2 heads, not per member"),
    M("off2on_actor_min_members", OFF2ON, "q = member_min_q(state, state.critic.params, batch.observations, actions).mean(0)",
      "q = member_min_q(state, state.critic.params, batch.observations, actions).min(0)", "min-mean",
      "actor on min over members instead of their mean"),
    M("off2on_critic_mean_members", OFF2ON,
      "loss = jnp.sum(jnp.mean(jnp.square(q - jax.lax.stop_gradient(targets)[:, None]), axis=-1))",
      "loss = jnp.mean(jnp.mean(jnp.square(q - jax.lax.stop_gradient(targets)[:, None]), axis=-1))",
      "sum-mean", "ensemble critic loss mean over members and twins (not summed)"),
    # ---------------------------------------------------------------- proto.py
    M("proto_eta_frozen", PROTO, "eta=eta_after(c, state.step + 1), step=state.step + 1), info",
      "eta=state.eta, step=state.step + 1), info", "other", "SAC-PROTO eta never decays"),
    M("proto_pi_k_frozen", PROTO,
      "prior_actor_params=losses.polyak(state.prior_actor_params, state.actor.params, c.tau_actor),",
      "prior_actor_params=state.prior_actor_params,", "polyak", "pi_k not updated (no Polyak toward pi)"),
    M("proto_actor_no_kl", PROTO, "loss = losses.sac_actor_loss(sac.alpha(state), log_probs, q) + state.eta * kl.mean()",
      "loss = losses.sac_actor_loss(sac.alpha(state), log_probs, q)", "other",
      "eta KL(pi || pi_k) dropped from the actor loss"),
    M("proto_target_no_kl", PROTO, "return sac.soft_td_target(state, batch, key, next_regularizer=kl_backup(state))",
      "return sac.soft_td_target(state, batch, key, next_regularizer=None)", "other",
      "eta KL dropped from the critic target"),
    M("proto_actor_mean_to_min", PROTO,
      "q = state.critic.apply_fn(state.critic.params, batch.observations, actions).mean(0)",
      "q = state.critic.apply_fn(state.critic.params, batch.observations, actions).min(0)", "min-mean",
      "SAC-PROTO actor on min Q instead of the mean"),
    M("proto_td3_no_mse", PROTO, "loss = -lam * q.mean() + state.eta * trust", "loss = -lam * q.mean()",
      "other", "TD3-PROTO actor's eta MSE(pi, pi_k) term dropped"),
]

# Known equivalent mutants: the mutation cannot change any value or gradient the code computes.
EQUIVALENT: Dict[str, str] = {
    "critic_mse_no_stop_gradient": "every caller builds the targets outside the differentiated function (from "
        "target params, a frozen value or rewards), so d targets / d critic params is already 0.",
    "temperature_no_stop_gradient": "log pi is computed outside the temperature's grad (an array argument), "
        "so it carries no gradient into log alpha either way.",
    "lagrange_no_stop_gradient": "f is an argument of `loss` computed outside `jax.grad` (in `update`), and "
        "the gradient is taken in log lambda only: no path from log lambda to f.",
    "cql_actions_not_detached": "the critic loss is differentiated in the critic params only; the sampled "
        "actions are functions of the actor params and the key, not of the critic params.",
    "cql_alpha_prime_not_detached": "the critic loss is differentiated in the critic params only; alpha' "
        "is a function of log alpha' alone, and its own step uses a separate loss.",
    "iql_awr_not_detached": "the advantages come from the value step's aux output (arrays), not from the "
        "actor params the AWR loss is differentiated in.",
    "samg_weights_not_detached": "p depends on the frozen C-VAE and the batch only; the target is "
        "computed outside every gradient (the base's own stop_gradient / argument passing).",
}

# Survivors that are not equivalent: who owns the missing test (issue #24's split of the gaps).
OWNERS: Dict[str, str] = {
    "o2sac_calibration_sign": "gap 3 (helper B: O2SAC eq. 12 with a non-zero log-ratio)",
    "o2sac_log_ref_no_floor": "gap 3 (helper B: LOG_REF_MIN clamp)",
    "o2sac_target_kl_sign": "gap 3 (helper B: O2SAC lambda f in its target)",
    "o2sac_actor_kl_sign": "gap 3 (helper B: O2SAC lambda f in its actor)",
    "o2td3_penalty_sign": "gap 3 (helper B: O2TD3 target r + gamma m (min Q' - lambda P))",
    "o2td3_constraint_sign": "gap 3 (helper B: O2TD3 actor constraint)",
    "ppo_entropy_sign": "gap 5 (helper B: the entropy bonus's sign)",
    "o2ppo_mix_sign": "gap 5 (helper B: O2PPO's mixed advantage reaches the update)",
    "aca_target_entropy_sign": "gap 6 (helper B: ACA online target)",
    "aca_target_min_to_mean": "gap 6 (helper B: ACA online target)",
    "aca_target_ref_sign": "gap 6 (helper B: ACA online target)",
    "aca_baseline_target_sign": "gap 6 (helper B: ACA/SAC+ML losses)",
    "aca_ml_sign": "gap 6 (helper B: SAC+ML actor loss)",
    "aca_w_grows": "gap 6 (helper B: w_t after k updates)",
    "aca_polyak_pre_update": "gap 6 (helper B: ACA online critic)",
    "aca_actor_ref_sign": "gap 6 (helper B: ACA online actor)",
    "samg_mix_swapped": "gap 6 (helper B: SAMG at p = 1)",
    "samg_offline_q_mean": "gap 6 (helper B: SAMG at p = 1 for CQL and AWAC)",
    "samg_denormalise_inverted": "gap 6 (helper B: non-identity observation statistics)",
    "samg_kl_log_std_sign": "gap 6 (helper B: the C-VAE's Gaussian KL at (m = 1, sigma = 2))",
    "samg_threshold_inverted": "gap 6 (helper B: SAMG weights)",
    "calql_rtg_terminals_only": "issue #21 (lead: test_calql, a truncation whose successor continues "
        "its observations)",
    "off2on_critic_mean_members": "issue #21 (lead: test_off2on, the ensemble critic loss by hand)",
}


# ----------------------------------------------------------------------------- running

def test_files_for(path: str, root: Path) -> List[str]:
  files = FLAGS.tests or TEST_FILES[path]
  return [f for f in files if (root / f).exists()]


def pytest_cmd(files: List[str], deselect: List[str]) -> List[str]:
  cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", DESELECT, "-o", "addopts=",
         "-rf"]
  if not FLAGS.all_failures:
    cmd.append("-x")
  for node in deselect:
    cmd += ["--deselect", node]
  return cmd + files


def run_pytest(root: Path, files: List[str], deselect: List[str], env: dict) -> Tuple[int, float, str, bool]:
  t0 = time.time()
  try:
    res = subprocess.run(["nice", "-n", "5", *pytest_cmd(files, deselect)], cwd=root, env=env,
                         capture_output=True, text=True, timeout=FLAGS.timeout)
    return res.returncode, time.time() - t0, res.stdout + res.stderr, False
  except subprocess.TimeoutExpired as e:
    out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    return -1, time.time() - t0, out, True


FAILED_RE = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)


def failures(output: str) -> List[str]:
  return sorted(set(m.split(" - ")[0] for m in FAILED_RE.findall(output)))


def make_scratch() -> Path:
  root = Path(FLAGS.scratch or tempfile.mkdtemp(prefix="o2o_mutation_"))
  root.mkdir(parents=True, exist_ok=True)
  for name in COPY:
    src, dst = REPO / name, root / name
    if dst.exists():
      shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
    if src.is_dir():
      shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
      shutil.copy2(src, dst)
  return root


def environment(root: Path) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONDONTWRITEBYTECODE="1",
             JAX_COMPILATION_CACHE_DIR=str(root / ".jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.pop("PYTHONPATH", None)
  return env


def check_applicable(root: Path, mutants: List[Mutant]) -> Dict[str, str]:
  """id -> why it is stale (the old text does not occur exactly once)."""
  stale = {}
  for m in mutants:
    n = (root / m.path).read_text().count(m.old)
    if n != 1:
      stale[m.id] = f"'old' text occurs {n} times in {m.path}"
  return stale


def summarise(results: List[dict]) -> dict:
  run = [r for r in results if r["status"] in ("killed", "survived")]
  killed = [r for r in run if r["status"] == "killed"]
  per_module: Dict[str, Dict[str, int]] = {}
  for r in run:
    d = per_module.setdefault(r["path"], {"mutants": 0, "killed": 0})
    d["mutants"] += 1
    d["killed"] += r["status"] == "killed"
  equivalent = [r for r in run if r["status"] == "survived" and r["id"] in EQUIVALENT]
  return {"mutants": len(run), "killed": len(killed), "survived": len(run) - len(killed),
          "equivalent_survivors": len(equivalent),
          "score": len(killed) / len(run) if run else None,
          "score_excluding_equivalent": (len(killed) / (len(run) - len(equivalent))
                                         if len(run) > len(equivalent) else None),
          "per_module": per_module}


def write_report(out: Path, results: List[dict], meta: dict) -> None:
  out.mkdir(parents=True, exist_ok=True)
  order = {m.id: i for i, m in enumerate(MUTANTS)}
  results = sorted(results, key=lambda r: order.get(r["id"], len(order)))
  summary = summarise(results)
  (out / "results.json").write_text(json.dumps({"meta": meta, "summary": summary, "mutants": results},
                                               indent=1))
  pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"
  lines = ["# Mutation score (issue #24)", "",
           f"`python -m benchmarks.mutation --out={meta['out']}` — {meta['started']} to "
           f"{meta.get('finished', '(running)')}, {meta.get('elapsed_min', 0):.1f} min on {meta['machine']}.", "",
           f"**{summary['killed']} of {summary['mutants']} mutants killed: {pct(summary['score'])}** "
           f"({summary['equivalent_survivors']} survivors are equivalent mutants; killed / non-equivalent = "
           f"{pct(summary['score_excluding_equivalent'])}).", "",
           "Each mutant is one literal edit of one file (benchmarks/mutation.py, `MUTANTS`), run in a scratch "
           "copy against the fast test files of its module (pytest -x; slow launcher / crash-resume tests "
           f"deselected: `-k \"{DESELECT}\"`).", ""]
  if meta.get("previous_run"):
    p = meta["previous_run"]
    total = p.get("total_min") or p["elapsed_min"]     # the earlier runs it merged, all together
    here = [f"{len(meta['rerun'])} mutant(s) run again here after new tests "
            f"({', '.join('`%s`' % x for x in meta['rerun'])})"] if meta["rerun"] else []
    if meta.get("new"):
        here.append(f"{len(meta['new'])} new mutant(s) run here "
                    f"({', '.join('`%s`' % x for x in meta['new'])})")
    lines += [f"Merged with the run of {p['started']} to {p['finished']} ({p['elapsed_min']:.1f} min; "
              f"{total + meta.get('elapsed_min', 0):.1f} min in all, earlier merged runs included): "
              f"{'; '.join(here)}; the others carried over.", ""]
  if meta.get("baseline_failures"):
    lines += ["Tests failing on the *unmutated* tree (deselected from every run):", ""]
    lines += [f"- `{t}`" for t in meta["baseline_failures"]] + [""]
  if meta.get("extra_files"):
    lines += [f"Test files present and used: {', '.join('`%s`' % f for f in meta['extra_files'])}.", ""]
  lines += ["## Per module", "", "| module | mutants | killed | score |", "|---|---|---|---|"]
  for path, d in sorted(summary["per_module"].items()):
    lines.append(f"| `{path}` | {d['mutants']} | {d['killed']} | {pct(d['killed'] / d['mutants'])} |")
  survivors = [r for r in results if r["status"] == "survived"]
  lines += ["", "## Survivors", ""]
  if not survivors:
    lines.append("None.")
  else:
    lines += ["| mutant | module | class | what it breaks | reason |", "|---|---|---|---|---|"]
    for r in survivors:
      lines.append(f"| `{r['id']}` | `{r['path']}` | {r['kind']} | {r['what']} | {r['reason']} |")
  stale = [r for r in results if r["status"] == "stale"]
  if stale:
    lines += ["", "## Stale (not run: the code no longer matches)", ""]
    lines += [f"- `{r['id']}` ({r['path']}): {r['reason']}" for r in stale]
  lines += ["", "## Every mutant", "", "| mutant | module | class | result | first failing test | time (s) |",
            "|---|---|---|---|---|---|"]
  for r in results:
    first = r.get("failed_tests", [])[:1]
    lines.append(f"| `{r['id']}` | `{Path(r['path']).name}` | {r['kind']} | {r['status']}"
                 f"{' (timeout)' if r.get('timed_out') else ''} | {('`%s`' % first[0]) if first else ''} | "
                 f"{r.get('seconds', 0):.0f} |")
  (out / "report.md").write_text("\n".join(lines) + "\n")


def main(argv):
  del argv
  previous = {}
  if FLAGS.previous:
    prev = json.loads(Path(FLAGS.previous).read_text())
    previous = {r["id"]: r for r in prev["mutants"]}
    previous_meta = prev["meta"]
  mutants = [m for m in MUTANTS if not FLAGS.only or m.id in FLAGS.only]
  ids = [m.id for m in MUTANTS]
  assert len(ids) == len(set(ids)), "duplicate mutant ids"
  if FLAGS.only and len(mutants) != len(FLAGS.only):
    raise SystemExit(f"unknown mutant ids: {sorted(set(FLAGS.only) - set(ids))}")
  if FLAGS.list:
    for m in mutants:
      print(f"{m.id:36s} {m.path:36s} {m.kind:14s} {m.what}")
    return
  if not FLAGS.out:
    raise SystemExit("--out is required")
  out = Path(FLAGS.out)
  started = time.time()
  root = make_scratch()
  env = environment(root)
  meta = {"out": FLAGS.out, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "scratch": str(root),
          "machine": f"{os.cpu_count()} CPU cores (shared), JAX CPU", "all_failures": FLAGS.all_failures,
          "tests_override": FLAGS.tests}
  stale = check_applicable(root, mutants)
  files_by_mutant = {m.id: test_files_for(m.path, root) for m in mutants}
  meta["extra_files"] = sorted({f for fs in files_by_mutant.values() for f in fs if f in HELPER_FILES})

  # Baseline: the unmutated copy on every file set used; its failures are deselected afterwards.
  all_files = sorted({f for m in mutants if m.id not in stale for f in files_by_mutant[m.id]})
  saved_x, FLAGS.all_failures = FLAGS.all_failures, True
  rc, secs, output, _ = run_pytest(root, all_files, [], env)
  FLAGS.all_failures = saved_x
  baseline_failures = failures(output)
  if rc not in (0, 1) or (rc == 1 and not baseline_failures):
    raise SystemExit(f"the unmutated baseline did not run (rc {rc}):\n{output[-3000:]}")
  meta.update(baseline_seconds=round(secs, 1), baseline_failures=baseline_failures,
              baseline_files=all_files)
  print(f"baseline: {len(baseline_failures)} failing test(s) deselected, {secs:.0f} s", flush=True)

  results = []
  if previous:
    earlier = previous_meta.get("previous_run") or {}
    meta.update(previous_run={**{k: previous_meta.get(k) for k in ("started", "finished", "elapsed_min",
                                                                    "baseline_seconds", "baseline_failures")},
                              "total_min": previous_meta.get("elapsed_min", 0)
                              + (earlier.get("total_min") or earlier.get("elapsed_min") or 0)},
                rerun=[m.id for m in mutants if m.id in previous],
                new=[m.id for m in mutants if m.id not in previous])
    rerun = {m.id for m in mutants}
    results = [dict(previous[m.id], carried_over=True) for m in MUTANTS
               if m.id in previous and m.id not in rerun]
  for i, m in enumerate(mutants):
    rec = {"id": m.id, "path": m.path, "kind": m.kind, "what": m.what, "old": m.old, "new": m.new,
           "test_files": files_by_mutant[m.id]}
    if m.id in stale:
      rec.update(status="stale", reason=stale[m.id])
      results.append(rec)
      continue
    target = root / m.path
    original = target.read_text()
    target.write_text(original.replace(m.old, m.new, 1))
    try:
      rc, secs, output, timed_out = run_pytest(root, files_by_mutant[m.id], baseline_failures, env)
    finally:
      target.write_text(original)
    failed = failures(output)
    if rc == 0:
      status = "survived"
    elif rc == 5:
      status, failed = "error", ["no test ran"]
    else:
      status = "killed"
    rec.update(status=status, seconds=round(secs, 1), timed_out=timed_out, failed_tests=failed,
               returncode=rc)
    if status == "error":
      rec["output_tail"] = output[-2000:]
    if status == "survived":
      rec["reason"] = (f"equivalent: {EQUIVALENT[m.id]}" if m.id in EQUIVALENT else
                       f"missing test: {OWNERS.get(m.id, 'not yet assigned (lead)')}")
    results.append(rec)
    print(f"[{i + 1}/{len(mutants)}] {m.id}: {status} ({secs:.0f} s)"
          f"{' ' + failed[0] if failed and status == 'killed' else ''}", flush=True)
    meta["elapsed_min"] = (time.time() - started) / 60
    write_report(out, results, meta)
  meta.update(finished=time.strftime("%Y-%m-%d %H:%M:%S"), elapsed_min=(time.time() - started) / 60)
  write_report(out, results, meta)
  if not FLAGS.keep_scratch and not FLAGS.scratch:
    shutil.rmtree(root, ignore_errors=True)
  s = summarise(results)
  print(f"score: {s['killed']}/{s['mutants']} killed; report in {out}/report.md")


if __name__ == "__main__":
  app.run(main)
