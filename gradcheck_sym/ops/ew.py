"""Elementwise functions for the tensor engine: one sympy expression, derived once, run on whole tensors.

An `EwFn` is a function of k arguments written as a sympy expression over the
placeholders ``p0 .. p{k-1}``.  Its partial derivatives are again `EwFn`s
(``sympy.diff`` once per function, cached, or stable forms the op table gives),
so the reverse sweep — and the sweep of the sweep, for second order — stays
inside this one kind of primitive.  Numbers come from the expression compiled
to closures over whole tensors (`reference.evaluate`'s compiler: float64
torch, mpmath per element, or sympy per element for the test oracle); a named
op of the table may give its torch kernel for the forward value instead
(``logaddexp`` is overflow-safe there, its naive sympy form is not).

Two pieces of data serve the tolerance only, never the reference value:
``err_form`` (the formula torch's kernel evaluates, e.g. ``s*(1 - s)`` for
sigmoid's derivative, which cancels for large inputs where sympy's form does
not) and `rounding_error` (how much rounding evaluating a formula can cost, from
its expression tree).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import sympy
import torch

__all__ = ["P", "Q", "branch", "EwFn", "ew_fn", "rounding_error", "MUL", "ADD", "SUB", "NEG", "DIV", "SQUARE", "ABS", "IDENT",
           "WHERE"]

P = tuple(sympy.Symbol(f"p{i}", real=True) for i in range(8))
# The user's own values of the arguments, for the branches of piecewise functions (see `EwFn.branched`).
Q = tuple(sympy.Symbol(f"q{i}", real=True) for i in range(8))
# Library functions (sin, exp, erf, ...) are correctly rounded to a few ulp in torch's kernels.
_FUNCTION_ULPS = 4


class EwFn:
    """An elementwise function of `nargs` tensors (broadcast together).

    Attributes:
        name: for people ("sin", "d(sin)/dp0").
        expr: the function over ``P[:nargs]``.
        nargs: the number of arguments.
        torch_impl: ``(*tensors) -> tensor`` computing the value in torch (default: the compiled expr).
        kink: ``(*tensors) -> bool tensor``, True where the derivative is undefined (kinks, ties, jumps).
        convention: torch's value there, in words.
        err_form: the formula torch evaluates for this value, for the rounding allowance (default expr).
        rel_err: a relative error torch's kernel is known to have beyond rounding (hardsigmoid's
            backward uses a float32 1/6 in every dtype).
        rel_scale: what `rel_err` is relative to besides the value itself: a derivative of a partial
            torch computes inaccurately is a sum of terms as large as that partial, which may cancel to
            0 in the math but not in torch's formula (logcumsumexp's second derivative where one element
            dominates its prefix).
        masks: torch's backward selects (relu's threshold_backward, clamp's, hardtanh's): where the partial
            is 0 the gradient is 0 even for a NaN or infinite adjoint (the function is flat there), where a
            product would give NaN.
        bias_kernel: for a convolution's bias added to its result (`ops.torch.conv`), the geometry of the
            convolution whose kernel torch sums the bias's gradient with (`ops.prims_movement.kernel_sum`).
    """

    def __init__(
        self,
        name: str,
        expr: sympy.Expr,
        nargs: int,
        *,
        torch_impl: Callable[..., Any] | None = None,
        partials: Sequence[sympy.Expr | EwFn] | None = None,
        kink: Callable[..., Any] | None = None,
        convention: str = "",
        err_form: sympy.Expr | None = None,
        grad_forms: Sequence[sympy.Expr | None] | None = None,
        rel_err: float = 0.0,
        grad_rel_err: float = 0.0,
        rel_scale: sympy.Expr | None = None,
        masks: bool = False,
        bias_kernel: tuple[Any, ...] | None = None,
    ) -> None:
        self.name = name
        self.expr = expr
        self.nargs = nargs
        self.torch_impl = torch_impl
        self._partials = tuple(partials) if partials is not None else None
        self.kink = kink
        self.convention = convention
        self.err_form = err_form if err_form is not None else expr
        self._grad_forms = tuple(grad_forms) if grad_forms is not None else None
        self.rel_err = rel_err
        self._grad_rel_err = grad_rel_err
        self.rel_scale = rel_scale
        self.masks = masks
        self._derivs: dict[int, EwFn] = {}
        self.unbranched: EwFn | None = None  # for a `branched` function: the function it was made from
        self.bias_kernel = bias_kernel

    def __repr__(self) -> str:
        return f"EwFn({self.name})"

    # -- calculus
    def partial(self, i: int) -> EwFn:
        """d self / d p_i, as an `EwFn` (cached)."""
        if i not in self._derivs:
            if self._partials is not None and isinstance(self._partials[i], EwFn):  # with its own derivatives
                self._derivs[i] = self._partials[i]
                return self._derivs[i]
            if self._partials is not None:
                expr = self._partials[i]
            else:
                expr = sympy.diff(self.expr, P[i]) if i < len(P) else sympy.S.Zero
            form = self._grad_forms[i] if self._grad_forms is not None and i < len(self._grad_forms) else None
            name = f"d({self.name})/d{P[i] if i < len(P) else i}"
            if self._grad_rel_err or form is not None:
                # torch's double backward differentiates the formula its backward evaluates: the derivatives
                # of that formula are the partial's own forms, and a kernel's inaccuracy stays with them
                forms = [sympy.diff(form, p) for p in P[: self.nargs]] if form is not None else None
                self._derivs[i] = EwFn(name, expr, self.nargs, err_form=form, grad_forms=forms,
                                       rel_err=self._grad_rel_err, grad_rel_err=self._grad_rel_err,
                                       rel_scale=self.expr if self._grad_rel_err else None)
            else:
                self._derivs[i] = ew_fn(name, expr, self.nargs, err_form=form)
        return self._derivs[i]

    @functools.cached_property
    def is_zero(self) -> bool:
        return self.expr == 0

    @functools.cached_property
    def is_one(self) -> bool:
        """expr is 1 (asked by every reverse sweep for every partial: a sympy comparison costs a microsecond)."""
        return self.expr == 1

    @functools.cached_property
    def is_minus_one(self) -> bool:
        return self.expr == -1

    @functools.cached_property
    def product(self) -> bool:
        """Whether this is a plain product of its two arguments (its rounding one rounding of the result)."""
        return self.nargs == 2 and self.torch_impl is None and not self.rel_err and self.rel_scale is None and \
            self.err_form == self.expr and self.expr == P[0] * P[1]

    @functools.cached_property
    def constant(self) -> float | None:
        """|expr| where it is a number with no kernel of its own (a constant partial: add's, a scaling's), else None
        (asked for every input of every equation a bound is tracked for: sympy's float() costs microseconds)."""
        return abs(float(self.expr)) if self.torch_impl is None and self.expr.is_Number else None

    @functools.cached_property
    def arg(self) -> int | None:
        """i when this function is its i-th argument, exactly (no kernel, no rounding of its own): a partial
        such as d(a*b)/da = b, which the sweep then takes as it is instead of evaluating."""
        if self.torch_impl is not None or self.rel_err or self.rel_scale is not None or self.err_form != self.expr:
            return None
        for i, p in enumerate(P[: self.nargs]):
            if self.expr == p:
                return i
        return None

    @functools.cached_property
    def has_branches(self) -> bool:
        """Whether the function is piecewise (a kink, a tie, a jump somewhere)."""
        exprs = [self.expr] + list(self._partials or ())
        return any(e.has(*_BRANCHING) for e in exprs if isinstance(e, sympy.Basic))

    @functools.cached_property
    def branched(self) -> EwFn:
        """The same function of 2k arguments: k values and the k values *the user's run had*, which
        decide every branch (which side of a kink, which of a tie, which integer).

        The reference then differentiates the branch torch took, even where float64 and the user's
        float32 would fall on different sides of a kink; its derivatives stay sympy's.
        """
        n = self.nargs
        partials = [branch(d, n) for d in self._partials] if self._partials is not None else None
        kink = self.kink
        forms = list(self._grad_forms) if self._grad_forms is not None else None
        out = EwFn(self.name, branch(self.expr, n), 2 * n,
                   torch_impl=(lambda *a: self.torch_impl(*a[:n])) if self.torch_impl is not None else None,
                   partials=(partials + [sympy.S.Zero] * n) if partials is not None else None,
                   kink=(lambda *a: kink(*a[n:])) if kink is not None else None, convention=self.convention,
                   err_form=self.err_form, grad_forms=forms, rel_err=self.rel_err,
                   rel_scale=branch(self.rel_scale, n) if self.rel_scale is not None else None,
                   grad_rel_err=self._grad_rel_err, masks=self.masks)
        out.unbranched = self
        return out

    # -- numbers
    @functools.cached_property
    def _torch(self) -> Callable[..., Any]:
        if self.torch_impl is not None:
            return self.torch_impl
        return _compiled(self.expr, self.nargs, "torch")

    def torch(self, *args: Any) -> Any:
        """The value on torch tensors (float64 in the reference)."""
        return self._torch(*args)

    @functools.cached_property
    def _mp(self) -> Callable[..., Any]:
        return _compiled(self.expr, self.nargs, "mpmath")

    def mp(self, *args: Any) -> Any:
        """The value on mpmath numbers (one element)."""
        return self._mp(*args)

    def sym(self, *args: Any) -> Any:
        """The value on sympy expressions (one element)."""
        syms = P[: self.nargs] if not any(q in self.expr.free_symbols for q in Q) else (
            P[: self.nargs // 2] + Q[: self.nargs // 2])
        return self.expr.xreplace(dict(zip(syms, args))) if self.expr.free_symbols else self.expr

    @functools.cached_property
    def as_torch_evaluates(self) -> EwFn:
        """This function by the formula torch's kernel evaluates (`err_form`), for a measured rounding noise
        (`reference.rounded`); itself where that is its own expression, or it has a kernel of its own.

        torch's sigmoid_backward computes s (1 - s), whose 1 - s cancels where s is near 1; our e / (1 + e)**2 never
        does.  A sample by our formula alone missed that noise: a confident classifier's bias gradient, right to
        float32's precision, was said wrong."""
        if self.err_form == self.expr or self.torch_impl is not None or any(q in self.err_form.free_symbols
                                                                             for q in Q):
            return self
        return EwFn(self.name, self.err_form, self.nargs)

    @functools.cached_property
    def _err(self) -> Callable[..., Any]:
        _, err = rounding_error(self.err_form)
        return _compiled(_drop_zeros(err), self.nargs, "torch")

    @functools.cached_property
    def _rel_scale(self) -> Callable[..., Any]:
        return _compiled(self.rel_scale, self.nargs, "torch")

    def rel_scale_value(self, *args: Any) -> Any:
        """|rel_scale| on torch tensors (see the class docstring)."""
        out = self._rel_scale(*args)
        return out.abs() if hasattr(out, "abs") else abs(float(out))

    def rounding(self, *args: Any) -> Any:
        """A bound on the rounding error of evaluating this value, in units of u (absolute)."""
        return self._err(*args)


_FNS: dict[tuple[str, int], EwFn] = {}


def ew_fn(name: str, expr: sympy.Expr, nargs: int, **kw: Any) -> EwFn:
    """The `EwFn` for `expr` (shared by structure, so partials and compiled code are derived once)."""
    if set(kw) - {"err_form"}:  # kernels and kinks of a named op: its own function
        return EwFn(name, expr, nargs, **kw)
    form = kw.get("err_form")
    key = (sympy.srepr(expr) + ("" if form is None else "|" + sympy.srepr(form)), nargs)
    found = _FNS.get(key)
    if found is None:
        found = _FNS[key] = EwFn(name, expr, nargs, err_form=form)
    return found


_BRANCHING = (sympy.Piecewise, sympy.Heaviside, sympy.sign, sympy.Abs, sympy.Max, sympy.Min, sympy.floor,
              sympy.ceiling, sympy.Mod)


def branch(expr: sympy.Expr, nargs: int) -> sympy.Expr:
    """`expr` with every branch decided by the user's values ``q`` instead of ``p`` (see `EwFn.branched`)."""
    sub = {P[i]: Q[i] for i in range(nargs)}

    def on_user(e: sympy.Expr) -> sympy.Expr:
        return e.xreplace(sub)

    def walk(e: sympy.Expr) -> sympy.Expr:
        if not e.args or not e.has(*_BRANCHING):
            return e
        if isinstance(e, sympy.Piecewise):
            return sympy.Piecewise(*[(walk(v), on_user(c)) for v, c in e.args])
        if isinstance(e, (sympy.Heaviside, sympy.sign, sympy.floor, sympy.ceiling, sympy.Mod)):
            return on_user(e)
        if isinstance(e, sympy.Abs):
            return walk(e.args[0]) * sympy.sign(on_user(e.args[0]))
        if isinstance(e, (sympy.Max, sympy.Min)):
            first, rest = e.args[0], e.func(*e.args[1:]) if len(e.args) > 2 else e.args[1]
            a, b = walk(first), walk(rest)
            ua, ub = on_user(first), on_user(rest)
            wins = ua > ub if isinstance(e, sympy.Max) else ua < ub
            loses = ua < ub if isinstance(e, sympy.Max) else ua > ub
            # a tie splits evenly, as torch.maximum's gradient does
            return sympy.Piecewise((a, wins), (b, loses), ((a + b) / 2, True))
        return e.func(*[walk(a) for a in e.args])

    return walk(expr)


def _compiled(expr: sympy.Expr, nargs: int, backend: str) -> Callable[..., Any]:
    # NB: the sympy -> numbers compiler lives with the reference (it also compiles the
    # expression path's programs); imported here, at first use, to keep the layers' order.
    from ..reference.evaluate import TORCH, _compile
    from ..reference.mp_backend import GLOBAL

    syms = (P[:nargs] if nargs <= len(P) else P) if nargs <= 8 else P
    if any(q in expr.free_symbols for q in Q):  # a branched function: k values, then k user values
        syms = P[: nargs // 2] + Q[: nargs // 2]
    elif backend == "torch" and nargs <= 2:
        # the commonest functions of all, one kernel each, without the compiled walk's calls (a training loop of
        # 0-d parameters makes thousands of each)
        a, b = P[0], P[1]
        direct = {a * b: torch.mul, a + b: torch.add, a - b: torch.sub}.get(expr) if nargs == 2 else (
            torch.neg if expr == -a else None)
        if direct is not None:
            return direct
    fn = _compile(expr, TORCH if backend == "torch" else GLOBAL, {}, positions={s: i for i, s in enumerate(syms)})

    def run(*args: Any) -> Any:
        return fn(args)

    # the rounding bounds of the commonest functions (a product's, a sum's, a negation's), asked for every equation
    # a bound is tracked for: a kernel or two on tensors, the compiled walk on anything else
    a, b = P[0], P[1]
    fast = None
    if backend == "torch" and nargs == 2:
        fast = {sympy.Abs(a * b): lambda x, y: torch.mul(x, y).abs_(),
                sympy.Abs(a) + sympy.Abs(b): lambda x, y: torch.add(torch.abs(x), torch.abs(y))}.get(expr)
    elif backend == "torch" and nargs == 1 and expr == sympy.Abs(a):
        fast = torch.abs
    if fast is None:
        return run

    def quick(*args: Any) -> Any:
        if all(isinstance(x, torch.Tensor) for x in args):
            return fast(*args)
        return fn(args)

    return quick


def _drop_zeros(e: sympy.Expr) -> sympy.Expr:
    """`e` without the exact zero terms an unevaluated sum keeps (each would be one more kernel)."""
    if not e.args:
        return e
    args = [_drop_zeros(a) for a in e.args]
    if isinstance(e, sympy.Add):
        args = [a for a in args if a != 0]
        if not args:
            return sympy.S.Zero
        if len(args) == 1:
            return args[0]
    return e.func(*args, evaluate=False) if isinstance(e, (sympy.Add, sympy.Mul)) else e.func(*args)


def rounding_error(expr: sympy.Expr) -> tuple[sympy.Expr, sympy.Expr]:
    """(expr, bound): `bound` bounds |computed - exact| / u for evaluating `expr` in floating point
    with exact arguments, to first order (running error analysis on the expression tree).

    Each operation adds one rounding of its result; a sum passes on its terms' absolute errors,
    so cancellation (``1 - s`` with ``s`` near 1, ``x*x - 1`` near 1) shows as a large bound
    relative to the value.
    """

    @functools.lru_cache(maxsize=None)
    def walk(e: sympy.Expr) -> sympy.Expr:
        if e.is_Symbol or e.is_Integer or e in (sympy.S.Half, -sympy.S.Half):
            return sympy.S.Zero
        if e.is_Number or isinstance(e, sympy.NumberSymbol):
            return sympy.Abs(e)  # a rounded constant
        if isinstance(e, sympy.Add):
            errs = [walk(a) for a in e.args]
            terms = sympy.Add(*[sympy.Abs(a) for a in e.args], evaluate=False)
            return sympy.Add(*errs, (len(e.args) - 1) * terms, evaluate=False)
        if isinstance(e, sympy.Mul):
            parts = []
            for i, a in enumerate(e.args):
                err = walk(a)
                if err != 0:
                    others = [sympy.Abs(b) for j, b in enumerate(e.args) if j != i]
                    parts.append(sympy.Mul(err, *others, evaluate=False))
            parts.append((len(e.args) - 1) * sympy.Abs(e))
            return sympy.Add(*parts, evaluate=False)
        if isinstance(e, sympy.Pow):
            base, ex = e.args
            err = walk(base)
            own = sympy.Abs(e) * (1 if ex.is_Integer and abs(ex) <= 2 else _FUNCTION_ULPS)
            if err == 0 and not ex.free_symbols:
                return own
            d_base = sympy.Abs(ex * base ** (ex - 1)) * err if err != 0 else sympy.S.Zero
            d_exp = sympy.Abs(e * sympy.log(sympy.Abs(base))) * walk(ex) if ex.free_symbols else sympy.S.Zero
            return sympy.Add(d_base, d_exp, own, evaluate=False)
        if isinstance(e, sympy.Piecewise):
            return sympy.Piecewise(*[(walk(v), c) for v, c in e.args])
        if isinstance(e, (sympy.Heaviside, sympy.sign, sympy.floor, sympy.ceiling)) or e.is_Relational:
            return sympy.S.Zero
        if isinstance(e, (sympy.Max, sympy.Min)):
            return sympy.Max(*[walk(a) for a in e.args])
        if isinstance(e, sympy.Function):
            own = _FUNCTION_ULPS * sympy.Abs(e)
            parts = [own]
            for i, a in enumerate(e.args):
                err = walk(a)
                if err != 0:
                    parts.append(sympy.Abs(e.diff(a) if a.is_Symbol else _chain(e, i)) * err)
            return sympy.Add(*parts, evaluate=False)
        return _FUNCTION_ULPS * sympy.Abs(e)

    return expr, walk(expr)


def _chain(e: sympy.Function, i: int) -> sympy.Expr:
    """d f / d (argument i) of a function application, as an expression of its arguments."""
    dummy = sympy.Dummy(real=True)
    args = list(e.args)
    args[i] = dummy
    return sympy.diff(e.func(*args), dummy).subs(dummy, e.args[i])


# The arithmetic the rules themselves use.
_a, _b, _c = P[0], P[1], P[2]
MUL = ew_fn("mul", _a * _b, 2)
ADD = ew_fn("add", _a + _b, 2)
SUB = ew_fn("sub", _a - _b, 2)
DIV = ew_fn("div", _a / _b, 2)
NEG = ew_fn("neg", -_a, 1)
SQUARE = ew_fn("square", _a**2, 1)
ABS = ew_fn("abs", sympy.Abs(_a), 1)
IDENT = ew_fn("identity", _a, 1)
# where(mask, a, b) with a 0/1 float mask: its derivative in the mask is 0, as torch's.
WHERE = ew_fn("where", sympy.Piecewise((_b, _a > sympy.S.Half), (_c, True)), 3)
