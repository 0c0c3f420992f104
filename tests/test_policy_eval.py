"""benchmarks.policy_eval's action noise: the perturbation that asks whether an expert's return is
fragile to an action change of alignment's drift size."""
import numpy as np

from benchmarks import policy_eval


def test_zero_noise_is_the_policy_itself():
  policy = lambda states, obs, t=0: np.zeros((2, 3), np.float32)
  assert policy_eval.with_action_noise(policy, 0.0, -1.0, 1.0) is policy


def test_noise_has_the_asked_std_stays_in_the_box_and_keeps_the_dtype():
  actions = np.zeros((4, 500, 6), np.float32)
  actions[..., 0] = 0.95                      # near the bound: clipping must act there
  noisy = policy_eval.with_action_noise(lambda *a: actions, 0.13, -1.0, 1.0, seed=1)
  a = noisy(None, None, 0)
  assert a.dtype == np.float32 and a.shape == actions.shape
  assert a.min() >= -1.0 and a.max() <= 1.0
  np.testing.assert_allclose(a[..., 1:].std(), 0.13, rtol=0.03)   # away from the bounds: N(0, σ²)
  assert np.all(a[..., 0] <= 1.0) and (a[..., 0] == 1.0).mean() > 0.3   # P(0.95 + ε > 1) ≈ 0.35
  assert not np.array_equal(a, noisy(None, None, 1))                 # fresh noise at every step
