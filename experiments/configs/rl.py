"""RL: CWM's asynchronous GRPO variant on verifiable environments (TRAINING.md, RL.md).

    python -m experiments.main --config=experiments/configs/rl.py:tiny --workdir=/tmp/rl
    python -m experiments.main --config=experiments/configs/rl.py:tiny --workdir=/tmp/rl_async \\
        --config.rl.mode=async --config.rl.engine_devices=1
    python -m experiments.main --config=experiments/configs/rl.py:cwm_8b,data_dir=/data/cwm \\
        --workdir=/ckpt/cwm_8b/rl --config.init_from=/ckpt/cwm_8b/sft
    python -m experiments.plot /tmp/rl --metric='reward_mean,reward_mean/*' --out=/tmp/rl/reward.png

`tiny` trains a small model from scratch on two token-level toy environments
(`cwm_jax/rl/envs/toy.py`): toy_copy (answer the digit after the one shown, one
turn) and toy_chain (two turns; the second digit arrives as an environment
observation, which is not trained on). It needs no tokenizer and no downloads and
shows the reward rising in about ten minutes on 2 CPU cores; on a 2-device CPU host
its learner splits the batch over both devices.

The large variants start from an SFT checkpoint (`config.init_from`) with the real
CWM tokenizer at DATA_DIR/tokenizer.model and train on competitive programming and
math task files (DATA_DIR/rl/code.jsonl, math.jsonl; formats in
`cwm_jax/rl/envs/tasks.py`) with CWM's settings: G = 8, asymmetric clipping
0.2 / 0.25, the constant normaliser N = 131,072, staleness 100, the gibberish
filter, solve-rate filtering in [0.1, 0.7], asynchronous with the engine on a
quarter of the devices. Batch sizes and learning rates are this project's choices.
"""

import dataclasses

import ml_collections

from experiments.configs import common

TINY_MODEL = dict(preset="tiny", vocab_size=32, d_model=64, n_layers=4, n_heads=4,
                  n_kv_heads=2, head_dim=16, mlp_dim=128, window=16, max_seq_len=64,
                  attention_chunk=32)


def rl_section(**overrides) -> ml_collections.ConfigDict:
  """Every RLConfig field (so `--config.rl.X=...` can override any of them)."""
  from cwm_jax.rl.config import RLConfig  # pylint: disable=import-outside-toplevel
  fields = {f.name: f.default for f in dataclasses.fields(RLConfig) if f.name != "envs"}
  return ml_collections.ConfigDict(dict(fields, **overrides))


def _env(name, kind, weight=1.0, **fields):
  return dict(dict(name=name, kind=kind, weight=weight, tasks="", turns=2, shift=0,
                   max_attempts=1), **fields)


def get_config(arg=None):
  variant, opt = common.parse_arg(arg)
  d = opt["data_dir"]
  tiny = variant == "tiny"
  if tiny:
    model = common.model_config("tiny", **{k: v for k, v in TINY_MODEL.items() if k != "preset"})
    data = dict(tokenizer_path="", seq_len=32, batch_size=16, sources=[], producer="rollouts")
    # One rule for both (the answer to digit d is d + 1): their prompts look alike.
    rl = dict(envs=[_env("copy", "toy_copy", shift=1),
                    _env("chain", "toy_chain", turns=2, shift=1)],
              group_size=8, groups_per_step=8, temperature=1.0, max_turn_tokens=1,
              engine_slots=64, env_workers=2, env_timeout_s=30.0)
  else:
    model = common.long_context_model(variant)
    data = dict(tokenizer_path=f"{d}/tokenizer.model", seq_len=65536,
                batch_size={"cwm_1b": 16, "cwm_8b": 32, "cwm_32b": 64}[variant], sources=[],
                producer="rollouts")
    rl = dict(envs=[_env("code", "code", 1.0, tasks=f"{d}/rl/code.jsonl", max_attempts=1),
                    _env("math", "math", 1.0, tasks=f"{d}/rl/math.jsonl")],
              group_size=8, groups_per_step={"cwm_1b": 16, "cwm_8b": 32, "cwm_32b": 64}[variant],
              temperature=1.0, max_turn_tokens=32768, engine_slots=64, env_workers=32,
              solve_rate_lo=0.1, solve_rate_hi=0.7, mode="async", engine_devices=-1, max_lag=4,
              sample_every=50)
  config = common.experiment("rl", variant, model, data)
  config.name = f"rl_{variant}"
  config.rl = rl_section(**rl)
  config.train = common.train_config(
      variant, "rl", z_loss=0.0, loss_chunk=1024,
      # CWM divides by N = 131,072; `tiny`'s batches hold ~500 tokens, so N = 512.
      loss_normaliser=512.0 if tiny else 131072.0, log_every=5 if tiny else 10, eval_every=0,
      checkpoint_every=50 if tiny else 100, objective="grpo")
  return config
