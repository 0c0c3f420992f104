"""o2o_jax.config: `--config.<field>=<value>` overrides and layered configs, checked against the
agent's frozen Config dataclass (issue #20)."""
import dataclasses
import json
from typing import List, Optional, Sequence, Tuple

import pytest

from o2o_jax import config as cfg
from o2o_jax.agents.o2o import o2td3
from o2o_jax.errors import O2OError


@dataclasses.dataclass(frozen=True)
class Toy:
  steps: int = 10
  lr: float = 1e-3
  flag: bool = False
  name: str = "a"
  clip: Optional[float] = None
  dims: Sequence[int] = (64, 64)
  scales: Tuple[float, ...] = (1.0,)
  pair: Tuple[int, float] = (1, 2.0)
  widths: List[int] = dataclasses.field(default_factory=lambda: [8])
  maybe_dims: Optional[Sequence[int]] = None
  new_style: "int | None" = 3


@pytest.mark.parametrize("field, raw, expected", [
    ("steps", "7", 7), ("steps", "1e5", 100_000), ("steps", "-3", -3),
    ("lr", "1e-4", 1e-4), ("lr", "2", 2.0),
    ("flag", "true", True), ("flag", "False", False), ("flag", "1", True), ("flag", "0", False),
    ("name", "b c", "b c"), ("name", "", ""),
    ("clip", "0.5", 0.5), ("clip", "none", None), ("clip", "None", None),
    ("dims", "32,16", (32, 16)), ("dims", "8", (8,)), ("dims", " 4 , 5 ", (4, 5)), ("dims", "", ()),
    ("scales", "0.5,2", (0.5, 2.0)), ("pair", "3,0.25", (3, 0.25)), ("widths", "1,2", [1, 2]),
    ("maybe_dims", "none", None), ("maybe_dims", "3,3", (3, 3)),
    ("new_style", "none", None), ("new_style", "5", 5),
])
def test_each_type_converts_from_its_command_line_text(field, raw, expected):
  value = getattr(cfg.apply_overrides(Toy(), {field: raw}), field)
  assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("field, raw, words", [
    ("steps", "2.5", ["steps=2.5", "is int", "not an integer"]),
    ("steps", "ten", ["steps=ten", "is int"]),
    ("lr", "fast", ["lr=fast", "is float", "not a number"]),
    ("flag", "yes", ["flag=yes", "is bool", "true, false, 1 or 0"]),
    ("clip", "off", ["clip=off", "float or none"]),
    ("dims", "64,x", ["dims=64,x", "comma-separated ints"]),
    ("pair", "1,2,3", ["pair=1,2,3", "expected 2 values"]),
])
def test_a_value_that_does_not_convert_names_field_type_and_value(field, raw, words):
  with pytest.raises(O2OError) as e:
    cfg.apply_overrides(Toy(), {field: raw})
  message = str(e.value)
  assert "\n" not in message and message.startswith(f"--config.{field}=")
  assert f"field {field!r} of {__name__}.Toy" in message
  for word in words:
    assert word in message


def test_an_unknown_field_names_it_and_lists_the_valid_ones_sorted():
  with pytest.raises(O2OError) as e:
    cfg.apply_overrides(o2td3.Config(), {"no_such_field": "1"})
  message = str(e.value)
  valid = sorted(f.name for f in dataclasses.fields(o2td3.Config))
  assert message == (f"--config.no_such_field: o2o_jax.agents.o2o.o2td3.Config has no field "
                     f"'no_such_field'; valid fields: {', '.join(valid)}")


def test_a_real_agent_config_takes_typed_overrides_and_stays_frozen():
  base = o2td3.Config()
  new = cfg.apply_overrides(base, {"critic_lr": "1e-4", "critic_hidden_dims": "64,64",
                                   "constrain": "false", "tau_steps": "50000"})
  assert (new.critic_lr, new.critic_hidden_dims, new.constrain, new.tau_steps) == (1e-4, (64, 64), False,
                                                                                  50_000)
  assert base == o2td3.Config()                      # the original is untouched
  hash(new)                                          # tuples, not lists: still hashable
  with pytest.raises(dataclasses.FrozenInstanceError):
    new.critic_lr = 1.0


def test_parse_overrides_takes_config_arguments_out_of_argv():
  raw, rest = cfg.parse_overrides(["prog", "--seeds=2", "--config.critic_lr=1e-4", "--config.dims=",
                                   "--config.critic_lr=3e-4", "--", "--config.after=1"])
  assert raw == {"critic_lr": "3e-4", "dims": ""}    # a later one wins, as with absl flags
  assert rest == ["prog", "--seeds=2", "--", "--config.after=1"]


@pytest.mark.parametrize("arg", ["--config.critic_lr", "--config.=1"])
def test_parse_overrides_requires_field_and_equals_sign(arg):
  with pytest.raises(O2OError, match=r"write --config.<field>=<value>, with '='"):
    cfg.parse_overrides(["prog", arg, "1e-4"])


def test_layers_apply_in_order_and_a_later_layer_wins():
  budget = {"steps": 100, "dims": (64, 64)}
  preset = {"steps": 200, "lr": 3e-4}
  command_line = {"lr": "1e-5"}
  config = cfg.layered(Toy, budget, preset, command_line)
  assert (config.steps, config.dims, config.lr, config.flag) == (200, (64, 64), 1e-5, False)
  assert cfg.layered(Toy) == Toy()


def test_every_layer_is_checked_and_named_in_the_error():
  with pytest.raises(O2OError, match=r"^preset\.stepz: .*Toy has no field 'stepz'; valid fields: "):
    cfg.layered(Toy, {"steps": 1}, {"stepz": 2}, names=("budget", "preset"))
  with pytest.raises(O2OError, match=r"^layer1\.steps=1\.5: field 'steps'"):
    cfg.layered(Toy, {"steps": 1.5})


def test_to_dict_is_json_and_round_trips_through_layered():
  config = cfg.apply_overrides(o2td3.Config(), {"hidden_dims": "32,32", "tau_end": "0.01"})
  values = json.loads(json.dumps(cfg.to_dict(config)))
  assert values["hidden_dims"] == [32, 32]
  assert cfg.layered(o2td3.Config, values) == config
  toy = Toy(clip=0.1, pair=(2, 3.0), maybe_dims=(1,))
  assert cfg.layered(Toy, json.loads(json.dumps(cfg.to_dict(toy)))) == toy
