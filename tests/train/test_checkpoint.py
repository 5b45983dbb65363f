import json
import logging
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cwm_jax.convert import save_orbax
from cwm_jax.model import get_preset
from cwm_jax.model.config import RopeScaling
from cwm_jax.sharding import MeshConfig, make_mesh, param_shardings
from cwm_jax.train import (OptimizerConfig, TrainState, abstract_train_state, make_optimizer,
                           train_state_shardings)
from cwm_jax.train.checkpoint import Checkpoints, LoadParamsError, load_params

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CFG = get_preset("tiny", vocab_size=128, d_model=32, n_layers=2, scan_period=2,
                 layer_types=("global", "local"), n_heads=4, n_kv_heads=2, head_dim=8,
                 mlp_dim=64, window=8)
OPT = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=2, total_steps=100))
DATA_STATE = {"grain": {"next_index": 2**40 + 3, "weights": [0.1, 1 / 3, -2.5e-300]},
              "stats": {"skipped": 2}, "batches": 17, "name": "mix\u00e9"}
IDENTITY = {"model_config": CFG.to_dict(), "stage": "pretrain", "name": "run"}


def perturbed_state(mesh=None, seed=0) -> TrainState:
  """A train state whose every leaf (Adam moments and step included) holds
  random values, placed with the state's shardings on `mesh` (or on one device)."""
  rng = np.random.default_rng(seed)

  def leaf(x):
    host = (rng.standard_normal(x.shape) * 100).astype(x.dtype)
    return jax.device_put(host, x.sharding if mesh is not None else jax.devices()[0])

  return jax.tree.map(leaf, abstract(mesh))


def abstract(mesh=None) -> TrainState:
  ab = abstract_train_state(CFG, OPT)
  if mesh is None:
    return ab
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), ab,
                      train_state_shardings(mesh, CFG, OPT))


def assert_same_tree(restored, saved, check_sharding=True):
  assert jax.tree.structure(restored) == jax.tree.structure(saved)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(restored)[0], jax.tree.leaves(saved)):
    name = jax.tree_util.keystr(path)
    assert a.dtype == b.dtype and a.shape == b.shape, name
    assert np.array_equal(np.asarray(a), np.asarray(b)), name
    if check_sharding:
      assert a.sharding.is_equivalent_to(b.sharding, a.ndim), name


def small_state(step: int, n: int = 16) -> TrainState:
  return TrainState(step=jnp.asarray(step, jnp.int32),
                    params={"w": jnp.arange(n, dtype=jnp.float32) + step},
                    opt_state={"m": jnp.full((n,), step, jnp.float32)})


SMALL_ABSTRACT = jax.eval_shape(lambda: small_state(0))


@pytest.mark.parametrize("mesh_shape,rng", [
    (None, "typed"), (None, "raw"),
    ({"data": 2, "fsdp": 2, "tensor": 2}, "typed_rbg"), ({"fsdp": 4, "tensor": 2}, "raw")])
def test_restore_is_bit_exact(tmp_path, mesh_shape, rng):
  mesh = None if mesh_shape is None else make_mesh(MeshConfig(**mesh_shape))
  state = perturbed_state(mesh)
  key = {"typed": jax.random.key(5), "typed_rbg": jax.random.key(5, impl="rbg"),
         "raw": jax.random.key_data(jax.random.split(jax.random.key(6), 3))}[rng]
  meta = {"loss": 2.718281828459045, "tokens": 123456789}
  with Checkpoints(str(tmp_path), identity=IDENTITY) as ckpts:
    assert ckpts.save(7, state, data_state=DATA_STATE, rng=key, meta=meta)
  r = Checkpoints(str(tmp_path), identity=IDENTITY).restore(abstract(mesh))
  assert r.step == 7 and r.data_state == DATA_STATE and r.meta == meta
  assert_same_tree(r.state, state, check_sharding=mesh is not None)
  assert r.rng.dtype == key.dtype
  if rng.startswith("typed"):
    assert str(jax.random.key_impl(r.rng)) == str(jax.random.key_impl(key))
    assert np.array_equal(jax.random.key_data(r.rng), jax.random.key_data(key))
  else:
    assert np.array_equal(r.rng, key)


