"""Synthetic CruxEval-style programs from a small typed template grammar (seeded, offline).

    for record in generate_programs(seed=0, n=100):   # {"id", "code", "input"}
      ...

Each program is a function `f` (plus 0-2 helper functions it calls) over ints,
strings, lists and dicts, and an argument string of matching types. The grammar is
typed (every expression has one of the types in `TYPES`) and depth-limited, and it
avoids the common ways random code fails or runs forever: a `for` loop never mutates
what it iterates, `while` loops always shrink a counter or a work list, divisions
are by non-zero literals, `max`/`min` get a default, helpers that `raise` are called
inside `try`. What still fails or runs long is removed by `filter.filter_programs`.
Program i of a seed depends only on (seed, i).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator

INT, STR, BOOL, LINT, LSTR, DICT = "int", "str", "bool", "list[int]", "list[str]", "dict[str,int]"
TYPES = (INT, STR, LINT, LSTR, DICT)  # parameter and return types (bool only in conditions)
ELEM = {LINT: INT, LSTR: STR, STR: STR}  # what iterating a value of the type yields
NAMES = {
    INT: ["n", "k", "total", "count", "acc", "x", "y", "m", "step", "best"],
    STR: ["s", "text", "word", "name", "res", "prefix", "key", "chunk"],
    LINT: ["nums", "xs", "values", "arr", "items", "out", "stack", "seen"],
    LSTR: ["words", "names", "parts", "tokens", "keys", "labels"],
    DICT: ["counts", "d", "mapping", "table", "scores", "index"],
    BOOL: ["flag", "found", "ok"],
}
LOOP_NAMES = {INT: ["num", "v", "a", "b"], STR: ["ch", "w", "c", "t"]}
WORDS = ["a", "b", "ab", "cat", "dog", "x", "hi", "abc", "zz", "moon", "tree", "Aa", "12", "3", ""]
CHARS = ["a", "b", "c", "x", "o", " ", "1"]
HELPER_NAMES = ["helper", "check", "combine", "score", "normalize", "count_items", "pick",
                "transform"]
EXCEPTIONS = ["ValueError", "KeyError", "IndexError", "ZeroDivisionError"]


@dataclasses.dataclass
class _Fn:
  name: str
  params: list  # [(name, type)]
  ret: str
  raises: bool = False


class _Env:
  """Variables in scope: name -> type; `frozen` names must not be mutated or rebound."""

  def __init__(self, params):
    self.vars = dict(params)
    self.frozen: set[str] = set()
    self.index_pairs: list[tuple[str, str]] = []  # (list var, index var) safe to subscript

  def of(self, t):
    return [n for n, vt in self.vars.items() if vt == t]

  def mutable(self, t):
    return [n for n in self.of(t) if n not in self.frozen]


def _strip_parens(text: str) -> str:
  """`(a + b)` -> `a + b` when the outer parentheses enclose the whole text."""
  if not (text.startswith("(") and text.endswith(")")):
    return text
  depth = 0
  for i, ch in enumerate(text):  # string literals here never contain parentheses
    depth += {"(": 1, ")": -1}.get(ch, 0)
    if depth == 0 and i < len(text) - 1:
      return text
  return text[1:-1]


class _Gen:

  def __init__(self, rng: random.Random, max_depth: int):
    self.r = rng
    self.max_depth = max_depth
    self.helpers: list[_Fn] = []
    self.lines: list[str] = []
    self.budget = 0  # statements left in the current function

  # ---------------------------------------------------------------- expressions

  def lit(self, t) -> str:
    r = self.r
    if t == INT:
      return str(r.randint(-3, 12))
    if t == STR:
      return repr(r.choice(WORDS[:-1]))
    if t == LINT:
      return repr([r.randint(-5, 9) for _ in range(r.randint(0, 4))])
    if t == LSTR:
      return repr([r.choice(WORDS) for _ in range(r.randint(0, 3))])
    if t == DICT:
      return repr({r.choice(WORDS[:-1]): r.randint(0, 9) for _ in range(r.randint(0, 3))})
    return r.choice(["True", "False"])

  def pick_type(self, env, types):
    """One of `types`, usually one that some variable in scope has."""
    held = [t for t in types if env.of(t)]
    return self.r.choice(held if held and self.r.random() < 0.85 else types)

  def var_or_lit(self, t, env) -> str:
    names = env.of(t)
    return self.r.choice(names) if names and self.r.random() < 0.8 else self.lit(t)

  def expr(self, t, env, d=0) -> str:
    """A random expression of type t (d: expression nesting); operator forms come
    parenthesised, and the outermost parentheses are dropped."""
    text = self._expr(t, env, d)
    return _strip_parens(text) if d == 0 else text

  def _expr(self, t, env, d):
    r = self.r
    if t == BOOL:
      if d < 2 and r.random() >= 0.2:
        return r.choice(self._e_bool(env, d + 1))
      return (f"({self.var_or_lit(INT, env)} {r.choice(['<', '>', '=='])} {r.randint(0, 5)})"
              if env.of(INT) or r.random() < 0.5 else
              f"(len({self.var_or_lit(self.pick_type(env, [LINT, STR, LSTR, DICT]), env)}) > "
              f"{r.randint(0, 3)})")
    if d >= 2 or r.random() < 0.3:
      return self.var_or_lit(t, env)
    options = getattr(self, "_e_" + {INT: "int", STR: "str", BOOL: "bool", LINT: "lint",
                                     LSTR: "lstr", DICT: "dict"}[t])(env, d + 1)
    options = [o for o in options if o is not None]
    return r.choice(options) if options else self.var_or_lit(t, env)

  def _helper_call(self, t, env, d):
    fns = [h for h in self.helpers if h.ret == t and not h.raises]
    if not fns:
      return None
    h = self.r.choice(fns)
    return f"{h.name}({', '.join(self.expr(pt, env, d + 1) for _, pt in h.params)})"

  def _e_int(self, env, d):
    r, e = self.r, self.expr
    pairs = [f"{l}[{i}]" for l, i in env.index_pairs]
    return [
        f"({e(INT, env, d)} {r.choice(['+', '-', '*'])} {e(INT, env, d)})",
        f"({e(INT, env, d)} {r.choice(['//', '%'])} {r.randint(2, 5)})",
        f"len({e(self.pick_type(env, [STR, LINT, LSTR, DICT]), env, d)})",
        f"sum({e(LINT, env, d)})",
        f"{r.choice(['max', 'min'])}({e(LINT, env, d)}, default={r.randint(-1, 3)})",
        f"{e(STR, env, d)}.count({r.choice(CHARS)!r})",
        f"{e(STR, env, d)}.find({r.choice(CHARS)!r})",
        f"{e(DICT, env, d)}.get({e(STR, env, d)}, {r.randint(0, 2)})",
        f"{e(LINT, env, d)}.count({e(INT, env, d)})",
        f"abs({e(INT, env, d)})",
        r.choice(pairs) if pairs else None,
        self._helper_call(INT, env, d),
    ]

  def _e_str(self, env, d):
    r, e = self.r, self.expr
    return [
        f"{e(STR, env, d)}.{r.choice(['upper', 'lower', 'strip', 'capitalize', 'title'])}()",
        f"{e(STR, env, d)}[::-1]",
        f"{e(STR, env, d)}.replace({r.choice(CHARS)!r}, {r.choice(CHARS + [''])!r})",
        f"({e(STR, env, d)} + {e(STR, env, d)})",
        f"str({e(INT, env, d)})",
        f"{r.choice(['', ' ', '-', ','])!r}.join({e(LSTR, env, d)})",
        f"{e(STR, env, d)}[{r.randint(0, 2)}:{r.randint(2, 5)}]",
        f"({e(STR, env, d)} * {r.randint(0, 3)})",
        f'f"{{{r.choice(env.of(STR))}}}-{{{r.choice(env.of(INT))}}}"'
        if env.of(STR) and env.of(INT) else None,
        f"''.join(c for c in {e(STR, env, d)} if c {r.choice(['!=', '=='])} {r.choice(CHARS)!r})"
        if r.random() < 0.3 else None,
        self._helper_call(STR, env, d),
    ]

  def _e_bool(self, env, d):
    r, e = self.r, self.expr
    return [
        f"({e(INT, env, d)} {r.choice(['<', '>', '<=', '>=', '==', '!='])} {e(INT, env, d)})",
        f"({e(INT, env, d)} % 2 == {r.randint(0, 1)})",
        f"{e(STR, env, d)}.{r.choice(['startswith', 'endswith'])}({r.choice(CHARS)!r})",
        f"{e(STR, env, d)}.{r.choice(['isdigit', 'isalpha', 'isupper', 'islower'])}()",
        f"({e(INT, env, d)} in {e(LINT, env, d)})",
        f"({e(STR, env, d)} in {e(self.pick_type(env, [LSTR, DICT, STR]), env, d)})",
        f"(not {e(LINT, env, d)})",
        f"({e(BOOL, env, d)} {r.choice(['and', 'or'])} {e(BOOL, env, d)})",
        f"(len({e(LINT, env, d)}) > {r.randint(0, 3)})",
    ]

  def _e_lint(self, env, d):
    r, e = self.r, self.expr
    return [
        f"sorted({e(LINT, env, d)}{r.choice(['', ', reverse=True'])})",
        f"{e(LINT, env, d)}[{r.randint(0, 2)}:]",
        f"({e(LINT, env, d)} + [{e(INT, env, d)}])",
        f"list(range({r.randint(0, 5)}))",
        f"list({e(DICT, env, d)}.values())",
        f"[len(w) for w in {e(LSTR, env, d)}]",
        f"[v {r.choice(['*', '+', '-'])} {r.randint(1, 3)} for v in {e(LINT, env, d)}]"
        if r.random() < 0.4 else None,
        f"[v for v in {e(LINT, env, d)} if v {r.choice(['>', '<', '!='])} {r.randint(-1, 4)}]"
        if r.random() < 0.4 else None,
        self._helper_call(LINT, env, d),
    ]

  def _e_lstr(self, env, d):
    r, e = self.r, self.expr
    return [
        f"{e(STR, env, d)}.split({r.choice(['', repr(r.choice(CHARS))])})",
        f"list({e(STR, env, d)})",
        f"sorted({e(LSTR, env, d)})",
        f"list({e(DICT, env, d)}.keys())",
        f"[w.{r.choice(['upper', 'lower', 'strip'])}() for w in {e(LSTR, env, d)}]"
        if r.random() < 0.4 else None,
        f"({e(LSTR, env, d)} + [{e(STR, env, d)}])",
        self._helper_call(LSTR, env, d),
    ]

  def _e_dict(self, env, d):
    r, e = self.r, self.expr
    return [
        f"dict({e(DICT, env, d)})",
        f"{{w: len(w) for w in {e(LSTR, env, d)}}}" if r.random() < 0.4 else None,
        f"dict(zip({e(LSTR, env, d)}, {e(LINT, env, d)}))",
        self._helper_call(DICT, env, d),
    ]

  # ---------------------------------------------------------------- statements

  def new_name(self, t, env) -> str:
    free = [n for n in NAMES[t] if n not in env.vars and not any(
        n == h.name for h in self.helpers)]
    name = self.r.choice(free) if free else f"{NAMES[t][0]}{len(env.vars)}"
    env.vars[name] = t
    return name

  def emit(self, ind, text):
    self.lines.append("    " * ind + text)

  def block(self, env, ind, depth, n):
    """Up to n statements (fewer when the function's budget is spent; `pass` if none).
    Names first bound inside the block go out of scope after it (they may be unbound)."""
    start, names = len(self.lines), set(env.vars)
    for k in range(n):
      if self.budget <= (-2 if k == 0 else 0):  # a little over budget beats an empty block
        break
      self.stmt(env, ind, depth)
    if n and len(self.lines) == start:
      self.emit(ind, "pass")
    for name in set(env.vars) - names:
      del env.vars[name]

  def stmt(self, env, ind, depth):
    r = self.r
    self.budget -= 1
    kinds = ["assign", "assign", "aug", "mutate", "mutate", "if"]
    if depth < self.max_depth:
      kinds += ["if", "for", "for", "while", "try"]
    if self.helpers:
      kinds += ["call", "call"]
    kind = r.choice(kinds)
    getattr(self, "_s_" + kind)(env, ind, depth)

  def _s_assign(self, env, ind, depth):
    t = self.ret if self.r.random() < 0.3 else self.pick_type(env, TYPES)
    names = env.mutable(t)
    value = self.expr(t, env)
    name = self.r.choice(names) if names and self.r.random() < 0.5 else self.new_name(t, env)
    self.emit(ind, f"{name} = {value}")

  def _s_aug(self, env, ind, depth):
    r = self.r
    t = r.choice([INT, INT, STR])
    names = env.mutable(t)
    if not names:
      return self._s_assign(env, ind, depth)
    op = r.choice(["+=", "-=", "*="]) if t == INT else "+="
    value = str(r.randint(1, 3)) if op == "*=" else self.expr(t, env, 1)
    self.emit(ind, f"{r.choice(names)} {op} {value}")

  def _s_mutate(self, env, ind, depth):
    r, e = self.r, self.expr
    lists = [(n, LINT) for n in env.mutable(LINT)] + [(n, LSTR) for n in env.mutable(LSTR)]
    dicts = env.mutable(DICT)
    if not lists and not dicts:
      return self._s_assign(env, ind, depth)
    if dicts and (not lists or r.random() < 0.4):
      dct = r.choice(dicts)
      self.emit(ind, r.choice([
          f"{dct}[{e(STR, env, 1)}] = {e(INT, env, 1)}",
          f"{dct}[{e(STR, env, 1)}] = {dct}.get({e(STR, env, 1)}, 0) + 1",
          f"{dct}.pop({e(STR, env, 1)}, None)",
          f"{dct}.setdefault({e(STR, env, 1)}, {r.randint(0, 5)})",
          f"{dct}.update({e(DICT, env, 1)})",
      ]))
      return
    lst, t = r.choice(lists)
    el = ELEM[t]
    choice = r.randrange(6)
    if choice == 0:
      self.emit(ind, f"if {lst}:")
      self.emit(ind + 1, f"{lst}.pop({r.choice(['', '0'])})")
    else:
      self.emit(ind, [f"{lst}.append({e(el, env, 1)})", f"{lst}.insert(0, {e(el, env, 1)})",
                      f"{lst}.extend({e(t, env, 1)})", f"{lst}.reverse()",
                      f"{lst}.sort()"][choice - 1])

  def _s_if(self, env, ind, depth):
    self.emit(ind, f"if {self.expr(BOOL, env)}:")
    self.block(env, ind + 1, depth + 1, self.r.randint(1, 2))
    if self.r.random() < 0.3:
      self.emit(ind, f"elif {self.expr(BOOL, env)}:")
      self.block(env, ind + 1, depth + 1, 1)
    if self.r.random() < 0.5:
      self.emit(ind, "else:")
      self.block(env, ind + 1, depth + 1, self.r.randint(1, 2))

  def _loop_var(self, t, env):
    free = [n for n in LOOP_NAMES[t] if n not in env.vars]
    name = self.r.choice(free) if free else f"{LOOP_NAMES[t][0]}{len(env.vars)}"
    env.vars[name] = t
    env.frozen.add(name)
    return name

  def _s_for(self, env, ind, depth):
    r = self.r
    iterables = env.of(LINT) + env.of(LSTR) + env.of(STR) + env.of(DICT)
    frozen_before, vars_before = set(env.frozen), set(env.vars)
    pairs_before = list(env.index_pairs)
    if not iterables or r.random() < 0.15:
      i = self._loop_var(INT, env)
      self.emit(ind, f"for {i} in range({r.randint(1, 5)}):")
    else:
      it = r.choice(iterables)
      env.frozen.add(it)
      t = env.vars[it]
      form = r.randrange(3)
      if t == DICT:
        k = self._loop_var(STR, env)
        if form:
          v = self._loop_var(INT, env)
          self.emit(ind, f"for {k}, {v} in {it}.items():")
        else:
          self.emit(ind, f"for {k} in {it}:")
      elif form == 0 and t != STR:
        i = self._loop_var(INT, env)
        env.index_pairs.append((it, i))
        self.emit(ind, f"for {i} in range(len({it})):")
      elif form == 1:
        i, x = self._loop_var(INT, env), self._loop_var(ELEM[t], env)
        self.emit(ind, f"for {i}, {x} in enumerate({it}):")
      else:
        x = self._loop_var(ELEM[t], env)
        self.emit(ind, f"for {x} in {it}:")
    self.block(env, ind + 1, depth + 1, r.randint(1, 3))
    if r.random() < 0.2:
      self.emit(ind + 1, f"if {self.expr(BOOL, env)}:")
      self.emit(ind + 2, r.choice(["break", "continue"]))
    env.frozen, env.index_pairs = frozen_before, pairs_before
    for name in set(env.vars) - vars_before:
      del env.vars[name]

  def _s_while(self, env, ind, depth):
    r = self.r
    frozen_before = set(env.frozen)
    if r.random() < 0.5:
      src = self.var_or_lit(LINT, env)
      work = self.new_name(LINT, env)
      self.emit(ind, f"{work} = list({src})")
      env.frozen.add(work)
      self.emit(ind, f"while {work}:")
      x = self._loop_var(INT, env)
      self.emit(ind + 1, f"{x} = {work}.pop()")
      self.block(env, ind + 1, depth + 1, r.randint(1, 2))
      del env.vars[x]  # unbound after the loop when the list was empty
    else:
      start = self.expr(INT, env, 1)
      c = self.new_name(INT, env)
      env.frozen.add(c)
      self.emit(ind, f"{c} = {start}")
      self.emit(ind, f"while {c} > 0:")
      self.block(env, ind + 1, depth + 1, r.randint(1, 2))
      self.emit(ind + 1, r.choice([f"{c} -= {r.randint(1, 3)}", f"{c} //= 2"]))
    env.frozen = frozen_before

  def _s_try(self, env, ind, depth):
    r, e = self.r, self.expr
    self.emit(ind, "try:")
    t = r.choice([INT, STR])
    risky = {
        "ValueError": [f"int({e(STR, env, 1)})", f"{e(LINT, env, 1)}.index({e(INT, env, 1)})"],
        "KeyError": [f"{e(DICT, env, 1)}[{e(STR, env, 1)}]"],
        "IndexError": [f"{e(LINT, env, 1)}[{r.randint(0, 4)}]"],
        "ZeroDivisionError": [f"{r.randint(1, 20)} // {e(INT, env, 1)}"],
    }
    exc = r.choice(EXCEPTIONS)
    value = r.choice(risky[exc])
    if t == STR:
      value = f"str({value})"
    target = env.mutable(t)
    name = r.choice(target) if target and r.random() < 0.5 else self.new_name(t, env)
    self.emit(ind + 1, f"{name} = {value}")
    self.block(env, ind + 1, depth + 1, r.randint(0, 1))
    self.emit(ind, f"except {exc if r.random() < 0.8 else '(' + exc + ', TypeError)'}:")
    self.emit(ind + 1, f"{name} = {self.lit(t)}")
    self.block(env, ind + 1, depth + 1, r.randint(0, 1))

  def _s_call(self, env, ind, depth):
    h = self.r.choice(self.helpers)
    args = ", ".join(self.expr(pt, env, 1) for _, pt in h.params)
    target = env.mutable(h.ret)
    name = self.r.choice(target) if target and self.r.random() < 0.5 else self.new_name(h.ret, env)
    if h.raises:
      self.emit(ind, "try:")
      self.emit(ind + 1, f"{name} = {h.name}({args})")
      self.emit(ind, "except ValueError as err:")
      self.emit(ind + 1, f"{name} = {self.lit(h.ret)}")
    else:
      self.emit(ind, f"{name} = {h.name}({args})")

  # ---------------------------------------------------------------- functions

  def function(self, fn: _Fn, n_stmts: int):
    r = self.r
    self.emit(0, f"def {fn.name}({', '.join(n for n, _ in fn.params)}):")
    env = _Env(fn.params)
    self.budget, self.ret = n_stmts, fn.ret
    if fn.raises:
      self.emit(1, f"if {self.expr(BOOL, env)}:")
      self.emit(2, f"raise ValueError({r.choice(['bad input', 'too small', 'empty'])!r})")
    if fn.name == "f" and self.helpers and r.random() < 0.5:
      self.budget -= 1
      self._s_call(env, 1, 0)  # most programs with helpers should run one
    while self.budget > 0:
      self.stmt(env, 1, 0)
    names = env.of(fn.ret)
    value = r.choice(names) if names and r.random() < 0.6 else self.expr(fn.ret, env)
    self.emit(1, f"return {value}")

  def value(self, t):
    r = self.r
    if t == INT:
      return r.randint(-5, 20)
    if t == STR:
      return "".join(r.choice(WORDS + [" "]) for _ in range(r.randint(0, 4)))
    if t == LINT:
      return [r.randint(-5, 15) for _ in range(r.randint(0, 7))]
    if t == LSTR:
      return [r.choice(WORDS) for _ in range(r.randint(0, 5))]
    return {r.choice(WORDS[:-1]): r.randint(-2, 9) for _ in range(r.randint(0, 4))}


def generate_program(rng: random.Random, *, max_depth: int = 2, max_helpers: int = 2) -> dict:
  """One program: {"code", "input"} (no id)."""
  g = _Gen(rng, max_depth)
  for _ in range(rng.choice([0, 1, 1, 2][:max_helpers + 1 + (max_helpers > 1)])):
    env = _Env({})
    params = [(g.new_name(rng.choice(TYPES), env), None) for _ in range(rng.randint(1, 2))]
    params = [(n, env.vars[n]) for n, _ in params]
    name = rng.choice([n for n in HELPER_NAMES if n not in {h.name for h in g.helpers}])
    fn = _Fn(name, params, rng.choice(TYPES), raises=rng.random() < 0.35)
    g.function(fn, rng.randint(1, 3))
    g.helpers.append(fn)
  env = _Env({})
  names = [g.new_name(rng.choice(TYPES), env) for _ in range(rng.randint(1, 3))]
  f = _Fn("f", [(n, env.vars[n]) for n in names], rng.choice(TYPES))
  g.function(f, rng.randint(4, 9))
  args = ", ".join(repr(g.value(t)) for _, t in f.params)
  return {"code": "\n".join(g.lines), "input": args}


def generate_programs(seed: int, n: int | None = None, *, max_depth: int = 2,
                      max_helpers: int = 2) -> Iterator[dict]:
  """Yields n records {"id", "code", "input"} (n=None: without end); record i depends
  only on (seed, i)."""
  i = 0
  while n is None or i < n:
    rng = random.Random(f"cwm-programs:{seed}:{i}")
    yield {"id": f"gen-{seed}-{i}", **generate_program(rng, max_depth=max_depth,
                                                       max_helpers=max_helpers)}
    i += 1
