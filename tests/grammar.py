"""A grammar of expressions and check options over the whole op table, for fuzzing.

One generator serves two callers: the quick fuzz test (hypothesis drives the `random.Random`
it passes in, so failures shrink) and the nightly-style `benchmarks/fuzz.py` (a seeded
`random.Random`).  A case is a plain dict (JSON-ready): the expression and the options of
`gradcheck_sym.check`, or the argv of the command line.

Three families, each hostile and realistic in turn:
* ``grammar``: random trees over every function, operator, comparison and cut of the table,
  with hostile constants (huge and tiny floats, integers of hundreds of digits, ``1e400``)
  at hostile points (0, poles, 1e300, 30 and 100 for sigmoid, ...);
* ``corpus``: the shared corpora's formulas, as they are or mutated (a constant made
  hostile, a function swapped, a subterm wrapped), at their own boxes or hostile points;
* ``text``: token soup, mostly invalid.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from gradcheck_sym.ops import FUNCTIONS

DATA = Path(__file__).parent / "data"

VARIABLES = ("x", "y", "z")
HOSTILE_CONSTANTS = [
    "0", "1", "-1", "2", "0.5", "3", "1e308", "1e-308", "5e-324", "1e400", "1e16", "1e-16", "10**20", "2**1000",
    "7", "1" + "0" * 320, "1" + "0" * 5000, "pi", "e", "1e-300", "1e300", "-2", "0.0", "100", "30",
]
REALISTIC_CONSTANTS = ["0.5", "2", "3", "1.5", "0.1", "10", "pi", "e", "4", "0.3"]
HOSTILE_VALUES = [0.0, 1.0, -1.0, 0.5, 1e-300, 1e300, -1e300, 30.0, 100.0, -100.0, 1e16, -1e-16, 5e-324, 709.0,
                  710.0, 1e308, 3.0, 2.0, -2.0, 1e-8]
HOSTILE_BOXES = [(-100.0, 100.0), (0.0, 1.0), (-1.0, 1.0), (-1e300, 1e300), (1e-300, 1e-290), (-3.0, 3.0),
                 (0.0, 0.0), (700.0, 720.0), (-1e-8, 1e-8), (1.0, 1.0)]
DTYPES = ["float64"] * 6 + ["float32"] * 3 + ["float16", "bfloat16"]
COMPARISONS = [">", ">=", "<", "<=", "==", "!="]
BINARY = ["+", "-", "*", "/", "**", "%"]
TEXT_TOKENS = list("xyz0123456789.+-*/%()<>=, e") + [
    "sin", "log", "sqrt", "where", "**", "pi", "abs", "max", "detach", "no_grad", "1e308", "__", ".", "pow",
    "digamma", "harmonic", "atan2", "sigmoid", "1e400", "10**20", "\uff58", "\U0001d465", "\u0445", "lambda", "[",
    "]", "import", ";", "\n", "\\", "'", "#",
]


def _corpus() -> list[dict[str, Any]]:
    out = []
    for path in sorted(DATA.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                e = json.loads(line)
                out.append({"expr": e["expr"], "vars": e["vars"]})
    return out


CORPUS = _corpus()


def expression(rng: random.Random, depth: int, hostile: bool, names: tuple[str, ...] = VARIABLES,
               top: bool = True) -> str:
    """A random expression over the op table, at most `depth` levels deep (never a bare leaf)."""
    if depth <= 0 or (not top and rng.random() < 0.25):
        if rng.random() < 0.6:
            return rng.choice(names)
        return rng.choice(HOSTILE_CONSTANTS if hostile else REALISTIC_CONSTANTS)
    roll = rng.random()
    sub = lambda: expression(rng, depth - 1, hostile, names, False)  # noqa: E731
    if roll < 0.35:
        op = rng.choice(BINARY)
        if op == "**" and not hostile:
            return f"({sub()})**{rng.choice(['2', '3', '0.5', '-1'])}"
        return f"({sub()}) {op} ({sub()})"
    if roll < 0.4:
        return f"-({sub()})"
    name = rng.choice(sorted(FUNCTIONS))
    lo, hi = FUNCTIONS[name].arity
    if name == "where":
        return f"where({sub()} {rng.choice(COMPARISONS)} {sub()}, {sub()}, {sub()})"
    n = rng.randint(lo, hi)
    if name in ("min", "max"):
        n = rng.randint(2, 3)
    return f"{name}(" + ", ".join(sub() for _ in range(n)) + ")"


def _mutate(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(4)
        if kind == 0:  # a constant made hostile
            numbers = list(re.finditer(r"(?<![\w.])\d+(\.\d+)?", text))
            if numbers:
                m = rng.choice(numbers)
                text = text[: m.start()] + rng.choice(HOSTILE_CONSTANTS) + text[m.end():]
        elif kind == 1:  # a function swapped for another of one argument
            calls = list(re.finditer(r"\b(sin|cos|exp|log|sqrt|tan|tanh|abs)\(", text))
            if calls:
                m = rng.choice(calls)
                new = rng.choice([n for n, op in FUNCTIONS.items() if op.arity[0] == 1 and n not in ("where",)])
                text = text[: m.start()] + new + "(" + text[m.end():]
        elif kind == 2:  # the whole wrapped
            name = rng.choice(["sigmoid", "softplus", "exp", "log", "sqrt", "detach", "no_grad", "relu", "erfc"])
            text = f"{name}({text})"
        else:  # a variable wrapped
            names = list(re.finditer(r"\b[a-zA-Z_]\w*\b(?!\()", text))
            if names:
                m = rng.choice(names)
                text = text[: m.start()] + f"{rng.choice(['tanh', 'abs', 'detach', 'pow'])}({m.group()}" + (
                    ", 2)" if text[m.start():].startswith("pow") else ")") + text[m.end():]
                text = text.replace("pow(" + m.group() + ")", "pow(" + m.group() + ", 2)")
    return text


def _points(rng: random.Random, names: list[str], hostile: bool, boxes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Options `at` or `domain`/`samples`/`seed` for the names."""
    if boxes and not hostile:
        return {"domain": {n: list(boxes[n]) for n in names}, "samples": rng.choice([5, 20, 50]), "seed": rng.randrange(100)}
    if rng.random() < 0.5:
        n_points = rng.choice([1, 1, 1, 3])
        return {"at": {n: [rng.choice(HOSTILE_VALUES) for _ in range(n_points)] for n in names}}
    samples = rng.choice([3, 10, 50] + ([10_001] if rng.random() < 0.02 else []))
    return {"domain": {n: list(rng.choice(HOSTILE_BOXES)) for n in names}, "samples": samples,
            "seed": rng.randrange(1000)}


