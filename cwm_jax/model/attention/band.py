"""Band attention: causal sliding-window self-attention as a few batched einsums.

The sequence is cut into query blocks of `c` rows; block i sees only the keys of
its own block and of the r = ceil((W - 1) / c) blocks before it, so all blocks'
scores form one [B, n, K, G, c, (r + 1) c] array: one einsum for the scores, one
exact softmax, one einsum with the values, no loop. Memory and work are
O(T * N * (W + c)): meant for short windows, where the chunked kernel's per-block
loop overhead, not its FLOPs, is the cost (on CPU, a 16-key window: forward
1.5-2.1x and forward+backward 1.5-2.3x faster than the chunked kernel; from
W = 64 on the chunked kernel is as fast or faster: `choose_impl`,
`benchmarks/band_vs_chunked.py`).
Gradients are JAX's autodiff of this program.

Serves: causal masks with a window, self-attention (T == S, q_offset 0), GQA,
packed documents (segment ids). Rows that see no key give zeros.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from cwm_jax.model.attention.mask import Mask

_F32 = jnp.float32
MIN_BLOCK = 8  # rows per query block, at least (below, the blocks' overhead grows)


def unsupported(mask: Mask, T: int, S: int) -> Optional[str]:
  """Why band attention cannot serve this call (a phrase completing "does not
  support ..."), or None."""
  if mask.window is None:
    return "masks without a window (band attention needs a sliding window)"
  if not mask.causal:
    return "a window without a causal mask"
  if not isinstance(mask.q_offset, int) or mask.q_offset != 0:
    return f"q_offset {mask.q_offset!r} (band attention is self-attention from position 0)"
  if T != S:
    return f"T={T} != S={S} (band attention is self-attention)"
  return None


def block_rows(window: int) -> int:
  """Query rows per block: half the window (at least MIN_BLOCK). Each query then
  scores (r + 1) * c <= W + 2c keys, at most ~2x the W it needs."""
  return max(MIN_BLOCK, window // 2)


def _key_windows(x, n: int, c: int, r: int, axis: int, pad_value=0):
  """`x` with time on `axis` -> for each query block i the positions of key blocks
  i - r .. i: time becomes [n, (r + 1) * c] at `axis`; positions before 0 and from
  T on hold `pad_value`."""
  pad = [(0, 0)] * x.ndim
  pad[axis] = (r * c, n * c - x.shape[axis])
  x = jnp.pad(x, pad, constant_values=pad_value)
  blocks = x.reshape(*x.shape[:axis], n + r, c, *x.shape[axis + 1:])
  return jnp.concatenate([lax.slice_in_dim(blocks, j, j + n, axis=axis) for j in range(r + 1)],
                         axis=axis + 1)


def band_attention(q_BTNH, k_BSKH, v_BSKH, mask: Mask, *, block: Optional[int] = None,
                   scale=None) -> jax.Array:
  """q [B,T,N,H], k=v [B,T,K,H] (N % K == 0) -> [B,T,N,H], for a causal window mask
  (`unsupported` says which masks). `block`: query rows per block (default
  `block_rows(window)`)."""
  B, T, N, H = q_BTNH.shape
  K = k_BSKH.shape[2]
  reason = unsupported(mask, T, k_BSKH.shape[1])
  if reason:
    raise ValueError(f"band_attention does not support {reason}.")
  W, G = mask.window, N // K
  scale = H ** -0.5 if scale is None else scale
  c = block or block_rows(W)
  n, r = -(-T // c), -(-(W - 1) // c)
  # Heads before blocks, block rows before the head dim: every einsum below is a
  # batched [rows, H] x [H, keys] (or [rows, keys] x [keys, H]) product in the
  # layout XLA:CPU's dot wants, with no transposed copy of the scores (keys-major
  # scores and strided softmax passes were ~1.4x slower on CPU).
  q_BKnGqH = jnp.pad(q_BTNH, [(0, 0), (0, n * c - T), (0, 0), (0, 0)]).reshape(
      B, n, c, K, G, H).transpose(0, 3, 1, 4, 2, 5)
  k_BKnkH = _key_windows(k_BSKH.transpose(0, 2, 1, 3), n, c, r, axis=2)
  v_BKnkH = _key_windows(v_BSKH.transpose(0, 2, 1, 3), n, c, r, axis=2)

  # Absolute positions: query row a of block i is i*c + a; key column b of its
  # window is (i - r)*c + b (negative and >= T: padding, never seen).
  i_nq1 = (jnp.arange(n)[:, None] * c + jnp.arange(c)[None, :])[:, :, None]
  j_n1k = (jnp.arange(n)[:, None] * c - r * c + jnp.arange((r + 1) * c)[None, :])[:, None, :]
  ok_11n1qk = ((j_n1k <= i_nq1) & (j_n1k > i_nq1 - W) & (j_n1k >= 0))[None, None, :, None]
  if mask.has_segments:
    qseg_Bnq = jnp.pad(mask.q_segment_ids, [(0, 0), (0, n * c - T)],
                       constant_values=-1).reshape(B, n, c)
    kseg_Bnk = _key_windows(mask.kv_segment_ids, n, c, r, axis=1, pad_value=-1)
    same_Bnqk = qseg_Bnq[:, :, :, None] == kseg_Bnk[:, :, None, :]
    ok_11n1qk = ok_11n1qk & same_Bnqk[:, None, :, None]

  s_BKnGqk = jnp.einsum("BKnGqH,BKnkH->BKnGqk", q_BKnGqH, k_BKnkH,
                        preferred_element_type=_F32) * scale
  s_BKnGqk = jnp.where(ok_11n1qk, s_BKnGqk, -jnp.inf)
  m_BKnGq1 = jnp.max(s_BKnGqk, axis=-1, keepdims=True)
  # The row max only keeps exp in range: softmax does not depend on it, so its
  # gradient is zero and autodiff need not trace back through the max.
  m_BKnGq1 = lax.stop_gradient(jnp.where(jnp.isfinite(m_BKnGq1), m_BKnGq1, 0.0))
  p_BKnGqk = jnp.exp(s_BKnGqk - m_BKnGq1)
  l_BKnGq1 = jnp.sum(p_BKnGqk, axis=-1, keepdims=True)
  o_BKnGqH = jnp.einsum("BKnGqk,BKnkH->BKnGqH", p_BKnGqk.astype(v_BSKH.dtype), v_BKnkH,
                        preferred_element_type=_F32)
  o_BKnGqH = o_BKnGqH / jnp.where(l_BKnGq1 > 0, l_BKnGq1, 1.0)
  out_BnqKGH = o_BKnGqH.transpose(0, 2, 4, 1, 3, 5)
  return out_BnqKGH.reshape(B, n * c, N, H)[:, :T].astype(q_BTNH.dtype)
