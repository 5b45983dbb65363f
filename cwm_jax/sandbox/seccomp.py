"""A small seccomp filter (classic BPF) that bubblewrap installs in the sandbox.

The network namespace cuts TCP/UDP and abstract Unix sockets, but not Unix sockets
bound on the host *filesystem*: with `/` bound read-only, a world-writable socket
(say a D-Bus or a service socket outside /run and /tmp) would still accept connect().
So the filter refuses socket(AF_UNIX, ...) and socketpair() of anything but
SOCK_STREAM (a datagram pair could sendto() a path), plus io_uring (it can create
sockets behind seccomp's back) and foreign ABIs (i386, x32). Stream socketpair(),
which multiprocessing.Pipe and asyncio use, keeps working. Refused calls fail with
EACCES. Turn it off with SandboxConfig(unix_sockets=True).
"""

from __future__ import annotations

import errno
import platform
import socket
import struct

# machine -> (AUDIT_ARCH_*, __NR_socket, __NR_socketpair, __NR_io_uring_setup)
_ARCHES = {
    "x86_64": (0xC000003E, 41, 53, 425),
    "aarch64": (0xC00000B7, 198, 199, 425),
}
_LD_W_ABS, _AND_K, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x54, 0x15, 0x35, 0x06
_RET_ALLOW = 0x7FFF0000
_RET_DENY = 0x00050000 | errno.EACCES  # SECCOMP_RET_ERRNO
_X32_SYSCALL_BIT = 0x40000000
# Offsets in struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6];} (little-endian).
_NR, _ARCH, _ARG0, _ARG1 = 0, 4, 16, 24


def _assemble(program: list[tuple]) -> bytes:
  """(label?, op, k, jump-true label, jump-false label) rows -> struct sock_filter[]."""
  where = {row[0]: i for i, row in enumerate(program) if row[0]}
  out = b""
  for i, (_, op, k, jt, jf) in enumerate(program):
    offset = lambda label: 0 if label is None else where[label] - i - 1  # noqa: E731
    out += struct.pack("<HBBI", op, offset(jt), offset(jf), k)
  return out


def unix_socket_filter(machine: str | None = None) -> bytes | None:
  """The compiled filter for this machine, or None where we do not know its syscalls."""
  arch = _ARCHES.get(machine or platform.machine())
  if arch is None:
    return None
  audit_arch, nr_socket, nr_socketpair, nr_io_uring_setup = arch
  return _assemble([
      (None, _LD_W_ABS, _ARCH, None, None),
      (None, _JEQ_K, audit_arch, None, "deny"),
      (None, _LD_W_ABS, _NR, None, None),
      (None, _JGE_K, _X32_SYSCALL_BIT, "deny", None),
      (None, _JEQ_K, nr_io_uring_setup, "deny", None),
      (None, _JEQ_K, nr_socket, "socket", None),
      (None, _JEQ_K, nr_socketpair, "socketpair", "allow"),
      ("socket", _LD_W_ABS, _ARG0, None, None),
      (None, _JEQ_K, socket.AF_UNIX, "deny", "allow"),
      ("socketpair", _LD_W_ABS, _ARG1, None, None),
      (None, _AND_K, 0xF, None, None),  # drop SOCK_NONBLOCK / SOCK_CLOEXEC
      (None, _JEQ_K, socket.SOCK_STREAM, "allow", "deny"),
      ("deny", _RET_K, _RET_DENY, None, None),
      ("allow", _RET_K, _RET_ALLOW, None, None),
  ])
