"""The parameter tree of the CWM decoder: shapes, logical axes and init, in one
table. Layer weights are stacked over a leading `layers` axis so the forward
pass can scan over them; the HF converter maps to and from this tree.

    embed       [V, D]          ("vocab", "embed")
    layers/
      attn_norm [L, D]          ("layers", "norm")
      q         [L, D, N, H]    ("layers", "embed", "q_heads", "head_dim")
      k, v      [L, D, K, H]    ("layers", "embed", "kv_heads", "head_dim")
      o         [L, N, H, D]    ("layers", "q_heads", "head_dim", "embed")
      mlp_norm  [L, D]          ("layers", "norm")
      gate, up  [L, D, F]       ("layers", "embed", "mlp")
      down      [L, F, D]       ("layers", "mlp", "embed")
    final_norm  [D]             ("norm",)
    lm_head     [D, V]          ("embed", "vocab")
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from cwm_jax.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class ParamSpec:
  shape: tuple[int, ...]
  axes: tuple[str, ...]   # logical axis names, one per dimension
  init: str               # "normal" (std = config.init_std) or "ones"


def param_specs(cfg: ModelConfig) -> dict:
  V, D, L = cfg.vocab_size, cfg.d_model, cfg.n_layers
  N, K, H, F = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim
  return {
      "embed": ParamSpec((V, D), ("vocab", "embed"), "normal"),
      "layers": {
          "attn_norm": ParamSpec((L, D), ("layers", "norm"), "ones"),
          "q": ParamSpec((L, D, N, H), ("layers", "embed", "q_heads", "head_dim"), "normal"),
          "k": ParamSpec((L, D, K, H), ("layers", "embed", "kv_heads", "head_dim"), "normal"),
          "v": ParamSpec((L, D, K, H), ("layers", "embed", "kv_heads", "head_dim"), "normal"),
          "o": ParamSpec((L, N, H, D), ("layers", "q_heads", "head_dim", "embed"), "normal"),
          "mlp_norm": ParamSpec((L, D), ("layers", "norm"), "ones"),
          "gate": ParamSpec((L, D, F), ("layers", "embed", "mlp"), "normal"),
          "up": ParamSpec((L, D, F), ("layers", "embed", "mlp"), "normal"),
          "down": ParamSpec((L, F, D), ("layers", "mlp", "embed"), "normal"),
      },
      "final_norm": ParamSpec((D,), ("norm",), "ones"),
      "lm_head": ParamSpec((D, V), ("embed", "vocab"), "normal"),
  }


def _is_spec(x) -> bool:
  return isinstance(x, ParamSpec)


def param_axes(cfg: ModelConfig) -> dict:
  """The logical axes of every parameter, as a tree of tuples."""
  return jax.tree.map(lambda s: s.axes, param_specs(cfg), is_leaf=_is_spec)


def count_params(cfg: ModelConfig) -> int:
  """Exact parameter count from shapes alone (nothing is allocated)."""
  leaves = jax.tree.leaves(param_specs(cfg), is_leaf=_is_spec)
  return sum(math.prod(s.shape) for s in leaves)


def abstract_params(cfg: ModelConfig) -> dict:
  dtype = jnp.dtype(cfg.param_dtype)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype),
                      param_specs(cfg), is_leaf=_is_spec)


def init_params(cfg: ModelConfig, key: jax.Array) -> dict:
  """Normal(0, init_std) weights and unit norm scales, in `param_dtype`."""
  specs = param_specs(cfg)
  leaves, treedef = jax.tree.flatten(specs, is_leaf=_is_spec)
  keys = jax.random.split(key, len(leaves))
  dtype = jnp.dtype(cfg.param_dtype)

  def make(spec, k):
    if spec.init == "ones":
      return jnp.ones(spec.shape, dtype)
    return (cfg.init_std * jax.random.normal(k, spec.shape, jnp.float32)).astype(dtype)

  return jax.tree.unflatten(treedef, [make(s, k) for s, k in zip(leaves, keys)])


def check_params(cfg: ModelConfig, params: dict, what: str = "params") -> None:
  """Raises a ValueError naming every missing, extra or mis-shaped tensor."""
  expected = {"/".join(str(getattr(p, "key", p)) for p in path): spec.shape
              for path, spec in jax.tree_util.tree_flatten_with_path(
                  param_specs(cfg), is_leaf=_is_spec)[0]}
  got = {"/".join(str(getattr(p, "key", p)) for p in path): tuple(x.shape)
         for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  problems = [f"missing {k} {v}" for k, v in expected.items() if k not in got]
  problems += [f"unexpected {k} {v}" for k, v in got.items() if k not in expected]
  problems += [f"{k}: shape {got[k]}, expected {v}" for k, v in expected.items()
               if k in got and got[k] != v]
  dtypes = {"/".join(str(getattr(p, "key", p)) for p in path): str(x.dtype)
            for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  problems += [f"{k}: dtype {d}, expected param_dtype {cfg.param_dtype}"
               for k, d in dtypes.items() if d != cfg.param_dtype]
  if problems:
    raise ValueError(f"{what} do not match the model config: " + "; ".join(problems))
