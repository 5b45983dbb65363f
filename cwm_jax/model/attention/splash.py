"""TPU splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`) behind
our `Mask`.

Translation. Splash masks are static objects over [T, S] with an `offset` that
shifts queries along the key axis (our static `q_offset`):
  causal, no window   -> CausalMask(offset)
  window W (ours includes the query) -> LocalMask(window_size=(W - 1, 0 if causal
                         else None), offset): splash's left size excludes the query
  neither             -> FullMask
Segment ids map to `SegmentIds(q, kv)`. GQA: the MQA kernel (one kv head shared
by G query heads) is vmapped over the K kv heads, then over the batch, so K/V are
never repeated. Splash does not scale q, so q is multiplied by `scale` first.

Splash skips the [block_q, block_kv] blocks its mask marks empty (the block
sparsity is computed once, in numpy, when the kernel is built; kernels are cached
per shape and mask). Its custom VJP gives gradients.

Limits: T and S must be multiples of 128 (the TPU tile); `q_offset` must be a
static int. Rows that see no key are not zero as in the reference (splash
requires every row to see a key; causal self-attention with or without packing
always does). Off TPU the same kernels run with `interpret=True` (tests).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
from jax.experimental.pallas.ops.tpu import splash_attention as sa

from cwm_jax.model.attention.mask import Mask

_BLOCKS = (512, 256, 128)


def _block(n: int) -> Optional[int]:
  return next((b for b in _BLOCKS if n % b == 0), None)


def unsupported(mask: Mask, T: int, S: int) -> Optional[str]:
  """Why splash cannot serve this call, or None."""
  if not isinstance(mask.q_offset, int):
    return "a traced q_offset (splash masks are static)"
  if mask.q_offset < 0:
    return f"a negative q_offset ({mask.q_offset})"
  if _block(T) is None or _block(S) is None:
    return f"T={T}, S={S} (both must be multiples of 128)"
  return None


def _position_mask(T: int, S: int, causal: bool, window: Optional[int], q_offset: int):
  if window is not None:
    return sa.LocalMask((T, S), window_size=(window - 1, 0 if causal else None), offset=q_offset)
  if causal:
    return sa.CausalMask((T, S), offset=q_offset)
  return sa.FullMask((T, S))


@functools.lru_cache(maxsize=64)
def make_kernel(T: int, S: int, G: int, causal: bool, window: Optional[int], q_offset: int,
                interpret: bool):
  """The MQA splash kernel for one kv head's G query heads: q [G,T,H], k=v [S,H]."""
  bq, bk = _block(T), _block(S)
  blocks = sa.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk,
                         block_q_dkv=bq, block_kv_dkv=bk, block_kv_dkv_compute=bk,
                         block_q_dq=bq, block_kv_dq=bk)
  heads = sa.MultiHeadMask([_position_mask(T, S, causal, window, q_offset)] * G)
  # Concrete mask-info arrays even when first built inside a jit trace, so the cached
  # kernel can serve later traces (staged arrays would leak as tracers).
  with jax.ensure_compile_time_eval():
    return sa.make_splash_mqa_single_device(heads, block_sizes=blocks, interpret=interpret)


def splash_attention(q_BTNH, k_BSKH, v_BSKH, mask: Mask, *, scale=None,
                     interpret: bool = False) -> jax.Array:
  """q [B,T,N,H], k=v [B,S,K,H] (N % K == 0) -> [B,T,N,H] with splash kernels."""
  B, T, N, H = q_BTNH.shape
  S, K = k_BSKH.shape[1], k_BSKH.shape[2]
  reason = unsupported(mask, T, S)
  if reason:
    raise ValueError(f"splash attention does not support {reason}.")
  G = N // K
  kernel = make_kernel(T, S, G, bool(mask.causal), mask.window, int(mask.q_offset), interpret)
  scale = H ** -0.5 if scale is None else scale
  q_BKGTH = (q_BTNH * scale).astype(q_BTNH.dtype).reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4)
  k_BKSH, v_BKSH = k_BSKH.transpose(0, 2, 1, 3), v_BSKH.transpose(0, 2, 1, 3)
  if mask.has_segments:
    seg = sa.SegmentIds(q=mask.q_segment_ids, kv=mask.kv_segment_ids)
    per_kv_head = lambda q, k, v, seg: kernel(q, k, v, segment_ids=seg)
    per_row = jax.vmap(per_kv_head, in_axes=(0, 0, 0, None))
    out_BKGTH = jax.vmap(per_row)(q_BKGTH, k_BKSH, v_BKSH, seg)
  else:
    out_BKGTH = jax.vmap(jax.vmap(kernel))(q_BKGTH, k_BKSH, v_BKSH)
  return out_BKGTH.transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)
