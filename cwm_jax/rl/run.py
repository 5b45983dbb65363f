"""`train_rl(cfg, workdir)`: the RL stage, on the training core.

    python -m experiments.main --config=experiments/configs/rl.py:tiny --workdir=/tmp/rl

Builds the environments and the task mixture, the rollout engine (on its own
sub-mesh in async mode, on the learner's devices in sync mode), the
`RolloutProducer` and the GRPO objective, then runs the ordinary training loop:
the same train step, checkpoints (the producer's state included), metrics, NaN
guard and exact resume as every stage. After every learner step the new weights
move to the engine with `jax.device_put` onto its shardings.
"""

from __future__ import annotations

import os

import jax
from absl import logging

from cwm_jax.inference.sampling import SamplingConfig
from cwm_jax.model.params import init_params
from cwm_jax.rl.engine import EngineConfig, RolloutEngine
from cwm_jax.rl.envs.registry import build_env
from cwm_jax.rl.filters import FilterConfig
from cwm_jax.rl.loss import GRPOConfig, grpo_objective
from cwm_jax.rl.mixture import SolveRates, TaskMixture
from cwm_jax.rl.producer import ProducerConfig, RolloutProducer
from cwm_jax.sharding import MeshConfig, make_mesh
from cwm_jax.sharding.rules import logical_to_spec
from cwm_jax.train.config import ConfigError, ExperimentConfig
from cwm_jax.train.loop import train
from cwm_jax.train.objectives import token_logprobs


def _batch_shards(mesh) -> int:
  spec = logical_to_spec(("batch",), mesh)[0]
  names = () if spec is None else (spec,) if isinstance(spec, str) else spec
  n = 1
  for name in names:
    n *= mesh.shape[name]
  return n


