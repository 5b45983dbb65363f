"""HF <-> ours <-> Orbax conversions are bit-exact, and bad inputs fail clearly."""

import json
import os
import shutil
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from transformers import CwmConfig, CwmForCausalLM

from cwm_jax.convert import (config_from_hf, config_to_hf, load_hf, load_hf_params, load_orbax,
                             save_hf, save_orbax)
from cwm_jax.convert import hf_weights
from cwm_jax.model import params as params_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARD = "24KB"   # a few shards for the tiny model below
HF_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
             "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings", "mlp_bias",
             "rope_parameters", "sliding_window", "layer_types", "bos_token_id",
             "eos_token_id", "initializer_range", "dtype")


def tiny_hf_config(**kw):
  base = dict(vocab_size=61, hidden_size=32, intermediate_size=40, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, head_dim=12, sliding_window=4,
              layer_types=["full_attention", "sliding_attention", "sliding_attention"],
              rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 16},
              max_position_embeddings=128, bos_token_id=1, eos_token_id=[2, 3],
              rms_norm_eps=1e-6)
  return CwmConfig(**{**base, **kw})


def save_tiny_hf(path, dtype="float32", max_shard_size=None):
  torch.manual_seed(0)
  model = CwmForCausalLM(tiny_hf_config()).eval()
  with torch.no_grad():
    for p in model.parameters():
      torch.nn.init.normal_(p, std=0.3)
  model = model.to(getattr(torch, dtype))
  kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
  model.save_pretrained(path, **kw)
  return model


def read_tensors(path):
  """{name: (dtype, shape, bytes)} over every safetensors file in `path`."""
  out = {}
  for file in hf_weights.checkpoint_files(str(path)):
    with safe_open(file, framework="numpy") as f:
      for name in f.keys():
        t = f.get_tensor(name)
        out[name] = (str(t.dtype), t.shape, t.tobytes())
  return out


def assert_same_tensors(a_dir, b_dir):
  a, b = read_tensors(a_dir), read_tensors(b_dir)
  assert sorted(a) == sorted(b)
  for name in a:
    assert a[name] == b[name], name


def assert_same_params(a, b):
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
  assert len(flat_a) == len(flat_b)
  for path, x in flat_a:
    y = np.asarray(flat_b[path])
    assert x.dtype == y.dtype and x.shape == y.shape, path
    assert np.asarray(x).tobytes() == y.tobytes(), path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """(dtype, sharded) -> (HF model, dir), saved once by transformers."""
  out = {}
  for dtype in ("float32", "bfloat16"):
    for sharded in (False, True):
      path = tmp_path_factory.mktemp(f"hf_{dtype}_{'sharded' if sharded else 'single'}")
      model = save_tiny_hf(path, dtype, SHARD if sharded else None)
      out[dtype, sharded] = (model, str(path))
  return out


CKPTS = [("float32", False), ("float32", True), ("bfloat16", False), ("bfloat16", True)]


@pytest.mark.parametrize("dtype,sharded", CKPTS)
def test_hf_roundtrip_is_bit_exact(checkpoints, tmp_path, dtype, sharded):
  hf_model, src = checkpoints[dtype, sharded]
  assert os.path.exists(os.path.join(src, hf_weights.INDEX_FILE)) == sharded
  hf_json = json.load(open(os.path.join(src, "config.json")))
  config, params = load_hf_params(src)
  assert config.param_dtype == config.dtype == dtype
  assert all(str(x.dtype) == dtype for x in jax.tree.leaves(params))
  stats = save_hf(params, config, str(tmp_path), max_shard_size=SHARD if sharded else "5GB",
                  hf_extra={k: hf_json[k] for k in ("bos_token_id", "eos_token_id")})
  assert stats["tensors"] == len(read_tensors(src))
  assert os.path.exists(tmp_path / hf_weights.INDEX_FILE) == sharded
  assert_same_tensors(src, tmp_path)

  ours, theirs = CwmConfig.from_pretrained(tmp_path), CwmConfig.from_pretrained(src)
  for field in HF_FIELDS:
    assert getattr(ours, field) == getattr(theirs, field), field
  # transformers loads our directory and computes what it computes from the source
  # (both loaded the same way: `.to(bfloat16)` on the in-memory model also casts
  # the RoPE inv_freq buffer, which from_pretrained keeps in f32).
  ids = torch.tensor(np.random.RandomState(0).randint(0, 61, (2, 11)))
  with torch.no_grad():
    logits = [CwmForCausalLM.from_pretrained(d).eval()(ids).logits.float().numpy()
              for d in (tmp_path, src)]
  np.testing.assert_array_equal(*logits)
  if dtype == "float32":
    with torch.no_grad():
      np.testing.assert_array_equal(logits[0], hf_model(ids).logits.numpy())


