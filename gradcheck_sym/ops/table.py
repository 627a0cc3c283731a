"""The op table: every operation the checker knows, in one place.

Each `Op` gives its arity, how torch computes it, its sympy counterpart, what
torch does where the derivative is undefined (kinks, ties, jumps), and a
sampling box for the generated per-op tests.  The parser's whitelist, the
sympy builder, the torch evaluator and the reports all read this table.

The callables take the backend module first (`t` is torch, `s` is the sympy
namespace of `gradcheck_sym.reference.sympy_functions`), so that this module imports neither
torch nor sympy: parsing and `gradcheck-sym --help` stay fast.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal

__all__ = ["Op", "OPS", "FUNCTIONS", "BINOPS", "UNARYOPS", "COMPARISONS", "CONSTANTS", "lookup", "suggest"]

Kind = Literal["function", "binop", "unop", "compare", "cut"]


@dataclass(frozen=True)
class Op:
    """One operation.

    Attributes:
        name: the name in the expression language (``sin``) or of the operator (``mul``).
        arity: (fewest, most) arguments.
        torch: ``(torch, *tensors) -> tensor``.
        sympy: ``(s, *exprs) -> expr`` with ``s`` the sympy namespace of `reference.sympy_functions`.
        kind: function call, binary/unary operator, comparison, or gradient cut.
        symbol: how an operator is written (``*``); empty for functions.
        kink: ``(torch, *tensors) -> bool tensor``, True where the derivative is undefined.
        convention: what torch returns there, in words (from shared/reference/torch-conventions.md).
        partials: optional ``(s, *exprs) -> tuple`` of partial derivatives, for ops whose
            sympy derivative does not evaluate to a number (``floor``, ``Mod``).
        approx_rtol: relative error torch's kernel is known to have against the exact
            function or its derivative (e.g. softplus switches to the identity above 20).
        kernel: optional ``(s, out, *exprs) -> tuple``: each partial derivative written the way
            torch's backward computes it, when that form cancels where the exact one does not
            (sigmoid's backward is ``out * (1 - out)`` from the rounded output: 0 once out rounds
            to 1), or with a term for rounding inside the kernel's argument reduction (digamma's
            reflection ``pi / tan(pi x)`` for x < 0: ``x psi''(x)``).  Only the magnitude sweep
            reads it, to bound that rounding; the reference keeps the exact derivative.
        box: a sampling box per argument where the op is smooth and real (for tests).
        doc: one line for `gradcheck-sym ops`.
    """

    name: str
    arity: tuple[int, int]
    torch: Callable[..., Any]
    sympy: Callable[..., Any]
    kind: Kind = "function"
    symbol: str = ""
    kink: Callable[..., Any] | None = None
    convention: str = ""
    partials: Callable[..., tuple[Any, ...]] | None = None
    approx_rtol: float = 0.0
    kernel: Callable[..., tuple[Any, ...]] | None = None
    box: tuple[tuple[float, float], ...] = field(default=((-2.0, 2.0),))
    doc: str = ""


def _f(name: str, torch: Callable[..., Any], sympy: Callable[..., Any], arity: int | tuple[int, int] = 1, **kw: Any) -> Op:
    ar = (arity, arity) if isinstance(arity, int) else arity
    box = kw.pop("box", None) or ((-2.0, 2.0),) * ar[1]
    return Op(name, ar, torch, sympy, box=box, **kw)


def sympy_half(s: Any) -> Any:
    """-1/2 as an exact sympy number (the namespace `s` is sympy's)."""
    return -s.Rational(1, 2)


def _eq(t: Any, a: Any, b: Any) -> Any:
    return a == b


# torch's erf-based GELU and the exact sympy form agree to rounding (reference table).
_SQRT1_2 = 0.7071067811865476

_FUNCTION_LIST: list[Op] = [
    _f("sin", lambda t, x: t.sin(x), lambda s, x: s.sin(x), box=((-3, 3),), doc="sine"),
    _f("cos", lambda t, x: t.cos(x), lambda s, x: s.cos(x), box=((-3, 3),), doc="cosine"),
    _f("tan", lambda t, x: t.tan(x), lambda s, x: s.tan(x), box=((-1.3, 1.3),), doc="tangent"),
    _f("cot", lambda t, x: 1 / t.tan(x), lambda s, x: s.cot(x), box=((0.2, 2.9),), doc="cotangent, 1/tan(x)"),
    _f("asin", lambda t, x: t.asin(x), lambda s, x: s.asin(x), box=((-0.95, 0.95),), doc="inverse sine"),
    _f("acos", lambda t, x: t.acos(x), lambda s, x: s.acos(x), box=((-0.95, 0.95),), doc="inverse cosine"),
    _f("atan", lambda t, x: t.atan(x), lambda s, x: s.atan(x), box=((-4, 4),), doc="inverse tangent"),
    _f(
        "atan2",
        lambda t, y, x: t.atan2(y, x),
        lambda s, y, x: s.atan2(y, x),
        2,
        kink=lambda t, y, x: (y == 0) & (x == 0),
        convention="torch defines both partial derivatives as 0 at (0, 0); mathematically they do not exist",
        box=((-2, 2), (0.2, 2)),
        doc="atan2(y, x), the angle of the point (x, y)",
    ),
    _f("sinh", lambda t, x: t.sinh(x), lambda s, x: s.sinh(x), doc="hyperbolic sine"),
    _f("cosh", lambda t, x: t.cosh(x), lambda s, x: s.cosh(x), doc="hyperbolic cosine"),
    _f("tanh", lambda t, x: t.tanh(x), lambda s, x: s.tanh(x), doc="hyperbolic tangent"),
    _f("asinh", lambda t, x: t.asinh(x), lambda s, x: s.asinh(x), box=((-4, 4),), doc="inverse hyperbolic sine"),
    _f("acosh", lambda t, x: t.acosh(x), lambda s, x: s.acosh(x), box=((1.1, 4),),
       # torch's backward is (x*x - 1)**(-1/2): x*x overflows where sympy's 1/(sqrt(x-1)*sqrt(x+1)) does not
       kernel=lambda s, out, x: ((x**2 - 1) ** sympy_half(s),), doc="inverse hyperbolic cosine"),
    _f("atanh", lambda t, x: t.atanh(x), lambda s, x: s.atanh(x), box=((-0.9, 0.9),), doc="inverse hyperbolic tangent"),
    _f("exp", lambda t, x: t.exp(x), lambda s, x: s.exp(x), box=((-3, 3),), doc="exponential"),
    _f("expm1", lambda t, x: t.expm1(x), lambda s, x: s.expm1(x), box=((-3, 3),),
       kernel=lambda s, out, x: (out + 1,),
       convention="torch's backward computes out + 1: 0 where out rounds to -1 (x < -37 in float64)",
       doc="exp(x) - 1, accurate near 0"),
    _f(
        "log",
        lambda t, x, b=None: t.log(x) if b is None else t.log(x) / t.log(b),
        lambda s, x, b=None: s.log(x) if b is None else s.log(x) / s.log(b),
        (1, 2),
        box=((0.1, 5), (1.5, 4)),
        doc="natural logarithm; log(x, b) is the logarithm to base b",
    ),
    _f("log1p", lambda t, x: t.log1p(x), lambda s, x: s.log1p(x), box=((-0.9, 3),), doc="log(1 + x), accurate near 0"),
    _f("log2", lambda t, x: t.log2(x), lambda s, x: s.log2(x), box=((0.1, 5),), doc="base-2 logarithm"),
    _f("log10", lambda t, x: t.log10(x), lambda s, x: s.log10(x), box=((0.1, 5),), doc="base-10 logarithm"),
    _f("sqrt", lambda t, x: t.sqrt(x), lambda s, x: s.sqrt(x), box=((0.1, 4),), doc="square root (NaN below 0 in torch)"),
    _f(
        "abs",
        lambda t, x: t.abs(x),
        lambda s, x: s.Abs(x),
        kink=lambda t, x: x == 0,
        convention="torch returns 0 at x = 0 (the minimum-norm subgradient; JAX returns 1)",
        doc="absolute value",
    ),
    _f(
        "sign",
        lambda t, x: t.sign(x),
        lambda s, x: s.sign(x),
        kink=lambda t, x: x == 0,
        convention="torch returns 0 everywhere, also at the jump x = 0 (sympy has a Dirac delta there)",
        doc="sign: -1, 0 or 1",
    ),
    _f(
        "floor",
        lambda t, x: t.floor(x),
        lambda s, x: s.floor(x),
        kink=lambda t, x: x == t.floor(x),
        convention="torch returns 0 everywhere, also at the jumps (integers)",
        doc="round down to an integer",
    ),
    _f(
        "ceil",
        lambda t, x: t.ceil(x),
        lambda s, x: s.ceiling(x),
        kink=lambda t, x: x == t.ceil(x),
        convention="torch returns 0 everywhere, also at the jumps (integers)",
        doc="round up to an integer",
    ),
    _f(
        "min",
        lambda t, a, b: t.minimum(a, b),
        lambda s, a, b: s.Min(a, b),
        2,
        kink=_eq,
        convention="at a tie torch.minimum splits the gradient evenly, 0.5 to each argument",
        doc="the smaller of two values (more arguments nest)",
    ),
    _f(
        "max",
        lambda t, a, b: t.maximum(a, b),
        lambda s, a, b: s.Max(a, b),
        2,
        kink=_eq,
        convention="at a tie torch.maximum splits the gradient evenly, 0.5 to each argument",
        doc="the larger of two values (more arguments nest)",
    ),
    _f(
        "clamp",
        lambda t, x, lo, hi: t.clamp(x, lo, hi),
        lambda s, x, lo, hi: s.Min(s.Max(x, lo), hi),
        3,
        kink=lambda t, x, lo, hi: (x == lo) | (x == hi) | (lo == hi),
        convention="torch passes the whole gradient to x at the bounds (bounds included: 1 to x, 0 to lo and hi); "
                   "where lo == hi it passes none to lo or hi",
        box=((-2, 2), (-3, -2.5), (2.5, 3)),
        doc="clamp(x, lo, hi): x limited to [lo, hi]",
    ),
    _f(
        "hypot",
        lambda t, x, y: t.hypot(x, y),
        lambda s, x, y: s.sqrt(x**2 + y**2),
        2,
        kink=lambda t, x, y: (x == 0) & (y == 0),
        convention="torch returns NaN for both partial derivatives at (0, 0)",
        doc="sqrt(x**2 + y**2) without overflow",
    ),
    _f("erf", lambda t, x: t.erf(x), lambda s, x: s.erf(x), doc="error function"),
    _f("erfc", lambda t, x: t.erfc(x), lambda s, x: s.erfc(x), doc="complementary error function"),
    _f(
        "sigmoid",
        lambda t, x: t.sigmoid(x),
        lambda s, x: 1 / (1 + s.exp(-x)),
        box=((-4, 4),),
        kernel=lambda s, out, x: (out * (1 - out),),
        convention="torch's backward computes out * (1 - out): 0 where out rounds to 1 (x > 37 in float64, "
                   "x > 17 in float32), an absolute error of about one ulp of out",
        doc="logistic sigmoid 1/(1 + exp(-x))",
    ),
    _f(
        "softplus",
        lambda t, x: t.nn.functional.softplus(x),
        lambda s, x: s.log1p(s.exp(x)),
        box=((-4, 4),),
        approx_rtol=4e-9,
        convention="torch switches to the identity above x = 20 (its threshold): relative error about 2e-9",
        doc="log(1 + exp(x)) (torch.nn.functional.softplus, beta=1, threshold=20)",
    ),
    _f(
        "relu",
        lambda t, x: t.relu(x),
        lambda s, x: s.Max(0, x),
        kink=lambda t, x: x == 0,
        convention="torch returns 0 at x = 0 (left derivative); sympy's Heaviside(0) is 1/2",
        doc="max(x, 0)",
    ),
    _f(
        "gelu",
        lambda t, x: t.nn.functional.gelu(x),
        lambda s, x: x / 2 * (1 + s.erf(x * s.sqrt(2) / 2)),
        box=((-3, 3),),
        doc="x/2*(1 + erf(x/sqrt(2))) (torch.nn.functional.gelu, exact form)",
    ),
    _f(
        "lgamma",
        lambda t, x: t.lgamma(x),
        lambda s, x: s.lgamma(x),
        # NB: the sampling box stops short of x = 1.4616, the root of digamma (lgamma's
        # derivative), where torch's float32 digamma has ~3e-5 relative error.
        box=((0.2, 1.3),),
        kernel=lambda s, out, x: (s.polygamma(0, x) + x * s.polygamma(1, x),),
        convention="log|gamma(x)|, real also for negative x; poles at 0, -1, -2, ...",
        doc="log of the absolute value of the gamma function",
    ),
    _f(
        "digamma",
        lambda t, x: t.digamma(x),
        lambda s, x: s.polygamma(0, x),
        box=((0.5, 5),),
        # For x < 0 torch reflects (pi / tan(pi x)): rounding x*pi costs about |x psi''(x)| ulps.
        kernel=lambda s, out, x: (s.polygamma(1, x) + x * s.polygamma(2, x),),
        # torch's trigamma (the derivative) agrees with mpmath only to ~4e-10 (reference table)
        approx_rtol=2e-9,
        doc="digamma (psi) function, the derivative of lgamma",
    ),
    _f(
        "harmonic",
        lambda t, x: t.digamma(x + 1) + 0.57721566490153286061,
        lambda s, x: s.polygamma(0, x + 1) + s.EulerGamma,
        box=((0.5, 20),),
        kernel=lambda s, out, x: (s.polygamma(1, x + 1) + (x + 1) * s.polygamma(2, x + 1),),
        approx_rtol=2e-9,
        doc="harmonic number H(x) = digamma(x + 1) + Euler's gamma",
    ),
    _f(
        "logaddexp",
        lambda t, a, b: t.logaddexp(a, b),
        lambda s, a, b: s.log(s.exp(a) + s.exp(b)),
        2,
        doc="log(exp(a) + exp(b)) without overflow",
    ),
    _f(
        "where",
        lambda t, c, a, b: t.where(c, a, b),
        lambda s, c, a, b: s.Piecewise((a, c), (b, True)),
        3,
        convention="torch follows the condition; the unselected branch still back-propagates (0 times inf is NaN)",
        box=((-2, 2), (-2, 2), (-2, 2)),
        doc="where(condition, a, b): a where the comparison holds, else b",
    ),
]

# Gradient cuts: identities for the value, constants for autograd.
_CUT_LIST: list[Op] = [
    _f(
        "detach",
        lambda t, x: x.detach(),
        lambda s, x: x,
        kind="cut",
        doc="detach(e): the value of e, treated by autograd as a constant (like e.detach())",
    ),
    _f(
        "no_grad",
        lambda t, x: x.clone(),
        lambda s, x: x,
        kind="cut",
        doc="no_grad(e): e evaluated under torch.no_grad(), so autograd does not see it",
    ),
]

BINOPS: dict[str, Op] = {
    op.name: op
    for op in [
        Op("add", (2, 2), lambda t, a, b: a + b, lambda s, a, b: a + b, "binop", "+", doc="a + b"),
        Op("sub", (2, 2), lambda t, a, b: a - b, lambda s, a, b: a - b, "binop", "-", doc="a - b"),
        Op("mul", (2, 2), lambda t, a, b: a * b, lambda s, a, b: a * b, "binop", "*", doc="a * b"),
        Op("div", (2, 2), lambda t, a, b: a / b, lambda s, a, b: a / b, "binop", "/", doc="a / b", box=((-2, 2), (0.5, 2))),
        Op(
            "pow", (2, 2), lambda t, a, b: t.pow(a, b), lambda s, a, b: a**b, "binop", "**",
            # b*a**(b-1), not sympy's b*a**b/a, which is 0/0 at a = 0
            partials=lambda s, a, b: (b * a ** (b - 1), a**b * s.log(a)),
            doc="a ** b", box=((0.2, 3), (-2, 2)),
        ),
        Op(
            "mod",
            (2, 2),
            lambda t, a, b: t.remainder(a, b),
            lambda s, a, b: s.mod(a, b),
            "binop",
            "%",
            kink=lambda t, a, b: t.remainder(a, b) == 0,
            convention="torch.remainder has derivative 1 in a and -floor(a/b) in b, also at the jumps",
            box=((0.1, 5), (0.7, 1.3)),
            doc="a % b with the sign of b (Python's %, torch.remainder)",
        ),
    ]
}

# pow(x, y) is the function spelling of x ** y: one op, one entry.
FUNCTIONS: dict[str, Op] = {op.name: op for op in _FUNCTION_LIST + _CUT_LIST} | {"pow": BINOPS["pow"]}

# Binary operators sample both arguments from (-2, 2) unless they say otherwise.
BINOPS = {k: (replace(op, box=op.box * 2) if len(op.box) < 2 else op) for k, op in BINOPS.items()}

UNARYOPS: dict[str, Op] = {
    "neg": Op("neg", (1, 1), lambda t, a: -a, lambda s, a: -a, "unop", "-", doc="-a"),
    "pos": Op("pos", (1, 1), lambda t, a: +a, lambda s, a: a, "unop", "+", doc="+a"),
}

_CMP_CONV = "where(...) follows its condition at the boundary, so torch takes the one-sided derivative of the selected branch"
COMPARISONS: dict[str, Op] = {
    name: Op(name, (2, 2), tf, sf, "compare", sym, kink=_eq, convention=_CMP_CONV, doc=f"a {sym} b")
    for name, sym, tf, sf in [
        ("gt", ">", lambda t, a, b: a > b, lambda s, a, b: s.StrictGreaterThan(a, b)),
        ("ge", ">=", lambda t, a, b: a >= b, lambda s, a, b: s.GreaterThan(a, b)),
        ("lt", "<", lambda t, a, b: a < b, lambda s, a, b: s.StrictLessThan(a, b)),
        ("le", "<=", lambda t, a, b: a <= b, lambda s, a, b: s.LessThan(a, b)),
        ("eq", "==", lambda t, a, b: a == b, lambda s, a, b: s.Eq(a, b)),
        ("ne", "!=", lambda t, a, b: a != b, lambda s, a, b: s.Ne(a, b)),
    ]
}


# Constants by name; a name given a value by the caller is a variable instead.
CONSTANTS: dict[str, str] = {"pi": "pi", "e": "E"}

# Every op under the name graph nodes use.  `pow` the function and `**` share one entry.
OPS: dict[str, Op] = {**FUNCTIONS, **BINOPS, **UNARYOPS, **COMPARISONS}


def lookup(name: str) -> Op:
    """The op named `name` (a function or an operator name such as "mul")."""
    return OPS[name]


def suggest(name: str, n: int = 2) -> list[str]:
    """The known function names nearest to `name`, best first."""
    return difflib.get_close_matches(name.lower(), list(FUNCTIONS), n=n, cutoff=0.6)
