"""Context parallelism: self-attention with the sequence axis sharded over a mesh axis.

    out_BTNH = context_parallel_attention(q_BTNH, k_BTKH, v_BTKH, mask, mesh=mesh)

q/k/v (and the mask's segment ids) are [B, T, ...] arrays whose T axis is split
over the `context` mesh axis (batch over ("data", "fsdp") and heads over
"tensor" as in the rules table); the output is sharded the same way. Inside a
`jax.shard_map` each shard holds `m` chunks of L = T / (m * C) tokens and
brings in only the keys its queries can see:

  all_gather  (global layers) K/V and kv segment ids are all-gathered (GQA keeps
              K/V small next to Q); each local chunk attends to the whole
              sequence with the inner kernel at `q_offset` = its absolute start,
              so causal masking is by absolute index and the chunked kernel
              skips key blocks past the diagonal.
  halo        (local-window layers) each chunk receives only the W-1 keys before
              it, as `ppermute`s of the tails of the chunks that precede it (more
              than one when W-1 > L), and never all-gathers.
  ring        (global layers, optional) K/V blocks travel around the ring with
              `ppermute`; partial results on explicit positions are merged by
              their logsumexp. Memory per step is [L*m, L*m] scores (dense block
              math); the all-gather path is the default.

Load balance. With `load_balance="zigzag"` the sequence is cut into 2C chunks and
shard c holds chunks c and 2C-1-c, so every shard owns the same share of the
causal triangle. The arrays passed in must already be in that order: apply
`zigzag_permutation(T, C)` on the data side to tokens, targets, loss weights,
segment ids and the *true* positions (computed before permuting, so RoPE is
unaffected); every other op of the model is per token, and a summed loss is
order invariant. `to_layout` / `from_layout` do the same reordering on device
for callers that cannot permute their data. "none" keeps natural order
(contiguous shards; shard C-1 then does C times the causal work of shard 0).

All collectives transpose under autodiff (all_gather -> reduce-scatter,
ppermute -> reverse ppermute), so `jax.grad` works through this function.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from cwm_jax.model.attention.chunked import chunked_attention
from cwm_jax.model.attention.mask import Mask
from cwm_jax.model.attention.reference import reference_attention
from cwm_jax.sharding.rules import LOGICAL_RULES

_F32 = jnp.float32
_NO_KEY = np.iinfo(np.int32).min  # kv segment id of halo slots before the sequence start
LOAD_BALANCE = ("none", "zigzag")
STRATEGIES = ("auto", "all_gather", "halo", "ring")


@dataclasses.dataclass(frozen=True)
class Layout:
  """How T tokens are split over C shards: shard c holds `m` chunks of L tokens,
  slot s holding global chunk `chunk_id(c, s)` (positions chunk_id * L + [0, L))."""
  T: int
  C: int
  zigzag: bool

  def __post_init__(self):
    if self.T % (self.m * self.C):
      raise ValueError(f"context parallelism: T={self.T} must be divisible by "
                       f"{self.m * self.C} ({'2 * ' if self.zigzag else ''}context={self.C}).")

  @property
  def m(self) -> int:
    return 2 if self.zigzag else 1

  @property
  def L(self) -> int:
    return self.T // (self.m * self.C)

  @property
  def n_chunks(self) -> int:
    return self.m * self.C

  def chunk_id(self, c, s: int):
    """Global chunk of slot s on shard c; c may be traced (`lax.axis_index`)."""
    return c if s == 0 else 2 * self.C - 1 - c

  def holder(self, g: int) -> tuple[int, int]:
    """(shard, slot) holding global chunk g."""
    if not self.zigzag or g < self.C:
      return g, 0
    return 2 * self.C - 1 - g, 1

  def positions(self, c) -> jax.Array:
    """[m * L] absolute indices of shard c's tokens, in local order."""
    return jnp.concatenate([self.chunk_id(c, s) * self.L + jnp.arange(self.L)
                            for s in range(self.m)])

  def permutation(self) -> np.ndarray:
    """perm[i] = natural index of the token at layout position i (x_layout = x[:, perm])."""
    return np.concatenate([np.arange(self.L) + self.chunk_id(c, s) * self.L
                           for c in range(self.C) for s in range(self.m)])


def zigzag_permutation(T: int, C: int) -> np.ndarray:
  """Zig-zag order over C shards: x_zigzag = x[:, perm] (2C chunks; shard c: c, 2C-1-c)."""
  return Layout(T, C, zigzag=True).permutation()


