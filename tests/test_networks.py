"""Network building blocks: tanh-Gaussian densities, actor/critic shapes, parameters and inits.

XLA compile time dominates on CPU: all tests share the same small shapes (batch 4, obs 5, act 3,
hidden (8, 8)) so eagerly dispatched ops are compiled once for the whole module.
"""
from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2o_jax.networks import (MLP, TANH_CLIP_EPS, Critic, CriticEnsemble, DeterministicActor,
                              GaussianActor, TanhGaussian, TanhGaussianActor, ValueEnsemble, ValueNet,
                              count_params, first_critic, init_options, orthogonal,
                              tanh_gaussian_log_prob_reference)

BATCH, OBS_DIM, ACT_DIM, HIDDEN = 4, 5, 3, (8, 8)
KEY = jax.random.PRNGKey(0)

_log_prob = jax.jit(lambda loc, scale, a: TanhGaussian(loc, scale).log_prob(a))
_reference = jax.jit(tanh_gaussian_log_prob_reference)


@jax.jit
def _sample(loc, scale, key):
  dist = TanhGaussian(loc, scale)
  actions, log_prob = dist.sample_and_log_prob(seed=key)
  return actions, log_prob, dist.distribution.sample(seed=key), dist.mode()


def _numeric_log_prob(loc, scale, action, h=1e-6):
  """log p(a) by change of variables in float64, with d tanh/du from central finite differences."""
  loc, scale, action = (np.asarray(x, np.float64) for x in (loc, scale, action))
  u = np.arctanh(action)
  log_normal = -0.5 * ((u - loc) / scale) ** 2 - 0.5 * np.log(2 * np.pi) - np.log(scale)
  jac = (np.tanh(u + h) - np.tanh(u - h)) / (2 * h)
  return np.sum(log_normal - np.log(jac), axis=-1)


def _inputs():
  obs = jax.random.normal(jax.random.PRNGKey(1), (BATCH, OBS_DIM)) * 3.0
  act = jnp.linspace(-1, 1, BATCH * ACT_DIM, dtype=jnp.float32).reshape(BATCH, ACT_DIM)
  return obs, act


@pytest.fixture(scope="module")
def dist_params():
  rng = np.random.default_rng(0)
  loc = rng.normal(0.0, 0.7, (BATCH, ACT_DIM)).astype(np.float32)
  scale = np.exp(rng.uniform(-1.5, 0.5, (BATCH, ACT_DIM))).astype(np.float32)
  actions = rng.uniform(-0.97, 0.97, (BATCH, ACT_DIM)).astype(np.float32)
  return loc, scale, actions


