"""`python -m experiments.generate` prints what the Sampler generates in process,
for an HF directory (tokenizer found in it) and a save_orbax directory, and fails
with one clear line on bad input."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from cwm_jax.convert import save_hf, save_orbax
from cwm_jax.inference import Sampler, SamplingConfig
from cwm_jax.inference.chat import chat_batch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPT = "def add(a, b):"
SAMPLE_RE = re.compile(r"=== sample (\d+)/(\d+) \(finish: (\w+), (\d+) tokens\) ===\n")


def run_cli(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  return subprocess.run([sys.executable, "-m", "experiments.generate", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)


def samples(stdout):
  """[(finish, n_tokens, body)] from the CLI's output."""
  parts = SAMPLE_RE.split(stdout)[1:]
  return [(parts[i + 2], int(parts[i + 3]), parts[i + 4].removesuffix("\n"))
          for i in range(0, len(parts), 5)]


@pytest.fixture(scope="module")
def dirs(model, tokenizer, tmp_path_factory):
  cfg, params = model
  hf = tmp_path_factory.mktemp("hf")
  save_hf(params, cfg, str(hf))
  shutil.copy(tokenizer.path, hf / "tokenizer.model")
  orbax = tmp_path_factory.mktemp("orbax") / "ckpt"
  save_orbax(params, cfg, str(orbax))
  return str(hf), str(orbax)


def test_hf_dir_sampled_chat_matches_in_process(model, tokenizer, dirs):
  cfg, params = model
  proc = run_cli("--hf_dir", dirs[0], "--prompt", PROMPT, "--chat", "--max_new_tokens", "12",
                 "--temperature", "0.8", "--top_k", "40", "--seed", "3", "--num_samples", "2",
                 "--max_len", "64")
  assert proc.returncode == 0, proc.stderr
  got = samples(proc.stdout)
  ref = chat_batch(Sampler(cfg, params, max_len=64), tokenizer,
                   [[{"role": "user", "content": PROMPT}]] * 2, max_new_tokens=12,
                   sampling=SamplingConfig(temperature=0.8, top_k=40), seed=3)
  assert [(r.finish_reason, len(r.tokens), r.text) for r in ref] == got
  assert got[0] != got[1]  # two samples, two keys


def test_orbax_checkpoint_greedy_matches_in_process(model, tokenizer, dirs):
  cfg, params = model
  proc = run_cli("--checkpoint", dirs[1], "--tokenizer", tokenizer.path, "--prompt", PROMPT,
                 "--max_new_tokens", "10", "--max_len", "64")
  assert proc.returncode == 0, proc.stderr
  ref = Sampler(cfg, params, max_len=64).generate(
      [tokenizer.encode(PROMPT, bos=True)], max_new_tokens=10, stop_token_ids=tokenizer.stop_ids,
      tokenizer=tokenizer)
  assert samples(proc.stdout) == [(ref.finish_reasons[0], len(ref.tokens[0]), ref.texts[0])]


def test_errors(dirs):
  proc = run_cli("--checkpoint", dirs[1], "--prompt", PROMPT)
  assert proc.returncode == 1
  assert "error: cannot tell the tokenizer" in proc.stderr and "--tokenizer" in proc.stderr
  proc = run_cli("--checkpoint", dirs[1], "--hf_dir", dirs[0], "--prompt", PROMPT)
  assert proc.returncode != 0 and "exactly one of --checkpoint and --hf_dir" in proc.stderr
  proc = run_cli("--hf_dir", dirs[0], "--prompt", PROMPT * 40, "--max_len", "32")
  assert proc.returncode == 1 and "error: prompts[0] has" in proc.stderr
