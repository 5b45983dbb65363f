"""Context-parallel attention on 8 fake CPU devices against the einsum reference:
forward and q/k/v gradients for context 2/4/8, natural and zig-zag layouts,
windows narrower and wider than a shard, documents crossing shard boundaries,
GQA, and meshes mixing context with data/tensor; plus the lowered program of a
local-window layer, which must move halos with collective-permutes and never
all-gather.

Every case starts from natural-order arrays, reorders them with `to_layout`,
runs the sharded attention and restores natural order with `from_layout`, so
the oracle is always `reference_attention` on the natural sequence.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cwm_jax.model.attention.context_parallel import (
    Layout, attend_positions, choose_strategy, context_parallel_attention, from_layout,
    inverse_permutation, merge_partials, to_layout, zigzag_permutation)
from cwm_jax.model.attention.mask import Mask
from cwm_jax.model.attention.reference import reference_attention
from cwm_jax.sharding.mesh import MeshConfig, make_mesh

B, T, N, K, H = 2, 64, 4, 2, 8
CHUNK = 8
# Document starts per row: none falls on a multiple of 4, so documents cross the
# shard/chunk boundaries of every layout used here.
DOC_STARTS = ([13, 30, 47, 55], [5, 22, 41])
# Tiny programs: XLA's CPU optimisation passes cost more than they save (~40% of
# this file's runtime is compilation).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _segments():
  seg = np.zeros((B, T), np.int32)
  for b, starts in enumerate(DOC_STARTS):
    seg[b, starts] = 1
  return jnp.asarray(np.cumsum(seg, axis=1))


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  normal = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  return normal(B, T, N, H), normal(B, T, K, H), normal(B, T, K, H), normal(B, T, N, H)


def _mesh(context, data=1, fsdp=1, tensor=1):
  return make_mesh(MeshConfig(data=data, fsdp=fsdp, tensor=tensor, context=context),
                   devices=jax.devices()[:data * fsdp * tensor * context])


def _out_and_grads(attend, q, k, v, w):
  """attend(q, k, v) -> out, and d(sum(w * out))/d(q, k, v), in one jit."""
  def loss(q, k, v):
    out = attend(q, k, v)
    return jnp.sum(w * out), out
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True),
                 compiler_options=FAST_COMPILE)
  (_, out), grads = step(q, k, v)
  return out, grads


@functools.cache
def _reference(window, segments, seed):
  """The oracle's output and gradients; cached, as many sharded cases share one."""
  q, k, v, w = _inputs(seed)
  seg = _segments() if segments else None
  mask = Mask(causal=True, window=window, q_segment_ids=seg, kv_segment_ids=seg)
  return _out_and_grads(lambda q, k, v: reference_attention(q, k, v, mask), q, k, v, w)


def _check(mesh, C, load_balance, window, segments=True, seed=0, **kw):
  q, k, v, w = _inputs(seed)
  seg = _segments() if segments else None

  def sharded(q, k, v):
    lay = lambda x: None if x is None else to_layout(x, C, load_balance)
    mask_l = Mask(causal=True, window=window, q_segment_ids=lay(seg), kv_segment_ids=lay(seg))
    out = context_parallel_attention(lay(q), lay(k), lay(v), mask_l, mesh=mesh, chunk=CHUNK,
                                     load_balance=load_balance, **kw)
    return from_layout(out, C, load_balance)

  want, want_grads = _reference(window, segments, seed)
  got, got_grads = _out_and_grads(sharded, q, k, v, w)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)
  for name, g, r in zip("qkv", got_grads, want_grads):
    np.testing.assert_allclose(g, r, atol=5e-5, rtol=5e-5, err_msg=f"d{name}")


