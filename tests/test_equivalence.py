"""Equivalence tests that can see a leak between seeds or a lossy resume (issue #24 gap 7):

  * vmap = per seed: every agent's update step, over ~20 updates, in the loops' own seed-vmapped
    program (`loops.multi_seed_offline_chunk(loop="vmap")`), with each seed initialised from its own key and fed its own
    PRNG keys, equals that seed run alone;
  * crash and resume (the `crash_at` fault injection) in the re-evaluation and alignment phases and
    in O2SAC's and O2PPO's fine-tuning, with their real states (optimiser moments, lambda, alpha,
    pi_ref and best score, replay buffer, reward scaler): every phase's metrics and final checkpoint
    equal the uninterrupted run's bit for bit;
  * two processes of one seed each (`jax.distributed`) equal one process of two seeds on O2SAC's whole
    chain, whose later phases restore the earlier phases' checkpoints and slice them per process;
  * sampling from an empty replay buffer is an error.

The launcher runs in this process (`experiments.finetune.main` with parsed flags), so its programs
compile once for the reference run and the crashed-and-resumed one.
"""
import csv
import os
import socket
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax import loops
from o2o_jax.data import replay
from o2o_jax.types import Transition, seed_keys, take_index


# ----------------------------------------------------------------------------- vmap = per seed

OBS, ACT, UPDATES, BATCH = 4, 2, 20, 16


def _data(n=64):
  k = jax.random.split(jax.random.PRNGKey(7), 5)
  return Transition(observations=jax.random.normal(k[0], (n, OBS)),
                    actions=jax.random.uniform(k[1], (n, ACT), minval=-0.95, maxval=0.95),
                    rewards=jax.random.normal(k[2], (n,)),
                    next_observations=jax.random.normal(k[3], (n, OBS)),
                    terminals=(jax.random.uniform(k[4], (n,)) < 0.2).astype(jnp.float32))


def _agents():
  """name -> (init(keys) -> seed-stacked states, update step). Each seed is initialised from its own
  key (`seed_keys`), so the seeds start from different networks."""
  from o2o_jax.agents.o2o import aca, o2sac, o2td3, o3f, samg
  from o2o_jax.agents.offline import cql, iql
  from o2o_jax.agents.online import sac, td3

  def plain(module, config):
    return lambda keys: loops.init_states(module, keys, OBS, ACT, config)

  aca_cfg = aca.Config(hidden_dims=(8, 8))
  samg_cfg = samg.Config(base="iql", base_config=iql.Config(hidden_dims=(8, 8)), cvae_hidden_dims=(8,),
                         threshold=0.0)

  def samg_init(keys):   # latent statistics per seed, so that p is in (0, 1) and differs per seed
    states = loops.init_states(samg, keys, OBS, ACT, samg_cfg)
    data = _data()
    means = jax.vmap(lambda st: samg.encoder_means(st.cvae_params, st.config, data.observations,
                                                   data.actions))(states)
    return states.replace(latent_mean=means.mean(1), latent_std=means.std(1))

  o2sac_cfg = o2sac.Config(hidden_dims=(8, 8), critic_hidden_dims=(8, 8), utd=2)
  return {
      # offline
      "cql": (plain(cql, cql.Config(hidden_dims=(8, 8), cql_n_actions=2, lagrange=True)), cql.update),
      # online
      "sac": (plain(sac, sac.Config(hidden_dims=(8, 8))), sac.update),
      "td3": (plain(td3, td3.Config(hidden_dims=(8, 8))), td3.update),
      # O2O
      "o2td3_finetune": (plain(o2td3, o2td3.Config(hidden_dims=(8, 8), critic_hidden_dims=(8, 8))),
                         o2td3.finetune_step),
      "o2sac_finetune": (plain(o2sac, o2sac_cfg), o2sac.finetune_step),
      "aca_online": (lambda keys: jax.jit(jax.vmap(lambda s: aca.start_online(s, ACT)))(
          plain(aca, aca_cfg)(keys)), aca.online_update),
      "o3f": (plain(o3f, o3f.Config(hidden_dims=(8, 8), num_candidates=4)), o3f.update),
      "samg_iql": (samg_init, samg.update),
  }


