"""Our converted model computes HF transformers' CwmForCausalLM logits.

Random float32 HF models with weights large enough to matter (std 0.2, norm
scales in [0.5, 1.5]) are saved with save_pretrained, converted with
`load_hf`, and compared on sequences longer than the sliding window, with both
attention backends, packed documents, llama3 RoPE scaling and scan/remat.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import CwmConfig, CwmForCausalLM

from cwm_jax.convert import load_hf
from cwm_jax.model import transformer

TOL = 1e-4
SEQ = 29


@dataclasses.dataclass(frozen=True)
class Case:
  hidden: int
  layers: int
  heads: int
  kv_heads: int
  head_dim: int
  window: int
  layer_types: tuple = None   # HF names; None = HF's default rule (i % 4 == 0 global)
  llama3: bool = False
  vocab: int = 97
  mlp: int = 80


CASES = {
    # GQA 3:1, head_dim != hidden/heads (48/6 = 8), non-periodic layer list.
    "gqa_custom_layers": Case(48, 6, 6, 2, 12, window=5, layer_types=(
        "full_attention", "sliding_attention", "sliding_attention", "full_attention",
        "sliding_attention", "full_attention")),
    # CWM's periodic 1 global : 3 local pattern (scanned) + llama3 scaling.
    "cwm_pattern_llama3": Case(32, 8, 4, 1, 16, window=7, llama3=True),
    # No layer_types in config.json (HF's default rule), 2 scanned groups plus
    # an unscanned tail of 2 layers, MHA.
    "default_rule_tail_mha": Case(32, 10, 4, 4, 8, window=6, mlp=48),
}
IMPLS = {"reference": dict(attention_impl="reference"),
         "chunked": dict(attention_impl="chunked", attention_chunk=8)}


def make_hf_model(case: Case, seed: int = 0) -> CwmForCausalLM:
  rope = ({"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0, "low_freq_factor": 1.0,
           "high_freq_factor": 4.0, "original_max_position_embeddings": 8}
          if case.llama3 else {"rope_type": "default", "rope_theta": 10000.0})
  kw = {} if case.layer_types is None else {"layer_types": list(case.layer_types)}
  config = CwmConfig(
      vocab_size=case.vocab, hidden_size=case.hidden, intermediate_size=case.mlp,
      num_hidden_layers=case.layers, num_attention_heads=case.heads,
      num_key_value_heads=case.kv_heads, head_dim=case.head_dim,
      sliding_window=case.window, rope_parameters=rope, max_position_embeddings=64,
      bos_token_id=1, eos_token_id=2, **kw)
  torch.manual_seed(seed)
  model = CwmForCausalLM(config).eval()
  model.config._attn_implementation = "eager"
  with torch.no_grad():
    for p in model.parameters():
      if p.ndim > 1:
        torch.nn.init.normal_(p, std=0.2)
      else:
        torch.nn.init.uniform_(p, 0.5, 1.5)
  return model


def hf_logits(model, ids_BT) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(ids_BT)).logits.numpy()


def assert_logits_close(ours, ref):
  ours, ref = np.asarray(ours), np.asarray(ref)
  assert ours.shape == ref.shape and ours.dtype == np.float32
  err, scale = np.abs(ours - ref).max(), np.abs(ref).max()
  assert scale > 1.0, f"logit scale {scale} too small for the test to have teeth"
  assert err <= TOL and err <= TOL * scale, f"max abs err {err:.3g}, logit scale {scale:.3g}"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """name -> (HF model, checkpoint dir), built once per module."""
  out = {}
  for name, case in CASES.items():
    model = make_hf_model(case)
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    if case.layer_types is None:   # exercise the converter's copy of HF's default rule
      config = json.loads((path / "config.json").read_text())
      del config["layer_types"]
      (path / "config.json").write_text(json.dumps(config))
    out[name] = (model, str(path))
  return out


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_match_hf(saved, name, impl):
  hf_model, path = saved[name]
  case = CASES[name]
  config, model = load_hf(path, **IMPLS[impl])
  assert config.window == case.window < SEQ
  assert (config.rope_scaling is not None) == case.llama3
  # The converter scans exactly when the layer list is periodic with period 4.
  assert config.scan_layers == (name != "gqa_custom_layers")
  ids = np.random.RandomState(1).randint(0, case.vocab, (2, SEQ))
  assert_logits_close(model(jnp.asarray(ids)), hf_logits(hf_model, ids))


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_packed_documents_match_hf_per_document(saved, impl):
  hf_model, path = saved["gqa_custom_layers"]
  _, model = load_hf(path, **IMPLS[impl])
  lengths = [9, 3, 14, 6]   # documents longer and shorter than the window (5)
  rng = np.random.RandomState(2)
  docs = [rng.randint(0, 97, n) for n in lengths]
  ids = np.concatenate(docs)[None]
  segment_ids = np.concatenate([np.full(n, s + 1) for s, n in enumerate(lengths)])[None]
  positions = np.concatenate([np.arange(n) for n in lengths])[None]
  ours = np.asarray(model(jnp.asarray(ids), positions=jnp.asarray(positions),
                          segment_ids=jnp.asarray(segment_ids)))
  # Positions derived from the segment ids give the same result.
  derived = np.asarray(model(jnp.asarray(ids), segment_ids=jnp.asarray(segment_ids)))
  np.testing.assert_array_equal(ours, derived)
  start = 0
  for doc in docs:
    assert_logits_close(ours[:, start:start + len(doc)], hf_logits(hf_model, doc[None]))
    start += len(doc)


def test_scan_and_remat_equal_unscanned(saved):
  hf_model, path = saved["cwm_pattern_llama3"]
  config, model = load_hf(path, attention_impl="reference")
  assert config.scan_layers and config.scan_period == 4
  params = model.params()
  ids = jnp.asarray(np.random.RandomState(3).randint(0, 97, (2, SEQ)))
  cotangent = jnp.asarray(np.random.RandomState(4).randn(2, SEQ, 97).astype(np.float32))

  def loss(p, cfg):
    return jnp.sum(transformer.forward(p, ids, cfg) * cotangent)

  # Gradients (not just values) so the remat'd backward pass is compared too.
  variants = {"unscanned": config.replace(scan_layers=False),
              "scanned_remat_full": config.replace(remat="full")}
  results = {k: jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, cfg)
             for k, cfg in variants.items()}
  ref_value, ref_grads = results["unscanned"]
  for name, (value, grads) in results.items():
    np.testing.assert_allclose(value, ref_value, rtol=1e-5, err_msg=name)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * np.abs(r).max(), err_msg=name)
  logits = transformer.forward(params, ids, variants["unscanned"])
  assert_logits_close(logits, hf_logits(hf_model, np.asarray(ids)))
