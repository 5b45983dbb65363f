"""Flash attention for GPUs as Pallas (Triton) kernels: every `Mask` with a static
q_offset (causal, inclusive sliding window, packed documents, GQA).

Why our own kernel: JAX's shipped `pallas.ops.gpu.attention.mha` has causal and
segment ids but no window, no GQA, no q/kv offset, and is deprecated in JAX 0.11;
cuDNN has the window but no segment ids. Local layers over packed documents need
both, and they must skip the key blocks outside the window, not mask them.
(JAX 0.11 also marks the Pallas *Triton* backend itself deprecated in favour of
Mosaic GPU: this kernel is the one to port when it goes.)

Forward (grid [query block, B, N]): an online softmax over only the key blocks
that intersect the query block's causal/window band (loop bounds computed from
`program_id`), in the base-2 domain; rows that see no key give zeros. Query
head n reads kv head n // G through the BlockSpec index map, so K/V are never
repeated. Residual: the base-2 logsumexp [B, N, T].

Packed documents: when a row's segment ids are ascending (documents packed one
after another), each query block also skips the key blocks outside the span of
its documents, and each key block the query blocks outside its documents' span
(spans from `searchsorted` in XLA, passed as per-block [lo, hi) positions). Other
id layouts stay correct: those rows fall back to the position band alone.

Backward (FlashAttention-2): D = rowsum(dout * out) in XLA; a dq kernel (grid
[query block, B, N]) walks the band's key blocks; a dk/dv kernel (grid
[key block, B, K]) walks, for each of the kv head's G query heads, the query
blocks that can see the key block, so no cross-program reduction is needed.

Lengths and head dims are padded (queries/keys to the block sizes, H to a power
of two >= 16); padded keys are masked, padded query rows are discarded and carry
zero cotangents. Everything runs unchanged on CPU with `interpret=True`, which
is how the tests check it against the einsum reference.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from cwm_jax.model.attention.mask import Mask

_LOG2E = math.log2(math.e)
_F32 = jnp.float32
# Padded queries and keys carry ids no real token has (nor each other's); large, so
# ascending ids (packed documents) stay ascending after padding.
_Q_PAD_SEGMENT = 2 ** 31 - 1
_KV_PAD_SEGMENT = 2 ** 31 - 2


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tiles and Triton launch parameters of the three kernels (powers of two)."""
  block_q: int = 128       # forward
  block_k: int = 64
  block_q_bwd: int = 64    # dq and dk/dv kernels
  block_k_bwd: int = 64
  num_warps: int = 4
  num_warps_bwd: int = 4
  num_stages: int = 2


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Static description of one call (hashable: it keys the custom VJP)."""
  T: int            # real lengths
  S: int
  Tp: int           # padded lengths
  Sp: int
  H: int            # padded head dim
  G: int            # query heads per kv head
  causal: bool
  window: Optional[int]
  q_offset: int
  scale: float
  segments: bool
  blocks: BlockSizes
  interpret: bool


def unsupported(mask: Mask) -> Optional[str]:
  """Why this kernel cannot serve `mask`, or None."""
  if not isinstance(mask.q_offset, int):
    return "a traced q_offset (the kernel's loop bounds are static in it)"
  if mask.q_offset < 0:
    return f"a negative q_offset ({mask.q_offset})"
  return None


def _allowed(p: _Plan, pos_q, pos_k, qseg, kseg):
  """[bq, bk] (or broadcastable) boolean of the allowed (query, key) pairs, or None."""
  ok = []
  if p.causal:
    ok.append(pos_k[None, :] <= pos_q[:, None])
  if p.window is not None:
    ok.append(pos_k[None, :] > pos_q[:, None] - p.window)
  if p.Sp != p.S:
    ok.append(pos_k[None, :] < p.S)
  if qseg is not None:
    ok.append(qseg[:, None] == kseg[None, :])
  return functools.reduce(jnp.logical_and, ok) if ok else None


def _masked(s, ok):
  return s if ok is None else jnp.where(ok, s, -jnp.inf)


def _key_blocks(p: _Plan, qi, bq: int, bk: int):
  """[lo, hi) of the key blocks that query block `qi` may see."""
  if p.window is None:
    lo = 0
  else:
    lo = lax.div(jnp.maximum(qi * bq + p.q_offset - p.window + 1, 0), bk)
  if p.causal:
    last = jnp.minimum(jnp.minimum(qi * bq + bq, p.T) - 1 + p.q_offset, p.S - 1)
    hi = lax.div(last, bk) + 1
  else:
    hi = p.Sp // bk
  return lo, hi


def _query_blocks(p: _Plan, kj, bq: int, bk: int):
  """[lo, hi) of the query blocks that may see key block `kj`."""
  lo_i = jnp.maximum(kj * bk - p.q_offset, 0) if p.causal else 0
  if p.window is None:
    return lax.div(lo_i, bq), p.Tp // bq
  last_k = jnp.minimum(kj * bk + bk, p.S) - 1
  hi_i = jnp.minimum(last_k + p.window - 1 - p.q_offset, p.T - 1)
  lo = lax.div(lo_i, bq)
  return lo, jnp.where(lo_i <= hi_i, lax.div(jnp.maximum(hi_i, 0), bq) + 1, lo)


def _spans(seg_rows, seg_cols, rows_per_block: int, n_cols: int):
  """Per block of `rows_per_block` rows: [lo, hi) of the columns whose ids occur in
  the block ([B, n_blocks] int32 each; lo >= hi when none). Rows whose column ids
  are not ascending get the full range."""
  lo = jax.vmap(functools.partial(jnp.searchsorted, side="left"))(seg_cols, seg_rows)
  hi = jax.vmap(functools.partial(jnp.searchsorted, side="right"))(seg_cols, seg_rows)
  lo, hi = jnp.where(hi > lo, lo, n_cols), jnp.where(hi > lo, hi, 0)  # ids with no column
  B, T = seg_rows.shape
  lo = lo.reshape(B, T // rows_per_block, rows_per_block).min(-1)
  hi = hi.reshape(B, T // rows_per_block, rows_per_block).max(-1)
  ascending = jnp.all(seg_cols[:, 1:] >= seg_cols[:, :-1], axis=1, keepdims=True)
  return (jnp.where(ascending, lo, 0).astype(jnp.int32),
          jnp.where(ascending, hi, n_cols).astype(jnp.int32))


def _narrow(lo, hi, span_lo_ref, span_hi_ref, i, block: int):
  """Intersect a [lo, hi) block range with block i's segment span (positions)."""
  if span_lo_ref is None:
    return lo, hi
  return (jnp.maximum(lo, lax.div(span_lo_ref[i], block)),
          jnp.minimum(hi, lax.div(span_hi_ref[i] + block - 1, block)))