# Left out to keep the compile time down: TD3+BC (TD3's update, `td3.make_update`), AWAC (no state
# beyond its networks; CQL carries the offline family's seed-level multiplier alpha'), O2SAC's
# alignment and ACA's SAC+ML steps (no seed-level state beyond what their online steps carry).
AGENT_NAMES = ("cql", "sac", "td3", "o2td3_finetune", "o2sac_finetune", "aca_online", "o3f", "samg_iql")


def _slots(tree, i, j):
  """The seed-stacked tree with seeds (i, j)."""
  return jax.tree_util.tree_map(lambda x: jnp.stack([x[i], x[j]]), tree)


def assert_each_seed_alone(program, states, *per_seed):
  """`program(states, *per_seed)` on seeds (0, 1), against the same program on (0, 0) and (1, 1):
  seed i's result (states and metrics) must be exactly what it gets next to a copy of itself, i.e.
  what it computes alone, whatever the other seed holds."""
  both = program(_slots(states, 0, 1), *(_slots(x, 0, 1) for x in per_seed))
  for i in range(2):
    alone = program(_slots(states, i, i), *(_slots(x, i, i) for x in per_seed))
    chex.assert_trees_all_equal(take_index(both, i), take_index(alone, i))
  different = [not np.array_equal(a[0], a[1]) for a in jax.tree_util.tree_leaves(both[0])]
  assert sum(different) > len(different) // 2          # the seeds really are different runs
  return both


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_vmapped_updates_equal_per_seed_updates(name):
  """Two seeds with their own initial states and keys, 20 updates on batches sampled from one shared
  dataset, in two calls of the loops' own seed-vmapped chunk (`multi_seed_offline_chunk(loop="vmap")`:
  `vmap_lockstep`, the dataset unbatched; the accelerators' seed loop, where a leak could hide): each seed's states and metrics after the 20 updates equal, bit for bit,
  what the same program gives that seed next to a copy of itself. Any quantity pooled over the seed
  axis (a batch statistic, a multiplier or temperature, a key, the lockstep counter) would make them
  differ; the second chunk starts from seeds whose multipliers have diverged. (One update of the
  vmapped program against a separately jitted single seed is checked in test_online_agents,
  test_samg, test_ppo and test_aca_o3f.)"""
  init, update = _agents()[name]
  states = init(seed_keys(0, 2))
  program = loops.multi_seed_offline_chunk(loops.make_offline_chunk(update, BATCH, UPDATES // 2),
                                           loop="vmap")
  data = _data()

  def run(states, keys):   # two chunks, as the loops call them (the seeds have diverged by the second)
    states, first = program(loops.unalias(states), keys[:, 0], data)
    states, second = program(states, keys[:, 1], data)
    return states, (first, second)

  assert_each_seed_alone(run, states, jnp.stack([seed_keys(3, 2), seed_keys(4, 2)], axis=1))


def test_o2ppo_vmapped_updates_equal_per_seed_updates():
  """O2PPO: two seeds (own networks, own pi_ref != pi_on, own rollouts and keys), 20 updates of the
  on-policy loop's own seed-vmapped update (`onpolicy.onpolicy_functions`, states donated): each
  seed's result equals, bit for bit, what it gets next to a copy of itself. The rollout-level
  statistics (GAE, std(A) in A_ref, the advantage normalisation over the rollout) stay per seed."""
  from o2o_jax import onpolicy
  from o2o_jax.agents.o2o import o2ppo
  from o2o_jax.agents.online import ppo
  config = o2ppo.Config(hidden_dims=(8, 8), value_hidden_dims=(8, 8), rollout_length=16,
                        num_minibatches=2, epochs=2, beta_steps=160)
  states = jax.jit(jax.vmap(lambda k: o2ppo.init(k, OBS, ACT, config)))(seed_keys(0, 2))
  states = states.replace(reference_actor_params=jax.tree_util.tree_map(
      lambda x: x[::-1] * 1.2 + 0.05, states.actor.params))        # pi_ref != pi_on, per seed
  k = jax.random.split(jax.random.PRNGKey(5), 6)
  shape = (2, UPDATES, 16)
  rollouts = ppo.Rollout(observations=jax.random.normal(k[0], shape + (OBS,)),
                         actions=jax.random.normal(k[1], shape + (ACT,)) * 0.5,
                         log_probs=jnp.full(shape, -1.5), rewards=jax.random.normal(k[2], shape),
                         next_observations=jax.random.normal(k[3], shape + (OBS,)),
                         terminals=(jax.random.uniform(k[4], shape) < 0.1).astype(jnp.float32),
                         dones=(jax.random.uniform(k[5], shape) < 0.2).astype(jnp.float32))
  keys = jax.random.split(jax.random.PRNGKey(6), 2 * UPDATES).reshape(2, UPDATES, 2)
  _, update = onpolicy.onpolicy_functions(o2ppo.explore, o2ppo.update)

  def program(states, rollouts, keys):
    history = []
    for t in range(UPDATES):
      states, metrics = update(loops.unalias(states), take_index(rollouts, (slice(None), t)),
                               keys[:, t])
      history.append(metrics)
    return states, history

  both = assert_each_seed_alone(program, states, rollouts, keys)
  assert [int(x) for x in both[0].env_steps] == [16 * UPDATES] * 2


# ----------------------------------------------------------------------------- launcher in-process

def run_finetune(args):
  """`python -m experiments.finetune <args>` in this process (absl flags parsed, then reset)."""
  from experiments import finetune
  flags = finetune.FLAGS
  flags.unparse_flags()
  try:
    flags(["finetune", *args])
    finetune.main(None)
  finally:
    flags.unparse_flags()


def run_dirs(out, dataset_id, chain):
  """{phase: run dir} of a chain of (phase, agent[, run name]) for seed 0 x 2."""
  ds = dataset_id.replace("/", "_")
  return {phase: out / phase / agent / ds / (rest[0] if rest else "seed0x2")
          for phase, agent, *rest in chain}


def snapshot_step(run_dir):
  steps = [int(p.name) for p in (run_dir / "progress").iterdir() if p.name.isdigit()]
  return max(steps) if steps else None


O2SAC_TINY = ["--agent=o2sac", "--seeds=2", "--budget=quick", "--pretrain_steps=20",
              "--reevaluate_steps=20", "--align_steps=20", "--online_steps=40", "--warmup_steps=10",
              "--eval_every=20", "--eval_episodes=1", "--hidden_dims=8,8", "--critic_hidden=8,8",
              "--batch_size=16", "--utd=2", "--progress=false", "--checkpoint_every=10"]
O2SAC_CHAIN = (("pretrain", "cql"), ("reevaluate", "o2sac"), ("align", "o2sac"), ("finetune", "o2sac"))


@pytest.fixture(scope="module")
def o2sac_reference(tiny_hopper_dataset, tmp_path_factory):
  """The uninterrupted O2SAC chain (CQL pre-training, re-evaluation, alignment, fine-tuning), 2 seeds
  in one process."""
  out = tmp_path_factory.mktemp("o2sac_reference")
  run_finetune([f"--dataset={tiny_hopper_dataset.dataset_id}", f"--out_dir={out}", *O2SAC_TINY])
  return run_dirs(out, tiny_hopper_dataset.dataset_id, O2SAC_CHAIN)


def test_o2sac_chain_resumes_exactly_after_crashes_in_every_phase(o2sac_reference, tiny_hopper_dataset,
                                                                  tmp_path, crash_at, same_outputs,
                                                                  capsys):
  """The same command, killed (fault injection, no snapshot at the crash) in the re-evaluation at
  step 15 (its snapshot: 10), rerun and killed in the alignment at step 15 (snapshot 10), rerun and
  killed in fine-tuning at env step 30 (snapshot 20: the O2SAC state with its lambda, alpha, Adam
  moments, pi_ref and best score, the replay buffer and the evaluation history), then rerun to the
  end: every phase's metrics and result checkpoint equal the uninterrupted run's bit for bit."""
  args = [f"--dataset={tiny_hopper_dataset.dataset_id}", f"--out_dir={tmp_path}", *O2SAC_TINY]
  dirs = run_dirs(tmp_path, tiny_hopper_dataset.dataset_id, O2SAC_CHAIN)
  for phase, at, snapshot in (("reevaluate", 15, 10), ("align", 15, 10), ("finetune", 30, 20)):
    crash_at(phase, at)
    with pytest.raises(Exception, match="crashed by the fault injection"):
      run_finetune(args)
    assert snapshot_step(dirs[phase]) == snapshot, phase
  crash_at(None)
  run_finetune(args)
  printed = capsys.readouterr().out
  for phase, message in (("reevaluate", "resuming from the snapshot at step 10"),
                         ("align", "resuming from the snapshot at step 10"),
                         ("finetune", "resuming from the snapshot at env step 20")):
    assert f"[{phase}] {message}" in printed, (phase, printed[-3000:])
  for phase, ref in o2sac_reference.items():
    same_outputs(dirs[phase], ref)
    assert not (dirs[phase] / "progress").exists()


O2PPO_TINY = ["--agent=o2ppo", "--seeds=2", "--budget=quick", "--pretrain_steps=40",
              "--reevaluate_steps=20", "--online_steps=128", "--ppo_rollout_length=64",
              "--ppo_minibatches=4", "--o2ppo_epochs=2", "--eval_every=64", "--eval_episodes=1",
              "--hidden_dims=8,8", "--o2ppo_value_hidden=8,8", "--batch_size=16",
              "--o2ppo_value_batch_size=16", "--progress=false", "--checkpoint_every=64",
              "--o2ppo_reward_scaling=dynamic"]


def test_o2ppo_finetuning_resumes_exactly_after_a_crash(tiny_hopper_dataset, tmp_path, crash_at,
                                                        same_outputs, capsys):
  """O2PPO's fine-tuning (the o2ppo recipe's finetune phase, the on-policy loop) killed at env step 100, after
  its snapshot at the rollout boundary 64 (the O2PPO state: actor, V and their Adam moments and
  learning-rate counts, pi_ref and best score, env steps; every seed's reward scaler), rerun: the
  metrics, the final checkpoint and every seed's reward-scaler statistics equal the uninterrupted
  run's exactly."""
  from o2o_jax.checkpoints import Checkpointer
  chain = (("pretrain", "iql", "seed0x2-presetnone"), ("reevaluate", "o2ppo"), ("finetune", "o2ppo"))
  ref_out, out = tmp_path / "reference", tmp_path / "crashed"
  run_finetune([f"--dataset={tiny_hopper_dataset.dataset_id}", f"--out_dir={ref_out}", *O2PPO_TINY])
  args = [f"--dataset={tiny_hopper_dataset.dataset_id}", f"--out_dir={out}", *O2PPO_TINY]
  dirs = run_dirs(out, tiny_hopper_dataset.dataset_id, chain)
  crash_at("finetune", 100)
  with pytest.raises(Exception, match="crashed by the fault injection"):
    run_finetune(args)
  assert snapshot_step(dirs["finetune"]) == 64
  crash_at(None)
  run_finetune(args)
  assert "[finetune] resuming from the snapshot at env step 64" in capsys.readouterr().out
  refs = run_dirs(ref_out, tiny_hopper_dataset.dataset_id, chain)
  for phase in dirs:
    same_outputs(dirs[phase], refs[phase])
  meta, ref_meta = (Checkpointer(d["finetune"] / "checkpoints").read_metadata() for d in (dirs, refs))
  for k in ("count", "mean", "m2", "running"):
    assert len(meta[f"reward_scaler_{k}"]) == 2
    np.testing.assert_array_equal(meta[f"reward_scaler_{k}"], ref_meta[f"reward_scaler_{k}"])


# ----------------------------------------------------------------------------- processes

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


_FINETUNE = "import experiments.finetune as f; from absl import app; app.run(f.main)"


def _launch(log_dir, name, *args):
  """One launcher process whose output goes to files (a process blocked on a full pipe would stall
  the other one in a collective)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("O2O_JAX_FAULT", None)
  out, err = open(log_dir / f"{name}.out", "w+"), open(log_dir / f"{name}.err", "w+")
  proc = subprocess.Popen([sys.executable, "-c", _FINETUNE, *args], env=env, stdout=out, stderr=err,
                          text=True)
  proc.logs = (out, err)
  return proc


def _finish(proc, timeout=600):
  proc.wait(timeout=timeout)
  out, err = proc.logs
  for f in (out, err):
    f.flush()
    f.seek(0)
  text, errors = out.read(), err.read()
  out.close()
  err.close()
  assert proc.returncode == 0, errors[-3000:]
  return text


def _per_seed_columns(csv_path):
  with open(csv_path) as f:
    rows = list(csv.DictReader(f))
  keys = sorted(k for k in rows[0] if "/seed" in k)
  assert any(k.endswith("/seed1") for k in keys), keys
  return keys, np.array([[float(r[k]) if r[k] else np.nan for k in keys] for r in rows])


def test_o2sac_two_processes_of_one_seed_equal_one_process_of_two(o2sac_reference, tiny_hopper_dataset,
                                                                  tmp_path):
  """O2SAC's whole chain over `jax.distributed` (2 processes x 1 seed) against the one-process run of
  2 seeds: every later phase restores the previous phase's checkpoint of both seeds and slices this
  process's seed out of it (`runs.restore_result`), and process 0 gathers and writes every seed.
  Per-seed metrics and every phase's result checkpoint agree (float tolerance: a vmap of 1 vs 2)."""
  from o2o_jax import runs
  from o2o_jax.agents import registry
  from o2o_jax.checkpoints import Checkpointer
  port = _free_port()
  procs = [_launch(tmp_path, f"p{i}", f"--dataset={tiny_hopper_dataset.dataset_id}",
                   f"--out_dir={tmp_path / 'multi'}", *O2SAC_TINY, "--num_processes=2",
                   f"--coordinator_address=localhost:{port}", f"--process_id={i}") for i in range(2)]
  printed = [_finish(p) for p in procs]
  assert all("final fine-tuned" in out for out in printed)
  dirs = run_dirs(tmp_path / "multi", tiny_hopper_dataset.dataset_id, O2SAC_CHAIN)
  for (phase, agent_name), run_dir in zip(O2SAC_CHAIN, dirs.values()):
    ref = o2sac_reference[phase]
    keys_m, m = _per_seed_columns(run_dir / "metrics.csv")
    keys_s, s = _per_seed_columns(ref / "metrics.csv")
    assert keys_m == keys_s, phase
    np.testing.assert_allclose(m, s, rtol=1e-4, atol=1e-4, err_msg=phase)
    cfg = runs.read_config(ref)
    agent = registry.get(agent_name)
    config = runs.config_from_dict(agent.Config, cfg["agent_config"])
    meta = Checkpointer(ref / "checkpoints").read_metadata()
    template = loops.init_shapes(agent, seed_keys(0, 2), meta["obs_dim"], meta["act_dim"], config)
    (state_m, _, step_m), (state_s, _, step_s) = (Checkpointer(d / "checkpoints").restore(template)
                                                  for d in (run_dir, ref))
    assert step_m == step_s, phase
    for x, y in zip(jax.tree_util.tree_leaves(state_m), jax.tree_util.tree_leaves(state_s)):
      assert x.shape[0] == 2
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-4, err_msg=phase)
    assert not (run_dir / "progress").exists()


# ----------------------------------------------------------------------------- replay buffer

def test_sampling_an_empty_replay_buffer_is_an_error():
  """A buffer that holds no transition has nothing to sample: `replay.sample` (and the online part of
  `replay.sample_mixed`) must raise instead of returning the zero rows of its unfilled storage, which
  would train on fake transitions (r = 0, s = s' = 0, a = 0, not terminal)."""
  empty = replay.init(4, 3, 2)
  key = jax.random.PRNGKey(0)
  with pytest.raises(Exception, match="empty"):
    replay.sample(empty, key, 5)
  offline = Transition(jnp.ones((6, 3)), jnp.ones((6, 2)), jnp.ones(6), jnp.ones((6, 3)), jnp.zeros(6))
  with pytest.raises(Exception, match="empty"):
    replay.sample_mixed(offline, empty, key, 4, 0.5)
