"""`gym` stand-in: the old gym API CORL's scripts use (reset -> obs, step -> 4-tuple, `seed()`,
`get_normalized_score`, `gym.wrappers.Transform*`) over gymnasium's v5 MuJoCo envs. The env comes from
the name's prefix ('hopper-medium-v2' -> Hopper-v5); the normalised score uses the dataset's own
reference scores, as our evaluation does."""
import gymnasium
from gymnasium import spaces  # noqa: F401   (CORL imports gym.spaces)

import d4rl

ENV_IDS = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5", "walker2d": "Walker2d-v5",
           "ant": "Ant-v5"}
Env = gymnasium.Env


class _OldApi:
  def __init__(self, env):
    self.env = env
    self.observation_space, self.action_space = env.observation_space, env.action_space
    self._seed = None

  def __getattr__(self, name):
    return getattr(self.env, name)

  def seed(self, seed=None):
    self._seed = seed
    self.action_space.seed(seed)

  def reset(self, **kwargs):
    obs, _ = self.env.reset(seed=self._seed)
    self._seed = None            # gym's seed() seeds the next reset only
    return obs

  def step(self, action):
    obs, reward, terminated, truncated, info = self.env.step(action)
    if truncated and not terminated:
      info["TimeLimit.truncated"] = True
    return obs, reward, terminated or truncated, info

  def get_normalized_score(self, episode_return):
    low, high = d4rl.ref_scores()
    return (episode_return - low) / (high - low)


def make(name, **kwargs):
  return _OldApi(gymnasium.make(ENV_IDS[name.split("-")[0]]))


class _Transform:
  def __init__(self, env, f):
    self.env, self.f = env, f
    self.observation_space, self.action_space = env.observation_space, env.action_space

  def __getattr__(self, name):
    return getattr(self.env, name)


class _TransformObservation(_Transform):
  def reset(self, **kwargs):
    return self.f(self.env.reset(**kwargs))

  def step(self, action):
    obs, reward, done, info = self.env.step(action)
    return self.f(obs), reward, done, info


class _TransformReward(_Transform):
  def reset(self, **kwargs):
    return self.env.reset(**kwargs)

  def step(self, action):
    obs, reward, done, info = self.env.step(action)
    return obs, self.f(reward), done, info


class wrappers:  # noqa: N801  (gym.wrappers)
  TransformObservation = _TransformObservation
  TransformReward = _TransformReward