def _fwd_kernel(q_ref, k_ref, v_ref, qseg_ref, kseg_ref, span_lo_ref, span_hi_ref, o_ref, lse_ref,
                *, p: _Plan):
  bq, bk = p.blocks.block_q, p.blocks.block_k
  qi = pl.program_id(0)
  q = q_ref[...]
  qseg = None if qseg_ref is None else qseg_ref[...]
  pos_q = qi * bq + p.q_offset + jnp.arange(bq)

  def body(kj, carry):
    acc, m, l = carry
    start = pl.multiple_of(kj * bk, bk)
    k, v = k_ref[pl.ds(start, bk), :], v_ref[pl.ds(start, bk), :]
    kseg = None if kseg_ref is None else kseg_ref[pl.ds(start, bk)]
    s = plgpu.dot(q, k, trans_b=True) * (p.scale * _LOG2E)
    s = _masked(s, _allowed(p, pos_q, start + jnp.arange(bk), qseg, kseg))
    m_new = jnp.maximum(m, s.max(axis=1))
    m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # rows with nothing seen yet
    pr = jnp.exp2(s - m_use[:, None])
    alpha = jnp.exp2(m - m_use)
    l = alpha * l + pr.sum(axis=1)
    acc = alpha[:, None] * acc + plgpu.dot(pr.astype(v.dtype), v)
    return acc, m_new, l

  init = (jnp.zeros((bq, p.H), _F32), jnp.full((bq,), -jnp.inf, _F32), jnp.zeros((bq,), _F32))
  lo, hi = _narrow(*_key_blocks(p, qi, bq, bk), span_lo_ref, span_hi_ref, qi, bk)
  acc, m, l = lax.fori_loop(lo, hi, body, init)
  seen = l > 0
  l_safe = jnp.where(seen, l, 1.0)
  o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(seen, m + jnp.log2(l_safe), 0.0)


