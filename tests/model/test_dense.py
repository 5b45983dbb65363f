"""`project`: the token-folded einsum equals `jnp.einsum` (values, gradients,
sharded), folds only where it should, and removes the transposed copy of the
cotangent that XLA:CPU makes for the two-axis weight gradient."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from cwm_jax.model.dense import fold_tokens, forced_folding, project
from cwm_jax.sharding import MeshConfig, make_mesh

SPECS = [  # (spec, x shape, w shape): every projection of the model and the loss
    ("BTD,DF->BTF", (2, 12, 8), (8, 24)),
    ("BTD,DNH->BTNH", (2, 12, 8), (8, 4, 3)),
    ("BTNH,NHD->BTD", (2, 12, 4, 3), (4, 3, 8)),
    ("BCD,DV->BCV", (3, 5, 8), (8, 40)),
]


def _args(x_shape, w_shape, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=x_shape), jnp.float32),
          jnp.asarray(rng.normal(size=w_shape), jnp.float32))


@pytest.mark.parametrize("spec,x_shape,w_shape", SPECS)
def test_project_matches_einsum_values_and_gradients(spec, x_shape, w_shape):
  x, w = _args(x_shape, w_shape)
  assert fold_tokens()  # CPU, no mesh: the folded path is the one under test

  def loss(fn):
    return lambda x, w: jnp.sum(jnp.sin(fn(spec, x, w)))

  np.testing.assert_allclose(project(spec, x, w), jnp.einsum(spec, x, w), rtol=1e-6, atol=1e-6)
  ours = jax.grad(loss(project), argnums=(0, 1))(x, w)
  ref = jax.grad(loss(jnp.einsum), argnums=(0, 1))(x, w)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_project_keeps_einsum_kwargs_and_rejects_non_token_specs():
  x, w = _args((2, 3, 4), (4, 5))
  out = project("BTD,DV->BTV", x.astype(jnp.bfloat16), w.astype(jnp.bfloat16),
                preferred_element_type=jnp.float32)
  assert out.dtype == jnp.float32 and out.shape == (2, 3, 5)
  with pytest.raises(ValueError, match="same two token axes"):
    project("DT,DF->TF", w, w)
  with pytest.raises(ValueError, match="same two token axes"):
    project("BTD,DF->TBF", x, w)


def test_sharded_batch_folds_and_sharded_length_does_not():
  x, w = _args((4, 8, 6), (6, 10))
  ref = jnp.einsum("BTD,DF->BTF", x, w)
  data = make_mesh(MeshConfig(data=2), devices=jax.devices()[:2])
  with jax.set_mesh(data):
    assert fold_tokens()
    xs = jax.device_put(x, NamedSharding(data, P("data")))
    out = jax.jit(lambda x, w: project("BTD,DF->BTF", x, w))(xs, w)
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
  context = make_mesh(MeshConfig(data=2, context=2), devices=jax.devices()[:4])
  with jax.set_mesh(context):
    assert not fold_tokens()  # rows of [B * T] would not be the devices' blocks
    xs = jax.device_put(x, NamedSharding(context, P("data", "context")))
    out = jax.jit(lambda x, w: project("BTD,DF->BTF", x, w))(xs, w)
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_weight_gradient_reads_the_cotangent_without_a_transposed_copy():
  """The reason `project` exists: grad of a SwiGLU block on CPU. Folded, no fusion
  writes an [F, B*T] (transposed) array for the weight-gradient matmuls; the
  plain two-token-axis einsum makes such copies (if XLA:CPU stops doing so,
  folding can go)."""
  B, T, D, F = 2, 16, 8, 24

  def block(fn):
    def loss(x, g, u, d):
      h = jax.nn.silu(fn("BTD,DF->BTF", x, g)) * fn("BTD,DF->BTF", x, u)
      return jnp.sum(fn("BTF,FD->BTD", h, d) ** 2)
    return jax.jit(jax.grad(loss, argnums=(1, 2, 3)))

  rng = np.random.default_rng(0)
  args = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((B, T, D), (D, F), (D, F), (F, D))]

  def transposed_copies(fold):
    with forced_folding(fold):
      hlo = block(project).lower(*args).compile().as_text()
    return [line for line in hlo.splitlines()
            if re.search(rf"= f32\[{F},{B * T}\]\{{1,0\}} (fusion|copy|transpose)\(", line)]

  assert transposed_copies(False), "XLA:CPU no longer copies: fold_tokens can go"
  assert transposed_copies(True) == []
  assert fold_tokens()  # forced_folding restored the automatic choice
  for a, b in zip(block(project)(*args), block(jnp.einsum)(*args)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_several_weights_share_one_folded_input():
  """q/k/v (and gate/up) go through one call: one folded x, so autodiff saves one
  residual for them, as the memory plan counts (sharding/plan.py)."""
  from jax._src.ad_checkpoint import saved_residuals
  x, wq = _args((2, 6, 8), (8, 4, 3))
  wk = wq[:, :2]

  def both(x, wq, wk):
    q, k = project("BTD,DNH->BTNH", x, wq, wk)
    return jnp.sum(q * q) + jnp.sum(k * k)

  k = project("BTD,DNH->BTNH", x, wq, wk)[1]
  np.testing.assert_allclose(k, jnp.einsum("BTD,DKH->BTKH", x, wk), rtol=1e-6, atol=1e-6)
  x_sized = [aval.shape for aval, where in saved_residuals(both, x, wq, wk)
             if aval.size == x.size and "argument w" not in where]
  assert x_sized == [(12, 8)]