def test_data_state_is_per_process_and_optional(tmp_path):
  with Checkpoints(str(tmp_path)) as ckpts:
    ckpts.save(1, small_state(1), data_state={"i": 1}, rng=None)
    ckpts.save(2, small_state(2), data_state=None, rng=None)
  assert json.loads((tmp_path / "1" / "data_state" / "process_0.json").read_text()) == {"i": 1}
  ckpts = Checkpoints(str(tmp_path))
  assert ckpts.restore(SMALL_ABSTRACT, step=1).data_state == {"i": 1}
  r = ckpts.restore(SMALL_ABSTRACT)
  assert (r.step, r.data_state, r.rng, r.meta) == (2, None, None, {})


def test_retention_keeps_last_and_every(tmp_path):
  with Checkpoints(str(tmp_path), keep_last=2, keep_every=5) as ckpts:
    for step in range(1, 13):
      assert ckpts.save(step, small_state(step), data_state={"step": step}, rng=None)
    ckpts.wait()
    assert ckpts.all_steps() == [5, 10, 11, 12]
  on_disk = sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit())
  assert on_disk == [5, 10, 11, 12]
  r = Checkpoints(str(tmp_path)).restore(SMALL_ABSTRACT, step=5)
  assert_same_tree(r.state, small_state(5), check_sharding=False)


def test_save_skips_existing_steps_unless_forced(tmp_path):
  with Checkpoints(str(tmp_path)) as ckpts:
    ckpts.save(3, small_state(3), data_state=None, rng=None)
    assert not ckpts.save(3, small_state(30), data_state=None, rng=None)
    assert not ckpts.save(2, small_state(2), data_state=None, rng=None)
    assert ckpts.save(2, small_state(2), data_state=None, rng=None, force=True)
    assert ckpts.all_steps() == [2]


def test_read_only_leaves_another_runs_directory_alone(tmp_path):
  with Checkpoints(str(tmp_path)) as ckpts:
    ckpts.save(1, small_state(1), data_state=None, rng=None)
  in_flight = tmp_path / "2.orbax-checkpoint-tmp-123"  # that run is saving step 2 right now
  in_flight.mkdir()
  reader = Checkpoints(str(tmp_path), read_only=True, identity={"name": "other"})
  assert reader.restore(SMALL_ABSTRACT).step == 1
  with pytest.raises(ValueError, match="read_only=True"):
    reader.save(2, small_state(2), data_state=None, rng=None)
  reader.close()
  assert in_flight.exists() and not (tmp_path / "identity.json").exists()


def _dead_save(directory, files=300):
  """The temporary directory of a save killed half-way (many files: slow to delete)."""
  dead = directory / "2.orbax-checkpoint-tmp-123"
  (dead / "params").mkdir(parents=True)
  for i in range(files):
    (dead / "params" / f"chunk_{i}").write_bytes(b"x")
  return dead


def test_opening_removes_a_dead_saves_temp_directory_before_returning(tmp_path):
  with Checkpoints(str(tmp_path)) as ckpts:
    ckpts.save(1, small_state(1), data_state=None, rng=None)
  dead = _dead_save(tmp_path)
  ckpts = Checkpoints(str(tmp_path))
  # Gone before the constructor returns: no background deletion is left for an
  # exit (or close) right after opening to cut short.
  assert not dead.exists()
  assert ckpts.all_steps() == [1]
  assert ckpts.restore(SMALL_ABSTRACT).step == 1
  ckpts.close()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]


def test_identity_mismatch_names_the_keys(tmp_path):
  with Checkpoints(str(tmp_path), identity=IDENTITY) as ckpts:
    ckpts.save(1, small_state(1), data_state=None, rng=None)
  other = dict(IDENTITY, stage="midtrain",
               model_config=CFG.replace(d_model=64, n_heads=8).to_dict())
  with pytest.raises(ValueError) as e:
    Checkpoints(str(tmp_path), identity=other)
  msg = str(e.value)
  assert "stage: 'pretrain' in the directory vs 'midtrain' given" in msg
  assert "model_config.d_model: 32 in the directory vs 64 given" in msg
  assert "model_config.n_heads: 4 in the directory vs 8 given" in msg
  assert "name:" not in msg  # equal keys are not listed
  Checkpoints(str(tmp_path), identity=json.loads(json.dumps(IDENTITY))).close()  # same: fine


