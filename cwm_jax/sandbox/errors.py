"""Errors raised by the sandbox (harness failures, never the program's own)."""


class SandboxError(RuntimeError):
  """The sandbox harness itself failed (bad request, runner crashed, ...)."""


class SandboxUnavailableError(SandboxError):
  """Isolation cannot be set up here (bubblewrap missing or not working)."""


INSTALL_HINT = (
    "Install bubblewrap with `apt-get install -y bubblewrap` (Debian/Ubuntu; "
    "`dnf install bubblewrap` on Fedora). Only for trusted code, "
    "SandboxConfig(executor='unsandboxed') runs WITHOUT any isolation.")
