"""Per-device memory and FLOPs of a training step, from shapes alone (no devices).

    python -m cwm_jax.sharding.plan --model=cwm_32b --seq=131072 --batch=8 \\
        --mesh=data:1,fsdp:8,tensor:8,context:16 --device_memory_gb=95 --remat=full \\
        --param_dtype=float32 --compute_dtype=bfloat16 --optimizer=adamw

It models `cwm_jax.train.step.train_step` (scanned layer groups, chunked loss,
f32 gradient accumulator, optax AdamW after global-norm clipping) on a mesh of
any size, using the rules table for every division:

Persistent (the jit's arguments, donated and aliased to its outputs)
  params     every tensor's per-device shard, ceil(dim / mesh axes of its logical
             axes) per dimension (`logical_to_spec`), in param_dtype
  opt state  AdamW: mu in mu_dtype (default param_dtype, as optax), nu in
             param_dtype; + an f32 master copy if --master_weights (the train step
             keeps none: with bf16 params, the update is applied in bf16); sgd: none
  batch      tokens, segment_ids, positions, loss_mask: 4 int32 [b, t]

Per device: b = micro-batch / (data*fsdp), t = T / context, n = N / tensor,
k = K / tensor, f = F / tensor, v = V / tensor (ceil); D is not split (the
residual stream is replicated over `tensor`); c = compute-dtype bytes.

Activations of one decoder layer that autodiff keeps for the backward pass
(remat none), read off the model's intermediates (`layers.py`; checked against
JAX's `saved_residuals` in tests/sharding/test_plan.py):
  S_layer = 2 * (b t D (4 + c) + 2 b t 4)     two RMSNorms: f32 normalised x, scaled
                                              output, f32 rsqrt/mean stats
          + 2 b t D c                         layer input, post-attention residual
          + 4 b t H c                         RoPE cos/sin broadcasts for q and k
          + b t H 3n c + 2 b s k H c + b n t 4 + 2 b t 4
                                              flash kernels (chunked/splash/cudnn):
                                              q copy, out, out reshaped, k and v
                                              copies, f32 logsumexp, segment ids;
                                              s = t, or with context > 1 the keys
                                              a shard sees (context_parallel.py):
                                              T (global, all-gather), t + W - 1
                                              (local, halo)
            (reference instead: b t H (2n + 2k) c + (4 + c') b n t s: q, k, v, out
             and the f32 softmax p (reference.masked_softmax), plus its cast for
             p.v in a narrower dtype, c' = c if c < 4 else 0)
          + 6 b t f c                         SwiGLU: gate, up, three SiLU
                                              residuals, gate*up
  S_dots  = b t ((n + 2k) H + D + 2f) c       dot outputs q, k, v, o, gate, up
            (reference adds its f32 scores b n t s 4 and p.v output b t n H 4)
Layers run in scanned groups of p = scan_period; remat wraps each layer (U = L units)
or, with remat_scope="group", each group (U = G + tail units):
  saved    none: L S_layer;  full: U b t D c (unit inputs);  dots: U b t D c + L S_dots
  working  max(W_loss, W_group) with
           W_loss  = 3 b (C / context) v 4 + b t D (2c + 4)   three f32 logits-sized
                     buffers of one loss chunk (C = T / ceil(T / loss_chunk)), the
                     final hidden state and its gradient
           W_group = R + 3 b t f c + 3 b t D 4 + b t H (n + 2k) 4
                     the recomputed unit R (full: its S_layer sum, dots: minus
                     its S_dots, none: 0), plus one layer's backward: MLP gradients,
                     f32 residual gradients, f32 dq/dk/dv accumulators
  constant 2 b t H 4 (f32 RoPE tables) + 4 b t 4 (targets, weights, positions)
Other temporaries
  gradients   f32 accumulator (param-sized) + compute-dtype gradients of the
              stacked layer weights when compute != param dtype + a param-dtype
              micro-batch gradient when accum_steps > 1
  copies      one layer's weights cast to the compute dtype (if different; the
              cast is per layer) + FSDP all-gather of one scan group's weights
              (fsdp > 1), twice (forward and backward)
  update      one f32 param-sized buffer for the clipped update

What XLA counts (`compiled.memory_analysis()`): argument_size = params + opt
state + batch (+ scalars), output_size = the same state + metrics (aliased with
donation), temp_size = one preallocated block holding every other buffer at its
peak (heap-simulated, buffers with disjoint live ranges share space). The planner's
persistent terms equal argument_size up to a few scalars; its temporaries
(activations + working + gradients + copies + update) add peaks that XLA partly
overlaps or fuses away, and land within 2x of temp_size on the CPU backend
(0.9x-1.3x on the configs of tests/sharding/test_plan.py). GPU/TPU backends fuse
more (e.g. the SiLU residuals), so read the activation terms as upper bounds there.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from typing import Optional, Sequence

import jax.numpy as jnp
from jax.sharding import AbstractMesh, AxisType

from cwm_jax.model.config import GLOBAL, PRESETS, ModelConfig, get_preset
from cwm_jax.model.flops import flops_per_token, hardware_flops_per_token
from cwm_jax.model.params import count_params, param_specs
from cwm_jax.sharding.mesh import MESH_AXES
from cwm_jax.sharding.rules import logical_to_spec

GB = 1e9
OPTIMIZERS = ("adamw", "sgd")
ATTENTION = ("flash", "reference")


def _bytes(dtype) -> int:
  return jnp.dtype(dtype).itemsize


def abstract_mesh(mesh_shape: dict) -> AbstractMesh:
  """A device-free mesh with the four axes (missing ones have size 1)."""
  unknown = sorted(set(mesh_shape) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"mesh axes {unknown} unknown; expected some of {MESH_AXES}.")
  sizes = tuple(int(mesh_shape.get(a, 1)) for a in MESH_AXES)
  if any(s < 1 for s in sizes):
    raise ValueError(f"mesh {mesh_shape}: every axis size must be >= 1.")
  return AbstractMesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def shard_count(axes: Sequence[Optional[str]], mesh, rules=None) -> list[int]:
  """Per dimension: how many shards the rules table splits it into on `mesh`."""
  out = []
  for entry in logical_to_spec(axes, mesh, rules):
    names = () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))
    out.append(math.prod(mesh.shape[a] for a in names))
  return out


def local_shape(shape: Sequence[int], axes: Sequence[Optional[str]], mesh, rules=None) -> tuple:
  """The per-device block of a `shape` array with logical `axes` (ceil division)."""
  return tuple(-(-d // n) for d, n in zip(shape, shard_count(axes, mesh, rules)))


def param_elements_per_device(cfg: ModelConfig, mesh, rules=None) -> tuple[int, list[str]]:
  """(elements of this device's parameter shards, names of unevenly split tensors)."""
  total, uneven = 0, []

  def walk(tree, prefix):
    nonlocal total
    for name, spec in tree.items():
      if isinstance(spec, dict):
        walk(spec, prefix + name + "/")
        continue
      counts = shard_count(spec.axes, mesh, rules)
      total += math.prod(-(-d // n) for d, n in zip(spec.shape, counts))
      if any(d % n for d, n in zip(spec.shape, counts)):
        uneven.append(prefix + name)

  walk(param_specs(cfg), "")
  return total, uneven


def layer_param_elements(cfg: ModelConfig) -> int:
  D, N, K, H, F = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim
  return 2 * D + 2 * D * N * H + 2 * D * K * H + 3 * D * F


def layer_saved_bytes(cfg: ModelConfig, b: int, t: int, n: int, k: int, f: int, s: int,
                      attention: str = "flash") -> int:
  """S_layer: bytes autodiff keeps for one decoder layer's backward (no remat), for
  per-device sizes b, t, n, k, f and s keys per query block (see the module doc)."""
  D, H, c = cfg.d_model, cfg.head_dim, _bytes(cfg.dtype)
  bt = b * t
  norms = 2 * (bt * D * (4 + c) + 2 * bt * 4)
  resid = 2 * bt * D * c
  rope = 4 * bt * H * c
  if attention == "flash":
    attn = bt * H * 3 * n * c + 2 * b * s * k * H * c + b * n * t * 4 + 2 * bt * 4
  else:
    attn = bt * H * (2 * n + 2 * k) * c + (4 + (c if c < 4 else 0)) * b * n * t * s
  return norms + resid + rope + attn + 6 * bt * f * c


def layer_dots_bytes(cfg: ModelConfig, b: int, t: int, n: int, k: int, f: int, s: int,
                     attention: str = "flash") -> int:
  """S_dots: the matmul outputs one layer saves under the `dots` remat policies."""
  D, H, c = cfg.d_model, cfg.head_dim, _bytes(cfg.dtype)
  extra = (b * n * t * s * 4 + b * t * n * H * 4) if attention == "reference" else 0
  return b * t * ((n + 2 * k) * H + D + 2 * f) * c + extra


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Per-device bytes of each term, FLOPs, and the inputs that produced them."""

  cfg: ModelConfig
  mesh_shape: dict
  batch: int
  seq: int
  accum_steps: int
  local: dict            # b, t, n, k, f, v, C (loss chunk per device)
  terms: dict            # name -> bytes (ordered, see `rows`)
  notes: tuple
  device_memory: Optional[float]
  flops: dict

  @property
  def persistent(self) -> int:
    return self.terms["params"] + self.terms["opt_state"] + self.terms["batch"]

  @property
  def temporaries(self) -> int:
    return sum(v for k, v in self.terms.items() if k not in ("params", "opt_state", "batch"))

  @property
  def total(self) -> int:
    return self.persistent + self.temporaries

  @property
  def fits(self) -> Optional[bool]:
    return None if self.device_memory is None else self.total <= self.device_memory


def plan(cfg: ModelConfig, *, batch: int, seq: int, mesh_shape: dict, accum_steps: int = 1,
         loss_chunk: int = 1024, optimizer: str = "adamw", mu_dtype: Optional[str] = None,
         master_weights: bool = False, attention: str = "flash",
         device_memory_gb: Optional[float] = None, rules=None) -> MemoryPlan:
  """The memory/FLOPs plan of one training step of `cfg` (its remat, dtype,
  param_dtype, scan settings) on a mesh of `mesh_shape` (e.g. {"fsdp": 8})."""
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"optimizer={optimizer!r}: expected one of {OPTIMIZERS}.")
  if attention not in ATTENTION:
    raise ValueError(f"attention={attention!r}: expected one of {ATTENTION}.")
  if batch % accum_steps:
    raise ValueError(f"batch {batch} is not divisible by accum_steps={accum_steps}.")
  mesh = abstract_mesh(mesh_shape)
  notes = []
  micro = batch // accum_steps
  b, t = local_shape((micro, seq), ("batch", "length"), mesh, rules)
  n, k, f = (local_shape((x,), (ax,), mesh, rules)[0] for x, ax in
             ((cfg.n_heads, "act_heads"), (cfg.n_kv_heads, "act_kv_heads"), (cfg.mlp_dim, "act_mlp")))
  v = local_shape((cfg.vocab_size,), ("act_vocab",), mesh, rules)[0]
  for what, size, axes in (("micro-batch", micro, "batch"), ("sequence", seq, "length"),
                           ("n_heads", cfg.n_heads, "act_heads"),
                           ("n_kv_heads", cfg.n_kv_heads, "act_kv_heads"),
                           ("mlp_dim", cfg.mlp_dim, "act_mlp"), ("vocab", cfg.vocab_size, "act_vocab")):
    count = shard_count((axes,), mesh, rules)[0]
    if size % count:
      notes.append(f"{what} {size} does not split evenly into {count} shards (padded; "
                   "jit may refuse this sharding)")
  D, H, L, W = cfg.d_model, cfg.head_dim, cfg.n_layers, cfg.window
  p = cfg.scan_period if cfg.scan_layers else 1
  n_groups, tail = (L // p, L % p) if cfg.scan_layers else (0, L)
  per_group = cfg.remat_scope == "group" and cfg.scan_layers
  saves = n_groups + tail if per_group else L   # checkpointed units' inputs saved under remat
  c, pb = _bytes(cfg.dtype), _bytes(cfg.param_dtype)
  bt = b * t
  ctx = mesh.shape["context"]

  # --- persistent: params, optimizer state, batch -------------------------------------------
  p_elems, uneven = param_elements_per_device(cfg, mesh, rules)
  if uneven:
    notes.append("unevenly split params (padded): " + ", ".join(uneven))
  terms = {"params": p_elems * pb}
  if optimizer == "adamw":
    mu_b = _bytes(mu_dtype) if mu_dtype else pb
    opt = p_elems * (mu_b + pb) + (p_elems * 4 if master_weights and pb < 4 else 0)
  else:
    opt = 0
  terms["opt_state"] = opt
  terms["batch"] = 4 * bt * accum_steps * 4

  # --- activations (one micro-batch) --------------------------------------------------------
  def kv_len(layer_type):
    if ctx == 1:
      return t
    return seq if layer_type == GLOBAL else min(seq, t + W - 1)

  def s_layer(layer_type):
    return layer_saved_bytes(cfg, b, t, n, k, f, kv_len(layer_type), attention)

  def s_dots(layer_type):
    return layer_dots_bytes(cfg, b, t, n, k, f, kv_len(layer_type), attention)

  per_layer = [s_layer(lt) for lt in cfg.layer_types]
  per_layer_dots = [s_dots(lt) for lt in cfg.layer_types]
  stream = bt * D * c
  # The unit recomputed in the backward pass: one layer, or one scanned group.
  span = p if per_group else 1
  units = [sum(per_layer[i:i + span]) for i in range(0, L, span)]
  units_dots = [sum(per_layer_dots[i:i + span]) for i in range(0, L, span)]
  if cfg.remat == "none":
    saved, recompute = sum(per_layer), 0
  elif cfg.remat == "full":
    saved, recompute = saves * stream, max(units)
  else:  # dots, dots_no_batch
    saved, recompute = (saves * stream + sum(per_layer_dots),
                        max(a - d for a, d in zip(units, units_dots)))
  n_chunks = -(-seq // loss_chunk)
  C = -(-seq // n_chunks)
  c_loc = local_shape((b, C), ("batch", "length"), mesh, rules)[1]
  w_loss = 3 * b * c_loc * v * 4 + bt * D * (2 * c + 4)
  w_group = recompute + 3 * bt * f * c + 3 * bt * D * 4 + bt * H * (n + 2 * k) * 4
  terms["activations"] = saved + 2 * bt * H * 4 + 4 * bt * 4
  terms["working"] = max(w_loss, w_group)

  # --- other temporaries --------------------------------------------------------------------
  grads = p_elems * 4
  if c != pb:
    grads += p_elems * c
  if accum_steps > 1:
    grads += p_elems * pb
  terms["gradients"] = grads
  copies = layer_param_elements(cfg) // mesh.shape["tensor"] * c if c != pb else 0
  if mesh.shape["fsdp"] > 1:
    gathered = layer_param_elements(cfg) * p // (mesh.shape["tensor"])
    copies += 2 * gathered * c
  terms["param_copies"] = copies
  terms["update"] = p_elems * 4 if optimizer == "adamw" else 0

  f_tok = flops_per_token(cfg, seq)
  n_dev = mesh.size
  flops = {
      "forward_per_token": f_tok.forward, "train_per_token": f_tok.train,
      "attention_fraction": f_tok.attention_fraction,
      "train_per_step": f_tok.train * batch * seq,
      "train_per_device_step": f_tok.train * batch * seq / n_dev,
      "hardware_per_token": hardware_flops_per_token(cfg, seq, cfg.remat),
  }
  local = {"b": b, "t": t, "n": n, "k": k, "f": f, "v": v, "C": c_loc, "groups": n_groups,
           "devices": n_dev}
  mem = None if device_memory_gb is None else device_memory_gb * GB
  return MemoryPlan(cfg=cfg, mesh_shape=dict(mesh.shape), batch=batch, seq=seq,
                    accum_steps=accum_steps, local=local, terms=terms, notes=tuple(notes),
                    device_memory=mem, flops=flops)


ROWS = {
    "params": "params ({param_dtype})",
    "opt_state": "optimizer state",
    "batch": "batch (4 int32 [b, t])",
    "gradients": "gradients (f32 accumulator{grad_extra})",
    "param_copies": "param copies (compute cast, FSDP gather)",
    "update": "optimizer update (f32)",
    "activations": "activations saved (remat={remat})",
    "working": "backward working set",
}


def format_plan(pl: MemoryPlan, peak_tflops: Optional[float] = None, mfu: float = 0.5) -> str:
  """A human-readable table of `pl` (GB = 1e9 bytes per device) and its FLOPs."""
  cfg, lo = pl.cfg, pl.local
  mesh = " ".join(f"{a}={s}" for a, s in pl.mesh_shape.items())
  grad_extra = (f" + {cfg.dtype} layer grads" if cfg.dtype != cfg.param_dtype else "") + (
      " + micro-batch grads" if pl.accum_steps > 1 else "")
  lines = [
      f"model {count_params(cfg) / 1e9:.2f}B params, seq {pl.seq}, global batch {pl.batch} "
      f"(accum {pl.accum_steps}), remat {cfg.remat}, compute {cfg.dtype}, params {cfg.param_dtype}",
      f"mesh {mesh} ({lo['devices']} devices); per device: batch {lo['b']} x seq {lo['t']}, "
      f"heads {lo['n']}/{cfg.n_heads}, kv heads {lo['k']}/{cfg.n_kv_heads}, "
      f"mlp {lo['f']}/{cfg.mlp_dim}, vocab {lo['v']}/{cfg.vocab_size}",
      "",
      f"  {'per-device memory':<52}{'GB':>10}",
  ]
  for key, label in ROWS.items():
    label = label.format(param_dtype=cfg.param_dtype, remat=cfg.remat, grad_extra=grad_extra)
    lines.append(f"  {label:<52}{pl.terms[key] / GB:>10.2f}")
  lines.append(f"  {'total':<52}{pl.total / GB:>10.2f}")
  if pl.device_memory is not None:
    verdict = "FITS" if pl.fits else "DOES NOT FIT"
    lines.append(f"  {'device memory':<52}{pl.device_memory / GB:>10.2f}   {verdict} "
                 f"({100 * pl.total / pl.device_memory:.0f}% used)")
  fl = pl.flops
  lines += [
      "",
      f"  FLOPs/token: forward {fl['forward_per_token']:.3e}, train {fl['train_per_token']:.3e} "
      f"(attention {100 * fl['attention_fraction']:.1f}%), with remat recompute "
      f"{fl['hardware_per_token']:.3e}",
      f"  FLOPs/step: {fl['train_per_step']:.3e} total, {fl['train_per_device_step']:.3e} per device",
  ]
  if peak_tflops:
    secs = fl["train_per_device_step"] / (peak_tflops * 1e12 * mfu)
    lines.append(f"  step time at {100 * mfu:.0f}% MFU of {peak_tflops:g} TFLOP/s: {secs:.2f} s "
                 f"({pl.batch * pl.seq / secs:,.0f} tokens/s)")
  lines += [f"  note: {n}" for n in pl.notes]
  return "\n".join(lines)


def parse_mesh(text: str) -> dict:
  """'data:1,fsdp:8,tensor:8,context:16' -> dict."""
  out = {}
  for part in filter(None, (p.strip() for p in text.split(","))):
    name, _, size = part.partition(":")
    if name not in MESH_AXES or not size.isdigit() or int(size) < 1:
      raise ValueError(f"--mesh entry {part!r}: expected axis:size with axis in {MESH_AXES} "
                       "and size >= 1, e.g. data:1,fsdp:8,tensor:8,context:16.")
    out[name] = int(size)
  return out


def main(argv: Optional[Sequence[str]] = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m cwm_jax.sharding.plan", description=__doc__.split("\n")[0])
  ap.add_argument("--model", default="cwm_32b", choices=sorted(PRESETS))
  ap.add_argument("--seq", type=int, default=8192)
  ap.add_argument("--batch", type=int, required=True, help="global batch (rows) per optimizer step")
  ap.add_argument("--mesh", default="fsdp:8", help="e.g. data:1,fsdp:8,tensor:8,context:16")
  ap.add_argument("--device_memory_gb", type=float, default=None)
  ap.add_argument("--remat", default="full", choices=["none", "full", "dots", "dots_no_batch"])
  ap.add_argument("--remat_scope", default="layer", choices=["layer", "group"])
  ap.add_argument("--param_dtype", default="float32")
  ap.add_argument("--compute_dtype", default="bfloat16")
  ap.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS)
  ap.add_argument("--mu_dtype", default=None, help="AdamW first moment dtype (default: param_dtype)")
  ap.add_argument("--master_weights", action="store_true",
                  help="count an f32 master copy when params are not f32")
  ap.add_argument("--accum_steps", type=int, default=1)
  ap.add_argument("--loss_chunk", type=int, default=1024)
  ap.add_argument("--attention", default="flash", choices=ATTENTION)
  ap.add_argument("--peak_tflops", type=float, default=None, help="per-device peak, for a step time")
  ap.add_argument("--mfu", type=float, default=0.5, help="assumed MFU for the step time")
  args = ap.parse_args(argv)
  try:
    cfg = get_preset(args.model, remat=args.remat, remat_scope=args.remat_scope,
                     param_dtype=args.param_dtype, dtype=args.compute_dtype)
    pl = plan(cfg, batch=args.batch, seq=args.seq, mesh_shape=parse_mesh(args.mesh),
              accum_steps=args.accum_steps, loss_chunk=args.loss_chunk, optimizer=args.optimizer,
              mu_dtype=args.mu_dtype, master_weights=args.master_weights, attention=args.attention,
              device_memory_gb=args.device_memory_gb)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_plan(pl, args.peak_tflops, args.mfu))
  return 0


if __name__ == "__main__":
  sys.exit(main())
