"""Environments from config: `EnvSpec` -> (environment, reward function, task source).

  toy_copy, toy_chain   token-level toy tasks generated from an index (toy.py)
  code                  competitive programming on a JSONL task file (code.py)
  math, math_tool       math on a JSONL task file, without / with a python tool (math_env.py)

Task files are read once; malformed records are skipped and counted by the loader
(`tasks.py`), and the counts are logged.
"""

from __future__ import annotations

from absl import logging

from cwm_jax.rl.config import EnvSpec
from cwm_jax.rl.envs import toy
from cwm_jax.rl.mixture import ListTasks


def build_env(spec: EnvSpec, tokenizer, *, seed: int = 0, executor=None):
  """(env, reward_fn, task source) of one mixture component."""
  if spec.kind in ("toy_copy", "toy_chain"):
    config = toy.ToyConfig(shift=spec.shift, turns=spec.turns, seed=seed)
    env = toy.ToyCopyEnv(config) if spec.kind == "toy_copy" else toy.ToyChainEnv(config)
    env.name = spec.name
    return env, env.reward_fn, env
  if tokenizer is None:
    raise ValueError(f"environment {spec.name!r} ({spec.kind}) needs a tokenizer: set "
                     "config.data.tokenizer_path.")
  from cwm_jax.rl.envs.tasks import TaskFileStats, load_tasks  # pylint: disable=import-outside-toplevel
  stats = TaskFileStats()
  if spec.kind == "code":
    from cwm_jax.rl.envs.code import CodeEnv, CodeEnvConfig  # pylint: disable=import-outside-toplevel
    env = CodeEnv(tokenizer, CodeEnvConfig(max_attempts=spec.max_attempts), sandbox=executor)
    tasks = load_tasks(spec.tasks, "code", env=spec.name, stats=stats)
  else:
    from cwm_jax.rl.envs.math_env import MathEnv, MathEnvConfig  # pylint: disable=import-outside-toplevel
    env = MathEnv(tokenizer, MathEnvConfig(python_tool=spec.kind == "math_tool"), sandbox=executor)
    tasks = load_tasks(spec.tasks, "math", env=spec.name, stats=stats)
  env.name = spec.name
  logging.info("environment %s (%s): %d tasks from %s; %s", spec.name, spec.kind, len(tasks),
               spec.tasks, stats.summary())
  return env, env.reward_fn, ListTasks(tasks, seed=seed)
