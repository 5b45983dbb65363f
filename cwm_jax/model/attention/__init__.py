"""Attention core: one `Mask` description, several backends, one dispatch point.

    out_BTNH = attention(q_BTNH, k_BSKH, v_BSKH, mask, impl="auto")

Backends: "reference" (einsum, materialises scores; the test oracle) and
"chunked" (online-softmax over key chunks in plain JAX, memory O(T * chunk),
skips key chunks entirely outside the causal/window band). Accelerator kernels
register themselves in `BACKENDS` under their own names.
"""

from __future__ import annotations

from typing import Callable

import jax

from cwm_jax.model.attention.chunked import chunked_attention
from cwm_jax.model.attention.mask import Mask, self_attention_mask
from cwm_jax.model.attention.reference import reference_attention

BACKENDS: dict[str, Callable] = {
    "reference": lambda q, k, v, mask, scale, chunk: reference_attention(q, k, v, mask, scale=scale),
    "chunked": lambda q, k, v, mask, scale, chunk: chunked_attention(
        q, k, v, mask, chunk_size=chunk, scale=scale),
}


def choose_impl(T: int, S: int, chunk: int) -> str:
  """'auto': the einsum path while [T, S] scores are small, else the chunked kernel."""
  del chunk
  return "reference" if T * S <= 512 * 512 else "chunked"


def attention(q_BTNH, k_BSKH, v_BSKH, mask: Mask, *, impl: str = "auto",
              chunk: int = 512, scale=None) -> jax.Array:
  B, T, N, H = q_BTNH.shape
  if k_BSKH.ndim != 4 or v_BSKH.shape != k_BSKH.shape or k_BSKH.shape[0] != B \
      or k_BSKH.shape[3] != H or N % k_BSKH.shape[2]:
    raise ValueError(
        f"attention: expected q [B,T,N,H], k=v [B,S,K,H] with N % K == 0; got "
        f"q {q_BTNH.shape}, k {k_BSKH.shape}, v {v_BSKH.shape}.")
  S = k_BSKH.shape[1]
  if impl == "auto":
    impl = choose_impl(T, S, chunk)
  if impl not in BACKENDS:
    raise ValueError(f"attention: unknown impl {impl!r}; expected 'auto' or one of {sorted(BACKENDS)}.")
  return BACKENDS[impl](q_BTNH, k_BSKH, v_BSKH, mask, scale, chunk)


__all__ = ["Mask", "self_attention_mask", "attention", "reference_attention",
           "chunked_attention", "BACKENDS"]
