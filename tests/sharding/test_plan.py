"""The memory planner against what JAX and XLA actually do.

- parameter shards: the planner's per-device bytes equal the real NamedShardings';
- per-layer activations: the module docstring's S_layer / S_dots formulas equal
  the residuals JAX's autodiff saves for one decoder layer (`saved_residuals`);
- the whole train step (`cwm_jax.train.jit_train_step`) compiled on 1 and 8 CPU
  devices: params + optimizer state + batch match `memory_analysis()`'s
  argument size (and the donated outputs) within 1%; the planner's temporaries
  match `temp_size_in_bytes` within a factor 2 (XLA CPU reports one heap-simulated
  block holding every non-argument buffer at its peak; the planner sums peaks).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cwm_jax.model import get_preset
from cwm_jax.model.config import GLOBAL, LOCAL
from cwm_jax.model.layers import decoder_layer, layer_mask
from cwm_jax.model.params import abstract_params
from cwm_jax.model.rope import inverse_frequencies, rope_cos_sin
from cwm_jax.model.transformer import REMAT_POLICIES
from cwm_jax.sharding import MeshConfig, batch_sharding, make_mesh, param_shardings
from cwm_jax.sharding.plan import (abstract_mesh, format_plan, layer_dots_bytes, layer_saved_bytes, main,
                                   param_elements_per_device, parse_mesh, plan)
from cwm_jax.train import (OptimizerConfig, abstract_train_state, jit_train_step, make_optimizer,
                           train_state_shardings)

# A model small enough to compile fast with two scanned groups of 4 layers.
SMALL = dict(vocab_size=4096, d_model=256, n_layers=8, n_heads=4, n_kv_heads=2, head_dim=64,
             mlp_dim=704, window=128, attention_chunk=128)


@pytest.mark.parametrize("mesh_shape", [dict(data=1), dict(fsdp=8), dict(fsdp=4, tensor=2),
                                        dict(data=2, fsdp=2, tensor=2)])
def test_param_bytes_match_real_shardings(mesh_shape):
  cfg = get_preset("cwm_150m", **SMALL)
  n = math.prod(mesh_shape.values())
  mesh = make_mesh(MeshConfig(**mesh_shape), devices=jax.devices()[:n])
  shardings = param_shardings(mesh, cfg)
  real = sum(math.prod(s.shard_shape(a.shape)) for a, s in
             zip(jax.tree.leaves(abstract_params(cfg)), jax.tree.leaves(shardings)))
  assert param_elements_per_device(cfg, abstract_mesh(mesh_shape))[0] == real


def _layer_residual_bytes(cfg, b, t, layer_type, policy=None):
  """Bytes of the residuals autodiff saves for one decoder layer, excluding the
  layer's weights (arguments) and scalars; RoPE tables are closed over."""
  from jax._src.ad_checkpoint import saved_residuals
  lp = jax.tree.map(lambda a: jnp.zeros(a.shape[1:], cfg.dtype), abstract_params(cfg)["layers"])
  x = jnp.zeros((b, t, cfg.d_model), cfg.dtype)
  pos = jnp.broadcast_to(jnp.arange(t), (b, t))
  cos, sin = rope_cos_sin(pos, inverse_frequencies(cfg.head_dim, cfg.rope_theta))
  seg = jnp.zeros((b, t), jnp.int32)

  def layer(lp, x):
    return decoder_layer(lp, x, cos, sin, layer_mask(layer_type, seg, cfg), cfg)[0]

  if policy is not None:
    layer = jax.checkpoint(layer, policy=REMAT_POLICIES[policy])
  total = 0
  for aval, where in saved_residuals(layer, lp, x):
    if "argument lp" in where or aval.size * aval.dtype.itemsize < 1024:
      continue
    if policy is not None and ("from a constant" in where or "argument x" in where):
      continue  # RoPE tables / group input: counted once per step, not per layer
    total += aval.size * aval.dtype.itemsize
  return total


@pytest.mark.parametrize("impl, attention", [("chunked", "flash"), ("reference", "reference")])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("layer_type", [GLOBAL, LOCAL])
def test_layer_formulas_match_autodiff_residuals(impl, attention, dtype, layer_type):
  cfg = get_preset("tiny", attention_impl=impl, dtype=dtype)
  b, t = 2, 128
  n, k, f = cfg.n_heads, cfg.n_kv_heads, cfg.mlp_dim
  expected = layer_saved_bytes(cfg, b, t, n, k, f, t, attention)
  assert _layer_residual_bytes(cfg, b, t, layer_type) == pytest.approx(expected, rel=0.01)
  dots = layer_dots_bytes(cfg, b, t, n, k, f, t, attention)
  assert _layer_residual_bytes(cfg, b, t, layer_type, "dots") == pytest.approx(dots, rel=0.01)


def _compile_train_step(cfg, mesh_shape, B, T, loss_chunk, accum_steps):
  n = math.prod(mesh_shape.values())
  mesh = make_mesh(MeshConfig(**mesh_shape), devices=jax.devices()[:n])
  opt = make_optimizer(OptimizerConfig(schedule="constant"))
  shardings = train_state_shardings(mesh, cfg, opt)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       abstract_train_state(cfg, opt), shardings)
  batch = {key: jax.ShapeDtypeStruct((B, T), jnp.int32, sharding=batch_sharding(mesh))
           for key in ("tokens", "segment_ids", "positions", "loss_mask")}
  step = jit_train_step(mesh, cfg, opt, shardings, loss_chunk=loss_chunk, accum_steps=accum_steps)
  with jax.set_mesh(mesh):
    return step.jitted.lower(state, batch).compile().memory_analysis()


