"""The official side's actor drift after alignment, run by the official code's Python (torch), never by
ours: RMS over dataset states and action dimensions of π_on(s) − π_off(s), deterministic actions.

  PYTHONPATH=benchmarks/vs_corl/shim:<official checkout copy> O2O_DATASET=o2o/hopper/medium-v0 \
      <official python> benchmarks/vs_official/official_drift.py --checkout=<copy> --agent=o2td3 \
      --env=hopper-medium-v2 --seed=0 --states=20000 --out=drift.json

π_off: the offline script's saved actor (`offline/model/<ALG>/<env>/<seed>/model.pth`, key "actor",
which the fine-tuning script loads as π_off). π_on: the actor saved after alignment
(`finetune/model/<ALG>_to<X>/<env>/<seed>/reconstruct_model/model.pth`, key "actor"). States: the
first --states observations of `d4rl.qlearning_dataset` (the `d4rl` stand-in: our loader's flattening
and order), normalised as the official scripts do (`utils.compute_mean_std(..., eps=1e-3)` over all of
them). Deterministic actions as the official evaluation takes them (`actor.act`, batched): TD3+BC's
clamp(actor(s) * max_action); CQL's tanh(mean) clipped to ±0.9999, times max_action. The same
definition as `benchmarks/actor_drift.py` for ours.
"""
import argparse
import json
import os
import sys

import numpy as np


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--checkout", required=True)
  p.add_argument("--agent", choices=("o2td3", "o2sac"), required=True)
  p.add_argument("--env", required=True)
  p.add_argument("--seed", type=int, required=True)
  p.add_argument("--states", type=int, default=20_000)
  p.add_argument("--out", required=True)
  args = p.parse_args()
  sys.path.insert(0, args.checkout)
  import torch
  import d4rl
  import gym
  from net import DeterministicPolicy, TanhGaussianPolicy
  from utils import compute_mean_std, normalize_states

  offline_alg, finetuned = {"o2td3": ("TD3_BC", "TD3_BC_toTD3"), "o2sac": ("CQL", "CQL_toSAC")}[args.agent]
  off_path = os.path.join(args.checkout, "offline", "model", offline_alg, args.env, str(args.seed),
                          "model.pth")
  on_path = os.path.join(args.checkout, "finetune", "model", finetuned, args.env, str(args.seed),
                         "reconstruct_model", "model.pth")
  env = gym.make(args.env)
  state_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
  max_action = float(env.action_space.high[0])
  obs = d4rl.qlearning_dataset(env)["observations"]
  mean, std = compute_mean_std(obs, eps=1e-3)
  states = torch.tensor(normalize_states(obs, mean, std)[:args.states], dtype=torch.float32)

  def actions(path):
    # The CQL checkpoint pickles a module object (sac_log_alpha): not loadable with weights_only.
    actor_state = torch.load(path, map_location="cpu", weights_only=False)["actor"]
    if args.agent == "o2td3":
      actor = DeterministicPolicy(state_dim, act_dim, max_action)
      actor.load_state_dict(actor_state)
      actor.eval()
      with torch.no_grad():
        return torch.clamp(actor(states) * max_action, -max_action, max_action).numpy()
    actor = TanhGaussianPolicy(state_dim, act_dim, max_action, orthogonal_init=True)
    actor.load_state_dict(actor_state)
    actor.eval()
    with torch.no_grad():
      return actor(states, deterministic=True)[0].numpy()

  off, on = actions(off_path), actions(on_path)
  gap = on.astype(np.float64) - off.astype(np.float64)
  result = {"drift_rms": float(np.sqrt(np.mean(gap ** 2))), "drift_max": float(np.abs(gap).max()),
            "states": int(states.shape[0]), "pi_off_path": off_path, "pi_on_path": on_path}
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
