"""HF safetensors checkpoints <-> our stacked parameter tree, one tensor at a time.

Names and layouts (torch Linear weights are [out, in]; ours put inputs first):

    model.embed_tokens.weight                     (V, D)    embed     [V, D]
    model.layers.{i}.input_layernorm.weight       (D,)      attn_norm [i]
    model.layers.{i}.self_attn.q_proj.weight      (N*H, D)  q[i] = W.T -> [D, N, H]
    model.layers.{i}.self_attn.{k,v}_proj.weight  (K*H, D)  k/v[i]    -> [D, K, H]
    model.layers.{i}.self_attn.o_proj.weight      (D, N*H)  o[i] = W.T -> [N, H, D]
    model.layers.{i}.post_attention_layernorm.weight (D,)   mlp_norm [i]
    model.layers.{i}.mlp.{gate,up}_proj.weight    (F, D)    gate/up[i] = W.T
    model.layers.{i}.mlp.down_proj.weight         (D, F)    down[i] = W.T
    model.norm.weight                             (D,)      final_norm
    lm_head.weight                                (V, D)    lm_head = W.T

Memory. Reading validates every file's header first (names, shapes, dtypes;
nothing is read on a mismatch), then preallocates each stacked [L, ...] array
once and copies tensors into it slice by slice, so the peak is one copy of the
model plus one tensor. With `scratch_dir` the stacked arrays are `np.memmap`
files there instead, so resident memory stays bounded by the page cache: that
is the mode for converting the 32B model (~65 GB in bf16) on a smaller host.
Writing streams too: each shard's header is computed from shapes alone, then
tensors are produced, transposed and written one at a time.

bfloat16. safetensors' numpy backend returns bf16 only once `ml_dtypes` has
registered the dtype (imported here); should an older safetensors still fail,
the tensor's bytes are read directly from the file and viewed as
`ml_dtypes.bfloat16`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import struct
import sys
from typing import Iterator, Optional, Union

import ml_dtypes  # noqa: F401  (registers "bfloat16" with numpy for safetensors)
import numpy as np
from safetensors import SafetensorError, safe_open

from cwm_jax.model.config import DTYPES, ModelConfig
from cwm_jax.model.params import check_params, param_specs

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_ST_DTYPES = {"F32": np.dtype(np.float32), "BF16": np.dtype(ml_dtypes.bfloat16),
              "F16": np.dtype(np.float16)}
_ST_NAMES = {str(v): k for k, v in _ST_DTYPES.items()}

_LAYER_TENSORS = {   # our name -> HF name under model.layers.{i}.
    "attn_norm": "input_layernorm.weight",
    "q": "self_attn.q_proj.weight",
    "k": "self_attn.k_proj.weight",
    "v": "self_attn.v_proj.weight",
    "o": "self_attn.o_proj.weight",
    "mlp_norm": "post_attention_layernorm.weight",
    "gate": "mlp.gate_proj.weight",
    "up": "mlp.up_proj.weight",
    "down": "mlp.down_proj.weight",
}
_TOP_TENSORS = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight",
                "lm_head": "lm_head.weight"}
_LINEAR = {"q", "k", "v", "o", "gate", "up", "down", "lm_head"}
# Non-persistent buffers some exporters still write; they carry no weights.
_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


@dataclasses.dataclass(frozen=True)
class TensorMap:
  """One HF tensor and the slice of our tree it fills."""
  hf_name: str
  key: tuple            # ("embed",) or ("layers", "q")
  layer: Optional[int]  # index into the stacked L axis, None for top-level
  hf_shape: tuple
  our_shape: tuple      # the slice's shape (without L)

  @property
  def linear(self) -> bool:
    return self.key[-1] in _LINEAR

  def to_ours(self, w):
    return w.T.reshape(self.our_shape) if self.linear else w

  def to_hf(self, x):
    if self.linear:
      return x.reshape(self.hf_shape[1], self.hf_shape[0]).T
    return x


def tensor_maps(cfg: ModelConfig) -> list[TensorMap]:
  """Every HF tensor of `cfg`, in checkpoint order (embed, layer by layer, head)."""
  specs = param_specs(cfg)
  D, N, K, H = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  F, V = cfg.mlp_dim, cfg.vocab_size
  hf_shapes = {"attn_norm": (D,), "q": (N * H, D), "k": (K * H, D), "v": (K * H, D),
               "o": (D, N * H), "mlp_norm": (D,), "gate": (F, D), "up": (F, D),
               "down": (D, F), "embed": (V, D), "final_norm": (D,), "lm_head": (V, D)}
  maps = [TensorMap(_TOP_TENSORS["embed"], ("embed",), None, hf_shapes["embed"],
                    specs["embed"].shape)]
  for i in range(cfg.n_layers):
    for name, suffix in _LAYER_TENSORS.items():
      maps.append(TensorMap(f"model.layers.{i}.{suffix}", ("layers", name), i,
                            hf_shapes[name], specs["layers"][name].shape[1:]))
  for name in ("final_norm", "lm_head"):
    maps.append(TensorMap(_TOP_TENSORS[name], (name,), None, hf_shapes[name],
                          specs[name].shape))
  return maps


def _leaf(params: dict, key: tuple):
  return params[key[0]] if len(key) == 1 else params["layers"][key[1]]


# ----------------------------------------------------------------------------- reading


def checkpoint_files(path: str) -> list[str]:
  """The safetensors files of an HF checkpoint directory (sharded or not)."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"HF checkpoint directory {path!r} does not exist.")
  index = os.path.join(path, INDEX_FILE)
  if os.path.exists(index):
    try:
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
      names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
      raise ValueError(f"{index}: not a valid safetensors index ({type(e).__name__}: {e}).") from None
    files = [os.path.join(path, n) for n in names]
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
      raise FileNotFoundError(f"{index} lists shard(s) that do not exist: {missing}.")
    return files
  single = os.path.join(path, SINGLE_FILE)
  if os.path.exists(single):
    return [single]
  hint = " (pytorch_model.bin checkpoints are not supported)" if any(
      n.endswith(".bin") for n in os.listdir(path)) else ""
  raise FileNotFoundError(f"{path!r} holds neither {SINGLE_FILE} nor {INDEX_FILE}{hint}.")


