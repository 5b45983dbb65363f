"""`SandboxedEnv`: what the chat environments that run code share.

The tokenizer, the config, the reward function and the stop tokens the engine reads,
and the executor running untrusted code: a given thread-safe one (a `SandboxPool`,
the caller's to close), or a pool started here on first use and stopped by
`close()`. A sandbox that cannot start is the environment's failure
(`EnvError(reason="sandbox_error")`), never the agent's.
"""

from __future__ import annotations

import threading

from cwm_jax.rl.envs.base import EnvError, RewardFn, plus_minus_one
from cwm_jax.sandbox import Executor, SandboxError, SandboxPool


class SandboxedEnv:

  def __init__(self, tokenizer, config, *, sandbox: Executor | None = None,
               reward_fn: RewardFn = plus_minus_one, stop_strings: tuple[str, ...] = ()):
    self.tokenizer, self.config, self.reward_fn = tokenizer, config, reward_fn
    self.stop_token_ids: tuple[int, ...] = tuple(tokenizer.stop_ids)
    self.stop_strings: tuple[str, ...] = stop_strings
    self._sandbox, self._owns_sandbox = sandbox, sandbox is None
    self._lock = threading.Lock()

  @property
  def sandbox(self) -> Executor:
    """The executor (started here on first use when none was given)."""
    with self._lock:
      if self._sandbox is None:
        try:
          self._sandbox = SandboxPool(self.config.sandbox_workers)
        except SandboxError as e:
          raise EnvError(f"{self.name} env: cannot start the sandbox: {e}",
                         reason="sandbox_error") from e
      return self._sandbox

  def close(self) -> None:
    """Stops the sandbox pool the env started (a given one is the caller's)."""
    with self._lock:
      if self._owns_sandbox and self._sandbox is not None:
        self._sandbox.close()
        self._sandbox = None

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()