def test_identity_of_an_empty_directory_is_replaced(tmp_path):
  Checkpoints(str(tmp_path), identity=IDENTITY).close()
  other = dict(IDENTITY, name="other")
  Checkpoints(str(tmp_path), identity=other).close()
  assert json.loads((tmp_path / "identity.json").read_text())["name"] == "other"


def _truncate_params(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(step_dir / "params") for f in fs]
  for f in files:
    os.truncate(f, os.path.getsize(f) // 2)


def _delete_optimizer(step_dir):
  import shutil
  shutil.rmtree(step_dir / "optimizer")


@pytest.mark.parametrize("damage", [_truncate_params, _delete_optimizer])
def test_damaged_latest_step_falls_back_with_warning(tmp_path, caplog, damage):
  with Checkpoints(str(tmp_path)) as ckpts:
    for step in (1, 2, 3):
      ckpts.save(step, small_state(step), data_state={"step": step}, rng=None)
  damage(tmp_path / "3")
  ckpts = Checkpoints(str(tmp_path))
  with caplog.at_level(logging.WARNING):
    r = ckpts.restore(SMALL_ABSTRACT)
  assert r.step == 2 and r.data_state == {"step": 2}
  assert_same_tree(r.state, small_state(2), check_sharding=False)
  warnings = [m.getMessage() for m in caplog.records if m.levelno == logging.WARNING]
  assert any("Checkpoint step 3 in" in w and "is unreadable" in w and "falling back to step 2" in w
             for w in warnings), warnings
  # Training goes on from step 2; saving step 3 replaces the unreadable one.
  assert ckpts.save(3, small_state(33), data_state=None, rng=None)
  ckpts.close()
  assert_same_tree(Checkpoints(str(tmp_path)).restore(SMALL_ABSTRACT).state, small_state(33),
                   check_sharding=False)


def test_no_readable_step_is_a_clear_error(tmp_path):
  with Checkpoints(str(tmp_path)) as ckpts:
    ckpts.save(1, small_state(1), data_state=None, rng=None)
  _delete_optimizer(tmp_path / "1")
  with pytest.raises(ValueError, match=r"no checkpoint in .* could be restored: step 1: "):
    Checkpoints(str(tmp_path)).restore(SMALL_ABSTRACT)
  with pytest.raises(FileNotFoundError, match="holds no checkpoints"):
    Checkpoints(str(tmp_path / "empty")).restore(SMALL_ABSTRACT)


def test_wrong_target_is_an_error_not_a_fallback(tmp_path):
  with Checkpoints(str(tmp_path)) as ckpts:
    ckpts.save(1, small_state(1), data_state=None, rng=None)
    ckpts.save(2, small_state(2), data_state=None, rng=None)
  wrong = jax.eval_shape(lambda: small_state(0, n=8))
  with pytest.raises(ValueError, match=r"params leaf 'w' has shape \(16,\) in step 2 but the "
                                       r"target state expects \(8,\)"):
    Checkpoints(str(tmp_path)).restore(wrong)


KILLED_SAVER = textwrap.dedent("""
    import sys, time
    import jax, jax.numpy as jnp, numpy as np
    from cwm_jax.train import TrainState
    from cwm_jax.train.checkpoint import Checkpoints
    def state(step, n):
      x = np.random.default_rng(step).standard_normal(n, dtype=np.float32)
      return TrainState(step=jnp.asarray(step, jnp.int32), params={"w": jnp.asarray(x)},
                        opt_state={"m": jnp.asarray(x[::-1])})
    ckpts = Checkpoints(sys.argv[1], async_save=True)
    ckpts.save(1, state(1, 16), data_state={"step": 1}, rng=None)
    ckpts.wait()
    ckpts.save(2, state(2, 48 * 2**20), data_state={"step": 2}, rng=None)  # 2 x 192 MB
    print("save started", flush=True)
    time.sleep(120)
""")


def test_step_killed_mid_save_is_never_visible(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVER, str(tmp_path)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    assert proc.stdout.readline().strip() == "save started"
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.kill()
    proc.wait(timeout=60)
  leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("1",))
  assert "2" not in leftovers
  assert any(name.startswith("2.") and "tmp" in name for name in leftovers), (
      f"the save finished before the kill, nothing was tested: {leftovers}")
  ckpts = Checkpoints(str(tmp_path))
  assert ckpts.all_steps() == [1] and ckpts.latest_step() == 1
  r = ckpts.restore(SMALL_ABSTRACT)
  assert r.step == 1 and r.data_state == {"step": 1}
  x = np.random.default_rng(1).standard_normal(16, dtype=np.float32)
  assert np.array_equal(r.state.params["w"], x) and np.array_equal(r.state.opt_state["m"], x[::-1])
  # The resumed run saves step 2 again; the dead save's temp directory is gone.
  assert ckpts.save(2, small_state(2), data_state=None, rng=None)
  ckpts.close()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
  """A workdir with two steps of a perturbed tiny-model state."""
  workdir = tmp_path_factory.mktemp("run")
  states = {s: perturbed_state(seed=s) for s in (1, 2)}
  with Checkpoints(str(workdir / "checkpoints"), identity=IDENTITY) as ckpts:
    for s, st in states.items():
      ckpts.save(s, st, data_state=None, rng=jax.random.key(0))
  return workdir, states


@pytest.mark.parametrize("where", ["workdir", "checkpoints", "step"])
def test_load_params_reads_only_params(saved_run, tmp_path, where):
  workdir, states = saved_run
  path = {"workdir": workdir, "checkpoints": workdir / "checkpoints",
          "step": workdir / "checkpoints" / "1"}[where]
  cfg, params = load_params(str(path))
  assert cfg == CFG
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(params))
  assert_same_tree(params, states[1 if where == "step" else 2].params, check_sharding=False)