def _open(file: str):
  try:
    return safe_open(file, framework="numpy")
  except (SafetensorError, OSError) as e:
    raise ValueError(f"{file}: cannot read safetensors file ({e}); it may be truncated "
                     "or corrupt.") from None


def _scan_headers(path: str, files: list[str], cfg: ModelConfig) -> tuple[dict, dict]:
  """{hf_name: (file, st_dtype)} after checking names and shapes against `cfg`."""
  expected = {m.hf_name: m for m in tensor_maps(cfg)}
  found, problems = {}, []
  for file in files:
    with _open(file) as f:
      for name in f.keys():
        if _IGNORED.fullmatch(name):
          continue
        if name in found:
          problems.append(f"{name} appears in both {found[name][0]} and {file}")
          continue
        if name not in expected:
          problems.append(f"unexpected tensor {name} in {file}")
          continue
        sl = f.get_slice(name)
        shape, st_dtype = tuple(sl.get_shape()), sl.get_dtype()
        if shape != expected[name].hf_shape:
          problems.append(f"{name} in {file} has shape {shape}, expected "
                          f"{expected[name].hf_shape} from config.json")
        if st_dtype not in _ST_DTYPES:
          problems.append(f"{name} in {file} has dtype {st_dtype}, expected one of "
                          f"{sorted(_ST_DTYPES)}")
        found[name] = (file, st_dtype)
  missing = [n for n in expected if n not in found]
  if missing:
    shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    problems.append(f"missing tensor(s) {shown}")
  if problems:
    raise ValueError(f"HF checkpoint {path!r} does not match its config.json: "
                     + "; ".join(problems) + ".")
  return found, expected


def _raw_tensor(file: str, name: str) -> np.ndarray:
  """A tensor read straight from the file's bytes (for dtypes numpy lacks)."""
  with open(file, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    entry = json.loads(f.read(n))[name]
    begin, end = entry["data_offsets"]
    f.seek(8 + n + begin)
    data = f.read(end - begin)
  if len(data) != end - begin:
    raise ValueError(f"{file}: tensor {name} is truncated.")
  return np.frombuffer(data, _ST_DTYPES[entry["dtype"]]).reshape(entry["shape"])


def _get(f, file: str, name: str) -> np.ndarray:
  try:
    return f.get_tensor(name)
  except TypeError:   # numpy does not know the dtype (old safetensors + bf16)
    return _raw_tensor(file, name)
  except SafetensorError as e:
    raise ValueError(f"{file}: cannot read tensor {name} ({e}).") from None


def _allocate(shape, dtype, scratch_dir: Optional[str], name: str) -> np.ndarray:
  if scratch_dir is None:
    return np.empty(shape, dtype)
  os.makedirs(scratch_dir, exist_ok=True)
  return np.memmap(os.path.join(scratch_dir, f"{name}.bin"), dtype=dtype, mode="w+",
                   shape=shape)


def read_hf_params(path: str, cfg: ModelConfig, dtype: Optional[str] = None,
                   scratch_dir: Optional[str] = None) -> dict:
  """Our parameter tree (host numpy arrays) from the safetensors files in `path`.

  `dtype` None keeps the checkpoint's dtype (mixed dtypes: `cfg.param_dtype`).
  With `scratch_dir` the arrays are memory-mapped files there, named after the
  leaves (use a fresh directory; see the module doc).
  """
  if dtype is not None and dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r}: expected None (keep the checkpoint's) or one of {DTYPES}.")
  files = checkpoint_files(path)
  found, expected = _scan_headers(path, files, cfg)
  if dtype is None:
    dtypes = {st for _, st in found.values()}
    dtype = str(_ST_DTYPES[dtypes.pop()]) if len(dtypes) == 1 else cfg.param_dtype
  np_dtype = np.dtype(dtype)
  specs = param_specs(cfg)
  params = {name: _allocate(spec.shape, np_dtype, scratch_dir, name)
            for name, spec in specs.items() if name != "layers"}
  params["layers"] = {name: _allocate(spec.shape, np_dtype, scratch_dir, f"layers_{name}")
                      for name, spec in specs["layers"].items()}
  for file in files:
    with _open(file) as f:
      for name in f.keys():
        if name not in expected:
          continue
        m = expected[name]
        dest = _leaf(params, m.key)
        dest[... if m.layer is None else m.layer] = m.to_ours(_get(f, file, name))
  return params


# ----------------------------------------------------------------------------- writing

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: Union[int, str]) -> int:
  """Bytes from an int or a string like "5GB" (decimal) / "512MiB" (binary)."""
  if isinstance(size, int) and not isinstance(size, bool):
    value = size
  else:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(size))
    if not match or match.group(2).upper() not in _UNITS:
      raise ValueError(f"max_shard_size={size!r}: expected bytes or e.g. '5GB', '500MiB'.")
    value = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
  if value <= 0:
    raise ValueError(f"max_shard_size={size!r}: expected a positive size.")
  return value


