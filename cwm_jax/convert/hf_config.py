"""HF `config.json` (transformers' `CwmConfig`) <-> `ModelConfig`.

Reading follows what `transformers.CwmConfig` does with the same file, so a
converted checkpoint computes what HF computes:

- A missing key takes CwmConfig's default (`head_dim` 128, `sliding_window`
  8192, llama3 RoPE with factor 16, ...); a missing `layer_types` takes HF's
  rule: layer i is "full_attention" iff i % 4 == 0, else "sliding_attention".
- RoPE comes from `rope_parameters` (transformers >= 5) or the legacy pair
  `rope_theta` + `rope_scaling`; `rope_type` (or legacy `type`) must be
  "default" or "llama3". CwmConfig silently replaces a lone legacy
  `rope_theta` (no `rope_scaling`, no `rope_parameters`) with its llama3
  defaults at theta 1e6; we refuse that case instead of guessing.
- Keys this model cannot honour (tied embeddings, biases, another activation,
  per-layer RoPE) are errors, as is any key outside `_HF_FIELDS` and the
  allow-list of HF bookkeeping keys `HF_BOOKKEEPING_KEYS`, which are ignored
  for the model but can be carried through a conversion (`bookkeeping`).

Execution switches (scan, remat, attention backend) are not in config.json:
`scan_settings` picks them from `layer_types` and callers may override them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from cwm_jax.model.config import DTYPES, GLOBAL, LOCAL, ModelConfig, RopeScaling

HF_MODEL_TYPE = "cwm"
HF_ARCHITECTURE = "CwmForCausalLM"
HF_LAYER_TYPES = {"full_attention": GLOBAL, "sliding_attention": LOCAL}
_OUR_LAYER_TYPES = {v: k for k, v in HF_LAYER_TYPES.items()}

# CwmConfig's defaults for the keys that shape the model (transformers 5.x).
_HF_DEFAULTS = {
    "vocab_size": 128256, "hidden_size": 6144, "intermediate_size": 21504,
    "num_hidden_layers": 64, "num_attention_heads": 48, "num_key_value_heads": 8,
    "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 131072,
    "initializer_range": 0.02, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    "mlp_bias": False, "attention_bias": False, "sliding_window": 8192,
}
_HF_DEFAULT_THETA = 1_000_000.0
_HF_DEFAULT_ROPE = {"rope_type": "llama3", "rope_theta": _HF_DEFAULT_THETA,
                    "factor": 16.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192}
_HF_LAYER_PATTERN = 4

# Keys read by `config_from_hf` (everything else must be bookkeeping).
_HF_FIELDS = frozenset(_HF_DEFAULTS) | {
    "model_type", "layer_types", "rope_parameters", "rope_theta", "rope_scaling",
    "dtype", "torch_dtype", "attention_dropout", "pretraining_tp", "architectures"}

# HF bookkeeping that does not change the forward pass: ignored when reading,
# carried through conversions so a round trip keeps token ids and the like.
HF_BOOKKEEPING_KEYS = frozenset({
    "transformers_version", "_name_or_path", "bos_token_id", "eos_token_id",
    "pad_token_id", "sep_token_id", "decoder_start_token_id", "use_cache",
    "output_attentions", "output_hidden_states", "return_dict", "torchscript",
    "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder",
    "add_cross_attention", "tie_encoder_decoder", "id2label", "label2id",
    "problem_type", "finetuning_task", "tokenizer_class", "prefix",
    "task_specific_params", "pruned_heads", "use_bfloat16", "tf_legacy_loss",
    # Generation defaults that old config.json files carry.
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams",
    "num_beam_groups", "num_return_sequences", "temperature", "top_k", "top_p",
    "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "diversity_penalty",
    "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "output_scores", "return_dict_in_generate",
})

_ROPE_KEYS = {
    "default": {"rope_type", "type", "rope_theta"},
    "llama3": {"rope_type", "type", "rope_theta", "factor", "low_freq_factor",
               "high_freq_factor", "original_max_position_embeddings"},
}


def _err(msg: str) -> ValueError:
  return ValueError(f"HF config.json: {msg}")


def _positive_int(d: dict, key: str) -> int:
  value = d[key]
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise _err(f"{key}={value!r}: expected a positive integer.")
  return value


def _check_model_type(d: dict) -> None:
  model_type = d.get("model_type")
  archs = d.get("architectures") or []
  if model_type is None and HF_ARCHITECTURE not in archs:
    raise _err(f"no model_type (architectures={archs!r}); expected model_type "
               f"{HF_MODEL_TYPE!r} / architectures [{HF_ARCHITECTURE!r}].")
  if model_type is not None and model_type != HF_MODEL_TYPE:
    raise _err(f"model_type is {model_type!r} (architectures={archs!r}); this converter "
               f"reads only model_type {HF_MODEL_TYPE!r} ({HF_ARCHITECTURE}).")
  others = [a for a in archs if a != HF_ARCHITECTURE]
  if others:
    raise _err(f"architectures {others!r} are not supported; expected [{HF_ARCHITECTURE!r}].")


def _rope_from_hf(d: dict) -> tuple[float, Optional[RopeScaling]]:
  params, legacy = d.get("rope_parameters"), d.get("rope_scaling")
  top_theta = d.get("rope_theta")
  if params is not None and legacy is not None:
    raise _err("both rope_parameters and legacy rope_scaling are set; keep one.")
  if params is None and legacy is None:
    if top_theta is not None:
      raise _err(
          f"legacy rope_theta={top_theta!r} without rope_scaling or rope_parameters: "
          "transformers' CwmConfig ignores it and uses llama3 scaling at theta 1e6. Write "
          "rope_parameters explicitly (e.g. {\"rope_type\": \"default\", \"rope_theta\": ...}).")
    params = dict(_HF_DEFAULT_ROPE)
  rope = params if params is not None else legacy
  if not isinstance(rope, dict):
    raise _err(f"rope_parameters/rope_scaling={rope!r}: expected a JSON object.")
  rope = dict(rope)
  if any(isinstance(v, dict) for v in rope.values()):
    raise _err(f"per-layer-type rope_parameters {sorted(rope)} are not supported; CWM uses one RoPE.")
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in _ROPE_KEYS:
    raise _err(f"rope_type {rope_type!r} is not supported; expected one of {sorted(_ROPE_KEYS)}.")
  unknown = sorted(set(rope) - _ROPE_KEYS[rope_type])
  if unknown:
    raise _err(f"unknown {rope_type} RoPE key(s) {unknown}; expected a subset of "
               f"{sorted(_ROPE_KEYS[rope_type])}.")
  theta = rope.get("rope_theta", top_theta if top_theta is not None else _HF_DEFAULT_THETA)
  if not isinstance(theta, (int, float)) or theta <= 0:
    raise _err(f"rope_theta={theta!r}: expected a positive number.")
  if rope_type == "default":
    return float(theta), None
  missing = sorted({"factor", "low_freq_factor", "high_freq_factor"} - set(rope))
  if missing:
    raise _err(f"llama3 RoPE scaling lacks {missing}.")
  original = rope.get("original_max_position_embeddings", d["max_position_embeddings"])
  try:
    scaling = RopeScaling(factor=float(rope["factor"]),
                          low_freq_factor=float(rope["low_freq_factor"]),
                          high_freq_factor=float(rope["high_freq_factor"]),
                          original_max_positions=int(original))
  except (TypeError, ValueError) as e:
    raise _err(f"llama3 RoPE parameters {rope!r} are malformed ({e}).") from None
  return float(theta), scaling


def _layer_types_from_hf(d: dict, n_layers: int) -> tuple[str, ...]:
  hf_types = d.get("layer_types")
  if hf_types is None:
    return tuple(GLOBAL if i % _HF_LAYER_PATTERN == 0 else LOCAL for i in range(n_layers))
  if not isinstance(hf_types, (list, tuple)) or len(hf_types) != n_layers:
    raise _err(f"layer_types has {len(hf_types) if isinstance(hf_types, (list, tuple)) else hf_types!r}"
               f" entries; expected one per layer (num_hidden_layers={n_layers}).")
  bad = sorted({t for t in hf_types if t not in HF_LAYER_TYPES}, key=str)
  if bad:
    raise _err(f"layer_types entries {bad} are not supported; expected {sorted(HF_LAYER_TYPES)}.")
  return tuple(HF_LAYER_TYPES[t] for t in hf_types)


def _dtype_from_hf(d: dict) -> Optional[str]:
  value = d.get("dtype", d.get("torch_dtype"))
  if value is None or value == "auto":
    return None
  value = str(value).removeprefix("torch.")
  if value not in DTYPES:
    raise _err(f"dtype {value!r} is not supported; expected one of {DTYPES}.")
  return value


def scan_settings(layer_types: tuple[str, ...]) -> dict:
  """Scan switches that work for `layer_types`.

  Scan over groups of 4 (CWM's 1 global + 3 local) when the list repeats with
  period 4 over at least two whole groups (a ragged tail runs unscanned);
  otherwise over the smallest period that repeats at least twice; otherwise
  (non-periodic lists, or too few layers to gain anything) no scan.
  """
  n = len(layer_types)

  def repeats(p):
    return n // p >= 2 and all(layer_types[i] == layer_types[i % p]
                               for i in range((n // p) * p))

  for p in (_HF_LAYER_PATTERN, *range(1, n // 2 + 1)):
    if repeats(p):
      return {"scan_layers": True, "scan_period": p}
  return {"scan_layers": False, "scan_period": _HF_LAYER_PATTERN}


def config_from_hf(hf: dict, **overrides: Any) -> ModelConfig:
  """A `ModelConfig` for an HF CWM config.json dict.

  `overrides` set ModelConfig fields that config.json does not hold
  (`attention_impl`, `scan_layers`, `remat`, `dtype`, ...) or replace derived ones.
  """
  if not isinstance(hf, dict):
    raise _err(f"expected a JSON object, got {type(hf).__name__}.")
  bad = sorted(set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)})
  if bad:
    raise TypeError(f"config_from_hf: unknown ModelConfig override(s) {bad}.")
  _check_model_type(hf)
  unknown = sorted(set(hf) - _HF_FIELDS - HF_BOOKKEEPING_KEYS)
  if unknown:
    raise _err(f"unknown key(s) {unknown}: not CWM model fields nor known HF bookkeeping; "
               "refusing to guess what they change.")
  d = {**_HF_DEFAULTS, **{k: v for k, v in hf.items() if k in _HF_FIELDS}}
  for key in ("tie_word_embeddings", "mlp_bias", "attention_bias"):
    if d[key]:
      raise _err(f"{key}={d[key]!r}: CWM has untied embeddings and no biases; expected false.")
  if d["hidden_act"] != "silu":
    raise _err(f"hidden_act={d['hidden_act']!r}: CWM's MLP is SwiGLU; expected 'silu'.")

  n_layers = _positive_int(d, "num_hidden_layers")
  n_heads = _positive_int(d, "num_attention_heads")
  hidden = _positive_int(d, "hidden_size")
  if d["num_key_value_heads"] is None:
    d["num_key_value_heads"] = n_heads
  if d["head_dim"] is None:
    d["head_dim"] = hidden // n_heads
  n_kv = _positive_int(d, "num_key_value_heads")
  if hidden % n_heads:
    raise _err(f"hidden_size={hidden} is not a multiple of num_attention_heads={n_heads} "
               "(transformers' CwmConfig rejects this).")
  if n_heads % n_kv:
    raise _err(f"num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv}.")
  if d["sliding_window"] is None:
    raise _err("sliding_window is null; CWM's local layers need a positive window.")
  for key in ("vocab_size", "intermediate_size", "head_dim", "sliding_window",
              "max_position_embeddings"):
    _positive_int(d, key)
  eps = d["rms_norm_eps"]
  if not isinstance(eps, (int, float)) or eps <= 0:
    raise _err(f"rms_norm_eps={eps!r}: expected a positive number.")

  rope_theta, rope_scaling = _rope_from_hf(d)
  layer_types = _layer_types_from_hf(d, n_layers)
  dtype = _dtype_from_hf(d) or "float32"
  fields = dict(
      vocab_size=d["vocab_size"], d_model=hidden, n_layers=n_layers, n_heads=n_heads,
      n_kv_heads=n_kv, head_dim=d["head_dim"], mlp_dim=d["intermediate_size"],
      layer_types=layer_types, window=d["sliding_window"], rope_theta=rope_theta,
      rope_scaling=rope_scaling, rms_norm_eps=float(eps),
      max_seq_len=d["max_position_embeddings"], init_std=float(d["initializer_range"]),
      param_dtype=dtype, dtype=dtype, **scan_settings(layer_types))
  fields.update(overrides)
  try:
    return ModelConfig(**fields)
  except ValueError as e:
    with_overrides = f" (with overrides {overrides})" if overrides else ""
    raise _err(f"does not describe a valid model{with_overrides}: {e}") from None


def checkpoint_dtype(hf: dict) -> Optional[str]:
  """The dtype config.json declares (`dtype` or legacy `torch_dtype`), if any."""
  return _dtype_from_hf(hf)


def bookkeeping(hf: dict) -> dict:
  """The HF bookkeeping entries of a config.json, to carry through a conversion."""
  return {k: v for k, v in hf.items() if k in HF_BOOKKEEPING_KEYS}


def config_to_hf(cfg: ModelConfig, extra: Optional[dict] = None) -> dict:
  """A config.json dict that `transformers.CwmConfig` loads back to this model.

  `extra` holds bookkeeping keys (token ids, ...) to write along; other keys in
  it are an error. Execution switches (scan, remat, attention) are not written.
  """
  if cfg.d_model % cfg.n_heads:
    raise ValueError(f"ModelConfig d_model={cfg.d_model} is not a multiple of n_heads="
                     f"{cfg.n_heads}; transformers' CwmConfig cannot represent it.")
  extra = dict(extra or {})
  bad = sorted(set(extra) - HF_BOOKKEEPING_KEYS)
  if bad:
    raise ValueError(f"config_to_hf: extra key(s) {bad} are not HF bookkeeping keys.")
  if cfg.rope_scaling is None:
    rope = {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}
  else:
    s = cfg.rope_scaling
    rope = {"rope_type": "llama3", "rope_theta": float(cfg.rope_theta),
            "factor": float(s.factor), "low_freq_factor": float(s.low_freq_factor),
            "high_freq_factor": float(s.high_freq_factor),
            "original_max_position_embeddings": int(s.original_max_positions)}
  out = {
      "architectures": [HF_ARCHITECTURE],
      "model_type": HF_MODEL_TYPE,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.d_model,
      "intermediate_size": cfg.mlp_dim,
      "num_hidden_layers": cfg.n_layers,
      "num_attention_heads": cfg.n_heads,
      "num_key_value_heads": cfg.n_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": cfg.max_seq_len,
      "initializer_range": cfg.init_std,
      "rms_norm_eps": cfg.rms_norm_eps,
      "tie_word_embeddings": False,
      "mlp_bias": False,
      "attention_dropout": 0.0,
      "rope_parameters": rope,
      "sliding_window": cfg.window,
      "layer_types": [_OUR_LAYER_TYPES[t] for t in cfg.layer_types],
      "dtype": cfg.param_dtype,
  }
  return {**out, **extra}


def shape_summary(cfg: ModelConfig) -> str:
  """One-line shape summary used in messages."""
  return (f"L={cfg.n_layers} D={cfg.d_model} N={cfg.n_heads} K={cfg.n_kv_heads} "
          f"H={cfg.head_dim} F={cfg.mlp_dim} V={cfg.vocab_size}")

