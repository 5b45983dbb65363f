"""`chunked_attention` against the einsum reference: forward and q/k/v gradients on
every mask combination, GQA ratio and sequence geometry, plus proof that key
blocks outside the causal/window band are skipped, not merely masked.

The matrix calls the kernel through `_attend`, which takes the mask's position
part as traced scalars (`_Band`), so one XLA compilation per shape serves all
16 mask combinations; `chunked_attention(..., Mask)` is a two-line wrapper
around it and is exercised directly by the jit, empty-row, traced-offset and
block-count tests.
"""

import functools
import itertools
import re
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cwm_jax.model.attention.chunked import _attend, _Band, chunked_attention, processed_blocks
from cwm_jax.model.attention.mask import Mask
from cwm_jax.model.attention.reference import reference_attention

CHUNK = 16
B, N, H = 2, 4, 8
# (T, S, q_offset): self-attention with T % CHUNK != 0, and a chunked-prefill call
# whose queries are the last T of S keys (T, S both not multiples of CHUNK).
GEOMETRIES = {"self": (50, 50, 0), "prefill": (23, 70, 47)}
WINDOWS = {"none": None, "small": 5, "gt_chunk": 40, "gt_seq": 1000}


def _packed_segments(rng, S):
  """[B, S] ids of several packed documents per row; boundaries differ per row."""
  rows = []
  for _ in range(B):
    starts = np.zeros(S, np.int32)
    starts[rng.choice(np.arange(1, S), size=3, replace=False)] = 1
    rows.append(np.cumsum(starts))
  return jnp.asarray(np.stack(rows))


def _inputs(rng, T, S, K, dtype=jnp.float32):
  def normal(*shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32).astype(dtype)
  return normal(B, T, N, H), normal(B, S, K, H), normal(B, S, K, H), normal(B, T, N, H)


def _mask(rng, geometry, causal, window, segments):
  T, S, q_offset = GEOMETRIES[geometry]
  q_seg = kv_seg = None
  if segments:
    kv_seg = _packed_segments(rng, S)
    q_seg = kv_seg[:, q_offset:q_offset + T]
  return Mask(causal=causal, window=WINDOWS[window], q_segment_ids=q_seg,
              kv_segment_ids=kv_seg, q_offset=q_offset)


def _out_and_grads(fn, q, k, v, w):
  """Output and d(sum(w * out))/d(q, k, v)."""
  out, vjp = jax.vjp(fn, q, k, v)
  return out, vjp(w.astype(out.dtype))


def _assert_close(got, want, atol):
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                             atol=atol, rtol=0)


@functools.partial(jax.jit, static_argnames="chunk_size")
def _chunked_out_and_grads(q, k, v, w, band, q_seg, kv_seg, chunk_size=CHUNK):
  return _out_and_grads(
      lambda q, k, v: _attend(q, k, v, band, q_seg, kv_seg, chunk_size=chunk_size), q, k, v, w)


@pytest.mark.parametrize("geometry,groups",
                         [("self", 2), ("prefill", 1), ("prefill", 2), ("prefill", 4)])