def _split_devices(cfg: ExperimentConfig):
  """(engine mesh or None for one device, learner devices).

  engine_devices = n > 0: the engine on the first n devices, the learner on the rest
  (async: both busy at once; sync: they take turns). engine_devices = 0 (sync only):
  colocated, the engine on the learner's devices."""
  rl, devices = cfg.rl, jax.devices()
  if jax.process_count() > 1:
    raise ConfigError("RL runs in one process for now (see the README's RL section): the "
                      "engine's host loop would have to run in lockstep on every process.")
  n = rl.engine_devices if rl.engine_devices >= 0 else max(1, len(devices) // 4)
  if n == 0:
    mesh = (make_mesh(MeshConfig(data=len(devices)), devices)
            if len(devices) > 1 and rl.engine_slots % len(devices) == 0 else None)
    return mesh, devices
  if n >= len(devices):
    raise ConfigError(f"config.rl.engine_devices={rl.engine_devices}: the engine's sub-mesh "
                      f"needs devices left for the learner, and there are {len(devices)}.")
  return (make_mesh(MeshConfig(data=n), devices[:n]) if n > 1 else None), devices[n:]


def _reference_scorer(cfg: ExperimentConfig):
  """Log-probs of each batch under the frozen initial policy (for the KL term)."""
  from cwm_jax.train.checkpoint import load_params  # pylint: disable=import-outside-toplevel
  params = (load_params(cfg.init_from)[1] if cfg.init_from else
            init_params(cfg.model, jax.random.key(cfg.seed)))
  params = jax.device_put(params)
  temperature, chunk = cfg.rl.temperature, cfg.train.loss_chunk
  score = jax.jit(lambda p, b: token_logprobs(p, b, cfg.model, loss_chunk=chunk,
                                              temperature=temperature)[0])

  def scorer(batch):
    logp = score(params, {k: batch[k] for k in ("tokens", "segment_ids", "positions")})
    # Target-aligned -> token-aligned (the objective shifts it back).
    logp = jax.device_get(logp)
    out = logp * 0
    out[:, 1:] = logp[:, :-1]
    return out

  return scorer


def build_producer(cfg: ExperimentConfig, workdir: str, engine_mesh=None,
                   learner_shards: int = 1) -> RolloutProducer:
  rl = cfg.rl
  tokenizer = None
  if cfg.data.tokenizer_path:
    from cwm_jax.tokenizer import load_tokenizer  # pylint: disable=import-outside-toplevel
    tokenizer = load_tokenizer(cfg.data.tokenizer_path)
  executor = None
  if any(e.kind in ("code", "math_tool") for e in rl.envs):
    from cwm_jax.sandbox import SandboxPool  # pylint: disable=import-outside-toplevel
    executor = SandboxPool(rl.env_workers)
  envs, sources, weights = {}, {}, {}
  for spec in rl.envs:
    env, reward_fn, source = build_env(spec, tokenizer, seed=cfg.seed, executor=executor)
    envs[spec.name], sources[spec.name], weights[spec.name] = (env, reward_fn), source, spec.weight
  mixture = TaskMixture(sources, weights, seed=cfg.seed, solve_rates=SolveRates(
      rl.solve_rate_lo, rl.solve_rate_hi, rl.solve_rate_window, rl.solve_rate_min_samples))
  engine = RolloutEngine(cfg.model, None, EngineConfig(
      slots=rl.engine_slots, max_episode_tokens=rl.max_episode_tokens or cfg.data.seq_len,
      max_turn_tokens=rl.max_turn_tokens,
      sampling=SamplingConfig(temperature=rl.temperature, top_p=rl.top_p, top_k=rl.top_k),
      stop_token_ids=tuple(tokenizer.stop_ids) if tokenizer is not None else (),
      env_workers=rl.env_workers, env_timeout_s=rl.env_timeout_s, seed=cfg.seed,
      recompute_on_swap=rl.recompute_on_swap), tokenizer=tokenizer, mesh=engine_mesh)
  return RolloutProducer(ProducerConfig(
      group_size=rl.group_size, groups_per_step=rl.groups_per_step, rows=cfg.data.batch_size,
      seq_len=cfg.data.seq_len, shards=learner_shards, mode=rl.mode,
      max_lag=rl.max_lag if rl.mode == "async" else 0, std_advantages=rl.std_advantages,
      filters=FilterConfig(rl.max_staleness, rl.gibberish_min_id, rl.gibberish_margin),
      vocab_size=cfg.model.vocab_size, sample_every=rl.sample_every,
      samples_dir=os.path.join(workdir, "samples")), engine, envs, mixture,
      ref_scorer=_reference_scorer(cfg) if rl.kl_coef else None, tokenizer=tokenizer)


def rl_objective(cfg: ExperimentConfig):
  rl = cfg.rl
  return grpo_objective(cfg.model, GRPOConfig(
      clip_low=rl.clip_low, clip_high=rl.clip_high, normaliser=rl.normaliser,
      kl_coef=rl.kl_coef, sequence_ratio=rl.sequence_ratio, tis_cap=rl.tis_cap,
      temperature=rl.temperature, loss_chunk=cfg.train.loss_chunk))


def train_rl(cfg: ExperimentConfig, workdir: str) -> dict:
  """Runs (or resumes) the RL stage in `workdir`; returns the loop's summary."""
  if cfg.rl is None:
    raise ConfigError("train_rl: config.stage must be 'rl' with an `rl` section.")
  engine_mesh, learner_devices = _split_devices(cfg)
  learner_shards = _batch_shards(make_mesh(cfg.mesh, learner_devices))
  producer = build_producer(cfg, workdir, engine_mesh, learner_shards)
  logging.info("RL (%s): engine on %s, learner on %d devices", cfg.rl.mode,
               "its own sub-mesh" if cfg.rl.mode == "async" else "the learner's devices",
               len(learner_devices))
  return train(cfg, workdir, producer=producer, objective=rl_objective(cfg),
               step_hooks=[producer.step_hook], devices=learner_devices,
               on_start=producer.on_start)