# Windows: 5 is within a shard/chunk for most layouts (one neighbour); 40 spans
# several shards (context 2: 39 keys > a 32-token shard; zig-zag 8: ten 4-token chunks).
@pytest.mark.parametrize("window", [None, 5, 40], ids=["global", "w5", "w40"])
@pytest.mark.parametrize("load_balance", ["none", "zigzag"])
@pytest.mark.parametrize("C", [2, 4, 8])
def test_matches_reference(C, load_balance, window):
  strategy = "all_gather" if window is None else "halo"
  _check(_mesh(C), C, load_balance, window, strategy=strategy)


@pytest.mark.parametrize("C,load_balance,window", [(8, "none", None), (4, "zigzag", 40)])
def test_without_segment_ids(C, load_balance, window):
  # The halo of the first chunks reaches before the sequence start: those rows must
  # be masked even when the caller gives no segment ids.
  _check(_mesh(C), C, load_balance, window, segments=False)


@pytest.mark.parametrize("load_balance,window", [("zigzag", None), ("none", 5)])
def test_ring(load_balance, window):
  _check(_mesh(4), 4, load_balance, window, strategy="ring")


@pytest.mark.parametrize("data,fsdp,tensor,context,window",
                         [(2, 1, 1, 4, None), (1, 2, 2, 2, 5)])
def test_mixed_mesh_ambient(data, fsdp, tensor, context, window):
  """Batch over ("data", "fsdp"), heads over `tensor` (GQA: 4 query, 2 kv heads),
  length over `context`, with the mesh from `jax.set_mesh` as a model layer would."""
  mesh = _mesh(context, data=data, fsdp=fsdp, tensor=tensor)
  with jax.set_mesh(mesh):
    _check(None, context, "zigzag", window)


def test_reference_inner_kernel():
  _check(_mesh(4), 4, "zigzag", None, impl="reference")


def test_single_shard_is_plain_kernel():
  q, k, v, _ = _inputs()
  mask = Mask(window=5, q_segment_ids=_segments(), kv_segment_ids=_segments())
  out = jax.jit(lambda q, k, v: context_parallel_attention(q, k, v, mask, mesh=_mesh(1),
                                                          chunk=CHUNK))(q, k, v)
  np.testing.assert_allclose(out, reference_attention(q, k, v, mask), atol=2e-5)


def _lowered(window, load_balance="zigzag", C=4, grad=False, **kw):
  q, k, v, w = _inputs()
  seg = _segments()
  mask = Mask(window=window, q_segment_ids=seg, kv_segment_ids=seg)
  attend = lambda q, k, v: context_parallel_attention(q, k, v, mask, mesh=_mesh(C), chunk=CHUNK,
                                                      load_balance=load_balance, **kw)
  f = jax.grad(lambda q, k, v: jnp.sum(w * attend(q, k, v)), argnums=(0, 1, 2)) if grad else attend
  return jax.jit(f).lower(q, k, v).as_text()


def _permuted_elements(text, dtype):
  """Elements per device moved by the collective-permutes of `dtype` in lowered text."""
  total = 0
  for line in text.splitlines():
    if "collective_permute" in line:
      for shape in re.findall(r"\(tensor<([0-9x]+)x" + dtype + r">", line):
        total += int(np.prod([int(d) for d in shape.split("x")]))
  return total


@pytest.mark.parametrize("load_balance", ["none", "zigzag"])
def test_window_layer_exchanges_halo_only(load_balance):
  window, C = 5, 4
  for grad in (False, True):
    text = _lowered(window, load_balance, C, grad)
    assert "all_gather" not in text and "reduce_scatter" not in text and "all_to_all" not in text
    assert "collective_permute" in text
  # Forward: exactly window-1 keys of K and V per local chunk, not a neighbour's shard.
  m = 2 if load_balance == "zigzag" else 1
  want = 2 * m * B * (window - 1) * K * H
  assert _permuted_elements(_lowered(window, load_balance, C), "f32") == want
  assert "all_gather" in _lowered(None, load_balance, C)
  ring = _lowered(None, load_balance, C, strategy="ring")
  assert "all_gather" not in ring and "collective_permute" in ring