def test_tanh_gaussian_log_prob_matches_reference_and_numeric(dist_params):
  loc, scale, actions = dist_params
  log_prob = _log_prob(loc, scale, actions)
  chex.assert_shape(log_prob, (BATCH,))
  np.testing.assert_allclose(log_prob, _reference(loc, scale, actions), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(log_prob, _numeric_log_prob(loc, scale, actions), rtol=1e-4, atol=1e-3)
  # Hand value: loc 0, scale 1, a = 0 -> log N(0; 0, 1) - log tanh'(0) = -log(2 pi)/2 per dimension.
  zeros = np.zeros((BATCH, ACT_DIM), np.float32)
  np.testing.assert_allclose(_log_prob(zeros, zeros + 1, zeros), -1.5 * np.log(2 * np.pi),
                             rtol=1e-6)


def test_tanh_gaussian_density_integrates_to_one():
  loc, scale = jnp.array([0.3]), jnp.array([0.6])
  grid = np.linspace(-1 + TANH_CLIP_EPS, 1 - TANH_CLIP_EPS, 20001, dtype=np.float32)[:, None]
  density = np.exp(np.asarray(_log_prob(loc, scale, grid), np.float64))
  np.testing.assert_allclose(np.trapezoid(density, grid[:, 0].astype(np.float64)), 1.0, atol=2e-3)


def test_tanh_gaussian_log_prob_at_box_boundary_is_finite(dist_params):
  loc, scale, actions = dist_params
  actions = actions.copy()
  actions[0, 0], actions[1, 2] = 1.0, -1.0   # dataset actions exactly on the box boundary
  value = np.asarray(_log_prob(loc, scale, actions))
  assert np.isfinite(value).all()
  unclipped = np.asarray(_reference(loc, scale, actions))
  assert not np.isfinite(unclipped[:2]).any() and np.isfinite(unclipped[2:]).all()
  clipped = actions.copy()
  clipped[0, 0], clipped[1, 2] = 1 - TANH_CLIP_EPS, -(1 - TANH_CLIP_EPS)
  # float64 change of variables at the clipped action; the float32 reference loses ~1e-3 to the
  # cancellation in 1 - tanh(u)^2 near saturation.
  np.testing.assert_allclose(value, _numeric_log_prob(loc, scale, clipped), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(value, _reference(loc, scale, clipped), rtol=1e-4, atol=5e-3)
  # Gradients through the clip are finite too (a BC/CQL loss on boundary dataset actions).
  grad = jax.jit(jax.grad(lambda m, s, a: _log_prob(m, s, a).sum()))(loc, scale, actions)
  assert np.isfinite(grad).all()


def test_sample_and_log_prob_uses_pre_tanh_sample(dist_params):
  loc, scale, _ = dist_params
  actions, log_prob, pre_tanh, _ = _sample(loc, scale, jax.random.PRNGKey(3))
  np.testing.assert_allclose(actions, np.tanh(np.asarray(pre_tanh)), rtol=1e-6, atol=1e-7)
  u = np.asarray(pre_tanh, np.float64)
  expected = np.sum(-0.5 * ((u - loc) / scale) ** 2 - 0.5 * np.log(2 * np.pi) - np.log(scale)
                    - np.log(1.0 - np.tanh(u) ** 2), axis=-1)
  np.testing.assert_allclose(log_prob, expected, rtol=1e-5, atol=1e-4)
  # For non-saturated samples, the reference (which atanh's the action) agrees as well.
  rows = (np.abs(np.asarray(actions)) < 0.99).all(axis=-1)
  assert rows.sum() >= 2
  np.testing.assert_allclose(np.asarray(log_prob)[rows],
                             np.asarray(_reference(loc, scale, actions))[rows], rtol=1e-4, atol=1e-3)


def test_sample_and_log_prob_saturated_sample_is_finite():
  # Base samples near 20 saturate tanh: to exactly 1.0 in float32 with XLA's default optimisation,
  # to 1 - 2e-7 at the suite's -O0 (its tanh inside a fusion is another approximation). Either way
  # the density must be the one at the pre-tanh sample, finite; an atanh of the action would give
  # inf (default) or a pre-tanh value near 8 instead of 20 (-O0), so the value check catches both.
  loc = np.full((BATCH, ACT_DIM), 20.0, np.float32)
  scale = np.full((BATCH, ACT_DIM), 1e-3, np.float32)
  actions, log_prob, pre_tanh, mode = _sample(loc, scale, jax.random.PRNGKey(0))
  np.testing.assert_allclose(actions, 1.0, atol=1e-6)
  assert np.isfinite(log_prob).all()
  np.testing.assert_allclose(pre_tanh, 20.0, atol=0.01)
  u = np.asarray(pre_tanh, np.float64)
  # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable where 1 - tanh(u)^2 underflows.
  log_det = 2 * (np.log(2.0) - u - np.logaddexp(0.0, -2 * u))
  expected = np.sum(-0.5 * ((u - loc) / scale) ** 2 - 0.5 * np.log(2 * np.pi) - np.log(scale)
                    - log_det, axis=-1)
  np.testing.assert_allclose(log_prob, expected, rtol=1e-4)
  np.testing.assert_allclose(mode, np.tanh(20.0), atol=1e-6)


def test_critic_ensemble_shape_and_independent_members():
  obs, act = _inputs()
  # One hidden layer keeps the (vmapped-init) compile cheap; the member structure is the same.
  net = CriticEnsemble(num=3, hidden_dims=HIDDEN[:1])

  @jax.jit
  def run(obs, act):
    params = net.init(KEY, obs, act)
    member = jax.tree_util.tree_map(lambda x: x[1], params["params"]["VmapCritic_0"])
    return (params, net.apply(params, obs, act),
            Critic(HIDDEN[:1]).apply({"params": member}, obs, act))

  params, q, q_member = run(obs, act)
  chex.assert_shape(q, (3, BATCH))
  kernel = params["params"]["VmapCritic_0"]["MLP_0"]["Dense_0"]["kernel"]
  chex.assert_shape(kernel, (3, OBS_DIM + ACT_DIM, 8))
  assert not np.allclose(kernel[0], kernel[1]) and not np.allclose(kernel[1], kernel[2])
  assert not np.allclose(q[0], q[1]) and not np.allclose(q[1], q[2])
  # Each member is exactly a Critic with that member's slice of the parameters.
  np.testing.assert_allclose(q_member, q[1], rtol=1e-5, atol=1e-7)


def compiled_flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


@pytest.mark.parametrize("layer_norm", [False, True])
def test_first_critic_is_member_one_computed_alone(layer_norm):
  """`first_critic` is Q_1 of the ensemble, what indexing the whole ensemble gives, at about
  half the cost of its action-gradient (TD3's actor step; CORL `td3_bc.py` `TD3_BC.train` evaluates
  `self.critic_1(state, pi)` only). A function that is not a `CriticEnsemble`'s apply is applied whole."""
  obs, act = _inputs()
  net = CriticEnsemble(num=2, hidden_dims=HIDDEN, layer_norm=layer_norm)
  params = jax.jit(net.init)(KEY, obs, act)
  # (bit-equal on host D; a tolerance, since a batch-1 and a batch-2 dot may take other kernels)
  np.testing.assert_allclose(first_critic(net.apply, params, obs, act), net.apply(params, obs, act)[0],
                             rtol=1e-6, atol=1e-7)
  whole = jax.grad(lambda a: net.apply(params, obs, a)[0].sum())
  alone = jax.grad(lambda a: first_critic(net.apply, params, obs, a).sum())
  np.testing.assert_allclose(alone(act), whole(act), rtol=1e-6, atol=1e-7)
  assert compiled_flops(alone, act) < 0.6 * compiled_flops(whole, act)    # measured 0.49
  other = lambda p, o, a: jnp.stack([a.sum(-1), -a.sum(-1)])
  np.testing.assert_array_equal(first_critic(other, None, obs, act), act.sum(-1))


def test_critic_and_value_shapes():
  obs, act = _inputs()
  critic, value, value_tanh = Critic(HIDDEN), ValueNet(HIDDEN), ValueNet(HIDDEN, tanh_activation=True)

  def run(obs, act):
    v_params = value.init(KEY, obs)
    return (critic.apply(critic.init(KEY, obs, act), obs, act), value.apply(v_params, obs),
            value.apply(v_params, obs[0]), value_tanh.apply(v_params, obs))

  q, v, v_single, v_tanh = run(obs, act)
  chex.assert_shape([q, v, v_tanh], (BATCH,))
  chex.assert_shape(v_single, ())
  np.testing.assert_allclose(v_single, v[0], rtol=1e-5, atol=1e-7)
  # tanh_activation: the hidden layers really are tanh (same params, different outputs).
  assert not np.allclose(v_tanh, v)


def test_tanh_gaussian_actor_learnable_log_std_scale():
  obs, _ = _inputs()
  actor = TanhGaussianActor(ACT_DIM, HIDDEN, learnable_log_std_scale=True)

  def run(obs):
    params = actor.init(KEY, obs)
    dist = actor.apply(params, obs)

    def stddev(multiplier, offset, temperature=1.0):
      p = {"params": {**params["params"], "log_std_multiplier": jnp.asarray(multiplier),
                      "log_std_offset": jnp.asarray(offset)}}
      return actor.apply(p, obs, temperature).distribution.stddev()

    return (params, dist.distribution.loc, dist.distribution.stddev(), dist.mode(),
            stddev(0.0, -2.0), stddev(0.0, 10.0), stddev(0.0, -10.0, 0.5))

  params, loc, std, mode, std_offset, std_max, std_min_tempered = run(obs)
  p = params["params"]
  chex.assert_shape([p["log_std_multiplier"], p["log_std_offset"]], ())
  assert float(p["log_std_multiplier"]) == 1.0 and float(p["log_std_offset"]) == -1.0
  plain = jax.eval_shape(TanhGaussianActor(ACT_DIM, HIDDEN).init, KEY, obs)["params"]
  assert "log_std_multiplier" not in plain and "log_std_offset" not in plain
  chex.assert_shape([loc, std, mode], (BATCH, ACT_DIM))
  assert (std > 0).all() and not np.allclose(std[0], std[1])  # state-dependent log-std head
  # With multiplier 0 the log-std is exactly the offset, for every observation...
  np.testing.assert_allclose(std_offset, np.full((BATCH, ACT_DIM), np.exp(-2.0)), rtol=1e-6)
  # ...clipped to [log_std_min, log_std_max] = [-5, 2], then scaled by the temperature.
  np.testing.assert_allclose(std_max, np.exp(2.0), rtol=1e-6)
  np.testing.assert_allclose(std_min_tempered, 0.5 * np.exp(-5.0), rtol=1e-6)
  np.testing.assert_allclose(mode, np.tanh(loc), rtol=1e-6)


def test_gaussian_actor_state_independent_std():
  obs, _ = _inputs()
  actor = GaussianActor(ACT_DIM, HIDDEN, init_log_std=-0.5)

  def run(obs):
    params = actor.init(KEY, obs)

    def apply(log_std, temperature=1.0):
      p = {"params": {**params["params"], "log_std": jnp.asarray(log_std, jnp.float32)}}
      dist = actor.apply(p, obs, temperature)
      return dist.mean(), dist.stddev()

    return params, apply([-1.0, 0.0, 0.5]), apply([-1.0, 0.0, 0.5], 0.1), apply([-30.0, 5.0, 0.0])

  params, (mean, std), (_, std_cold), (_, std_clipped) = run(obs)
  np.testing.assert_array_equal(params["params"]["log_std"], np.full(ACT_DIM, -0.5, np.float32))
  chex.assert_shape([mean, std], (BATCH, ACT_DIM))
  # The same std for every observation, while the mean does depend on the observation.
  np.testing.assert_allclose(std, np.broadcast_to(np.exp([-1.0, 0.0, 0.5]), (BATCH, ACT_DIM)),
                             rtol=1e-6)
  assert not np.allclose(mean[0], mean[1])
  assert (np.abs(mean) <= 1.0).all()  # tanh_mean
  np.testing.assert_allclose(std_cold, 0.1 * std, rtol=1e-6)
  np.testing.assert_allclose(std_clipped[0], np.exp([-20.0, 2.0, 0.0]), rtol=1e-6)  # [-20, 2]


def test_deterministic_actor_output_in_box():
  obs, _ = _inputs()
  actor = DeterministicActor(ACT_DIM, HIDDEN)

  def run(obs):
    params = actor.init(KEY, obs)
    # Blow the weights up: the pre-activation is huge, the output saturates but stays in [-1, 1].
    big = jax.tree_util.tree_map(lambda x: x * 1000.0, params)
    return actor.apply(params, obs), actor.apply(big, obs)

  actions, saturated = (np.asarray(x) for x in run(obs))
  chex.assert_shape([actions, saturated], (BATCH, ACT_DIM))
  assert (np.abs(saturated) <= 1.0).all()
  assert (np.abs(saturated) > 0.99).mean() > 0.5


def test_mlp_layer_norm_params():
  obs, _ = _inputs()
  mlp_inner, mlp_final = MLP(HIDDEN, layer_norm=True), MLP(HIDDEN, layer_norm=True,
                                                           activate_final=True)

  def run(obs):
    p_inner, p_final = mlp_inner.init(KEY, obs), mlp_final.init(KEY, obs)
    return p_inner, p_final, mlp_final.apply(p_final, obs)

  p_inner, p_final, out = run(obs)
  # LayerNorm after every activated layer: 1 without activate_final, 2 with it.
  assert sorted(p_inner["params"]) == ["Dense_0", "Dense_1", "LayerNorm_0"]
  assert sorted(p_final["params"]) == ["Dense_0", "Dense_1", "LayerNorm_0", "LayerNorm_1"]
  for name in ("LayerNorm_0", "LayerNorm_1"):
    assert set(p_final["params"][name]) == {"scale", "bias"}
    chex.assert_shape(p_final["params"][name]["scale"], (8,))
  assert sorted(jax.eval_shape(MLP(HIDDEN).init, KEY, obs)["params"]) == ["Dense_0", "Dense_1"]
  chex.assert_shape(out, (BATCH, 8))
  assert (out >= 0).all()  # ReLU after the final LayerNorm


def test_orthogonal_init_kernels():
  # Critic input is obs 5 + act 3 = 8 = width: both hidden kernels are square.
  obs, act = _inputs()
  params = Critic(HIDDEN, orthogonal_init=True).init(KEY, obs, act)["params"]
  width = HIDDEN[0]
  for name in ("Dense_0", "Dense_1"):
    w = np.asarray(params["MLP_0"][name]["kernel"], np.float64)
    chex.assert_shape(w, (width, width))
    np.testing.assert_allclose(w.T @ w, 2.0 * np.eye(width), atol=1e-5)  # scale sqrt(2)
    np.testing.assert_array_equal(params["MLP_0"][name]["bias"], 0.0)
  # The critic head uses scale 1: its (width, 1) kernel is a unit vector.
  head = np.asarray(params["Dense_0"]["kernel"], np.float64)
  np.testing.assert_allclose(head.T @ head, [[1.0]], atol=1e-6)


@pytest.mark.parametrize("shape", [(5, 8), (8, 8), (8, 3), (8, 1), (2, 4, 8)])
def test_orthogonal_equals_flax_initializer_without_a_qr(shape):
  """Same matrix as flax's QR-based initializer (same key), but no LAPACK call: batched under a
  seed vmap, jaxlib's QR deadlocked XLA's 2-thread CPU pool (BUILD_NOTES)."""
  import flax.linen as nn
  ours = orthogonal(1.5)(KEY, shape)
  np.testing.assert_allclose(ours, nn.initializers.orthogonal(1.5)(KEY, shape), atol=1e-5)
  jaxpr = str(jax.make_jaxpr(jax.vmap(lambda k: orthogonal()(k, shape)))(jax.random.split(KEY, 3)))
  for primitive in (r"\bqr\b", "householder_product", "custom_call"):
    assert not re.search(primitive, jaxpr), primitive


def test_default_init_is_pytorch_linear_uniform():
  """The "torch" scheme: PyTorch `nn.Linear.reset_parameters` (`kaiming_uniform_(a=sqrt(5))`, i.e.
  U(+-1/sqrt(fan_in))) on the kernels, the init of every layer of d3rlpy's default encoders and heads
  (ACA's reference) and of CORL's TD3+BC/IQL MLPs. Biases are 0 here (PyTorch draws them from the
  same uniform: a recorded deviation)."""
  obs, act = _inputs()
  params = Critic(HIDDEN, **init_options("torch")).init(KEY, obs, act)["params"]
  np.testing.assert_array_equal(params["MLP_0"]["Dense_0"]["bias"], 0.0)
  w = np.asarray(params["MLP_0"]["Dense_0"]["kernel"])  # fan_in 8
  bound = 1.0 / np.sqrt(OBS_DIM + ACT_DIM)
  assert np.abs(w).max() <= bound
  assert np.abs(w).max() > 0.8 * bound  # uniform over the whole range, not a narrow normal
  np.testing.assert_allclose(w.std(), bound / np.sqrt(3.0), rtol=0.25)
  gram = w.T @ w  # not orthogonal: W^T W is not a multiple of I
  assert not np.allclose(gram, np.diag(np.diag(gram)), atol=1e-2)


def _dense_layers(tree, prefix=""):
  """{path: {"kernel", "bias"}} of every Dense layer in a parameter tree."""
  out = {}
  for name, sub in tree.items():
    if isinstance(sub, dict) and "kernel" in sub:
      out[prefix + name] = sub
    elif isinstance(sub, dict):
      out.update(_dense_layers(sub, prefix + name + "/"))
  return out


def assert_orthogonal(kernel, gain):
  """PyTorch's `orthogonal_(W, gain)` of a (out, in) weight, seen as flax's (in, out) kernel K: the
  shorter side is orthonormal up to `gain`, i.e. K K^T = gain^2 I (in <= out) or K^T K = gain^2 I."""
  k = np.asarray(kernel, np.float64)
  gram = k @ k.T if k.shape[0] <= k.shape[1] else k.T @ k
  np.testing.assert_allclose(gram, gain ** 2 * np.eye(gram.shape[0]), atol=1e-5)


def test_ocr_cft_init_is_orthogonal_gain_one_on_every_layer_including_the_head():
  """Official OCR-CFT `net.py`, `MLP.__init__`: `for submodule in layers: if isinstance(submodule,
  nn.Linear): orthogonal_net(submodule)`, and `orthogonal_net(layer, gain=1.0)` is
  `nn.init.orthogonal_(layer.weight, gain=gain); nn.init.constant_(layer.bias, 0)`: every Linear,
  the output layer included, orthogonal with gain 1.0 and bias 0 (`CriticFunction`,
  `ValueFunction`, `GaussianPolicy`, `DeterministicPolicy` are built on it)."""
  obs, act = _inputs()
  opts = init_options("ocr_cft")
  nets = {
      "critic": (CriticEnsemble(2, HIDDEN, layer_norm=True, **opts), (obs, act)),   # O2SAC/O2TD3 critic
      "value": (ValueEnsemble(2, (8, 4), **opts), (obs,)),                          # in 5 -> 8 -> 4 -> 1
      "deterministic": (DeterministicActor(ACT_DIM, HIDDEN, **opts), (obs,)),
      "gaussian": (GaussianActor(ACT_DIM, HIDDEN, **opts), (obs,)),
  }
  for name, (net, args) in nets.items():
    params = jax.jit(net.init)(KEY, *args)["params"]
    layers = _dense_layers(params)
    assert len(layers) == 3, (name, sorted(layers))
    for path, layer in layers.items():
      kernel = np.asarray(layer["kernel"])
      for member in kernel.reshape(-1, *kernel.shape[-2:]):                         # ensembles
        assert_orthogonal(member, 1.0)
      np.testing.assert_array_equal(layer["bias"], 0.0, err_msg=f"{name} {path}")
  # The head in particular: Q's (width, 1) kernel is a unit vector (gain 1, not CORL's 1e-2) ...
  head = jax.jit(nets["critic"][0].init)(KEY, obs, act)["params"]["VmapCritic_0"]["Dense_0"]["kernel"]
  np.testing.assert_allclose(np.linalg.norm(np.asarray(head)[:, :, 0], axis=-1), [1.0, 1.0], rtol=1e-5)
  # ... and the hidden layers have gain 1, not sqrt 2: the first critic kernel (8 x 8) is orthogonal.
  first = jax.jit(nets["critic"][0].init)(KEY, obs, act)["params"]["VmapCritic_0"]["MLP_0"]["Dense_0"]
  assert_orthogonal(first["kernel"][0], 1.0)


def test_orthogonal_head_scale_and_hidden_scale_options():
  """The generic gains: `head_scale` sets the output layer's orthogonal gain (e.g. CORL `cql.py`,
  `FullyConnectedQFunction`: `init_module_weights(self.network, orthogonal_init)` puts gain 1e-2 on
  the last layer), `hidden_scale` the hidden layers'; without them the defaults are unchanged."""
  obs, act = _inputs()
  p = jax.jit(Critic(HIDDEN, orthogonal_init=True, head_scale=1e-2, hidden_scale=0.5).init)(KEY, obs, act)
  assert_orthogonal(p["params"]["Dense_0"]["kernel"], 1e-2)
  for name in ("Dense_0", "Dense_1"):
    assert_orthogonal(p["params"]["MLP_0"][name]["kernel"], 0.5)
  actor = jax.jit(TanhGaussianActor(ACT_DIM, HIDDEN, orthogonal_init=True).init)(KEY, obs)["params"]
  for name in ("Dense_0", "Dense_1"):              # both heads at the actor's own 1e-2
    assert_orthogonal(actor[name]["kernel"], 1e-2)
  assert_orthogonal(actor["MLP_0"]["Dense_1"]["kernel"], np.sqrt(2.0))
  # Without orthogonal_init, head_scale is CORL's other branch, xavier_uniform(gain) on the output
  # layer (CORL `cql.py` / official `net.py`, `TanhGaussianPolicy`: `init_module_weights(self.base_network)`
  # leaves the hidden layers at PyTorch's default and sets `xavier_uniform_(module[-1].weight, gain=1e-2)`).
  wide = (64, 64)
  tgp = jax.jit(TanhGaussianActor(ACT_DIM, wide, **init_options("tanh_gaussian_policy")).init)(KEY, obs)
  tgp = tgp["params"]
  bound = 1e-2 * np.sqrt(6.0 / (wide[-1] + ACT_DIM))
  for name in ("Dense_0", "Dense_1"):
    k = np.asarray(tgp[name]["kernel"])
    assert np.abs(k).max() <= bound and np.abs(k).max() > 0.5 * bound
    np.testing.assert_array_equal(tgp[name]["bias"], 0.0)
  hidden = np.asarray(tgp["MLP_0"]["Dense_1"]["kernel"])
  assert np.abs(hidden).max() <= 1 / np.sqrt(wide[0]) and np.abs(hidden).max() > 0.8 / np.sqrt(wide[0])
  assert init_options("torch") == {"orthogonal_init": False}
  assert init_options("orthogonal") == {"orthogonal_init": True}
  with pytest.raises(ValueError, match="unknown initialisation scheme"):
    init_options("xavier")


def test_count_params():
  params = jax.eval_shape(MLP(HIDDEN).init, KEY, jnp.ones((BATCH, OBS_DIM)))
  assert count_params(params) == (OBS_DIM * 8 + 8) + (8 * 8 + 8)
  ensemble = jax.eval_shape(CriticEnsemble(num=2, hidden_dims=HIDDEN).init, KEY,
                            jnp.ones((BATCH, OBS_DIM)), jnp.ones((BATCH, ACT_DIM)))
  assert count_params(ensemble) == 2 * ((8 * 8 + 8) + (8 * 8 + 8) + (8 + 1))
