"""Shared pieces of the stage configs: argument parsing, sizes per variant, defaults.

A config argument is `variant[,key=value...]`, e.g. `tiny`, `tiny,data_dir=/tmp/d`,
`cwm_8b,data_dir=/data/cwm`. Variants:

  tiny     CPU, minutes: the `tiny` model widened a little, the toy corpus made by
           `python -m data_pipelines.toy_corpus --out=DATA_DIR` (the quickstart does it).
  cwm_1b   one GPU / small slice: Llama-3.2-1B shape, CWM tokenizer.
  cwm_8b   the paper's ablation scale.
  cwm_32b  the released model's shape.

Large-variant data is expected under DATA_DIR as ArrayRecord/JSONL shards written
by the data_pipelines jobs (paths listed in each stage config) and the CWM
tokenizer file at DATA_DIR/tokenizer.model. Batch sizes, learning rates and step
counts of the large variants are this project's choices at the paper's token
budgets' proportions (TRAINING.md: the paper does not publish them).
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("tiny", "cwm_1b", "cwm_8b", "cwm_32b")
DEFAULT_DATA_DIR = {"tiny": "/tmp/cwm_quickstart/data"}
ALLOWED_KEYS = ("data_dir",)

# The tiny quickstart model (~1.9M params): the `tiny` preset with the toy
# tokenizer's vocab, 8 layers in CWM's 3:1 local/global pattern. Copying a source
# line from the context into a frame needs a global layer *after* a local one
# (layer 4), which 4 layers (global, local, local, local) lack; on CPU the extra
# layers cost little next to the fixed per-step work at this width.
# The layers run unscanned (`scan_layers`, an execution field: the parameters stay
# stacked [L, ...], checkpoints are unchanged). Scanning serves compile time and
# memory at depth; on CPU at 8 layers it compiles no faster (~6 s per train step
# either way) and its stacked residuals and dynamic-slice/update copies cost
# ~10% of the train step (midtrain 2 x 1,024: 233-260 vs 214-223 ms per step;
# pretrain 16 x 256: 467 vs 410 ms; profile in benchmarks/RESULTS.md, issue 13).
TINY_MODEL = dict(preset="tiny", vocab_size=2048, d_model=128, n_layers=8, n_heads=4,
                  n_kv_heads=2, head_dim=32, mlp_dim=384, window=128, attention_chunk=128,
                  scan_layers=False)

# One learning-rate schedule spans pretraining and midtraining (the paper
# continues the run): both stages use total = pretrain + midtrain steps.
STEPS = {
    "tiny": {"pretrain": 100, "midtrain": 1000, "sft": 100, "rl": 500},
    "cwm_1b": {"pretrain": 40_000, "midtrain": 20_000, "sft": 4_000, "rl": 2_000},
    "cwm_8b": {"pretrain": 1_430_000, "midtrain": 240_000, "sft": 12_000, "rl": 4_000},
    "cwm_32b": {"pretrain": 1_900_000, "midtrain": 300_000, "sft": 24_000, "rl": 8_000},
}
WARMUP = {"tiny": 30, "cwm_1b": 2000, "cwm_8b": 2000, "cwm_32b": 2000}
PEAK_LR = {"tiny": 3e-3, "cwm_1b": 3e-4, "cwm_8b": 3e-4, "cwm_32b": 1.5e-4}


def parse_arg(arg: str | None) -> tuple[str, dict]:
  """'variant,key=value,...' -> (variant, {key: value}) with clear errors."""
  parts = [p for p in (arg or "tiny").split(",") if p]
  variant, options = parts[0], {}
  if variant not in VARIANTS:
    raise ValueError(f"config variant {variant!r}: expected one of {VARIANTS}.")
  for part in parts[1:]:
    key, sep, value = part.partition("=")
    if not sep or key not in ALLOWED_KEYS:
      raise ValueError(f"config argument {part!r}: expected key=value with key in {ALLOWED_KEYS}.")
    options[key] = value
  options.setdefault("data_dir", DEFAULT_DATA_DIR.get(variant, "/data/cwm"))
  return variant, options


def model_config(variant: str, **overrides) -> ml_collections.ConfigDict:
  """Every ModelConfig field of the variant's model, so `--config.model.X=...` can
  override any of them. `layer_types` None means CWM's 3:1 pattern for n_layers."""
  from cwm_jax.model.config import get_preset  # pylint: disable=import-outside-toplevel
  changes = dict(TINY_MODEL) if variant == "tiny" else {"preset": variant, "remat": "dots"}
  changes.update(overrides)
  preset = changes.pop("preset")
  rope = changes.pop("rope_scaling", None)
  fields = get_preset(preset, **changes).to_dict()
  fields.update(preset=preset, layer_types=None, rope_scaling=rope)
  return ml_collections.ConfigDict(fields)


