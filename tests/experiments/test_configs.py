"""Every stage config and variant parses into a valid `ExperimentConfig` and documents its launch."""

import importlib
import shutil

import pytest

from cwm_jax.train.config import experiment_config
from experiments.configs import common

STAGES = ("pretrain", "midtrain", "sft")
FILES = ("code.jsonl", "code_heldout.jsonl", "traces.jsonl", "traces_heldout.jsonl",
         "chat.jsonl", "chat_heldout.jsonl")
SHARDS = ("code", "code_heldout", "text", "traces", "traces_heldout", "trajectories", "sft",
          "sft_trajectories", "sft_heldout")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  from cwm_jax.tokenizer.toy import build_toy_sentencepiece
  d = tmp_path_factory.mktemp("data")
  shutil.copy(build_toy_sentencepiece(str(d / "toy")), d / "tokenizer.model")
  for name in FILES:
    (d / name).write_text("")
  for name in SHARDS:
    (d / name).mkdir()
    (d / name / "shard-00000.array_record").write_bytes(b"")
  return d


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("variant", common.VARIANTS)
def test_config_validates(stage, variant, data_dir, tmp_path):
  module = importlib.import_module(f"experiments.configs.{stage}")
  config = module.get_config(f"{variant},data_dir={data_dir}")
  if config.init_optimizer_state or stage != "pretrain":
    config.init_from = str(tmp_path)  # midtrain/sft start from an earlier stage
  cfg = experiment_config(config)
  assert cfg.stage == stage and cfg.name == f"{stage}_{variant}"
  assert cfg.data.seq_len <= cfg.model.max_seq_len
  assert cfg.data.tokenizer_path == f"{data_dir}/tokenizer.model"
  if stage == "midtrain":
    assert cfg.model.rope_scaling is not None and cfg.init_optimizer_state
    pretrain = experiment_config(importlib.import_module("experiments.configs.pretrain").get_config(
        f"{variant},data_dir={data_dir}"))
    assert cfg.data.seq_len > pretrain.data.seq_len
    assert cfg.identity()["model"] == pretrain.identity()["model"]  # same weights
    assert cfg.optimizer == pretrain.optimizer  # one schedule spans both stages
  if variant == "cwm_32b":
    assert cfg.model.n_layers == 64 and cfg.model.d_model == 6144


@pytest.mark.parametrize("stage", STAGES + ("rl",))
def test_docstring_shows_launch_command(stage):
  module = importlib.import_module(f"experiments.configs.{stage}")
  assert f"python -m experiments.main --config=experiments/configs/{stage}.py:tiny" in module.__doc__


@pytest.mark.parametrize("arg, message", [("huge", "config variant 'huge'"),
                                          ("tiny,foo=1", "config argument 'foo=1'")])
def test_bad_config_argument(arg, message):
  with pytest.raises(ValueError, match=message):
    common.parse_arg(arg)


@pytest.mark.parametrize("variant", common.VARIANTS)
def test_rl_config_validates(variant, data_dir, tmp_path):
  from experiments.configs import rl
  (data_dir / "rl").mkdir(exist_ok=True)
  for name in ("code.jsonl", "math.jsonl"):
    (data_dir / "rl" / name).write_text("")
  config = rl.get_config(f"{variant},data_dir={data_dir}")
  if variant != "tiny":
    config.init_from = str(tmp_path)  # an SFT checkpoint
  cfg = experiment_config(config)
  assert cfg.stage == "rl" and cfg.train.objective == "grpo" and cfg.data.producer == "rollouts"
  assert cfg.rl.clip_low == 0.2 and cfg.rl.clip_high == 0.25 and cfg.rl.normaliser == "constant"
  if variant == "tiny":
    assert [e.kind for e in cfg.rl.envs] == ["toy_copy", "toy_chain"]
    assert cfg.data.tokenizer_path == "" and cfg.rl.mode == "sync"
  else:
    assert cfg.train.loss_normaliser == 131072.0 and cfg.rl.mode == "async"
    assert (cfg.rl.solve_rate_lo, cfg.rl.solve_rate_hi) == (0.1, 0.7)
    assert cfg.data.tokenizer_path == f"{data_dir}/tokenizer.model"
    assert {e.kind for e in cfg.rl.envs} == {"code", "math"}
