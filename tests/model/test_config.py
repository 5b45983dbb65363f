import pytest

from cwm_jax.model import ModelConfig, get_preset
from cwm_jax.model.config import PRESETS, cwm_layer_types


def test_cwm_pattern_is_one_global_in_four():
  types = cwm_layer_types(64)
  assert [i for i, t in enumerate(types) if t == "global"] == list(range(0, 64, 4))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate_and_round_trip_through_dict(name):
  cfg = get_preset(name)
  assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("field,value,match", [
    ("n_kv_heads", 3, "divisor of n_heads"),
    ("head_dim", 15, "even"),
    ("layer_types", ("global",) * 3, "one entry per layer"),
    ("layer_types", ("global", "local", "sliding", "local"), "one of"),
    ("remat", "everything", "remat"),
    ("dtype", "float8", "dtype"),
    ("window", 0, "positive integer"),
])
def test_bad_fields_name_the_field(field, value, match):
  with pytest.raises(ValueError, match=match) as e:
    get_preset("tiny", **{field: value})
  assert field in str(e.value)


def test_unknown_preset_and_unknown_field():
  with pytest.raises(ValueError, match="Unknown model preset 'huge'"):
    get_preset("huge")
  with pytest.raises(ValueError, match="unknown field"):
    ModelConfig.from_dict({**get_preset("tiny").to_dict(), "n_experts": 8})
