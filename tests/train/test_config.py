"""`experiment_config`: ConfigDicts validated into frozen dataclasses, with errors naming the key."""

import json

import ml_collections
import pytest

from cwm_jax.model.config import get_preset
from cwm_jax.train.config import ConfigError, ExperimentConfig, experiment_config


@pytest.fixture()
def data_dir(tmp_path):
  from cwm_jax.tokenizer.toy import build_toy_sentencepiece
  tok = build_toy_sentencepiece(str(tmp_path / "tok"))
  (tmp_path / "code.jsonl").write_text(json.dumps({"text": "def f():\n    return 1\n"}) + "\n")
  return tmp_path, tok


def base(data_dir) -> ml_collections.ConfigDict:
  tmp, tok = data_dir
  return ml_collections.ConfigDict({
      "name": "t", "stage": "pretrain", "seed": 1,
      "model": {"preset": "tiny", "n_layers": 2},
      "optimizer": {"learning_rate": 1e-3, "warmup_steps": 2, "total_steps": 10},
      "data": {"tokenizer_path": tok, "seq_len": 32, "batch_size": 2,
               "sources": [{"name": "code", "paths": [str(tmp / "code.jsonl")], "kind": "text"}]},
      "train": {"steps": 5, "checkpoint_every": 2},
  }, type_safe=False)  # so tests can plant wrong types, as a hand-written dict could


def test_valid_config_becomes_frozen_dataclasses(data_dir):
  cfg = experiment_config(base(data_dir))
  assert isinstance(cfg, ExperimentConfig)
  assert cfg.model == get_preset("tiny", n_layers=2)
  assert cfg.optimizer.learning_rate == 1e-3 and cfg.train.steps == 5
  assert cfg.data.sources[0].paths == (str(data_dir[0] / "code.jsonl"),)
  with pytest.raises(Exception):
    cfg.train.steps = 3  # frozen
  assert json.loads(cfg.to_json())["model"]["n_layers"] == 2


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.train.__setitem__("stepz", 3), "config.train: unknown key(s) ['stepz']"),
    (lambda c: c.__setitem__("bogus", 1), "config: unknown key(s) ['bogus']"),
    (lambda c: c.model.__setitem__("d_modle", 3), "config.model: unknown key(s) ['d_modle']"),
    (lambda c: c.train.__setitem__("steps", "ten"), "config.train.steps='ten': expected an integer"),
    (lambda c: c.train.__setitem__("steps", 0), "config.train.steps=0: expected an integer >= 1"),
    (lambda c: c.optimizer.__setitem__("schedule", "cosin"), "config.optimizer: OptimizerConfig.schedule='cosin'"),
    (lambda c: c.train.__setitem__("nan_policy", "ignore"), "config.train.nan_policy='ignore'"),
    (lambda c: c.__setitem__("stage", "dpo"), "config.stage='dpo'"),
    (lambda c: c.__setitem__("stage", "rl"), "config.rl: an RL stage needs an `rl` section"),
    (lambda c: c.train.__setitem__("objective", "dpo"), "config.train.objective='dpo': expected one of"),
    (lambda c: c.data.__setitem__("producer", "nope"), "config.data.producer='nope'"),
    (lambda c: c.train.__setitem__("loss_normaliser", "tokens"), "config.train.loss_normaliser='tokens'"),
    (lambda c: c.model.__setitem__("preset", "huge"), "Unknown model preset 'huge'"),
    (lambda c: c.data.__setitem__("seq_len", 10**6), "exceeds config.model.max_seq_len"),
    (lambda c: c.data.sources[0].__setitem__("kind", "video"), "kind 'video' is not one of"),
    (lambda c: c.data.sources[0].__setitem__("paths", ["/nonexistent/*.jsonl"]), "no file matches"),
    (lambda c: c.data.__setitem__("tokenizer_path", "/nonexistent.model"), "does not exist"),
    (lambda c: c.__setitem__("init_from", "/nonexistent/run"), "config.init_from='/nonexistent/run' does not exist"),
    (lambda c: c.__setitem__("init_optimizer_state", True), "needs config.init_from"),
    (lambda c: c.__delitem__("train"), "missing section `train`"),
    (lambda c: c.model.__setitem__("window", -3), "ModelConfig.window=-3"),
])
def test_bad_configs_name_the_key(data_dir, edit, message):
  c = base(data_dir)
  edit(c)
  with pytest.raises(ConfigError) as e:
    experiment_config(c)
  assert message in str(e.value)


def test_identity_ignores_fields_that_do_not_change_weights(data_dir):
  a = experiment_config(base(data_dir))
  c = base(data_dir)
  c.model.rope_scaling = {"factor": 4.0, "original_max_positions": 32}
  c.model.attention_impl = "reference"
  assert experiment_config(c).identity() == a.identity()
  c.model.d_model = 96
  assert experiment_config(c).identity() != a.identity()