def test_save_hf_from_model_and_overwrite(checkpoints, tmp_path):
  _, src = checkpoints["float32", False]
  config, model = load_hf(src)
  save_hf(model, None, str(tmp_path))
  assert_same_tensors(src, tmp_path)
  with pytest.raises(FileExistsError, match="already holds an HF checkpoint"):
    save_hf(model, None, str(tmp_path))
  save_hf(model, None, str(tmp_path), max_shard_size=SHARD, overwrite=True)
  assert os.path.exists(tmp_path / hf_weights.INDEX_FILE)
  assert not os.path.exists(tmp_path / hf_weights.SINGLE_FILE)   # stale file removed
  assert_same_tensors(src, tmp_path)
  # Cast on write: bf16 tensors equal torch's own f32 -> bf16 rounding.
  save_hf(model, None, str(tmp_path), dtype="bfloat16", overwrite=True)
  _, bf16_src = checkpoints["bfloat16", False]
  assert_same_tensors(bf16_src, tmp_path)
  assert json.load(open(tmp_path / "config.json"))["dtype"] == "bfloat16"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_orbax_roundtrip_is_bit_exact(checkpoints, tmp_path, dtype):
  _, src = checkpoints[dtype, True]
  config, params = load_hf_params(src, scratch_dir=str(tmp_path / "scratch"))
  assert isinstance(params["layers"]["q"], np.memmap)
  save_orbax(params, config, str(tmp_path / "ckpt"))
  config2, params2 = load_orbax(str(tmp_path / "ckpt"))
  assert config2 == config
  assert_same_params(params, params2)
  # Restoring to another dtype casts exactly like numpy does.
  other = "float32" if dtype == "bfloat16" else "bfloat16"
  config3, params3 = load_orbax(str(tmp_path / "ckpt"), dtype=other)
  assert config3.param_dtype == config3.dtype == other
  assert_same_params(jax.tree.map(lambda x: np.asarray(x).astype(other), params),
                     params3)
  with pytest.raises(FileExistsError, match="already exists"):
    save_orbax(params, config, str(tmp_path / "ckpt"))


def test_orbax_restore_sharded(checkpoints, tmp_path):
  _, src = checkpoints["float32", False]
  config, params = load_hf_params(src)
  save_orbax(params, config, str(tmp_path))
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("x",))

  def sharding(x):   # shard the first axis that splits evenly, else replicate
    dims = [i for i, n in enumerate(x.shape) if n % len(jax.devices()) == 0][:1]
    spec = [None] * x.ndim
    for i in dims:
      spec[i] = "x"
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))

  shardings = jax.tree.map(sharding, params)
  _, restored = load_orbax(str(tmp_path), shardings=shardings)
  for x, y, s in zip(jax.tree.leaves(params), jax.tree.leaves(restored), jax.tree.leaves(shardings)):
    assert isinstance(y, jax.Array) and y.sharding == s
    np.testing.assert_array_equal(np.asarray(y), x)


def run_cli(*args):
  env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "cwm_jax.convert", *args], env=env,
                        capture_output=True, text=True, timeout=120)