def _hf_tensor(params: dict, m: TensorMap, dtype: Optional[np.dtype]) -> np.ndarray:
  leaf = _leaf(params, m.key)
  x = np.asarray(leaf if m.layer is None else leaf[m.layer])
  if dtype is not None and x.dtype != dtype:
    x = x.astype(dtype)
  return np.ascontiguousarray(m.to_hf(x))


def _leaf_dtype(params: dict, m: TensorMap, dtype: Optional[np.dtype]) -> np.dtype:
  d = np.dtype(dtype if dtype is not None else _leaf(params, m.key).dtype)
  if str(d) not in _ST_NAMES:
    raise ValueError(f"cannot write {m.hf_name} as {d}; expected one of {sorted(_ST_NAMES)}.")
  return d


def _plan_shards(maps, dtypes, max_bytes: int) -> list[list[int]]:
  shards, current, size = [], [], 0
  for i, m in enumerate(maps):
    n = math.prod(m.hf_shape) * dtypes[i].itemsize
    if current and size + n > max_bytes:
      shards.append(current)
      current, size = [], 0
    current.append(i)
    size += n
  shards.append(current)
  return shards


def _write_safetensors(file: str, entries: list, tensors: Iterator[np.ndarray]) -> None:
  """Writes one safetensors file: header from (name, shape, dtype) entries, then
  the tensors yielded by `tensors`, one at a time."""
  header, offset = {"__metadata__": {"format": "pt"}}, 0
  for name, shape, dtype in entries:
    n = math.prod(shape) * dtype.itemsize
    header[name] = {"dtype": _ST_NAMES[str(dtype)], "shape": list(shape),
                    "data_offsets": [offset, offset + n]}
    offset += n
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-(8 + len(blob)) % 8)   # data starts 8-byte aligned
  with open(file, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for (name, shape, dtype), x in zip(entries, tensors):
      if x.shape != tuple(shape) or x.dtype != dtype:
        raise AssertionError(f"{name}: produced {x.shape} {x.dtype}, planned {shape} {dtype}")
      f.write(x.reshape(-1).view(np.uint8).data)


def write_hf_weights(params: dict, cfg: ModelConfig, path: str,
                     max_shard_size: Union[int, str] = "5GB",
                     dtype: Optional[str] = None) -> dict:
  """Writes `params` as HF safetensors shards (+ index when more than one).

  Returns {"tensors", "params", "bytes", "files"}. dtype None keeps each leaf's dtype.
  """
  if sys.byteorder != "little":
    raise RuntimeError("safetensors is little-endian; writing from a big-endian host is not supported.")
  check_params(cfg, params)
  np_dtype = None if dtype is None else np.dtype(dtype)
  maps = tensor_maps(cfg)
  dtypes = [_leaf_dtype(params, m, np_dtype) for m in maps]
  shards = _plan_shards(maps, dtypes, parse_size(max_shard_size))
  os.makedirs(path, exist_ok=True)
  names = ([SINGLE_FILE] if len(shards) == 1 else
           [f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors" for j in range(len(shards))])
  weight_map, total = {}, 0
  for fname, idx in zip(names, shards):
    entries = [(maps[i].hf_name, maps[i].hf_shape, dtypes[i]) for i in idx]
    _write_safetensors(os.path.join(path, fname), entries,
                       (_hf_tensor(params, maps[i], np_dtype) for i in idx))
    for i in idx:
      weight_map[maps[i].hf_name] = fname
      total += math.prod(maps[i].hf_shape) * dtypes[i].itemsize
  n_params = sum(math.prod(m.hf_shape) for m in maps)
  if len(shards) > 1:
    with open(os.path.join(path, INDEX_FILE), "w") as f:
      json.dump({"metadata": {"total_parameters": n_params, "total_size": total},
                 "weight_map": weight_map}, f, indent=2, sort_keys=True)
  return {"tensors": len(maps), "params": n_params, "bytes": total,
          "files": names + ([INDEX_FILE] if len(shards) > 1 else [])}
