"""FLOP counting against brute force: visible pairs counted from the dense `Mask`,
and matmul FLOPs counted from the dot_generals of the traced forward pass."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cwm_jax.model import count_params, get_preset, param_specs
from cwm_jax.model import transformer
from cwm_jax.model.attention.mask import Mask
from cwm_jax.model.config import GLOBAL
from cwm_jax.model.flops import (attention_flops_by_type, attention_pairs, doc_lengths_from_segments,
                                 flops_per_token, hardware_flops_per_token, matmul_params, mfu,
                                 train_flops_per_step)


def dense_pairs(T, window, segment_ids_T=None):
  mask = Mask(causal=True, window=window)
  if segment_ids_T is not None:
    seg = jnp.asarray(segment_ids_T)[None]
    mask = Mask(causal=True, window=window, q_segment_ids=seg, kv_segment_ids=seg)
  return int(np.asarray(mask.dense_BTS(T, T)).sum())


@pytest.mark.parametrize("T", [1, 7, 16, 33])
@pytest.mark.parametrize("window", [None, 1, 5, 16, 40])
def test_pairs_match_dense_mask(T, window):
  assert attention_pairs(T, window) == dense_pairs(T, window)


@pytest.mark.parametrize("window", [None, 3, 8])
def test_packed_pairs_match_dense_mask(window):
  rng = np.random.RandomState(0)
  for _ in range(5):
    T = 37
    starts = np.zeros(T, np.int32)
    starts[rng.choice(np.arange(1, T), size=4, replace=False)] = 1
    seg = np.cumsum(starts)
    docs = doc_lengths_from_segments(seg)
    assert sum(docs) == T and len(docs) == 5
    assert attention_pairs(T, window, docs) == dense_pairs(T, window, seg)


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="sum to seq_len"):
    attention_pairs(10, None, [3, 3])
  with pytest.raises(ValueError, match="window"):
    attention_pairs(10, 0)
  with pytest.raises(ValueError, match="remat"):
    hardware_flops_per_token(get_preset("tiny"), 8, remat="bogus")


@pytest.mark.parametrize("packed", [False, True])
def test_flops_per_token_matches_per_layer_brute_force(packed):
  cfg = get_preset("tiny", window=5)
  T = 24
  seg = np.repeat([0, 1, 2], [10, 9, 5]) if packed else None
  docs = doc_lengths_from_segments(seg) if packed else None
  f = flops_per_token(cfg, T, docs)
  D, N, K, H, F, V = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim,
                      cfg.vocab_size)
  matmul = 2 * (cfg.n_layers * (2 * D * N * H + 2 * D * K * H + 3 * D * F) + D * V)
  attn = sum(4 * N * H * dense_pairs(T, None if t == GLOBAL else cfg.window, seg)
             for t in cfg.layer_types) / T
  assert f.matmul == matmul
  assert f.attention == pytest.approx(attn, rel=1e-12)
  assert f.train == pytest.approx(3 * (matmul + attn))
  by_type = attention_flops_by_type(cfg, T, docs)
  assert sum(by_type.values()) == pytest.approx(attn)
  assert train_flops_per_step(cfg, 4, T, docs) == pytest.approx(4 * T * f.train)


def test_matmul_params_is_count_minus_embedding_and_norms():
  for name in ("tiny", "cwm_1b", "cwm_32b"):
    cfg = get_preset(name)
    norms = cfg.n_layers * 2 * cfg.d_model + cfg.d_model
    assert matmul_params(cfg) == count_params(cfg) - cfg.vocab_size * cfg.d_model - norms


def _dot_flops(jaxpr) -> int:
  """2 * MACs of every dot_general in a (closed) jaxpr, recursing into scans/calls."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lc, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      out = eqn.outvars[0].aval.shape
      total += 2 * math.prod(out) * math.prod(lhs[d] for d in lc)
    for name, sub in eqn.params.items():
      subs = sub if isinstance(sub, (list, tuple)) else [sub]
      for s in subs:
        inner = getattr(s, "jaxpr", None)
        if inner is None:
          continue
        inner = getattr(inner, "jaxpr", inner) if not hasattr(inner, "eqns") else inner
        mult = eqn.params["length"] if eqn.primitive.name == "scan" else 1
        total += mult * _dot_flops(inner)
  return total


@pytest.mark.parametrize("scan_layers", [True, False])
def test_matmul_flops_match_the_traced_forward(scan_layers):
  """The reference backend computes every [T, S] score, so the traced dots are
  2*P_matmul per token plus the *unmasked* 4*N*H*T per token per layer."""
  cfg = get_preset("tiny", attention_impl="reference", scan_layers=scan_layers)
  B, T = 2, 12
  params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.float32),
                        param_specs(cfg), is_leaf=lambda x: hasattr(x, "axes"))
  tokens = jax.ShapeDtypeStruct((B, T), jnp.int32)
  jaxpr = jax.make_jaxpr(lambda p, t: transformer.forward(p, t, cfg))(params, tokens)
  expected = B * T * (2 * matmul_params(cfg) + cfg.n_layers * 4 * cfg.n_heads * cfg.head_dim * T)
  assert _dot_flops(jaxpr.jaxpr) == expected


def test_long_context_split_and_remat_accounting():
  cfg = get_preset("cwm_32b")
  f8k, f131k = flops_per_token(cfg, 8192), flops_per_token(cfg, 131072)
  assert f8k.matmul == f131k.matmul
  by_type = attention_flops_by_type(cfg, 131072)
  # MODEL.md: global layers are about 3/4 of the attention FLOPs at 131k.
  assert 0.7 < by_type["global"] / f131k.attention < 0.85
  assert f131k.attention_fraction > f8k.attention_fraction
  head = 2 * cfg.d_model * cfg.vocab_size
  assert hardware_flops_per_token(cfg, 8192, "full") == pytest.approx(
      4 * f8k.forward - head)
  assert hardware_flops_per_token(cfg, 8192, "none") == f8k.train
  assert mfu(1000.0, cfg, 8192, 1e15) == pytest.approx(1000.0 * f8k.train / 1e15)
