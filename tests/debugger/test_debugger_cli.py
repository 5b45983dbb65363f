"""The debugger on a tiny randomly initialised model through the sampler, and the
command line: its sessions must run and report unparseable predictions clearly
(the model is untrained), and bad input must give one clear error."""

import io
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests.debugger.conftest import PROGRAMS

from cwm_jax.convert import save_orbax
from cwm_jax.debugger import cli
from cwm_jax.inference.loading import tokenizer_path_for
from cwm_jax.debugger.model import TraceModelError
from cwm_jax.debugger.sampler_model import SamplerTraceModel
from cwm_jax.debugger.session import DebuggerError, NeuralDebugger, PredictionError
from cwm_jax.debugger.shell import run_shell
from cwm_jax.model import get_preset, init_params, transformer
from cwm_jax.tokenizer import special_tokens as st
from cwm_jax.tokenizer.formats import encode_trace_prompt

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_LEN = 512
FRAME_TOKENS = 12


@pytest.fixture(scope="module")
def tiny():
  cfg = get_preset("tiny")
  return cfg, init_params(cfg, jax.random.key(0))


@pytest.fixture(scope="module")
def sampler_model(tiny, tokenizer):
  cfg, params = tiny
  return SamplerTraceModel.from_params(cfg, params, tokenizer, max_len=MAX_LEN,
                                       max_frame_tokens=FRAME_TOKENS)


def naive_greedy(cfg, params, prompt, n):
  """Reference: argmax of the full forward pass, one token at a time (no cache)."""
  forward = jax.jit(lambda p, t: transformer.forward(p, t, cfg))
  ids = list(prompt)
  for _ in range(n):
    padded = np.zeros((1, MAX_LEN), np.int32)  # right padding leaves causal logits alone
    padded[0, :len(ids)] = ids
    ids.append(int(jnp.argmax(forward(params, padded)[0, len(ids) - 1])))
  return ids[len(prompt):]


def test_sampler_frame_is_greedy_and_keeps_forced_tokens(tiny, tokenizer, sampler_model):
  cfg, params = tiny
  sp = tokenizer.special_ids
  prompt = encode_trace_prompt(tokenizer, "def main():  # << START_OF_TRACE\n    return 1\n")
  forced = [sp[st.RETURN_SEP], sp[st.ACTION_SEP]]
  ids = sampler_model.continue_frame(prompt, forced)
  assert ids[:2] == forced
  generated = ids[2:]
  assert 1 <= len(generated) <= FRAME_TOKENS
  assert len(generated) == FRAME_TOKENS or generated[-1] in sampler_model.stop_ids
  assert all(t not in sampler_model.stop_ids for t in generated[:-1])
  assert generated == naive_greedy(cfg, params, prompt + forced, len(generated))
  assert sampler_model.continue_frame(prompt, forced) == ids


def test_sampler_reports_a_full_cache(sampler_model, tokenizer):
  with pytest.raises(TraceModelError, match="no room for another frame"):
    sampler_model.continue_frame([tokenizer.bos_id] * MAX_LEN)


def test_session_on_a_random_model_never_crashes(sampler_model, tokenizer):
  debugger = NeuralDebugger(sampler_model, tokenizer, *PROGRAMS["loops"], name="prog.py")
  commands = [debugger.step, debugger.next, lambda: debugger.next(force=True), debugger.out,
              lambda: debugger.out(force=True), debugger.back, debugger.reset, debugger.print,
              debugger.cont, debugger.step]
  for command in commands:
    before = (debugger.state, debugger.trace_ids)
    try:
      state = command()
    except PredictionError as e:
      assert "predicted:" in str(e) or "no tokens" in str(e)
      assert (debugger.state, debugger.trace_ids) == before
    except DebuggerError:
      assert (debugger.state, debugger.trace_ids) == before
    else:
      assert state is not None


def test_shell_on_a_random_model(sampler_model, tokenizer):
  debugger = NeuralDebugger(sampler_model, tokenizer, *PROGRAMS["recursion"], name="fib.py")
  out = io.StringIO()
  run_shell(debugger, stdin=io.StringIO("s\nn\nr!\np\nb\nreset\nq\n"), stdout=out)
  lines = out.getvalue().splitlines()
  assert lines[0].startswith("Neural debugger:")
  # Every command answers with a stop (`> fib.py(...)`) or a `*** ` message.
  answers = out.getvalue().split("(ndb) ")[1:-1]
  assert len(answers) == 6
  for answer in answers:
    body = answer.split("\n", 1)[1]
    assert body.startswith(("*** ", "> ", "--")), answer


# ---------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny, tokenizer):
  root = tmp_path_factory.mktemp("cli")
  cfg, params = tiny
  save_orbax(params, cfg, str(root / "ckpt"))
  (root / "fib.py").write_text(PROGRAMS["recursion"][0])
  (root / "bad.py").write_text("def f(x):\n    return x +\n")
  return root


def run_main(argv, capsys):
  code = cli.main(argv, stdin=io.StringIO("q\n"), stdout=io.StringIO())
  return code, capsys.readouterr().err


def test_bad_input_gives_one_clear_error(files, capsys, tokenizer):
  ckpt = str(files / "ckpt")
  cases = [
      (["--source", str(files / "missing.py"), "--checkpoint", ckpt],
       "source file '.*missing.py' does not exist"),
      (["--source", str(files / "bad.py"), "--call", "f(1)", "--checkpoint", ckpt],
       r"bad.py is not valid Python \(line 2"),
      (["--source", str(files / "fib.py"), "--checkpoint", ckpt],
       "fib.py has no entry function: .*--call"),
      (["--source", str(files / "fib.py"), "--call", "fib(", "--checkpoint", ckpt],
       "the call 'fib\\(' is not a Python expression"),
      (["--source", str(files / "fib.py"), "--call", "fib(3)", "--checkpoint",
        str(files / "nope")], "--checkpoint '.*nope' is not a directory"),
      (["--source", str(files / "fib.py"), "--call", "fib(3)"], "give exactly one of"),
      (["--source", str(files / "fib.py"), "--call", "fib(3)", "--checkpoint", ckpt],
       "cannot tell the tokenizer .* pass --tokenizer"),
      (["--source", str(files / "fib.py"), "--call", "fib(3)", "--checkpoint", ckpt,
        "--tokenizer", str(files / "fib.py")], "is neither a tiktoken"),
  ]
  for argv, message in cases:
    code, err = run_main(argv, capsys)
    assert code == 2, argv
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err), (message, err)


def test_tokenizer_of_a_training_workdir(tmp_path):
  (tmp_path / "checkpoints" / "7").mkdir(parents=True)
  (tmp_path / "config.json").write_text(json.dumps({"data": {"tokenizer_path": "/t/sp.model"}}))
  for where in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "7"):
    assert tokenizer_path_for(str(where), None) == "/t/sp.model"


def test_command_line_session(files, tokenizer):
  """`python -m experiments.debugger` with a script on stdin, end to end."""
  script = "s\nn\nr!\np\nb\nreset\nfoo\nq\n"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.debugger", "--checkpoint", str(files / "ckpt"),
       "--tokenizer", tokenizer.path, "--source", str(files / "fib.py"), "--call",
       "fib(3)", "--max_len", str(MAX_LEN), "--max_frame_tokens", str(FRAME_TOKENS)],
      input=script, capture_output=True, text=True, cwd=REPO, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr
  assert "Traceback" not in proc.stderr
  out = proc.stdout
  assert out.startswith("Neural debugger:")
  for command in script.split():
    assert f"(ndb) {command}\n" in out
  assert "*** Unknown command 'foo'. Type help to list the commands." in out
