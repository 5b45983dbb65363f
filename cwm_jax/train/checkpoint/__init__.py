"""Training checkpoints: exact, asynchronous save/restore of the whole run
(`Checkpoints`) and cheap params-only loading (`load_params`)."""

from cwm_jax.train.checkpoint.manager import Checkpoints, Restored, TargetMismatchError
from cwm_jax.train.checkpoint.params import (WEIGHT_NEUTRAL, LoadParamsError, check_compatible,
                                             load_params)

__all__ = ["Checkpoints", "Restored", "TargetMismatchError", "load_params", "check_compatible",
           "LoadParamsError", "WEIGHT_NEUTRAL"]