# Llama-3 RoPE scaling as released (factor 16 over the 8k pretraining context),
# switched on from midtraining; `tiny` pretrains at 256 tokens and midtrains at 4x.
ROPE = dict(factor=16.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_positions=8192)


def long_context_model(variant: str) -> ml_collections.ConfigDict:
  """The model of the midtraining and SFT stages: same weights, RoPE scaling on."""
  if variant == "tiny":
    return model_config(variant, max_seq_len=4096,
                        rope_scaling=dict(ROPE, factor=4.0, original_max_positions=256))
  # 131k tokens split over the context axis: zig-zag shards balance the causal work.
  return model_config(variant, max_seq_len=131072, rope_scaling=ROPE,
                      context_load_balance="zigzag")


def source(name: str, paths, kind: str, weight: float = 1.0) -> dict:
  return {"name": name, "paths": [paths] if isinstance(paths, str) else list(paths),
          "kind": kind, "weight": weight}


def optimizer_config(variant: str, stage: str) -> ml_collections.ConfigDict:
  steps = STEPS[variant]
  if stage == "rl":  # a constant rate after a short warmup, no weight decay for the toy model
    tiny = variant == "tiny"
    return ml_collections.ConfigDict(dict(
        learning_rate=1e-3 if tiny else 1e-6, schedule="constant", warmup_steps=10 if tiny else 50,
        total_steps=steps["rl"], end_lr_fraction=1.0, b1=0.9, b2=0.95, eps=1e-8,
        weight_decay=0.0 if tiny else 0.1, clip_norm=1.0))
  if stage == "sft":
    return ml_collections.ConfigDict(dict(
        learning_rate=PEAK_LR[variant] / 3, schedule="cosine", warmup_steps=WARMUP[variant] // 2,
        total_steps=steps["sft"], end_lr_fraction=0.1, weight_decay=0.1, clip_norm=1.0))
  return ml_collections.ConfigDict(dict(
      learning_rate=PEAK_LR[variant], schedule="cosine", warmup_steps=WARMUP[variant],
      total_steps=steps["pretrain"] + steps["midtrain"], end_lr_fraction=0.1,
      b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0))


def train_config(variant: str, stage: str, **overrides) -> ml_collections.ConfigDict:
  tiny = variant == "tiny"
  base = dict(steps=STEPS[variant][stage], accum_steps=1, z_loss=0.0 if tiny else 1e-4,
              loss_chunk=1024, log_every=10 if tiny else 50, eval_every=100 if tiny else 2000,
              eval_batches=4 if tiny else 20, checkpoint_every=100 if tiny else 1000,
              keep_last=3, keep_every=None if tiny else 10_000, async_checkpoint=True,
              nan_policy="skip", max_nonfinite_steps=10, profile_start=-1, profile_steps=5)
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def mesh_config(variant: str, context: int = 1) -> ml_collections.ConfigDict:
  if variant == "tiny":
    return ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, context=1))
  tensor = 8 if variant == "cwm_32b" else 1
  return ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=tensor, context=context))


def experiment(stage: str, variant: str, model, data, **top) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = f"{stage}_{variant}"
  config.stage = stage
  config.seed = 0
  config.model = model
  config.optimizer = optimizer_config(variant, stage)
  config.data = ml_collections.ConfigDict(data)
  config.train = train_config(variant, stage)
  config.mesh = mesh_config(variant, top.pop("context", 1))
  config.init_from = top.pop("init_from", "")
  config.init_optimizer_state = top.pop("init_optimizer_state", False)
  if top:
    raise ValueError(f"experiment(): unknown keys {sorted(top)}")
  return config
