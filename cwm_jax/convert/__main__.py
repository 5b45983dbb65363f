"""Command line conversion between HF CWM checkpoints and Orbax.

    python -m cwm_jax.convert hf-to-orbax --hf_dir /ckpt/cwm --out /ckpt/cwm_orbax \
        [--dtype bfloat16] [--scratch_dir /big_disk/tmp]
    python -m cwm_jax.convert orbax-to-hf --orbax_dir /ckpt/cwm_orbax --out /ckpt/cwm_hf \
        [--dtype bfloat16] [--max_shard_size 5GB]

HF bookkeeping keys of config.json (token ids, ...) travel in
`<orbax dir>/hf_bookkeeping.json`. Errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time

HF_BOOKKEEPING_FILE = "hf_bookkeeping.json"


def _summary(params) -> tuple[int, int, int, str]:
  import jax
  leaves = jax.tree.leaves(params)
  n = sum(math.prod(x.shape) for x in leaves)
  nbytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves)
  return len(leaves), n, nbytes, str(leaves[0].dtype)


def hf_to_orbax(args) -> str:
  from cwm_jax import convert
  from cwm_jax.convert.hf_weights import tensor_maps
  start = time.time()
  hf_json = convert.read_hf_config_json(args.hf_dir)
  scratch = None if args.scratch_dir is None else tempfile.mkdtemp(dir=args.scratch_dir)
  try:
    config, params = convert.load_hf_params(args.hf_dir, dtype=args.dtype, scratch_dir=scratch)
    convert.save_orbax(params, config, args.out, overwrite=args.overwrite)
    _, n, nbytes, dtype = _summary(params)
    del params
  finally:
    if scratch is not None:
      shutil.rmtree(scratch, ignore_errors=True)
  with open(os.path.join(args.out, HF_BOOKKEEPING_FILE), "w") as f:
    json.dump(convert.bookkeeping(hf_json), f, indent=2, sort_keys=True)
  return (f"hf-to-orbax: read {len(tensor_maps(config))} tensors from {args.hf_dir}, wrote "
          f"{args.out}: {n:,} params, {nbytes:,} bytes ({dtype}), "
          f"{config.n_layers} layers, in {time.time() - start:.1f} s")


def orbax_to_hf(args) -> str:
  from cwm_jax import convert
  start = time.time()
  config, params = convert.load_orbax(args.orbax_dir, dtype=args.dtype)
  extra_file = os.path.join(args.orbax_dir, HF_BOOKKEEPING_FILE)
  extra = None
  if os.path.exists(extra_file):
    with open(extra_file) as f:
      extra = json.load(f)
  stats = convert.save_hf(params, config, args.out, max_shard_size=args.max_shard_size,
                          hf_extra=extra, overwrite=args.overwrite)
  shards = sum(f.endswith(".safetensors") for f in stats["files"])
  return (f"orbax-to-hf: read {args.orbax_dir}, wrote {stats['tensors']} tensors in {shards} "
          f"safetensors file(s) to {args.out}: {stats['params']:,} params, "
          f"{stats['bytes']:,} bytes ({config.param_dtype}), in {time.time() - start:.1f} s")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m cwm_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  a = sub.add_parser("hf-to-orbax", help="HF safetensors checkpoint -> Orbax checkpoint")
  a.add_argument("--hf_dir", required=True)
  a.add_argument("--out", required=True)
  a.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                 help="cast the weights (default: keep the checkpoint's dtype)")
  a.add_argument("--scratch_dir", default=None,
                 help="memory-map the stacked arrays here (models larger than RAM)")
  a.add_argument("--overwrite", action="store_true")
  a.set_defaults(fn=hf_to_orbax)
  b = sub.add_parser("orbax-to-hf", help="Orbax checkpoint -> HF safetensors checkpoint")
  b.add_argument("--orbax_dir", required=True)
  b.add_argument("--out", required=True)
  b.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
  b.add_argument("--max_shard_size", default="5GB")
  b.add_argument("--overwrite", action="store_true")
  b.set_defaults(fn=orbax_to_hf)
  args = parser.parse_args(argv)
  try:
    print(args.fn(args))
  except (OSError, ValueError, TypeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
