"""Shared fixtures: a small CWM with a window of 8 and large enough weights that
greedy choices are not near ties, and a toy tokenizer that fits its vocabulary."""

import jax
import pytest

from cwm_jax.model import ModelConfig, init_params
from cwm_jax.model.config import GLOBAL, LOCAL
from cwm_jax.tokenizer import toy

WINDOW = 8
# 1 scanned group (G L L L) + an unscanned tail (G L); vocab fits the toy tokenizer
# (256 bytes + 400 merges + 256 specials = 912 ids).
CFG = ModelConfig(vocab_size=1024, d_model=32, n_layers=6, n_heads=4, n_kv_heads=2, head_dim=8,
                  mlp_dim=48, layer_types=(GLOBAL, LOCAL, LOCAL, LOCAL, GLOBAL, LOCAL),
                  window=WINDOW, init_std=0.2, max_seq_len=256, rope_theta=10000.0)


@pytest.fixture(scope="session")
def model():
  """(ModelConfig, params)."""
  return CFG, init_params(CFG, jax.random.key(0))


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
  return toy.toy_tiktoken_tokenizer(tmp_path_factory.mktemp("tok"))
