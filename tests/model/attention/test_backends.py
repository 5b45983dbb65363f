"""Accelerator backends and the dispatch, against the einsum reference.

On CPU the kernels run in Pallas interpret mode: the TPU splash kernel
(`splash_attention(..., interpret=True)`) and our Triton flash kernel
(`pallas_gpu_attention(..., interpret=True)`) execute their real kernel bodies,
so their mask translation, block skipping, GQA and custom VJPs are checked
here. cuDNN cannot run off GPU; its mask translation is checked by making the
same `jax.nn.dot_product_attention` call with implementation="xla". Tests
marked `gpu`/`tpu` run the compiled kernels and skip elsewhere (on a GPU host:
`JAX_PLATFORMS=cuda python -m pytest -m gpu tests/model/attention/test_backends.py`).
The full mask matrices are marked `slow` and run only with `-m slow` (or
CWM_SLOW_TESTS=1); a representative subset of each runs by default.
"""

import functools
import itertools
import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cwm_jax.model.attention as attn
from cwm_jax.model.attention import BACKENDS, attention, choose_impl
from cwm_jax.model.attention.cudnn import cudnn_attention
from cwm_jax.model.attention.mask import Mask
from cwm_jax.model.attention.pallas_gpu import BlockSizes, _key_blocks, _Plan, _query_blocks, _spans
from cwm_jax.model.attention.pallas_gpu import pallas_gpu_attention
from cwm_jax.model.attention.reference import reference_attention
from cwm_jax.model.attention.splash import splash_attention

B, N = 2, 4
WINDOWS = {"none": None, "small": 5, "gt_block": 40, "gt_seq": 1000}
SPLASH_WINDOWS = {"none": None, "small": 50, "gt_block": 200, "gt_seq": 1000}
BLOCKS16 = BlockSizes(block_q=16, block_k=16, block_q_bwd=16, block_k_bwd=16)


@pytest.fixture(autouse=True)
def _needs_platform_or_opt_in(request):
  """`gpu`/`tpu`-marked tests run only where JAX's default backend is that platform;
  `slow` ones (full mask matrices, minutes in interpret mode) only when asked for
  with `-m slow` or CWM_SLOW_TESTS=1."""
  for platform in ("gpu", "tpu"):
    if request.node.get_closest_marker(platform) and jax.default_backend() != platform:
      pytest.skip(f"needs a {platform.upper()} (default backend is {jax.default_backend()})")
  markexpr = (request.config.getoption("markexpr", default="") or "").replace("not slow", "")
  if request.node.get_closest_marker("slow") and "slow" not in markexpr \
      and not os.environ.get("CWM_SLOW_TESTS"):
    pytest.skip("slow: run with -m slow or CWM_SLOW_TESTS=1")


def _packed_segments(rng, S, docs=3):
  """[B, S] ids of several packed documents per row; boundaries differ per row."""
  rows = []
  for _ in range(B):
    starts = np.zeros(S, np.int32)
    starts[rng.choice(np.arange(1, S), size=docs, replace=False)] = 1
    rows.append(np.cumsum(starts))
  return jnp.asarray(np.stack(rows))


def _inputs(rng, T, S, K, H, dtype=jnp.float32):
  def normal(*shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32).astype(dtype)
  return normal(B, T, N, H), normal(B, S, K, H), normal(B, S, K, H), normal(B, T, N, H)


def _mask(rng, T, S, q_offset, causal, window, segments):
  q_seg = kv_seg = None
  if segments:
    kv_seg = _packed_segments(rng, S)
    q_seg = kv_seg[:, q_offset:q_offset + T]
  return Mask(causal=causal, window=window, q_segment_ids=q_seg, kv_segment_ids=kv_seg,
              q_offset=q_offset)


def _out_and_grads(fn, q, k, v, w):
  """Output and d(sum(w * out))/d(q, k, v)."""
  out, vjp = jax.vjp(fn, q, k, v)
  return out, vjp(w.astype(out.dtype))


