"""`project`: an einsum of token activations [B, T, ...] with a weight, the one
place the model's projections (q/k/v/o, MLP, lm head, the loss's logits) go through.

On CPU the two token axes are folded into one row axis for the matmul:
[B, T, D] -> [B * T, D] -> einsum -> [B, T, ...]. Same values; the reason is the
backward. The weight gradient of 'BTD,DF->BTF' contracts *two* axes (B, T), and
XLA:CPU canonicalises such a dot by materialising a transposed copy of the
[B, T, F] cotangent, fused into the elementwise op that produces it (the SwiGLU
or softmax backward). That copy reads its inputs with a stride of F and ran at
5-11 ns per element, about 10% of a small model's fwd+bwd op time (issue 13). With
one row axis XLA:CPU passes the operand to the matmul as transposed, with no copy:
fwd+bwd ran 1.07-1.3x faster on `benchmarks/forward_vs_hf`'s configs
(`--unfolded` measures it).

Accelerators keep the [B, T, ...] einsum (their compilers need no help, and
their programs stay as they were). Folding is also off when a mesh shards the
length axis (context parallelism): rows of a [B * T] axis would not be the
blocks the devices hold, and XLA would have to reshard.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

from cwm_jax.sharding.rules import ambient_axis_size


_FORCED: list = [None]  # set by `forced_folding`


def fold_tokens() -> bool:
  """Whether `project` folds [B, T] into one row axis here (trace time)."""
  if _FORCED[0] is not None:
    return _FORCED[0]
  return jax.default_backend() == "cpu" and ambient_axis_size("length") == 1


@contextlib.contextmanager
def forced_folding(fold: bool):
  """Functions traced inside the block fold (True) or do not (False) regardless of
  the platform: for benchmarks and tests that compare both programs on one machine.
  JAX reuses a function's cached trace (`jax.jit(f)` of the same `f`), which this
  switch is not part of: trace a fresh function for each setting."""
  previous, _FORCED[0] = _FORCED[0], bool(fold)
  try:
    yield
  finally:
    _FORCED[0] = previous


def project(spec: str, x, *ws, **einsum_kwargs):
  """`jnp.einsum(spec, x, w)` for each weight in `ws` (one array for one weight, a
  tuple for several: q/k/v or gate/up share one folded x, so autodiff saves it
  once). Both x's axes and the output's start with the same two token axes,
  e.g. 'BTD,DF->BTF' or 'BTNH,NHD->BTD'."""
  inputs, out = spec.split("->")
  x_axes, w_axes = inputs.split(",")
  if x_axes[:2] != out[:2] or len(x_axes) < 3 or x.ndim != len(x_axes) or not ws:
    raise ValueError(f"project: spec {spec!r} with x of shape {x.shape} and {len(ws)} weights: "
                     f"expected x and the output to start with the same two token axes, e.g. "
                     f"'BTD,DF->BTF', and at least one weight.")
  if fold_tokens():
    rows = next(c for c in "MRBTXYZ" if c not in x_axes[2:] + w_axes + out[2:])
    spec = f"{rows}{x_axes[2:]},{w_axes}->{rows}{out[2:]}"
    x_rows = x.reshape(-1, *x.shape[2:])
    ys = tuple(jnp.einsum(spec, x_rows, w, **einsum_kwargs) for w in ws)
    ys = tuple(y.reshape(*x.shape[:2], *y.shape[1:]) for y in ys)
  else:
    ys = tuple(jnp.einsum(spec, x, w, **einsum_kwargs) for w in ws)
  return ys[0] if len(ys) == 1 else ys

