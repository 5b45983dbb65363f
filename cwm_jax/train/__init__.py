"""Training: chunked loss, optimizer, train state and the jitted train step."""

from cwm_jax.train.loss import (LossSums, chunked_cross_entropy, chunked_token_logprobs, mean_loss,
                                next_token_targets)
from cwm_jax.train.objectives import (OBJECTIVES, Objective, ObjectiveSums, cross_entropy,
                                      token_logprobs)
from cwm_jax.train.optimizer import OptimizerConfig, decay_mask, make_optimizer, make_schedule
from cwm_jax.train.state import (TrainState, abstract_train_state, init_train_state,
                                 train_state_shardings)
from cwm_jax.train.step import jit_train_step, loss_sums, split_microbatches, train_step
