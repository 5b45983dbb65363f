"""Chunked (flash-style) attention in plain JAX: online softmax over key chunks.

Algorithm. Queries are cut into chunks of `cq` rows and keys into chunks of `ck`
columns (the tails are padded and masked). A `lax.scan` walks the query chunks;
for each one a `fori_loop` with *traced* bounds walks only the key chunks that
intersect that query chunk's causal/window band, keeping a running row max `m`,
normaliser `l` and un-normalised output `acc` (the online softmax). Key chunks
outside the band are never visited, so a window of W keys costs
O(T * (W + chunk) * H) FLOPs instead of O(T * S * H). With segment ids the
range is also cut to the key chunks whose ids can match the query chunk's
(`_segment_ranges`): over packed documents a global layer visits only the
chunks of the documents each query chunk holds. Inside a visited block the
exact position mask (causal, window, padding) and the segment ids are applied
elementwise.

Memory. Besides inputs and outputs, a step holds one [B, K, G, cq, ck] float32
score block and [B, K, G, cq, H] accumulators; the float32 logsumexp
[B, K, G, T] is the only other T-sized result. No [T, S] array is ever built.

Backward (FlashAttention-2). The forward saves `out` and `lse`. With
D = rowsum(dout * out), a block's probabilities are recomputed as
p = exp(s - lse) and ds = p * (dout @ v^T - D). One pass walks the key chunks
and, for each, the band of query chunks that can see it (skipping the blocks the
forward skips): dk and dv accumulate in the loop carry, dq in a [n, ...] buffer
indexed by query chunk. Each block costs five matmuls (s, dp, dk, dv, dq); a
dq pass separate from the dk/dv pass recomputes s and dp, seven.
Layouts, for XLA CPU (issue 13): blocks are built keys-first ([k, (G, q)]), so
dk and dv contract over the block's minor axes; built queries-first, XLA
materialised a transposed copy of every block (30% of a T = 1024 step). dq is
computed transposed, as k^T @ ds into [H, (G, q)], so that only the small k
block is transposed, never ds; the buffer is transposed back once at the end.
(The same fused pass computing dq as ds^T @ k copied ds per block and was slower
than two passes; in this layout one pass ran a T = 1024 layer's fwd+bwd
1.2-1.6x faster than the two passes.)

GQA: q is viewed as [B, T, K, G, H]; each kv head serves its G query heads via
broadcasting in the einsums, so K/V are never repeated.

The mask's position part (causal, window, q_offset) enters as traced scalars
(`_Band`): loop bounds are dynamic anyway, so one compilation serves every mask
of a given shape, and a traced `q_offset` (chunked prefill under one jit) works.

Names: `n` indexes chunks; inside a block `q` is a query chunk's rows and `k` a
key chunk's columns; the other letters are STYLE.md's (B, T, S, N, K, G, H).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from cwm_jax.model.attention.mask import Mask

_F32 = jnp.float32
_NO_WINDOW = 2 ** 30  # a window that reaches every key; keeps int32 arithmetic safe


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Static (hashable) shapes of one call: sequence lengths, chunking and scale."""
  T: int
  S: int
  cq: int
  ck: int
  scale: float

  @property
  def nq(self) -> int:
    return -(-self.T // self.cq)

  @property
  def nk(self) -> int:
    return -(-self.S // self.ck)


class _Band(NamedTuple):
  """The position part of a `Mask` as (possibly traced) scalars."""
  causal: jax.Array    # bool
  window: jax.Array    # int32, _NO_WINDOW for none
  q_offset: jax.Array  # int32

  @classmethod
  def of(cls, mask: Mask) -> "_Band":
    window = _NO_WINDOW if mask.window is None else mask.window
    return cls(jnp.asarray(mask.causal, bool), jnp.asarray(window, jnp.int32),
               jnp.asarray(mask.q_offset, jnp.int32))


def _key_chunks(p: _Plan, band: _Band, qi):
  """[lo, hi) of the key chunks holding any key that query chunk `qi` may see."""
  first_q = qi * p.cq + band.q_offset
  last_q = jnp.minimum(qi * p.cq + p.cq, p.T) - 1 + band.q_offset
  hi_key = jnp.where(band.causal, jnp.minimum(last_q, p.S - 1), p.S - 1)
  lo_key = jnp.maximum(first_q - band.window + 1, 0)
  lo = lo_key // p.ck
  return lo, jnp.where(lo_key <= hi_key, hi_key // p.ck + 1, lo)


def _query_chunks(p: _Plan, band: _Band, kj):
  """[lo, hi) of the query chunks holding any query that may see key chunk `kj`."""
  first_k = kj * p.ck
  last_k = jnp.minimum(kj * p.ck + p.ck, p.S) - 1
  lo_i = jnp.where(band.causal, jnp.maximum(first_k - band.q_offset, 0), 0)
  hi_i = jnp.minimum(last_k + band.window - 1 - band.q_offset, p.T - 1)
  lo = lo_i // p.cq
  return lo, jnp.where(lo_i <= hi_i, hi_i // p.cq + 1, lo)


class _SegmentRanges(NamedTuple):
  """Per query chunk the [lo, hi) of key chunks whose segment ids can match any of
  its own (in some row), and per key chunk the same range of query chunks."""
  k_lo: jax.Array  # [nq] int32
  k_hi: jax.Array
  q_lo: jax.Array  # [nk] int32
  q_hi: jax.Array


def _segment_ranges(p: _Plan, qseg_nBq, kseg_nBk) -> "_SegmentRanges | None":
  """Chunk ranges from each chunk's [min, max] segment id per row (padding excluded).
  A block outside them has no query-key pair in one segment: fully masked, so
  skipping it changes no result. With packed documents (ids non-decreasing along
  a row) a query chunk's range is its own documents' chunks: a global layer's
  causal band shrinks to the chunks of the documents it holds."""
  if qseg_nBq is None:
    return None
  big = jnp.iinfo(jnp.int32).max

  def bounds(seg_nBc, n, c, length):
    valid_n1c = (jnp.arange(n * c) < length).reshape(n, 1, c)
    seg = seg_nBc.astype(jnp.int32)
    return (jnp.min(jnp.where(valid_n1c, seg, big), axis=-1),
            jnp.max(jnp.where(valid_n1c, seg, -big), axis=-1))

  qmin_nB, qmax_nB = bounds(qseg_nBq, p.nq, p.cq, p.T)
  kmin_nB, kmax_nB = bounds(kseg_nBk, p.nk, p.ck, p.S)
  overlap_qk = jnp.any((qmin_nB[:, None] <= kmax_nB[None]) & (kmin_nB[None] <= qmax_nB[:, None]),
                       axis=-1)

  def first_last(ok_ab):
    """[lo, hi) of the True entries along the last axis (lo == hi == 0 if none)."""
    n = ok_ab.shape[-1]
    lo = jnp.argmax(ok_ab, axis=-1)
    hi = n - jnp.argmax(ok_ab[..., ::-1], axis=-1)
    some = jnp.any(ok_ab, axis=-1)
    return jnp.where(some, lo, 0).astype(jnp.int32), jnp.where(some, hi, 0).astype(jnp.int32)

  k_lo, k_hi = first_last(overlap_qk)
  q_lo, q_hi = first_last(overlap_qk.T)
  return _SegmentRanges(k_lo, k_hi, q_lo, q_hi)


def _clip(lo, hi, seg_lo, seg_hi):
  """The intersection of two chunk ranges, empty (hi == lo) if they do not meet."""
  lo, hi = jnp.maximum(lo, seg_lo), jnp.minimum(hi, seg_hi)
  return lo, jnp.maximum(hi, lo)


def _block_ok(p: _Plan, band: _Band, qi, kj, qseg_Bq, kseg_Bk, *, keys_first=False):
  """Boolean [B or 1, q, k] (or [B or 1, k, q] with `keys_first`) mask of block (qi, kj)."""
  i_q = qi * p.cq + jnp.arange(p.cq)
  j_k = kj * p.ck + jnp.arange(p.ck)
  # Query positions along one axis, keys along the other, in the layout asked for.
  a_q, j_k = ((i_q + band.q_offset)[None, :], j_k[:, None]) if keys_first else \
      ((i_q + band.q_offset)[:, None], j_k[None, :])
  i_q = i_q[None, :] if keys_first else i_q[:, None]
  ok = (i_q < p.T) & (j_k < p.S) & (j_k > a_q - band.window)
  ok &= (j_k <= a_q) | ~band.causal
  ok = ok[None]
  if qseg_Bq is not None:
    ok = ok & (kseg_Bk[:, :, None] == qseg_Bq[:, None, :] if keys_first
               else qseg_Bq[:, :, None] == kseg_Bk[:, None, :])
  return ok


def _block_scores(p: _Plan, band: _Band, qi, kj, q_BKGqH, k_BKkH, qseg_Bq, kseg_Bk):
  """Scaled float32 scores of block (qi, kj), -inf where the mask forbids."""
  s_BKGqk = jnp.einsum("BKGqH,BKkH->BKGqk", q_BKGqH, k_BKkH,
                       preferred_element_type=_F32) * p.scale
  ok_Bqk = _block_ok(p, band, qi, kj, qseg_Bq, kseg_Bk)
  return jnp.where(ok_Bqk[:, None, None], s_BKGqk, -jnp.inf)


def _block_scores_t(p: _Plan, band: _Band, qi, kj, q_BKGqH, k_BKkH, qseg_Bq, kseg_Bk):
  """`_block_scores` transposed, keys first: [B, K, k, G, q]. The backward
  contracts dk and dv over the query rows (G, q); with them minor here they need no
  transposed copy of the block (on CPU that copy cost more than the matmuls)."""
  s_BKkGq = jnp.einsum("BKkH,BKGqH->BKkGq", k_BKkH, q_BKGqH,
                       preferred_element_type=_F32) * p.scale
  ok_Bkq = _block_ok(p, band, qi, kj, qseg_Bq, kseg_Bk, keys_first=True)
  return jnp.where(ok_Bkq[:, None, :, None], s_BKkGq, -jnp.inf)


def _forward(p: _Plan, band: _Band, q_nBKGqH, k_nBKkH, v_nBKkH, qseg_nBq, kseg_nBk):
  """Online-softmax forward. Returns out (q dtype), lse (f32) and the block count."""
  B, K, G, _, H = q_nBKGqH.shape[1:]
  ranges = _segment_ranges(p, qseg_nBq, kseg_nBk)

  def q_step(count, xs):
    qi, q_BKGqH, qseg_Bq = xs

    def k_step(kj, carry):
      m_BKGq, l_BKGq, acc_BKGqH, count = carry
      kseg_Bk = None if kseg_nBk is None else kseg_nBk[kj]
      v_BKkH = v_nBKkH[kj]
      s_BKGqk = _block_scores(p, band, qi, kj, q_BKGqH, k_nBKkH[kj], qseg_Bq, kseg_Bk)
      m_new = jnp.maximum(m_BKGq, s_BKGqk.max(-1))
      m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # all-masked rows so far
      p_BKGqk = jnp.exp(s_BKGqk - m_safe[..., None])
      alpha_BKGq = jnp.exp(m_BKGq - m_safe)
      l_BKGq = alpha_BKGq * l_BKGq + p_BKGqk.sum(-1)
      pv_BKGqH = jnp.einsum("BKGqk,BKkH->BKGqH", p_BKGqk.astype(v_BKkH.dtype), v_BKkH,
                            preferred_element_type=_F32)
      return m_new, l_BKGq, alpha_BKGq[..., None] * acc_BKGqH + pv_BKGqH, count + 1

    init = (jnp.full((B, K, G, p.cq), -jnp.inf, _F32), jnp.zeros((B, K, G, p.cq), _F32),
            jnp.zeros((B, K, G, p.cq, H), _F32), count)
    lo, hi = _key_chunks(p, band, qi)
    if ranges is not None:
      lo, hi = _clip(lo, hi, ranges.k_lo[qi], ranges.k_hi[qi])
    m_BKGq, l_BKGq, acc_BKGqH, count = lax.fori_loop(lo, hi, k_step, init)
    seen_BKGq = l_BKGq > 0
    out_BKGqH = acc_BKGqH / jnp.where(seen_BKGq, l_BKGq, 1.0)[..., None]
    lse_BKGq = jnp.where(seen_BKGq, m_BKGq + jnp.log(jnp.where(seen_BKGq, l_BKGq, 1.0)), 0.0)
    return count, (out_BKGqH.astype(q_BKGqH.dtype), lse_BKGq)

  xs = (jnp.arange(p.nq), q_nBKGqH, qseg_nBq)
  count, (out_nBKGqH, lse_nBKGq) = lax.scan(q_step, jnp.int32(0), xs)
  return out_nBKGqH, lse_nBKGq, count


def _backward(p: _Plan, res, dout_nBKGqH):
  """FlashAttention-2 backward in one pass over the blocks, keys outer. Returns the
  gradients and the number of blocks visited."""
  band, q_nBKGqH, k_nBKkH, v_nBKkH, qseg_nBq, kseg_nBk, out_nBKGqH, lse_nBKGq = res
  # A contraction, not multiply-then-sum: XLA:CPU runs the latter as a YNNPACK
  # reduce fusion, several times slower here (issue 13, as in `model/norm.py`).
  d_nBKGq = jnp.einsum("nBKGqH,nBKGqH->nBKGq", dout_nBKGqH.astype(_F32),
                       out_nBKGqH.astype(_F32))
  ranges = _segment_ranges(p, qseg_nBq, kseg_nBk)
  n, B, K, G, cq, H = q_nBKGqH.shape

  def kv_step(carry, xs):
    dqT_nBKHGq, count = carry
    kj, k_BKkH, v_BKkH, kseg_Bk = xs

    def q_step(qi, carry):
      dk_BKkH, dv_BKkH, dqT_nBKHGq, count = carry
      q_BKGqH, do_BKGqH = q_nBKGqH[qi], dout_nBKGqH[qi]
      qseg_Bq = None if qseg_nBq is None else qseg_nBq[qi]
      # The block keys-first ([k, (G, q)]): dk and dv contract over its minor (G, q).
      s_BKkGq = _block_scores_t(p, band, qi, kj, q_BKGqH, k_BKkH, qseg_Bq, kseg_Bk)
      p_BKkGq = jnp.exp(s_BKkGq - lse_nBKGq[qi][:, :, None])
      dp_BKkGq = jnp.einsum("BKkH,BKGqH->BKkGq", v_BKkH, do_BKGqH, preferred_element_type=_F32)
      ds_BKkGq = p_BKkGq * (dp_BKkGq - d_nBKGq[qi][:, :, None])
      dk_BKkH += jnp.einsum("BKkGq,BKGqH->BKkH", ds_BKkGq.astype(q_BKGqH.dtype), q_BKGqH,
                            preferred_element_type=_F32)
      dv_BKkH += jnp.einsum("BKkGq,BKGqH->BKkH", p_BKkGq.astype(do_BKGqH.dtype), do_BKGqH,
                            preferred_element_type=_F32)
      # dq transposed, k^T @ ds: only the small k block is transposed, not ds.
      dqT_BKHGq = jnp.einsum("BKkH,BKkGq->BKHGq", k_BKkH, ds_BKkGq.astype(k_BKkH.dtype),
                             preferred_element_type=_F32)
      dqT_nBKHGq = lax.dynamic_update_index_in_dim(
          dqT_nBKHGq, dqT_nBKHGq[qi] + dqT_BKHGq, qi, axis=0)
      return dk_BKkH, dv_BKkH, dqT_nBKHGq, count + 1

    zeros_BKkH = jnp.zeros(k_BKkH.shape, _F32)
    lo, hi = _query_chunks(p, band, kj)
    if ranges is not None:
      lo, hi = _clip(lo, hi, ranges.q_lo[kj], ranges.q_hi[kj])
    dk_BKkH, dv_BKkH, dqT_nBKHGq, count = lax.fori_loop(
        lo, hi, q_step, (zeros_BKkH, zeros_BKkH, dqT_nBKHGq, count))
    return (dqT_nBKHGq, count), ((dk_BKkH * p.scale).astype(k_BKkH.dtype),
                                 dv_BKkH.astype(v_BKkH.dtype))

  init = (jnp.zeros((n, B, K, H, G, cq), _F32), jnp.int32(0))
  (dqT_nBKHGq, count), (dk_nBKkH, dv_nBKkH) = lax.scan(
      kv_step, init, (jnp.arange(p.nk), k_nBKkH, v_nBKkH, kseg_nBk))
  dq_nBKGqH = (dqT_nBKHGq.transpose(0, 1, 2, 4, 5, 3) * p.scale).astype(q_nBKGqH.dtype)
  return dq_nBKGqH, dk_nBKkH, dv_nBKkH, count


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(p, band, q_nBKGqH, k_nBKkH, v_nBKkH, qseg_nBq, kseg_nBk):
  return _forward(p, band, q_nBKGqH, k_nBKkH, v_nBKkH, qseg_nBq, kseg_nBk)[0]


def _flash_fwd(p, band, q_nBKGqH, k_nBKkH, v_nBKkH, qseg_nBq, kseg_nBk):
  out_nBKGqH, lse_nBKGq, _ = _forward(p, band, q_nBKGqH, k_nBKkH, v_nBKkH, qseg_nBq, kseg_nBk)
  return out_nBKGqH, (band, q_nBKGqH, k_nBKkH, v_nBKkH, qseg_nBq, kseg_nBk, out_nBKGqH, lse_nBKGq)


def _flash_bwd(p, res, dout_nBKGqH):
  dq, dk, dv, _ = _backward(p, res, dout_nBKGqH)
  return None, dq, dk, dv, None, None  # band and segment ids: integer, non-differentiable


_flash.defvjp(_flash_fwd, _flash_bwd)


def _to_chunks(x_BT_, c: int, pad_value=0):
  """[B, T, ...] -> [n, B, ..., c] chunks (time moved next to the trailing feature axis)."""
  B, T = x_BT_.shape[:2]
  n = -(-T // c)
  x = jnp.pad(x_BT_, [(0, 0), (0, n * c - T)] + [(0, 0)] * (x_BT_.ndim - 2),
              constant_values=pad_value)
  x = x.reshape(B, n, c, *x_BT_.shape[2:])
  feat = tuple(range(3, x.ndim))
  # Put n first, keep B, then the head axes, then c, then the last (H) axis if any.
  if feat:
    return x.transpose((1, 0) + feat[:-1] + (2, feat[-1]))
  return x.transpose(1, 0, 2)


def _prepare(q_BTNH, k_BSKH, v_BSKH, band: _Band, q_seg_BT, kv_seg_BS, chunk_size: int, scale):
  """Static plan plus the chunked-layout arguments of `_flash`."""
  B, T, N, H = q_BTNH.shape
  S, K = k_BSKH.shape[1], k_BSKH.shape[2]
  scale = H ** -0.5 if scale is None else float(scale)
  p = _Plan(T=T, S=S, cq=min(chunk_size, T), ck=min(chunk_size, S), scale=scale)
  q_nBKGqH = _to_chunks(q_BTNH.reshape(B, T, K, N // K, H), p.cq)
  k_nBKkH, v_nBKkH = _to_chunks(k_BSKH, p.ck), _to_chunks(v_BSKH, p.ck)
  qseg_nBq = kseg_nBk = None
  if q_seg_BT is not None:
    qseg_nBq = _to_chunks(q_seg_BT, p.cq, pad_value=-1)
    kseg_nBk = _to_chunks(kv_seg_BS, p.ck, pad_value=-1)
  return p, (band, q_nBKGqH, k_nBKkH, v_nBKkH, qseg_nBq, kseg_nBk)


def chunked_attention(q_BTNH, k_BSKH, v_BSKH, mask: Mask, *, chunk_size: int = 512,
                      scale=None) -> jax.Array:
  """Flash-style attention: q [B,T,N,H], k=v [B,S,K,H] (N % K == 0) -> [B,T,N,H].

  Same semantics as `reference_attention` (rows that see no key give zeros),
  with O(T * chunk_size) memory, skipped out-of-band key chunks and a
  FlashAttention-2 custom VJP. `scale` must be a Python number (static);
  `mask.q_offset` may be a traced integer.
  """
  return _attend(q_BTNH, k_BSKH, v_BSKH, _Band.of(mask), mask.q_segment_ids,
                 mask.kv_segment_ids, chunk_size=chunk_size, scale=scale)


def _attend(q_BTNH, k_BSKH, v_BSKH, band: _Band, q_seg_BT, kv_seg_BS, *, chunk_size: int,
            scale=None) -> jax.Array:
  """`chunked_attention` with the mask's position part as (possibly traced) `_Band`."""
  B, T, N, H = q_BTNH.shape
  p, args = _prepare(q_BTNH, k_BSKH, v_BSKH, band, q_seg_BT, kv_seg_BS, chunk_size, scale)
  out_nBKGqH = _flash(p, *args)
  # [n, B, K, G, q, H] -> [B, n, q, K, G, H] -> [B, T, N, H]
  out_BTNH = out_nBKGqH.transpose(1, 0, 4, 2, 3, 5).reshape(B, p.nq * p.cq, N, H)
  return out_BTNH[:, :T]


def processed_blocks(q_BTNH, k_BSKH, v_BSKH, mask: Mask, *, chunk_size: int = 512,
                     scale=None) -> dict[str, int]:
  """How many [cq, ck] blocks each pass (forward, backward) actually computes.

  Counted by the kernels' own loops (compiled, with traced bounds); a diagnostic
  for tests and benchmarks showing out-of-band blocks are skipped, not masked.
  """
  p, args = _prepare(q_BTNH, k_BSKH, v_BSKH, _Band.of(mask), mask.q_segment_ids,
                     mask.kv_segment_ids, chunk_size, scale)
  return {name: int(n) for name, n in zip(("forward", "backward"), _count_blocks(p, args))}


@functools.partial(jax.jit, static_argnums=0)
def _count_blocks(p: _Plan, args):
  out_nBKGqH, lse_nBKGq, n_fwd = _forward(p, *args)
  n_bwd = _backward(p, (*args, out_nBKGqH, lse_nBKGq), jnp.ones_like(out_nBKGqH))[3]
  return n_fwd, n_bwd