@pytest.mark.parametrize("segments", [False, True], ids=["noseg", "packed"])
@pytest.mark.parametrize("window", list(WINDOWS))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_matches_reference(causal, window, segments, geometry, groups):
  """All 16 mask combinations, on self-attention and on chunked prefill with
  GQA ratios 1, 2, 4: outputs and gradients of sum(w * out) w.r.t. q, k, v."""
  seed = zlib.crc32(repr((causal, window, segments, geometry, groups)).encode())
  rng = np.random.default_rng(seed)
  T, S, _ = GEOMETRIES[geometry]
  q, k, v, w = _inputs(rng, T, S, N // groups)
  mask = _mask(rng, geometry, causal, window, segments)
  out, grads = _chunked_out_and_grads(q, k, v, w, _Band.of(mask), mask.q_segment_ids,
                                      mask.kv_segment_ids)
  ref_out, ref_grads = _out_and_grads(
      lambda q, k, v: reference_attention(q, k, v, mask), q, k, v, w)
  assert out.shape == q.shape and out.dtype == q.dtype
  _assert_close(out, ref_out, atol=1e-5)
  for name, g, ref_g in zip("qkv", grads, ref_grads):
    assert np.all(np.isfinite(g)), name
    _assert_close(g, ref_g, atol=1e-4)


@pytest.mark.parametrize("causal,window,segments,geometry,chunk", [
    (True, "small", True, "prefill", 32),    # query chunk 23 != key chunk 32
    (False, "gt_chunk", False, "self", 64),  # one chunk holds the whole sequence
])
def test_jit_matches_reference(causal, window, segments, geometry, chunk):
  """The public entry under jit with a static `Mask`; segment ids are traced."""
  rng = np.random.default_rng(7)
  T, S, _ = GEOMETRIES[geometry]
  q, k, v, w = _inputs(rng, T, S, K=2)
  mask = _mask(rng, geometry, causal, window, segments)

  @jax.jit
  def run(q, k, v, w, q_seg, kv_seg):
    m = Mask(causal=mask.causal, window=mask.window, q_segment_ids=q_seg,
             kv_segment_ids=kv_seg, q_offset=mask.q_offset)
    return _out_and_grads(lambda q, k, v: chunked_attention(q, k, v, m, chunk_size=chunk),
                          q, k, v, w)

  out, grads = run(q, k, v, w, mask.q_segment_ids, mask.kv_segment_ids)
  ref_out, ref_grads = _out_and_grads(
      lambda q, k, v: reference_attention(q, k, v, mask), q, k, v, w)
  _assert_close(out, ref_out, atol=1e-5)
  for g, ref_g in zip(grads, ref_grads):
    _assert_close(g, ref_g, atol=1e-4)


@pytest.mark.parametrize("causal,window,segments", [
    (True, "none", False), (True, "small", True), (False, "gt_chunk", True)])
def test_bfloat16_forward(causal, window, segments):
  """bf16 in, bf16 out; close to the float32 reference on the same rounded inputs."""
  rng = np.random.default_rng(3)
  T, S, _ = GEOMETRIES["prefill"]
  q, k, v, _ = _inputs(rng, T, S, K=2, dtype=jnp.bfloat16)
  mask = _mask(rng, "prefill", causal, window, segments)
  run = jax.jit(functools.partial(_attend, chunk_size=CHUNK))
  out = run(q, k, v, _Band.of(mask), mask.q_segment_ids, mask.kv_segment_ids)
  ref = reference_attention(*(x.astype(jnp.float32) for x in (q, k, v)), mask)
  assert out.dtype == jnp.bfloat16
  _assert_close(out, ref, atol=3e-2)


def test_rows_without_keys_give_zeros_and_zero_grads():
  """Queries beyond a non-causal window's reach and queries whose segment id no key
  carries see nothing: outputs and gradients are zero, never NaN."""
  rng = np.random.default_rng(5)
  T, S, _ = GEOMETRIES["prefill"]
  q, k, v, w = _inputs(rng, T, S, K=2)
  q_seg = jnp.asarray(np.r_[np.zeros(8), np.full(T - 8, 99)][None].repeat(B, 0), jnp.int32)
  kv_seg = jnp.zeros((B, S), jnp.int32)
  # q_offset 60, window 4: query i sits at 60 + i and sees no key of S=70 once i >= 13.
  mask = Mask(causal=False, window=4, q_segment_ids=q_seg, kv_segment_ids=kv_seg, q_offset=60)
  out, (dq, dk, dv) = _out_and_grads(
      lambda q, k, v: chunked_attention(q, k, v, mask, chunk_size=CHUNK), q, k, v, w)
  ref_out, ref_grads = _out_and_grads(
      lambda q, k, v: reference_attention(q, k, v, mask), q, k, v, w)
  assert np.all(np.asarray(out[:, 8:]) == 0) and np.all(np.asarray(dq[:, 8:]) == 0)
  assert np.any(np.asarray(out[:, :8]) != 0)
  _assert_close(out, ref_out, atol=1e-5)
  for g, ref_g in zip((dq, dk, dv), ref_grads):
    assert np.all(np.isfinite(g))
    _assert_close(g, ref_g, atol=1e-4)


def _band_blocks(T, S, mask, chunk):
  """Number of (query chunk, key chunk) blocks in which the position mask allows anything."""
  ok_TS = np.asarray(mask.allowed_TS(jnp.arange(T), jnp.arange(S)))
  cq, ck = min(chunk, T), min(chunk, S)
  return sum(ok_TS[i:i + cq, j:j + ck].any()
             for i, j in itertools.product(range(0, T, cq), range(0, S, ck)))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window", [None, 1, 16, 40])
@pytest.mark.parametrize("T,S,q_offset,chunk", [
    (50, 50, 0, 16), (23, 70, 47, 16), (23, 30, 25, 16), (23, 70, 47, 32)])
def test_processes_exactly_the_band_blocks(causal, window, T, S, q_offset, chunk):
  """Each pass visits exactly the blocks where the position mask allows something."""
  mask = Mask(causal=causal, window=window, q_offset=q_offset)
  q, k = jnp.zeros((B, T, N, H)), jnp.zeros((B, S, 2, H))
  counts = processed_blocks(q, k, k, mask, chunk_size=chunk)
  want = _band_blocks(T, S, mask, chunk)
  assert counts == {"forward": want, "backward": want}


def test_packed_rows_skip_blocks_between_documents():
  """Causal attention over packed documents (ids 1..k along each row, as
  `pack.make_row` writes them): each pass visits exactly the blocks holding a
  query-key pair of one document, fewer than the causal band."""
  T, chunk = 96, 16
  starts = np.zeros((B, T), np.int32)
  starts[0, [20, 31, 70]] = 1
  starts[1, [9, 45, 50, 88]] = 1
  seg = jnp.asarray(np.cumsum(starts, axis=1) + 1)
  mask = Mask(causal=True, q_segment_ids=seg, kv_segment_ids=seg)
  x = jnp.zeros((B, T, N, H))
  counts = processed_blocks(x, x[:, :, :2], x[:, :, :2], mask, chunk_size=chunk)
  ok_BTS = np.asarray(mask.dense_BTS(T, T))
  want = sum(ok_BTS[:, i:i + chunk, j:j + chunk].any()
             for i, j in itertools.product(range(0, T, chunk), range(0, T, chunk)))
  assert counts == dict.fromkeys(("forward", "backward"), want)
  assert want < _band_blocks(T, T, Mask(causal=True), chunk)
  # Padding (id 0 after the documents, as `pack.make_row` pads) breaks the ids'
  # order; the skipped blocks must still be only fully masked ones.
  seg = seg.at[1, 80:].set(0)
  mask = Mask(causal=True, q_segment_ids=seg, kv_segment_ids=seg)
  q, k, v, w = _inputs(np.random.default_rng(0), T, T, 2)
  out, grads = _chunked_out_and_grads(q, k, v, w, _Band.of(mask), seg, seg)
  ref_out, ref_grads = _out_and_grads(
      lambda q, k, v: reference_attention(q, k, v, mask), q, k, v, w)
  _assert_close(out, ref_out, atol=1e-5)
  for g, ref_g in zip(grads, ref_grads):
    _assert_close(g, ref_g, atol=1e-4)


def test_sliding_window_work_grows_linearly():
  """With a one-chunk window the processed blocks are 2 * T/chunk - 1 (linear in T),
  while full causal attention processes n(n+1)/2 (quadratic)."""
  for T in (64, 128, 192):
    n = T // CHUNK
    x, kv = jnp.zeros((B, T, N, H)), jnp.zeros((B, T, 2, H))
    windowed = processed_blocks(x, kv, kv, Mask(causal=True, window=CHUNK), chunk_size=CHUNK)
    full = processed_blocks(x, kv, kv, Mask(causal=True), chunk_size=CHUNK)
    assert windowed == dict.fromkeys(("forward", "backward"), 2 * n - 1)
    assert full == dict.fromkeys(("forward", "backward"), n * (n + 1) // 2)


def test_traced_q_offset():
  """One compilation serves every prefill chunk: q_offset may be a traced int."""
  rng = np.random.default_rng(11)
  T, S, _ = GEOMETRIES["prefill"]
  q, k, v, _ = _inputs(rng, T, S, K=2)
  run = jax.jit(lambda q, k, v, off: chunked_attention(
      q, k, v, Mask(window=20, q_offset=off), chunk_size=CHUNK))
  for off in (0, 30, 47):
    _assert_close(run(q, k, v, off), reference_attention(q, k, v, Mask(window=20, q_offset=off)),
                  atol=1e-5)


def _largest_intermediate(jaxpr) -> int:
  """Largest array (in elements) produced anywhere in a jaxpr, sub-jaxprs included."""
  biggest = 0
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      biggest = max(biggest, int(np.prod(getattr(var.aval, "shape", ()))))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          biggest = max(biggest, _largest_intermediate(sub))
  return biggest


def test_never_materialises_scores():
  """Forward + backward never build an array as large as the [B, N, T, S] scores
  (the einsum reference, as a control, does)."""
  T = S = 256
  x, kv = jnp.zeros((1, T, N, H)), jnp.zeros((1, S, 2, H))

  def largest(attn):
    loss = lambda q, k, v: attn(q, k, v, Mask(window=64)).sum()
    return _largest_intermediate(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(x, kv, kv).jaxpr)

  assert largest(reference_attention) >= N * T * S
  assert largest(functools.partial(chunked_attention, chunk_size=CHUNK)) <= x.size < N * T * S // 16


def test_backward_copies_no_block_on_cpu():
  """The backward computes dq as k^T @ ds into [H, (G, q)]: XLA:CPU then transposes
  only the small k block. The control, ds^T @ k on a keys-first block, makes it
  write a transposed copy of the block (what made FA2's one pass slow on CPU)."""
  T, chunk, K = 256, 64, 2
  G = N // K

  def block_copies(fn, *args):
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    copies = []
    for m in re.finditer(r"%((?:copy|transpose)[\w.-]*) = f32\[([\d,]+)\]", hlo):
      if np.prod([int(d) for d in m.group(2).split(",")]) == 1 * K * G * chunk * chunk:
        copies.append(m.group(1))
    return copies

  def control(k_BKkH, s_BKkGq, dp_BKkGq):
    ds_BKkGq = jnp.exp(s_BKkGq) * (dp_BKkGq - 1.0)
    return jnp.einsum("BKkGq,BKkH->BKGqH", ds_BKkGq, k_BKkH)

  block = jnp.ones((1, K, chunk, G, chunk))
  assert block_copies(control, jnp.ones((1, K, chunk, H)), block, block), \
      "XLA:CPU no longer copies ds^T: the layout note in chunked.py is stale"
  x, kv = jnp.ones((1, T, N, H)), jnp.ones((1, T, K, H))
  grads = jax.grad(lambda q, k, v: (chunked_attention(q, k, v, Mask(), chunk_size=chunk) ** 2).sum(),
                   argnums=(0, 1, 2))
  assert block_copies(grads, x, kv, kv) == []
