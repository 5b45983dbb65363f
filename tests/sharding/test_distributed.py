"""Multi-process training on localhost: two CPU processes with 4 fake devices each
(gloo collectives) run the same sharded train step over one 8-device mesh, each
feeding its half of the batch; losses and parameters must match a single
process with 8 local devices. Also the settings/batch-assembly error paths."""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from cwm_jax.sharding import MeshConfig, make_mesh
from cwm_jax.sharding.distributed import (global_batch, global_shape_of, initialize_distributed,
                                          local_rows, resolve_settings)
from cwm_jax.sharding.partition import batch_sharding
from tests.multiprocess import free_port, run_workers, worker_env

WORKER = Path(__file__).with_name("multihost_worker.py")


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  port = free_port()
  coord = f"localhost:{port}"
  outs = [tmp_path / f"p{i}.json" for i in range(2)] + [tmp_path / "single.json"]
  commands = [([sys.executable, str(WORKER), f"--out={outs[i]}", f"--coordinator={coord}",
                "--num_processes=2", f"--process_id={i}"], worker_env(4)) for i in range(2)]
  commands.append(([sys.executable, str(WORKER), f"--out={outs[2]}"], worker_env(8)))
  run_workers(commands, tmp_path)
  p0, p1, single = (json.loads(p.read_text()) for p in outs)

  assert [p0["process_count"], p1["process_count"], single["process_count"]] == [2, 2, 1]
  assert p0["local_devices"] == p1["local_devices"] == 4 and single["local_devices"] == 8
  # Each process loaded its own half of the global batch.
  assert sorted([p0["rows"], p1["rows"]]) == [[0, 8], [8, 16]]
  assert single["rows"] == [0, 16]

  np.testing.assert_array_equal(p0["losses"], p1["losses"])
  assert p0["checksums"] == p1["checksums"]
  np.testing.assert_allclose(p0["losses"], single["losses"], rtol=1e-6)
  # Parameters after two AdamW steps, per tensor: L1 distance within 1e-6 of the L1
  # norm. Not element-wise: cross-process all-reduces may sum in another order, and
  # Adam's g / sqrt(v) turns last-bit differences of near-zero gradients into ~1e-5
  # relative differences of a few single updates.
  multi_params, single_params = np.load(f"{outs[0]}.npz"), np.load(f"{outs[2]}.npz")
  assert sorted(multi_params.files) == sorted(single_params.files)
  for name in single_params.files:
    a, b = multi_params[name], single_params[name]
    assert np.abs(a - b).sum() <= 1e-6 * np.abs(b).sum(), name
    np.testing.assert_allclose(p0["checksums"][name][1], single["checksums"][name][1], rtol=1e-6)
  assert single["losses"][1] < single["losses"][0]  # the step trains


def test_settings_single_process_is_a_noop():
  assert resolve_settings(env={}) is None
  assert resolve_settings(env={"CWM_NUM_PROCESSES": "1"}) is None
  assert initialize_distributed(env={}) is False


@pytest.mark.parametrize("env, message", [
    ({"CWM_COORDINATOR": "h:1"}, "missing num_processes .*process_id"),
    ({"CWM_NUM_PROCESSES": "2", "CWM_PROCESS_ID": "0"}, "missing coordinator_address"),
    ({"CWM_NUM_PROCESSES": "2", "CWM_PROCESS_ID": "2", "CWM_COORDINATOR": "h:1"}, "0 <= process_id"),
    ({"CWM_NUM_PROCESSES": "two"}, "CWM_NUM_PROCESSES='two': expected an integer"),
    ({"CWM_NUM_PROCESSES": "2", "CWM_PROCESS_ID": "0", "CWM_COORDINATOR": "h"}, "host:port"),
    ({"CWM_LOCAL_DEVICE_IDS": "0,1"}, "without a multi-process setup"),
])
def test_partial_settings_raise_clear_errors(env, message):
  with pytest.raises(ValueError, match=message):
    resolve_settings(env=env)


def test_flags_override_env():
  env = {"CWM_COORDINATOR": "a:1", "CWM_NUM_PROCESSES": "4", "CWM_PROCESS_ID": "3",
         "CWM_LOCAL_DEVICE_IDS": "0,1"}
  got = resolve_settings(coordinator_address="b:2", process_id=1, env=env)
  assert got == {"coordinator_address": "b:2", "num_processes": 4, "process_id": 1,
                 "local_device_ids": [0, 1]}


def test_global_batch_single_process_and_shape_errors():
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, context=2))
  sharding = batch_sharding(mesh)
  assert local_rows(sharding, 8) == slice(0, 8)
  tokens = np.arange(8 * 6, dtype=np.int32).reshape(8, 6)
  batch = global_batch({"tokens": tokens, "loss_mask": np.ones_like(tokens)}, sharding)
  assert batch["tokens"].shape == (8, 6) and batch["tokens"].sharding == sharding
  np.testing.assert_array_equal(jax.device_get(batch["tokens"]), tokens)
  with pytest.raises(ValueError, match=r"batch\['tokens'\].*dimension 0 has size 6.*multiple of 4"):
    global_batch({"tokens": tokens[:6]}, sharding)
  with pytest.raises(ValueError, match="dimension 1 has size 5.*multiple of 2"):
    global_shape_of((8, 5), sharding, "tokens")
  with pytest.raises(ValueError, match="expected"):
    global_batch({"tokens": tokens}, sharding, {"tokens": (16, 6)})
  with pytest.raises(ValueError, match="not divisible by the 4 batch shards"):
    local_rows(sharding, 6)