def _dq_kernel(q_ref, k_ref, v_ref, qseg_ref, kseg_ref, span_lo_ref, span_hi_ref, do_ref, lse_ref,
               delta_ref, dq_ref, *, p: _Plan):
  bq, bk = p.blocks.block_q_bwd, p.blocks.block_k_bwd
  qi = pl.program_id(0)
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  qseg = None if qseg_ref is None else qseg_ref[...]
  pos_q = qi * bq + p.q_offset + jnp.arange(bq)

  def body(kj, dq):
    start = pl.multiple_of(kj * bk, bk)
    k, v = k_ref[pl.ds(start, bk), :], v_ref[pl.ds(start, bk), :]
    kseg = None if kseg_ref is None else kseg_ref[pl.ds(start, bk)]
    s = plgpu.dot(q, k, trans_b=True) * (p.scale * _LOG2E)
    s = _masked(s, _allowed(p, pos_q, start + jnp.arange(bk), qseg, kseg))
    pr = jnp.exp2(s - lse[:, None])
    ds = pr * (plgpu.dot(do, v, trans_b=True) - delta[:, None])
    return dq + plgpu.dot(ds.astype(k.dtype), k)

  lo, hi = _narrow(*_key_blocks(p, qi, bq, bk), span_lo_ref, span_hi_ref, qi, bk)
  dq = lax.fori_loop(lo, hi, body, jnp.zeros((bq, p.H), _F32))
  dq_ref[...] = (dq * p.scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, qseg_ref, kseg_ref, span_lo_ref, span_hi_ref, do_ref, lse_ref,
                delta_ref, dk_ref, dv_ref, *, p: _Plan):
  bq, bk = p.blocks.block_q_bwd, p.blocks.block_k_bwd
  kj = pl.program_id(0)
  k, v = k_ref[...], v_ref[...]
  kseg = None if kseg_ref is None else kseg_ref[...]
  pos_k = kj * bk + jnp.arange(bk)
  lo, hi = _narrow(*_query_blocks(p, kj, bq, bk), span_lo_ref, span_hi_ref, kj, bq)
  dk = dv = jnp.zeros((bk, p.H), _F32)
  for g in range(p.G):  # the kv head's query heads, unrolled

    def body(qi, carry, g=g):
      dk, dv = carry
      start = pl.multiple_of(qi * bq, bq)
      q, do = q_ref[pl.ds(start, bq), g, :], do_ref[pl.ds(start, bq), g, :]
      lse, delta = lse_ref[g, pl.ds(start, bq)], delta_ref[g, pl.ds(start, bq)]
      qseg = None if qseg_ref is None else qseg_ref[pl.ds(start, bq)]
      pos_q = start + p.q_offset + jnp.arange(bq)
      s = plgpu.dot(q, k, trans_b=True) * (p.scale * _LOG2E)
      s = _masked(s, _allowed(p, pos_q, pos_k, qseg, kseg))
      pr = jnp.exp2(s - lse[:, None])
      dv = dv + plgpu.dot(pr.astype(do.dtype), do, trans_a=True)
      ds = pr * (plgpu.dot(do, v, trans_b=True) - delta[:, None])
      dk = dk + plgpu.dot(ds.astype(q.dtype), q, trans_a=True)
      return dk, dv

    dk, dv = lax.fori_loop(lo, hi, body, (dk, dv))
  dk_ref[...] = (dk * p.scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _seg_specs(p: _Plan, q_block, kv_block, q_index, kv_index, n_blocks, row_index):
  """Specs of q ids, kv ids and the [B, n_blocks] span bounds (None without segments)."""
  if not p.segments:
    return [None] * 4
  span = pl.BlockSpec((None, n_blocks), row_index)
  return [pl.BlockSpec((None, q_block), q_index), pl.BlockSpec((None, kv_block), kv_index),
          span, span]


def _forward(p: _Plan, q, k, v, qseg, kseg):
  B, _, N, H = q.shape
  bq = p.blocks.block_q
  kv_head = lambda qi, b, n: (b, 0, lax.div(n, p.G), 0)
  in_specs = [pl.BlockSpec((None, bq, None, H), lambda qi, b, n: (b, qi, n, 0)),
              pl.BlockSpec((None, p.Sp, None, H), kv_head),
              pl.BlockSpec((None, p.Sp, None, H), kv_head),
              *_seg_specs(p, bq, p.Sp, lambda qi, b, n: (b, qi), lambda qi, b, n: (b, 0),
                          p.Tp // bq, lambda qi, b, n: (b, 0))]
  spans = (None, None) if qseg is None else _spans(qseg, kseg, bq, p.Sp)
  out_specs = [pl.BlockSpec((None, bq, None, H), lambda qi, b, n: (b, qi, n, 0)),
               pl.BlockSpec((None, None, bq), lambda qi, b, n: (b, n, qi))]
  return pl.pallas_call(
      functools.partial(_fwd_kernel, p=p),
      grid=(p.Tp // bq, B, N),
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((B, N, p.Tp), _F32)],
      compiler_params=plgpu.CompilerParams(num_warps=p.blocks.num_warps,
                                           num_stages=p.blocks.num_stages),
      interpret=p.interpret,
      name="cwm_flash_fwd",
  )(q, k, v, qseg, kseg, *spans)


def _backward(p: _Plan, q, k, v, qseg, kseg, out, lse, do):
  B, _, N, H = q.shape
  K = k.shape[2]
  bq, bk = p.blocks.block_q_bwd, p.blocks.block_k_bwd
  delta = jnp.einsum("BTNH,BTNH->BNT", out.astype(_F32), do.astype(_F32))
  params = plgpu.CompilerParams(num_warps=p.blocks.num_warps_bwd, num_stages=p.blocks.num_stages)
  q_spans = kv_spans = (None, None)
  if qseg is not None:
    q_spans, kv_spans = _spans(qseg, kseg, bq, p.Sp), _spans(kseg, qseg, bk, p.Tp)

  kv_head = lambda qi, b, n: (b, 0, lax.div(n, p.G), 0)
  q_block = pl.BlockSpec((None, bq, None, H), lambda qi, b, n: (b, qi, n, 0))
  row_block = pl.BlockSpec((None, None, bq), lambda qi, b, n: (b, n, qi))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, p=p),
      grid=(p.Tp // bq, B, N),
      in_specs=[q_block,
                pl.BlockSpec((None, p.Sp, None, H), kv_head),
                pl.BlockSpec((None, p.Sp, None, H), kv_head),
                *_seg_specs(p, bq, p.Sp, lambda qi, b, n: (b, qi), lambda qi, b, n: (b, 0),
                            p.Tp // bq, lambda qi, b, n: (b, 0)),
                q_block, row_block, row_block],
      out_specs=q_block,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=params, interpret=p.interpret, name="cwm_flash_dq",
  )(q, k, v, qseg, kseg, *q_spans, do, lse, delta)

  group = pl.BlockSpec((None, p.Tp, p.G, H), lambda kj, b, kh: (b, 0, kh, 0))
  group_rows = pl.BlockSpec((None, p.G, p.Tp), lambda kj, b, kh: (b, kh, 0))
  kv_block = pl.BlockSpec((None, bk, None, H), lambda kj, b, kh: (b, kj, kh, 0))
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, p=p),
      grid=(p.Sp // bk, B, K),
      in_specs=[group, kv_block, kv_block,
                *_seg_specs(p, p.Tp, bk, lambda kj, b, kh: (b, 0), lambda kj, b, kh: (b, kj),
                            p.Sp // bk, lambda kj, b, kh: (b, 0)),
                group, group_rows, group_rows],
      out_specs=[kv_block, kv_block],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=params, interpret=p.interpret, name="cwm_flash_dkv",
  )(q, k, v, qseg, kseg, *kv_spans, do, lse, delta)
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(p, q, k, v, qseg, kseg):
  return _forward(p, q, k, v, qseg, kseg)[0]


def _flash_fwd(p, q, k, v, qseg, kseg):
  out, lse = _forward(p, q, k, v, qseg, kseg)
  return out, (q, k, v, qseg, kseg, out, lse)


def _flash_bwd(p, res, do):
  q, k, v, qseg, kseg, out, lse = res
  dq, dk, dv = _backward(p, q, k, v, qseg, kseg, out, lse, do)
  return dq, dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _pow2(n: int) -> int:
  return 1 << max(0, n - 1).bit_length()


def _pad(x, axis: int, size: int, value=0):
  if x.shape[axis] == size:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def pallas_gpu_attention(q_BTNH, k_BSKH, v_BSKH, mask: Mask, *, scale=None,
                         block_sizes: Optional[BlockSizes] = None,
                         interpret: bool = False) -> jax.Array:
  """q [B,T,N,H], k=v [B,S,K,H] (N % K == 0) -> [B,T,N,H], same semantics as
  `reference_attention` (rows that see no key give zeros). `mask.q_offset` must
  be a static int; segment ids must be below 2**31 - 2 (padding uses the top two);
  `interpret=True` runs the kernels on any platform."""
  reason = unsupported(mask)
  if reason:
    raise ValueError(f"pallas_gpu attention does not support {reason}.")
  B, T, N, H = q_BTNH.shape
  S, K = k_BSKH.shape[1], k_BSKH.shape[2]
  bs = block_sizes or BlockSizes()
  # Tiny sequences: shrink the tiles (min 16, Triton's smallest dot) instead of padding.
  bs = dataclasses.replace(
      bs, block_q=min(bs.block_q, max(16, _pow2(T))), block_q_bwd=min(bs.block_q_bwd, max(16, _pow2(T))),
      block_k=min(bs.block_k, max(16, _pow2(S))), block_k_bwd=min(bs.block_k_bwd, max(16, _pow2(S))))
  q_mult, k_mult = max(bs.block_q, bs.block_q_bwd), max(bs.block_k, bs.block_k_bwd)
  p = _Plan(T=T, S=S, Tp=-(-T // q_mult) * q_mult, Sp=-(-S // k_mult) * k_mult,
            H=max(16, _pow2(H)), G=N // K, causal=bool(mask.causal), window=mask.window,
            q_offset=int(mask.q_offset), scale=H ** -0.5 if scale is None else float(scale),
            segments=mask.has_segments, blocks=bs, interpret=interpret)
  q = _pad(_pad(q_BTNH, 1, p.Tp), 3, p.H)
  k = _pad(_pad(k_BSKH, 1, p.Sp), 3, p.H)
  v = _pad(_pad(v_BSKH, 1, p.Sp), 3, p.H)
  qseg = kseg = None
  if mask.has_segments:
    qseg = _pad(mask.q_segment_ids.astype(jnp.int32), 1, p.Tp, _Q_PAD_SEGMENT)
    kseg = _pad(mask.kv_segment_ids.astype(jnp.int32), 1, p.Sp, _KV_PAD_SEGMENT)
  return _flash(p, q, k, v, qseg, kseg)[:, :T, :, :H]
