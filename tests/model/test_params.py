import math

import jax
import numpy as np
import pytest
from flax import nnx

from cwm_jax.model import Cwm, count_params, get_preset, init_params, param_specs
from cwm_jax.model.params import check_params


def hf_style_count(cfg):
  """Count by walking the HF tensor list of MODEL.md (independent of our tree)."""
  D, N, K, H, F, V = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
  per_layer = [D, N * H * D, K * H * D, K * H * D, D * N * H, D, F * D, F * D, D * F]
  return V * D + cfg.n_layers * sum(per_layer) + D + V * D


def test_cwm_32b_has_exactly_the_published_parameter_count():
  cfg = get_preset("cwm_32b")
  assert count_params(cfg) == 32_581_097_472
  # The NNX module built abstractly (no allocation) holds the same number.
  abstract = nnx.eval_shape(lambda: Cwm(cfg, rngs=nnx.Rngs(0)))
  leaves = jax.tree.leaves(nnx.state(abstract, nnx.Param))
  assert sum(math.prod(x.shape) for x in leaves) == 32_581_097_472


@pytest.mark.parametrize("name", ["tiny", "cwm_150m", "cwm_1b", "cwm_8b", "cwm_32b"])
def test_counts_match_the_hf_tensor_list(name):
  cfg = get_preset(name)
  assert count_params(cfg) == hf_style_count(cfg)


def test_init_statistics_and_layout():
  cfg = get_preset("tiny", init_std=0.05)
  params = init_params(cfg, jax.random.key(0))
  check_params(cfg, params)
  np.testing.assert_array_equal(params["layers"]["attn_norm"], 1.0)
  assert abs(float(np.std(params["embed"])) - 0.05) < 0.005
  # Every weight gets its own key: no two layers start identical.
  q = np.asarray(params["layers"]["q"])
  assert not np.allclose(q[0], q[1])


def test_check_params_names_what_is_wrong():
  cfg = get_preset("tiny")
  params = init_params(cfg, jax.random.key(0))
  params["layers"]["q"] = params["layers"]["q"][:, :, :2]
  del params["lm_head"]
  params["embed"] = params["embed"].astype("bfloat16")
  with pytest.raises(ValueError, match=r"missing lm_head.*layers/q: shape.*embed: dtype bfloat16, expected param_dtype float32"):
    check_params(cfg, params)


def test_every_param_declares_one_logical_axis_per_dim():
  for spec in jax.tree.leaves(param_specs(get_preset("cwm_32b")),
                              is_leaf=lambda s: hasattr(s, "axes")):
    assert len(spec.axes) == len(spec.shape)
