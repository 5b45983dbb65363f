"""cuDNN flash attention through `jax.nn.dot_product_attention(implementation="cudnn")`.

Translation: causal -> `is_causal`; our window W (which includes the query) ->
`local_window_size=(W - 1, 0)`, which cuDNN runs as a sliding window of length W
that skips the key blocks outside it; GQA is native (k/v carry K heads).

Not served: segment ids (the public API has no packing argument; JAX's private
`jax._src.cudnn` API has a packed "THD" layout needing a static maximum number of
documents per row, which `Mask` does not carry), a non-zero q_offset (cuDNN's
causal mask is top-left aligned), a window without causality, float32 (cuDNN's
flash kernels need half precision) and head dims that are not multiples of 8 or
exceed 256. Every mask it serves gives each query row at least one key, so the
reference's "rows that see nothing give zeros" never arises.

`implementation="xla"` runs the same call through XLA on any platform; the CPU
tests use it to check the mask translation.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from cwm_jax.model.attention.mask import Mask

HALF_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def unsupported(mask: Mask, dtype, H: int) -> Optional[str]:
  """Why cuDNN cannot serve this call, or None."""
  if mask.has_segments:
    return "segment ids (packed documents)"
  if not isinstance(mask.q_offset, int) or mask.q_offset != 0:
    return "a q_offset other than 0 (its causal mask is top-left aligned)"
  if mask.window is not None and not mask.causal:
    return "a window without a causal mask"
  if jnp.dtype(dtype) not in HALF_DTYPES:
    return f"dtype {jnp.dtype(dtype).name} (needs bfloat16 or float16)"
  if H % 8 or H > 256:
    return f"head dim {H} (needs a multiple of 8, at most 256)"
  return None


def cudnn_attention(q_BTNH, k_BSKH, v_BSKH, mask: Mask, *, scale=None,
                    implementation: str = "cudnn") -> jax.Array:
  """q [B,T,N,H], k=v [B,S,K,H] (N % K == 0) -> [B,T,N,H] with cuDNN's fused kernel."""
  window = None if mask.window is None else (mask.window - 1, 0)
  return jax.nn.dot_product_attention(
      q_BTNH, k_BSKH, v_BSKH, scale=scale, is_causal=bool(mask.causal),
      local_window_size=window, implementation=implementation)