def test_load_params_never_opens_optimizer_state(saved_run, tmp_path):
  import shutil
  shutil.copytree(saved_run[0] / "checkpoints" / "2", tmp_path / "2")
  shutil.rmtree(tmp_path / "2" / "optimizer")
  _, params = load_params(str(tmp_path / "2"))
  assert_same_tree(params, saved_run[1][2].params, check_sharding=False)


def test_load_params_sharded_cast_and_save_orbax_dir(saved_run, tmp_path):
  workdir, states = saved_run
  mesh = make_mesh(MeshConfig(fsdp=4, tensor=2))
  shardings = param_shardings(mesh, CFG)
  midtrain = CFG.replace(rope_scaling=RopeScaling(), max_seq_len=2 * CFG.max_seq_len,
                         attention_impl="reference", remat="full")
  cfg, params = load_params(str(workdir), model_cfg=midtrain, shardings=shardings, dtype="bfloat16")
  assert cfg == midtrain.replace(param_dtype="bfloat16")
  expected = jax.tree.map(lambda x: x.astype(jnp.bfloat16), states[2].params)
  assert_same_tree(params, jax.tree.map(jax.device_put, expected, shardings))
  save_orbax(jax.device_get(states[1].params), CFG, str(tmp_path / "orbax"))
  cfg, params = load_params(str(tmp_path / "orbax"), model_cfg=midtrain)
  assert cfg == midtrain
  assert_same_tree(params, states[1].params, check_sharding=False)


@pytest.mark.parametrize("change,message", [
    ({"vocab_size": 256}, r"model_cfg.vocab_size=256, but checkpoint .* was trained with "
                          r"vocab_size=128"),
    ({"layer_types": ("local", "local")}, r"model_cfg.layer_types=\('local', 'local'\), but "
                                           r"checkpoint .* was trained with layer_types="
                                           r"\('global', 'local'\)"),
    ({"window": 4}, r"model_cfg.window=4, but checkpoint .* window=8")])
def test_load_params_rejects_configs_that_change_the_weights(saved_run, change, message):
  with pytest.raises(ValueError, match=message):
    load_params(str(saved_run[0]), model_cfg=CFG.replace(**change))


def test_load_params_config_errors_are_typed_and_never_fall_back(saved_run, tmp_path):
  newest = saved_run[0] / "checkpoints" / "2"
  with pytest.raises(LoadParamsError) as e:
    load_params(str(saved_run[0]), model_cfg=CFG.replace(vocab_size=256))
  assert isinstance(e.value, ValueError)  # callers catching ValueError keep working
  assert str(e.value) == (f"load_params: model_cfg.vocab_size=256, but checkpoint {newest} was "
                          "trained with vocab_size=128.")
  with Checkpoints(str(tmp_path)) as ckpts:  # no identity: the steps record no model config
    for step in (1, 2):
      ckpts.save(step, small_state(step), data_state=None, rng=None)
  with pytest.raises(LoadParamsError) as e:
    load_params(str(tmp_path))
  assert str(e.value) == (f"load_params: checkpoint {tmp_path / '2'} records no model config; "
                          "pass model_cfg.")


