"""pass@k, the unbiased estimator of Chen et al. (2021) used by HumanEval and MBPP.

With n samples of a task of which c pass, pass@k = 1 - C(n-c, k) / C(n, k): the
chance that k samples drawn without replacement from the n contain a passing one.
The ratio of binomials is computed as the product prod_{i=n-c+1}^{n} (1 - k/i),
which never forms the (huge) binomials and stays exact to float precision.
"""

from __future__ import annotations

from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k for one task with n samples, c of them passing."""
  for name, v in (("n", n), ("c", c), ("k", k)):
    if not isinstance(v, int) or isinstance(v, bool):
      raise TypeError(f"pass_at_k: {name}={v!r}; expected an int")
  if not 0 <= c <= n:
    raise ValueError(f"pass_at_k: c={c} passing samples must lie in 0..n={n}")
  if not 1 <= k <= n:
    raise ValueError(f"pass_at_k: k={k} must lie in 1..n={n} (draw more samples per task)")
  if n - c < k:
    return 1.0
  prob_all_fail = 1.0
  for i in range(n - c + 1, n + 1):
    prob_all_fail *= 1.0 - k / i
  return 1.0 - prob_all_fail


def mean_pass_at_k(counts: Sequence[tuple[int, int]], ks: Sequence[int]) -> dict[str, float]:
  """{"pass@k": mean over tasks} for per-task (n, c) counts."""
  if not counts:
    raise ValueError("mean_pass_at_k: no tasks")
  return {f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in counts) / len(counts) for k in ks}
