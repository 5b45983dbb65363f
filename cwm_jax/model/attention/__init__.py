"""Attention core: one `Mask` description, several backends, one dispatch point.

    out_BTNH = attention(q_BTNH, k_BSKH, v_BSKH, mask, impl="auto")

Backends (`BACKENDS`), each declaring where it runs and which masks it serves:
  reference   einsum, materialises [T, S] scores; the test oracle; anywhere
  chunked     online softmax over key chunks in plain JAX, skips out-of-band
              chunks; every mask; anywhere
  band        causal sliding-window self-attention as batched einsums over
              [window + block] key bands, no loop; segment ids, GQA; anywhere
  splash      TPU splash kernel: causal, window, segment ids, GQA; static
              q_offset; T, S multiples of 128
  cudnn       cuDNN flash attention: causal, causal window, GQA; no segment ids,
              q_offset 0, bf16/fp16 only
  pallas_gpu  our Pallas/Triton flash kernel: causal, window, segment ids, GQA,
              static q_offset; any float dtype

`impl="auto"` (`choose_impl`, a pure function of platform, mask, dtype and shapes):
  TPU: splash; GPU: cudnn, else pallas_gpu; then the reference while
  T * S <= 512 * 512 (on CPU: 128 * 128); on CPU band for windows up to 32 keys;
  else chunked. (cuDNN first: on an H200 it ran
  forward+backward about 1.4x faster than pallas_gpu where both serve;
  `benchmarks/gpu_attention_check.py` measures all of them.)
The chunked kernel's block is `chunk`, on CPU smaller for sliding-window layers
(`block_size`). An explicit `impl` that cannot serve the call raises a ValueError naming the
backend and the unsupported feature.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from cwm_jax.model.attention import band, cudnn, pallas_gpu, splash
from cwm_jax.model.attention.band import band_attention
from cwm_jax.model.attention.chunked import chunked_attention
from cwm_jax.model.attention.mask import Mask, self_attention_mask
from cwm_jax.model.attention.reference import reference_attention

SMALL_SCORES = 512 * 512  # T * S up to which 'auto' materialises scores
# On CPU the chunked kernel is the faster one from T = 128 up (issue 13,
# benchmarks/RESULTS.md: forward 1.2x at T = 128 and 1.4-1.6x at T = 256, fwd+bwd
# 1.1-1.2x and 1.3-1.4x; the quickstart's packed 16 x 256 pretrain step 1.4-1.6x):
# autodiff of the einsum path keeps and transposes several [B, K, G, T, S] float32
# arrays, the kernel skips out-of-band blocks. Up to 128 x 128 the reference stays:
# it compiles in about half the time (a tiny train step at T = 256: 4.9 s vs 7.6 s),
# which is what the test suite pays, and since its heads-first layout and softmax
# JVP (reference.py) its step is as fast or faster there. At T = 256 it still loses
# (fwd+bwd, model steps: `small` 1.08x slower, `tiny` 1.4x where the band kernel
# serves its windows; the quickstart's 16 x 256 pretrain step ties).
SMALL_SCORES_CPU = 128 * 128
# On CPU the chunked kernel cuts a sliding-window layer into blocks of half the
# window (at least 32), not of the configured `chunk`: a query block of c rows
# needs keys from c + W - 1 positions, so big blocks compute mostly masked scores
# (c = 512 over a 16-key window: 97%), and below ~32 rows the per-block overhead
# wins. Measured fwd+bwd (issue 13, benchmarks/RESULTS.md): forward_vs_hf `tiny`
# (W = 16, chunk 512) 1.4x at T = 256 and 1.5x at T = 1024, `small` (W = 128)
# 1.05x and 1.2x, the quickstart's midtrain step (W = 128, chunk 128) ~1.03x.
# Accelerators run their own kernels; global layers keep `chunk`.
MIN_WINDOW_BLOCK_CPU = 32
# On CPU a short window goes to the band kernel: with W <= 32 the chunked kernel's
# loop runs many blocks of little work each, and its per-block cost (~a dozen XLA
# ops per block) dominates. One attention call, band against chunked, forward /
# forward+backward at T = 256 and 1024 (issue 13, benchmarks/RESULTS.md,
# `python -m benchmarks.band_vs_chunked`): W = 16 1.55-2.1x / 1.55-2.3x; W = 32
# 1.1-1.8x / 1.2-1.7x; W = 64 0.9-1.2x / 1.0-1.1x; W = 128 0.65-0.9x / 0.7-0.85x
# (there the band's extra keys and autodiff's saved [.., c, W + c] arrays cost more).
MAX_BAND_WINDOW_CPU = 32


@dataclasses.dataclass(frozen=True)
class Backend:
  """An attention implementation and what it can serve.

  fn(q, k, v, mask, scale, chunk) -> out. `check(mask, dtype, q_shape, k_shape)`
  returns why it cannot serve a call (a phrase completing "does not support ..."),
  or None; `platforms` lists where it runs (None: anywhere).
  """
  fn: Callable
  platforms: Optional[tuple[str, ...]] = None
  positions: bool = False  # serves masks with explicit positions
  check: Callable[..., Optional[str]] = lambda mask, dtype, q_shape, k_shape: None

  def supports(self, mask: Mask, dtype, platform: str, q_shape, k_shape) -> Optional[str]:
    """None if this backend serves the call, else the reason it cannot."""
    if self.platforms is not None and platform not in self.platforms:
      return f"platform {platform!r} (runs on {', '.join(self.platforms)})"
    if mask.has_positions and not self.positions:
      return "masks with explicit positions (KV-cache slots)"
    return self.check(mask, dtype, q_shape, k_shape)


BACKENDS: dict[str, Backend] = {
    "reference": Backend(
        lambda q, k, v, mask, scale, chunk: reference_attention(q, k, v, mask, scale=scale),
        positions=True),
    "chunked": Backend(
        lambda q, k, v, mask, scale, chunk: chunked_attention(
            q, k, v, mask, chunk_size=chunk, scale=scale)),
    "band": Backend(
        lambda q, k, v, mask, scale, chunk: band_attention(q, k, v, mask, scale=scale),
        check=lambda mask, dtype, q_shape, k_shape: band.unsupported(mask, q_shape[1], k_shape[1])),
    "splash": Backend(
        lambda q, k, v, mask, scale, chunk: splash.splash_attention(q, k, v, mask, scale=scale),
        platforms=("tpu",),
        check=lambda mask, dtype, q_shape, k_shape: splash.unsupported(mask, q_shape[1], k_shape[1])),
    "cudnn": Backend(
        lambda q, k, v, mask, scale, chunk: cudnn.cudnn_attention(q, k, v, mask, scale=scale),
        platforms=("gpu",),
        check=lambda mask, dtype, q_shape, k_shape: cudnn.unsupported(mask, dtype, q_shape[3])),
    "pallas_gpu": Backend(
        lambda q, k, v, mask, scale, chunk: pallas_gpu.pallas_gpu_attention(
            q, k, v, mask, scale=scale),
        platforms=("gpu",),
        check=lambda mask, dtype, q_shape, k_shape: pallas_gpu.unsupported(mask)),
}

# Kernels 'auto' tries first, in order, per platform.
PREFERRED: dict[str, tuple[str, ...]] = {"tpu": ("splash",), "gpu": ("cudnn", "pallas_gpu")}


def choose_impl(platform: str, mask: Mask, dtype, q_shape, k_shape) -> str:
  """'auto': the platform's first kernel that serves the call, else the einsum
  path while the [T, S] scores are small, else (CPU, short window) the band
  kernel, else the chunked kernel."""
  for name in PREFERRED.get(platform, ()):
    if BACKENDS[name].supports(mask, dtype, platform, q_shape, k_shape) is None:
      return name
  small = SMALL_SCORES_CPU if platform == "cpu" else SMALL_SCORES
  if mask.has_positions or q_shape[1] * k_shape[1] <= small:
    return "reference"
  if platform == "cpu" and mask.window is not None and mask.window <= MAX_BAND_WINDOW_CPU \
      and BACKENDS["band"].supports(mask, dtype, platform, q_shape, k_shape) is None:
    return "band"
  return "chunked"


def block_size(platform: str, mask: Mask, chunk: int) -> int:
  """The chunked kernel's block size for this call: `chunk`, except on CPU for a
  sliding-window mask (see MIN_WINDOW_BLOCK_CPU)."""
  if platform == "cpu" and mask.window is not None:
    return min(chunk, max(MIN_WINDOW_BLOCK_CPU, mask.window // 2))
  return chunk


def platform_of(x) -> str:
  """'cpu', 'gpu' or 'tpu': the device of a concrete array, else (a tracer) the
  default backend. An array whose device cannot be read (e.g. deleted or donated)
  is an error, not a silent guess."""
  if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
    try:
      platform = next(iter(x.devices())).platform
    except RuntimeError as e:
      raise ValueError(f"attention: cannot read the device of the query array "
                       f"(shape {x.shape}): {e}") from e
  else:
    platform = jax.default_backend()
  return {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)


def attention(q_BTNH, k_BSKH, v_BSKH, mask: Mask, *, impl: str = "auto",
              chunk: int = 512, scale=None) -> jax.Array:
  B, T, N, H = q_BTNH.shape
  if k_BSKH.ndim != 4 or v_BSKH.shape != k_BSKH.shape or k_BSKH.shape[0] != B \
      or k_BSKH.shape[3] != H or N % k_BSKH.shape[2]:
    raise ValueError(
        f"attention: expected q [B,T,N,H], k=v [B,S,K,H] with N % K == 0; got "
        f"q {q_BTNH.shape}, k {k_BSKH.shape}, v {v_BSKH.shape}.")
  platform = platform_of(q_BTNH)
  dtype = jnp.dtype(q_BTNH.dtype)
  if impl == "auto":
    impl = choose_impl(platform, mask, dtype, q_BTNH.shape, k_BSKH.shape)
  elif impl not in BACKENDS:
    raise ValueError(f"attention: unknown impl {impl!r}; expected 'auto' or one of {sorted(BACKENDS)}.")
  else:
    reason = BACKENDS[impl].supports(mask, dtype, platform, q_BTNH.shape, k_BSKH.shape)
    if reason:
      raise ValueError(f"attention: impl={impl!r} does not support {reason}; "
                       f"use impl='auto' or another backend.")
  if impl == "chunked":
    chunk = block_size(platform, mask, chunk)
  return BACKENDS[impl].fn(q_BTNH, k_BSKH, v_BSKH, mask, scale, chunk)


IMPLS = ("auto", *BACKENDS)  # every valid `impl` (for config validation)

__all__ = ["Mask", "self_attention_mask", "attention", "reference_attention",
           "chunked_attention", "band_attention", "BACKENDS", "Backend", "IMPLS",
           "choose_impl", "block_size", "platform_of"]