def _check_against_reference(fn, q, k, v, w, mask, atol_out=1e-5, atol_grad=1e-4):
  out, grads = jax.jit(functools.partial(_out_and_grads, fn))(q, k, v, w)
  ref_out, ref_grads = jax.jit(functools.partial(
      _out_and_grads, lambda q, k, v: reference_attention(q, k, v, mask)))(q, k, v, w)
  assert out.shape == q.shape and out.dtype == q.dtype
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), atol=atol_out, rtol=0)
  for name, g, ref_g in zip("qkv", grads, ref_grads):
    assert np.all(np.isfinite(np.asarray(g))), name
    np.testing.assert_allclose(np.asarray(g), np.asarray(ref_g), atol=atol_grad, rtol=0,
                               err_msg=f"d{name}")


def _rel_err(got, want):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


# --- Pallas GPU kernel (interpret mode on CPU) -----------------------------------------

# (T, S, q_offset): self-attention with T % block != 0, and a chunked-prefill call
# whose queries are the last T of S keys. H=8 also exercises head-dim padding (to 16).
PALLAS_GEOMETRIES = {"self": (50, 50, 0), "prefill": (23, 70, 47)}


def _pallas_case(causal, window, segments, geometry, groups):
  rng = np.random.default_rng(zlib.crc32(repr((causal, window, segments, geometry, groups)).encode()))
  T, S, q_offset = PALLAS_GEOMETRIES[geometry]
  q, k, v, w = _inputs(rng, T, S, N // groups, H=8)
  mask = _mask(rng, T, S, q_offset, causal, WINDOWS[window], segments)
  fn = lambda q, k, v: pallas_gpu_attention(q, k, v, mask, block_sizes=BLOCKS16, interpret=True)
  _check_against_reference(fn, q, k, v, w, mask)


@pytest.mark.parametrize("causal,window,segments,geometry,groups", [
    (True, "none", True, "self", 2),         # global layer, packed, GQA
    (True, "small", True, "self", 4),        # local layer, window < block, packed
    (True, "gt_block", False, "prefill", 1),  # window > block, q_offset, MHA
    (False, "small", True, "prefill", 2),    # bidirectional window + segments + offset
])
def test_pallas_gpu_matches_reference(causal, window, segments, geometry, groups):
  _pallas_case(causal, window, segments, geometry, groups)


@pytest.mark.slow
@pytest.mark.parametrize("geometry,groups", [("self", 2), ("prefill", 1), ("prefill", 4)])
@pytest.mark.parametrize("segments", [False, True], ids=["noseg", "packed"])
@pytest.mark.parametrize("window", list(WINDOWS))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_pallas_gpu_matches_reference_all_masks(causal, window, segments, geometry, groups):
  _pallas_case(causal, window, segments, geometry, groups)


def test_pallas_gpu_rows_without_keys_give_zeros():
  """Rows beyond a non-causal window's reach and rows whose segment no key carries:
  zero outputs and gradients, never NaN (the reference's convention)."""
  rng = np.random.default_rng(5)
  T, S = 23, 70
  q, k, v, w = _inputs(rng, T, S, K=2, H=8)
  q_seg = jnp.asarray(np.r_[np.zeros(8), np.full(T - 8, 99)][None].repeat(B, 0), jnp.int32)
  mask = Mask(causal=False, window=4, q_segment_ids=q_seg,
              kv_segment_ids=jnp.zeros((B, S), jnp.int32), q_offset=60)
  fn = lambda q, k, v: pallas_gpu_attention(q, k, v, mask, block_sizes=BLOCKS16, interpret=True)
  out, (dq, _, _) = _out_and_grads(fn, q, k, v, w)
  assert np.all(np.asarray(out[:, 8:]) == 0) and np.all(np.asarray(dq[:, 8:]) == 0)
  _check_against_reference(fn, q, k, v, w, mask)


def test_pallas_gpu_bfloat16_and_default_blocks():
  """bf16 in and out with the default (large) tiles, close to the f32 reference."""
  rng = np.random.default_rng(3)
  T = S = 200
  q, k, v, _ = _inputs(rng, T, S, K=2, H=16, dtype=jnp.bfloat16)
  mask = _mask(rng, T, S, 0, True, 64, True)
  out = jax.jit(lambda q, k, v: pallas_gpu_attention(q, k, v, mask, interpret=True))(q, k, v)
  ref = reference_attention(*(x.astype(jnp.float32) for x in (q, k, v)), mask)
  assert out.dtype == jnp.bfloat16
  assert _rel_err(out, ref) < 1e-2


def _band_blocks(T, S, mask, bq, bk):
  """Set of (query block, key block) pairs where the position mask allows anything."""
  ok_TS = np.asarray(mask.allowed_TS(jnp.arange(T), jnp.arange(S)))
  return {(i // bq, j // bk) for i, j in itertools.product(range(0, T, bq), range(0, S, bk))
          if ok_TS[i:i + bq, j:j + bk].any()}


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window", [None, 1, 16, 40])
@pytest.mark.parametrize("T,S,q_offset,bq,bk", [
    (50, 50, 0, 16, 16), (23, 70, 47, 16, 16), (64, 96, 32, 32, 16), (23, 70, 47, 16, 32)])
def test_pallas_gpu_visits_exactly_the_band_blocks(causal, window, T, S, q_offset, bq, bk):
  """The forward/dq loops (per query block) and the dk/dv loop (per key block) visit
  exactly the blocks where the position mask allows something: out-of-band blocks
  are skipped, not masked."""
  mask = Mask(causal=causal, window=window, q_offset=q_offset)
  p = _Plan(T=T, S=S, Tp=-(-T // bq) * bq, Sp=-(-S // bk) * bk, H=16, G=1, causal=causal,
            window=window, q_offset=q_offset, scale=1.0, segments=False,
            blocks=BlockSizes(bq, bk, bq, bk), interpret=True)
  by_query = {(i, j) for i in range(p.Tp // bq)
              for j in range(*map(int, _key_blocks(p, i, bq, bk)))}
  by_key = {(i, j) for j in range(p.Sp // bk)
            for i in range(*map(int, _query_blocks(p, j, bq, bk)))}
  want = _band_blocks(T, S, mask, bq, bk)
  assert by_query == want and by_key == want


def _visited(p, lo_hi, n_outer, spans, block):
  """Blocks a kernel's loop visits: position band [lo, hi) per outer block, narrowed
  to the outer block's segment span (positions, converted to `block`s)."""
  span_lo, span_hi = (np.asarray(x)[0] for x in spans)
  out = set()
  for o in range(n_outer):
    lo, hi = map(int, lo_hi(p, o))
    lo, hi = max(lo, span_lo[o] // block), min(hi, -(-span_hi[o] // block))
    out |= {(o, x) for x in range(lo, hi)}
  return out


@pytest.mark.parametrize("ids", ["packed", "unordered"])
@pytest.mark.parametrize("window", [None, 12])
def test_pallas_gpu_skips_blocks_of_other_documents(ids, window):
  """With ascending (packed) ids each query block visits only key blocks of its own
  documents (exactly the blocks where the full mask allows something, for causal
  attention), and each key block only such query blocks; with unordered ids the
  loops fall back to the position band. Never a needed block is left out."""
  T = S = 128
  bq = bk = 16
  if ids == "packed":
    seg = np.repeat(np.arange(5), [30, 3, 50, 20, 25])
  else:
    seg = np.random.default_rng(0).integers(0, 3, T)
  seg = jnp.asarray(seg[None], jnp.int32)
  mask = Mask(causal=True, window=window, q_segment_ids=seg, kv_segment_ids=seg)
  p = _Plan(T=T, S=S, Tp=T, Sp=S, H=16, G=1, causal=True, window=window, q_offset=0,
            scale=1.0, segments=True, blocks=BlockSizes(bq, bk, bq, bk), interpret=True)
  by_query = _visited(p, lambda p, i: _key_blocks(p, i, bq, bk), T // bq,
                      _spans(seg, seg, bq, S), bk)
  by_key = {(i, j) for j, i in _visited(p, lambda p, j: _query_blocks(p, j, bq, bk), S // bk,
                                        _spans(seg, seg, bk, T), bq)}
  ok_TS = np.asarray(mask.dense_BTS(T, S))[0]
  needed = {(i // bq, j // bk) for i, j in zip(*np.nonzero(ok_TS))}
  band = _band_blocks(T, S, Mask(causal=True, window=window), bq, bk)
  assert needed <= by_query and needed <= by_key
  assert by_query <= band and by_key <= band
  if ids == "packed" and window is None:
    assert by_query == needed and by_key == needed and len(needed) < len(band)
  elif ids == "unordered":
    assert by_query == band and by_key == band


def test_pallas_gpu_unordered_segment_ids():
  """Ids that are not ascending (documents interleaved): correct via the band fallback."""
  rng = np.random.default_rng(9)
  T, S, q_offset = PALLAS_GEOMETRIES["prefill"]
  q, k, v, w = _inputs(rng, T, S, K=2, H=8)
  kv_seg = jnp.asarray(rng.integers(0, 3, (B, S)), jnp.int32)
  mask = Mask(causal=True, window=30, q_segment_ids=kv_seg[:, q_offset:], kv_segment_ids=kv_seg,
              q_offset=q_offset)
  fn = lambda q, k, v: pallas_gpu_attention(q, k, v, mask, block_sizes=BLOCKS16, interpret=True)
  _check_against_reference(fn, q, k, v, w, mask)


# --- TPU splash kernel (interpret mode on CPU) -----------------------------------------

# Splash tiles are multiples of 128: (T, S, q_offset) with blocks of 128 (self: 2 x 2
# blocks) and a prefill call (query block 128, key blocks 128 over 384 keys).
SPLASH_GEOMETRIES = {"self": (256, 256, 0), "prefill": (128, 384, 256)}


def _splash_case(causal, window, segments, geometry, groups):
  rng = np.random.default_rng(zlib.crc32(repr(("splash", causal, window, segments, geometry,
                                                groups)).encode()))
  T, S, q_offset = SPLASH_GEOMETRIES[geometry]
  q, k, v, w = _inputs(rng, T, S, N // groups, H=32)
  mask = _mask(rng, T, S, q_offset, causal, SPLASH_WINDOWS[window], segments)
  fn = lambda q, k, v: splash_attention(q, k, v, mask, interpret=True)
  _check_against_reference(fn, q, k, v, w, mask)


@pytest.mark.parametrize("causal,window,segments,geometry,groups", [
    (True, "none", True, "self", 2),          # global layer, packed, GQA
    (True, "small", True, "self", 4),         # local layer: window < block, MQA
    (True, "gt_block", False, "prefill", 1),  # window > block, q_offset, MHA
])
def test_splash_matches_reference(causal, window, segments, geometry, groups):
  _splash_case(causal, window, segments, geometry, groups)


@pytest.mark.slow
@pytest.mark.parametrize("geometry,groups", [("self", 2), ("prefill", 4)])
@pytest.mark.parametrize("segments", [False, True], ids=["noseg", "packed"])
@pytest.mark.parametrize("window", list(SPLASH_WINDOWS))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_splash_matches_reference_all_masks(causal, window, segments, geometry, groups):
  _splash_case(causal, window, segments, geometry, groups)


def test_splash_kernel_cache_serves_later_traces():
  """Kernels are cached per (shape, mask); one built inside a jit trace must serve the
  next trace (its mask-info arrays must not be tracers), with or without segment ids."""
  rng = np.random.default_rng(2)
  q, k, v, _ = _inputs(rng, 128, 128, K=1, H=32)
  seg = _packed_segments(rng, 128)
  for mask in (Mask(window=50), Mask(window=50, q_segment_ids=seg, kv_segment_ids=seg)):
    out = jax.jit(lambda q, k, v: splash_attention(q, k, v, mask, interpret=True))(q, k, v)
    np.testing.assert_allclose(np.asarray(out), np.asarray(reference_attention(q, k, v, mask)),
                               atol=1e-5)


# --- cuDNN: mask translation through the XLA implementation of the same call -----------

@pytest.mark.parametrize("causal,window,T,S,groups", [
    (True, 1, 40, 40, 2), (True, 7, 24, 40, 4), (False, None, 24, 40, 1)])
def test_cudnn_mask_translation(causal, window, T, S, groups):
  """`cudnn_attention`'s arguments (is_causal, local_window_size=(W-1, 0)) mean our
  mask: checked with implementation='xla', which shares the API's semantics."""
  rng = np.random.default_rng(zlib.crc32(repr((causal, window, T, S, groups)).encode()))
  q, k, v, w = _inputs(rng, T, S, N // groups, H=8)
  mask = Mask(causal=causal, window=window)
  fn = lambda q, k, v: cudnn_attention(q, k, v, mask, implementation="xla")
  _check_against_reference(fn, q, k, v, w, mask)


# --- Dispatch -----------------------------------------------------------------------------

BIG, SMALL = (1, 1024, 8, 128), (1, 256, 8, 128)


def _kv(shape, K=2):
  return (shape[0], shape[1], K, shape[3])


SEG = jnp.zeros((1, 1024), jnp.int32)
SEG_SMALL = jnp.zeros((1, 256), jnp.int32)
TINY = (1, 128, 8, 128)
SEG_TINY = jnp.zeros((1, 128), jnp.int32)
TRACED_OFFSET = jnp.asarray(5)  # not a Python int: what a jitted prefill offset looks like


@pytest.mark.parametrize("platform,mask,dtype,shape,want", [
    ("tpu", Mask(), "bfloat16", BIG, "splash"),
    ("tpu", Mask(window=64, q_segment_ids=SEG, kv_segment_ids=SEG), "float32", BIG, "splash"),
    ("tpu", Mask(), "bfloat16", (1, 1000, 8, 128), "chunked"),       # not a multiple of 128
    ("tpu", Mask(q_offset=TRACED_OFFSET), "bfloat16", BIG, "chunked"),
    ("tpu", Mask(), "bfloat16", (1, 200, 8, 128), "reference"),      # small, odd length
    ("gpu", Mask(), "bfloat16", BIG, "cudnn"),
    ("gpu", Mask(window=64), "float16", BIG, "cudnn"),
    ("gpu", Mask(causal=False), "bfloat16", BIG, "cudnn"),
    ("gpu", Mask(), "float32", BIG, "pallas_gpu"),                   # cuDNN needs half precision
    ("gpu", Mask(q_segment_ids=SEG, kv_segment_ids=SEG), "bfloat16", BIG, "pallas_gpu"),
    ("gpu", Mask(window=64, q_segment_ids=SEG, kv_segment_ids=SEG), "bfloat16", BIG, "pallas_gpu"),
    ("gpu", Mask(causal=False, window=64), "bfloat16", BIG, "pallas_gpu"),
    ("gpu", Mask(q_offset=64), "bfloat16", BIG, "pallas_gpu"),
    ("gpu", Mask(), "bfloat16", (1, 1024, 8, 100), "pallas_gpu"),    # head dim not % 8
    ("gpu", Mask(q_offset=TRACED_OFFSET), "bfloat16", BIG, "chunked"),
    ("gpu", Mask(q_offset=TRACED_OFFSET), "bfloat16", SMALL, "reference"),
    ("cpu", Mask(), "bfloat16", TINY, "reference"),
    ("cpu", Mask(q_segment_ids=SEG_TINY, kv_segment_ids=SEG_TINY), "float32", TINY, "reference"),
    ("cpu", Mask(), "float32", (1, 129, 8, 128), "chunked"),          # CPU: chunked above 128 x 128
    ("cpu", Mask(q_segment_ids=SEG_SMALL, kv_segment_ids=SEG_SMALL), "float32", SMALL, "chunked"),
    ("cpu", Mask(), "bfloat16", BIG, "chunked"),
    ("cpu", Mask(window=64), "float32", BIG, "chunked"),
    ("cpu", Mask(window=16), "float32", SMALL, "band"),               # CPU: short windows
    ("cpu", Mask(window=32, q_segment_ids=SEG, kv_segment_ids=SEG), "float32", BIG, "band"),
    ("cpu", Mask(window=33), "float32", BIG, "chunked"),
    ("cpu", Mask(window=16), "float32", TINY, "reference"),           # small scores first
    ("cpu", Mask(window=16, q_offset=TRACED_OFFSET), "float32", BIG, "chunked"),
    ("cpu", Mask(causal=False, window=16), "float32", BIG, "chunked"),
    ("gpu", Mask(window=16), "float32", BIG, "pallas_gpu"),
])
def test_choose_impl(platform, mask, dtype, shape, want):
  """The 'auto' policy as a pure function of (platform, mask, dtype, shapes)."""
  assert choose_impl(platform, mask, jnp.dtype(dtype), shape, _kv(shape)) == want


@pytest.mark.parametrize("impl,platform,mask,dtype,shape,phrase", [
    ("cudnn", "cpu", Mask(), "bfloat16", BIG, "platform 'cpu'"),
    ("splash", "gpu", Mask(), "bfloat16", BIG, "platform 'gpu'"),
    ("pallas_gpu", "tpu", Mask(), "bfloat16", BIG, "platform 'tpu'"),
    ("cudnn", "gpu", Mask(q_segment_ids=SEG, kv_segment_ids=SEG), "bfloat16", BIG, "segment ids"),
    ("cudnn", "gpu", Mask(), "float32", BIG, "float32"),
    ("cudnn", "gpu", Mask(q_offset=3), "bfloat16", BIG, "q_offset"),
    ("cudnn", "gpu", Mask(causal=False, window=8), "bfloat16", BIG, "window without a causal"),
    ("cudnn", "gpu", Mask(), "bfloat16", (1, 1024, 8, 100), "head dim 100"),
    ("pallas_gpu", "gpu", Mask(q_offset=TRACED_OFFSET), "bfloat16", BIG, "traced q_offset"),
    ("splash", "tpu", Mask(), "bfloat16", (1, 1000, 8, 128), "multiples of 128"),
    ("splash", "tpu", Mask(q_offset=TRACED_OFFSET), "bfloat16", BIG, "traced q_offset"),
    ("band", "cpu", Mask(), "float32", BIG, "without a window"),
    ("band", "cpu", Mask(window=8, q_offset=TRACED_OFFSET), "float32", BIG, "q_offset"),
])
def test_explicit_unsupported_impl_raises(monkeypatch, impl, platform, mask, dtype, shape, phrase):
  """An explicit impl that cannot serve the call fails before running, naming the
  backend and the feature."""
  monkeypatch.setattr(attn, "platform_of", lambda x: platform)
  q = jnp.zeros(shape, dtype)
  kv = jnp.zeros(_kv(shape), dtype)
  with pytest.raises(ValueError, match=f"impl='{impl}'.*{phrase}"):
    attention(q, kv, kv, mask, impl=impl)


def test_unknown_impl_raises():
  x = jnp.zeros(SMALL)
  with pytest.raises(ValueError, match="unknown impl 'flash'"):
    attention(x, x, x, Mask(), impl="flash")


def test_every_backend_declares_support_and_auto_runs_on_cpu():
  """Every registered backend answers `supports`; on CPU 'auto' picks the reference
  for small shapes, the band kernel for a short window and the chunked kernel for
  the rest, all matching the reference."""
  assert set(BACKENDS) == {"reference", "chunked", "band", "splash", "cudnn", "pallas_gpu"}
  for name, backend in BACKENDS.items():
    reason = backend.supports(Mask(), jnp.dtype(jnp.bfloat16), "cpu", BIG, _kv(BIG))
    assert (reason is None) == (name in ("reference", "chunked")), name
    reason = backend.supports(Mask(window=8), jnp.dtype(jnp.float32), "cpu", BIG, _kv(BIG))
    assert (reason is None) == (name in ("reference", "chunked", "band")), name
  assert attn.platform_of(jnp.zeros(3)) == "cpu"
  rng = np.random.default_rng(0)
  for T, window in ((16, 100), (600, 100), (600, 16)):
    q = jnp.asarray(rng.normal(size=(1, T, 2, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, T, 1, 8)), jnp.float32)
    mask = Mask(window=window)
    out = jax.jit(lambda q, k: attention(q, k, k, mask, chunk=128))(q, k)
    np.testing.assert_allclose(np.asarray(out), np.asarray(reference_attention(q, k, k, mask)),
                               atol=1e-5)


@pytest.mark.parametrize("platform,window,chunk,want", [
    ("cpu", 16, 512, 32),    # half the window is below the floor: 32
    ("cpu", 128, 512, 64),   # half the window
    ("cpu", 128, 48, 48),    # never above the configured chunk
    ("cpu", None, 512, 512),  # global layers keep the chunk
    ("gpu", 16, 512, 512),
    ("tpu", 128, 512, 512),
])
def test_block_size(platform, window, chunk, want):
  """The chunked kernel's block: on CPU half a sliding window (at least 32, at most
  the configured chunk); everywhere else, and for global layers, the chunk."""
  assert attn.block_size(platform, Mask(window=window), chunk) == want


def test_cpu_window_layers_run_smaller_blocks(monkeypatch):
  """The dispatch hands the chunked kernel the smaller block for a windowed mask
  (and only then), and the result still matches the einsum reference."""
  seen = []
  kernel = attn.chunked_attention
  monkeypatch.setattr(attn, "chunked_attention",
                      lambda *a, chunk_size, **kw: seen.append(chunk_size) or kernel(
                          *a, chunk_size=chunk_size, **kw))
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(1, 300, 2, 8)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 300, 1, 8)), jnp.float32)
  for mask in (Mask(window=100), Mask()):
    out = attention(q, k, k, mask, impl="chunked", chunk=256)
    np.testing.assert_allclose(np.asarray(out), np.asarray(reference_attention(q, k, k, mask)),
                               atol=1e-5)
  assert seen == [50, 256]


# --- Compiled kernels on their hardware ----------------------------------------------------

def _hw_case(impl, mask_name, dtype, T=512, K=2, H=64):
  """Output and gradients of `attention(impl=...)` vs the f32 reference on the same
  (rounded) inputs, as relative errors."""
  rng = np.random.default_rng(zlib.crc32(repr((impl, mask_name)).encode()))
  q, k, v, w = _inputs(rng, T, T, K, H, dtype)
  seg = _packed_segments(rng, T, docs=4)
  mask = {"causal": Mask(), "window": Mask(window=100), "full": Mask(causal=False),
          "packed": Mask(q_segment_ids=seg, kv_segment_ids=seg),
          "packed_window": Mask(window=100, q_segment_ids=seg, kv_segment_ids=seg)}[mask_name]
  out, grads = jax.jit(functools.partial(
      _out_and_grads, lambda q, k, v: attention(q, k, v, mask, impl=impl)))(q, k, v, w)
  f32 = [x.astype(jnp.float32) for x in (q, k, v, w)]
  ref_out, ref_grads = _out_and_grads(lambda q, k, v: reference_attention(q, k, v, mask), *f32)
  return [_rel_err(out, ref_out)] + [_rel_err(g, r) for g, r in zip(grads, ref_grads)]


@pytest.mark.gpu
@pytest.mark.parametrize("impl,mask_name", [
    ("cudnn", "causal"), ("cudnn", "window"), ("cudnn", "full"),
    ("pallas_gpu", "causal"), ("pallas_gpu", "window"), ("pallas_gpu", "packed"),
    ("pallas_gpu", "packed_window")])
def test_gpu_kernels_bfloat16(impl, mask_name):
  assert max(_hw_case(impl, mask_name, jnp.bfloat16)) < 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("mask_name", ["causal", "packed_window"])
def test_pallas_gpu_float32_on_gpu(mask_name):
  assert max(_hw_case("pallas_gpu", mask_name, jnp.float32)) < 1e-4


@pytest.mark.gpu
def test_auto_on_gpu_picks_kernels():
  shape = (1, 1024, 8, 64)
  seg = jnp.zeros((1, 1024), jnp.int32)
  packed = Mask(q_segment_ids=seg, kv_segment_ids=seg)
  assert choose_impl("gpu", Mask(), jnp.dtype(jnp.bfloat16), shape, _kv(shape)) == "cudnn"
  assert choose_impl("gpu", packed, jnp.dtype(jnp.bfloat16), shape, _kv(shape)) == "pallas_gpu"
  assert attn.platform_of(jnp.zeros(3)) == "gpu"


@pytest.mark.tpu
@pytest.mark.parametrize("mask_name", ["causal", "window", "packed_window"])
def test_splash_on_tpu(mask_name):
  assert max(_hw_case("splash", mask_name, jnp.bfloat16, H=128)) < 2e-2
