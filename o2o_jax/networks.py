"""Network building blocks shared by every agent.

- `MLP` (optional LayerNorm, optional orthogonal init)
- `init_options`: the named initialisation schemes of the references (see "Initialisation" below)
- `Critic` Q(s, a) and `CriticEnsemble` (one module `nn.vmap`-ed over members: 2 = double-Q)
- `ValueNet` V(s) and `ValueEnsemble` (ACA's state baseline)
- `TanhGaussianActor` (SAC/CQL; CORL's learnable log-std scale/offset as an option)
- `GaussianActor` with a state-independent log-std (IQL/AWAC)
- `DeterministicActor` tanh(MLP) (TD3)
- `CVAE` state-action conditional VAE s,a -> z -> s' (SAMG)

Actions live in [-1, 1]^|A| (envs.make_env rescales the env's box if needed).

Initialisation. Every module takes `orthogonal_init` (False: PyTorch nn.Linear's default kernels),
`hidden_scale` (orthogonal gain of the hidden layers, default sqrt 2; unused without
`orthogonal_init`) and `head_scale`, the gain of the output layer(s): orthogonal(head_scale) with
`orthogonal_init` (None = the module's own gain: 1 for Q/V heads, 1e-2 for actor heads), and without
it xavier_uniform(head_scale) (None = PyTorch's default), the two branches of CORL's
`init_module_weights`. Biases are always 0. `init_options(name)` gives the keyword arguments of the
references' schemes:
- "torch": PyTorch nn.Linear's default kernel U(+-1/sqrt(fan_in)) on every layer, the output layer
  included (d3rlpy's encoders and heads; CORL's TD3+BC, IQL, AWAC MLPs; the official O2PPO value
  net, `ppo_net.py` `MLP`). PyTorch draws the biases from the same uniform; here they are 0.
- "orthogonal": CORL's `init_module_weights(..., orthogonal_init=True)` (`cql.py`): orthogonal
  hidden layers with gain sqrt 2, the output layer orthogonal with the module's head gain, biases 0.
- "ocr_cft": the official OCR-CFT `net.py` `MLP` (`orthogonal_net`, used by `CriticFunction`,
  `ValueFunction`, `TwinQ`, `GaussianPolicy`, `DeterministicPolicy`): every layer orthogonal with
  gain 1.0, the output layer included, biases 0.
- "tanh_gaussian_policy": the `TanhGaussianPolicy` of CORL's `cql.py` and of the official `net.py`,
  which call `init_module_weights(self.base_network)` without their `orthogonal_init` flag: PyTorch's
  default hidden layers, the output layer xavier_uniform with gain 1e-2 and bias 0. (Their single
  output layer has 2|A| outputs, mean and log-std; here the two heads have |A| each, so the xavier
  bound sqrt(6 / (fan_in + fan_out)) differs by < 1% at width 256.)
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Actions given to a tanh-Gaussian log-prob are clipped to +-(1 - TANH_CLIP_EPS) before atanh.
TANH_CLIP_EPS = 1e-4


def orthogonal(scale: float = 1.0):
  """Flax's `nn.initializers.orthogonal(scale)` (same key use, same matrix up to float rounding),
  computed by Gram-Schmidt instead of LAPACK's QR. Why: under a seed `vmap` the QR becomes one
  batched LAPACK custom call, and jaxlib runs its batch on XLA's intra-op thread pool while blocking
  a thread of that same pool; with as many QRs in flight as the pool has threads (2 here), every
  thread waits forever (BUILD_NOTES, "A deadlock in XLA's CPU runtime")."""
  def init(key, shape, dtype=jnp.float32):
    n_rows, n_cols = int(np.prod(shape[:-1])), shape[-1]
    a = jax.random.normal(key, (n_cols, n_rows) if n_rows < n_cols else (n_rows, n_cols), dtype)
    q = gram_schmidt(a)
    return scale * (q.T if n_rows < n_cols else q).reshape(shape)
  return init


def gram_schmidt(a):
  """Q of a = QR with diag(R) > 0 (the sign convention flax applies to LAPACK's Q), for a tall a:
  classical Gram-Schmidt with every column orthogonalised twice ("twice is enough", Giraud et al.
  2005), which keeps Q^T Q = I to float precision."""
  def column(k, q):
    done = (jnp.arange(q.shape[1]) < k).astype(q.dtype)    # columns 0..k-1 are finished
    v = q[:, k]
    for _ in range(2):
      v = v - q @ (done * (q.T @ v))
    return q.at[:, k].set(v / jnp.sqrt(jnp.sum(v * v)))
  return jax.lax.fori_loop(0, a.shape[1], column, a)


SQRT2 = float(np.sqrt(2.0))

# Named schemes -> module keyword arguments (see the module docstring, "Initialisation").
INIT_SCHEMES = {
    "torch": dict(orthogonal_init=False),
    "orthogonal": dict(orthogonal_init=True),
    "ocr_cft": dict(orthogonal_init=True, hidden_scale=1.0, head_scale=1.0),
    "tanh_gaussian_policy": dict(orthogonal_init=False, head_scale=1e-2),
    # CORL cql.py FullyConnectedQFunction with orthogonal_init=True (`init_module_weights`): hidden
    # layers orthogonal(sqrt 2), the head orthogonal(1e-2), biases 0.
    "corl_cql_critic": dict(orthogonal_init=True, head_scale=1e-2),
    # CORL finetune/cal_ql.py, actor and critics with orthogonal_init=True (`init_module_weights`
    # applied to every nn.Linear): orthogonal(sqrt 2) everywhere, the head included, biases 0.
    "corl_calql": dict(orthogonal_init=True, head_scale=SQRT2),
}


def scheme_options(scheme: Optional[str], orthogonal_init: bool) -> dict:
  """`init_options(scheme)`; without a scheme, the older boolean switch (orthogonal or PyTorch's)."""
  return init_options(scheme or ("orthogonal" if orthogonal_init else "torch"))


def init_options(scheme: str) -> dict:
  """Keyword arguments (`orthogonal_init`, `hidden_scale`, `head_scale`) of a named scheme."""
  if scheme not in INIT_SCHEMES:
    raise ValueError(f"unknown initialisation scheme {scheme!r} (one of {', '.join(INIT_SCHEMES)})")
  return dict(INIT_SCHEMES[scheme])


def default_init(orthogonal_init: bool = False, scale: float = SQRT2):
  """orthogonal(scale) or, without `orthogonal_init`, PyTorch nn.Linear's default kernel
  U(+-1/sqrt(fan_in)) (`scale` unused). Biases are flax's zeros either way (PyTorch's default draws
  them from the same uniform as the kernel; every orthogonal scheme of the references sets them to 0)."""
  if orthogonal_init:
    return orthogonal(scale)
  return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class MLP(nn.Module):
  hidden_dims: Sequence[int]
  activation: Callable = nn.relu
  layer_norm: bool = False
  activate_final: bool = False
  orthogonal_init: bool = False
  hidden_scale: float = SQRT2               # orthogonal gain of every layer here

  @nn.compact
  def __call__(self, x):
    for i, width in enumerate(self.hidden_dims):
      x = nn.Dense(width, kernel_init=default_init(self.orthogonal_init, self.hidden_scale))(x)
      if i + 1 < len(self.hidden_dims) or self.activate_final:
        if self.layer_norm:
          x = nn.LayerNorm()(x)
        x = self.activation(x)
    return x


def _head_init(orthogonal_init: bool, head_scale: Optional[float], own_scale: float):
  """The output layer's kernel init: orthogonal with `head_scale` (None: the module's `own_scale`);
  without `orthogonal_init`, xavier_uniform with gain `head_scale` (None: PyTorch's default)."""
  if not orthogonal_init and head_scale is not None:
    # xavier_uniform(gain): U(+-gain sqrt(6 / (fan_in + fan_out))) = variance_scaling(gain^2, fan_avg)
    return nn.initializers.variance_scaling(head_scale ** 2, "fan_avg", "uniform")
  return default_init(orthogonal_init, own_scale if head_scale is None else head_scale)


class Critic(nn.Module):
  """Q(s, a) -> scalar per row."""
  hidden_dims: Sequence[int] = (256, 256)
  layer_norm: bool = False
  orthogonal_init: bool = False
  hidden_scale: float = SQRT2
  head_scale: Optional[float] = None        # None: 1.0

  @nn.compact
  def __call__(self, observations, actions):
    x = jnp.concatenate([observations, actions], axis=-1)
    x = MLP(self.hidden_dims, layer_norm=self.layer_norm, activate_final=True,
            orthogonal_init=self.orthogonal_init, hidden_scale=self.hidden_scale)(x)
    return nn.Dense(1, kernel_init=_head_init(self.orthogonal_init, self.head_scale, 1.0))(x)[..., 0]


class CriticEnsemble(nn.Module):
  """`num` independent critics as one vmapped module: output shape (num, *batch)."""
  num: int = 2
  hidden_dims: Sequence[int] = (256, 256)
  layer_norm: bool = False
  orthogonal_init: bool = False
  hidden_scale: float = SQRT2
  head_scale: Optional[float] = None        # None: 1.0

  @nn.compact
  def __call__(self, observations, actions):
    ensemble = nn.vmap(Critic, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=None, out_axes=0, axis_size=self.num)
    return ensemble(self.hidden_dims, self.layer_norm, self.orthogonal_init, self.hidden_scale,
                    self.head_scale)(observations, actions)


def first_critic(apply_fn: Callable, params, observations, actions):
  """Q_1(s, a) of a `CriticEnsemble` without computing the other members: what TD3's actor ascends
  (CORL `td3_bc.py` `TD3_BC.train`: `self.critic_1(state, pi)`). Indexing the whole ensemble's output
  also evaluates and differentiates Q_2: 256M of the 2x256 actor step's FLOPs at batch 256 against
  183M here, 8% of a TD3+BC update. `apply_fn` is a `CriticEnsemble`'s `apply` (a `TrainState`'s);
  any other function is applied whole and indexed."""
  ensemble = getattr(apply_fn, "__self__", None)
  if not isinstance(ensemble, CriticEnsemble):
    return apply_fn(params, observations, actions)[0]
  first = jax.tree_util.tree_map(lambda p: p[:1], params)       # member 0, as a 1-member ensemble
  return ensemble.clone(num=1).apply(first, observations, actions)[0]


class ValueNet(nn.Module):
  """V(s) -> scalar per row; `tanh_activation` swaps ReLU for tanh (the O2PPO value net)."""
  hidden_dims: Sequence[int] = (256, 256)
  layer_norm: bool = False
  orthogonal_init: bool = False
  tanh_activation: bool = False
  hidden_scale: float = SQRT2
  head_scale: Optional[float] = None        # None: 1.0

  @nn.compact
  def __call__(self, observations):
    act = nn.tanh if self.tanh_activation else nn.relu
    x = MLP(self.hidden_dims, activation=act, layer_norm=self.layer_norm, activate_final=True,
            orthogonal_init=self.orthogonal_init, hidden_scale=self.hidden_scale)(observations)
    return nn.Dense(1, kernel_init=_head_init(self.orthogonal_init, self.head_scale, 1.0))(x)[..., 0]


class ValueEnsemble(nn.Module):
  """`num` independent V(s) nets as one vmapped module: output shape (num, *batch). Same layer
  layout as `CriticEnsemble` without the action input (ACA's state baseline Z_j(s))."""
  num: int = 2
  hidden_dims: Sequence[int] = (256, 256)
  layer_norm: bool = False
  orthogonal_init: bool = False
  hidden_scale: float = SQRT2
  head_scale: Optional[float] = None        # None: 1.0

  @nn.compact
  def __call__(self, observations):
    ensemble = nn.vmap(ValueNet, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=None, out_axes=0, axis_size=self.num)
    return ensemble(self.hidden_dims, self.layer_norm, self.orthogonal_init, False, self.hidden_scale,
                    self.head_scale)(observations)


class TanhGaussian(distrax.Transformed):
  """tanh(N(mu, sigma)) with numerically stable log-probs.

  - `sample_and_log_prob` evaluates the density at the *pre-tanh* sample (distrax's Transformed does
    this already: no atanh of a saturated action).
  - `log_prob(actions)` of *given* actions clips them to +-(1 - 1e-4) before atanh, so dataset actions at
    the box boundary give a finite value.
  """

  def __init__(self, loc, scale_diag):
    super().__init__(distrax.MultivariateNormalDiag(loc, scale_diag),
                     distrax.Block(distrax.Tanh(), ndims=1))

  def log_prob(self, value):
    value = jnp.clip(value, -1.0 + TANH_CLIP_EPS, 1.0 - TANH_CLIP_EPS)
    pre_tanh = jnp.arctanh(value)
    return self.distribution.log_prob(pre_tanh) - self.bijector.forward_log_det_jacobian(pre_tanh)

  def mode(self):
    return jnp.tanh(self.distribution.loc)


def tanh_gaussian_log_prob_reference(loc, scale, action):
  """Change of variables written out by hand (used by tests): log N(u) - sum log(1 - tanh(u)^2)."""
  u = jnp.arctanh(action)
  log_normal = -0.5 * (((u - loc) / scale) ** 2 + jnp.log(2 * jnp.pi)) - jnp.log(scale)
  return jnp.sum(log_normal - jnp.log(1.0 - jnp.tanh(u) ** 2), axis=-1)


class TanhGaussianActor(nn.Module):
  """SAC/CQL actor. `learnable_log_std_scale`: log_std = a * log_std + b with learnable scalars a (init
  1) and b (init -1), the CORL CQL actor."""
  act_dim: int
  hidden_dims: Sequence[int] = (256, 256)
  log_std_min: float = -5.0
  log_std_max: float = 2.0
  layer_norm: bool = False
  orthogonal_init: bool = False
  learnable_log_std_scale: bool = False
  hidden_scale: float = SQRT2
  head_scale: Optional[float] = None        # None: 1e-2 (both heads)

  @nn.compact
  def __call__(self, observations, temperature: float = 1.0) -> TanhGaussian:
    x = MLP(self.hidden_dims, layer_norm=self.layer_norm, activate_final=True,
            orthogonal_init=self.orthogonal_init, hidden_scale=self.hidden_scale)(observations)
    head = _head_init(self.orthogonal_init, self.head_scale, 1e-2)
    means = nn.Dense(self.act_dim, kernel_init=head)(x)
    log_stds = nn.Dense(self.act_dim, kernel_init=head)(x)
    if self.learnable_log_std_scale:
      scale = self.param("log_std_multiplier", nn.initializers.constant(1.0), ())
      offset = self.param("log_std_offset", nn.initializers.constant(-1.0), ())
      log_stds = scale * log_stds + offset
    log_stds = jnp.clip(log_stds, self.log_std_min, self.log_std_max)
    return TanhGaussian(means, jnp.exp(log_stds) * temperature)


class GaussianActor(nn.Module):
  """IQL/AWAC actor: N(mu(s), exp(log_std)) with a state-independent log-std parameter."""
  act_dim: int
  hidden_dims: Sequence[int] = (256, 256)
  log_std_min: float = -20.0
  log_std_max: float = 2.0
  tanh_mean: bool = True
  init_log_std: float = 0.0
  layer_norm: bool = False
  orthogonal_init: bool = False
  hidden_scale: float = SQRT2
  head_scale: Optional[float] = None        # None: 1e-2

  @nn.compact
  def __call__(self, observations, temperature: float = 1.0) -> distrax.MultivariateNormalDiag:
    x = MLP(self.hidden_dims, layer_norm=self.layer_norm, activate_final=True,
            orthogonal_init=self.orthogonal_init, hidden_scale=self.hidden_scale)(observations)
    means = nn.Dense(self.act_dim, kernel_init=_head_init(self.orthogonal_init, self.head_scale, 1e-2))(x)
    if self.tanh_mean:
      means = jnp.tanh(means)
    log_std = self.param("log_std", nn.initializers.constant(self.init_log_std), (self.act_dim,))
    log_std = jnp.clip(log_std, self.log_std_min, self.log_std_max)
    return distrax.MultivariateNormalDiag(means, jnp.broadcast_to(jnp.exp(log_std), means.shape)
                                          * temperature)


class DeterministicActor(nn.Module):
  """TD3 actor: a = tanh(MLP(s))."""
  act_dim: int
  hidden_dims: Sequence[int] = (256, 256)
  layer_norm: bool = False
  orthogonal_init: bool = False
  hidden_scale: float = SQRT2
  head_scale: Optional[float] = None        # None: 1e-2

  @nn.compact
  def __call__(self, observations):
    x = MLP(self.hidden_dims, layer_norm=self.layer_norm, activate_final=True,
            orthogonal_init=self.orthogonal_init, hidden_scale=self.hidden_scale)(observations)
    return jnp.tanh(nn.Dense(self.act_dim,
                             kernel_init=_head_init(self.orthogonal_init, self.head_scale, 1e-2))(x))


class CVAE(nn.Module):
  """State-action conditional VAE (SAMG): encoder q(z|s,a) = N(mu(s,a), diag sigma(s,a)^2), decoder
  p(s'|z,s,a) reconstructing the next state. Layout of BCQ/CPQ's VAE (hidden layers per side, latent
  log-std clipped to [-4, 15]); `decoder_hidden_dims` may be smaller (SAMG's "simplified decoder").
  Methods: `encode(s, a) -> (mu, sigma)`, `decode(s, a, z) -> s'`, `__call__(s, a, key) -> (s', mu,
  sigma)` (one reparameterised sample)."""
  out_dim: int
  latent_dim: int
  hidden_dims: Sequence[int] = (750, 750)
  decoder_hidden_dims: Optional[Sequence[int]] = None

  def setup(self):
    self.encoder = MLP(self.hidden_dims, activate_final=True)
    self.mean_head = nn.Dense(self.latent_dim)
    self.log_std_head = nn.Dense(self.latent_dim)
    self.decoder = MLP(tuple(self.decoder_hidden_dims or self.hidden_dims), activate_final=True)
    self.out_head = nn.Dense(self.out_dim)

  def encode(self, observations, actions):
    h = self.encoder(jnp.concatenate([observations, actions], axis=-1))
    return self.mean_head(h), jnp.exp(jnp.clip(self.log_std_head(h), -4.0, 15.0))

  def decode(self, observations, actions, z):
    return self.out_head(self.decoder(jnp.concatenate([observations, actions, z], axis=-1)))

  def __call__(self, observations, actions, key):
    mean, std = self.encode(observations, actions)
    z = mean + std * jax.random.normal(key, mean.shape)
    return self.decode(observations, actions, z), mean, std


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
