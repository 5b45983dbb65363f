"""Request validation, config checks, result parsing, executor selection (mostly no sandbox)."""

import logging
import struct
from pathlib import Path

import pytest

from cwm_jax.sandbox import (ExecResult, Sandbox, SandboxConfig, SandboxPool,
                             SandboxUnavailableError, make_job)
from cwm_jax.sandbox.seccomp import unix_socket_filter

PACKAGE = Path(__file__).resolve().parents[2] / "cwm_jax" / "sandbox"


@pytest.mark.parametrize("path", ["../../x", "../x", "a/../../x", "a/../b", "/etc/passwd", "",
                                  ".", "a/\0b"])
def test_file_paths_that_could_escape_are_refused(path):
  with pytest.raises(ValueError, match="files"):
    make_job("python", "print(1)", SandboxConfig(), files={path: "x"})


def test_good_file_paths_are_normalised():
  job = make_job("python", "", SandboxConfig(), files={"a//b/./c.txt": "x", "d.bin": b"\0"})
  assert job.files == (("a/b/c.txt", "x"), ("d.bin", b"\0"))


@pytest.mark.parametrize("kwargs, match", [
    ({"files": {"main.py": "x"}}, "reserved"),
    ({"files": {"a": 3}}, "str or bytes"),
    ({"env": {"A=B": "x"}}, "env"),
    ({"env": {"A": 1}}, "env"),
    ({"args": "abc"}, "args"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"memory_mb": -1}, "memory_mb"),
    ({"stdin": 3}, "stdin"),
])
def test_bad_requests_name_the_argument(kwargs, match):
  with pytest.raises(ValueError, match=match):
    make_job("python", "print(1)", SandboxConfig(), **kwargs)


@pytest.mark.parametrize("kwargs", [{"executor": "docker"}, {"timeout_s": 0},
                                    {"memory_mb": -5}, {"cpu_s": 0}, {"hash_seed": -1}])
def test_bad_configs_are_refused(kwargs):
  with pytest.raises(ValueError, match="SandboxConfig"):
    SandboxConfig(**kwargs)


def test_cpu_limit_follows_the_timeout():
  assert SandboxConfig().cpu_limit_s(2.5) == 4
  assert SandboxConfig(cpu_s=7).cpu_limit_s(2.5) == 7


def _reply(**overrides):
  reply = dict(stdout="o", stderr="", exit_code=0, signal=None, timed_out=False,
               memory_exceeded=False, output_truncated=False, wall_s=0.1, cpu_s=0.1,
               max_rss_mb=10.0)
  reply.update(overrides)
  return reply


def test_result_from_reply_and_back():
  r = ExecResult.from_reply(_reply(payload='{"a": 1}', payload_truncated=False),
                            executor="bwrap", want_payload=True)
  assert r.ok and r.payload == {"a": 1} and r.to_json()["stdout"] == "o"
  with pytest.raises(Exception):
    r.stdout = "changed"  # frozen


@pytest.mark.parametrize("bad", [{"exit_code": "0"}, {"timed_out": 1}, {"stdout": None},
                                 {"wall_s": "fast"}])
def test_malformed_replies_are_rejected(bad):
  with pytest.raises(ValueError, match="runner reply"):
    ExecResult.from_reply(_reply(**bad), executor="bwrap", want_payload=False)


def test_payload_errors():
  too_big = ExecResult.from_reply(_reply(payload="{", payload_truncated=True),
                                  executor="bwrap", want_payload=True)
  assert too_big.payload is None and "payload_limit_bytes" in too_big.payload_error
  failure = ExecResult.failure("runner died", executor="bwrap")
  assert not failure.ok and failure.exit_code is None and failure.sandbox_error == "runner died"


@pytest.mark.parametrize("make", [Sandbox, lambda config: SandboxPool(1, config)])
def test_missing_bubblewrap_is_a_clear_refusal(make):
  with pytest.raises(SandboxUnavailableError, match="apt-get install -y bubblewrap"):
    make(SandboxConfig(bwrap="/nonexistent/bwrap"))


def test_too_old_bubblewrap_is_refused(tmp_path):
  fake = tmp_path / "bwrap"
  fake.write_text("#!/bin/sh\necho 'usage: bwrap --unshare-all --ro-bind SRC DEST'\n")
  fake.chmod(0o755)
  with pytest.raises(SandboxUnavailableError, match="too old.*--as-pid-1"):
    Sandbox(SandboxConfig(bwrap=str(fake)))


def test_unsandboxed_executor_warns_every_time(caplog):
  config = SandboxConfig(executor="unsandboxed")
  with caplog.at_level(logging.WARNING, logger="cwm_jax.sandbox"):
    Sandbox(config)
    SandboxPool(1, config).close()
  warnings = [r for r in caplog.records if "UNSANDBOXED" in r.getMessage()]
  assert len(warnings) == 2


def test_seccomp_filter_shape():
  program = unix_socket_filter("x86_64")
  assert len(program) % 8 == 0 and len(program) // 8 < 64
  code, _, _, k = struct.unpack("<HBBI", program[-8:])
  assert (code, k) == (0x06, 0x7FFF0000)  # the last instruction allows
  assert unix_socket_filter("sparc") is None


def test_results_never_travel_as_pickle():
  sources = "\n".join(p.read_text() for p in PACKAGE.glob("*.py"))
  assert "import pickle" not in sources and "marshal" not in sources
