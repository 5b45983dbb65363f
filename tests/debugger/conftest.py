"""Shared fixtures: real programs, their real traces (the tracer in the sandbox), and
the toy tokenizer. All programs are traced in one batch, once per test session."""

import pytest

from cwm_jax.debugger.context import context_offset, make_context
from cwm_jax.debugger.replay import ReplayTraceModel
from cwm_jax.debugger.session import NeuralDebugger
from cwm_jax.tokenizer.toy import toy_sentencepiece_tokenizer
from data_pipelines.traces import executors
from data_pipelines.traces.sources import TraceRequest
from data_pipelines.traces.trace import trace_requests

# name -> (source, call); call None: the source marks its entry function.
PROGRAMS = {
    "loops": ("""def square(x):
    return x * x

def sum_squares(n):
    total = 0
    for i in range(n):
        total += square(i)
    return total
""", "sum_squares(3)"),
    "recursion": ("""def fib(n):
    if n < 2:
        return n
    a = fib(n - 1)
    b = fib(n - 2)
    return a + b
""", "fib(4)"),
    "exception": ("""def check(v):
    if v < 0:
        raise ValueError("negative: %d" % v)
    return v * 2

def parse(items):
    out = []
    for v in items:
        try:
            out.append(check(v))
        except ValueError:
            out.append(-1)
    return out
""", "parse([1, -2, 3])"),
    "uncaught": ("""def pop_all(xs):
    n = 0
    while True:
        xs.pop()
        n += 1
    return n

def run():  # << START_OF_TRACE
    stack = [1, 2]
    count = pop_all(stack)
    return count
""", None),
    "nested": ("""def inner(a, b):
    c = a + b
    return c * 2

def middle(x):
    y = inner(x, 1)
    z = inner(y, x)
    return y + z

def outer(n):
    acc = []
    k = 0
    while k < n:
        acc.append(middle(k))
        k += 1
    return acc
""", "outer(2)"),
    "repeated_lines": ("""def twice(xs):
    total = 0
    for x in xs:
        total += x
    for x in xs:
        total += x
    if total > 5:
        return total
    return total
""", "twice([1, 2])"),
    # Comprehension and lambda frames (FORMATS.md rule 6): pdb's step enters them,
    # next steps over them.
    "comprehensions": ("""def square(x):
    return x * x

def build(xs):
    ys = [square(x) for x in xs]
    d = {k: v for k, v in zip(xs,
                              ys)}
    s = sorted(ys, key=lambda v: -v)
    return ys, d, s
""", "build([1, 2])"),
}

# Not run under pdb (its generator handling differs from plain stepping): line
# numbers of decorated functions, methods, a generator and generator expressions resuming.
LINE_PROGRAMS = {
    "decorators": ("""import functools

def deco(fn):
    @functools.wraps(fn)
    def inner(*a):
        return fn(*a)
    return inner

@deco
def g(x):
    return x + 1

class P:
    def __init__(self, v):
        self.v = v

def gen(n):
    for i in range(n):
        yield i

def main():  # << START_OF_TRACE
    p = P(3)
    t = 0
    for v in gen(2):
        t += v
    return g(p.v) + t
""", None),
    "genexpr": ("""def total(xs):
    t = sum(x * 2 for x in xs)
    return t + next(y for y in xs if y > 1)
""", "total([1, 2, 3])"),
}

ALL_PROGRAMS = {**PROGRAMS, **LINE_PROGRAMS}


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
  return toy_sentencepiece_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def true_traces():
  """name -> the real tracer's Trace of that program (in the sandbox when bubblewrap
  is usable, as data generation runs it)."""
  names = list(ALL_PROGRAMS)
  requests = [TraceRequest(make_context(*ALL_PROGRAMS[n]), id=n) for n in names]
  results = trace_requests(requests, executor=executors.choose_executor())
  for name, result in zip(names, results):
    assert result.ok, (name, result.status, result.reason)
  return {name: result.trace for name, result in zip(names, results)}


@pytest.fixture()
def make_debugger(tokenizer, true_traces):
  """name -> a NeuralDebugger replaying that program's true trace."""

  def make(name, model=None):
    source, call = ALL_PROGRAMS[name]
    model = model or ReplayTraceModel(tokenizer, true_traces[name])
    return NeuralDebugger(model, tokenizer, source, call, name="prog.py")

  return make


def offset_of(name) -> int:
  return context_offset(ALL_PROGRAMS[name][1])
