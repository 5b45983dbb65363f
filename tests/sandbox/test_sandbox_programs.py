"""Ordinary programs behave inside the sandbox as they would under `python main.py`/bash."""

import shutil
import sys

import pytest

from cwm_jax.sandbox import RESULT_FD, Sandbox, SandboxConfig, SandboxPool

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None,
                                reason="bubblewrap missing: apt-get install -y bubblewrap")

CONFIG = SandboxConfig(timeout_s=5, memory_mb=512)


@pytest.fixture(scope="module", params=["fresh", "pool", "exec-python", "unsandboxed"])
def box(request):
  if request.param == "fresh":
    yield Sandbox(CONFIG)
  elif request.param == "unsandboxed":
    yield Sandbox(SandboxConfig(executor="unsandboxed", timeout_s=5, memory_mb=512))
  else:
    config = CONFIG if request.param == "pool" else SandboxConfig(timeout_s=5, fork_python=False)
    with SandboxPool(1, config) as pool:
      yield pool


@pytest.mark.parametrize("stdin", ["hello\nworld\n", b"\xffbytes\n", "x" * (1 << 20)])
def test_stdin_round_trip(box, stdin):
  r = box.run_python("import sys\nsys.stdout.buffer.write(sys.stdin.buffer.read())", stdin=stdin)
  assert r.ok, r.stderr
  expected = stdin if isinstance(stdin, bytes) else stdin.encode()
  assert r.stdout == expected.decode("utf-8", "replace")


def test_input_and_print(box):
  r = box.run_python("a = int(input())\nb = int(input())\nprint(a + b)", stdin="2\n40\n")
  assert r.ok and r.stdout == "42\n" and r.stderr == ""


def test_files_are_readable_and_importable(box):
  files = {"data/numbers.txt": "1 2 3\n", "helper.py": "def double(x):\n    return 2 * x\n",
           "blob.bin": bytes(range(256))}
  code = """
import helper
nums = list(map(int, open("data/numbers.txt").read().split()))
print([helper.double(n) for n in nums], len(open("blob.bin", "rb").read()))
"""
  r = box.run_python(code, files=files)
  assert r.ok, r.stderr
  assert r.stdout == "[2, 4, 6] 256\n"


def test_work_dir_is_writable_and_fresh(box):
  r = box.run_python("import os\nopen('out.txt', 'w').write('a')\nos.makedirs('d/e')\n"
                     "print(sorted(os.listdir('.')), open('out.txt').read())")
  assert r.ok and r.stdout == "['d', 'main.py', 'out.txt'] a\n", r.stderr
  r = box.run_python("import os\nprint(sorted(os.listdir('.')))")
  assert r.stdout == "['main.py']\n"


@pytest.mark.parametrize("code, status, stderr", [
    ("import sys\nsys.exit(3)", 3, ""),
    ("exit('bye')", 1, "bye\n"),
    ("import os\nos._exit(5)", 5, ""),
    ("raise SystemExit", 0, ""),
])
def test_exit_codes(box, code, status, stderr):
  r = box.run_python(code)
  assert (r.exit_code, r.stderr, r.signal, r.timed_out) == (status, stderr, None, False)


def test_exception_gives_exit_1_and_a_clean_traceback(box):
  r = box.run_python("def f():\n    raise ValueError('boom')\n\nf()")
  assert r.exit_code == 1 and not r.ok
  lines = r.stderr.splitlines()
  assert lines[0] == "Traceback (most recent call last):"
  assert lines[-1] == "ValueError: boom"
  assert 'main.py", line 4, in <module>' in r.stderr
  assert "runner" not in r.stderr and "<string>" not in r.stderr
  r = box.run_python("x = (")
  assert r.exit_code == 1 and "SyntaxError" in r.stderr


def test_main_module_semantics(box):
  code = """
import os, sys
if __name__ == "__main__":
    print(sys.argv, os.path.basename(__file__), os.getcwd() == os.path.dirname(__file__))
"""
  r = box.run_python(code, args=["a", "b c"])
  assert r.ok, r.stderr
  assert r.stdout == "['main.py', 'a', 'b c'] main.py True\n"


def test_environment_is_clean_and_extendable(box, monkeypatch):
  monkeypatch.setenv("CWM_HOST_ONLY", "leak")
  r = box.run_python("import os\nprint(os.environ.get('CWM_HOST_ONLY'), os.environ['MINE'])",
                     env={"MINE": "yes"})
  assert r.stdout == "None yes\n"


def test_bash_pipelines_args_and_exit_code(box):
  r = box.run_bash("echo hello | tr a-z A-Z | rev\necho \"$0:$1:$2\"\ncat in.txt | wc -l\nexit 7",
                   args=["x", "y z"], files={"in.txt": "1\n2\n3\n"})
  assert (r.exit_code, r.stdout) == (7, "OLLEH\nbash:x:y z\n3\n")
  r = box.run_bash("read line; echo \"got $line\" >&2", stdin="ping\n")
  assert r.ok and r.stderr == "got ping\n"


def test_json_payload_is_separate_from_stdout(box):
  code = f"""
import json, os
print("noise on stdout")
assert os.environ["CWM_RESULT_FD"] == "{RESULT_FD}"
with open({RESULT_FD}, "w") as f:
    json.dump({{"trace": [1, 2, {{"x": None}}]}}, f)
"""
  r = box.run_python_json(code)
  assert r.ok, r.stderr
  assert r.payload == {"trace": [1, 2, {"x": None}]} and r.payload_error is None
  assert r.stdout == "noise on stdout\n"
  r = box.run_python_json("print('no payload')")
  assert r.payload is None and "no payload" in r.payload_error
  r = box.run_python_json(f"open({RESULT_FD}, 'w').write('{{not json')")
  assert r.payload is None and "not valid JSON" in r.payload_error


def test_threads_atexit_and_subprocesses(box):
  code = """
import atexit, subprocess, sys, threading
atexit.register(lambda: print("atexit"))
ready = threading.Event()  # ordered by an event, not a sleep: no race under load
threading.Thread(target=lambda: (ready.wait(), print("thread"))).start()
print(subprocess.run([sys.executable, "-c", "print(1 + 1)"], capture_output=True, text=True).stdout.strip())
ready.set()
"""
  r = box.run_python(code)
  assert r.ok, r.stderr
  assert r.stdout == "2\nthread\natexit\n"


def test_hash_seed_is_fixed(box):
  first = box.run_python("print(hash('cwm'), list({'a', 'b', 'c', 'd'}))").stdout
  assert first and box.run_python("print(hash('cwm'), list({'a', 'b', 'c', 'd'}))").stdout == first


def test_non_utf8_output_is_replaced(box):
  r = box.run_python("import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe')\nprint('\\u00e9', file=sys.stderr)")
  assert r.stdout == "ok \ufffd\ufffd" and r.stderr == "\u00e9\n"


def test_times_are_reported(box):
  r = box.run_python("x = 0\nfor i in range(10**6):\n    x += i")
  assert r.ok and 0 < r.wall_s < 5 and r.cpu_s > 0 and r.max_rss_mb > 1


def test_runs_on_this_python_version(box):
  r = box.run_python("import sys\nprint(sys.version_info[:2])")
  assert r.stdout == f"{tuple(sys.version_info[:2])}\n"