def test_cli_hf_to_orbax_to_hf_is_bit_exact(checkpoints, tmp_path):
  _, src = checkpoints["bfloat16", True]
  r = run_cli("hf-to-orbax", "--hf_dir", src, "--out", str(tmp_path / "orbax"),
              "--scratch_dir", str(tmp_path))
  assert r.returncode == 0, r.stderr
  assert "hf-to-orbax" in r.stdout and "params" in r.stdout and "bytes" in r.stdout
  r = run_cli("orbax-to-hf", "--orbax_dir", str(tmp_path / "orbax"), "--out",
              str(tmp_path / "hf"), "--max_shard_size", SHARD)
  assert r.returncode == 0, r.stderr
  assert "orbax-to-hf" in r.stdout
  assert_same_tensors(src, tmp_path / "hf")
  a, b = (json.load(open(os.path.join(d, "config.json"))) for d in (src, tmp_path / "hf"))
  for field in HF_FIELDS:
    assert a[field] == b[field], field
  # Bad paths: one error line, exit code 2, no traceback.
  for args in (("hf-to-orbax", "--hf_dir", str(tmp_path / "nope"), "--out", str(tmp_path / "x")),
               ("orbax-to-hf", "--orbax_dir", str(tmp_path / "nope"), "--out", str(tmp_path / "y"))):
    r = run_cli(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "nope" in r.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------- config.json handling

DROP = object()   # marks a key to leave out of config.json


def hf_dict(**kw):
  d = {**tiny_hf_config().to_dict(), **kw}
  return {k: v for k, v in d.items() if v is not DROP and (v is not None or k in kw)}


@pytest.mark.parametrize("kw", [
    dict(),
    dict(layer_types=DROP, num_hidden_layers=9),                    # HF's default rule
    dict(rope_parameters=DROP),                                     # HF's llama3 defaults
    dict(rope_parameters={"rope_type": "default"}),                 # theta defaults to 1e6
    dict(rope_parameters=DROP, rope_theta=2e4,
         rope_scaling={"type": "llama3", "factor": 2.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 2.0}),                   # legacy keys
    dict(num_key_value_heads=DROP, num_attention_heads=8),          # HF default 8
    dict(head_dim=DROP),                                            # 128, whatever D/N
    dict(sliding_window=100, num_attention_heads=8, num_key_value_heads=8),
])
def test_config_matches_transformers_reading(kw):
  d = hf_dict(**kw)
  hf = CwmConfig.from_dict(json.loads(json.dumps(d)))
  cfg = config_from_hf(d)
  assert (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
          cfg.mlp_dim, cfg.window, cfg.max_seq_len, cfg.rms_norm_eps) == (
      hf.vocab_size, hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads,
      hf.num_key_value_heads, hf.head_dim, hf.intermediate_size, hf.sliding_window,
      hf.max_position_embeddings, hf.rms_norm_eps)
  assert cfg.layer_types == tuple({"full_attention": "global", "sliding_attention": "local"}[t]
                                  for t in hf.layer_types)
  rope = {k: v for k, v in hf.rope_parameters.items() if k != "type"}
  assert cfg.rope_theta == rope["rope_theta"]
  if rope["rope_type"] == "llama3":
    s = cfg.rope_scaling
    assert (s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_positions) == (
        rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"],
        rope["original_max_position_embeddings"])
  else:
    assert cfg.rope_scaling is None
  # And back: transformers reads our dict to the same config.
  back = CwmConfig.from_dict(config_to_hf(cfg))
  for field in HF_FIELDS[:-4]:
    if field != "rope_parameters":
      assert getattr(back, field) == getattr(hf, field), field
  assert back.rope_parameters == rope


@pytest.mark.parametrize("kw,match", [
    (dict(model_type="llama"), "model_type is 'llama'"),
    (dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"]), "'qwen2'"),
    (dict(frobnicate=3, quantization_config={}), r"\['frobnicate', 'quantization_config'\]"),
    (dict(layer_types=["full_attention"] * 2), "layer_types has 2 entries"),
    (dict(layer_types=["full_attention", "chunked_attention", "sliding_attention"]),
     "chunked_attention"),
    (dict(rope_parameters={"rope_type": "yarn", "factor": 2.0}), "rope_type 'yarn'"),
    (dict(rope_parameters={"rope_type": "default", "factor": 2.0}), r"unknown default RoPE key"),
    (dict(rope_parameters=DROP, rope_theta=5e5), "legacy rope_theta"),
    (dict(num_attention_heads=6, hidden_size=36, num_key_value_heads=4), "not a multiple of"),
    (dict(hidden_size=30), "hidden_size=30 is not a multiple"),
    (dict(tie_word_embeddings=True), "tie_word_embeddings"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(dtype="float8_e4m3fn"), "float8_e4m3fn"),
    (dict(sliding_window=None), "sliding_window"),
])
def test_bad_config_is_rejected(kw, match):
  d = hf_dict(**kw)
  with pytest.raises(ValueError, match=match):
    config_from_hf(d)


def test_scan_settings_follow_layer_types():
  g, l = "full_attention", "sliding_attention"
  cwm = config_from_hf(hf_dict(num_hidden_layers=10, layer_types=DROP))
  assert (cwm.scan_layers, cwm.scan_period) == (True, 4)
  odd = config_from_hf(hf_dict(num_hidden_layers=5, layer_types=[g, l, l, g, l]))
  assert not odd.scan_layers
  alt = config_from_hf(hf_dict(num_hidden_layers=6, layer_types=[g, l] * 3))
  assert (alt.scan_layers, alt.scan_period) == (True, 2)
  assert not config_from_hf(hf_dict(), scan_layers=False).scan_layers


# ---------------------------------------------------------------- bad checkpoints

@pytest.fixture
def f32_copy(checkpoints, tmp_path):
  _, src = checkpoints["float32", False]
  dst = tmp_path / "ckpt"
  shutil.copytree(src, dst)
  return dst


def rewrite(path, edit):
  file = str(path / hf_weights.SINGLE_FILE)
  with safe_open(file, framework="numpy") as f:
    tensors = {k: f.get_tensor(k) for k in f.keys()}
  edit(tensors)
  save_file(tensors, file, metadata={"format": "pt"})


def test_missing_tensor(f32_copy):
  rewrite(f32_copy, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(ValueError, match=r"missing tensor\(s\) model.layers.1.mlp.up_proj.weight"):
    load_hf(str(f32_copy))


def test_wrong_shape_tensor(f32_copy):
  def edit(t):
    t["model.layers.2.self_attn.k_proj.weight"] = np.zeros((12, 32), np.float32)
  rewrite(f32_copy, edit)
  with pytest.raises(ValueError, match=r"model.layers.2.self_attn.k_proj.weight in .*"
                                       r"model.safetensors has shape \(12, 32\), expected \(24, 32\)"):
    load_hf(str(f32_copy))


def test_unexpected_tensor(f32_copy):
  def edit(t):
    t["model.layers.0.self_attn.q_proj.bias"] = np.zeros((48,), np.float32)
  rewrite(f32_copy, edit)
  with pytest.raises(ValueError, match="unexpected tensor model.layers.0.self_attn.q_proj.bias"):
    load_hf(str(f32_copy))


def test_truncated_safetensors(f32_copy):
  file = f32_copy / hf_weights.SINGLE_FILE
  data = file.read_bytes()
  file.write_bytes(data[:len(data) - 100])
  with pytest.raises(ValueError, match=r"model.safetensors: cannot read .* truncated or corrupt"):
    load_hf(str(f32_copy))


def test_index_naming_missing_shard(checkpoints, tmp_path):
  _, src = checkpoints["float32", True]
  shutil.copytree(src, tmp_path / "ckpt")
  shard = sorted(n for n in os.listdir(src) if n.startswith("model-0"))[1]
  os.remove(tmp_path / "ckpt" / shard)
  with pytest.raises(FileNotFoundError, match=shard):
    load_hf(str(tmp_path / "ckpt"))


def test_missing_paths(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_hf(str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError, match="config.json is missing"):
    load_hf(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps(hf_dict()))
  with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
    load_hf(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_orbax(str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError, match="model_config.json is missing"):
    load_orbax(str(tmp_path))


def test_model_type_error_from_directory(f32_copy):
  d = json.load(open(f32_copy / "config.json"))
  d["model_type"] = "llama"
  (f32_copy / "config.json").write_text(json.dumps(d))
  with pytest.raises(ValueError, match="model_type is 'llama'.*expected|reads only model_type 'cwm'"):
    load_hf(str(f32_copy))


def test_corrupt_orbax_checkpoint(checkpoints, tmp_path):
  _, src = checkpoints["float32", False]
  config, params = load_hf_params(src)
  save_orbax(params, config, str(tmp_path))
  os.remove(tmp_path / "params" / "_METADATA")
  with pytest.raises(ValueError, match="orbax checkpoint .*params"):
    load_orbax(str(tmp_path))
  shutil.rmtree(tmp_path / "params")
  with pytest.raises(FileNotFoundError, match="params' is missing"):
    load_orbax(str(tmp_path))


def test_raw_bf16_reader_matches_safetensors(checkpoints):
  _, src = checkpoints["bfloat16", False]
  file = os.path.join(src, hf_weights.SINGLE_FILE)
  with safe_open(file, framework="numpy") as f:
    for name in f.keys():
      raw = hf_weights._raw_tensor(file, name)
      assert raw.dtype == ml_dtypes.bfloat16
      assert raw.tobytes() == f.get_tensor(name).tobytes()