def test_load_params_falls_back_from_a_damaged_step(saved_run, tmp_path, caplog):
  import shutil
  shutil.copytree(saved_run[0], tmp_path / "run")
  _truncate_params(tmp_path / "run" / "checkpoints" / "2")
  with caplog.at_level(logging.WARNING):
    cfg, params = load_params(str(tmp_path / "run"))
  assert cfg == CFG
  assert_same_tree(params, saved_run[1][1].params, check_sharding=False)
  assert any("checkpoints/2 is unreadable" in m.getMessage() for m in caplog.records)


def test_load_params_clear_error_for_a_non_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match="holds no checkpoint: expected a training workdir"):
    load_params(str(tmp_path))


TWO_PROCESS_WORKER = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from cwm_jax.sharding.distributed import initialize_distributed
    coordinator, process_id, directory, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    initialize_distributed(coordinator, 2, process_id)
    from cwm_jax.model import get_preset
    from cwm_jax.sharding import MeshConfig, make_mesh
    from cwm_jax.train import (OptimizerConfig, abstract_train_state, make_optimizer,
                               train_state_shardings)
    from cwm_jax.train.checkpoint import Checkpoints
    cfg = get_preset("tiny", vocab_size=128, d_model=32, n_layers=2, scan_period=2,
                     layer_types=("global", "local"), n_heads=4, n_kv_heads=2, head_dim=8,
                     mlp_dim=64, window=8)
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=2, total_steps=100))
    mesh = make_mesh(MeshConfig(data=2, fsdp=4))          # spans both processes
    shardings = train_state_shardings(mesh, cfg, opt)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract_train_state(cfg, opt), shardings)

    rng = np.random.default_rng(1)  # same values in both processes, no compilation
    hosts = [rng.standard_normal(x.shape).astype(x.dtype) for x in jax.tree.leaves(abstract)]
    state = jax.tree.unflatten(jax.tree.structure(abstract), [
        jax.make_array_from_callback(x.shape, x.sharding, lambda idx, h=h: h[idx])
        for x, h in zip(jax.tree.leaves(abstract), hosts)])
    with Checkpoints(directory) as ckpts:
      ckpts.save(3, state, data_state={"process": process_id, "rows": [8 * process_id, 8]},
                 rng=jax.random.key(9))
    r = Checkpoints(directory).restore(abstract)
    exact = all(sa.index == sb.index and np.array_equal(sa.data, sb.data)
                for a, b in zip(jax.tree.leaves(r.state), jax.tree.leaves(state))
                for sa, sb in zip(a.addressable_shards, b.addressable_shards))
    with open(out, "w") as f:
      json.dump({"step": r.step, "data_state": r.data_state, "exact": exact,
                 "rng": np.asarray(jax.random.key_data(r.rng)).tolist()}, f)
    jax.distributed.shutdown()
""")


@pytest.mark.slow
def test_two_processes_save_and_restore_their_own_data_state(tmp_path):
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    coordinator = f"localhost:{s.getsockname()[1]}"
  env = {k: v for k, v in os.environ.items() if not k.startswith("CWM_")}
  env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  outs = [tmp_path / f"p{i}.json" for i in range(2)]
  logs = [open(tmp_path / f"p{i}.log", "w+") for i in range(2)]
  procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESS_WORKER, coordinator, str(i),
                             str(tmp_path / "ckpt"), str(outs[i])], env=env, cwd=REPO,
                            stdout=logs[i], stderr=subprocess.STDOUT) for i in range(2)]
  try:
    for p, log in zip(procs, logs):
      p.wait(timeout=240)
      log.seek(0)
      assert p.returncode == 0, log.read()[-4000:]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  results = [json.loads(o.read_text()) for o in outs]
  for i, r in enumerate(results):
    assert r["step"] == 3 and r["exact"]
    assert r["data_state"] == {"process": i, "rows": [8 * i, 8]}
    assert r["rng"] == np.asarray(jax.random.key_data(jax.random.key(9))).tolist()
  data_dir = tmp_path / "ckpt" / "3" / "data_state"
  assert sorted(p.name for p in data_dir.iterdir() if p.name.endswith(".json")) == [
      "process_0.json", "process_1.json"]