CASES = {
    # name: (preset, overrides, mesh, batch, seq, loss_chunk, accum_steps)
    "tiny-1dev-none": ("tiny", dict(remat="none"), dict(data=1), 8, 256, 1024, 1),
    "small-dp4x2-full": ("cwm_150m", dict(SMALL, remat="full"), dict(data=2, fsdp=4), 8, 512, 128, 1),
    "small-dp4x2-full-group": ("cwm_150m", dict(SMALL, remat="full", remat_scope="group"),
                               dict(data=2, fsdp=4), 8, 512, 128, 1),
    "small-bf16-fsdp4-tp2-dots-accum2": (
        "cwm_150m", dict(SMALL, remat="dots", dtype="bfloat16"), dict(fsdp=4, tensor=2), 16, 256,
        128, 2),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_plan_matches_xla_memory_analysis(case):
  preset, overrides, mesh_shape, B, T, loss_chunk, accum = CASES[case]
  cfg = get_preset(preset, attention_impl="chunked", **overrides)
  stats = _compile_train_step(cfg, mesh_shape, B, T, loss_chunk, accum)
  pl = plan(cfg, batch=B, seq=T, mesh_shape=mesh_shape, loss_chunk=loss_chunk, accum_steps=accum)
  state = pl.terms["params"] + pl.terms["opt_state"]
  assert pl.persistent == pytest.approx(stats.argument_size_in_bytes, rel=0.01)
  assert state == pytest.approx(stats.output_size_in_bytes, rel=0.01)
  assert stats.alias_size_in_bytes == pytest.approx(state, rel=0.01)  # the state is donated
  ratio = pl.temporaries / stats.temp_size_in_bytes
  assert 0.5 <= ratio <= 2.0, (ratio, pl.terms, stats)


def test_cwm_32b_plans_and_scaling():
  cfg = get_preset("cwm_32b", remat="full", param_dtype="float32", dtype="bfloat16")
  mesh = parse_mesh("data:1,fsdp:8,tensor:8,context:16")
  long = plan(cfg, batch=8, seq=131072, mesh_shape=mesh, device_memory_gb=95)
  assert long.local == dict(long.local, b=1, t=8192, n=6, k=1, f=2688, v=16032, devices=1024)
  # Params f32 sharded 64 ways (fsdp x tensor); AdamW mu, nu in f32 as well.
  assert long.terms["params"] == pytest.approx(32_581_097_472 * 4 / 64, rel=0.01)
  assert long.terms["opt_state"] == 2 * long.terms["params"]
  assert long.fits
  # Remat: none keeps every layer's intermediates, full only the group inputs.
  none = plan(cfg.replace(remat="none"), batch=8, seq=131072, mesh_shape=mesh)
  assert none.terms["activations"] > 10 * long.terms["activations"]
  # Without context parallelism the same run needs far more memory per device.
  no_cp = plan(cfg, batch=8, seq=131072, mesh_shape=dict(fsdp=64, tensor=16),
               device_memory_gb=95)
  assert no_cp.terms["activations"] > long.terms["activations"]
  # Flash attention is linear in the sequence; reference scores are quadratic.
  f1, f2 = (plan(cfg.replace(remat="none"), batch=8, seq=s, mesh_shape=dict(fsdp=8))
            for s in (4096, 8192))
  r1, r2 = (plan(cfg.replace(remat="none"), batch=8, seq=s, mesh_shape=dict(fsdp=8),
                 attention="reference") for s in (4096, 8192))
  assert f2.terms["activations"] / f1.terms["activations"] == pytest.approx(2, rel=0.01)
  assert r2.terms["activations"] / r1.terms["activations"] > 3
  text = format_plan(long, peak_tflops=459)
  for needle in ("params (float32)", "optimizer state", "activations saved (remat=full)",
                 "FITS", "FLOPs/token", "MFU of 459"):
    assert needle in text


def test_cli(capsys):
  assert main(["--model=cwm_8b", "--seq=8192", "--batch=16", "--mesh=fsdp:16",
               "--device_memory_gb=16"]) == 0
  out = capsys.readouterr().out
  assert "DOES NOT FIT" in out and "mesh data=1 fsdp=16 tensor=1 context=1 (16 devices)" in out
  assert main(["--batch=8", "--mesh=fsdp:8,pipeline:2"]) == 2
  assert "--mesh entry 'pipeline:2'" in capsys.readouterr().err
  assert main(["--batch=6", "--accum_steps=4"]) == 2
  assert "not divisible by accum_steps=4" in capsys.readouterr().err


def test_uneven_split_is_reported():
  pl = plan(get_preset("cwm_32b"), batch=8, seq=8192, mesh_shape=dict(tensor=16))
  assert any("n_kv_heads 8 does not split evenly into 16" in n for n in pl.notes)
  assert np.isfinite(pl.total)