def inverse_permutation(perm: np.ndarray) -> np.ndarray:
  """inv with x == x[:, perm][:, inv]."""
  inv = np.empty_like(perm)
  inv[perm] = np.arange(len(perm))
  return inv


def to_layout(x_BT_, C: int, load_balance: str = "zigzag", axis: int = 1):
  """Natural order -> the layout `context_parallel_attention` expects (numpy or jax)."""
  if load_balance == "none":
    return x_BT_
  perm = zigzag_permutation(x_BT_.shape[axis], C)
  return x_BT_.take(perm, axis=axis)


def from_layout(x_BT_, C: int, load_balance: str = "zigzag", axis: int = 1):
  """Inverse of `to_layout`."""
  if load_balance == "none":
    return x_BT_
  inv = inverse_permutation(zigzag_permutation(x_BT_.shape[axis], C))
  return x_BT_.take(inv, axis=axis)


# ---------------------------------------------------------------- explicit positions


def attend_positions(q_BTNH, k_BSKH, v_BSKH, qpos_T, kpos_S, *, causal: bool = True,
                     window: Optional[int] = None, q_seg_BT=None, kv_seg_BS=None, scale=None):
  """Reference-math attention on explicit absolute positions; differentiable.

  Query i sees key j iff (not causal or kpos[j] <= qpos[i]), kpos[j] > qpos[i] - window
  and the segment ids agree. Returns the normalised output [B, T, N, H] in float32
  and the logsumexp [B, K, G, T] (float32, -inf on rows that see no key), the pair
  needed to merge partial results over key blocks (`merge_partials`).
  """
  B, T, N, H = q_BTNH.shape
  K = k_BSKH.shape[2]
  scale = H ** -0.5 if scale is None else scale
  q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
  s_BKGTS = jnp.einsum("BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH,
                       preferred_element_type=_F32) * scale
  qi_T1, kj_1S = qpos_T[:, None], kpos_S[None, :]
  ok_TS = jnp.ones((T, kpos_S.shape[0]), bool)
  if causal:
    ok_TS &= kj_1S <= qi_T1
  if window is not None:
    ok_TS &= kj_1S > qi_T1 - window
  ok_BTS = ok_TS[None]
  if q_seg_BT is not None:
    ok_BTS = ok_BTS & (q_seg_BT[:, :, None] == kv_seg_BS[:, None, :])
  ok_B11TS = ok_BTS[:, None, None]
  s_BKGTS = jnp.where(ok_B11TS, s_BKGTS, -jnp.inf)
  m_BKGT = lax.stop_gradient(jnp.max(s_BKGTS, axis=-1))
  m_BKGT = jnp.where(jnp.isfinite(m_BKGT), m_BKGT, 0.0)
  p_BKGTS = jnp.where(ok_B11TS, jnp.exp(s_BKGTS - m_BKGT[..., None]), 0.0)
  l_BKGT = jnp.sum(p_BKGTS, axis=-1)
  seen_BKGT = l_BKGT > 0
  l_safe_BKGT = jnp.where(seen_BKGT, l_BKGT, 1.0)
  o_BTKGH = jnp.einsum("BKGTS,BSKH->BTKGH", p_BKGTS, v_BSKH.astype(_F32),
                       preferred_element_type=_F32)
  o_BTKGH = o_BTKGH / l_safe_BKGT.transpose(0, 3, 1, 2)[..., None]
  lse_BKGT = jnp.where(seen_BKGT, m_BKGT + jnp.log(l_safe_BKGT), -jnp.inf)
  return o_BTKGH.reshape(B, T, N, H), lse_BKGT


