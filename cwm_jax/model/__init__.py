"""The CWM decoder: config and presets, parameter table, forward pass, NNX module."""

from cwm_jax.model.config import GLOBAL, LOCAL, ModelConfig, RopeScaling, cwm_layer_types, get_preset, PRESETS
from cwm_jax.model.module import Cwm
from cwm_jax.model.params import abstract_params, count_params, init_params, param_axes, param_specs
from cwm_jax.model.transformer import forward, hidden_states, logits_from_hidden, positions_from_segments