def _names_in(text: str) -> list[str]:
    found = []
    for m in re.finditer(r"\b[A-Za-z_]\w*\b", text):
        word = m.group()
        if word in FUNCTIONS or word in ("pi", "e") or word in found:
            continue
        if not text[m.end():].lstrip().startswith("("):
            found.append(word)
    return found


def case(rng: random.Random, family: str | None = None) -> dict[str, Any]:
    """One fuzz case: {"family", "expr", "options"} (options of `check`) and sometimes "cli": True."""
    family = family or rng.choices(["grammar", "corpus", "text"], weights=[5, 3, 2])[0]
    hostile = rng.random() < 0.7
    boxes = None
    if family == "grammar":
        text = expression(rng, rng.randint(1, 5), hostile)
    elif family == "corpus":
        entry = rng.choice(CORPUS)
        text, boxes = entry["expr"], entry["vars"]
        if hostile:
            text = _mutate(rng, text)
    else:
        text = "".join(rng.choice(TEXT_TOKENS) for _ in range(rng.randint(0, 25)))
    names = _names_in(text)
    if boxes is not None:
        names = [n for n in boxes if n in names] + [n for n in names if n not in boxes]
        boxes = {n: boxes.get(n, [-1, 1]) for n in names}
    options: dict[str, Any] = _points(rng, names, hostile or family != "corpus", boxes) if names else {}
    options["dtype"] = rng.choice(DTYPES) if hostile else rng.choice(["float64", "float32"])
    if rng.random() < 0.15:
        options["order"] = 2
    return {"family": family, "hostile": hostile, "expr": text, "options": options, "cli": rng.random() < 0.2}


def argv(c: dict[str, Any]) -> list[str]:
    """The command line for a case."""
    out = ["check", c["expr"]]
    opts = c["options"]
    at = opts.get("at") or {}
    n = max((len(v) for v in at.values()), default=0)
    for i in range(n):
        out += ["--at", ",".join(f"{k}={v[i]!r}" for k, v in at.items())]
    for k, (lo, hi) in (opts.get("domain") or {}).items():
        out += ["--domain", f"{k}={lo!r}:{hi!r}"]
    for key in ("samples", "seed", "dtype", "order"):
        if key in opts:
            out += [f"--{key}", str(opts[key])]
    return out
