"""This tree against another commit, side by side in one run: the same measurement
run alternately in both trees (a `git worktree` of the other commit), so machine
noise hits both alike.

    python -m benchmarks.vs_commit --ref=HEAD~1                    # train_step
    python -m benchmarks.vs_commit --ref=c8a9e8d --what=train_step --rounds=5
    python -m benchmarks.vs_commit --ref=f0e2963 --what=quickstart_midtrain

Measurements (`--what`), each a snippet using only APIs both trees share:
  train_step   tokens/s of the jitted cross-entropy train step (`jit_train_step`)
               on the `tiny` model, B x T = 16 x 256, one CPU device, after warm-up.
  loss_grad    tokens/s of the gradient of the chunked cross-entropy alone, same shapes.
  quickstart_pretrain, quickstart_midtrain
               tokens/s of the train step the quickstart runs in each stage: its
               model (`experiments/configs/common.TINY_MODEL`), its batch (16 x 256,
               and 2 x 1,024 with RoPE scaling), packed rows (segment ids), its loss
               chunk, and its 2 host devices (data parallel).

Each snippet runs in a fresh process on the allocator its tree's commands choose
(`cwm_jax/host_memory.py`: tcmalloc where the tree has it), and the train-step
snippets also report minor page faults per step.

Prints each round's numbers and the median ratio this / ref.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

# The head of every snippet: the allocator the tree's own commands run on (tcmalloc
# since cwm_jax/host_memory.py; a tree without it keeps glibc malloc). This may
# re-execute the snippet's process, so it comes first.
_ALLOCATOR = r'''
try:
  from cwm_jax.host_memory import use_tcmalloc
  use_tcmalloc()
except ImportError:
  pass
'''

# The tail of the train-step snippets: warm up, then time `steps` steps of `step`,
# with the minor page faults and kernel CPU time per step.
_TIMED_STEPS = r'''
import resource
for _ in range(3):
  state, m = step(state, batch)
jax.block_until_ready(state)
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
for _ in range(steps):
  state, m = step(state, batch)
jax.block_until_ready(state)
dt = time.perf_counter() - t0
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"tokens_per_s": steps * B * T / dt, "loss": float(m["loss"]),
                  "faults_per_step": (r1.ru_minflt - r0.ru_minflt) / steps,
                  "sys_s_per_step": (r1.ru_stime - r0.ru_stime) / steps}))
'''

SNIPPETS = {
    "train_step": r'''
import json, time, sys
import jax, jax.numpy as jnp, numpy as np
from cwm_jax.model import get_preset
from cwm_jax.sharding import MeshConfig, make_mesh
from cwm_jax.train import OptimizerConfig, make_optimizer, init_train_state, jit_train_step
from cwm_jax.train.state import train_state_shardings
B, T, steps = 16, 256, int(sys.argv[1])
cfg = get_preset("tiny", vocab_size=2048)
opt = make_optimizer(OptimizerConfig(warmup_steps=10, total_steps=1000))
mesh = make_mesh(MeshConfig(data=1))
sh = train_state_shardings(mesh, cfg, opt)
state = init_train_state(cfg, opt, jax.random.key(0), mesh=mesh)
step = jit_train_step(mesh, cfg, opt, sh, loss_chunk=256)
rng = np.random.default_rng(0)
batch = {"tokens": jnp.asarray(rng.integers(0, 2048, (B, T)), jnp.int32),
         "loss_mask": jnp.ones((B, T), jnp.int32)}
''' + _TIMED_STEPS,
    "loss_grad": r'''
import json, time, sys
import jax, jax.numpy as jnp, numpy as np
from cwm_jax.model import get_preset, init_params
from cwm_jax.train import loss_sums
B, T, steps = 16, 256, int(sys.argv[1])
cfg = get_preset("tiny", vocab_size=2048)
params = init_params(cfg, jax.random.key(0))
rng = np.random.default_rng(0)
batch = {"tokens": jnp.asarray(rng.integers(0, 2048, (B, T)), jnp.int32),
         "loss_mask": jnp.ones((B, T), jnp.int32)}
g = jax.jit(jax.grad(lambda p, b: loss_sums(p, b, cfg, 256).ce))
for _ in range(3):
  out = g(params, batch)
jax.block_until_ready(out)
t0 = time.perf_counter()
for _ in range(steps):
  out = g(params, batch)
jax.block_until_ready(out)
print(json.dumps({"tokens_per_s": steps * B * T / (time.perf_counter() - t0), "loss": 0.0}))
''',
}

_QUICKSTART = r'''
import json, time, sys
import jax, jax.numpy as jnp, numpy as np
from cwm_jax.model import get_preset
from cwm_jax.model.config import RopeScaling
from cwm_jax.sharding import MeshConfig, make_mesh
from cwm_jax.train import OptimizerConfig, make_optimizer, init_train_state, jit_train_step
from cwm_jax.train.state import train_state_shardings
from experiments.configs import common
steps, stage = int(sys.argv[1]), "STAGE"
kw = {k: v for k, v in common.TINY_MODEL.items() if k != "preset"}
if stage == "midtrain":
  B, T = 2, 1024
  kw.update(max_seq_len=4096, rope_scaling=RopeScaling(**dict(common.ROPE, factor=4.0,
                                                             original_max_positions=256)))
else:
  B, T = 16, 256
cfg = get_preset("tiny", **kw)
opt = make_optimizer(OptimizerConfig(warmup_steps=10, total_steps=1000))
mesh = make_mesh(MeshConfig(data=jax.device_count()))
sh = train_state_shardings(mesh, cfg, opt)
state = init_train_state(cfg, opt, jax.random.key(0), mesh=mesh)
step = jit_train_step(mesh, cfg, opt, sh, loss_chunk=common.train_config("tiny", stage).loss_chunk)
rng = np.random.default_rng(0)
# Packed rows: documents of ~100 tokens (segment ids), as the toy corpus packs them.
segments = np.cumsum(rng.random((B, T)) < 0.01, axis=1).astype(np.int32)
batch = {"tokens": jnp.asarray(rng.integers(0, cfg.vocab_size, (B, T)), jnp.int32),
         "loss_mask": jnp.ones((B, T), jnp.int32), "segment_ids": jnp.asarray(segments)}
''' + _TIMED_STEPS
for _stage in ("pretrain", "midtrain"):
  SNIPPETS[f"quickstart_{_stage}"] = _QUICKSTART.replace("STAGE", _stage)
# Host devices per measurement (the quickstart uses one per core, up to 2).
DEVICES = {"quickstart_pretrain": 2, "quickstart_midtrain": 2}


def worktree(ref: str) -> str:
  path = tempfile.mkdtemp(prefix="cwm_ref_")
  subprocess.run(["git", "worktree", "add", "--detach", "-q", path, ref], check=True)
  return path


def measure(tree: str, what: str, steps: int, env: dict | None = None) -> dict:
  """Runs snippet `what` in a fresh process on `tree`'s code (`env` added to ours)."""
  devices = DEVICES.get(what, 1)
  env = {**os.environ, "PYTHONPATH": tree,
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **(env or {})}
  out = subprocess.run([sys.executable, "-c", _ALLOCATOR + SNIPPETS[what], str(steps)], cwd=tree,
                       env=env, capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--ref", required=True, help="the other commit (e.g. HEAD~1, a hash)")
  ap.add_argument("--what", default="train_step", choices=sorted(SNIPPETS))
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--steps", type=int, default=20)
  args = ap.parse_args(argv)
  here = os.getcwd()
  ref_tree = worktree(args.ref)
  try:
    print(f"{args.what}: this tree ({here}) vs {args.ref} ({ref_tree}), {args.rounds} rounds")
    print(f"{'round':>5} | {'this tok/s':>11} | {'ref tok/s':>10} | ratio | loss this / ref"
          f" | page faults per step this / ref")
    ratios = []
    for r in range(args.rounds):
      # Alternate the order so warm caches and load drift favour neither side.
      order = [("this", here), ("ref", ref_tree)]
      if r % 2:
        order.reverse()
      got = {name: measure(tree, args.what, args.steps) for name, tree in order}
      ratio = got["this"]["tokens_per_s"] / got["ref"]["tokens_per_s"]
      ratios.append(ratio)
      print(f"{r:>5} | {got['this']['tokens_per_s']:>11,.0f} | {got['ref']['tokens_per_s']:>10,.0f} | "
            f"{ratio:.3f} | {got['this']['loss']:.6f} / {got['ref']['loss']:.6f} | "
            f"{got['this'].get('faults_per_step', 0):,.0f} / {got['ref'].get('faults_per_step', 0):,.0f}",
            flush=True)
    print(f"median ratio this/ref: {statistics.median(ratios):.3f}")
  finally:
    subprocess.run(["git", "worktree", "remove", "--force", ref_tree], check=False)


if __name__ == "__main__":
  main()