def test_choose_strategy():
  lay = Layout(T=64, C=4, zigzag=True)  # chunks of 8
  assert choose_strategy(lay, Mask(window=None)) == "all_gather"
  assert choose_strategy(lay, Mask(window=5)) == "halo"
  assert choose_strategy(lay, Mask(window=24)) == "halo"   # 23 keys < 3 chunks
  assert choose_strategy(lay, Mask(window=25)) == "all_gather"
  assert choose_strategy(lay, Mask(window=5, causal=False)) == "all_gather"


@pytest.mark.parametrize("C", [1, 2, 4, 8])
def test_zigzag_permutation_balances_causal_work(C):
  perm = zigzag_permutation(T, C)
  inv = inverse_permutation(perm)
  x = np.arange(T)[None] * 10
  np.testing.assert_array_equal(x[:, perm][:, inv], x)
  np.testing.assert_array_equal(from_layout(to_layout(jnp.asarray(x), C), C), x)
  np.testing.assert_array_equal(perm, np.concatenate(
      [Layout(T, C, True).positions(c) for c in range(C)]))
  # Keys visible to each shard's queries under a causal mask: equal for every shard.
  work = (perm.reshape(C, -1) + 1).sum(axis=1)
  assert len(set(work.tolist())) == 1
  if C == 1:
    np.testing.assert_array_equal(perm, np.arange(T))


def test_attend_positions_and_merge_match_reference():
  """Explicit positions on a shuffled sequence, split into two key blocks and merged,
  equal the reference on the natural sequence (output, logsumexp and gradients)."""
  q, k, v, w = _inputs(1)
  seg = _segments()
  window = 9
  mask = Mask(window=window, q_segment_ids=seg, kv_segment_ids=seg)
  perm = np.random.default_rng(0).permutation(T)
  inv = inverse_permutation(perm)
  pos = jnp.asarray(perm)

  def merged(q, k, v):
    q, k, v, s = q[:, perm], k[:, perm], v[:, perm], seg[:, perm]
    parts = [attend_positions(q, k[:, sl], v[:, sl], pos, pos[sl], window=window,
                              q_seg_BT=s, kv_seg_BS=s[:, sl])
             for sl in (slice(0, 20), slice(20, T))]
    o, lse = merge_partials(*parts[0], *parts[1])
    return o[:, inv], lse[..., inv]

  want, want_grads = _out_and_grads(lambda q, k, v: reference_attention(q, k, v, mask), q, k, v, w)
  got, got_grads = _out_and_grads(lambda q, k, v: merged(q, k, v)[0], q, k, v, w)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)
  for g, r in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, r, atol=5e-5, rtol=5e-5)
  # lse against a dense logsumexp over the visible keys.
  s_BKGTS = jnp.einsum("BTKGH,BSKH->BKGTS", q.reshape(B, T, K, N // K, H), k) * H ** -0.5
  s_BKGTS = jnp.where(mask.dense_BTS(T, T)[:, None, None], s_BKGTS, -jnp.inf)
  lse = jax.jit(lambda q, k, v: merged(q, k, v)[1])(q, k, v)
  np.testing.assert_allclose(lse, jax.nn.logsumexp(s_BKGTS, -1), atol=1e-5)


def test_errors():
  q, k, v, _ = _inputs()
  mesh = _mesh(4)
  with pytest.raises(ValueError, match="divisible"):
    context_parallel_attention(q[:, :60], k[:, :60], v[:, :60], Mask(), mesh=mesh)
  with pytest.raises(ValueError, match="halo"):
    context_parallel_attention(q, k, v, Mask(causal=False, window=5), mesh=mesh, strategy="halo")
  with pytest.raises(ValueError, match="q_offset"):
    context_parallel_attention(q, k, v, Mask(q_offset=3), mesh=mesh)
  with pytest.raises(ValueError, match="kv heads"):
    context_parallel_attention(q, k[:, :, :1], v[:, :, :1], Mask(), mesh=_mesh(2, tensor=4))