def merge_partials(o1_BTNH, lse1_BKGT, o2_BTNH, lse2_BKGT):
  """Softmax-weighted merge of two normalised partial outputs over disjoint key sets."""
  B, T, N, H = o1_BTNH.shape
  K = lse1_BKGT.shape[1]
  m_BKGT = jnp.maximum(lse1_BKGT, lse2_BKGT)
  m_BKGT = lax.stop_gradient(jnp.where(jnp.isfinite(m_BKGT), m_BKGT, 0.0))
  w1_BKGT, w2_BKGT = jnp.exp(lse1_BKGT - m_BKGT), jnp.exp(lse2_BKGT - m_BKGT)
  l_BKGT = w1_BKGT + w2_BKGT
  seen_BKGT = l_BKGT > 0
  l_safe_BKGT = jnp.where(seen_BKGT, l_BKGT, 1.0)

  def weigh(w_BKGT, o_BTNH):
    w_BTKG1 = (w_BKGT / l_safe_BKGT).transpose(0, 3, 1, 2)[..., None]
    return (w_BTKG1 * o_BTNH.reshape(B, T, K, N // K, H)).reshape(B, T, N, H)

  o_BTNH = weigh(w1_BKGT, o1_BTNH) + weigh(w2_BKGT, o2_BTNH)
  return o_BTNH, jnp.where(seen_BKGT, m_BKGT + jnp.log(l_safe_BKGT), -jnp.inf)


# ---------------------------------------------------------------- per-shard strategies


def _slot(x_BT_, lay: Layout, s: int):
  return x_BT_[:, s * lay.L:(s + 1) * lay.L]


def _all_gather(q, k, v, qseg, kseg, c, lay: Layout, mask: Mask, axis, inner):
  """Gather K/V over the context axis, restore natural order, attend per local chunk."""
  B = k.shape[0]
  gather = functools.partial(lax.all_gather, axis_name=axis, axis=1, tiled=True)
  order = np.asarray([lay.holder(g)[0] * lay.m + lay.holder(g)[1] for g in range(lay.n_chunks)])
  natural = not lay.zigzag

  def to_natural(x_BT_):  # shard-major [C * m chunks] -> chunk g at position g
    if natural:
      return x_BT_
    x = x_BT_.reshape(B, lay.n_chunks, lay.L, *x_BT_.shape[2:])
    return jnp.take(x, order, axis=1).reshape(x_BT_.shape)

  k_all, v_all = to_natural(gather(k)), to_natural(gather(v))
  kseg_all = None if kseg is None else to_natural(gather(kseg))
  outs = []
  for s in range(lay.m):
    qseg_s = None if qseg is None else _slot(qseg, lay, s)
    m_s = Mask(causal=mask.causal, window=mask.window, q_segment_ids=qseg_s,
               kv_segment_ids=kseg_all, q_offset=lay.chunk_id(c, s) * lay.L)
    outs.append(inner(_slot(q, lay, s), k_all, v_all, m_s))
  return jnp.concatenate(outs, axis=1)


def _halo_size(lay: Layout, window: int) -> int:
  return min(window - 1, (lay.n_chunks - 1) * lay.L)


def _halo(xs, c, lay: Layout, s: int, h: int, axis):
  """The h keys (of each array in `xs`) just before slot s's chunk, via ppermutes.

  Distance d = 1..ceil(h / L) brings the last min(L, h - (d-1) L) rows of global
  chunk g - d; one ppermute per source slot, as the chunk may sit in either slot
  of its holder (a chunk held by the same shard is copied locally). Shards whose
  chunk g - d < 0 receive zeros (masked by the caller).
  """
  pieces = []
  for d in range(1, -(-h // lay.L) + 1):
    rows = min(lay.L, h - (d - 1) * lay.L)
    recv = None
    for s_src in range(lay.m):
      pairs = []
      for dst in range(lay.C):
        g = lay.chunk_id(dst, s) - d
        if g >= 0 and lay.holder(g)[1] == s_src:
          pairs.append((lay.holder(g)[0], dst))
      tails = [x[:, (s_src + 1) * lay.L - rows:(s_src + 1) * lay.L] for x in xs]
      parts = []
      if any(src != dst for src, dst in pairs):
        parts.append(lax.ppermute(tails, axis, [(a, b) for a, b in pairs if a != b]))
      own = [dst for src, dst in pairs if src == dst]  # zig-zag: the other slot, same shard
      if own:
        is_own = jnp.isin(c, jnp.asarray(own))
        parts.append([jnp.where(is_own, x, jnp.zeros_like(x)) for x in tails])
      for part in parts:  # each shard receives from exactly one source; others give zeros
        recv = part if recv is None else [a + b for a, b in zip(recv, part)]
    if recv is None:  # no shard's chunk has a predecessor d chunks back
      recv = [jnp.zeros((x.shape[0], rows, *x.shape[2:]), x.dtype) for x in xs]
    pieces.insert(0, recv)
  return [jnp.concatenate([p[i] for p in pieces], axis=1) for i in range(len(xs))]


def _window_halo(q, k, v, qseg, kseg, c, lay: Layout, mask: Mask, axis, inner):
  """Causal local window: each chunk attends to [its h = W-1 predecessors, itself],
  at q_offset h. Halo rows before the sequence start get kv segment id _NO_KEY."""
  h = _halo_size(lay, mask.window)
  if h and kseg is None:  # ids are needed anyway, to mask those rows
    qseg, kseg = jnp.zeros(q.shape[:2], jnp.int32), jnp.zeros(k.shape[:2], jnp.int32)
  outs = []
  for s in range(lay.m):
    q_s, k_s, v_s = (_slot(x, lay, s) for x in (q, k, v))
    qseg_s, kseg_s = (None, None) if kseg is None else (_slot(qseg, lay, s), _slot(kseg, lay, s))
    if h:
      hk, hv, hseg = _halo([k, v, kseg], c, lay, s, h, axis)
      valid_S = lay.chunk_id(c, s) * lay.L - h + jnp.arange(h + lay.L) >= 0
      k_s, v_s = jnp.concatenate([hk, k_s], 1), jnp.concatenate([hv, v_s], 1)
      kseg_s = jnp.where(valid_S[None], jnp.concatenate([hseg, kseg_s], 1), _NO_KEY)
    m_s = Mask(causal=True, window=mask.window, q_segment_ids=qseg_s, kv_segment_ids=kseg_s,
               q_offset=h)
    outs.append(inner(q_s, k_s, v_s, m_s))
  return jnp.concatenate(outs, axis=1)


def _ring(q, k, v, qseg, kseg, c, lay: Layout, mask: Mask, axis, scale):
  """K/V blocks pass around the ring (C-1 ppermutes); partials merge by logsumexp.

  Each block's attention is rematerialised in the backward pass, which then keeps
  only the received K/V blocks (as much as an all-gather). Blocks are dense
  [m*L, m*L] score tiles and fully masked ones are not skipped: with zig-zag every
  block holds visible pairs; with "none" about half are wasted.
  """
  qpos = lay.positions(c)
  perm = [(i, (i + 1) % lay.C) for i in range(lay.C)]
  has_seg = kseg is not None

  @jax.checkpoint
  def block(k_blk, v_blk, kseg_blk, src):
    return attend_positions(q, k_blk, v_blk, qpos, lay.positions(src), causal=mask.causal,
                            window=mask.window, q_seg_BT=qseg,
                            kv_seg_BS=kseg_blk if has_seg else None, scale=scale)

  def step(carry, i):
    k_blk, v_blk, kseg_blk, o, lse = carry
    k_blk, v_blk, kseg_blk = lax.ppermute((k_blk, v_blk, kseg_blk), axis, perm)
    o, lse = merge_partials(o, lse, *block(k_blk, v_blk, kseg_blk, (c - i) % lay.C))
    return (k_blk, v_blk, kseg_blk, o, lse), None

  kseg0 = kseg if has_seg else jnp.zeros(k.shape[:2], jnp.int32)
  init = (k, v, kseg0, *block(k, v, kseg0, c))
  (_, _, _, o, _), _ = lax.scan(step, init, jnp.arange(1, lay.C))
  return o.astype(q.dtype)


# ---------------------------------------------------------------- entry point


def _inner_kernel(impl: Union[str, Callable], chunk: int, scale) -> Callable:
  """(q, k, v, mask) -> out; the kernel must accept a traced `mask.q_offset`."""
  if callable(impl):
    return impl
  if impl == "chunked":
    return functools.partial(chunked_attention, chunk_size=chunk, scale=scale)
  if impl == "reference":
    return functools.partial(reference_attention, scale=scale)
  raise ValueError(f"context_parallel_attention: impl={impl!r}; expected 'chunked', "
                   "'reference' or a callable (q, k, v, mask) -> out.")


def _mesh_axes(mesh, names, exclude) -> tuple[str, ...]:
  """The given mesh axes that exist with size > 1 (so one call works on any mesh)."""
  names = () if names is None else (names,) if isinstance(names, str) else tuple(names)
  return tuple(a for a in names if a != exclude and mesh.shape.get(a, 1) > 1)


def _entry(axes: tuple[str, ...]):
  """One PartitionSpec entry: None, an axis name, or a tuple of them."""
  return None if not axes else axes[0] if len(axes) == 1 else axes


def choose_strategy(lay: Layout, mask: Mask) -> str:
  """Halo exchange when it moves fewer keys than an all-gather, else all-gather."""
  if mask.window is not None and mask.causal and _halo_size(lay, mask.window) < (lay.C - 1) * lay.L:
    return "halo"
  return "all_gather"


def context_parallel_attention(q_BTNH, k_BTKH, v_BTKH, mask: Mask, *, mesh=None,
                               axis: Optional[str] = None, impl: Union[str, Callable] = "chunked",
                               chunk: int = 512, scale=None, load_balance: str = "zigzag",
                               strategy: str = "auto", batch_axes=None, head_axes=None):
  """Self-attention whose T axis is sharded over mesh axis `axis`; -> [B, T, N, H].

  q [B,T,N,H], k=v [B,T,K,H] and the mask's segment ids [B, T] are in the layout
  named by `load_balance` ("zigzag": `to_layout` order; "none": natural); the
  output is in the same layout and sharding. `mesh` defaults to the ambient one
  (`jax.set_mesh`); `axis`, `batch_axes` and `head_axes` default to the rules
  table's "length", "batch" and "act_heads" mesh axes (those of size 1 or absent
  are dropped). `impl` is the per-shard kernel for "all_gather"/"halo": "chunked",
  "reference" or a callable (q, k, v, mask) -> out that accepts a traced q_offset.
  `strategy` "auto" uses "halo" for causal windows narrower than (C-1) chunks and
  "all_gather" otherwise; "ring" is the ppermute ring for any mask. With no mesh
  or a context axis of size 1 this is the plain kernel on the whole sequence.
  """
  B, T, N, H = q_BTNH.shape
  if k_BTKH.shape[:2] != (B, T) or v_BTKH.shape != k_BTKH.shape or N % k_BTKH.shape[2]:
    raise ValueError(f"context_parallel_attention: expected self-attention q [B,T,N,H], "
                     f"k=v [B,T,K,H]; got q {q_BTNH.shape}, k {k_BTKH.shape}, v {v_BTKH.shape}.")
  if not isinstance(mask.q_offset, int) or mask.q_offset != 0:
    raise ValueError("context_parallel_attention: self-attention only (mask.q_offset must be 0).")
  if load_balance not in LOAD_BALANCE:
    raise ValueError(f"load_balance={load_balance!r}; expected one of {LOAD_BALANCE}.")
  if strategy not in STRATEGIES:
    raise ValueError(f"strategy={strategy!r}; expected one of {STRATEGIES}.")
  inner = _inner_kernel(impl, chunk, scale)
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  axis = LOGICAL_RULES["length"] if axis is None else axis
  C = 1 if mesh is None or mesh.empty else mesh.shape.get(axis, 1)
  if C == 1:
    return inner(q_BTNH, k_BTKH, v_BTKH, mask)

  lay = Layout(T, C, zigzag=load_balance == "zigzag")
  strategy = choose_strategy(lay, mask) if strategy == "auto" else strategy
  if strategy == "halo" and (mask.window is None or not mask.causal):
    raise ValueError("strategy='halo' needs a causal mask with a window.")
  batch = _mesh_axes(mesh, LOGICAL_RULES["batch"] if batch_axes is None else batch_axes, axis)
  heads = _mesh_axes(mesh, LOGICAL_RULES["act_heads"] if head_axes is None else head_axes, axis)
  n_heads = int(np.prod([mesh.shape[a] for a in heads]))
  if k_BTKH.shape[2] % n_heads:
    raise ValueError(f"context_parallel_attention: {k_BTKH.shape[2]} kv heads cannot be split "
                     f"over mesh axes {heads} ({n_heads} shards); pass head_axes=().")
  x_spec, seg_spec = P(_entry(batch), axis, _entry(heads), None), P(_entry(batch), axis)

  has_seg = mask.has_segments
  segs = (mask.q_segment_ids.astype(jnp.int32), mask.kv_segment_ids.astype(jnp.int32)) \
      if has_seg else ()

  def body(q, k, v, *segs):
    qseg, kseg = segs if has_seg else (None, None)
    c = lax.axis_index(axis)
    if strategy == "ring":
      return _ring(q, k, v, qseg, kseg, c, lay, mask, axis, scale)
    fn = _window_halo if strategy == "halo" else _all_gather
    return fn(q, k, v, qseg, kseg, c, lay, mask, axis, inner)

  # check_vma=False: the chunked kernel's loops start from unvarying zeros.
  return jax.shard_map(body, mesh=mesh, in_specs=(x_spec,) * 3 + (seg_spec,) * len(segs),
                       out_specs=x_spec, check_vma=False)(q_BTNH, k_BTKH, v_BTKH, *segs)
