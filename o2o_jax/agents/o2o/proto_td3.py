"""TD3-PROTO (agent `proto_td3`) under the names the registry and the runner look up (`Config`, `init`,
`update`, `act`, ...). Everything lives in `o2o_jax.agents.o2o.proto`, beside SAC-PROTO."""
from o2o_jax.agents.o2o.proto import (TD3_NETWORK_FIELDS as NETWORK_FIELDS, TD3Config as Config,  # noqa: F401
                                      TD3State as State, act_td3 as act, check_config,
                                      from_td3bc as from_offline, init_td3 as init,
                                      update_td3 as update)


def resolved(config: Config, act_dim: int) -> Config:
  """Nothing depends on the action size here (SAC-PROTO's target entropy does)."""
  del act_dim
  return config
